"""``lfmvl-site caption``: the page's runtime, run natively on image files and video frames, as one stream."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

# Published variants the native CLI uses for a hub model: q4 MatMulNBits runs well on CPU and is
# a fraction of the fp32 download.
HUB_PRECISION = {"embed_tokens": "fp32", "embed_images": "fp32", "decoder": "q4"}


# Containers read as video (frames every ``every`` seconds); anything else is read as an image.
VIDEO_SUFFIXES = frozenset(
    [".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp", ".ogv"]
)


def load_image(path: Path) -> np.ndarray:
    """Decode an image file to an RGB or RGBA uint8 array (EXIF rotation applied, like transformers)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"Image {path} does not exist.")
    if path.stat().st_size == 0:
        raise InputError(f"Image {path} is an empty file; pass a PNG, JPEG, WebP or other image file.")
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image Pillow can read; pass a PNG, JPEG, WebP or other image file.") from None
    except (OSError, SyntaxError) as exc:
        raise InputError(f"{path} could not be decoded ({exc}); the file may be truncated.") from None


def resolve_model_dir(model_dir: Path | None, repo_id: str | None, revision: str | None) -> tuple[Path, dict[str, str]]:
    """A local directory to run from, and the precision of each graph."""
    if model_dir is not None and repo_id is not None:
        raise InputError("Pass either --model-dir or --model, not both.")
    if model_dir is not None:
        return model_dir, {}
    if repo_id is None:
        raise InputError(
            "No model given: pass --model-dir DIR (e.g. one made by `lfmvl-site synth-model DIR`) "
            "or --model LiquidAI/LFM2.5-VL-1.6B-ONNX."
        )
    return _download(repo_id, revision), dict(HUB_PRECISION)


def _download(repo_id: str, revision: str | None) -> Path:
    """Fetch (or reuse from the huggingface_hub cache) only the files ``caption`` runs."""
    import onnx

    from .model.resolve import (
        CONFIG_FILES,
        REQUIRED_CONFIG_FILES,
        HubSource,
        external_locations,
    )

    source = HubSource(repo_id, revision, progress=True)
    for name in CONFIG_FILES:
        (source.require if name in REQUIRED_CONFIG_FILES else source.get)(name)
    for role, precision in HUB_PRECISION.items():
        graph = source.require(source.graph_relpath(role, precision))
        for location in external_locations(onnx.load(str(graph), load_external_data=False)):
            source.require(f"onnx/{location}")
    return graph.parent.parent  # the snapshot folder: the published layout, as a local directory


@dataclass
class Frame:
    """One frame of the stream: its pixels and where it came from."""

    path: Path
    pixels: np.ndarray
    time_s: float | None = None  # position in a video; None for an image file


def check_inputs(paths: Sequence[Path]) -> None:
    """Fail before the model loads when an input is missing, empty or a folder."""
    if not paths:
        raise InputError("No input given: pass one or more image or video files.")
    for path in paths:
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise InputError(f"{'Video' if is_video(path) else 'Image'} {path} {what}; pass image or video files.")
        if path.stat().st_size == 0:
            raise InputError(f"{path} is an empty file; pass a PNG, JPEG, WebP or other image file, or a video file.")
        if is_video(path):
            _pyav(path)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _pyav(path: Path) -> Any:
    try:
        import av
    except ImportError:
        raise InputError(
            f"{path} is a video file, and reading video needs PyAV, which is not installed: run `pip install av`, "
            "or extract frames (e.g. `ffmpeg -i clip.mp4 -vf fps=1 frame%04d.png`) and pass those."
        ) from None
    return av


def video_frames(path: Path, every: float) -> Iterator[Frame]:
    """Frames of ``path`` at 0, ``every``, 2*``every`` ... seconds (the first frame at or after each mark).

    Decoded with PyAV (``pip install av``), an optional dependency.
    """
    av = _pyav(path)
    if every <= 0:
        raise InputError("--every must be a positive number of seconds.")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise InputError(f"{path} could not be opened as a video ({exc}); pass a video file or images.") from None
    count = 0
    try:
        with container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream; pass a video file with pictures, or images.")
            stream = container.streams.video[0]
            first: float | None = None
            mark = 0.0
            for index, frame in enumerate(container.decode(stream)):
                if frame.time is not None:
                    at = float(frame.time)
                else:
                    rate = float(stream.average_rate or 0) or 1.0
                    at = index / rate
                first = at if first is None else first
                offset = at - first
                if offset + 1e-6 < mark:
                    continue
                count += 1
                yield Frame(path, frame.to_ndarray(format="rgb24"), round(offset, 6))
                while mark <= offset + 1e-6:
                    mark += every
    except (av.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise InputError(f"{path} could not be decoded as a video ({exc}); the file may be truncated.") from None
    if count == 0:
        raise InputError(f"{path} has no decodable frames; pass a video file with pictures, or images.")


def iter_frames(paths: Sequence[Path], every: float) -> Iterator[Frame]:
    """The stream's frames, in input order: one per image, a video's frames every ``every`` seconds."""
    for path in paths:
        if is_video(path):
            yield from video_frames(path, every)
        else:
            yield Frame(path, load_image(path))


async def _caption_stream(
    paths: Sequence[Path],
    every: float,
    model_dir: Path,
    precision: dict[str, str],
    prompt: str,
    as_json: bool,
    speculative: bool,
    settings: Any,
) -> list[dict[str, Any]]:
    from .runtime.generate import Captioner
    from .runtime.native import NativeBackend
    from .runtime.speculative import CaptionStream

    captioner = await Captioner.load(NativeBackend(model_dir, precision=precision))
    stream = CaptionStream(speculative=speculative)
    labelled = len(paths) > 1 or any(is_video(p) for p in paths)

    def on_token(token_id: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    results: list[dict[str, Any]] = []
    for index, frame in enumerate(iter_frames(paths, every)):
        if labelled and not as_json:
            at = f" @ {frame.time_s:g}s" if frame.time_s is not None else ""
            sys.stdout.write(f"{frame.path}{at}: ")
        result = await captioner.caption(
            frame.pixels, prompt, settings=settings, on_token=None if as_json else on_token, stream=stream
        )
        data = result.as_dict()
        data["frame"] = index
        data["image"] = {"path": str(frame.path), "height": int(frame.pixels.shape[0]), "width": int(frame.pixels.shape[1])}
        if frame.time_s is not None:
            data["image"]["time_s"] = frame.time_s
        if as_json:
            print(json.dumps(data, ensure_ascii=False), flush=True)
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
        results.append(data)
    return results


def caption_files(
    inputs: Sequence[Path],
    *,
    model_dir: Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    prompt: str = "Describe this image.",
    as_json: bool = False,
    every: float = 1.0,
    speculative: bool = True,
    **sampling: Any,
) -> list[dict[str, Any]]:
    """Caption ``inputs`` in order as one stream (video files give a frame every ``every`` seconds).

    Stream each caption's text to stdout, or with ``as_json`` print one JSON object per frame
    (JSON lines). Within the stream an unchanged frame reuses the previous image features and
    greedy captions are drafted from the previous one (``speculative``; same tokens either way).
    """
    from .runtime.sampling import SamplingSettings

    if not prompt.strip():
        raise InputError("The prompt is empty; pass --prompt TEXT.")
    if every <= 0:
        raise InputError("--every must be a positive number of seconds.")
    settings = SamplingSettings(**sampling)
    paths = [Path(p) for p in inputs]
    check_inputs(paths)
    if not is_video(paths[0]):
        load_image(paths[0])  # an unreadable first image fails before the model loads
    directory, precision = resolve_model_dir(model_dir, repo_id, revision)
    return asyncio.run(_caption_stream(paths, every, directory, precision, prompt, as_json, speculative, settings))


def caption_file(image: Path, **options: Any) -> dict[str, Any]:
    """Caption one image file (see :func:`caption_files`)."""
    return caption_files([image], **options)[0]

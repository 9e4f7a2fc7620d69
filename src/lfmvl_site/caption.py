"""``lfmvl-site caption``: the page's runtime, run natively on image files and video frames, as one stream."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .runtime.contract import DEFAULT_PROMPT

# Published variants the native CLI uses for a hub model: q4 MatMulNBits runs well on CPU and is
# a fraction of the fp32 download.
HUB_PRECISION = {"embed_tokens": "fp32", "embed_images": "fp32", "decoder": "q4"}


# Containers read as video (frames every ``every`` seconds); anything else is read as an image.
VIDEO_SUFFIXES = frozenset(
    [".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp", ".ogv"]
)


# Images above this many pixels are refused before they are decoded (a 10,000 x 10,000 PNG of a few hundred
# kB decodes to 400 MB): the model sees at most a few megapixels anyway. ``--max-pixels`` raises it.
DEFAULT_MAX_PIXELS = 100_000_000
STDIN = Path("-")  # an input or prompt file named "-" is read from standard input


def _read_stream(path: Path) -> bytes:
    """All bytes of standard input ("-"), a pipe or a device: they can be read only once, so read them now."""
    if path == STDIN:
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _is_stream(path: Path) -> bool:
    if path == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def load_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None) -> np.ndarray:
    """Decode an image file (or ``data`` read from it) to an RGB or RGBA uint8 array, EXIF rotation applied as
    transformers does. Images of more than ``max_pixels`` pixels are refused from their header, before decoding."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = "standard input" if path == STDIN else str(path)
    if data is None and _is_stream(path):
        data = _read_stream(path)
    if data is None and not path.is_file():
        raise InputError(f"Image {name} does not exist.")
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise InputError(f"Image {name} is empty; pass a PNG, JPEG, WebP or other image file.")
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own limit below, with our own words
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise InputError(
                    f"Image {name} is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
                    "(a guard against decompression bombs); pass a smaller image, or raise the limit with --max-pixels."
                )
            img = ImageOps.exif_transpose(opened)
            has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image Pillow can read; pass a PNG, JPEG, WebP or other image file.") from None
    except MemoryError:
        raise InputError(f"Image {name} is too large to decode in memory; pass a smaller image.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name} could not be decoded ({exc}); the file may be truncated.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt text from ``--prompt`` or ``--prompt-file`` (UTF-8, "-" = standard input), or a clear refusal."""
    if prompt is not None and prompt_file is not None:
        raise InputError("Pass either --prompt or --prompt-file, not both.")
    if prompt_file is not None:
        name = "standard input" if prompt_file == STDIN else str(prompt_file)
        if prompt_file != STDIN and prompt_file.is_dir():
            raise InputError(f"--prompt-file {name} is a folder; pass a text file.")
        if prompt_file != STDIN and not prompt_file.exists():
            raise InputError(f"--prompt-file {name} does not exist.")
        raw = _read_stream(prompt_file)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"--prompt-file {name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                             f"{exc.start}); save it as UTF-8.") from None
        return text.rstrip("\r\n")
    if prompt is None:
        return DEFAULT_PROMPT
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # the shell passed bytes that are not UTF-8 (Python kept them as surrogates)
        raw = os.fsencode(prompt)
        try:
            raw.decode("utf-8")
            offset, byte = -1, 0
        except UnicodeDecodeError as exc:
            offset, byte = exc.start, raw[exc.start]
        where = f" (byte 0x{byte:02x} at offset {offset})" if offset >= 0 else ""
        raise InputError(f"--prompt is not valid UTF-8{where}; pass UTF-8 text, or put it in a file for "
                         "--prompt-file.") from None
    return prompt


def resolve_model_dir(model_dir: Path | None, repo_id: str | None, revision: str | None,
                      preset: str | None = None) -> tuple[Path, dict[str, str]]:
    """A local directory to run from, and the precision of each graph (``preset``: VISION/DECODER, as build's)."""
    from .model.options import parse_preset

    chosen: dict[str, str] = {}
    if preset:
        chosen["embed_images"], chosen["decoder"] = parse_preset(preset.strip().lower())
    if model_dir is not None and repo_id is not None:
        raise InputError("Pass either --model-dir or --model, not both.")
    if model_dir is not None:
        return model_dir, chosen
    if repo_id is None:
        raise InputError(
            "No model given: pass --model-dir DIR (e.g. one made by `lfmvl-site synth-model DIR`) "
            "or --model LiquidAI/LFM2.5-VL-1.6B-ONNX."
        )
    precision = {**HUB_PRECISION, **chosen}
    return _download(repo_id, revision, precision), precision


def _download(repo_id: str, revision: str | None, precision: dict[str, str]) -> Path:
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
    for role, wanted in precision.items():
        graph = source.require(source.graph_relpath(role, wanted))
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
    if sum(p == STDIN for p in paths) > 1:
        raise InputError('Standard input ("-") can be read once; pass it as one input at most.')
    for path in paths:
        if path != STDIN and path.is_symlink() and not path.exists():
            try:
                os.stat(path)
                what = "cannot be followed"
            except OSError as exc:
                what = "points back to itself (a loop)" if exc.errno == errno.ELOOP else f"points to nothing ({exc.strerror})"
            raise InputError(f"{path} is a symbolic link that {what}; fix the link or pass the file itself.")
        if _is_stream(path):
            if is_video(path):
                raise InputError(f"Video {path} is a pipe; pass video files by path (images may come from a pipe).")
            continue  # a pipe or standard input: read when its turn comes
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
            f"{path} is a video file, and reading video needs PyAV, which is not installed: run `pip install av` "
            "(or install lfmvl-site[video]), "
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


def iter_frames(paths: Sequence[Path], every: float, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                first: np.ndarray | None = None) -> Iterator[Frame]:
    """The stream's frames, in input order: one per image, a video's frames every ``every`` seconds.

    ``first``: the first input's pixels when already decoded (a pipe cannot be read twice)."""
    for index, path in enumerate(paths):
        if is_video(path):
            yield from video_frames(path, every)
        elif index == 0 and first is not None:
            yield Frame(path, first)
        else:
            yield Frame(path, load_image(path, max_pixels=max_pixels))


async def _caption_stream(
    paths: Sequence[Path],
    every: float,
    model_dir: Path,
    precision: dict[str, str],
    prompt: str,
    as_json: bool,
    speculative: bool,
    settings: Any,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    first: np.ndarray | None = None,
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
    for index, frame in enumerate(iter_frames(paths, every, max_pixels=max_pixels, first=first)):
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
    prompt: str | None = None,
    prompt_file: Path | None = None,
    as_json: bool = False,
    every: float = 1.0,
    speculative: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    preset: str | None = None,
    **sampling: Any,
) -> list[dict[str, Any]]:
    """Caption ``inputs`` in order as one stream (video files give a frame every ``every`` seconds).

    Stream each caption's text to stdout, or with ``as_json`` print one JSON object per frame
    (JSON lines). Within the stream an unchanged frame reuses the previous image features and
    greedy captions are drafted from the previous one (``speculative``; same tokens either way).
    """
    from .runtime.sampling import SamplingSettings

    text = read_prompt(prompt, prompt_file)
    if not text.strip():
        raise InputError("The prompt is empty; pass --prompt TEXT.")
    if every <= 0:
        raise InputError("--every must be a positive number of seconds.")
    if max_pixels < 1:
        raise InputError("--max-pixels must be a positive number of pixels.")
    settings = SamplingSettings(**sampling)
    paths = [Path(p) for p in inputs]
    if prompt_file == STDIN and STDIN in paths:
        raise InputError('Standard input ("-") cannot be both the prompt file and an image.')
    check_inputs(paths)
    # An unreadable first image fails before the model loads (and a piped one is read only once).
    first = None if is_video(paths[0]) else load_image(paths[0], max_pixels=max_pixels)
    directory, precision = resolve_model_dir(model_dir, repo_id, revision, preset)
    return asyncio.run(_caption_stream(paths, every, directory, precision, text, as_json, speculative, settings,
                                       max_pixels, first))


def caption_file(image: Path, **options: Any) -> dict[str, Any]:
    """Caption one image file (see :func:`caption_files`)."""
    return caption_files([image], **options)[0]

"""``lfmvl-site caption``: the page's runtime, run natively on one image file."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

# Published variants the native CLI uses for a hub model: q4 MatMulNBits runs well on CPU and is
# a fraction of the fp32 download.
HUB_PRECISION = {"embed_tokens": "fp32", "embed_images": "fp32", "decoder": "q4"}


def load_image(path: Path) -> np.ndarray:
    """Decode an image file to an RGB or RGBA uint8 array (EXIF rotation applied, like transformers)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"Image {path} does not exist.")
    if path.stat().st_size == 0:
        raise InputError(f"Image {path} is an empty file; pass a PNG, JPEG, WebP or other image file.")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
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

    from .model.resolve import CONFIG_FILES, REQUIRED_CONFIG_FILES, HubSource, external_locations

    source = HubSource(repo_id, revision, progress=True)
    for name in CONFIG_FILES:
        (source.require if name in REQUIRED_CONFIG_FILES else source.get)(name)
    for role, precision in HUB_PRECISION.items():
        graph = source.require(source.graph_relpath(role, precision))
        for location in external_locations(onnx.load(str(graph), load_external_data=False)):
            source.require(f"onnx/{location}")
    return graph.parent.parent  # the snapshot folder: the published layout, as a local directory


async def _caption(image: np.ndarray, model_dir: Path, precision: dict[str, str], prompt: str, stream: bool, settings: Any) -> Any:
    from .runtime.generate import Captioner
    from .runtime.native import NativeBackend

    captioner = await Captioner.load(NativeBackend(model_dir, precision=precision))

    def on_token(token_id: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = await captioner.caption(image, prompt, settings=settings, on_token=on_token if stream else None)
    if stream:
        sys.stdout.write("\n")
    return result


def caption_file(
    image: Path,
    *,
    model_dir: Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    prompt: str = "Describe this image.",
    as_json: bool = False,
    **sampling: Any,
) -> dict[str, Any]:
    """Caption ``image``; stream the text to stdout, or print one JSON object with ``as_json``."""
    from .runtime.sampling import SamplingSettings

    if not prompt.strip():
        raise InputError("The prompt is empty; pass --prompt TEXT.")
    settings = SamplingSettings(**sampling)
    pixels = load_image(image)
    directory, precision = resolve_model_dir(model_dir, repo_id, revision)
    result = asyncio.run(_caption(pixels, directory, precision, prompt, not as_json, settings))
    data = result.as_dict()
    data["image"] = {"path": str(image), "height": int(pixels.shape[0]), "width": int(pixels.shape[1])}
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
    return data

"""Browser-test fixtures: one built tiny-model site, its server, Debian's Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from support import pyodide_mirror

from lfmvl_site.serve import serving

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("LFMVL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
BASE_ARGS = [
    "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if Path(CHROMIUM).is_file():
        return
    skip = pytest.mark.skip(reason=f"Chromium not found at {CHROMIUM} (scripts/setup-test.sh installs Debian's chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def write_y4m(path: Path, frame_rgb: np.ndarray, frames: int = 2) -> Path:
    """A y4m (4:2:0, BT.601 full range) video of ``frames`` copies of one RGB frame: the fake camera's input."""
    rgb = frame_rgb.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = (b - y) * 0.564 + 128
    v = (r - y) * 0.713 + 128
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, sub(u), sub(v))]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n")
            for p in planes:
                f.write(p.tobytes())
    return path


def camera_frame(height: int = 240, width: int = 320) -> np.ndarray:
    """A known, structured test picture (gradients and blocks)."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (xx * 255) // (width - 1)
    img[..., 1] = (yy * 255) // (height - 1)
    img[..., 2] = np.where(((xx // 40) + (yy // 40)) % 2 == 0, 200, 40)
    return img


# The token-equality site: fp32 compute everywhere (onnxruntime-web and native onnxruntime then agree to
# ~1e-6), but embed_tokens prefers fp16, so a WebGPU adapter without shader-f16 must pick the fp32
# variant by itself. (q4 graphs are built with accuracy_level 4: native onnxruntime quantizes activations
# to int8 there, onnxruntime-web does not, so q4 tokens may legitimately differ between the two.)
EXACT_PRESET = ["--vision", "fp32", "--decoder", "fp32", "--embed-tokens", "fp16", "--no-q4-lm-head"]


def build_cli(out: Path, *extra: str) -> Path:
    """``lfmvl-site build --out OUT EXTRA...`` in process (with the offline Pyodide mirror); fails on a non-zero exit."""
    from click.testing import CliRunner

    from lfmvl_site.cli import main

    args = ["build", "--out", str(out), *extra]
    mirror = pyodide_mirror()
    if mirror is not None:
        args += ["--pyodide-dir", str(mirror)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def build_site_cli(out: Path, *extra: str) -> Path:
    return build_cli(out, "--synthetic", *extra)


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lfmvl-site build --synthetic`` (exact preset) once per session.

    With ``--plain-attention``: SwiftShader, the only WebGPU adapter here, runs onnxruntime-web's fused
    MultiHeadAttention wrong (exact on a real GPU: benchmarks/gpu/attention_probe.sh), and this site's WebGPU
    tests compare tokens with native onnxruntime. The fused graph is tested on the exporter's site."""
    return build_site_cli(tmp_path_factory.mktemp("site") / "dist", "--plain-attention", *EXACT_PRESET)


@pytest.fixture(scope="session")
def site_url(built_site: Path) -> Iterator[str]:
    with serving(built_site) as url:
        yield url


@pytest.fixture(scope="session")
def default_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default preset (fp16 preferred, q4 decoder), as users get it."""
    return build_site_cli(tmp_path_factory.mktemp("site-default") / "dist")


@pytest.fixture(scope="session")
def default_site_url(default_site: Path) -> Iterator[str]:
    with serving(default_site) as url:
        yield url


@pytest.fixture(scope="session")
def camera_y4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_y4m(tmp_path_factory.mktemp("cam") / "camera.y4m", camera_frame())


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def launch(playwright: object, *args: str, fake_camera: Path | None = None, grant_camera: bool = True) -> object:
    """Headless Chromium with the closed-network flags and, optionally, a fake camera fed ``fake_camera``."""
    extra = list(args)
    if fake_camera is not None:
        extra += ["--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={fake_camera}"]
        if grant_camera:
            extra.append("--use-fake-ui-for-media-stream")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=BASE_ARGS + extra)  # type: ignore[attr-defined]

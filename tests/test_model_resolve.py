"""The hub path through the real huggingface_hub client, against a stand-in Hub on 127.0.0.1 (HF_ENDPOINT).

The stand-in speaks the part of the Hub HTTP API that ``hf_hub_download`` uses: HEAD/GET
``/{repo}/resolve/{revision}/{path}`` with X-Repo-Commit, ETag (git blob sha1), X-Linked-Etag/X-Linked-Size
(sha256, for LFS-stored weights) and 404 + X-Error-Code: EntryNotFound for absent files. Builds run in a
subprocess so huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE from the environment as it does
for a user.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import onnx
import pytest

from lfmvl_site.model.quantize import find_lm_head, quantize_q4
from lfmvl_site.model.shard import save_sharded

REPO = "LiquidAI/LFM2.5-VL-1.6B-ONNX"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandInHub:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self.truncate: set[str] = set()  # serve half the body (Content-Length says so too)
        self.corrupt: set[str] = set()  # flip a byte, keep the advertised hash
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                prefix = f"/{REPO}/resolve/"
                if not self.path.startswith(prefix):
                    self._error(404, "RepoNotFound")
                    return
                revision, _, rel = self.path[len(prefix):].partition("/")
                hub.requests.append((self.command, rel))
                if revision not in ("main", COMMIT):
                    self._error(404, "RevisionNotFound")
                    return
                path = hub.root / rel
                if not path.is_file():
                    self._error(404, "EntryNotFound")
                    return
                data = path.read_bytes()
                lfs = rel.endswith(".onnx_data") or ".onnx_data_" in rel
                git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324
                sent = data
                if rel in hub.truncate:
                    sent = data[: len(data) // 2]
                if rel in hub.corrupt:
                    sent = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{git_sha1}"')
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(len(sent)))
                self.end_headers()
                if body:
                    self.wfile.write(sent)

            def _error(self, code: int, error_code: str) -> None:
                self.send_response(code)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", error_code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gets(self) -> set[str]:
        return {rel for method, rel in self.requests if method == "GET"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tiny_model_dir: Path, tmp_path: Path) -> Iterator[StandInHub]:
    """The tiny model as a hub repo that also publishes decoder_q4 (made the way the real one was)."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, root)
    dec = onnx.load(str(root / "onnx" / "decoder.onnx"))
    q4 = quantize_q4(dec, exclude=[find_lm_head(dec).name], progress=False)
    save_sharded(q4, root / "onnx" / "decoder_q4.onnx", max_shard_bytes=2**31)
    server = StandInHub(root)
    yield server
    server.close()


@pytest.fixture
def hub450(tmp_path: Path) -> Iterator[StandInHub]:
    """The tiny model in the 450M file layout as a hub repo, publishing decoder_model_merged_q4 too."""
    from lfmvl_site.synth import write_model

    root = write_model(tmp_path / "repo450", seed=0, size="tiny", layout="450m")
    dec = onnx.load(str(root / "onnx" / "decoder_model_merged.onnx"))
    q4 = quantize_q4(dec, exclude=[find_lm_head(dec).name], progress=False)
    save_sharded(q4, root / "onnx" / "decoder_model_merged_q4.onnx", max_shard_bytes=2**31)
    server = StandInHub(root)
    yield server
    server.close()


BUILD = """
import json, sys
from pathlib import Path
from lfmvl_site.errors import LfmvlError
from lfmvl_site.model.build import build_model
from lfmvl_site.model.options import ModelBuildOptions
try:
    m = build_model(ModelBuildOptions(**json.loads(sys.argv[1])), Path(sys.argv[2]), progress=False)
except LfmvlError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(3)
print(json.dumps({"source": m["source"], "graphs": m["graphs"]}))
"""


def _hub_env(hub_url: str | None, hf_home: Path, offline: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5",
               HF_HUB_DOWNLOAD_TIMEOUT="5")
    if hub_url:
        env["HF_ENDPOINT"] = hub_url
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _build(hub_url: str | None, hf_home: Path, dest: Path, offline: bool = False, **opts: Any) -> tuple[int, dict]:
    env = _hub_env(hub_url, hf_home, offline)
    proc = subprocess.run([sys.executable, "-c", BUILD, json.dumps(opts), str(dest)], env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stderr[-3000:]
    return proc.returncode, json.loads(lines[-1])


def test_hub_build_downloads_only_what_the_preset_needs(hub: StandInHub, tmp_path: Path) -> None:
    rc, out = _build(hub.url, tmp_path / "hf", tmp_path / "dist" / "model")
    assert rc == 0, out
    assert out["source"] == {"repo_id": REPO, "revision": COMMIT, "local_dir": None, "synthetic": False}
    got = hub.gets()
    # Published decoder_q4 is used as is; the fp32 decoder weights are never fetched. fp16 variants are not
    # published here, so fp32 embed_tokens / embed_images are fetched to make them (and the q4 vision fallback).
    assert "onnx/decoder_q4.onnx_data" in got and "onnx/decoder.onnx_data" not in got and "onnx/decoder.onnx" not in got
    assert {"onnx/embed_images.onnx_data", "onnx/embed_tokens.onnx_data", "config.json", "tokenizer.json"} <= got
    assert out["graphs"]["decoder"][0]["made_from"] == "onnx/decoder_q4.onnx"
    assert out["graphs"]["embed_images"][0]["made_from"] == "onnx/embed_images.onnx"
    assert (tmp_path / "dist" / "model" / "manifest.json").is_file()

    # Offline, from the huggingface_hub cache, with the stand-in gone: same result, no network.
    hub.close()
    rc, out2 = _build(None, tmp_path / "hf", tmp_path / "dist2" / "model", offline=True)
    assert rc == 0, out2
    assert out2["source"]["revision"] == COMMIT
    assert (tmp_path / "dist" / "model" / "manifest.json").read_bytes() == (
        tmp_path / "dist2" / "model" / "manifest.json").read_bytes()


def test_hub_truncated_download(hub: StandInHub, tmp_path: Path) -> None:
    hub.truncate.add("onnx/embed_images.onnx_data")
    rc, out = _build(hub.url, tmp_path / "hf", tmp_path / "dist" / "model")
    assert rc == 3 and out["error"] == "ModelFileError", out
    assert "onnx/embed_images.onnx_data" in out["message"]
    assert not (tmp_path / "dist").exists() or list((tmp_path / "dist").iterdir()) == []


def test_hub_hash_mismatch(hub: StandInHub, tmp_path: Path) -> None:
    hub.corrupt.add("onnx/embed_tokens.onnx_data")
    rc, out = _build(hub.url, tmp_path / "hf", tmp_path / "dist" / "model")
    assert rc == 3 and out["error"] == "ModelFileError", out
    assert "onnx/embed_tokens.onnx_data" in out["message"] and "does not match its hash" in out["message"]


def test_hub_unknown_revision(hub: StandInHub, tmp_path: Path) -> None:
    rc, out = _build(hub.url, tmp_path / "hf", tmp_path / "dist" / "model", revision="v9")
    assert rc == 3 and out["error"] == "ModelFileError" and "--revision" in out["message"], out


def test_hub_offline_without_cache(tmp_path: Path) -> None:
    rc, out = _build(None, tmp_path / "hf", tmp_path / "dist" / "model", offline=True)
    assert rc == 3 and out["error"] == "ModelFileError" and "--model-dir" in out["message"], out


def test_caption_from_the_hub_fetches_only_its_files_and_matches_a_local_run(hub: StandInHub, tmp_path: Path) -> None:
    """`lfmvl-site caption --model REPO` through huggingface_hub: q4 decoder + fp32 encoders, nothing else."""
    import asyncio

    import numpy as np
    from PIL import Image

    from lfmvl_site.caption import HUB_PRECISION
    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend
    from lfmvl_site.runtime.sampling import SamplingSettings

    pixels = np.random.default_rng(4).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    exe = Path(sys.executable).with_name("lfmvl-site")
    proc = subprocess.run([str(exe), "caption", str(tmp_path / "frame.png"), "--model", REPO, "--json",
                           "--max-new-tokens", "6"], env=_hub_env(hub.url, tmp_path / "hf"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads(proc.stdout.strip().splitlines()[-1])
    got = hub.gets()
    assert {"onnx/decoder_q4.onnx_data", "onnx/embed_images.onnx_data", "onnx/embed_tokens.onnx_data"} <= got
    assert "onnx/decoder.onnx" not in got and "onnx/decoder.onnx_data" not in got
    # The same graphs run from the repo folder directly give the same tokens.
    local = asyncio.run(Captioner.load(NativeBackend(hub.root, precision=HUB_PRECISION)))
    ref = asyncio.run(local.caption(pixels, "Describe this image.", settings=SamplingSettings(max_new_tokens=6)))
    assert ours["token_ids"] == ref.token_ids


def test_hub_450m_layout_is_recognised_for_build_and_caption(hub450: StandInHub, tmp_path: Path) -> None:
    """A repo in the 450M layout (vision_encoder / decoder_model_merged): recognised through HEAD requests, without
    downloading a graph the preset does not need; build and caption use its own file names."""
    rc, out = _build(hub450.url, tmp_path / "hf", tmp_path / "dist" / "model")
    assert rc == 0, out
    assert out["graphs"]["decoder"][0]["made_from"] == "onnx/decoder_model_merged_q4.onnx"
    assert out["graphs"]["embed_images"][0]["made_from"] == "onnx/vision_encoder.onnx"
    got = hub450.gets()
    assert "onnx/decoder_model_merged.onnx_data" not in got and "onnx/decoder_model_merged.onnx" not in got
    assert not any(rel.startswith(("onnx/embed_images", "onnx/decoder.", "onnx/decoder_q4")) for rel in got)

    import asyncio

    import numpy as np
    from PIL import Image

    from lfmvl_site.caption import HUB_PRECISION
    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend
    from lfmvl_site.runtime.sampling import SamplingSettings

    pixels = np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    exe = Path(sys.executable).with_name("lfmvl-site")
    proc = subprocess.run([str(exe), "caption", str(tmp_path / "frame.png"), "--model", REPO, "--json",
                           "--max-new-tokens", "4"], env=_hub_env(hub450.url, tmp_path / "hf2"), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads(proc.stdout.strip().splitlines()[-1])
    local = asyncio.run(Captioner.load(NativeBackend(hub450.root, precision=HUB_PRECISION)))
    ref = asyncio.run(local.caption(pixels, "Describe this image.", settings=SamplingSettings(max_new_tokens=4)))
    assert ours["token_ids"] == ref.token_ids


def test_hub_repo_with_neither_layout_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "onnx").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (root / name).write_text("{}")
    (root / "onnx" / "model.onnx").write_bytes(b"")
    server = StandInHub(root)
    try:
        rc, out = _build(server.url, tmp_path / "hf", tmp_path / "dist" / "model")
    finally:
        server.close()
    assert rc == 3 and out["error"] == "ModelFileError", out
    assert "neither published file layout" in out["message"] and "vision_encoder" in out["message"], out

"""Bad input and a hostile machine, against the installed CLI: each is one line naming the problem and the fix,
a non-zero exit and no traceback; nothing half-written is left behind.

Classes covered: pipes and standard input as IMAGE, decompression bombs (--max-pixels), a prompt longer than
the model's context, prompts that are not UTF-8 (argv bytes and --prompt-file), a stdout that cannot encode the
caption, a graph whose input dtype differs from the contract, symlink loops, and OS errors while writing
(ENOSPC / EROFS on a real small tmpfs where this machine can mount one, EACCES / ENOSPC injected otherwise).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support import pyodide_mirror

EXE = Path(sys.executable).with_name("lfmvl-site")


def _cli(*args: str | bytes, stdin: bytes | None = None, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(EXE), *args], input=stdin, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _clean_failure(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("[", "  "))]  # minus progress
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _json_lines(proc: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    return [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("img") / "frame.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def by_path(image: Path, tiny_model_dir: Path) -> dict[str, Any]:
    """The caption of ``image`` read from its path: what every other way of passing it must give."""
    return _json_lines(_cli("caption", str(image), "--model-dir", str(tiny_model_dir), "--json", "--max-new-tokens", "6"))[0]


# ---------------------------------------------------------------- inputs


def test_image_from_standard_input_and_from_a_pipe(image: Path, tiny_model_dir: Path, by_path: dict[str, Any],
                                                   tmp_path: Path) -> None:
    data = image.read_bytes()
    piped = _json_lines(_cli("caption", "-", "--model-dir", str(tiny_model_dir), "--json", "--max-new-tokens", "6",
                             stdin=data))[0]
    assert piped["token_ids"] == by_path["token_ids"]

    fifo = tmp_path / "frame.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(data), daemon=True)
    writer.start()
    named = _json_lines(_cli("caption", str(fifo), "--model-dir", str(tiny_model_dir), "--json",
                             "--max-new-tokens", "6"))[0]
    writer.join(10)
    assert named["token_ids"] == by_path["token_ids"]
    _clean_failure(_cli("caption", "-", "-", "--model-dir", str(tiny_model_dir), stdin=data), "once")


def test_symlink_loop_and_folder_as_image(tmp_path: Path, tiny_model_dir: Path) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    _clean_failure(_cli("caption", str(loop), "--model-dir", str(tiny_model_dir)), str(loop), "link")
    _clean_failure(_cli("caption", str(tmp_path), "--model-dir", str(tiny_model_dir)), "folder")


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, image: Path, tiny_model_dir: Path,
                                                       by_path: dict[str, Any]) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("L", (14_000, 14_000)).save(bomb)  # 196 Mpx in ~190 kB: above Pillow's own error threshold
    assert bomb.stat().st_size < 1_000_000
    line = _clean_failure(_cli("caption", str(bomb), "--model-dir", str(tiny_model_dir)), "14000x14000", "--max-pixels")
    assert "100,000,000" in line
    # The limit is the user's to set: below this image's 3,072 pixels it refuses, at it it captions as usual.
    _clean_failure(_cli("caption", str(image), "--model-dir", str(tiny_model_dir), "--max-pixels", "3071"), "64x48")
    allowed = _json_lines(_cli("caption", str(image), "--model-dir", str(tiny_model_dir), "--max-pixels", "3072",
                               "--json", "--max-new-tokens", "6"))[0]
    assert allowed["token_ids"] == by_path["token_ids"]


def test_prompt_longer_than_the_context_names_the_limit(tmp_path: Path, image: Path, tiny_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    config = json.loads((tiny_model_dir / "config.json").read_text())
    limit = config.get("text_config", config)["max_position_embeddings"]
    text = "word " * limit
    assert len(Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).encode(text).ids) > limit  # HF's count
    prompt = tmp_path / "long.txt"
    prompt.write_text(text)
    _clean_failure(_cli("caption", str(image), "--model-dir", str(tiny_model_dir), "--prompt-file", str(prompt)),
                   f"context is {limit} tokens", "shorten the prompt")


def test_prompts_that_are_not_utf8_are_refused_and_utf8_files_are_read(tmp_path: Path, image: Path,
                                                                       tiny_model_dir: Path) -> None:
    model = ["--model-dir", str(tiny_model_dir)]
    _clean_failure(_cli("caption", str(image), *model, "--prompt", b"bad \xff\xfe prompt"), "not valid UTF-8",
                   "0xff", "offset 4")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Décris l'image".encode("latin-1"))
    _clean_failure(_cli("caption", str(image), *model, "--prompt-file", str(latin1)), "not UTF-8", "0xe9", "offset 1")
    _clean_failure(_cli("caption", str(image), *model, "--prompt-file", str(tmp_path / "none.txt")), "does not exist")
    _clean_failure(_cli("caption", str(image), *model, "--prompt", "x", "--prompt-file", str(latin1)), "not both")

    # A UTF-8 file with a byte-order mark and a final newline, and the same text on standard input, give the
    # tokens of --prompt with that text.
    text = "Décris l'image ☕"
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode() + b"\n")
    args = ["--json", "--max-new-tokens", "4", *model]
    direct = _json_lines(_cli("caption", str(image), "--prompt", text, *args))[0]
    from_file = _json_lines(_cli("caption", str(image), "--prompt-file", str(bom), *args))[0]
    from_stdin = _json_lines(_cli("caption", str(image), "--prompt-file", "-", *args, stdin=text.encode()))[0]
    assert direct["prompt_tokens"] == from_file["prompt_tokens"] == from_stdin["prompt_tokens"]
    assert direct["token_ids"] == from_file["token_ids"] == from_stdin["token_ids"]


def test_output_that_cannot_be_encoded_is_replaced_not_a_crash(image: Path, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    named = tmp_path / "café ☕.png"  # two inputs: each caption is labelled with its (non-ASCII) file name
    shutil.copy(image, named)
    args = ["caption", str(named), str(image), "--model-dir", str(tiny_model_dir), "--max-new-tokens", "6"]
    utf8 = _json_lines(_cli(*args, "--json", env={"PYTHONIOENCODING": "utf-8"}))
    assert utf8[0]["image"]["path"] == str(named)
    for extra in ((), ("--json",)):
        proc = _cli(*args, *extra, env={"PYTHONIOENCODING": "ascii"})
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode()[-1500:]
        assert proc.stdout.isascii() and b"caf? ?.png" in proc.stdout, proc.stdout[:300]
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert [x["token_ids"] for x in lines] == [x["token_ids"] for x in utf8]


def test_caption_runs_the_build_contract_check(tmp_path: Path, image: Path, tiny_model_dir: Path) -> None:
    import onnx

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    path = bad / "onnx" / "embed_tokens.onnx"
    model = onnx.load(str(path), load_external_data=False)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32  # input_ids as int32, not int64
    onnx.save(model, str(path))
    _clean_failure(_cli("caption", str(image), "--model-dir", str(bad)), "embed_tokens.onnx", "int32, expected int64")


# ---------------------------------------------------------------- a machine that cannot write


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (a real full disk), where this machine lets the tests mount one (root in a container)."""
    root = tmp_path / "small"
    root.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the injected-error tests below cover these paths")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _build_args(out: Path) -> list[str]:
    mirror = pyodide_mirror()
    return ["build", "--synthetic", "--out", str(out), *(["--pyodide-dir", str(mirror)] if mirror else [])]


def test_disk_full_and_read_only_file_systems(small_fs: Path) -> None:
    line = _clean_failure(_cli(*_build_args(small_fs / "dist")), "No space left on device", "free some disk space")
    assert "left as it was" in line
    _clean_failure(_cli("synth-model", str(small_fs / "model")), "No space left", "free space")
    assert sorted(p.name for p in small_fs.iterdir()) == []  # no staging, no partial model

    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    _clean_failure(_cli(*_build_args(small_fs / "dist")), "Read-only file system", "writable")
    _clean_failure(_cli("synth-model", str(small_fs / "model")), "Read-only file system", "writable")


def test_disk_full_while_filling_the_download_cache(small_fs: Path, tmp_path: Path) -> None:
    """The npm download of onnxruntime-web (26 MB) into a 2 MB cache: a disk error, not a network one, and no
    ``.incomplete`` file stays. (Needs the npm registry; offline, the failure is a network error and is skipped.)"""
    proc = _cli(*_build_args(tmp_path / "dist"), env={"XDG_CACHE_HOME": str(small_fs)})
    err = proc.stderr.decode()
    if "npm registry" in err and "No space" not in err:
        pytest.skip("the npm registry is not reachable from here")
    _clean_failure(proc, "download cache", "No space left on device")
    assert not [p for p in small_fs.rglob("*") if p.is_file()]
    assert not (tmp_path / "dist").exists() and not list(tmp_path.glob(".dist.*"))


def test_injected_write_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES and ENOSPC raised where the build copies files (root ignores permissions, so they are injected)."""
    from click.testing import CliRunner

    from lfmvl_site.cli import main
    from lfmvl_site.site import assets

    for code, words in ((errno.EACCES, ("Permission denied", "permissions")),
                        (errno.ENOSPC, ("No space left on device", "free some disk space"))):
        def refuse(*args: Any, _code: int = code, **kwargs: Any) -> None:
            raise OSError(_code, os.strerror(_code), str(tmp_path / "dist" / "ort"))

        monkeypatch.setattr(assets, "copy_assets", refuse)
        result = CliRunner().invoke(main, _build_args(tmp_path / "dist"))
        assert result.exit_code == 1, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("Error: ") and all(w in last for w in words), result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / "dist").exists() and not list(tmp_path.glob(".dist.*"))


def test_runtime_refuses_broken_text_and_overlong_prompts_for_both_hosts(tiny_model_dir: Path) -> None:
    """The checks live in the runtime's Captioner (the page's too): a JS string with a lone surrogate and a prompt
    past the context are ``bad_input`` errors, with the limit stated."""
    import asyncio

    from lfmvl_site.errors import InputError
    from lfmvl_site.runtime import contract
    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend
    from lfmvl_site.runtime.sampling import SamplingSettings

    captioner = asyncio.run(Captioner.load(NativeBackend(tiny_model_dir)))
    frame = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(InputError, match="not valid text") as broken:
        asyncio.run(captioner.caption(frame, "half a pair \ud83d here"))
    assert contract.error_code(broken.value) == "bad_input"
    limit = captioner.text_config.context
    assert limit == json.loads((tiny_model_dir / "config.json").read_text())["text_config"]["max_position_embeddings"]
    with pytest.raises(InputError, match=f"context is {limit} tokens"):
        asyncio.run(captioner.caption(frame, "word " * limit, settings=SamplingSettings(max_new_tokens=2)))

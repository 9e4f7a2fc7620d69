"""Caption streams: many inputs in one `caption` call, reused image features, speculative greedy decoding.

The references are independent of the stream code: each image captioned alone through the single-image
path (tested against transformers' generate in test_caption.py), and plain greedy decoding (one decoder
run per token) in native onnxruntime.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from lfmvl_site.cli import main
from lfmvl_site.runtime.generate import Captioner
from lfmvl_site.runtime.native import NativeBackend
from lfmvl_site.runtime.preprocess import preprocess
from lfmvl_site.runtime.sampling import SamplingSettings
from lfmvl_site.runtime.speculative import CaptionStream, propose

PIL = pytest.importorskip("PIL.Image")
PROMPT = "Describe this image."


def _png(path: Path, pixels: np.ndarray) -> Path:
    PIL.fromarray(pixels).save(path)
    return path


def _cli_json(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["caption", *args, "--json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


@pytest.fixture(scope="module")
def captioner(tiny_model_dir: Path) -> Captioner:
    return asyncio.run(Captioner.load(NativeBackend(tiny_model_dir)))


def _plain(captioner: Captioner, pixels: np.ndarray, settings: SamplingSettings) -> Any:
    return asyncio.run(captioner.caption(pixels, PROMPT, settings=settings))


def _streamed(captioner: Captioner, pixels: np.ndarray, settings: SamplingSettings, stream: CaptionStream) -> Any:
    return asyncio.run(captioner.caption(pixels, PROMPT, settings=settings, stream=stream))


# -- the CLI ---------------------------------------------------------------------------------------------------


def test_cli_stream_json_lines_match_each_image_captioned_alone(tmp_path: Path, tiny_model_dir: Path) -> None:
    rng = np.random.default_rng(21)
    a = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    nudged = a.copy()
    nudged[120:130, 150:170] = 255
    images = [
        _png(tmp_path / "a.png", a),
        _png(tmp_path / "a-again.png", a),  # another file, the same pixels
        _png(tmp_path / "nudged.png", nudged),
        _png(tmp_path / "tall.png", rng.integers(0, 256, (500, 180, 3), dtype=np.uint8)),
        _png(tmp_path / "tiled.png", rng.integers(0, 256, (1100, 1000, 3), dtype=np.uint8)),
        _png(tmp_path / "a-last.png", a),
    ]
    model = ["--model-dir", str(tiny_model_dir), "--max-new-tokens", "16"]
    lines = _cli_json(*map(str, images), *model)
    assert [d["frame"] for d in lines] == list(range(len(images)))
    assert [d["image"]["path"] for d in lines] == [str(p) for p in images]
    for image, line in zip(images, lines):
        alone = _cli_json(str(image), *model)
        assert len(alone) == 1
        assert line["token_ids"] == alone[0]["token_ids"], image.name
        assert line["text"] == alone[0]["text"] and line["stop_reason"] == alone[0]["stop_reason"]
        assert alone[0]["draft_tokens_accepted"] == 0 and not alone[0]["features_reused"]
        for key in ("text", "token_ids", "decoder_runs", "draft_tokens_accepted", "timings"):
            assert key in line
        assert line["decoder_runs"] == line["timings"]["decoder_runs"] == len(line["timings"]["run_ms"])
    # The repeated picture reused the features and its caption came from the draft in one run;
    # a different picture ran the vision graph again.
    assert [d["features_reused"] for d in lines] == [False, True, False, False, False, False]
    assert lines[1]["decoder_runs"] == 1 < lines[0]["decoder_runs"]
    assert lines[1]["draft_tokens_accepted"] == len(lines[1]["token_ids"]) - 1 + (lines[1]["stop_reason"] == "eos")
    assert all(d["decoder_runs"] <= len(d["token_ids"]) + 1 for d in lines)


def test_cli_stream_text_labels_each_input(tmp_path: Path, tiny_model_dir: Path) -> None:
    a = _png(tmp_path / "a.png", np.full((64, 64, 3), 30, np.uint8))
    b = _png(tmp_path / "b.png", np.full((64, 64, 3), 200, np.uint8))
    result = CliRunner().invoke(main, ["caption", str(a), str(b), "--model-dir", str(tiny_model_dir),
                                       "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{a}: ") and f"\n{b}: " in result.stdout


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lfmvl-site")
    return subprocess.run([str(exe), *args], check=False, capture_output=True, text=True, timeout=120)


def _one_clean_line(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_input_anywhere_in_the_list_fails_before_captioning(tmp_path: Path, tiny_model_dir: Path) -> None:
    good = _png(tmp_path / "ok.png", np.zeros((32, 32, 3), np.uint8))
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    model = ["--model-dir", str(tiny_model_dir)]
    proc = _run_cli("caption", str(good), str(tmp_path / "gone.png"), *model, "--json")
    _one_clean_line(proc, "gone.png", "does not exist")
    assert proc.stdout == ""  # nothing was captioned
    _one_clean_line(_run_cli("caption", str(good), str(empty), *model), "empty.webm", "empty")
    _one_clean_line(_run_cli("caption", str(good), str(tmp_path), *model), "folder")
    bad_every = _run_cli("caption", str(good), "--every", "0", *model)  # click's usage error, like other options
    assert bad_every.returncode == 2 and "Traceback" not in bad_every.stderr
    assert "Error: Invalid value for '--every'" in bad_every.stderr


def test_video_without_pyav_is_refused_in_one_line(tmp_path: Path, tiny_model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    result = CliRunner().invoke(main, ["caption", str(clip), "--model-dir", str(tiny_model_dir)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install av" in lines[0] and "clip.mp4" in lines[0]
    assert result.stdout == ""


def test_video_frames_every_seconds_match_the_frames_captioned_alone(tmp_path: Path, tiny_model_dir: Path) -> None:
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(4)
    scenes = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(4)]
    with av.open(str(clip), "w") as out:  # 10 fps, 3.5 s: a new scene each second
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(35):
            for packet in stream.encode(av.VideoFrame.from_ndarray(scenes[i // 10], format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    # The reference frames, decoded independently: the frame shown at 0, 1, 2 and 3 s.
    with av.open(str(clip)) as inp:
        decoded = {round(float(f.time), 3): f.to_ndarray(format="rgb24") for f in inp.decode(video=0)}
    model = ["--model-dir", str(tiny_model_dir), "--max-new-tokens", "8"]
    lines = _cli_json(str(clip), "--every", "1", *model)
    assert [d["image"]["time_s"] for d in lines] == [0.0, 1.0, 2.0, 3.0]
    for line in lines:
        png = _png(tmp_path / f"t{line['frame']}.png", decoded[line["image"]["time_s"]])
        assert line["token_ids"] == _cli_json(str(png), *model)[0]["token_ids"]
    half = _cli_json(str(clip), "--every", "0.5", *model)
    assert [d["image"]["time_s"] for d in half] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


# -- image features ----------------------------------------------------------------------------------------------


def test_unchanged_frames_reuse_image_features(captioner: Captioner, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    original = captioner.embed_images.run

    async def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(captioner.embed_images, "run", counted)
    rng = np.random.default_rng(3)
    f = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    g = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    # Pixels that differ before resizing but not after (the resize averages the change away), and one
    # change the resize keeps: reuse follows the preprocessed tensors, not the raw pixels.
    lost, kept = f.copy(), f.copy()
    lost[0, 0, 0] ^= 1
    kept[241, 333, 0] ^= 1
    cfg = captioner.processor_config
    assert np.array_equal(preprocess([lost], cfg).pixel_values, preprocess([f], cfg).pixel_values)
    assert not np.array_equal(preprocess([kept], cfg).pixel_values, preprocess([f], cfg).pixel_values)
    frames = [f, f.copy(), lost, g, g, kept, f, f[:240]]
    expect_reuse = [False, True, True, False, True, False, False, False]
    settings = SamplingSettings(max_new_tokens=10)
    stream = CaptionStream()
    got = []
    for frame in frames:
        before = len(runs)
        result = _streamed(captioner, frame, settings, stream)
        got.append(result.timings.features_reused)
        assert (len(runs) == before) == result.timings.features_reused
        monkeypatch.setattr(captioner.embed_images, "run", original)
        assert result.token_ids == _plain(captioner, frame, settings).token_ids
        monkeypatch.setattr(captioner.embed_images, "run", counted)
    assert got == expect_reuse
    assert len(runs) == expect_reuse.count(False)


# -- speculative decoding ----------------------------------------------------------------------------------------


def test_propose_follows_the_previous_caption() -> None:
    prev = [5, 6, 7, 8, 6, 9, 10]
    assert propose([], prev, 3) == [5, 6, 7]
    assert propose([1, 7], prev, 2) == [8, 6]
    assert propose([6], prev, 2) == [7, 8]  # nearest occurrence to position 0
    assert propose([5, 6, 7, 8, 6], prev, 5) == [9, 10]  # the longer match wins over the first 6
    assert propose([42], prev, 4) == [] and propose([5], [], 4) == [] and propose([5], prev, 0) == []


def _frames(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Repeated frames, a slowly changing scene, and cuts, interleaved like a camera would give them."""
    rng = np.random.default_rng(seed)
    frames: list[tuple[str, np.ndarray]] = []
    while len(frames) < count:
        base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        frames += [("repeat", base)] * 6
        cur = base.astype(np.int16)
        for _ in range(8):
            cur = np.clip(cur + rng.integers(-2, 3, cur.shape), 0, 255)
            frames.append(("moving", cur.astype(np.uint8)))
        for _ in range(4):
            h, w = (int(v) for v in rng.integers(40, 300, 2))
            frames.append(("cut", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return frames[:count]


def _check_speculative_equals_plain(captioner: Captioner, frames: list[tuple[str, np.ndarray]], max_new_tokens: int,
                                    *, eos_expected: bool = True) -> CaptionStream:
    settings = SamplingSettings(max_new_tokens=max_new_tokens)
    stream = CaptionStream()
    plain_runs = spec_runs = 0
    stops = set()
    by_kind: dict[str, list[int]] = {}
    for index, (kind, frame) in enumerate(frames):
        plain = _plain(captioner, frame, settings)
        spec = _streamed(captioner, frame, settings, stream)
        assert spec.speculative and not plain.speculative
        assert spec.token_ids == plain.token_ids, (index, kind)
        assert spec.text == plain.text and spec.stop_reason == plain.stop_reason
        assert spec.decoder_runs <= plain.decoder_runs
        plain_runs += plain.decoder_runs
        spec_runs += spec.decoder_runs
        stops.add(plain.stop_reason)
        by_kind.setdefault(kind, []).append(spec.decoder_runs)
    totals = stream.totals
    # Every path ran: whole drafts accepted, drafts rejected part way or at once (rollback), EOS and length.
    assert totals.full_runs > 0 and totals.partial_runs > 0
    if eos_expected:
        assert stops == {"eos", "length"}
    assert 0 < totals.accepted < totals.proposed
    assert spec_runs < plain_runs
    # An unchanged frame's caption is verified in its prefill: one decoder run.
    repeats_after_first = [r for i, r in enumerate(by_kind["repeat"]) if i % 6]
    assert set(repeats_after_first) == {1}
    return stream


def test_speculative_greedy_is_token_identical_to_plain_greedy(captioner: Captioner) -> None:
    assert captioner.full_logits and not captioner._has_rows  # the published layout: every position's logits
    _check_speculative_equals_plain(captioner, _frames(126, seed=8), 24)


@pytest.fixture(scope="module")
def site_models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Decoders as `lfmvl-site build` writes them (last_logits, argmax, q4 lm_head where q4): the speculative loop
    reads the kept positions' ids (``next_tokens``), not logits rows."""
    from lfmvl_site.model import build
    from lfmvl_site.model.options import ModelBuildOptions
    from lfmvl_site.synth import write_model

    mid = tmp_path_factory.mktemp("mid-src")
    write_model(mid, size="mid")
    out = {}
    for name, src, decoder in (("tiny-fp32", tiny_model_dir, "fp32"), ("tiny-q4", tiny_model_dir, "q4"),
                               ("mid-fp32", mid, "fp32")):
        dest = tmp_path_factory.mktemp(f"site-{name}") / "model"
        build.build_model(ModelBuildOptions(model_dir=src, decoder=decoder, vision="fp32", embed_tokens="fp32"), dest,
                          progress=False)
        out[name] = dest
    return out


@pytest.mark.parametrize(("name", "frames", "tokens"), [("tiny-fp32", 126, 24), ("tiny-q4", 54, 24),
                                                        pytest.param("mid-fp32", 18, 16, marks=pytest.mark.slow)])
def test_speculative_on_site_built_decoders_is_token_identical(site_models: dict[str, Path], name: str, frames: int,
                                                               tokens: int) -> None:
    captioner = asyncio.run(Captioner.load(NativeBackend(site_models[name])))
    assert captioner._has_rows and captioner.full_logits
    _check_speculative_equals_plain(captioner, _frames(frames, seed=11), tokens, eos_expected=False)


def test_sampling_and_repetition_penalty_keep_the_plain_loop(captioner: Captioner) -> None:
    frame = np.random.default_rng(9).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for settings in (SamplingSettings(max_new_tokens=10, temperature=0.8, top_k=20, seed=3),
                     SamplingSettings(max_new_tokens=10, repetition_penalty=1.3)):
        stream = CaptionStream()
        for _ in range(3):
            spec = _streamed(captioner, frame, settings, stream)
            assert not spec.speculative and spec.drafts.proposed == 0
            assert spec.token_ids == _plain(captioner, frame, settings).token_ids
            assert spec.decoder_runs == len(spec.token_ids) + (spec.stop_reason == "eos")


def test_decoder_with_last_position_logits_decodes_plainly(tmp_path: Path, tiny_model_dir: Path,
                                                           captioner: Captioner) -> None:
    """An older build whose decoder returns only the last position's logits cannot verify drafts: same tokens, plainly."""
    import onnx

    from lfmvl_site.model.optimize import last_logits

    model_dir = tmp_path / "last"
    shutil.copytree(tiny_model_dir, model_dir)
    path = model_dir / "onnx" / "decoder.onnx"
    model = last_logits(onnx.load(str(path)))
    # As builds before draft verification wrote it: the head on the last position only, logits [B, 1, V].
    starts = next(t for t in model.graph.initializer if t.name == "/lfmvl/last_logits/starts")
    starts.CopyFrom(onnx.numpy_helper.from_array(np.array([-1], np.int64), starts.name))
    logits = next(o for o in model.graph.output if o.name == "logits").type.tensor_type.shape.dim[1]
    logits.Clear()
    logits.dim_value = 1
    path.unlink()
    (model_dir / "onnx" / "decoder.onnx_data").unlink()
    onnx.save(model, str(path), save_as_external_data=True, location="decoder.onnx_data")
    short = asyncio.run(Captioner.load(NativeBackend(model_dir)))
    assert not short.full_logits
    frame = np.random.default_rng(2).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    settings = SamplingSettings(max_new_tokens=12)
    stream = CaptionStream()
    reference = _plain(captioner, frame, settings).token_ids
    for _ in range(2):
        result = _streamed(short, frame, settings, stream)
        assert result.token_ids == reference and not result.speculative

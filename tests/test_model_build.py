"""build_model on the tiny model: every precision loads and runs in native onnxruntime close to the fp32 source
graphs, the manifest describes exactly what was written, output is deterministic, and failures leave dest alone."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lfmvl_site.errors import BuildError, ContractError, ModelFileError
from lfmvl_site.model import build as build_mod
from lfmvl_site.model.build import build_model
from lfmvl_site.model.options import ModelBuildOptions

# Three builds cover every precision of every role (graphs of different roles do not interact).
PRESETS = {
    "fp32": dict(vision="fp32", decoder="fp32", embed_tokens="fp32"),
    "fp16": dict(vision="fp16", decoder="fp16", embed_tokens="fp16"),  # ships q4 vision/decoder as fallbacks
    "q4": dict(vision="q4", decoder="q4", embed_tokens="fp16"),
}


@pytest.fixture(scope="module")
def built(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("built")
    out = {}
    for name, preset in PRESETS.items():
        build_model(ModelBuildOptions(model_dir=tiny_model_dir, **preset), root / name / "model", progress=False)
        out[name] = root / name / "model"
    return out


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _sessions(root: Path, files: dict[str, str]) -> dict[str, ort.InferenceSession]:
    return {role: _session(root / rel) for role, rel in files.items()}


def _image_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "pixel_values": rng.uniform(-1, 1, (1, 64, 768)).astype(np.float32),  # one 8x8-patch tile -> 16 tokens
        "pixel_attention_mask": np.ones((1, 64), np.int64),
        "spatial_shapes": np.array([[8, 8]], np.int64),
    }


PROMPT = [1, 6, 502, 10, 498] + [396] * 16 + [499] + [600, 700, 800, 7, 10, 6, 900, 10]


def greedy(sessions: dict[str, ort.InferenceSession], steps: int = 12) -> tuple[list[int], np.ndarray]:
    """A captioning loop driven with onnxruntime directly (design doc §1.6, §2): returns ids and prefill logits."""
    et, ei, dec = sessions["embed_tokens"], sessions["embed_images"], sessions["decoder"]
    feats = ei.run(None, _image_inputs())[0]
    ids = np.array([PROMPT], np.int64)
    embeds = et.run(None, {"input_ids": ids})[0]
    embeds[0, ids[0] == 396] = feats
    feeds: dict[str, np.ndarray] = {"inputs_embeds": embeds, "attention_mask": np.ones(ids.shape, np.int64)}
    for inp in dec.get_inputs():
        if inp.name.startswith("past"):
            shape = [0 if isinstance(d, str) and "sequence" in d else (1 if isinstance(d, str) else d) for d in inp.shape]
            feeds[inp.name] = np.zeros(shape, np.float32)
    names = [o.name for o in dec.get_outputs()]
    tokens: list[int] = []
    first_logits = None
    total = ids.shape[1]
    for _ in range(steps):
        out = dict(zip(names, dec.run(None, feeds)))
        row = out["logits"][0, -1]
        if first_logits is None:
            first_logits = row
        tok = int(np.argmax(row))
        if "next_token" in out:
            assert int(out["next_token"][0]) == tok
        tokens.append(tok)
        total += 1
        feeds = {"inputs_embeds": et.run(None, {"input_ids": np.array([[tok]], np.int64)})[0],
                 "attention_mask": np.ones((1, total), np.int64)}
        for name, value in out.items():
            if name.startswith("present_conv."):
                feeds["past_conv." + name.split(".", 1)[1]] = value
            elif name.startswith("present."):
                feeds["past_key_values." + name.split(".", 1)[1]] = value
    assert first_logits is not None
    return tokens, first_logits


def _reference(tiny_model_dir: Path) -> tuple[list[int], np.ndarray, np.ndarray]:
    files = {r: f"onnx/{r}.onnx" for r in ("embed_tokens", "embed_images", "decoder")}
    sess = _sessions(tiny_model_dir, files)
    tokens, logits = greedy(sess)
    return tokens, logits, sess["embed_images"].run(None, _image_inputs())[0]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_every_precision_runs_close_to_fp32(built: dict[str, Path], tiny_model_dir: Path, record_property) -> None:
    ref_tokens, ref_logits, ref_feats = _reference(tiny_model_dir)
    report = []
    seen = set()
    for name, root in built.items():
        manifest = json.loads((root / "manifest.json").read_text())
        for role, variants in manifest["graphs"].items():
            for v in variants:
                seen.add((role, v["precision"]))
        # Every combination of variants the page could pick (preferred or fallback) in this build.
        import itertools

        for combo in itertools.product(*(manifest["graphs"][r] for r in ("embed_tokens", "embed_images", "decoder"))):
            files = {v_role: v["file"] for v_role, v in zip(("embed_tokens", "embed_images", "decoder"), combo)}
            label = "/".join(f"{r.split('_')[-1]}={v['precision']}" for r, v in zip(("tokens", "images", "decoder"), combo))
            sess = _sessions(root, files)
            tokens, logits = greedy(sess)
            feats = sess["embed_images"].run(None, _image_inputs())[0]
            agree = sum(a == b for a, b in zip(tokens, ref_tokens)) / len(ref_tokens)
            report.append(f"{label}: greedy agreement {agree:.2f}, prefill logits cos {_cos(logits, ref_logits):.4f}, "
                          f"image features cos {_cos(feats, ref_feats):.4f}")
            precisions = {v["precision"] for v in combo}
            assert feats.shape == ref_feats.shape
            # Closeness bounds (not equality): fp16 is a rounding of fp32; q4 is coarser (the design doc's
            # published tests accept vision q4 at correlation >= 0.89; random tiny weights are harder).
            if precisions == {"fp32"}:
                assert tokens == ref_tokens
                np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
            elif "q4" not in precisions:
                assert _cos(logits, ref_logits) > 0.999 and _cos(feats, ref_feats) > 0.999
            else:
                assert _cos(feats, ref_feats) > 0.9 and _cos(logits, ref_logits) > 0.5
    print("\n" + "\n".join(report))
    record_property("agreement", report)
    assert seen == {("embed_tokens", "fp32"), ("embed_tokens", "fp16"), ("embed_images", "fp32"),
                    ("embed_images", "fp16"), ("embed_images", "q4"), ("decoder", "fp32"), ("decoder", "fp16"),
                    ("decoder", "q4")}


def test_manifest_describes_the_files(built: dict[str, Path]) -> None:
    for root in built.values():
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["format"] == 1
        on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        assert [f["path"] for f in manifest["files"]] == [p for p in on_disk if p != "manifest.json"]
        for f in manifest["files"]:
            data = (root / f["path"]).read_bytes()
            assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
        for role, variants in manifest["graphs"].items():
            assert variants[-1]["needs"] == [], f"{role}: the last variant must run without shader-f16"
            for v in variants:
                assert v["needs"] == (["shader-f16"] if v["precision"] == "fp16" else [])
                sess = _session(root / v["file"])  # onnxruntime's own view of the I/O is the reference
                assert [i["name"] for i in v["inputs"]] == [i.name for i in sess.get_inputs()]
                assert [o["name"] for o in v["outputs"]] == [o.name for o in sess.get_outputs()]
                model = onnx.load(str(root / v["file"]), load_external_data=False)
                locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
                assert {f"onnx/{loc}" for loc in locations} == set(v["external_data"])
        for name in ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "chat_template.jinja"):
            assert (root / name).is_file()


def test_q4_graphs_have_no_zero_points(built: dict[str, Path]) -> None:
    count = 0
    for root in built.values():
        manifest = json.loads((root / "manifest.json").read_text())
        for role, variants in manifest["graphs"].items():
            for v in variants:
                model = onnx.load(str(root / v["file"]), load_external_data=False)
                nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
                if v["precision"] != "q4":
                    assert not nbits
                    continue
                assert nbits and not any(n.op_type == "MatMul" for n in model.graph.node)
                for n in nbits:
                    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                    assert len([i for i in n.input if i]) == 3, f"{n.name} has a zero_points input"
                    level = 0 if role == "decoder" else 4  # float activations in the decoder (see below)
                    assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == level
                count += len(nbits)
    assert count > 0


def test_decoder_optimizations_in_built_graph(built: dict[str, Path]) -> None:
    manifest = json.loads((built["q4"] / "manifest.json").read_text())
    assert manifest["optimizations"] == {"last_logits": True, "q4_lm_head": True, "argmax": True, "fuse": True,
                                         "float_activations": True, "plain_attention": False}
    dec = manifest["graphs"]["decoder"][0]
    outs = {o["name"]: o for o in dec["outputs"]}
    assert outs["logits"]["shape"][1] == "kept_positions"  # min(S, VERIFY_ROWS): a draft check's rows
    assert outs["next_token"] == {"name": "next_token", "dtype": "int64", "shape": ["batch_size"]}
    assert outs["next_tokens"] == {"name": "next_tokens", "dtype": "int64", "shape": ["batch_size", "kept_positions"]}


def test_build_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    opts = ModelBuildOptions(model_dir=tiny_model_dir, max_shard_mb=1, decoder="fp32")
    a = build_model(opts, tmp_path / "a", progress=False)
    b = build_model(opts, tmp_path / "b", progress=False)
    assert a == b
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # max_shard_mb=1 really shards the 1.7 MB fp32 tiny decoder.
    assert len(a["graphs"]["decoder"][0]["external_data"]) >= 2


def test_synthetic_source(tmp_path: Path) -> None:
    m = build_model(ModelBuildOptions(synthetic=True, seed=3), tmp_path / "model", progress=False)
    assert m["source"] == {"repo_id": None, "revision": None, "local_dir": None, "synthetic": True, "seed": 3,
                           "size": "tiny"}
    assert (tmp_path / "model" / "onnx" / "decoder_q4.onnx").is_file()


# --- failures leave nothing half-written ------------------------------------------------------------------


@pytest.fixture
def previous_dest(tmp_path: Path) -> Path:
    dest = tmp_path / "dist" / "model"
    dest.mkdir(parents=True)
    (dest / "marker.txt").write_text("previous build")
    return dest


def _assert_untouched(dest: Path) -> None:
    assert sorted(p.name for p in dest.iterdir()) == ["marker.txt"]
    assert (dest / "marker.txt").read_text() == "previous build"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"], "temporary directories were left behind"


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_source_file(tiny_model_dir: Path, tmp_path: Path, previous_dest: Path) -> None:
    src = _copy_model(tiny_model_dir, tmp_path / "src")
    data = src / "onnx" / "decoder.onnx_data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=r"decoder\.onnx_data is truncated"):
        build_model(ModelBuildOptions(model_dir=src), previous_dest, progress=False)
    _assert_untouched(previous_dest)


def test_wrong_contract(tiny_model_dir: Path, tmp_path: Path, previous_dest: Path) -> None:
    src = _copy_model(tiny_model_dir, tmp_path / "src")
    path = src / "onnx" / "decoder.onnx"
    model = onnx.load(str(path), load_external_data=False)
    for vi in model.graph.input:
        if vi.name == "attention_mask":
            vi.type.tensor_type.elem_type = onnx.TensorProto.INT32
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ContractError, match=r"onnx/decoder\.onnx.*'attention_mask' is int32, expected int64"):
        build_model(ModelBuildOptions(model_dir=src), previous_dest, progress=False)
    _assert_untouched(previous_dest)


def test_disk_full_midway(tiny_model_dir: Path, previous_dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = build_mod.save_sharded
    calls = []

    def failing(model, path, **kw):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == 3:  # after two graphs are on disk
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, path, **kw)

    monkeypatch.setattr(build_mod, "save_sharded", failing)
    with pytest.raises(BuildError, match="Disk full.*left as it was"):
        build_model(ModelBuildOptions(model_dir=tiny_model_dir), previous_dest, progress=False)
    assert len(calls) == 3
    _assert_untouched(previous_dest)


def test_interrupted_midway(tiny_model_dir: Path, previous_dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src, dst, **kw):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod.shutil, "copyfile", interrupted)  # after all graphs were written
    with pytest.raises(KeyboardInterrupt):
        build_model(ModelBuildOptions(model_dir=tiny_model_dir), previous_dest, progress=False)
    _assert_untouched(previous_dest)


def test_failed_first_build_leaves_no_dest(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_mod.shutil, "copyfile", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(BuildError, match="Could not write"):
        build_model(ModelBuildOptions(model_dir=tiny_model_dir), tmp_path / "out" / "model", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_rebuild_replaces_previous(tiny_model_dir: Path, previous_dest: Path) -> None:
    build_model(ModelBuildOptions(model_dir=tiny_model_dir), previous_dest, progress=False)
    assert not (previous_dest / "marker.txt").exists() and (previous_dest / "manifest.json").is_file()
    assert sorted(p.name for p in previous_dest.parent.iterdir()) == ["model"]


@pytest.mark.parametrize("on", [True, False])
def test_q4_decoder_matmuls_run_on_float_activations(tiny_model_dir: Path, tmp_path: Path, on: bool) -> None:
    """accuracy_level 0 on every decoder MatMulNBits (lm_head included) unless --int8-activations; the vision graph
    keeps the published level 4 (its runs always have many rows, so no one-row/multi-row disagreement there)."""
    manifest = build_model(ModelBuildOptions(model_dir=tiny_model_dir, vision="q4", float_activations=on),
                           tmp_path / "m", progress=False)
    dec = manifest["graphs"]["decoder"][0]
    assert ("float_activations" in dec["optimizations"]) is on
    levels = {}
    for role in ("decoder", "embed_images"):
        g = onnx.load(str(tmp_path / "m" / manifest["graphs"][role][0]["file"]), load_external_data=False)
        levels[role] = {next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)
                        for n in g.graph.node if n.op_type == "MatMulNBits"}
    assert levels["decoder"] == ({0} if on else {4})
    assert levels["embed_images"] == {4}

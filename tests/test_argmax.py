"""The decoder's final token choice never picks an id without a tokenizer entry (issue 11 item 2), and the in-graph
``next_token`` is numpy's argmax over the allowed ids, built without ONNX ArgMax (issue 16 item 0: onnxruntime's
WebGPU ArgMax loops over the 65,536 logits in one thread).

References: numpy's argmax over ``logits[..., :entries]`` of the graph's own logits (native onnxruntime), and the
same runtime on the unmodified tiny model, whose generation other tests hold equal to transformers. "Forbidden ids
are the largest" is made real by padding the tiny decoder's logits with columns far above every real logit.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lfmvl_site.errors import ContractError, InputError
from lfmvl_site.model import build, optimize
from lfmvl_site.model.options import ModelBuildOptions
from lfmvl_site.runtime.sampling import Sampler, SamplingSettings

PAD = 64  # extra logits columns of the padded tiny decoder (ids 1024..1087, no tokenizer entry)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _logits_graph(rows: int, seq: int | str, opset: int) -> onnx.ModelProto:
    """x -> Identity -> logits [b, seq, rows]: the argmax sees exactly the logits the test feeds."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", seq, rows])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", seq, rows])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _rows_of_logits(rows: int, entries: int, seq: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random rows, rows full of ties, ties straddling the entries boundary, forbidden ids largest, constant rows."""
    b = 3
    cases = [rng.standard_normal((b, seq, rows)).astype(np.float32) * 4]
    cases.append(rng.integers(-2, 3, (b, seq, rows)).astype(np.float32))  # thousands of ties at the maximum
    tie = np.zeros((b, seq, rows), np.float32)
    tie[:, :, [5, 17, entries - 1]] = 7.0
    if entries < rows:
        tie[:, :, entries:] = 7.0  # the same maximum past the boundary
    cases.append(tie)
    big = rng.standard_normal((b, seq, rows)).astype(np.float32)
    big[:, :, entries - 1] = 3.0  # the last allowed id is the allowed maximum
    if entries < rows:
        big[:, :, entries:] = 1e30  # every forbidden id beats every allowed one
    cases.append(big)
    cases.append(np.full((b, seq, rows), -np.inf, np.float32))
    late = np.full((b, seq, rows), -5.0, np.float32)
    late[0, -1, rows - 1 if entries == rows else entries - 1] = 0.0  # maximum at the very end of the allowed ids
    late[1, -1, 0] = 0.0
    cases.append(late)
    return cases


@pytest.mark.parametrize("opset", [17, 21])
@pytest.mark.parametrize("seq", [1, "s"])
@pytest.mark.parametrize(("rows", "entries"), [(1024, 1024), (1024, 1000), (65536, 64400), (65536, 65536)])
def test_next_token_is_numpy_argmax_over_allowed_ids(rows: int, entries: int, seq: int | str, opset: int) -> None:
    model = optimize.add_argmax(_logits_graph(rows, seq, opset), entries)
    assert not any(n.op_type == "ArgMax" for n in model.graph.node)  # the one-thread WebGPU kernel
    rng = np.random.default_rng(rows + entries + opset)
    for x in _rows_of_logits(rows, entries, 1 if seq == 1 else 4, rng):
        out = _run(model, {"x": x})
        assert out["next_token"].dtype == np.int64 and out["next_token"].shape == (x.shape[0],)
        ref = np.argmax(out["logits"][:, -1, :entries], axis=-1)
        np.testing.assert_array_equal(out["next_token"], ref)
        assert (out["next_token"] < entries).all()


def test_as_many_entries_as_rows_adds_no_mask() -> None:
    plain = optimize.add_argmax(_logits_graph(4096, 1, 21))
    same = optimize.add_argmax(_logits_graph(4096, 1, 21), 4096)
    assert plain == same
    assert "Slice" not in [n.op_type for n in same.graph.node]
    cut = optimize.add_argmax(_logits_graph(4096, 1, 21), 4000)
    slices = [n for n in cut.graph.node if n.op_type == "Slice"]
    assert len(slices) == 1 and len(cut.graph.node) == len(same.graph.node) + 1


def test_more_entries_than_logits_columns_is_a_clear_error() -> None:
    with pytest.raises(ContractError, match="tokenizer has 1025 entries but the decoder's logits have 1024 columns"):
        optimize.add_argmax(_logits_graph(1024, 1, 21), 1025)


def test_logits_of_unknown_width_get_a_plain_argmax() -> None:
    model = optimize.add_argmax(_logits_graph("v", 1, 21), 50)  # type: ignore[arg-type]
    x = np.random.default_rng(1).standard_normal((2, 1, 80)).astype(np.float32)
    x[:, :, 60] = 99.0
    out = _run(model, {"x": x})
    np.testing.assert_array_equal(out["next_token"], np.argmax(x[:, -1, :50], -1))


def test_build_adds_the_argmax_after_the_fp16_conversion() -> None:
    """Positions past 2048 are not exact in fp16: the build must add the argmax after converting the decoder."""
    rows, entries = 65536, 64400
    variant = build._Variant("decoder", "fp16", _logits_graph(rows, 1, 21))
    options = ModelBuildOptions(model_dir=Path("."), decoder="fp16", last_logits=False, q4_lm_head=False)
    build._convert(variant, options, converting=True, progress=False, entries=entries)
    assert variant.optimizations == ["argmax"]
    x = np.random.default_rng(2).standard_normal((3, 1, rows)).astype(np.float32)
    x[0, 0, 64399] = x[1, 0, 40001] = x[2, 0, 2049] = 50.0
    x[:, :, entries:] = 100.0
    out = _run(variant.model, {"x": x})
    np.testing.assert_array_equal(out["next_token"], [64399, 40001, 2049])


# -- the tiny model with logits columns that have no token ---------------------------------------------------------


def _pad_decoder(model: onnx.ModelProto) -> onnx.ModelProto:
    """lm_head [H, V] -> [H + 1, V + PAD] fed [h, 1]: the real logits unchanged, PAD more columns at 1e4.

    The lm_head stays a MatMul with a constant weight, so last_logits and q4_lm_head still apply.
    """
    from lfmvl_site.model.quantize import find_lm_head

    head = find_lm_head(model)
    assert head is not None and head.op_type == "MatMul"
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    tr = producers[head.input[1]]
    assert tr.op_type == "Transpose" and tr.input[0] in inits
    table = numpy_helper.to_array(inits[tr.input[0]])  # [V, H], tied with embed_tokens
    vocab, hidden = table.shape
    weight = np.zeros((hidden + 1, vocab + PAD), np.float32)
    weight[:hidden, :vocab] = table.T
    weight[hidden, vocab:] = 1e4
    model.graph.initializer.append(numpy_helper.from_array(weight, "padded_lm_head.weight"))
    for name, value in (("pad/two", np.array([2], np.int64)), ("pad/zero", np.array([0], np.int64)),
                        ("pad/one", np.array([1], np.int64))):
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    h = head.input[0]
    model.graph.node.extend([
        helper.make_node("Shape", [h], ["pad/shape"]),
        helper.make_node("Slice", ["pad/shape", "pad/zero", "pad/two"], ["pad/bs"]),
        helper.make_node("Concat", ["pad/bs", "pad/one"], ["pad/ones_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["pad/ones_shape"], ["pad/ones"],
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Concat", [h, "pad/ones"], ["pad/h1"], axis=-1),
    ])
    head.input[0], head.input[1] = "pad/h1", "padded_lm_head.weight"
    out = next(o for o in model.graph.output if o.name == "logits")
    out.type.tensor_type.shape.dim[2].dim_value = vocab + PAD
    return model


@pytest.fixture(scope="module")
def padded_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with PAD more lm_head rows than tokenizer entries, every one of them the largest logit."""
    root = tmp_path_factory.mktemp("padded") / "model"
    shutil.copytree(tiny_model_dir, root)
    dec = onnx.load(str(root / "onnx" / "decoder.onnx"))
    (root / "onnx" / "decoder.onnx").unlink()
    (root / "onnx" / "decoder.onnx_data").unlink()
    onnx.save(_pad_decoder(dec), str(root / "onnx" / "decoder.onnx"), save_as_external_data=True,
              location="decoder.onnx_data")
    cfg = json.loads((root / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    assert text["vocab_size"] == 1024
    text["vocab_size"] = 1024 + PAD
    (root / "config.json").write_text(json.dumps(cfg))
    return root


def _decoder_feeds(model: onnx.ModelProto, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim]
        if inp.name == "inputs_embeds":
            feeds[inp.name] = rng.standard_normal((1, seq, dims[2])).astype(np.float32)
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones((1, seq), np.int64)
        else:
            shape = [0 if isinstance(d, str) and "sequence" in d else (1 if isinstance(d, str) else d) for d in dims]
            feeds[inp.name] = np.zeros(shape, np.float32)
    return feeds


@pytest.mark.parametrize("last", [False, True])
def test_padded_decoder_next_token_skips_the_largest_forbidden_logits(tiny_model_dir: Path, padded_model_dir: Path,
                                                                     last: bool) -> None:
    dec = onnx.load(str(padded_model_dir / "onnx" / "decoder.onnx"))
    original = onnx.load(str(tiny_model_dir / "onnx" / "decoder.onnx"))
    model = copy.deepcopy(dec)
    if last:
        optimize.last_logits(model)
    optimize.add_argmax(model, 1024)
    for seq, seed in ((1, 0), (5, 1), (23, 2)):
        out = _run(model, _decoder_feeds(dec, seq, seed))
        row = out["logits"][0, -1]
        assert row.shape == (1024 + PAD,) and np.argmax(row) >= 1024  # unmasked, a forbidden id would win
        assert out["next_token"][0] == int(np.argmax(row[:1024]))
        ref = _run(original, _decoder_feeds(dec, seq, seed))["logits"][0, -1]
        assert np.array_equal(row[:1024], ref)  # the padding leaves the real logits bit-identical


# -- sampling -------------------------------------------------------------------------------------------------------

SETTINGS = [
    SamplingSettings(),
    SamplingSettings(repetition_penalty=1.3),
    SamplingSettings(temperature=0.7),
    SamplingSettings(temperature=5.0),
    SamplingSettings(temperature=1.0, top_k=1200),  # k larger than the allowed ids
    SamplingSettings(temperature=1.0, top_k=3),
    SamplingSettings(temperature=2.0, min_p=0.01),
    SamplingSettings(temperature=1.0, top_k=50, min_p=0.05, repetition_penalty=1.3),
]
SETTING_IDS = ["greedy", "greedy-penalty", "temp", "hot", "topk-wide", "topk", "minp", "all"]


@pytest.mark.parametrize("settings", SETTINGS, ids=SETTING_IDS)
def test_sampler_never_picks_an_id_without_a_tokenizer_entry(settings: SamplingSettings) -> None:
    rng = np.random.default_rng(4)
    entries, rows = 1000, 1024
    logits = rng.standard_normal(rows).astype(np.float32)
    logits[entries:] = 50.0 + rng.standard_normal(rows - entries).astype(np.float32)  # forbidden ids largest
    seen = np.concatenate([rng.integers(0, entries, 20), [1010, 1020]])  # even if a forbidden id was "seen"
    ours, ref = Sampler(settings, entries), Sampler(settings)
    picks = [ours.pick(logits, seen) for _ in range(1500)]
    assert max(picks) < entries
    # The draw is the one over the allowed ids alone (same seed, same distribution, same draws).
    assert picks == [ref.pick(logits[:entries], seen[seen < entries]) for _ in range(1500)]
    if settings.greedy and settings.repetition_penalty == 1.0:
        assert set(picks) == {int(np.argmax(logits[:entries]))}


def test_sampler_without_fewer_entries_than_columns_is_unchanged() -> None:
    logits = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    s = SamplingSettings(temperature=1.0, seed=3)
    a, b, c = Sampler(s), Sampler(s, 64), Sampler(s, 100)
    assert [a.pick(logits, np.array([])) for _ in range(50)] == [b.pick(logits, np.array([])) for _ in range(50)] \
        == [c.pick(logits, np.array([])) for _ in range(50)]
    with pytest.raises(InputError):
        Sampler(s, 0)


# -- generation through the runtime -------------------------------------------------------------------------------


def _caption(model_dir: Path, settings: SamplingSettings) -> list[int]:
    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend

    captioner = asyncio.run(Captioner.load(NativeBackend(model_dir)))
    frame = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    return list(asyncio.run(captioner.caption(frame, "Describe.", settings=settings)).token_ids)


GEN_SETTINGS = [
    SamplingSettings(max_new_tokens=12),
    SamplingSettings(max_new_tokens=12, temperature=1.5, seed=1),
    SamplingSettings(max_new_tokens=12, temperature=1.0, top_k=40, seed=2),
    SamplingSettings(max_new_tokens=12, temperature=1.2, min_p=0.02, repetition_penalty=1.2, seed=3),
]


@pytest.mark.parametrize("settings", GEN_SETTINGS, ids=["greedy", "temp", "topk", "minp-penalty"])
def test_generation_never_emits_an_id_without_an_entry(tiny_model_dir: Path, padded_model_dir: Path,
                                                       settings: SamplingSettings) -> None:
    padded = _caption(padded_model_dir, settings)
    assert padded and max(padded) < 1024
    assert padded == _caption(tiny_model_dir, settings)  # as if the forbidden rows were not there


def test_built_model_greedy_uses_the_masked_next_token(tiny_model_dir: Path, padded_model_dir: Path,
                                                       tmp_path: Path) -> None:
    def built(src: Path, dest: Path) -> dict:
        return build.build_model(ModelBuildOptions(model_dir=src, decoder="fp32", vision="fp32", embed_tokens="fp32"),
                                 dest, progress=False)

    dest = tmp_path / "model"
    manifest = built(padded_model_dir, dest)
    dec = manifest["graphs"]["decoder"][0]
    assert "argmax" in dec["optimizations"] and "next_token" in {o["name"] for o in dec["outputs"]}
    graph = onnx.load(str(dest / dec["file"])).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.startswith("/lfmvl/argmax")}
    cut = [n for n in graph.node if n.op_type == "Slice" and "next_token" not in n.output and n.name.startswith("/lfmvl/argmax")]
    assert len(cut) == 1 and inits[cut[0].input[2]].tolist()[-1] == 1024  # the tokenizer's entry count
    settings = SamplingSettings(max_new_tokens=12)
    ids = _caption(dest, settings)
    assert max(ids) < 1024
    built(tiny_model_dir, tmp_path / "reference")  # same build of the model without the extra rows
    assert ids == _caption(tmp_path / "reference", settings)


def test_speculative_stream_never_emits_an_id_without_an_entry(tiny_model_dir: Path, padded_model_dir: Path) -> None:
    """Greedy drafts verified against every position's logits pick over the allowed ids too (same frame twice)."""
    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend
    from lfmvl_site.runtime.speculative import CaptionStream

    frame = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    settings = SamplingSettings(max_new_tokens=12)
    reference = _caption(tiny_model_dir, settings)
    captioner = asyncio.run(Captioner.load(NativeBackend(padded_model_dir)))
    stream = CaptionStream()
    for _ in range(2):
        result = asyncio.run(captioner.caption(frame, "Describe.", settings=settings, stream=stream))
        assert result.speculative
        assert list(result.token_ids) == reference

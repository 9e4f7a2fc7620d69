"""Contract check: the tiny model's graphs pass; each kind of deviation is a ContractError naming file and difference."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest

from lfmvl_site.errors import ContractError
from lfmvl_site.model.contract import check_io, check_model, graph_io
from lfmvl_site.runtime.backend import TensorInfo


@pytest.fixture(scope="module")
def graphs(tiny_model_dir: Path) -> dict[str, onnx.ModelProto]:
    return {r: onnx.load(str(tiny_model_dir / "onnx" / f"{r}.onnx"), load_external_data=False)
            for r in ("embed_tokens", "embed_images", "decoder")}


@pytest.fixture(scope="module")
def text_config(tiny_model_dir: Path) -> dict:
    return json.loads((tiny_model_dir / "config.json").read_text())["text_config"]


def test_tiny_model_passes(graphs: dict[str, onnx.ModelProto], text_config: dict) -> None:
    for role, model in graphs.items():
        check_model(role, model, file=f"{role}.onnx", hidden_size=text_config["hidden_size"],
                    layer_types=text_config["layer_types"])


def test_graph_io_matches_onnxruntime(graphs: dict[str, onnx.ModelProto], tiny_model_dir: Path) -> None:
    import onnxruntime as ort

    for role in graphs:
        sess = ort.InferenceSession(str(tiny_model_dir / "onnx" / f"{role}.onnx"), providers=["CPUExecutionProvider"])
        inputs, outputs = graph_io(onnx.load(str(tiny_model_dir / "onnx" / f"{role}.onnx"), load_external_data=False))
        assert [(t.name, t.shape) for t in inputs] == [(i.name, tuple(i.shape)) for i in sess.get_inputs()]
        assert [(t.name, t.shape) for t in outputs] == [(o.name, tuple(o.shape)) for o in sess.get_outputs()]
        type_names = {"float32": "tensor(float)", "int64": "tensor(int64)"}
        assert [type_names[t.dtype] for t in inputs] == [i.type for i in sess.get_inputs()]


def _io(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    return graph_io(model)


def _rename(infos: list[TensorInfo], old: str, new: str) -> list[TensorInfo]:
    return [TensorInfo(new, t.dtype, t.shape) if t.name == old else t for t in infos]


def _retype(infos: list[TensorInfo], name: str, dtype: str) -> list[TensorInfo]:
    return [TensorInfo(t.name, dtype, t.shape) if t.name == name else t for t in infos]


@pytest.mark.parametrize(
    ("role", "mutate", "message"),
    [
        ("decoder", lambda i, o: (_rename(i, "attention_mask", "attn_mask"), o), "missing input"),
        ("decoder", lambda i, o: (_retype(i, "inputs_embeds", "float16"), o), "'inputs_embeds' is float16, expected float32"),
        ("decoder", lambda i, o: ([t for t in i if t.name != "past_conv.0"], o), "'present_conv.0' has no input past_conv.0"),
        ("decoder", lambda i, o: (i, [t for t in o if t.name != "present.2.value"]), "missing output"),
        ("decoder", lambda i, o: (i + [TensorInfo("use_cache", "bool", ())], o), "unexpected input 'use_cache'"),
        ("decoder", lambda i, o: (i, _retype(o, "logits", "float16")), "'logits' is float16"),
        ("embed_tokens", lambda i, o: (_retype(i, "input_ids", "int32"), o), "'input_ids' is int32, expected int64"),
        ("embed_tokens", lambda i, o: (i, _rename(o, "inputs_embeds", "embeddings")), "missing output"),
        ("embed_images", lambda i, o: (_rename(i, "pixel_attention_mask", "patch_attention_mask"), o), "patch_attention_mask"),
        ("embed_images", lambda i, o: (i, [TensorInfo(o[0].name, "float32", ("b", "n", 64))]), "expected rank 2"),
    ],
)
def test_deviations_are_named(graphs: dict[str, onnx.ModelProto], role: str, mutate, message: str) -> None:
    inputs, outputs = mutate(*_io(graphs[role]))
    with pytest.raises(ContractError, match=f"onnx/{role}.onnx") as info:
        check_io(role, inputs, outputs, file=f"onnx/{role}.onnx")
    assert message in str(info.value)


def test_optional_inputs_and_output_names(graphs: dict[str, onnx.ModelProto]) -> None:
    inputs, outputs = _io(graphs["decoder"])
    # position_ids (older exports) and next_token (argmax optimization) are allowed.
    check_io("decoder", inputs + [TensorInfo("position_ids", "int64", ("batch_size", "sequence_length"))],
             outputs + [TensorInfo("next_token", "int64", ("batch_size",))], file="d.onnx")
    with pytest.raises(ContractError, match="'position_ids' is float32"):
        check_io("decoder", inputs + [TensorInfo("position_ids", "float32", ("b", "s"))], outputs, file="d.onnx")
    # The vision output is read by position: another name is fine.
    inputs, outputs = _io(graphs["embed_images"])
    check_io("embed_images", inputs, _rename(outputs, outputs[0].name, "image_embeddings"), file="v.onnx")


def test_config_mismatch(graphs: dict[str, onnx.ModelProto], text_config: dict) -> None:
    inputs, outputs = _io(graphs["decoder"])
    with pytest.raises(ContractError, match="last dim 64, expected 2048"):
        check_io("decoder", inputs, outputs, file="d.onnx", hidden_size=2048)
    flipped = ["conv" if k != "conv" else "full_attention" for k in text_config["layer_types"]]
    with pytest.raises(ContractError, match="differ from config.json layer_types"):
        check_io("decoder", inputs, outputs, file="d.onnx", layer_types=flipped)


def test_check_model_reads_the_proto(graphs: dict[str, onnx.ModelProto]) -> None:
    model = copy.deepcopy(graphs["embed_tokens"])
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32
    with pytest.raises(ContractError, match="embed_tokens.onnx.*int32"):
        check_model("embed_tokens", model, file="onnx/embed_tokens.onnx")

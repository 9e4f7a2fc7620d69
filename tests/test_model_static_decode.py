"""The static-shape decode step (benchmarks/gpu/static_decode.py: benchmark code, not in the package) against the original decoder with growing caches, both in native onnxruntime.

Reference: the unmodified decoder driven token by token (caches grow by one row per step). The static step is
driven over the same embeddings with fixed [1, kv, MAX, hd] buffers, (a) past and present as separate arrays,
(b) one shared buffer per cache bound as both input and output through IOBinding (GQA's in-place mode). Logits
and next tokens must agree within 1e-4 at every step.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lfmvl_site.errors import ContractError
from lfmvl_site.model import optimize
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
from static_decode import pad_cache, static_decode_step  # noqa: E402

MAX, STEPS, PROMPT = 24, 12, 5


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _present(name: str) -> str:
    return name.replace("past_key_values", "present").replace("past_conv", "present_conv")


@pytest.fixture(scope="module")
def decoder(tiny_model_dir: Path) -> onnx.ModelProto:
    m = onnx.load(str(tiny_model_dir / "onnx" / "decoder.onnx"))
    return optimize.add_argmax(optimize.last_logits(m))  # the site default's outputs: logits [1,1,V] + next_token


def _reference(decoder: onnx.ModelProto, embeds: np.ndarray) -> tuple[list[dict], dict]:
    """Prefill PROMPT embeddings, then one step per remaining row; returns per-step outputs and the prefill's."""
    sess = _session(decoder)
    names = [o.name for o in sess.get_outputs()]
    feeds: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        if i.name.startswith("past"):
            feeds[i.name] = np.zeros([1 if isinstance(d, str) and "batch" in d else (0 if isinstance(d, str) else d)
                                      for d in i.shape], np.float32)
    outs = []
    n = 0
    for chunk in [embeds[:, :PROMPT]] + [embeds[:, k:k + 1] for k in range(PROMPT, embeds.shape[1])]:
        n += chunk.shape[1]
        feeds.update(inputs_embeds=chunk, attention_mask=np.ones((1, n), np.int64))
        r = dict(zip(names, sess.run(None, feeds)))
        outs.append(r)
        feeds.update({k: r[_present(k)] for k in feeds if k.startswith("past")})
    return outs[1:], outs[0]


@pytest.mark.parametrize("shared", [False, True], ids=["separate-buffers", "shared-buffer"])
def test_static_step_matches_growing_caches(decoder: onnx.ModelProto, shared: bool) -> None:
    hidden = decoder.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    embeds = np.random.default_rng(7).standard_normal((1, PROMPT + STEPS, hidden)).astype(np.float32)
    ref, prefill = _reference(decoder, embeds)

    step = static_decode_step(copy.deepcopy(decoder), MAX)
    sess = _session(step)
    for vi in list(step.graph.input) + list(step.graph.output):  # every shape is a number now
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi.name
    caches = {i.name: (pad_cache(prefill[_present(i.name)], MAX) if i.name.startswith("past_key_values")
                       else prefill[_present(i.name)].copy())
              for i in sess.get_inputs() if i.name.startswith("past")}
    names = [o.name for o in sess.get_outputs()]
    for k, want in enumerate(ref):
        n = PROMPT + k + 1
        mask = np.zeros((1, MAX), np.int64)
        mask[0, :n] = 1
        x = embeds[:, PROMPT + k:PROMPT + k + 1]
        if shared:
            io = sess.io_binding()
            io.bind_cpu_input("inputs_embeds", np.ascontiguousarray(x))
            io.bind_cpu_input("attention_mask", mask)
            values = {name: ort.OrtValue.ortvalue_from_numpy(buf) for name, buf in caches.items()}
            for name, v in values.items():
                io.bind_ortvalue_input(name, v)
                io.bind_ortvalue_output(_present(name), v)
            io.bind_output("logits")
            io.bind_output("next_token")
            before = caches["past_key_values.{}.key".format(_first_attn(step))][0, 0, n - 1].copy()
            sess.run_with_iobinding(io)
            bound = io.get_outputs()  # in binding order: the caches, then logits, next_token
            got = {"logits": bound[-2].numpy(), "next_token": bound[-1].numpy()}
            # In place: the new key landed in the very array bound as past (GQA's share-buffer mode).
            after = caches["past_key_values.{}.key".format(_first_attn(step))][0, 0, n - 1]
            assert not np.array_equal(before, after)
        else:
            got = dict(zip(names, sess.run(None, {"inputs_embeds": x, "attention_mask": mask, **caches})))
            caches = {name: got[_present(name)] for name in caches}
            assert all(c.shape[2] == MAX for name, c in caches.items() if name.startswith("past_key_values"))
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4, rtol=0)
        assert got["next_token"].tolist() == want["next_token"].tolist()


def _first_attn(model: onnx.ModelProto) -> int:
    return min(int(vi.name.split(".")[1]) for vi in model.graph.input if vi.name.startswith("past_key_values"))


def test_rejects_a_graph_without_gqa(tiny_model_dir: Path) -> None:
    et = onnx.load(str(tiny_model_dir / "onnx" / "embed_tokens.onnx"))
    with pytest.raises(ContractError, match="inputs_embeds"):
        static_decode_step(et, MAX)


def test_pad_cache_refuses_overflow() -> None:
    with pytest.raises(ContractError, match="larger max_len"):
        pad_cache(np.zeros((1, 2, MAX + 1, 4), np.float32), MAX)

"""Device side: the site-default q4 decoder (dynamic, as exported + the build's three optimizations) and its
static-shape decode step (``benchmarks/gpu/static_decode.py``), for ``static_bench.mjs``.

Writes OUT/{decoder.onnx, decoder.onnx_data, step.onnx, step.onnx_data, embed.f32, probe.onnx} (embed.f32: the embedding
table, raw float32 [V, H], so the bench looks rows up in Node instead of running embed_tokens) and prints JSON.

    python benchmarks/gpu/prepare_static.py OUT --size full --max-len 1024 > prepare_static.json
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: cpu_bench, measure
from cpu_bench import decoder_variants
from measure import decode_weight_bytes
from static_decode import static_decode_step  # benchmarks/gpu/ (this script's folder), not the package

from lfmvl_site.synth import write_model

VARIANT = "all three, unfused"  # the static step rewrite predates fuse


def save(model: onnx.ModelProto, out: Path, name: str) -> None:
    onnx.save(model, str(out / f"{name}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{name}.onnx_data", size_threshold=1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="full")
    ap.add_argument("--max-len", type=int, default=1024)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    log: dict = {"size": a.size, "max_len": a.max_len, "variant": VARIANT, "times_s": {}}
    t = time.perf_counter()
    synth = a.out / "synth"
    if synth.exists():
        shutil.rmtree(synth)
    write_model(synth, size=a.size)
    log["times_s"]["synth"] = round(time.perf_counter() - t, 1)
    cfg = json.loads((synth / "config.json").read_text())["text_config"]

    et = onnx.load(str(synth / "onnx" / "embed_tokens.onnx"))
    table = numpy_helper.to_array(et.graph.initializer[0]).astype(np.float32)
    table.tofile(a.out / "embed.f32")
    log["embed"] = {"rows": int(table.shape[0]), "hidden": int(table.shape[1]),
                    "bytes_per_token": int(table.shape[1]) * 4}
    del et, table

    t = time.perf_counter()
    dec = decoder_variants(onnx.load(str(synth / "onnx" / "decoder.onnx")), names=[VARIANT])[VARIANT]
    log["times_s"]["q4_decoder"] = round(time.perf_counter() - t, 1)
    shutil.rmtree(synth)
    t = time.perf_counter()
    step = static_decode_step(copy.deepcopy(dec), a.max_len)
    log["times_s"]["static_step"] = round(time.perf_counter() - t, 1)
    log["nodes"] = {"decoder": len(dec.graph.node), "step": len(step.graph.node)}
    log["weight_bytes"] = decode_weight_bytes(dec)
    log["kv_cache_bytes"] = sum(  # K and V rows at MAX, fp32: what attention over the whole buffer reads
        2 * cfg["num_key_value_heads"] * a.max_len * (cfg["hidden_size"] // cfg["num_attention_heads"]) * 4
        for kind in cfg["layer_types"] if kind != "conv")
    log["io"] = {"inputs": [[vi.name, [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim],
                             vi.type.tensor_type.elem_type] for vi in step.graph.input],
                 "outputs": [[vi.name, [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim],
                              vi.type.tensor_type.elem_type] for vi in step.graph.output]}
    t = time.perf_counter()
    save(dec, a.out, "decoder")
    save(step, a.out, "step")
    log["times_s"]["save"] = round(time.perf_counter() - t, 1)
    # A one-node graph the bench runs once to learn ORT-web's buffer-registration symbol (see static_bench.mjs).
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    probe = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Neg", ["x"], ["y"])], "probe", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(probe, str(a.out / "probe.onnx"))
    json.dump(log, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

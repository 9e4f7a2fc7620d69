"""Device side, step 1: the synthetic model at the real LFM2.5-VL-1.6B dimensions, built into a site-style model
directory with one manifest per decoder variant (the Node bench serves each as ``manifest.json``).

Uses the project's own code: ``synth.write_model(size="full")``, the build's q4 quantizer and decoder optimizations
(``benchmarks/cpu_bench.decoder_variants``), sharded saving, and the manifest's I/O description. Graph choice mirrors a
WebGPU adapter without ``shader-f16`` (what dawn.node reports on the H100): embed_tokens fp32, embed_images q4,
decoder q4.

    python benchmarks/gpu/prepare_model.py OUT_DIR [--variants NAME ...] > prepare.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: cpu_bench, measure
from cpu_bench import VARIANTS, decoder_variants
from measure import decode_weight_bytes

from lfmvl_site.model import contract, quantize
from lfmvl_site.model.build import OPTIMIZATIONS
from lfmvl_site.model.options import DEFAULT_MAX_SHARD_MB
from lfmvl_site.model.resolve import CONFIG_FILES
from lfmvl_site.model.shard import save_sharded
from lfmvl_site.synth import write_model


def slug(name: str) -> str:
    """A file-name part unique per variant name ("site default, accuracy level 0" -> "site_default_accuracy_level_0")."""
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def entry(model: onnx.ModelProto, root: Path, rel: str, precision: str) -> dict:
    inputs, outputs = contract.graph_io(model)
    written = save_sharded(model, root / rel, max_shard_bytes=DEFAULT_MAX_SHARD_MB * 2**20)
    return {"precision": precision, "needs": [], "file": rel,
            "external_data": [p.relative_to(root).as_posix() for p in written[1:]],
            "inputs": contract.io_to_json(inputs), "outputs": contract.io_to_json(outputs)}



def _files(root: Path, decoder_stem: str | None = None) -> list[dict]:
    """{path, size, sha256} of the shared files (no decoder), or of one decoder variant's files."""
    import hashlib

    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        is_decoder = f.name.startswith("decoder_q4_")
        if not f.is_file() or rel.startswith("manifest") or (decoder_stem is None) == is_decoder:
            continue
        if decoder_stem is not None and not f.name.startswith(decoder_stem + "."):
            continue
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out.append({"path": rel, "size": f.stat().st_size, "sha256": h.hexdigest()})
    return out

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="full")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    a = ap.parse_args()
    log = {"size": a.size, "times_s": {}, "weight_bytes": {}}
    t = time.perf_counter()
    synth = a.out.with_name(a.out.name + "-synth")
    if synth.exists():
        shutil.rmtree(synth)
    write_model(synth, size=a.size)
    log["times_s"]["synth"] = round(time.perf_counter() - t, 1)
    root = a.out
    (root / "onnx").mkdir(parents=True, exist_ok=True)
    for name in CONFIG_FILES:
        if (synth / name).is_file():
            shutil.copyfile(synth / name, root / name)
    graphs: dict[str, list] = {}

    t = time.perf_counter()
    et = onnx.load(str(synth / "onnx" / "embed_tokens.onnx"))
    log["weight_bytes"]["embed_tokens_per_token"] = decode_weight_bytes(et)
    graphs["embed_tokens"] = [entry(et, root, "onnx/embed_tokens.onnx", "fp32")]
    del et

    vis = onnx.load(str(synth / "onnx" / "embed_images.onnx"))
    vis = quantize.quantize_q4(vis, progress=False)
    log["times_s"]["q4_embed_images"] = round(time.perf_counter() - t, 1)
    log["weight_bytes"]["embed_images"] = decode_weight_bytes(vis)
    graphs["embed_images"] = [entry(vis, root, "onnx/embed_images_q4.onnx", "q4")]
    del vis

    t = time.perf_counter()
    dec = onnx.load(str(synth / "onnx" / "decoder.onnx"))
    log["times_s"]["load_decoder"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    variants = decoder_variants(dec, names=a.variants)
    log["times_s"]["q4_decoder_and_variants"] = round(time.perf_counter() - t, 1)
    del dec
    manifests = []
    t = time.perf_counter()
    files = _files(root)  # the page runtime validates a model manifest's file list (runtime/contract.py)
    for name, m in variants.items():
        log["weight_bytes"][f"decoder[{name}]"] = decode_weight_bytes(m)
        log.setdefault("nodes", {})[name] = len(m.graph.node)
        e = entry(m, root, f"onnx/decoder_q4_{slug(name)}.onnx", "q4")
        manifest = {"format": 1, "source": {"synthetic": True, "size": a.size},
                    "preset": {"embed_tokens": "fp32", "embed_images": "q4", "decoder": "q4"},
                    "optimizations": {k: k in VARIANTS[name] for k in OPTIMIZATIONS},
                    "graphs": {**graphs, "decoder": [e]}, "files": files + _files(root, "decoder_q4_" + slug(name))}
        path = root / f"manifest-{slug(name)}.json"
        path.write_text(json.dumps(manifest, indent=1))
        manifests.append({"name": name, "file": path.name})
    log["times_s"]["save_variants"] = round(time.perf_counter() - t, 1)
    log["manifests"] = manifests
    shutil.rmtree(synth)
    json.dump(log, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

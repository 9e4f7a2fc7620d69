"""``build_model``: resolve the source, make every graph variant, check contracts, then write ``dest`` atomically.

Nothing is written until every graph is made and checked. Files are written into a temporary sibling of
``dest`` that replaces ``dest`` by rename at the end; any failure (disk full, Ctrl-C) removes the temporary
directory and leaves ``dest`` as it was.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BuildError, ModelFileError
from ..files import replace_dir, sha256_file
from ..runtime.layout import ROLES
from . import attention, contract, fuse, optimize, quantize
from .options import ModelBuildOptions
from .resolve import CONFIG_FILES, REQUIRED_CONFIG_FILES, Source, graph_relpath, load_graph, open_source
from .shard import save_sharded

if TYPE_CHECKING:  # pragma: no cover
    import onnx

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
# The graph rewrites a manifest records (its "optimizations"), in the order the build applies them.
OPTIMIZATIONS = ("last_logits", "q4_lm_head", "float_activations", "fuse", "argmax", "plain_attention")

# Variants shipped per chosen precision, in order of preference. fp16 programs need the WebGPU feature
# shader-f16; without it the page takes the next variant. q4 is MatMulNBits on fp32 activations (no f16
# needed) and is the compact fallback for the vision encoder and the decoder; embed_tokens (a Gather) has only fp32.
_FALLBACKS = {
    "embed_tokens": {"fp16": ["fp16", "fp32"], "fp32": ["fp32"]},
    "embed_images": {"fp16": ["fp16", "q4"], "q4": ["q4"], "fp32": ["fp32"]},
    "decoder": {"fp16": ["fp16", "q4"], "q4": ["q4"], "fp32": ["fp32"]},
}
_NEEDS = {"fp16": ["shader-f16"], "fp32": [], "q4": []}


@dataclass
class _Variant:
    role: str
    precision: str
    model: onnx.ModelProto
    optimizations: list[str] = field(default_factory=list)
    made_from: str = ""


def preset_plan(options: ModelBuildOptions, name: str) -> dict[str, list[str]]:
    """The variants one preset runs per role, preferred first (the page takes the first the device meets)."""
    preset = options.preset_of(name)
    return {role: list(_FALLBACKS[role][preset[role]]) for role in ROLES}


def variant_plan(options: ModelBuildOptions) -> dict[str, list[str]]:
    """Precisions shipped per role: every preset's, the default preset's first."""
    plan: dict[str, list[str]] = {role: [] for role in ROLES}
    for name in options.preset_names:
        for role, precisions in preset_plan(options, name).items():
            plan[role] += [p for p in precisions if p not in plan[role]]
    return plan


def build_model(options: ModelBuildOptions, dest: Path, *, progress: bool = True) -> dict[str, Any]:
    """Build ``dest`` (e.g. ``dist/model``) from the options' model source; return the manifest written."""
    dest = Path(dest)
    progress = progress and options.progress
    with open_source(options, progress=progress) as source:
        text_cfg = _text_config(source)
        variants = _make_variants(source, options, text_cfg, progress)
        configs = {name: source.get(name) for name in CONFIG_FILES}
        missing = [n for n in REQUIRED_CONFIG_FILES if configs[n] is None]
        if missing:
            raise ModelFileError(f"{source.describe()} lacks {', '.join(missing)}; it is not a complete model.")
        return _write(dest, options, source, variants, configs)


def _text_config(source: Source) -> dict[str, Any]:
    path = source.require("config.json")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc}); re-download the model.") from exc
    return cfg.get("text_config") or cfg


def _make_variants(source: Source, options: ModelBuildOptions, text_cfg: dict[str, Any],
                   progress: bool) -> list[_Variant]:
    check_kw = {"hidden_size": text_cfg.get("hidden_size"), "layer_types": text_cfg.get("layer_types")}
    entries: int | None = None
    entries_read = not options.argmax  # read once a graph is found, so a wrong layout is reported as that
    fp32_cache: dict[str, onnx.ModelProto] = {}
    out: list[_Variant] = []
    for role, precisions in variant_plan(options).items():
        for precision in precisions:
            rel = source.graph_relpath(role, precision)  # the source's own file layout (1.6B or 450M naming)
            model = load_graph(source, rel) if precision != "fp32" else None
            made_from = rel
            if model is None:  # not published: make it from fp32
                base = source.graph_relpath(role, "fp32")
                if role not in fp32_cache:
                    loaded = load_graph(source, base)
                    if loaded is None:
                        raise ModelFileError(f"{source.describe()} has neither {rel} nor {base} to make it from.")
                    contract.check_model(role, loaded, file=base, **check_kw)
                    fp32_cache[role] = loaded
                model = copy.deepcopy(fp32_cache[role])
                made_from = base
            else:
                contract.check_model(role, model, file=rel, **check_kw)
            log.info("%s: %s from %s", rel, "making" if made_from != rel else "optimizing", made_from)
            v = _Variant(role, precision, model, made_from=made_from)
            if not entries_read:
                entries, entries_read = _tokenizer_entries(source, text_cfg), True
            _convert(v, options, converting=made_from != rel, progress=progress, entries=entries)
            contract.check_model(role, v.model, file=f"{rel} (built)", **check_kw)
            out.append(v)
    return out


def _tokenizer_entries(source: Source, text_cfg: dict[str, Any]) -> int | None:
    """The tokenizer's entry count (one more than its highest id), checked against config.json's vocab_size."""
    from ..runtime.tokenizer import Tokenizer, check_vocabulary

    path = source.get("tokenizer.json")
    if path is None:
        return None  # reported with the other missing files
    entries = Tokenizer.from_json(path.read_text(encoding="utf-8")).vocab_size
    if isinstance(text_cfg.get("vocab_size"), int):
        check_vocabulary(entries, text_cfg["vocab_size"])
    return entries


def _convert(v: _Variant, options: ModelBuildOptions, *, converting: bool, progress: bool,
             entries: int | None = None) -> None:
    """Graph optimizations, then the precision conversion (if the source lacked the variant)."""
    if v.role == "decoder" and options.last_logits:
        optimize.last_logits(v.model)
        v.optimizations.append("last_logits")
    if converting and v.precision == "q4":
        head = quantize.find_lm_head(v.model) if v.role == "decoder" else None
        v.model = quantize.quantize_q4(v.model, exclude=[head.name] if head is not None else [], progress=progress,
                                       desc=f"q4 {v.role}")
    elif converting and v.precision == "fp16":
        v.model = quantize.to_fp16(v.model)
    if v.role == "decoder" and v.precision == "q4" and options.q4_lm_head:
        v.model = optimize.q4_lm_head(v.model, progress=progress)
        v.optimizations.append("q4_lm_head")
    # Published q4 decoders too (level 4): one-row and multi-row WebGPU kernels must agree for drafts to verify.
    if v.role == "decoder" and options.float_activations and optimize.float_activations(v.model):
        v.optimizations.append("float_activations")
    # After the conversion (ORT-web's own q4 fusions must still match) and before argmax (nothing of it fuses).
    if v.role == "decoder" and options.fuse and any(fuse.fuse(v.model).counts.values()):
        v.optimizations.append("fuse")  # only where something was fused
    # Last, so its float32 positions are not turned into fp16 (exact only below 2048) by the conversion.
    if v.role == "decoder" and options.argmax:
        optimize.add_argmax(v.model, entries)  # ids without a tokenizer entry are never chosen
        v.optimizations.append("argmax")
    # After the conversion, so the softmax stays float32 in an fp16 graph (model/attention.py).
    if v.role == "embed_images" and options.plain_attention and attention.decompose_attention(v.model):
        v.optimizations.append("plain_attention")


def _write(dest: Path, options: ModelBuildOptions, source: Source, variants: list[_Variant],
           configs: dict[str, Path | None]) -> dict[str, Any]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        staging.chmod(0o755)
        (staging / "onnx").mkdir()
        graphs: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
        for v in variants:
            rel = graph_relpath(v.role, v.precision)
            inputs, outputs = contract.graph_io(v.model)
            written = save_sharded(v.model, staging / rel, max_shard_bytes=options.max_shard_bytes)
            graphs[v.role].append({
                "precision": v.precision,
                "needs": list(_NEEDS[v.precision]),
                "file": rel,
                "external_data": [p.relative_to(staging).as_posix() for p in written[1:]],
                "inputs": contract.io_to_json(inputs),
                "outputs": contract.io_to_json(outputs),
                "optimizations": list(v.optimizations),
                "made_from": v.made_from,
            })
        for name, path in configs.items():
            if path is not None:
                shutil.copyfile(path, staging / name)
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "source": source.info,
            "preset": options.preset,
            # Each preset's variants per role, preferred first; the page's choice names one (runtime/choices.py).
            "presets": [{"name": name, "graphs": preset_plan(options, name)} for name in options.preset_names],
            "optimizations": {
                name: any(name in v.optimizations for v in variants)
                for name in OPTIMIZATIONS
            },
            "max_shard_mb": options.max_shard_mb,
            "graphs": graphs,
            "files": _file_list(staging),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        _swap_into_place(staging, dest)
        log.info("wrote %s (%d files, %.1f MB)", dest, len(manifest["files"]) + 1,
                 sum(f["size"] for f in manifest["files"]) / 1e6)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BuildError(f"Disk full while writing the model next to {dest}: {exc}. Free space and build again; "
                             f"{dest} was left as it was.") from exc
        if isinstance(exc, OSError):
            raise BuildError(f"Could not write the model next to {dest}: {exc}. {dest} was left as it was.") from exc
        raise
    return manifest


def _file_list(root: Path) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        files.append({"path": path.relative_to(root).as_posix(), "size": path.stat().st_size,
                      "sha256": sha256_file(path)})
    files.sort(key=lambda e: e["path"])
    return files


def _swap_into_place(staging: Path, dest: Path) -> None:
    """Replace ``dest`` by ``staging`` with renames; on failure the old ``dest`` is put back."""
    if dest.exists() and not dest.is_dir():
        raise BuildError(f"{dest} exists and is not a directory; move it away and build again.")
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    if replace_dir(staging, dest, old):
        shutil.rmtree(old, ignore_errors=True)

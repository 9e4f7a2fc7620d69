"""Fewer nodes per decoder step (issue 16 §1): exact graph rewrites, applied by the build's ``--fuse`` (on by default).

Exact in the math; in float, only the residual skip norms round differently (the skip kernel, a few ulp per element;
the conv slice fold, the merges and the final-norm fold are bit-exact in native onnxruntime). docs/ARCHITECTURE.md's
"Fusion" section has the measurements, and why native CPU q4 (int8 activations) can still pick other greedy tokens.

Decode in onnxruntime-web's WebGPU EP is CPU-dispatch-bound (~100 us of CPU per kernel on an H200), so each node
removed from the step is worth more than the arithmetic it does. onnxruntime-web 1.30 already fuses, at session
creation, ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` + the q/k/v MatMulNBits into
``MatMulNBitsQkv``, the same norm + gate/up MatMulNBits + SiLU * up into ``MatMulNBitsMlp`` (4 bits, block 32
only), and the per-head q/k norms into GroupQueryAttention. The rewrites here are the ones it does not do, kept in
the shapes its own fusions still match:

* :func:`fuse_skip_norm`: residual ``Add`` + ``SimplifiedLayerNormalization`` -> ``com.microsoft``
  ``SkipSimplifiedLayerNormalization`` (output 0 the normalized sum, output 3 the sum itself, read by the next
  residual). The final ``SkipSimplifiedLayerNormalization(x, x)`` of the exporter, with ``x = Add(a, b)``, becomes
  ``SkipSimplifiedLayerNormalization(a, b)`` with a quarter of the epsilon: RMSNorm(2x, eps) = RMSNorm(x, eps / 4)
  bit for bit (scaling by a power of two is exact). Both ORT-web fusions above accept the skip form as their anchor.
* :func:`fold_conv_slice`: the exporter slices the short conv's output with a start computed at run time as
  ``-Shape(x)[1]`` (4 CPU nodes per conv layer); the conv output always has ``L - K + 1`` leading columns to drop
  (``L`` the cache width, ``K`` the kernel), a constant.
* :func:`merge_projections`: MatMuls with constant weights that read the same input become one MatMul on the
  weights concatenated along N, and a Split. For MatMulNBits (same K, bits, block size, accuracy level) B, scales
  and zero points are concatenated along N, which is exact. Only where it removes nodes: 3+ float MatMuls (q/k/v);
  2+ MatMulNBits that ORT-web's own QKV/MLP fusions would not take (they would lose more than the merge gains).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .optimize import _drop_unused, _opset

if TYPE_CHECKING:  # pragma: no cover
    import onnx

log = logging.getLogger(__name__)
MS_DOMAIN = "com.microsoft"


@dataclass
class FuseReport:
    """What :func:`fuse` changed."""

    nodes_before: int = 0
    nodes_after: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _const_value(model: onnx.ModelProto, name: str, producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _index(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    return next(i for i, n in enumerate(model.graph.node) if n is node)


def _is_norm(node: onnx.NodeProto) -> bool:
    return node.op_type == "SimplifiedLayerNormalization" and node.domain in ("", "ai.onnx")


def fuse_skip_norm(model: onnx.ModelProto) -> int:
    """Residual Add + SimplifiedLayerNormalization -> SkipSimplifiedLayerNormalization (in place); returns how many."""
    from onnx import helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    inits = {t.name for t in graph.initializer}
    count = 0
    changed = True
    while changed:
        changed = False
        producers, consumers = _producers(model), _consumers(model)
        for norm in list(graph.node):
            if not _is_norm(norm) or len(norm.input) != 2 or _attr(norm, "axis", -1) != -1:
                continue
            if any(o for o in norm.output[1:]):
                continue  # its inv_std_var is read: not the skip form's
            add = producers.get(norm.input[0])
            if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
                continue
            a, b = add.input
            if a in inits or b in inits or producers.get(a, add).op_type == "Constant" \
                    or producers.get(b, add).op_type == "Constant":
                continue  # a bias, not a residual: the skip form needs two tensors of one shape
            s = add.output[0]
            others = [c for c in consumers.get(s, []) if c is not norm]
            skip = helper.make_node(
                "SkipSimplifiedLayerNormalization", [a, b, norm.input[1]],
                [norm.output[0], "", "", s] if (others or s in outputs) else [norm.output[0]],
                domain=MS_DOMAIN, name=f"{norm.name or norm.output[0]}/lfmvl_skip",
                epsilon=float(_attr(norm, "epsilon", 1e-5)),  # type: ignore[arg-type]
            )
            graph.node.insert(_index(model, add), skip)  # where the sum was: its readers all come later
            graph.node.remove(add)
            graph.node.remove(norm)
            count += 1
            changed = True
            break
    count += _fold_doubled_final_norm(model)
    return count


def _fold_doubled_final_norm(model: onnx.ModelProto) -> int:
    """``SkipSimplifiedLayerNormalization(x, x)`` with ``x = Add(a, b)`` read by nothing else -> ``(a, b)``, eps / 4."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    inits = {t.name for t in graph.initializer}
    producers, consumers = _producers(model), _consumers(model)
    count = 0
    for node in list(graph.node):
        if node.op_type != "SkipSimplifiedLayerNormalization" or node.domain != MS_DOMAIN or len(node.input) != 3:
            continue
        x = node.input[0]
        if node.input[1] != x or any(o for o in node.output[1:]) or x in outputs:
            continue
        add = producers.get(x)
        if add is None or add.op_type != "Add" or any(c is not node for c in consumers.get(x, [])):
            continue
        if add.input[0] in inits or add.input[1] in inits:
            continue
        import onnx
        from onnx import helper

        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[0], new.input[1] = add.input[0], add.input[1]
        eps = next((a for a in new.attribute if a.name == "epsilon"), None)
        if eps is None:
            new.attribute.append(helper.make_attribute("epsilon", 1e-12 / 4))  # the op's default, quartered
        else:
            eps.f = float(np.float32(eps.f) / np.float32(4))
        idx = _index(model, add)
        graph.node.remove(node)
        graph.node.remove(add)
        graph.node.insert(idx, new)
        count += 1
    return count


def fold_conv_slice(model: onnx.ModelProto) -> int:
    """The conv output's run-time ``-S`` Slice start -> the constant ``L - K + 1`` (in place); returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    producers = _producers(model)
    inputs = {i.name: i for i in graph.input}
    count = 0
    for sl in graph.node:
        if sl.op_type != "Slice" or len(sl.input) < 4 or (len(sl.input) > 4 and sl.input[4]):
            continue
        conv = producers.get(sl.input[0])
        if conv is None or conv.op_type != "Conv" or len(conv.input) != 2:
            continue
        if any(v not in (None, [1]) for v in (_attr(conv, "strides"), _attr(conv, "dilations"))) \
                or _attr(conv, "pads") not in (None, [0, 0]) or _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        weight = _const_value(model, conv.input[1], producers)
        axes = _const_value(model, sl.input[3], producers)
        ends = _const_value(model, sl.input[2], producers)
        if weight is None or weight.ndim != 3 or axes is None or axes.tolist() not in ([2], [-1]):
            continue
        if ends is None or ends.tolist() != [np.iinfo(np.int64).max]:
            continue
        cat = producers.get(conv.input[0])
        if cat is None or cat.op_type != "Concat" or len(cat.input) != 2 or _attr(cat, "axis") not in (2, -1):
            continue
        past = inputs.get(cat.input[0])
        dims = past.type.tensor_type.shape.dim if past is not None else []
        if len(dims) != 3 or not dims[2].HasField("dim_value"):
            continue
        cache, kernel = int(dims[2].dim_value), int(weight.shape[2])
        seq = _neg_seq_len_source(model, sl.input[1], producers)
        if seq is None or cache - kernel + 1 < 0 or not _feeds_conv_window(seq, cat.input[1], producers):
            continue
        name = f"{sl.name or sl.output[0]}/lfmvl_start"
        graph.initializer.append(numpy_helper.from_array(np.array([cache - kernel + 1], np.int64), name))
        sl.input[1] = name
        count += 1
    if count:
        _drop_unused(model)
    return count


def _neg_seq_len_source(model: onnx.ModelProto, starts: str, producers: dict[str, onnx.NodeProto]) -> str | None:
    """The tensor ``t`` when ``starts = Unsqueeze(Mul(Gather(Shape(t), 1), -1), [0])``, else None."""
    unsq = producers.get(starts)
    if unsq is None or unsq.op_type != "Unsqueeze":
        return None
    uaxes = _const_value(model, unsq.input[1], producers) if len(unsq.input) > 1 else _attr(unsq, "axes")
    if uaxes is None or np.asarray(uaxes).tolist() != [0]:
        return None
    mul = producers.get(unsq.input[0])
    if mul is None or mul.op_type != "Mul":
        return None
    k0, k1 = (_const_value(model, i, producers) for i in mul.input)
    gather_out = mul.input[0] if k1 is not None and k1.size == 1 and k1.item() == -1 else (
        mul.input[1] if k0 is not None and k0.size == 1 and k0.item() == -1 else None)
    gather = producers.get(gather_out) if gather_out else None
    if gather is None or gather.op_type != "Gather" or _attr(gather, "axis", 0) != 0:
        return None
    idx = _const_value(model, gather.input[1], producers)
    shape = producers.get(gather.input[0])
    if idx is None or idx.shape != () or idx.item() != 1 or shape is None or shape.op_type != "Shape" or shape.attribute:
        return None
    return str(shape.input[0])


def _feeds_conv_window(t: str, y: str, producers: dict[str, onnx.NodeProto]) -> bool:
    """Whether ``y`` is ``Mul`` of Split outputs of ``Transpose[0, 2, 1](MatMul(t, W))``: then ``y``'s length is ``t``'s dim 1."""
    mul = producers.get(y)
    if mul is None or mul.op_type != "Mul":
        return False
    splits = {producers[i].name if i in producers else "" for i in mul.input}
    split = producers.get(mul.input[0])
    if split is None or split.op_type != "Split" or len(splits) != 1:
        return False
    tr = producers.get(split.input[0])
    if tr is None or tr.op_type != "Transpose" or _attr(tr, "perm") != [0, 2, 1]:
        return False
    mm = producers.get(tr.input[0])
    return mm is not None and mm.op_type in ("MatMul", "MatMulNBits") and mm.input[0] == t


def _webgpu_fuses(model: onnx.ModelProto, group: list[onnx.NodeProto], producers: dict[str, onnx.NodeProto]) -> bool:
    """Whether onnxruntime-web's MatMulNBitsQkv / MatMulNBitsMlp fusion would take these MatMulNBits as they are."""
    src = producers.get(group[0].input[0])
    if src is None or not (_is_norm(src) or (src.op_type == "SkipSimplifiedLayerNormalization" and src.domain == MS_DOMAIN)):
        return False
    if any(_attr(n, "bits", 4) != 4 or _attr(n, "block_size") != 32 or any(i for i in n.input[3:]) for n in group):
        return False
    ns = sorted(int(_attr(n, "N")) for n in group)  # type: ignore[call-overload]
    return (len(ns) == 3 and (ns[0] == ns[1]) != (ns[1] == ns[2])) or (len(ns) == 2 and ns[0] == ns[1])


def merge_projections(model: onnx.ModelProto, *, keep_webgpu_fusions: bool = True) -> int:
    """Merge MatMuls with constant weights that read one input into one MatMul + Split (in place); returns merges.

    ``keep_webgpu_fusions``: leave MatMulNBits groups that onnxruntime-web fuses itself (see the module doc).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = _producers(model)
    outputs = {o.name for o in graph.output}
    groups: dict[tuple[object, ...], list[onnx.NodeProto]] = {}
    for n in graph.node:
        if not n.input or n.output[0] in outputs:
            continue
        if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and n.input[1] in inits:
            w = inits[n.input[1]]
            if len(w.dims) == 2:
                groups.setdefault(("MatMul", n.input[0], w.data_type, w.dims[0]), []).append(n)
        elif n.op_type == "MatMulNBits" and n.domain == MS_DOMAIN:
            ins = list(n.input) + [""] * (6 - len(n.input))
            if not all(i in inits for i in ins[1:3]) or ins[4] or ins[5] or (ins[3] and ins[3] not in inits):
                continue
            key: tuple[object, ...] = ("MatMulNBits", n.input[0], _attr(n, "K"), _attr(n, "bits", 4), _attr(n, "block_size"),
                   _attr(n, "accuracy_level", 0), bool(ins[3]), inits[ins[2]].data_type, len(inits[ins[2]].dims),
                   inits[ins[3]].data_type if ins[3] else None)
            groups.setdefault(key, []).append(n)
    opset = _opset(model)
    count = 0
    for key, group in groups.items():
        nbits = key[0] == "MatMulNBits"
        if len(group) < (2 if nbits else 3) or (nbits and keep_webgpu_fusions and _webgpu_fuses(model, group, producers)):
            continue
        p = f"{group[0].name or group[0].output[0]}/lfmvl_merged"
        if nbits:
            arrays = [[numpy_helper.to_array(inits[n.input[i]]) for n in group] for i in (1, 2)]
            if key[6]:
                arrays.append([numpy_helper.to_array(inits[n.input[3]]) for n in group])
            sizes = [int(_attr(n, "N")) for n in group]  # type: ignore[call-overload]
            names = []
            for j, parts in enumerate(arrays):
                names.append(f"{p}/{('B', 'scales', 'zero_points')[j]}")
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.concatenate(parts, axis=0)), names[-1]))
            attrs = {a.name: helper.get_attribute_value(a) for a in group[0].attribute}
            attrs["N"] = sum(sizes)
            merged = helper.make_node("MatMulNBits", [group[0].input[0], *names], [f"{p}/out"], domain=MS_DOMAIN,
                                      name=p, **attrs)
        else:
            ws = [numpy_helper.to_array(inits[n.input[1]]) for n in group]
            sizes = [int(w.shape[1]) for w in ws]
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.concatenate(ws, axis=1)), f"{p}/W"))
            merged = helper.make_node("MatMul", [group[0].input[0], f"{p}/W"], [f"{p}/out"], name=p)
        outs = [n.output[0] for n in group]
        if opset >= 13:
            graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), f"{p}/split"))
            split = helper.make_node("Split", [f"{p}/out", f"{p}/split"], outs, axis=-1, name=f"{p}/Split")
        else:
            split = helper.make_node("Split", [f"{p}/out"], outs, axis=-1, split=sizes, name=f"{p}/Split")
        idx = _index(model, group[0])  # the shared input and the weights exist here; every reader comes later
        for n in group:
            graph.node.remove(n)
        graph.node.insert(idx, split)
        graph.node.insert(idx, merged)
        count += 1
    if count:
        _drop_unused(model)
    return count


def fuse(model: onnx.ModelProto, *, keep_webgpu_fusions: bool = True) -> FuseReport:
    """Every rewrite above, in place; exact (same values up to float reassociation in ORT's kernels)."""
    report = FuseReport(nodes_before=len(model.graph.node))
    report.counts["fold_conv_slice"] = fold_conv_slice(model)
    report.counts["merge_projections"] = merge_projections(model, keep_webgpu_fusions=keep_webgpu_fusions)
    report.counts["skip_norm"] = fuse_skip_norm(model)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import) and report.counts["skip_norm"]:
        from onnx import helper

        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    report.nodes_after = len(model.graph.node)
    log.info("fuse: %d -> %d nodes (%s)", report.nodes_before, report.nodes_after,
             ", ".join(f"{k} {v}" for k, v in report.counts.items()))
    return report

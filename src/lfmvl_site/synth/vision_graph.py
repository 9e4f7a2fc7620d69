"""The ``embed_images`` graph, tiled (NaFlex patch) form: SigLIP2 vision tower + pixel-unshuffle projector.

Inputs ``pixel_values [batch_size, num_patches, 768]``, ``pixel_attention_mask [batch_size, num_patches]`` (int64),
``spatial_shapes [batch_size, 2]`` (int64); output ``image_features [num_image_tokens, hidden]`` (all tiles' tokens,
tile order, row-major inside a tile). Structure as in Liquid AI's exporter (shared/fixtures/liquidonnx-tiny: ReduceMax
and ``Split`` on the int64 ``spatial_shapes``, Pad/Where/Tile for the padding rows' positions, 8-input
MultiHeadAttention), including its one simplification: the 16x16 position grid is resized once, to the batch's
largest (h, w), so a batch should hold tiles of one shape (call the graph once per distinct ``spatial_shapes`` row).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from .onnxbuild import GraphBuilder
from .weights import PROJ, VT

F32, I64 = TensorProto.FLOAT, TensorProto.INT64
MS = "com.microsoft"
MASK_MIN = float(np.finfo(np.float32).min)  # the additive mask value transformers uses


class _Vision:
    def __init__(self, weights: Mapping[str, np.ndarray], config: dict[str, Any], onnx_dir: Path, stem: str) -> None:
        self.w = weights
        self.stem = stem
        self.v = config["vision_config"]
        self.cfg = config
        self.vh = self.v["hidden_size"]
        self.heads = self.v["num_attention_heads"]
        self.eps = float(self.v["layer_norm_eps"])
        self.g = GraphBuilder("embed_images", onnx_dir / f"{stem}.onnx_data")
        self.onnx_dir = onnx_dir

    def linear(self, x: str, hf: str, onnx_name: str, n: str) -> str:
        g = self.g
        w = g.const(f"{onnx_name}.weight_t", np.ascontiguousarray(self.w[f"{hf}.weight"].T))
        y = g.op("MatMul", [x, w], name=f"{n}/MatMul")
        return g.op("Add", [y, g.const(f"{onnx_name}.bias", self.w[f"{hf}.bias"])], name=f"{n}/Add")

    def layer_norm(self, x: str, hf: str, onnx_name: str, n: str) -> str:
        g = self.g
        scale = g.const(f"{onnx_name}.weight", self.w[f"{hf}.weight"])
        bias = g.const(f"{onnx_name}.bias", self.w[f"{hf}.bias"])
        return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=self.eps, name=f"{n}/LayerNormalization")

    def dim_scalar(self, shape: str, axis: int) -> str:
        """An int64 scalar holding ``shape[axis]`` (Gather with a scalar index, as the exporter writes it)."""
        return self.g.op("Gather", [shape, self.g.scalar(axis, np.int64)], axis=0)

    def dim(self, shape: str, axis: int) -> str:
        """A 1-element int64 tensor holding ``shape[axis]``."""
        return self.scalar_to_1d(self.dim_scalar(shape, axis))

    def build(self) -> None:
        g = self.g
        pv = g.input("pixel_values", F32, ["batch_size", "num_patches", self.v["num_channels"] * self.v["patch_size"] ** 2])
        mask = g.input("pixel_attention_mask", I64, ["batch_size", "num_patches"])
        ss = g.input("spatial_shapes", I64, ["batch_size", 2])

        pv_shape = g.op("Shape", [pv], name="/vision/Shape_pv")
        batch, num_patches = self.dim(pv_shape, 0), self.dim(pv_shape, 1)
        # As the exporter does: the position grid takes the per-column maximum of spatial_shapes, the projector
        # splits spatial_shapes into its two columns (int64 shape arithmetic: CPU work under WebGPU).
        hw_max = g.op("ReduceMax", [ss, g.ints(0)], keepdims=0, name="/vision/pos/max_spatial")  # [2]
        hmax = self.scalar_to_1d(g.op("Gather", [hw_max, g.scalar(0, np.int64)], axis=0, name="/vision/pos/spatial_h"))
        wmax = self.scalar_to_1d(g.op("Gather", [hw_max, g.scalar(1, np.int64)], axis=0, name="/vision/pos/spatial_w"))
        heights, widths = g.op("Split", [ss], outputs=["/projector/split_shapes/h", "/projector/split_shapes/w"],
                               axis=1, num_outputs=2, name="/projector/split_shapes")  # [B, 1] each

        x = self.embeddings(pv, batch, num_patches, self.dim_scalar(pv_shape, 1), hmax, wmax)
        bias = self.attention_bias(mask, batch, num_patches)
        for i in range(self.v["num_hidden_layers"]):
            x = self.encoder_layer(i, x, bias)
        x = self.layer_norm(x, f"{VT}.post_layernorm", "vision.post_layernorm", "/vision/post_layernorm")
        self.projector(x, mask, batch, heights, widths)
        g.output("image_features", F32, ["num_image_tokens", self.cfg["text_config"]["hidden_size"]])
        g.save(self.onnx_dir / f"{self.stem}.onnx")

    def scalar_to_1d(self, x: str) -> str:
        return self.g.op("Unsqueeze", [x, self.g.ints(0)])

    def embeddings(self, pv: str, batch: str, num_patches: str, num_patches_s: str, hmax: str, wmax: str) -> str:
        """Patch Linear + the learned 16x16 position grid resized (bilinear, half_pixel) to (hmax, wmax).

        Padding rows (p >= hmax*wmax) take the first position, built as the exporter builds it: Pad the resized
        grid to num_patches rows, Where against the first row, Tile over the batch.
        """
        g, vh = self.g, self.vh
        n = "/vision/pos"
        patches = self.linear(pv, f"{VT}.embeddings.patch_embedding", "vision.patch_embedding", "/vision/patch_embedding")
        grid = int(round(self.v["num_patches"] ** 0.5))
        table = g.const("vision.position_embedding.weight", self.w[f"{VT}.embeddings.position_embedding.weight"])
        nchw = g.op("Reshape", [table, g.ints(1, grid, grid, vh)], name=f"{n}/Reshape_grid")
        nchw = g.op("Transpose", [nchw], perm=[0, 3, 1, 2], name=f"{n}/Transpose_nchw")
        sizes = g.op("Concat", [g.ints(1, vh), hmax, wmax], axis=0, name=f"{n}/sizes")
        resized = g.op("Resize", [nchw, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel",
                       name=f"{n}/Resize")
        resized = g.op("Transpose", [resized], perm=[0, 2, 3, 1], name=f"{n}/Transpose_nhwc")
        flat = g.op("Reshape", [resized, g.ints(1, -1, vh)], name=f"{n}/Reshape_flat")  # [1, hmax*wmax, vh]
        count = g.op("Mul", [hmax, wmax], name=f"{n}/count")  # [1]
        first = g.op("Slice", [flat, g.ints(0), g.ints(1), g.ints(1)], name=f"{n}/first_position")  # [1, 1, vh]
        first = g.op("Expand", [first, g.op("Concat", [g.ints(1), num_patches, g.ints(vh)], axis=0)],
                     name=f"{n}/first_expanded")  # [1, N, vh]
        pad = g.op("Sub", [num_patches, count], name=f"{n}/padding_size")
        pads = g.op("Concat", [g.ints(0, 0, 0, 0), pad, g.ints(0)], axis=0, name=f"{n}/pads")
        padded = g.op("Pad", [flat, pads], mode="constant", name=f"{n}/Pad")  # [1, N, vh]
        positions = g.op("Range", [g.scalar(0, np.int64), num_patches_s, g.scalar(1, np.int64)], name=f"{n}/Range")
        inside = g.op("Unsqueeze", [g.op("Less", [positions, count], name=f"{n}/Less"), g.ints(0, 2)])  # [1, N, 1]
        pos = g.op("Where", [inside, padded, first], name=f"{n}/Where")
        pos = g.op("Tile", [pos, g.op("Concat", [batch, g.ints(1, 1)], axis=0)], name=f"{n}/Tile")  # [B, N, vh]
        return g.op("Add", [patches, pos], name="/vision/embeddings/Add")

    def attention_bias(self, mask: str, batch: str, num_patches: str) -> str:
        """``(1 - mask) * float32.min`` as ``[B, heads, N, N]`` for MultiHeadAttention's attention_bias."""
        g = self.g
        keep = g.op("Cast", [mask], to=F32, name="/vision/mask/Cast")
        drop = g.op("Sub", [g.scalar(1.0), keep], name="/vision/mask/Sub")
        bias = g.op("Mul", [drop, g.scalar(MASK_MIN)], name="/vision/mask/Mul")
        bias = g.op("Unsqueeze", [bias, g.ints(1, 2)], name="/vision/mask/Unsqueeze")  # [B, 1, 1, N]
        shape = g.op("Concat", [batch, g.ints(self.heads), num_patches, num_patches], axis=0, name="/vision/mask/shape")
        return g.op("Expand", [bias, shape], name="/vision/mask/Expand")

    def encoder_layer(self, i: int, x: str, bias: str) -> str:
        g, n, p = self.g, f"/vision/layers.{i}", f"{VT}.encoder.layers.{i}"
        o = f"vision.layers.{i}"
        h = self.layer_norm(x, f"{p}.layer_norm1", f"{o}.layer_norm1", f"{n}/layer_norm1")
        q = self.linear(h, f"{p}.self_attn.q_proj", f"{o}.attn.q_proj", f"{n}/attn/q_proj")
        k = self.linear(h, f"{p}.self_attn.k_proj", f"{o}.attn.k_proj", f"{n}/attn/k_proj")
        v = self.linear(h, f"{p}.self_attn.v_proj", f"{o}.attn.v_proj", f"{n}/attn/v_proj")
        a = g.op("MultiHeadAttention", [q, k, v, "", "", bias, "", ""], domain=MS, num_heads=self.heads,
                 scale=float((self.vh // self.heads) ** -0.5), name=f"{n}/attn/MultiHeadAttention")
        a = self.linear(a, f"{p}.self_attn.out_proj", f"{o}.attn.out_proj", f"{n}/attn/out_proj")
        x = g.op("Add", [x, a], name=f"{n}/residual_add_1")
        h = self.layer_norm(x, f"{p}.layer_norm2", f"{o}.layer_norm2", f"{n}/layer_norm2")
        h = self.linear(h, f"{p}.mlp.fc1", f"{o}.mlp.fc1", f"{n}/mlp/fc1")
        h = g.op("Gelu", [h], approximate="tanh", name=f"{n}/mlp/Gelu")
        h = self.linear(h, f"{p}.mlp.fc2", f"{o}.mlp.fc2", f"{n}/mlp/fc2")
        return g.op("Add", [x, h], name=f"{n}/residual_add_2")

    def projector(self, x: str, mask: str, batch: str, heights: str, widths: str) -> None:
        """Scatter valid patches into a [B, H_al, W_al, C] canvas, pixel-unshuffle 2x2, MLP, keep valid tokens."""
        g, vh, f = self.g, self.vh, int(self.cfg["downsample_factor"])
        n = "/projector"
        keep = g.op("Cast", [g.op("Reshape", [mask, g.ints(-1)], name=f"{n}/mask_flat")], to=TensorProto.BOOL,
                    name=f"{n}/mask_bool")
        rows = g.op("Compress", [g.op("Reshape", [x, g.ints(-1, vh)], name=f"{n}/Reshape_x"), keep], axis=0,
                    name=f"{n}/Compress_patches")  # [V, C]

        # (tile, row, col) of every patch slot; the valid ones are where the rows above go.
        x_shape = g.op("Shape", [x], name=f"{n}/Shape_x")
        b_scalar = self.dim_scalar(x_shape, 0)
        n_scalar = self.dim_scalar(x_shape, 1)
        tile = g.op("Range", [g.scalar(0, np.int64), b_scalar, g.scalar(1, np.int64)], name=f"{n}/Range_tile")
        slot = g.op("Range", [g.scalar(0, np.int64), n_scalar, g.scalar(1, np.int64)], name=f"{n}/Range_slot")
        w_col = widths  # [B, 1]
        slot_row = g.op("Unsqueeze", [slot, g.ints(0)])  # [1, N]
        r = g.op("Div", [slot_row, w_col], name=f"{n}/row")
        c = g.op("Mod", [slot_row, w_col], name=f"{n}/col")
        t = g.op("Expand", [g.op("Unsqueeze", [tile, g.ints(1)]), g.op("Shape", [r])], name=f"{n}/tile")
        idx = g.op("Concat", [g.op("Unsqueeze", [t, g.ints(-1)]), g.op("Unsqueeze", [r, g.ints(-1)]),
                              g.op("Unsqueeze", [c, g.ints(-1)])], axis=-1, name=f"{n}/Concat_idx")
        idx = g.op("Compress", [g.op("Reshape", [idx, g.ints(-1, 3)]), keep], axis=0, name=f"{n}/Compress_idx")

        two, two_s = g.ints(f), g.scalar(f, np.int64)
        # Canvas size: the largest tile's (h, w) rounded up to the downsample factor (int64 scalars).
        hmax = g.op("ReduceMax", [heights], keepdims=0, name=f"{n}/max_h")
        wmax = g.op("ReduceMax", [widths], keepdims=0, name=f"{n}/max_w")
        h_al = g.op("Mul", [g.op("Div", [g.op("Add", [hmax, g.scalar(f - 1, np.int64)]), two_s]), two_s],
                    name=f"{n}/h_aligned")
        w_al = g.op("Mul", [g.op("Div", [g.op("Add", [wmax, g.scalar(f - 1, np.int64)]), two_s]), two_s],
                    name=f"{n}/w_aligned")
        canvas_shape = g.op("Concat", [batch, self.scalar_to_1d(h_al), self.scalar_to_1d(w_al), g.ints(vh)], axis=0,
                            name=f"{n}/canvas_shape")
        canvas = g.op("ConstantOfShape", [canvas_shape], name=f"{n}/canvas",
                      value=helper.make_tensor("value", F32, [1], [0.0]))
        canvas = g.op("ScatterND", [canvas, idx, rows], name=f"{n}/ScatterND")

        # Pixel-unshuffle: channel order (row offset, col offset, c), as transformers' Lfm2VlMultiModalProjector.
        hh_s = g.op("Div", [h_al, two_s], name=f"{n}/h_half")
        wh_s = g.op("Div", [w_al, two_s], name=f"{n}/w_half")
        hh, wh = self.scalar_to_1d(hh_s), self.scalar_to_1d(wh_s)
        split_shape = g.op("Concat", [batch, hh, two, wh, two, g.ints(vh)], axis=0, name=f"{n}/split_shape")
        u = g.op("Reshape", [canvas, split_shape], name=f"{n}/unshuffle/Reshape_split")
        u = g.op("Transpose", [u], perm=[0, 1, 3, 2, 4, 5], name=f"{n}/unshuffle/Transpose")
        merged_shape = g.op("Concat", [batch, hh, wh, g.ints(vh * f * f)], axis=0, name=f"{n}/merged_shape")
        u = g.op("Reshape", [u, merged_shape], name=f"{n}/unshuffle/Reshape_merge")

        y = self.linear(u, f"{PROJ}.linear_1", "projector.linear_1", f"{n}/linear_1")
        y = g.op("Gelu", [y], approximate="none", name=f"{n}/Gelu")
        y = self.linear(y, f"{PROJ}.linear_2", "projector.linear_2", f"{n}/linear_2")

        # Keep token (b, y, x) when y < h_b/2 and x < w_b/2, in (tile, row, col) order.
        ys = g.op("Range", [g.scalar(0, np.int64), hh_s, g.scalar(1, np.int64)])
        xs = g.op("Range", [g.scalar(0, np.int64), wh_s, g.scalar(1, np.int64)])
        hb = g.op("Unsqueeze", [g.op("Div", [heights, two]), g.ints(-1)])  # [B, 1, 1]
        wb = g.op("Unsqueeze", [g.op("Div", [widths, two]), g.ints(-1)])
        valid = g.op("And", [g.op("Less", [g.op("Unsqueeze", [ys, g.ints(0, 2)]), hb]),
                             g.op("Less", [g.op("Unsqueeze", [xs, g.ints(0, 1)]), wb])], name=f"{n}/valid")
        valid = g.op("Reshape", [valid, g.ints(-1)], name=f"{n}/valid_flat")
        hidden = self.cfg["text_config"]["hidden_size"]
        flat = g.op("Reshape", [y, g.ints(-1, hidden)], name=f"{n}/Reshape_tokens")
        g.op("Compress", [flat, valid], axis=0, outputs=["image_features"], name=f"{n}/Compress_tokens")


def build_embed_images(weights: Mapping[str, np.ndarray], config: dict[str, Any], onnx_dir: Path,
                       stem: str = "embed_images") -> None:
    """Write ``onnx/<stem>.onnx`` + ``<stem>.onnx_data`` (``vision_encoder`` in the 450M layout)."""
    _Vision(weights, config, onnx_dir, stem).build()

"""The ``embed_images`` graph, tiled (NaFlex patch) form: SigLIP2 vision tower + pixel-unshuffle projector.

Inputs ``pixel_values [batch_size, num_patches, 768]``, ``pixel_attention_mask [batch_size, num_patches]`` (int64),
``spatial_shapes [batch_size, 2]`` (int64); output ``image_features [num_image_tokens, hidden]`` (all tiles' tokens,
tile order, row-major inside a tile). Structure as in the published export (design doc section 1.3), including its
one simplification: the 16x16 position grid is resized once, to the batch's largest (h, w), so a batch should hold
tiles of one shape (call the graph once per distinct ``spatial_shapes`` row).
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
    def __init__(self, weights: Mapping[str, np.ndarray], config: dict[str, Any], onnx_dir: Path) -> None:
        self.w = weights
        self.v = config["vision_config"]
        self.cfg = config
        self.vh = self.v["hidden_size"]
        self.heads = self.v["num_attention_heads"]
        self.eps = float(self.v["layer_norm_eps"])
        self.g = GraphBuilder("embed_images", onnx_dir / "embed_images.onnx_data")
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

    def dim(self, shape: str, axis: int) -> str:
        """A 1-element int64 tensor holding ``shape[axis]``."""
        return self.g.op("Slice", [shape, self.g.ints(axis), self.g.ints(axis + 1)])

    def build(self) -> None:
        g = self.g
        pv = g.input("pixel_values", F32, ["batch_size", "num_patches", self.v["num_channels"] * self.v["patch_size"] ** 2])
        mask = g.input("pixel_attention_mask", I64, ["batch_size", "num_patches"])
        ss = g.input("spatial_shapes", I64, ["batch_size", 2])

        pv_shape = g.op("Shape", [pv], name="/vision/Shape_pv")
        batch, num_patches = self.dim(pv_shape, 0), self.dim(pv_shape, 1)
        heights = g.op("Gather", [ss, g.const("/vision/idx0", np.array(0, np.int64))], axis=1, name="/vision/heights")
        widths = g.op("Gather", [ss, g.const("/vision/idx1", np.array(1, np.int64))], axis=1, name="/vision/widths")
        hmax = g.op("ReduceMax", [heights, g.ints(0)], keepdims=1, name="/vision/hmax")  # [1]
        wmax = g.op("ReduceMax", [widths, g.ints(0)], keepdims=1, name="/vision/wmax")

        x = self.embeddings(pv, num_patches, hmax, wmax)
        bias = self.attention_bias(mask, batch, num_patches)
        for i in range(self.v["num_hidden_layers"]):
            x = self.encoder_layer(i, x, bias)
        x = self.layer_norm(x, f"{VT}.post_layernorm", "vision.post_layernorm", "/vision/post_layernorm")
        self.projector(x, mask, batch, heights, widths, hmax, wmax)
        g.output("image_features", F32, ["num_image_tokens", self.cfg["text_config"]["hidden_size"]])
        g.save(self.onnx_dir / "embed_images.onnx")

    def embeddings(self, pv: str, num_patches: str, hmax: str, wmax: str) -> str:
        """Patch Linear + the learned 16x16 position grid resized (bilinear, half_pixel) to (hmax, wmax)."""
        g, vh = self.g, self.vh
        patches = self.linear(pv, f"{VT}.embeddings.patch_embedding", "vision.patch_embedding", "/vision/patch_embedding")
        grid = int(round(self.v["num_patches"] ** 0.5))
        table = g.const("vision.position_embedding.weight", self.w[f"{VT}.embeddings.position_embedding.weight"])
        nchw = g.op("Reshape", [table, g.ints(1, grid, grid, vh)], name="/vision/pos/Reshape_grid")
        nchw = g.op("Transpose", [nchw], perm=[0, 3, 1, 2], name="/vision/pos/Transpose_nchw")
        sizes = g.op("Concat", [g.ints(1, vh), hmax, wmax], axis=0, name="/vision/pos/sizes")
        resized = g.op("Resize", [nchw, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel",
                       name="/vision/pos/Resize")
        resized = g.op("Transpose", [resized], perm=[0, 2, 3, 1], name="/vision/pos/Transpose_nhwc")
        flat = g.op("Reshape", [resized, g.ints(-1, vh)], name="/vision/pos/Reshape_flat")  # [hmax*wmax, vh]
        # Row p of the padded sequence takes position p; padding rows take the first position.
        positions = g.op("Range", [g.scalar(0, np.int64), g.op("Squeeze", [num_patches, g.ints(0)]), g.scalar(1, np.int64)],
                         name="/vision/pos/Range")
        count = g.op("Mul", [hmax, wmax], name="/vision/pos/count")
        inside = g.op("Less", [positions, count], name="/vision/pos/Less")
        index = g.op("Where", [inside, positions, g.scalar(0, np.int64)], name="/vision/pos/Where")
        pos = g.op("Gather", [flat, index], axis=0, name="/vision/pos/Gather")  # [N, vh]
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
        a = g.op("MultiHeadAttention", [q, k, v, "", "", bias], domain=MS, num_heads=self.heads,
                 scale=float((self.vh // self.heads) ** -0.5), name=f"{n}/attn/MultiHeadAttention")
        a = self.linear(a, f"{p}.self_attn.out_proj", f"{o}.attn.out_proj", f"{n}/attn/out_proj")
        x = g.op("Add", [x, a], name=f"{n}/residual_add_1")
        h = self.layer_norm(x, f"{p}.layer_norm2", f"{o}.layer_norm2", f"{n}/layer_norm2")
        h = self.linear(h, f"{p}.mlp.fc1", f"{o}.mlp.fc1", f"{n}/mlp/fc1")
        h = g.op("Gelu", [h], approximate="tanh", name=f"{n}/mlp/Gelu")
        h = self.linear(h, f"{p}.mlp.fc2", f"{o}.mlp.fc2", f"{n}/mlp/fc2")
        return g.op("Add", [x, h], name=f"{n}/residual_add_2")

    def projector(self, x: str, mask: str, batch: str, heights: str, widths: str, hmax: str, wmax: str) -> None:
        """Scatter valid patches into a [B, H_al, W_al, C] canvas, pixel-unshuffle 2x2, MLP, keep valid tokens."""
        g, vh, f = self.g, self.vh, int(self.cfg["downsample_factor"])
        n = "/projector"
        keep = g.op("Cast", [g.op("Reshape", [mask, g.ints(-1)], name=f"{n}/mask_flat")], to=TensorProto.BOOL,
                    name=f"{n}/mask_bool")
        rows = g.op("Compress", [g.op("Reshape", [x, g.ints(-1, vh)], name=f"{n}/Reshape_x"), keep], axis=0,
                    name=f"{n}/Compress_patches")  # [V, C]

        # (tile, row, col) of every patch slot; the valid ones are where the rows above go.
        x_shape = g.op("Shape", [x], name=f"{n}/Shape_x")
        b_scalar = g.op("Squeeze", [self.dim(x_shape, 0), g.ints(0)])
        n_scalar = g.op("Squeeze", [self.dim(x_shape, 1), g.ints(0)])
        tile = g.op("Range", [g.scalar(0, np.int64), b_scalar, g.scalar(1, np.int64)], name=f"{n}/Range_tile")
        slot = g.op("Range", [g.scalar(0, np.int64), n_scalar, g.scalar(1, np.int64)], name=f"{n}/Range_slot")
        w_col = g.op("Unsqueeze", [widths, g.ints(1)])  # [B, 1]
        slot_row = g.op("Unsqueeze", [slot, g.ints(0)])  # [1, N]
        r = g.op("Div", [slot_row, w_col], name=f"{n}/row")
        c = g.op("Mod", [slot_row, w_col], name=f"{n}/col")
        t = g.op("Expand", [g.op("Unsqueeze", [tile, g.ints(1)]), g.op("Shape", [r])], name=f"{n}/tile")
        idx = g.op("Concat", [g.op("Unsqueeze", [t, g.ints(-1)]), g.op("Unsqueeze", [r, g.ints(-1)]),
                              g.op("Unsqueeze", [c, g.ints(-1)])], axis=-1, name=f"{n}/Concat_idx")
        idx = g.op("Compress", [g.op("Reshape", [idx, g.ints(-1, 3)]), keep], axis=0, name=f"{n}/Compress_idx")

        two = g.ints(f)
        h_al = g.op("Mul", [g.op("Div", [g.op("Add", [hmax, g.ints(f - 1)]), two]), two], name=f"{n}/h_aligned")
        w_al = g.op("Mul", [g.op("Div", [g.op("Add", [wmax, g.ints(f - 1)]), two]), two], name=f"{n}/w_aligned")
        canvas_shape = g.op("Concat", [batch, h_al, w_al, g.ints(vh)], axis=0, name=f"{n}/canvas_shape")
        canvas = g.op("ConstantOfShape", [canvas_shape], name=f"{n}/canvas",
                      value=helper.make_tensor("value", F32, [1], [0.0]))
        canvas = g.op("ScatterND", [canvas, idx, rows], name=f"{n}/ScatterND")

        # Pixel-unshuffle: channel order (row offset, col offset, c), as transformers' Lfm2VlMultiModalProjector.
        hh = g.op("Div", [h_al, two], name=f"{n}/h_half")
        wh = g.op("Div", [w_al, two], name=f"{n}/w_half")
        split_shape = g.op("Concat", [batch, hh, two, wh, two, g.ints(vh)], axis=0, name=f"{n}/split_shape")
        u = g.op("Reshape", [canvas, split_shape], name=f"{n}/unshuffle/Reshape_split")
        u = g.op("Transpose", [u], perm=[0, 1, 3, 2, 4, 5], name=f"{n}/unshuffle/Transpose")
        merged_shape = g.op("Concat", [batch, hh, wh, g.ints(vh * f * f)], axis=0, name=f"{n}/merged_shape")
        u = g.op("Reshape", [u, merged_shape], name=f"{n}/unshuffle/Reshape_merge")

        y = self.linear(u, f"{PROJ}.linear_1", "projector.linear_1", f"{n}/linear_1")
        y = g.op("Gelu", [y], approximate="none", name=f"{n}/Gelu")
        y = self.linear(y, f"{PROJ}.linear_2", "projector.linear_2", f"{n}/linear_2")

        # Keep token (b, y, x) when y < h_b/2 and x < w_b/2, in (tile, row, col) order.
        ys = g.op("Range", [g.scalar(0, np.int64), g.op("Squeeze", [hh, g.ints(0)]), g.scalar(1, np.int64)])
        xs = g.op("Range", [g.scalar(0, np.int64), g.op("Squeeze", [wh, g.ints(0)]), g.scalar(1, np.int64)])
        hb = g.op("Unsqueeze", [g.op("Div", [heights, two]), g.ints(1, 2)])  # [B, 1, 1]
        wb = g.op("Unsqueeze", [g.op("Div", [widths, two]), g.ints(1, 2)])
        valid = g.op("And", [g.op("Less", [g.op("Unsqueeze", [ys, g.ints(0, 2)]), hb]),
                             g.op("Less", [g.op("Unsqueeze", [xs, g.ints(0, 1)]), wb])], name=f"{n}/valid")
        valid = g.op("Reshape", [valid, g.ints(-1)], name=f"{n}/valid_flat")
        hidden = self.cfg["text_config"]["hidden_size"]
        flat = g.op("Reshape", [y, g.ints(-1, hidden)], name=f"{n}/Reshape_tokens")
        g.op("Compress", [flat, valid], axis=0, outputs=["image_features"], name=f"{n}/Compress_tokens")


def build_embed_images(weights: Mapping[str, np.ndarray], config: dict[str, Any], onnx_dir: Path) -> None:
    """Write ``onnx/embed_images.onnx`` + ``embed_images.onnx_data``."""
    _Vision(weights, config, onnx_dir).build()

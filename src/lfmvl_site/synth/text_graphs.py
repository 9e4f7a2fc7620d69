"""The text graphs: ``embed_tokens`` (Gather) and ``decoder`` (LFM2 hybrid conv + attention LM with tied lm_head).

Operator choices follow the published export (design doc section 1.5): GroupQueryAttention with integrated RoPE
(positions come from ``attention_mask``; no ``position_ids`` input), per-head Q/K RMSNorm as ai.onnx-domain
SimplifiedLayerNormalization, depthwise Conv short-conv with a 3-column cache, SwiGLU MLP, final
SkipSimplifiedLayerNormalization(h, h), and logits for every position.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto

from .onnxbuild import GraphBuilder
from .weights import LM

F32, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
MS = "com.microsoft"


def build_embed_tokens(weights: Mapping[str, np.ndarray], config: dict[str, Any], onnx_dir: Path,
                       stem: str = "embed_tokens") -> None:
    """``input_ids [batch_size, sequence_length]`` -> ``inputs_embeds [batch_size, sequence_length, hidden]``."""
    t = config["text_config"]
    g = GraphBuilder("embed_tokens", onnx_dir / f"{stem}.onnx_data")
    ids = g.input("input_ids", I64, ["batch_size", "sequence_length"])
    table = g.const("model.embed_tokens.weight", weights[f"{LM}.embed_tokens.weight"])
    g.op("Gather", [table, ids], outputs=["inputs_embeds"], name="/model/embed_tokens/Gather", axis=0)
    g.output("inputs_embeds", F32, ["batch_size", "sequence_length", t["hidden_size"]])
    g.save(onnx_dir / f"{stem}.onnx")


def rope_caches(head_dim: int, theta: float, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin caches ``[max_positions, head_dim/2]`` computed in float32 the way transformers does."""
    inv_freq = (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))).astype(np.float32)
    freqs = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


class _Decoder:
    """Builds the decoder graph node by node (one method per block)."""

    def __init__(self, weights: Mapping[str, np.ndarray], config: dict[str, Any], onnx_dir: Path, stem: str) -> None:
        self.w = weights
        self.stem = stem
        self.t = t = config["text_config"]
        self.h = t["hidden_size"]
        self.heads, self.kv = t["num_attention_heads"], t["num_key_value_heads"]
        self.hd = self.h // self.heads
        self.eps = float(t["norm_eps"])
        self.conv_l = int(t["conv_L_cache"])
        self.g = GraphBuilder("decoder", onnx_dir / f"{stem}.onnx_data")
        self.onnx_dir = onnx_dir

    def linear_t(self, hf_name: str, onnx_name: str) -> str:
        """A bias-free Linear's weight as an ONNX MatMul operand ``[in, out]``."""
        return self.g.const(onnx_name, np.ascontiguousarray(self.w[hf_name].T))

    def rms(self, x: str, hf_name: str, onnx_name: str) -> str:
        scale = self.g.const(onnx_name, self.w[hf_name])
        return self.g.op("SimplifiedLayerNormalization", [x, scale], axis=-1, epsilon=self.eps, stash_type=1)

    def build(self) -> None:
        g, t, h = self.g, self.t, self.h
        x = g.input("inputs_embeds", F32, ["batch_size", "sequence_length", h])
        mask = g.input("attention_mask", I64, ["batch_size", "total_sequence_length"])
        for i, kind in enumerate(t["layer_types"]):
            if kind == "conv":
                g.input(f"past_conv.{i}", F32, ["batch_size", h, self.conv_l])
            else:
                for kv_part in ("key", "value"):
                    g.input(f"past_key_values.{i}.{kv_part}", F32, ["batch_size", self.kv, "past_sequence_length", self.hd])

        # GroupQueryAttention plumbing shared by all attention layers: positions come from the mask.
        seq_sum = g.op("ReduceSum", [mask, g.ints(1)], keepdims=0, name="/model/attn_mask_reformat/ReduceSum")
        seqlens_k = g.op("Cast", [g.op("Sub", [seq_sum, g.const("/model/one_i64", np.array(1, np.int64))])], to=I32,
                         name="/model/attn_mask_reformat/seqlens_k")
        total_len = g.op("Cast", [g.op("Gather", [g.op("Shape", [mask]), g.const("/model/one_idx", np.array(1, np.int64))],
                                       axis=0)], to=I32, name="/model/attn_mask_reformat/total_seq_len")
        cos, sin = rope_caches(self.hd, float(t["rope_parameters"]["rope_theta"]), int(t["max_position_embeddings"]))
        gqa_common = [seqlens_k, total_len, g.const("cos_cache", cos), g.const("sin_cache", sin)]

        for i, kind in enumerate(t["layer_types"]):
            p = f"{LM}.layers.{i}"
            normed = self.rms(x, f"{p}.operator_norm.weight", f"model.layers.{i}.operator_norm.weight")
            if kind == "conv":
                branch = self.short_conv(i, normed)
            else:
                branch = self.attention(i, normed, gqa_common)
            x = g.op("Add", [x, branch], name=f"/model/layers.{i}/residual_add_1")
            mlp_in = self.rms(x, f"{p}.ffn_norm.weight", f"model.layers.{i}.ffn_norm.weight")
            x = g.op("Add", [x, self.swiglu(i, mlp_in)], name=f"/model/layers.{i}/residual_add_2")

        # Final norm: SkipSimplifiedLayerNormalization(h, h) — RMSNorm is invariant to the doubling
        # (up to eps/4), which is how the published export writes it.
        final_scale = g.const("model.embedding_norm.weight", self.w[f"{LM}.embedding_norm.weight"])
        final = g.op("SkipSimplifiedLayerNormalization", [x, x, final_scale], domain=MS, epsilon=self.eps,
                     name="/model/norm_final/SkipSimplifiedLayerNormalization")
        # Tied lm_head: logits = final @ embed_tokens.weight^T, for every position.
        table = g.const("model.embed_tokens.weight", self.w[f"{LM}.embed_tokens.weight"])
        lm_w = g.op("Transpose", [table], perm=[1, 0], name="/lm_head/weight_transposed")
        g.op("MatMul", [final, lm_w], outputs=["logits"], name="/lm_head/MatMul")

        g.output("logits", F32, ["batch_size", "sequence_length", t["vocab_size"]])
        for i, kind in enumerate(t["layer_types"]):
            if kind == "conv":
                g.output(f"present_conv.{i}", F32, ["batch_size", h, self.conv_l])
            else:
                for kv_part in ("key", "value"):
                    g.output(f"present.{i}.{kv_part}", F32, ["batch_size", self.kv, "total_sequence_length", self.hd])
        g.save(self.onnx_dir / f"{self.stem}.onnx")

    def short_conv(self, i: int, x: str) -> str:
        """Lfm2ShortConv: in_proj -> (B, C, x) -> B*x -> causal depthwise conv over [past_conv, Bx] -> C*y -> out_proj."""
        g, h, n = self.g, self.h, f"/model/layers.{i}/conv"
        p = f"{LM}.layers.{i}.conv"
        bcx = g.op("MatMul", [x, self.linear_t(f"{p}.in_proj.weight", f"model.layers.{i}.conv.in_proj.weight_t")],
                   name=f"{n}/in_proj/MatMul")
        bcx = g.op("Transpose", [bcx], perm=[0, 2, 1], name=f"{n}/Transpose_in")  # [B, 3H, S]
        b_, c_, x_ = g.op("Split", [bcx, g.ints(h, h, h)], outputs=3, axis=1, name=f"{n}/Split")
        bx = g.op("Mul", [b_, x_], name=f"{n}/Mul_Bx")
        window = g.op("Concat", [f"past_conv.{i}", bx], axis=2, name=f"{n}/Concat")  # [B, H, L + S]
        # The next step's cache: the last L columns of the window.
        g.op("Slice", [window, g.ints(-self.conv_l), g.ints(np.iinfo(np.int64).max), g.ints(2)],
             outputs=[f"present_conv.{i}"], name=f"{n}/Slice_state")
        conv_w = g.const(f"model.layers.{i}.conv.conv.weight", self.w[f"{p}.conv.weight"])
        conv = g.op("Conv", [window, conv_w], group=h, kernel_shape=[self.conv_l], pads=[0, 0], strides=[1],
                    dilations=[1], name=f"{n}/Conv")  # [B, H, S + 1]
        conv = g.op("Slice", [conv, g.ints(1), g.ints(np.iinfo(np.int64).max), g.ints(2)], name=f"{n}/Slice_out")
        y = g.op("Mul", [c_, conv], name=f"{n}/Mul_Cy")
        y = g.op("Transpose", [y], perm=[0, 2, 1], name=f"{n}/Transpose_out")
        return g.op("MatMul", [y, self.linear_t(f"{p}.out_proj.weight", f"model.layers.{i}.conv.out_proj.weight_t")],
                    name=f"{n}/out_proj/MatMul")

    def attention(self, i: int, x: str, gqa_common: list[str]) -> str:
        """Lfm2Attention: q/k/v proj, per-head RMSNorm on q and k, GroupQueryAttention (RoPE inside), out_proj."""
        g, n = self.g, f"/model/layers.{i}/attn"
        p = f"{LM}.layers.{i}.self_attn"
        q = g.op("MatMul", [x, self.linear_t(f"{p}.q_proj.weight", f"model.layers.{i}.attn.q_proj.weight_t")],
                 name=f"{n}/q_proj/MatMul")
        k = g.op("MatMul", [x, self.linear_t(f"{p}.k_proj.weight", f"model.layers.{i}.attn.k_proj.weight_t")],
                 name=f"{n}/k_proj/MatMul")
        v = g.op("MatMul", [x, self.linear_t(f"{p}.v_proj.weight", f"model.layers.{i}.attn.v_proj.weight_t")],
                 name=f"{n}/v_proj/MatMul")
        q = self.head_norm(q, self.heads, f"{p}.q_layernorm.weight", f"model.layers.{i}.attn.q_layernorm.weight", f"{n}/q_norm")
        k = self.head_norm(k, self.kv, f"{p}.k_layernorm.weight", f"model.layers.{i}.attn.k_layernorm.weight", f"{n}/k_norm")
        attn = g.op(
            "GroupQueryAttention",
            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", *gqa_common],
            outputs=[f"{n}/GQA/out", f"present.{i}.key", f"present.{i}.value"],
            domain=MS, name=f"{n}/GroupQueryAttention",
            num_heads=self.heads, kv_num_heads=self.kv, scale=float(self.hd**-0.5),
            do_rotary=1, rotary_interleaved=0,
        )[0]
        return g.op("MatMul", [attn, self.linear_t(f"{p}.out_proj.weight", f"model.layers.{i}.attn.o_proj.weight_t")],
                    name=f"{n}/o_proj/MatMul")

    def head_norm(self, x: str, heads: int, hf_name: str, onnx_name: str, n: str) -> str:
        g = self.g
        x4 = g.op("Reshape", [x, g.ints(0, 0, heads, self.hd)], name=f"{n}/Reshape_in")
        scale = g.const(onnx_name, self.w[hf_name])
        y = g.op("SimplifiedLayerNormalization", [x4, scale], axis=-1, epsilon=self.eps, stash_type=1,
                 name=f"{n}/SimplifiedLayerNormalization")
        return g.op("Reshape", [y, g.ints(0, 0, heads * self.hd)], name=f"{n}/Reshape_out")

    def swiglu(self, i: int, x: str) -> str:
        g, n, p = self.g, f"/model/layers.{i}/mlp", f"{LM}.layers.{i}.feed_forward"
        gate = g.op("MatMul", [x, self.linear_t(f"{p}.w1.weight", f"model.layers.{i}.mlp.w1.weight_t")], name=f"{n}/w1/MatMul")
        up = g.op("MatMul", [x, self.linear_t(f"{p}.w3.weight", f"model.layers.{i}.mlp.w3.weight_t")], name=f"{n}/w3/MatMul")
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], name=f"{n}/Sigmoid")], name=f"{n}/SiLU")
        hidden = g.op("Mul", [silu, up], name=f"{n}/Mul")
        w2 = self.linear_t(f"{p}.w2.weight", f"model.layers.{i}.mlp.w2.weight_t")
        return g.op("MatMul", [hidden, w2], name=f"{n}/w2/MatMul")


def build_decoder(weights: Mapping[str, np.ndarray], config: dict[str, Any], onnx_dir: Path,
                  stem: str = "decoder") -> None:
    """Write ``onnx/<stem>.onnx`` + ``<stem>.onnx_data`` (``decoder_model_merged`` in the 450M layout)."""
    _Decoder(weights, config, onnx_dir, stem).build()

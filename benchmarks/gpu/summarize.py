"""Markdown tables of one GPU run: ``python benchmarks/gpu/summarize.py benchmarks/results/gpu-DATE``.

Bounds: bytes that must stream from GPU memory ÷ the copy bandwidth measured in the same run (bytes read +
written, so a pure read could go up to ~2× faster: the bound is a floor estimate, not a ceiling).
"""

import json
import sys
from pathlib import Path

d = Path(sys.argv[1])
bw = json.loads((d / "bandwidth.json").read_text())
prep = json.loads((d / "prepare.json").read_text())
web = json.loads((d / "webgpu.json").read_text())
# SKIP_PROXIES=1 runs (run.sh) write no proxies.json: their summary has the variants table only.
prox = json.loads((d / "proxies.json").read_text()) if (d / "proxies.json").is_file() else None
gbps = bw["copy_GBps"]
wb = prep["weight_bytes"]


def ms(b):
    return b / gbps / 1e6


print(f"GPU: {bw['gpu']}; device copy {gbps:,.0f} GB/s (read+write, torch); fp32 matmul {bw['fp32_matmul_TFLOPs']} "
      f"TFLOP/s (TF32 off); adapter {web['adapter']['description']}, shader-f16 {web['adapter']['shader_f16']}.\n")
print("| decoder variant | nodes | TTFT 640×480 ms (preprocess + vision + prefill) | TTFT bound ms | decode ms/token: "
      "Python loop | JS loop | JS, embedding fed on | weight bytes/token | decode bound ms | Python ÷ bound |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, v in web["variants"].items():
    if "error" in v:
        print(f"| {name} | error: {v['error'][:120]} |")
        continue
    dec = wb[f"decoder[{name}]"]
    per_tok = dec + wb["embed_tokens_per_token"]
    ttft_bound = ms(wb["embed_images"] + dec)
    t = v["ttft"]
    py = v["python"]["decode_wall_per_token_ms"]

    def spread(loop, v=v):  # median (min–max over the repetitions) where the run kept them
        x = v[loop]
        return f"{x['decode_wall_per_token_ms']:.1f}" + (f" ({x['min_ms']:.1f}–{x['max_ms']:.1f})" if "min_ms" in x else "")

    print(f"| {name} | {prep['nodes'][name]} | {t['first_token_ms']:.0f} ({t['preprocess_ms']:.0f} + {t['vision_ms']:.0f} + "
          f"{t['prefill_ms']:.0f}) | {ttft_bound:.2f} | {spread('python')} | {spread('js')} | "
          f"{spread('js_direct')} | {per_tok / 1e9:.3f} GB | {ms(per_tok):.3f} | "
          f"{py / ms(per_tok):.0f}× |")
streams = {name: v["streams"] for name, v in web["variants"].items() if v.get("streams")}
if streams:
    print("\n| decoder variant | clip | frames × tokens | caption ms, plain: median (min–max) | drafted | plain ÷ drafted | "
          "decoder runs/caption, plain → drafted | draft acceptance | image features reused | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, by_clip in streams.items():
        for clip, c in by_clip.items():
            if clip == "diagnose":
                continue
            a, b = c["plain"], c["drafted"]
            acc = "–" if b["acceptance"] is None else f"{b['acceptance']:.2f}"
            print(f"| {name} | {clip} | {c['frames']} × {c['tokens']} | {a['caption_ms_median']:.0f} ({a['caption_ms_min']:.0f}–"
                  f"{a['caption_ms_max']:.0f}) | {b['caption_ms_median']:.0f} "
                  f"({b['caption_ms_min']:.0f}–{b['caption_ms_max']:.0f}) | "
                  f"{a['caption_ms_median'] / b['caption_ms_median']:.2f}× | {a['decoder_runs_per_caption']:.1f} → "
                  f"{b['decoder_runs_per_caption']:.1f} | {acc} | {b['features_reused']} | {c['same_tokens']} |")
if prox is None:
    sys.exit(0)
print("\n| static proxy | nodes | weight bytes | CPU in/out, read back | GPU-resident in/out | + graph capture | bound ms |")
print("|---|---|---|---|---|---|---|")
for f, p in prox["proxies"].items():
    cells = []
    for mode in ("cpu-io", "gpu-io", "capture"):
        r = p.get(mode, {})
        cells.append(f"{r['per_run_ms']:.1f}" if "per_run_ms" in r else "failed: " + r.get("error", "?").split("\n")[0][:60])
    print(f"| {f} | {p['nodes']} | {p['weight_bytes'] / 1e9:.3f} GB | {' | '.join(cells)} | {ms(p['weight_bytes']):.3f} |")
    for name, by_clip in streams.items():
        if "diagnose" in by_clip:
            print(f"\nWhy drafted and plain tokens differ ({name}): {json.dumps(by_clip['diagnose'])}")

"""Device side: the two ceilings on this GPU, measured with torch (CUDA events, median of 20 after warm-up).

* device-to-device copy of 1 GiB, counting bytes read + written (the weight-streaming bound's denominator);
* fp32 matrix product with TF32 off (WebGPU shaders do plain fp32 FMAs), for a compute bound on prefill.
Prints one JSON object.
"""

import json

import torch


def timed(fn, reps=20):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        ts.append(start.elapsed_time(end))
    ts.sort()
    return ts[len(ts) // 2]


n = 2**30 // 4
a = torch.randn(n, device="cuda")
b = torch.empty_like(a)
copy_ms = timed(lambda: b.copy_(a))
torch.backends.cuda.matmul.allow_tf32 = False
m = torch.randn(8192, 8192, device="cuda")
mm_ms = timed(lambda: m @ m, reps=10)
print(json.dumps({
    "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "copy_bytes_read_plus_written": 2 * a.numel() * 4,
    "copy_ms": round(copy_ms, 4),
    "copy_GBps": round(2 * a.numel() * 4 / copy_ms / 1e6, 1),
    "fp32_matmul_TFLOPs": round(2 * 8192**3 / mm_ms / 1e9, 1),
}))

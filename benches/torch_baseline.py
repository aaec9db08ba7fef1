#!/usr/bin/env python3
"""PyTorch baseline for the shapes `sae-bench run` measures.

Encode  = relu(linear(X, W_enc, b_enc)) then torch.topk(k, dim=-1, sorted=False)
Decode  = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
Stats   = zeros(L).index_add_(0, idx.flatten(), vals.flatten().float())

Times are CUDA-event medians over --reps runs after one warm-up, on random (never zero)
data; peak memory is torch.cuda.max_memory_allocated during the full encode.
Usage: benches/torch_baseline.py [--shapes paper,l262k,...] [--reps 5] [--json out.json]
"""
import argparse
import json
import math
import os
import sys
import time

SHAPES = {
    # name: (N, d, L, k, dtype)   same names as tools/sae-bench/bench.rs
    "paper": (4096, 4096, 1 << 21, 64, "bf16"),
    "l262k": (4096, 4096, 1 << 18, 64, "bf16"),
    "l65k": (4096, 4096, 1 << 16, 64, "bf16"),
    "qwen": (4096, 3584, 1 << 17, 64, "bf16"),
    "f32-tf32": (4096, 4096, 1 << 18, 64, "f32"),
}


def median_ms(torch, fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def bench(torch, F, name, shape, reps):
    n, d, l, k, dt = shape
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dt]
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1234)
    x = torch.randn(n, d, device=dev, dtype=dtype, generator=g)
    w = (torch.randn(l, d, device=dev, dtype=dtype, generator=g) / math.sqrt(d)).to(dtype)
    b = torch.randn(l, device=dev, dtype=dtype, generator=g) * 0.01
    out = {"shape": {"name": name, "n": n, "d": d, "l": l, "k": k, "dtype": dt}}
    try:
        gemm = median_ms(torch, lambda: F.linear(x, w), reps)
        pre = torch.relu(F.linear(x, w, b))
        topk = median_ms(torch, lambda: torch.topk(pre, k, dim=-1, sorted=False), reps)
        del pre
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()

        def encode():
            return torch.topk(torch.relu(F.linear(x, w, b)), k, dim=-1, sorted=False)

        enc = median_ms(torch, encode, reps)
        peak = torch.cuda.max_memory_allocated()
        vals, idx = encode()
        flops = 2.0 * n * d * l
        out.update(
            gemm_ms=gemm,
            topk_ms=topk,
            encode_ms=enc,
            encode_tflops=flops / (enc * 1e-3) / 1e12,
            gemm_tflops=flops / (gemm * 1e-3) / 1e12,
            peak_memory_bytes=peak,
            peak_beyond_inputs_bytes=peak - base,
        )
        active = int((vals > 0).sum().item())
        vals_f = vals.to(dtype)
        dec = median_ms(torch, lambda: F.embedding_bag(idx, w, per_sample_weights=vals_f, mode="sum"), reps)
        out.update(decode_ms=dec, decode_gathered_tbs=active * d * w.element_size() / (dec * 1e-3) / 1e12)
        st = median_ms(torch, lambda: torch.zeros(l, device=dev).index_add_(0, idx.flatten(), vals.flatten().float()), reps)
        out.update(stats_ms=st)
    except torch.cuda.OutOfMemoryError as e:  # the point of the engine: torch needs N x L
        out["error"] = "out of memory: " + str(e).splitlines()[0]
    finally:
        del x, w, b
        torch.cuda.empty_cache()
    print(
        "%-9s %s" % (name, " ".join("%s=%s" % (kk, ("%.3f" % vv) if isinstance(vv, float) else vv) for kk, vv in out.items() if kk != "shape")),
        flush=True,
    )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print("torch_baseline: torch is not installed: %s" % e, file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_baseline: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 allowed for f32, as torch users run it
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        print("torch_baseline: unknown shapes %s (known: %s)" % (unknown, ", ".join(SHAPES)), file=sys.stderr)
        return 2
    res = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "reps": args.reps,
        "unix_time": int(time.time()),
        "shapes": [bench(torch, F, s, SHAPES[s], args.reps) for s in names],
    }
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

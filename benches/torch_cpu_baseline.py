#!/usr/bin/env python3
"""Times the PyTorch CPU path a user would run instead of sae-engine, on the
shapes of benches/cpu.rs (anchors.md "PyTorch (CPU)"):

  encode = torch.topk(relu(linear(X, W_enc, b_enc)), k, sorted=False)
  decode = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
  stats  = zeros(L).index_add_(0, idx.flatten(), vals.flatten())

Usage: python3 benches/torch_cpu_baseline.py [--reps 5] [--json]
Prints one line per shape (median ms, GFLOP/s); --json prints a JSON list instead.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(1024, 768, 32_768, 32), (1024, 768, 131_072, 32), (2048, 2304, 16_384, 64)]


def median_ms(fn, reps):
    fn()  # warm-up (allocator, thread pool)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def run(n, d, l, k, reps):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, d, generator=g) * 2 - 1
    w = (torch.rand(l, d, generator=g) * 2 - 1) / d**0.5
    b = (torch.rand(l, generator=g) * 2 - 1) * 0.05
    with torch.inference_mode():
        gemm = median_ms(lambda: F.linear(x, w, b), reps)
        encode = median_ms(lambda: torch.topk(torch.relu(F.linear(x, w, b)), k, dim=-1, sorted=False), reps)
        vals, idx = torch.topk(torch.relu(F.linear(x, w, b)), k, dim=-1, sorted=False)
        decode = median_ms(lambda: F.embedding_bag(idx, w, per_sample_weights=vals, mode="sum"), reps)
        stats = median_ms(lambda: torch.zeros(l).index_add_(0, idx.flatten(), vals.flatten()), reps)
    flops = 2 * n * d * l
    return {
        "shape": f"{n}x{d}x{l}_k{k}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gemm_ms": gemm,
        "encode_ms": encode,
        "encode_gflops": flops / encode / 1e6,
        "decode_ms": decode,
        "stats_ms": stats,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [run(*s, args.reps) for s in SHAPES]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        print(
            f"{r['shape']}: gemm {r['gemm_ms']:.1f} ms, encode {r['encode_ms']:.1f} ms "
            f"({r['encode_gflops']:.0f} GFLOP/s), decode {r['decode_ms']:.2f} ms, stats {r['stats_ms']:.2f} ms"
        )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Times the PyTorch CPU path a user would run instead of sae-engine, on the
shapes of benches/cpu.rs:

  encode = torch.topk(relu(linear(X, W_enc, b_enc)), k, sorted=False)
  decode = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
  stats  = zeros(L).index_add_(0, idx.flatten(), vals.flatten())

Usage: python3 benches/torch_cpu_baseline.py [--reps 5] [--json] [--shapes 0,2] [--threads 2]
Prints one line per shape (median ms, GFLOP/s); --json prints one JSON object per line
instead, with [median, min, max] ms per operation (the layout of `SAE_BENCH_JSON=REPS` of
benches/cpu.rs, which benches/shapes_vs_torch.py interleaves with this script).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(1024, 768, 32_768, 32), (1024, 768, 131_072, 32), (2048, 2304, 16_384, 64)]


def median_ms(fn, reps):
    """[median, min, max] ms of `reps` runs after one warm-up (allocator, thread pool)."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return [statistics.median(times), min(times), max(times)]


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
        "encode_gflops": flops / encode[0] / 1e6,
        "decode_ms": decode,
        "stats_ms": stats,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--shapes", default="0,1,2", help="indices into SHAPES, comma-separated")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for i in args.shapes.split(","):
        r = run(*SHAPES[int(i)], args.reps)
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        print(
            f"{r['shape']}: gemm {r['gemm_ms'][0]:.1f} ms, encode {r['encode_ms'][0]:.1f} ms "
            f"({r['encode_gflops']:.0f} GFLOP/s), decode {r['decode_ms'][0]:.2f} ms, "
            f"stats {r['stats_ms'][0]:.2f} ms (medians of {args.reps})",
            flush=True,
        )


if __name__ == "__main__":
    main()

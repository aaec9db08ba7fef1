#!/usr/bin/env python3
"""CPU encode / decode / statistics on the shapes of benches/cpu.rs against PyTorch, in one run.

Alternates, per round and per shape, the Rust bench binary (`SAE_BENCH_JSON=REPS`) and
benches/torch_cpu_baseline.py (`--json`), each a fresh process on the same number of
threads, the order flipped every round so a drift in machine load hits both sides alike.
Prints the ratio table (torch ms / our ms: above 1 means ours is faster) and writes
shapes_vs_torch.json and shapes_vs_torch.md into --results.

Usage (benches/cpu_vs_torch.sh builds the binary and runs this):
  python3 benches/shapes_vs_torch.py --bench-bin target/release/deps/cpu-HASH --results DIR
      [--rounds 3] [--reps 5] [--threads 2] [--shapes 0,1,2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = ("encode_ms", "decode_ms", "stats_ms")


def fmt(ms):
    """Milliseconds with three significant digits or more."""
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def one(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if len(lines) != 1:
        raise SystemExit(f"expected one JSON line from {' '.join(cmd)}, got:\n{out}")
    return json.loads(lines[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench-bin", required=True, help="release build of benches/cpu.rs")
    ap.add_argument("--results", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="0,1,2")
    args = ap.parse_args()
    os.makedirs(args.results, exist_ok=True)
    t = str(args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t)
    shapes = [int(s) for s in args.shapes.split(",")]
    runs = {s: {"ours": [], "torch": []} for s in shapes}
    names = {}
    log = open(os.path.join(args.results, "shapes_vs_torch.log"), "w")
    for r in range(args.rounds):
        for s in shapes:
            ours = (
                "ours",
                [args.bench_bin],
                dict(env, SAE_BENCH_JSON=str(args.reps), SAE_BENCH_SHAPES=str(s)),
            )
            theirs = (
                "torch",
                [sys.executable, os.path.join(HERE, "torch_cpu_baseline.py"), "--json", "--shapes", str(s),
                 "--reps", str(args.reps), "--threads", t],
                env,
            )
            for side, cmd, e in (ours, theirs) if r % 2 == 0 else (theirs, ours):
                rec = one(cmd, e)
                rec["loadavg_before"] = os.getloadavg()[0]
                names[s] = rec["shape"]
                runs[s][side].append(rec)
                line = f"round {r + 1} shape {rec['shape']} {side}: " + json.dumps(rec)
                print(line, flush=True)
                log.write(line + "\n")

    summary = {"rounds": args.rounds, "reps": args.reps, "threads": args.threads, "shapes": []}
    table = [
        "| shape (N x d x L, k) | op | ours, ms | torch, ms | torch / ours |",
        "|---|---|---|---|---|",
    ]
    for s in shapes:
        row = {"shape": names[s]}
        for op in OPS:
            ours = [x[op][0] for x in runs[s]["ours"]]
            theirs = [x[op][0] for x in runs[s]["torch"]]
            ratios = [b / a for a, b in zip(ours, theirs)]
            row[op] = {"ours": ours, "torch": theirs, "ratio": ratios}
            rng = lambda xs: f"{fmt(statistics.median(xs))} ({fmt(min(xs))}-{fmt(max(xs))})"
            table.append(
                f"| {names[s].replace('x', ' x ').replace('_k', ', k ')} | {op[:-3]} | {rng(ours)} | {rng(theirs)} | **{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f}) |"
            )
        summary["shapes"].append(row)
    summary["torch"] = runs[shapes[0]]["torch"][0].get("torch")
    with open(os.path.join(args.results, "shapes_vs_torch.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table.append("")
    table.append("encode: ours = sorted top-k codes, torch = topk(relu(linear), sorted=False); decode: ours = "
                 "gather-sum of the k decoder rows, torch = embedding_bag(mode='sum'); stats: ours = sum, "
                 "sum_sq (f64), count and max per latent, torch = index_add_ of the values only (a lower bound).")
    text = "\n".join(table) + "\n"
    with open(os.path.join(args.results, "shapes_vs_torch.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

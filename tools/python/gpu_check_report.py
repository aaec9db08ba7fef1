#!/usr/bin/env python3
"""The summary of a device check run (tools/gpu-check.sh device): which steps passed, the
clocks / power / temperature trace sampled by nvidia-smi during the benchmark (min, median,
max, and how often each clock-limiting reason was active), and the spread of the benchmark
shapes measured in two interleaved rounds.

Usage: gpu_check_report.py RUN_DIR          writes the summary of RUN_DIR to stdout
       gpu_check_report.py smi CSV          the trace summary alone
       gpu_check_report.py spread A.json B.json ...   the rounds' spread alone
RUN_DIR holds steps.tsv (name, exit status or "skipped", seconds), smi.csv (nvidia-smi
--format=csv) and bench-*.json (`sae-bench run --json`). Standard library only (it runs on
the GPU machine)."""

import csv
import json
import re
import statistics
import sys
from pathlib import Path

# Bits of clocks_event_reasons.active (NVML's nvmlClocksEventReason* constants).
EVENT_REASONS = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
]
# The measured quantities: a column header's name without its unit -> label with unit.
QUANTITIES = {
    "clocks.current.sm": "SM clock (MHz)",
    "clocks.sm": "SM clock (MHz)",
    "power.draw": "power (W)",
    "temperature.gpu": "temperature (C)",
}
REASONS_COLUMN = "clocks_event_reasons.active"
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def column_name(header):
    """`power.draw [W]` -> `power.draw`."""
    return header.split("[")[0].strip()


def read_smi(text):
    """{column name: [values]} of an nvidia-smi CSV; numeric columns as floats (units and
    "[N/A]" / "[Not Supported]" cells dropped), the reasons column as ints."""
    rows = list(csv.reader(text.splitlines(), skipinitialspace=True))
    rows = [r for r in rows if r]
    if not rows:
        raise ValueError("empty nvidia-smi output")
    names = [column_name(h) for h in rows[0]]
    cols = {n: [] for n in names}
    for r in rows[1:]:
        if r == rows[0] or len(r) != len(names):
            continue  # a repeated header or a line cut short by the kill at the end
        for name, cell in zip(names, r):
            cell = cell.strip()
            if name == REASONS_COLUMN:
                if cell.lower().startswith("0x"):
                    cols[name].append(int(cell, 16))
            elif name in QUANTITIES:
                m = NUMBER.match(cell)
                if m:
                    cols[name].append(float(m.group(0)))
    return cols


def summarize_smi(text):
    """(lines of text, dict) of the trace: per quantity n / min / median / max, and the share
    of samples in which each clock event reason was active."""
    cols = read_smi(text)
    out = {}
    lines = [f"{'quantity':<18} {'samples':>7} {'min':>9} {'median':>9} {'max':>9}"]
    for name, label in QUANTITIES.items():
        vals = cols.get(name)
        if not vals:
            continue
        s = {"samples": len(vals), "min": min(vals), "median": statistics.median(vals), "max": max(vals)}
        out[label] = s
        lines.append(f"{label:<18} {s['samples']:>7} {s['min']:>9.1f} {s['median']:>9.1f} {s['max']:>9.1f}")
    reasons = cols.get(REASONS_COLUMN, [])
    if reasons:
        shares = {}
        for bit, name in EVENT_REASONS:
            n = sum(1 for v in reasons if v & bit)
            if n:
                shares[name] = n / len(reasons)
        other = sum(1 for v in reasons if v & ~sum(b for b, _ in EVENT_REASONS))
        if other:
            shares["unknown_bits"] = other / len(reasons)
        out["clock_event_reasons"] = shares
        text_shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()) or "none"
        lines.append(f"clock event reasons over {len(reasons)} samples: {text_shares}")
    if len(lines) == 1:
        raise ValueError("no clocks, power or temperature samples in the nvidia-smi output")
    return lines, out


SPREAD_FIELDS = ("encode_ms", "gemm_only_ms", "topk_overhead_ms")


def summarize_spread(benches):
    """(lines, dict): per shape and field, the value of each round and the spread
    (max - min) / min. `benches` are the parsed `sae-bench run --json` files, in run order."""
    table = {}
    for b in benches:
        for s in b.get("shapes", []):
            name = s["shape"]["name"] if isinstance(s.get("shape"), dict) else s.get("shape")
            for f in SPREAD_FIELDS:
                v = s.get(f)
                table.setdefault(name, {}).setdefault(f, []).append(v if isinstance(v, (int, float)) else None)
    lines = [f"{'shape':<16} {'field':<17} {'rounds (ms)':<28} spread"]
    out = {}
    for name, fields in table.items():
        for f, vals in fields.items():
            got = [v for v in vals if v is not None]
            spread = (max(got) - min(got)) / min(got) if len(got) >= 2 and min(got) > 0 else None
            out.setdefault(name, {})[f] = {"rounds": vals, "spread": spread}
            shown = " / ".join("failed" if v is None else f"{v:.2f}" for v in vals)
            lines.append(f"{name:<16} {f:<17} {shown:<28} {'-' if spread is None else f'{100 * spread:.1f}%'}")
    return lines, out


def summarize_steps(text):
    """(lines, all passed): the steps table from steps.tsv."""
    lines, ok = [f"{'step':<16} {'result':<10} seconds"], True
    for row in text.splitlines():
        if not row.strip():
            continue
        name, result, secs = row.split("\t")
        passed = result == "0"
        ok = ok and passed
        shown = "ok" if passed else ("SKIPPED" if result == "skipped" else f"FAILED {result}")
        lines.append(f"{name:<16} {shown:<10} {secs}")
    return lines, ok


def report(run_dir):
    """The whole summary of a run directory as text; a missing part is said, not skipped."""
    run = Path(run_dir)
    parts = []
    steps = run / "steps.tsv"
    if steps.exists():
        lines, ok = summarize_steps(steps.read_text())
        parts += ["== steps (" + ("all passed" if ok else "NOT all passed") + ")", *lines]
    else:
        parts += ["== steps: steps.tsv missing"]
    smi = run / "smi.csv"
    try:
        lines, _ = summarize_smi(smi.read_text())
        parts += ["", "== clocks and power during the benchmark (nvidia-smi, 100 ms)", *lines]
    except (OSError, ValueError) as e:
        parts += ["", f"== clocks and power: no trace ({e})"]
    benches = []
    for p in sorted(run.glob("bench-*.json")):
        try:
            benches.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            parts += [f"{p.name}: unreadable ({e})"]
    if benches:
        lines, _ = summarize_spread(benches)
        parts += ["", f"== benchmark shapes over {len(benches)} interleaved rounds", *lines]
    else:
        parts += ["", "== benchmark: no bench-*.json"]
    return "\n".join(parts) + "\n"


def main(argv):
    if len(argv) == 1 and Path(argv[0]).is_dir():
        sys.stdout.write(report(argv[0]))
        return 0
    if len(argv) == 2 and argv[0] == "smi":
        lines, _ = summarize_smi(Path(argv[1]).read_text())
    elif len(argv) >= 2 and argv[0] == "spread":
        lines, _ = summarize_spread([json.loads(Path(p).read_text()) for p in argv[1:]])
    else:
        sys.stderr.write(__doc__)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

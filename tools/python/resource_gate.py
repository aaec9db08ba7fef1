#!/usr/bin/env python3
"""Build-time resource gate for the CUDA kernels.

Compiles every kernels/*.cu with nvcc as build.rs does (same flags, the architectures of
build.rs's ARCHS) plus `-Xptxas -v`, reads ptxas's report per entry function and
architecture (registers, spill stores, spill loads, stack frame, static shared memory),
prints a table and compares it with the committed budget (kernels/resource-budget.json).
Exits 1 when a kernel spills where its budget says it does not, or more than its budget,
uses more registers, stack or shared memory than its budget, or is missing from the
budget (or the budget names a kernel the build no longer has); 2 on a usage or compiler
error. With --update it writes the measured values as the new budget instead (review the
diff: the budget is a ceiling a change must argue for).

Usage: tools/python/resource_gate.py [--nvcc PATH] [--budget FILE] [--archs 80,90] [--update]
Without --nvcc it runs tools/install-nvcc.sh (the pinned PyPI nvcc) and takes its last line.
Python standard library only."""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The library crate: its kernels/ and build.rs.
LIB = ROOT / "crates" / "sae-engine"
DEFAULT_BUDGET = LIB / "kernels" / "resource-budget.json"
# The budgeted quantities, in table order: what ptxas reports for each entry function.
FIELDS = ("registers", "spill_stores", "spill_loads", "stack", "smem")

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+a?)'")
PROPS = re.compile(r"Function properties for (\w+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers")
SMEM = re.compile(r"(\d+) bytes smem")


class GateError(Exception):
    """A problem with the inputs (compiler, budget file) rather than a budget overrun."""


def build_archs(build_rs=LIB / "build.rs"):
    """The SASS architectures build.rs compiles for (its `const ARCHS`)."""
    text = build_rs.read_text()
    m = re.search(r"const ARCHS: &\[&str\] = &\[([^\]]*)\]", text)
    if not m:
        raise GateError(f"{build_rs}: no `const ARCHS: &[&str] = &[...]` to read the architectures from")
    archs = re.findall(r'"(\d+)"', m.group(1))
    if not archs:
        raise GateError(f"{build_rs}: ARCHS is empty")
    return archs


def parse_ptxas(text, source="ptxas output"):
    """{(kernel, "sm_NN"): {field: int}} from `-Xptxas -v` output. Only entry functions
    count (a non-inlined device function has its own properties block, not budgeted)."""
    found = {}
    current = None
    props = None  # whose "Function properties" block the next frame line belongs to
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            current = (m.group(1), m.group(2))
            if current in found:
                raise GateError(f"{source}: {current[0]} for {current[1]} reported twice")
            found[current] = {}
            continue
        m = PROPS.search(line)
        if m:
            props = m.group(1)
            continue
        if current is None:
            continue
        m = FRAME.search(line)
        if m and props == current[0]:
            found[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = USED.search(line)
        if m:
            s = SMEM.search(line)
            found[current].update(registers=int(m.group(1)), smem=int(s.group(1)) if s else 0)
            current = None
    for key, vals in found.items():
        missing = [f for f in FIELDS if f not in vals]
        if missing:
            raise GateError(f"{source}: no {', '.join(missing)} reported for {key[0]} on {key[1]}")
    return found


def nvcc_command(nvcc, source, archs, out):
    """build.rs's command line for one kernel file, with ptxas's report turned on."""
    lowest = min(archs, key=int)
    cmd = [str(nvcc), "-fatbin", "-std=c++17"]
    cmd += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    cmd += [f"-gencode=arch=compute_{lowest},code=compute_{lowest}", "-Xptxas", "-v"]
    return cmd + ["-o", str(out), str(source)]


def measure(nvcc, kernel_dir, archs):
    """Compiles every *.cu under kernel_dir (concurrently) and returns the merged report."""
    sources = sorted(Path(kernel_dir).glob("*.cu"))
    if not sources:
        raise GateError(f"{kernel_dir}: no .cu files")
    with tempfile.TemporaryDirectory(prefix="sae-resource-gate-") as tmp:

        def one(src):
            cmd = nvcc_command(nvcc, src, archs, Path(tmp) / (src.stem + ".fatbin"))
            try:
                p = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:
                raise GateError(f"cannot run {nvcc}: {e}") from e
            if p.returncode != 0:
                raise GateError(f"nvcc failed on {src} (exit {p.returncode}):\n{p.stdout}{p.stderr}")
            return parse_ptxas(p.stdout + p.stderr, str(src))

        with ThreadPoolExecutor(max_workers=4) as pool:
            reports = list(pool.map(one, sources))
    merged = {}
    for src, rep in zip(sources, reports):
        for key, vals in rep.items():
            if key in merged:
                raise GateError(f"{src}: entry function {key[0]} is also defined in another kernel file")
            merged[key] = dict(vals, file=src.name)
    return merged


def load_budget(path):
    """The budget file's `kernels` table: {kernel: {"sm_NN": {field: max}}}."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise GateError(f"cannot read the budget {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise GateError(f"{path}: not JSON ({e})") from e
    kernels = data.get("kernels") if isinstance(data, dict) else None
    if not isinstance(kernels, dict):
        raise GateError(f"{path}: expected an object with a \"kernels\" object")
    for name, per_arch in kernels.items():
        if not isinstance(per_arch, dict):
            raise GateError(f"{path}: kernels.{name} should map architectures to limits")
        for arch, limits in per_arch.items():
            bad = [f for f in FIELDS if not isinstance((limits or {}).get(f), int)]
            if bad:
                raise GateError(f"{path}: kernels.{name}.{arch} lacks integer {', '.join(bad)}")
    return data


def compare(measured, budget_kernels):
    """(rows for the table, list of failures). A row: kernel, arch, measured, limits, verdict."""
    rows, failures = [], []
    for (name, arch), got in sorted(measured.items()):
        limits = budget_kernels.get(name, {}).get(arch)
        if limits is None:
            failures.append(f"{name} ({arch}): not in the budget; add it (--update writes the measured values)")
            rows.append((name, arch, got, None, "NEW"))
            continue
        over = []
        for f in FIELDS:
            if got[f] > limits[f]:
                kind = "new spill" if f.startswith("spill") and limits[f] == 0 else "over budget"
                over.append(f"{f} {got[f]} > {limits[f]} ({kind})")
        if over:
            failures.append(f"{name} ({arch}): " + ", ".join(over))
        rows.append((name, arch, got, limits, "FAIL" if over else "ok"))
    for name, per_arch in sorted(budget_kernels.items()):
        for arch in sorted(per_arch):
            if (name, arch) not in measured:
                failures.append(f"{name} ({arch}): in the budget but not built; remove it from the budget")
    return rows, failures


def table(rows):
    """The report as aligned text: measured/budget per field."""
    head = ("kernel", "arch", "regs", "spill st", "spill ld", "stack", "smem", "")
    lines = [head]
    for name, arch, got, limits, verdict in rows:
        cells = [f"{got[f]}/{limits[f]}" if limits else f"{got[f]}/-" for f in FIELDS]
        lines.append((name, arch, *cells, verdict))
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines)


def updated_budget(old, measured):
    """The budget file content with every limit set to the measured value."""
    kernels = {}
    for (name, arch), got in sorted(measured.items()):
        kernels.setdefault(name, {})[arch] = {f: got[f] for f in FIELDS}
    new = {k: v for k, v in (old or {}).items() if k != "kernels"}
    new["kernels"] = kernels
    return new


def dump_budget(data):
    """The budget as JSON text with one line per kernel and architecture (short diffs)."""
    lines = ["{"]
    for key, value in data.items():
        if key != "kernels":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, indent=2)},".replace("\n", "\n  "))
    lines.append('  "kernels": {')
    names = list(data["kernels"])
    for i, name in enumerate(names):
        lines.append(f"    {json.dumps(name)}: {{")
        archs = list(data["kernels"][name])
        for j, arch in enumerate(archs):
            comma = "," if j + 1 < len(archs) else ""
            lines.append(f"      {json.dumps(arch)}: {json.dumps(data['kernels'][name][arch])}{comma}")
        lines.append("    }" + ("," if i + 1 < len(names) else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def find_nvcc():
    p = subprocess.run(["bash", str(ROOT / "tools" / "install-nvcc.sh")], capture_output=True, text=True)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise GateError(f"tools/install-nvcc.sh failed (exit {p.returncode}): {p.stderr.strip()}")
    return lines[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nvcc", help="nvcc to use (default: the pinned one from tools/install-nvcc.sh)")
    ap.add_argument("--budget", default=str(DEFAULT_BUDGET), help="budget file (default: %(default)s)")
    ap.add_argument("--kernels", default=str(LIB / "kernels"), help="folder of .cu files (default: %(default)s)")
    ap.add_argument("--archs", help="comma-separated SASS architectures (default: build.rs's ARCHS)")
    ap.add_argument("--update", action="store_true", help="write the measured values as the budget")
    args = ap.parse_args(argv)
    try:
        archs = [a.strip() for a in args.archs.split(",")] if args.archs else build_archs()
        if not all(a.isdigit() for a in archs):
            raise GateError(f"--archs: expected numbers like 80,90, got {args.archs!r}")
        nvcc = args.nvcc or find_nvcc()
        measured = measure(nvcc, args.kernels, archs)
        if args.update:
            old = load_budget(args.budget) if Path(args.budget).exists() else {}
            text = dump_budget(updated_budget(old, measured))
            tmp = Path(args.budget).with_suffix(".json.tmp")
            tmp.write_text(text)
            tmp.replace(args.budget)
            print(f"resource gate: wrote {len(measured)} kernel/arch budgets to {args.budget}")
            return 0
        budget = load_budget(args.budget)
    except GateError as e:
        print(f"resource gate: error: {e}", file=sys.stderr)
        return 2
    rows, failures = compare(measured, budget["kernels"])
    print(table(rows))
    if failures:
        print(f"\nresource gate: {len(failures)} failure(s) against {args.budget}:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print(f"\nresource gate: {len(rows)} kernel/arch pairs within {args.budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`sae stats` end to end against the PyTorch script a researcher writes for the same job.

The job: per-latent statistics (sum, sum of squares, active count, max) of a TopK SAE's
codes over every counted token (mask 1) of a multi-GB activation dump.

Subcommands:
  make  --sae DIR --acts FILE [--gib 2] [--d 4096 --latents 8192 --k 32]
        writes a SAELens v6 TopK SAE (cfg.json + sae_weights.safetensors, f32) and a dump in
        the format `sae stats` reads (tools/python/dump_activations.py's layout: one
        safetensors file with activations [n, d] f32, token_ids, doc_ids, mask), streamed in
        chunks so the generator itself stays small.
  torch --sae DIR --acts FILE --out STATS.safetensors [--batch-size 4096] [--threads 2]
        the researcher's script: map the dump with numpy, keep the counted rows, batched
        (x - b_dec) @ W_enc + b_enc, topk then relu (SAELens's TopK), then index_add_ /
        scatter_reduce_ per latent. Writes sum, sum_sq, n_active, max (same names and
        dtypes as `sae stats`) and prints one JSON line (rows, seconds).
  compare OURS TORCH
        checks that both statistics files agree (exit 1 otherwise) and prints the differences.
  measure --label NAME -- CMD...
        runs CMD, samples /proc/PID/status every 20 ms, prints one JSON line: wall seconds,
        peak RSS from wait4 (the kernel's high-water mark, the number /usr/bin/time -v
        prints), and the peaks of the anonymous and file-backed parts of RSS.
  memory --sae-bin SAE --work DIR --results DIR [--gib 0.25] [--batch-sizes 4096,1024]
        peak RSS of `sae stats` at each batch size on a smaller dump (compare with the run's).
  run   (the driver: see benches/cpu_vs_torch.sh) makes the data, runs `sae stats` and the
        torch script interleaved --reps times each, compares, writes results.json and
        results.md into --results.
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import threading
import time

import numpy as np

DOC_LEN = 256  # tokens per document in the generated dump; position 0 is a masked sink


# ---------------------------------------------------------------- data


def write_safetensors_header(f, tensors, metadata=None):
    """Writes a safetensors header for `tensors` = [(name, dtype, shape, nbytes)] in order;
    returns nothing, the caller then writes the tensors' bytes in the same order."""
    header = {}
    off = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keeps the data 8-byte aligned
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)


def make(args):
    d, l, k = args.d, args.latents, args.k
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.sae, exist_ok=True)
    # Decoder rows of unit-ish norm, encoder its transpose (the usual TopK initialization).
    w_dec = (rng.standard_normal((l, d), dtype=np.float32) / np.float32(np.sqrt(d))).astype(np.float32)
    b_enc = (rng.standard_normal(l, dtype=np.float32) * np.float32(0.02)).astype(np.float32)
    b_dec = (rng.standard_normal(d, dtype=np.float32) * np.float32(0.1)).astype(np.float32)
    tmp = os.path.join(args.sae, "sae_weights.safetensors.tmp")
    with open(tmp, "wb") as f:
        write_safetensors_header(
            f,
            [
                ("W_enc", "F32", (d, l), 4 * d * l),
                ("W_dec", "F32", (l, d), 4 * d * l),
                ("b_enc", "F32", (l,), 4 * l),
                ("b_dec", "F32", (d,), 4 * d),
            ],
        )
        f.write(np.ascontiguousarray(w_dec.T).tobytes())
        f.write(w_dec.tobytes())
        f.write(b_enc.tobytes())
        f.write(b_dec.tobytes())
    os.replace(tmp, os.path.join(args.sae, "sae_weights.safetensors"))
    del w_dec
    cfg = {
        "architecture": "topk",
        "d_in": d,
        "d_sae": l,
        "k": k,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {"hook_name": "blocks.12.hook_resid_post", "model_name": "bench"},
    }
    with open(os.path.join(args.sae, "cfg.json"), "w") as f:
        json.dump(cfg, f)

    n = int(args.gib * 2**30) // (4 * d)
    n -= n % DOC_LEN
    chunk = 16 * DOC_LEN
    tmp = args.acts + ".tmp"
    with open(tmp, "wb") as f:
        write_safetensors_header(
            f,
            [
                ("activations", "F32", (n, d), 4 * n * d),
                ("token_ids", "I64", (n,), 8 * n),
                ("doc_ids", "I64", (n,), 8 * n),
                ("mask", "U8", (n,), n),
            ],
            {"model": "bench", "layer": "12"},
        )
        # Residual-stream-like rows: a shared mean direction plus noise, norms varying by row.
        mean = rng.standard_normal(d, dtype=np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            x = rng.standard_normal((m, d), dtype=np.float32)
            x *= rng.uniform(0.5, 1.5, (m, 1)).astype(np.float32)
            x += mean
            f.write(x.tobytes())
        f.write(rng.integers(0, 50_000, n, dtype=np.int64).tobytes())
        f.write((np.arange(n, dtype=np.int64) // DOC_LEN).tobytes())
        f.write((np.arange(n) % DOC_LEN != 0).astype(np.uint8).tobytes())
    os.replace(tmp, args.acts)
    print(json.dumps({"rows": n, "d": d, "latents": l, "k": k, "dump_bytes": os.path.getsize(args.acts)}))


def safetensors_views(path):
    """{name: numpy memmap} of a safetensors file (read-only, nothing copied)."""
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8, "I32": np.int32}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        if start == end:
            out[name] = np.zeros(t["shape"], dtype=dtypes[t["dtype"]])
            continue
        out[name] = np.memmap(
            path, dtype=dtypes[t["dtype"]], mode="r", offset=8 + hlen + start, shape=tuple(t["shape"])
        )
    return out, header.get("__metadata__", {})


# ---------------------------------------------------------------- the researcher's script


def torch_stats(args):
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with open(os.path.join(args.sae, "cfg.json")) as f:
        cfg = json.load(f)
    k = cfg["k"]
    w = load_file(os.path.join(args.sae, "sae_weights.safetensors"))  # what SAELens does
    w_enc, b_enc, b_dec = w["W_enc"], w["b_enc"], w["b_dec"]
    l = w_enc.shape[1]
    dump, _ = safetensors_views(args.acts)
    acts, mask = dump["activations"], dump["mask"]
    n = acts.shape[0]
    s = torch.zeros(l, dtype=torch.float64)
    ss = torch.zeros(l, dtype=torch.float64)
    cnt = torch.zeros(l, dtype=torch.int64)
    mx = torch.zeros(l, dtype=torch.float32)
    counted = 0
    with torch.inference_mode():
        for i in range(0, n, args.batch_size):
            keep = torch.from_numpy(np.asarray(mask[i : i + args.batch_size]) != 0)
            x = torch.from_numpy(np.array(acts[i : i + args.batch_size]))[keep]
            counted += x.shape[0]
            h = torch.addmm(b_enc, x - b_dec, w_enc)
            vals, idx = h.topk(k, dim=-1, sorted=False)
            vals = vals.relu()
            on = vals > 0
            idx, vals = idx[on], vals[on]
            v64 = vals.double()
            s.index_add_(0, idx, v64)
            ss.index_add_(0, idx, v64 * v64)
            cnt.index_add_(0, idx, torch.ones_like(idx))
            mx.scatter_reduce_(0, idx, vals, reduce="amax", include_self=True)
    secs = time.perf_counter() - t0
    tmp = args.out + ".tmp"
    save_file({"sum": s, "sum_sq": ss, "n_active": cnt, "max": mx}, tmp, metadata={"n_tokens": str(counted)})
    os.replace(tmp, args.out)
    print(json.dumps({"rows": n, "counted": counted, "seconds": secs, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


# ---------------------------------------------------------------- agreement


def compare_files(ours_path, torch_path):
    """The differences between two statistics files, and whether they are within tolerance.

    Both sides compute the same f32 pre-activations with different GEMMs (summation order),
    so a latent whose value ties the k-th largest within ~1e-6 may be in one top-k and not
    the other. Tolerances: at most 1e-5 of all active entries may differ in count, and
    sum, sum_sq and max agree within 1e-4 relative on latents whose counts agree."""
    a, am = safetensors_views(ours_path)
    b, bm = safetensors_views(torch_path)
    na, nb = int(am["n_tokens"]), int(bm["n_tokens"])
    ca, cb = np.asarray(a["n_active"], dtype=np.int64), np.asarray(b["n_active"], dtype=np.int64)
    same = ca == cb
    sa, sb = np.asarray(a["sum"]), np.asarray(b["sum"])
    qa, qb = np.asarray(a["sum_sq"]), np.asarray(b["sum_sq"])
    xa, xb = np.asarray(a["max"]), np.asarray(b["max"])

    def rel(x, y, where):
        if not where.any():
            return 0.0
        return float(np.max(np.abs(x[where] - y[where]) / np.maximum(np.abs(y[where]), 1e-12)))

    count_diff = int(np.abs(ca - cb).sum())
    total = int(cb.sum())
    out = {
        "n_tokens": [na, nb],
        "active_entries": [int(ca.sum()), total],
        "latents_with_count_diff": int((~same).sum()),
        "count_abs_diff_total": count_diff,
        "count_diff_fraction": count_diff / max(total, 1),
        "sum_max_rel_err_equal_counts": rel(sa, sb, same & (cb > 0)),
        "sum_sq_max_rel_err_equal_counts": rel(qa, qb, same & (cb > 0)),
        "sum_max_rel_err_all": rel(sa, sb, cb > 0),
        "max_max_rel_err_equal_counts": rel(xa.astype(np.float64), xb.astype(np.float64), same & (cb > 0)),
    }
    out["agree"] = bool(
        na == nb
        and out["count_diff_fraction"] <= 1e-5
        and out["sum_max_rel_err_equal_counts"] <= 1e-4
        and out["sum_sq_max_rel_err_equal_counts"] <= 1e-4
        and out["max_max_rel_err_equal_counts"] <= 1e-4
    )
    return out


def compare(args):
    out = compare_files(args.ours, args.torch)
    print(json.dumps(out))
    sys.exit(0 if out["agree"] else 1)


# ---------------------------------------------------------------- measurement


def status_kb(pid):
    """{field: kB} of the Rss* lines of /proc/PID/status, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.startswith(("Rss", "VmHWM"))}
    except (OSError, ValueError, IndexError):
        return None


def measure_cmd(cmd, env=None):
    """Runs cmd; returns (stdout, record) with wall seconds, ru_maxrss (MB) and the peaks of
    RssAnon / RssFile (MB) sampled every 20 ms."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            st = status_kb(p.pid)
            if st:
                for key in peaks:
                    peaks[key] = max(peaks[key], st.get(key, 0))
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with status {p.returncode}: {' '.join(cmd)}")
    return out.decode(), {
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak_rss_mb": ru.ru_maxrss / 1024,  # Linux reports kB
        "peak_rss_anon_mb": peaks["RssAnon"] / 1024,
        "peak_rss_file_mb": peaks["RssFile"] / 1024,
    }


def measure(args):
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    out, rec = measure_cmd(cmd)
    sys.stdout.write(out)
    print(json.dumps({"label": args.label, **rec}))


# ---------------------------------------------------------------- driver


def make_data(args, sae_dir, acts):
    """Runs `make` in a child process (its arrays are freed before anything is timed)."""
    cmd = [sys.executable, __file__, "make", "--sae", sae_dir, "--acts", acts, "--gib", str(args.gib),
           "--d", str(args.d), "--latents", str(args.latents), "--k", str(args.k)]
    return json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)


def spread(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def run(args):
    os.makedirs(args.results, exist_ok=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    sae_dir = os.path.join(args.work, "sae")
    acts = os.path.join(args.work, "acts.safetensors")
    log = open(os.path.join(args.results, "stats_vs_torch.log"), "w")

    def note(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    t = time.perf_counter()
    made = make_data(args, sae_dir, acts)
    note(f"made SAE + dump in {time.perf_counter() - t:.1f} s: {json.dumps(made)}")
    # Both sides read the dump from the page cache: read it once before timing anything.
    subprocess.run(["cat", acts], stdout=subprocess.DEVNULL, check=True)

    ours_out = os.path.join(args.work, "ours.stats.safetensors")
    torch_out = os.path.join(args.work, "torch.stats.safetensors")
    ours_cmd = [args.sae_bin, "--quiet", "stats", "--sae", sae_dir, "--acts", acts, "--out", ours_out,
                "--backend", "cpu", "--batch-size", str(args.batch_size)]
    torch_cmd = [sys.executable, __file__, "torch", "--sae", sae_dir, "--acts", acts, "--out", torch_out,
                 "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    runs = {"ours": [], "torch": []}
    for rep in range(args.reps):
        for side, cmd, out in (("ours", ours_cmd, ours_out), ("torch", torch_cmd, torch_out)):
            if os.path.exists(out):
                os.remove(out)  # each run writes its file afresh
            load0 = os.getloadavg()[0]
            out, rec = measure_cmd(cmd, env)
            rec["rows_per_s"] = made["rows"] / rec["wall_s"]
            # Rows per CPU-second of the process: what a busy, shared machine distorts least.
            rec["rows_per_cpu_s"] = made["rows"] / rec["cpu_s"]
            if side == "torch":
                # The script's own clock, from after `import torch` to the statistics.
                rec["in_script_s"] = json.loads(out.strip().splitlines()[-1])["seconds"]
            rec["loadavg_before"] = load0
            runs[side].append(rec)
            note(f"rep {rep + 1} {side}: {json.dumps(rec)}")
    agreement = compare_files(ours_out, torch_out)
    note(f"agreement: {json.dumps(agreement)}")

    summary = {"dump": made, "command_ours": " ".join(ours_cmd), "command_torch": " ".join(torch_cmd),
               "threads": args.threads, "batch_size": args.batch_size, "agreement": agreement}
    for side in runs:
        summary[side] = {key: spread([r[key] for r in runs[side]])
                         for key in ("wall_s", "rows_per_s", "rows_per_cpu_s", "peak_rss_mb", "peak_rss_anon_mb",
                                     "peak_rss_file_mb", "cpu_s")}
    summary["torch_in_script_s"] = spread([r["in_script_s"] for r in runs["torch"]])
    summary["ratio_rows_per_s"] = summary["ours"]["rows_per_s"]["median"] / summary["torch"]["rows_per_s"]["median"]
    with open(os.path.join(args.results, "stats_vs_torch.json"), "w") as f:
        json.dump(summary, f, indent=1)
    o, t_ = summary["ours"], summary["torch"]
    table = [
        "| | `sae stats` | torch script | ours / torch |",
        "|---|---|---|---|",
        f"| rows/s, median (min-max) of {args.reps} | {o['rows_per_s']['median']:,.0f} "
        f"({o['rows_per_s']['min']:,.0f}-{o['rows_per_s']['max']:,.0f}) | {t_['rows_per_s']['median']:,.0f} "
        f"({t_['rows_per_s']['min']:,.0f}-{t_['rows_per_s']['max']:,.0f}) | **{summary['ratio_rows_per_s']:.2f}x** |",
        f"| rows per CPU-second, median (min-max) | {o['rows_per_cpu_s']['median']:,.0f} "
        f"({o['rows_per_cpu_s']['min']:,.0f}-{o['rows_per_cpu_s']['max']:,.0f}) | {t_['rows_per_cpu_s']['median']:,.0f} "
        f"({t_['rows_per_cpu_s']['min']:,.0f}-{t_['rows_per_cpu_s']['max']:,.0f}) | "
        f"**{o['rows_per_cpu_s']['median'] / t_['rows_per_cpu_s']['median']:.2f}x** |",
        f"| wall, median | {o['wall_s']['median']:.1f} s | {t_['wall_s']['median']:.1f} s | |",
        f"| peak RSS (wait4), median (min-max) | {o['peak_rss_mb']['median']:.0f} MB "
        f"({o['peak_rss_mb']['min']:.0f}-{o['peak_rss_mb']['max']:.0f}) | {t_['peak_rss_mb']['median']:.0f} MB "
        f"({t_['peak_rss_mb']['min']:.0f}-{t_['peak_rss_mb']['max']:.0f}) | {o['peak_rss_mb']['median'] / t_['peak_rss_mb']['median']:.2f} |",
        f"| of which anonymous / file-mapped (sampled peaks) | {o['peak_rss_anon_mb']['median']:.0f} / "
        f"{o['peak_rss_file_mb']['median']:.0f} MB | {t_['peak_rss_anon_mb']['median']:.0f} / "
        f"{t_['peak_rss_file_mb']['median']:.0f} MB | |",
        f"| CPU time, median | {o['cpu_s']['median']:.1f} s | {t_['cpu_s']['median']:.1f} s | |",
        f"| torch script after its imports, median | | {summary['torch_in_script_s']['median']:.1f} s "
        f"({made['rows'] / summary['torch_in_script_s']['median']:,.0f} rows/s) | |",
    ]
    with open(os.path.join(args.results, "stats_vs_torch.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    note("\n".join(table))
    if not args.keep:
        remove_scratch(args.work, sae_dir, [acts, ours_out, torch_out])
    if not agreement["agree"]:
        raise SystemExit("the two statistics files disagree beyond tolerance (see above)")


def memory(args):
    """Peak RSS of `sae stats` at several batch sizes on one dump: with the driver's run on a
    larger dump, shows what resident memory follows (batch size, weights) and what it does not
    (the dump's size)."""
    os.makedirs(args.results, exist_ok=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    sae_dir = os.path.join(args.work, "sae")
    acts = os.path.join(args.work, "acts.safetensors")
    out = os.path.join(args.work, "ours.stats.safetensors")
    made = make_data(args, sae_dir, acts)
    rows = []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        if os.path.exists(out):
            os.remove(out)
        cmd = [args.sae_bin, "--quiet", "stats", "--sae", sae_dir, "--acts", acts, "--out", out,
               "--backend", "cpu", "--batch-size", str(bs)]
        _, rec = measure_cmd(cmd, env)
        rec.update(batch_size=bs, dump_bytes=made["dump_bytes"], command=" ".join(cmd))
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    with open(os.path.join(args.results, "memory.json"), "w") as f:
        json.dump({"dump": made, "runs": rows}, f, indent=1)
    remove_scratch(args.work, sae_dir, [acts, out])


def remove_scratch(work, sae_dir, files):
    """Removes the generated SAE, the given files and the then empty folders."""
    for path in files + [os.path.join(sae_dir, "sae_weights.safetensors"), os.path.join(sae_dir, "cfg.json")]:
        if os.path.exists(path):
            os.remove(path)
    for path in (sae_dir, work):
        try:
            os.rmdir(path)
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd_name", required=True)

    def shape(p):
        p.add_argument("--d", type=int, default=4096)
        p.add_argument("--latents", type=int, default=8192)
        p.add_argument("--k", type=int, default=32)

    p = sub.add_parser("make")
    p.add_argument("--sae", required=True)
    p.add_argument("--acts", required=True)
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    shape(p)
    p.set_defaults(fn=make)

    p = sub.add_parser("torch")
    p.add_argument("--sae", required=True)
    p.add_argument("--acts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(fn=torch_stats)

    p = sub.add_parser("compare")
    p.add_argument("ours")
    p.add_argument("torch")
    p.set_defaults(fn=compare)

    p = sub.add_parser("measure")
    p.add_argument("--label", default="")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=measure)

    def measured(p, gib):
        p.add_argument("--sae-bin", required=True, help="release build of `sae`")
        p.add_argument("--work", required=True, help="scratch folder for the SAE and dump")
        p.add_argument("--results", required=True)
        p.add_argument("--gib", type=float, default=gib)
        p.add_argument("--threads", type=int, default=2)
        shape(p)

    p = sub.add_parser("run")
    measured(p, 2.0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--keep", action="store_true", help="keep the SAE, dump and statistics files")
    p.set_defaults(fn=run)

    p = sub.add_parser("memory")
    measured(p, 0.25)
    p.add_argument("--batch-sizes", default="4096,1024")
    p.set_defaults(fn=memory)

    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()

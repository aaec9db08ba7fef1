#!/usr/bin/env python3
"""Assertions of the real-model test on the engine's outputs (diff.json, `sae top-examples
--json`, `sae steer --apply --json`). Each subcommand prints `ok ...` or `FAIL ...` lines and
exits 1 when any check fails.

  replicate  the audit finds what the prompt sets differ in, robustly: the top latents of the
             diff on half A of the documents (the --up largest and --down most negative
             document-clustered z, `z_clustered`) keep their sign on half B, with a clustered z
             beyond --z-bar there. Both diffs must say they ran unpaired, and both must list every
             latent (`sae diff --top N_LATENTS`).
  examples   the full diff's top latent is a persona latent: its largest activation on the
             persona set is --min-ratio times its largest on the neutral set, and of the largest
             activations over both sets at least --min-share are on the persona set.
  steer      the dry run moved the target latent up, by more than the largest move of any
             other latent and more than the random control moved it.
  same       two diff.json of the same data (from dumps and from their statistics files) rank the
             same latents in the same order with the same numbers.
  sweep      `sae steer --strengths ... --ablate --json`: the target's move grows with the
             strength, the run's working strength is `specific`, and ablation does not raise the target.
  kl         `steer_generate.py --sweep ... --json`: the next-token KL divergence on neutral text
             grows with the scale and is positive.
  vectors    the exported vector files (safetensors, npy, gguf) hold the same vector, of the
             model's width, at the SAE's hook layer (read with steer_generate.load_vector).
  generation steer_generate.py's --compare output: the steered generation ran at the SAE's
             layer and differs from the unsteered one.
"""

import argparse
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rows_by_latent(diff):
    """{latent: row} over the report's increases and decreases."""
    return {r["latent"]: r for r in diff.get("latents", []) + diff.get("bottom", [])}


def clustered_z(row, where):
    """The row's `z_clustered`; a clear error when the engine does not write it."""
    if "z_clustered" not in row:
        raise ValueError(f"{where}: latent {row['latent']} has no z_clustered (an engine without clustered errors)")
    z = row["z_clustered"]
    if z is None or not math.isfinite(z):
        raise ValueError(f"{where}: latent {row['latent']} has z_clustered {z}")
    return z


def top_latents(diff, n_up, n_down, where="half A"):
    """[(latent, +1 | -1)]: the n_up largest positive and n_down most negative clustered z of
    the report (a latent found by its mean difference alone can come from a few documents)."""
    rows = list(rows_by_latent(diff).values())
    zs = [(clustered_z(r, where), r["latent"]) for r in rows]
    up = [(latent, 1) for z, latent in sorted(zs, key=lambda t: (-t[0], t[1])) if z > 0][:n_up]
    down = [(latent, -1) for z, latent in sorted(zs, key=lambda t: (t[0], t[1])) if z < 0][:n_down]
    if len(up) < n_up or len(down) < n_down:
        raise ValueError(f"{where}: {len(up)} increases and {len(down)} decreases; {n_up} and {n_down} wanted")
    return up + down


def pairing_mode(diff, where):
    mode = (diff.get("pairing") or {}).get("mode")
    if mode is None:
        raise ValueError(f"{where}: no pairing.mode (an engine without unpaired diffs)")
    return mode


def replicate(diff_a, diff_b, n_up, n_down, z_bar, where_b="half B"):
    """[(latent, sign, delta on B, z_clustered on B, ok)] for half A's top latents."""
    rows_b = rows_by_latent(diff_b)
    out = []
    for latent, sign in top_latents(diff_a, n_up, n_down):
        row = rows_b.get(latent)
        if row is None:
            out.append((latent, sign, float("nan"), float("nan"), False))
            continue
        z = clustered_z(row, where_b)
        ok = sign * row["delta"] > 0 and sign * z > z_bar
        out.append((latent, sign, row["delta"], z, ok))
    return out


def cmd_replicate(a):
    diff_a, diff_b = load(a.a), load(a.b)
    fails = 0
    for path, diff in [(a.a, diff_a), (a.b, diff_b)]:
        mode = pairing_mode(diff, path)
        ok = mode == "unpaired"
        print(f"{'ok' if ok else 'FAIL'} {path}: pairing {mode} ({(diff.get('pairing') or {}).get('reason', '')})")
        fails += not ok
    for latent, sign, delta, z, ok in replicate(diff_a, diff_b, a.up, a.down, a.z_bar, a.b):
        word = "increase" if sign > 0 else "decrease"
        print(f"{'ok' if ok else 'FAIL'} latent {latent} ({word} on half A): delta {delta:+.4g}, "
              f"z_clustered {z:+.2f} on half B (bar {a.z_bar})")
        fails += not ok
    return fails


def same_reports(a, b, rel=1e-9):
    """[what differs] between two diff.json of the same data: the ranked latents, their order,
    delta, z, z_clustered and q_value."""
    out = []
    for part in ("latents", "bottom"):
        ra, rb = a.get(part, []), b.get(part, [])
        if [r["latent"] for r in ra] != [r["latent"] for r in rb]:
            out.append(f"{part}: latents {[r['latent'] for r in ra][:8]}... vs {[r['latent'] for r in rb][:8]}...")
            continue
        for x, y in zip(ra, rb):
            for key in ("delta", "z", "z_clustered", "q_value"):
                u, v = x.get(key), y.get(key)
                if u is None or v is None:
                    if u != v:
                        out.append(f"{part}: latent {x['latent']} {key} {u} vs {v}")
                elif abs(u - v) > rel * max(abs(u), abs(v), 1e-300):
                    out.append(f"{part}: latent {x['latent']} {key} {u!r} vs {v!r}")
    if (a.get("pairing") or {}).get("mode") != (b.get("pairing") or {}).get("mode"):
        out.append(f"pairing {a.get('pairing')} vs {b.get('pairing')}")
    return out


def cmd_same(a):
    diffs = same_reports(load(a.a), load(a.b))
    n = len(load(a.a).get("latents", []))
    print(f"{'FAIL' if diffs else 'ok'} {a.a} and {a.b}: " + ("; ".join(diffs[:5]) if diffs else f"the same {n} top latents, same numbers"))
    return len(diffs)


def sweep_verdicts(report, strength):
    """[(what, ok)] for a `sae steer --strengths ... --ablate --json` report."""
    rows = report["sweep"]["rows"]
    adds = sorted((r for r in rows if r["kind"] == "add"), key=lambda r: r["strength"])
    ablate = [r for r in rows if r["kind"] != "add"]
    moves = [r["target_delta"] for r in adds]
    at = [r for r in adds if abs(r["strength"] - strength) < 1e-12]
    return [
        (f"the target's move grows with the strength: {[round(m, 3) for m in moves]}",
         len(moves) >= 2 and all(b > a for a, b in zip(moves, moves[1:])) and moves[0] > 0),
        (f"strength {strength} is specific", bool(at) and at[0]["specific"] is True),
        (f"ablation does not raise the target: {[round(r['target_delta'], 3) for r in ablate]}",
         len(ablate) == 1 and ablate[0]["target_delta"] <= 0),
    ]


def kl_verdicts(report):
    """[(what, ok)] for `steer_generate.py --sweep` JSON."""
    adds = sorted((r for r in report["rows"] if r["kind"] == "add"), key=lambda r: r["scale"])
    kls = [r["kl_mean"] for r in adds]
    return [(f"next-token KL on neutral text grows with the scale: {[round(k, 3) for k in kls]}",
             len(kls) >= 2 and kls[0] > 0 and all(b > a for a, b in zip(kls, kls[1:])))]


def print_verdicts(verdicts):
    for what, ok in verdicts:
        print(f"{'ok' if ok else 'FAIL'} {what}")
    return sum(not ok for _, ok in verdicts)


def max_activation(top):
    """The largest activation in a `sae top-examples --json` output (0 when it never fires)."""
    acts = [e["activation"] for e in top.get("examples", [])]
    return max(acts) if acts else 0.0


def persona_share(persona, neutral, n):
    """Of the n largest activations over both sets' top examples, the fraction from the persona
    set."""
    acts = [(e["activation"], 1) for e in persona.get("examples", [])]
    acts += [(e["activation"], 0) for e in neutral.get("examples", [])]
    top = sorted(acts, reverse=True)[:n]
    return sum(p for _, p in top) / len(top) if top else 0.0


def cmd_examples(a):
    diff = load(a.diff)
    latent = diff["latents"][0]["latent"]
    persona, neutral = load(a.persona), load(a.neutral)
    fails = 0
    for name, top in [("persona", persona), ("neutral", neutral)]:
        if top.get("latent") != latent:
            print(f"FAIL {name} top examples are of latent {top.get('latent')}, the diff's top latent is {latent}")
            fails += 1
    p, n = max_activation(persona), max_activation(neutral)
    ok = p > a.min_ratio * n and p > 0
    print(f"{'ok' if ok else 'FAIL'} top latent {latent}: max activation {p:.4g} on the persona set, "
          f"{n:.4g} on the neutral set (wanted > {a.min_ratio}x)")
    fails += not ok
    k = len(persona.get("examples", []))
    share = persona_share(persona, neutral, k)
    ok = share >= a.min_share
    print(f"{'ok' if ok else 'FAIL'} {share:.0%} of its {k} largest activations over both sets are on the persona set "
          f"(wanted >= {a.min_share:.0%})")
    fails += not ok
    for e in persona.get("examples", [])[:8]:
        print(f"   {e['activation']:8.3f}  {e.get('text_before', '')[-24:]!r} [[{e.get('token', '')!r}]] "
              f"{e.get('text_after', '')[:16]!r}")
    return fails


def steer_moves(report):
    """(target's mean move, its move under the random control, the largest |move| of any other
    latent) from `sae steer --apply --json`."""
    dry = report["dry_run"]
    target = dry["targets"][0]
    others = [abs(m["delta"]) for m in dry.get("moved", []) if m["latent"] != target["latent"]]
    if not others:
        raise ValueError("the dry run lists no other latents (--top-moved 0?)")
    return target["delta"], target["control_delta"], max(others)


def cmd_steer(a):
    move, control, other = steer_moves(load(a.report))
    print(f"   target move {move:+.4g}, under the control {control:+.4g}, largest other move {other:.4g}")
    fails = 0
    for name, ok in [("the target latent moved up", move > 0),
                     ("more than under the random control", move > abs(control)),
                     ("more than any other latent", move > other)]:
        print(f"{'ok' if ok else 'FAIL'} {name}")
        fails += not ok
    return fails


def cmd_vectors(a):
    import numpy as np
    import steer_generate as sg

    fails = 0
    vectors = []
    for path in a.files:
        layer, v = sg.load_vector(path, a.layer if path.endswith(".npy") else None)
        ok = layer == a.layer and v.shape == (a.width,) and bool(np.all(np.isfinite(v)))
        print(f"{'ok' if ok else 'FAIL'} {path}: layer {layer}, width {v.shape[0]}, norm {float(np.linalg.norm(v)):.4g}")
        fails += not ok
        vectors.append(v)
    same = all(np.allclose(v, vectors[0], rtol=1e-6, atol=1e-6) for v in vectors)
    print(f"{'ok' if same else 'FAIL'} the {len(vectors)} files hold the same vector")
    return fails + (not same)


def generations(text):
    """{"unsteered": text, "steered": text, "layer": N} from steer_generate.py --compare output."""
    m = re.search(r"--- unsteered[^\n]*---\n(.*?)\n--- steered \(layer (\d+), norm [^)]*\)[^\n]*---\n(.*)", text, re.S)
    if not m:
        raise ValueError("no unsteered and steered sections in the output")
    return {"unsteered": m.group(1).strip(), "steered": m.group(3).strip(), "layer": int(m.group(2))}


def cmd_generation(a):
    with open(a.log, encoding="utf-8") as f:
        g = generations(f.read())
    print(f"   unsteered: {g['unsteered'][:200]!r}")
    print(f"   steered:   {g['steered'][:200]!r}")
    fails = 0
    for name, ok in [(f"steered at layer {g['layer']} (the SAE's {a.layer})", g["layer"] == a.layer),
                     ("the steered generation differs", g["steered"] != g["unsteered"])]:
        print(f"{'ok' if ok else 'FAIL'} {name}")
        fails += not ok
    return fails


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("replicate")
    r.add_argument("--a", required=True, help="diff.json of half A (written with --top >= the latent count)")
    r.add_argument("--b", required=True, help="diff.json of half B (written with --top >= the latent count)")
    r.add_argument("--up", type=int, default=5)
    r.add_argument("--down", type=int, default=0)
    r.add_argument("--z-bar", type=float, default=3.0)
    e = sub.add_parser("examples")
    e.add_argument("--diff", required=True)
    e.add_argument("--persona", required=True)
    e.add_argument("--neutral", required=True)
    e.add_argument("--min-ratio", type=float, default=2.0)
    e.add_argument("--min-share", type=float, default=0.9)
    s = sub.add_parser("steer")
    s.add_argument("--report", required=True)
    m = sub.add_parser("same")
    m.add_argument("--a", required=True)
    m.add_argument("--b", required=True)
    w = sub.add_parser("sweep")
    w.add_argument("--report", required=True)
    w.add_argument("--strength", type=float, required=True, help="the strength the run works at")
    k = sub.add_parser("kl")
    k.add_argument("--report", required=True)
    v = sub.add_parser("vectors")
    v.add_argument("--layer", type=int, required=True)
    v.add_argument("--width", type=int, required=True)
    v.add_argument("files", nargs="+")
    g = sub.add_parser("generation")
    g.add_argument("--log", required=True)
    g.add_argument("--layer", type=int, required=True)
    a = p.parse_args(argv)
    commands = {"replicate": cmd_replicate, "examples": cmd_examples, "steer": cmd_steer, "same": cmd_same,
                "vectors": cmd_vectors, "generation": cmd_generation,
                "sweep": lambda a: print_verdicts(sweep_verdicts(load(a.report), a.strength)),
                "kl": lambda a: print_verdicts(kl_verdicts(load(a.report)))}
    try:
        fails = commands[a.cmd](a)
    except (OSError, ValueError, KeyError, IndexError) as err:
        print(f"FAIL {a.cmd}: {type(err).__name__}: {err}")
        fails = 1
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()

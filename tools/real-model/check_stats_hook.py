#!/usr/bin/env python3
"""Statistics from a forward hook equal `sae stats` on a dump of the same prompts.

Runs the model on the prompts with sae_engine.StatsHook on block --layer (one document per
forward pass, in input order, with the dump tool's tokenization, response mask and sink
positions), writes the hook's statistics file, and compares it with --want (what
`sae stats` wrote from `dump_activations.py --batch-size 1` on the same prompts): every
tensor byte for byte and every metadata entry but the provenance, which must name the hook.

    check_stats_hook.py --model DIR --prompts P.jsonl --chat --layer 15 --sae SAE \
        --out hook.safetensors --want dump-stats.safetensors

The model is loaded as a causal LM (the whole model runs, as in a user's generation loop);
block --layer's output does not depend on the later blocks, so it equals the dump tool's.
"""

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "tools" / "python"))
sys.path.insert(0, str(root / "ffi" / "python"))

import dump_activations as dump  # noqa: E402


def read_file(path):
    """(tensors as {name: (dtype, shape, raw bytes)}, metadata) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
               for k, v in header.items()}
    return tensors, meta


def compare(got_path, want_path):
    """Differences between the hook's file and `sae stats`'s (empty when equal)."""
    got, got_meta = read_file(got_path)
    want, want_meta = read_file(want_path)
    bad = []
    if sorted(got) != sorted(want):
        bad.append(f"tensors {sorted(got)} != {sorted(want)}")
    for name in sorted(set(got) & set(want)):
        (gd, gs, gb), (wd, ws, wb) = got[name], want[name]
        if (gd, gs) != (wd, ws):
            bad.append(f"{name}: {gd}{gs} != {wd}{ws}")
        elif gb != wb:
            dt = {"F64": np.float64, "F32": np.float32, "I64": np.int64}[gd]
            a, b = np.frombuffer(gb, dt), np.frombuffer(wb, dt)
            i = int(np.flatnonzero(a != b)[0])
            bad.append(f"{name}: {int((a != b).sum())} of {a.size} differ, first [{i}] {a[i]!r} != {b[i]!r}")
    prov = json.loads(got_meta.pop("provenance", "{}"))
    want_meta.pop("provenance", None)
    for key in sorted(set(got_meta) | set(want_meta)):
        if got_meta.get(key) != want_meta.get(key):
            bad.append(f"metadata {key}: {got_meta.get(key)!r} != {want_meta.get(key)!r}")
    if prov.get("command") != "stats hook":
        bad.append(f"provenance command {prov.get('command')!r}, expected 'stats hook'")
    return bad, got_meta, prov


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--sae", required=True)
    p.add_argument("--out", required=True, help="the hook's statistics file")
    p.add_argument("--want", required=True, help="`sae stats` of the dump of the same prompts")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--sink-positions", default="0")
    p.add_argument("--first-doc-id", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sae_engine import Sae, StatsHook

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    sinks = dump.parse_positions(a.sink_positions)
    docs = dump.tokenize(tok, dump.read_prompts(a.prompts), a.chat, a.max_tokens)
    with Sae(a.sae, backend="cpu") as sae:
        with StatsHook(model, a.layer, sae, sink_positions=sinks, first_doc_id=a.first_doc_id) as hook:
            for ids, n_prompt in docs:
                counted = dump.response_mask(n_prompt, len(ids), sinks)[None]
                x = torch.tensor([ids])
                hook.next_batch(counted=counted)
                with torch.no_grad():
                    model(input_ids=x, attention_mask=torch.ones_like(x),
                          position_ids=torch.arange(len(ids))[None], use_cache=False)
        hook.write(a.out, prompts=a.prompts)
        n_tokens, n_rows = hook.n_tokens, hook.n_rows
    bad, meta, prov = compare(a.out, a.want)
    print(f"hook: {n_tokens} counted tokens of {n_rows} over {len(docs)} documents -> {a.out}")
    if bad:
        for line in bad:
            print(f"FAIL {line}")
        sys.exit(1)
    print(f"ok hook statistics equal `sae stats` of the dump: every tensor byte for byte, metadata "
          f"n_tokens={meta['n_tokens']} token_hash={meta.get('token_hash')} "
          f"norm_median={meta.get('norm_median')} n_docs={meta.get('n_docs')}; "
          f"provenance command {prov['command']!r}, layer {prov['options']['layer']}")


if __name__ == "__main__":
    main()

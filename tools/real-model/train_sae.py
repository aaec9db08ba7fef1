#!/usr/bin/env python3
"""Trains a small TopK SAE with eai-sparsify (its SparseCoder and its FVU + AuxK loss, the
steps its Trainer takes: b_dec at the data mean, unit-norm decoder rows, the gradient parallel
to them removed, Adam with sparsify's default learning rate) on the activations of one or
more dumps written by tools/python/dump_activations.py, and saves it with sparsify's own
`save_to_disk` into OUT/layers.N (sparsify's hookpoint naming: the output of block N).

Rows at the dumps' sink positions (metadata `sink_positions`, counted from each document's
start) are left out: an attention sink's norm is ~100x the others' and would dominate the
loss. Every other row (prompt and response) is training data.

Seeded: the same dumps and flags give the same SAE. CPU only needs
SPARSIFY_DISABLE_TRITON=1 (set here before sparsify is imported).

Usage: train_sae.py --acts A.safetensors [B.safetensors ...] --out DIR
           [--latents 1024] [--k 16] [--epochs 20] [--batch-size 256] [--seed 0] [--threads 1]
"""

import argparse
import json
import os
import sys
import time

import numpy as np


def training_rows(doc_ids, sinks):
    """Boolean [n]: rows that are not at a sink position of their document."""
    doc_ids = np.asarray(doc_ids)
    n = len(doc_ids)
    starts = np.r_[0, np.flatnonzero(np.diff(doc_ids) != 0) + 1]
    pos = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    return ~np.isin(pos, list(sinks))


def load_rows(paths):
    """(float32 rows [n, d], the common block layer) from dumps, sink rows dropped."""
    from safetensors import safe_open

    rows, layers = [], set()
    for path in paths:
        with safe_open(path, "np") as f:
            meta = f.metadata() or {}
            if "layer" not in meta:
                raise ValueError(f"{path}: no `layer` in the metadata (not written by dump_activations.py?)")
            layers.add(int(meta["layer"]))
            sinks = [int(s) for s in meta.get("sink_positions", "").split(",") if s != ""]
            acts = f.get_tensor("activations").astype(np.float32)
            keep = training_rows(f.get_tensor("doc_ids"), sinks)
        rows.append(acts[keep])
    if len(layers) != 1:
        raise ValueError(f"dumps of different layers {sorted(layers)}; an SAE reads one layer")
    return np.concatenate(rows), layers.pop()


def train(x, latents, k, epochs, batch_size, seed, log=print):
    """A sparsify SparseCoder trained on rows x [n, d]; returns (sae, last epoch's FVU)."""
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(seed)
    x = torch.from_numpy(x)
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=latents, k=k))
    sae.b_dec.data = x.mean(0)
    # sparsify's default Adam learning rate for this many latents, and its AuxK weight.
    lr = 2e-4 / (latents / 2**14) ** 0.5
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    auxk_alpha = 1 / 32
    gen = torch.Generator().manual_seed(seed)
    since_fired = torch.zeros(latents, dtype=torch.long)
    dead_after = len(x)  # a latent silent for a whole epoch counts as dead
    fvu = float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, len(x), batch_size):
            batch = x[order[start : start + batch_size]]
            sae.set_decoder_norm_to_unit_norm()
            out = sae(batch, dead_mask=since_fired > dead_after)
            loss = out.fvu + auxk_alpha * out.auxk_loss
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            fired = torch.zeros(latents, dtype=torch.bool)
            fired[out.latent_indices.flatten()] = True
            since_fired += len(batch)
            since_fired[fired] = 0
            total += float(out.fvu.detach()) * len(batch)
            seen += len(batch)
        fvu = total / seen
        if epoch == 0 or epoch == epochs - 1 or (epoch + 1) % 5 == 0:
            log(f"epoch {epoch + 1}/{epochs}: FVU {fvu:.4f}, dead {int((since_fired > dead_after).sum())}")
    sae.set_decoder_norm_to_unit_norm()
    return sae, fvu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--acts", nargs="+", required=True, help="dumps from dump_activations.py (one layer)")
    p.add_argument("--out", required=True, help="folder; the SAE goes to OUT/layers.N")
    p.add_argument("--latents", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    import torch

    torch.set_num_threads(a.threads)
    try:
        x, layer = load_rows(a.acts)
    except (OSError, ValueError) as e:
        sys.exit(f"train_sae: {e}")
    t0 = time.time()
    sae, fvu = train(x, a.latents, a.k, a.epochs, a.batch_size, a.seed)
    dest = os.path.join(a.out, f"layers.{layer}")
    tmp = os.path.join(a.out, f".layers.{layer}.tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_to_disk(tmp)
    with open(os.path.join(tmp, "training.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": len(x), "layer": layer, "latents": a.latents, "k": a.k, "epochs": a.epochs,
                   "batch_size": a.batch_size, "seed": a.seed, "fvu": fvu,
                   "seconds": round(time.time() - t0, 2)}, f, indent=1)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"wrote {dest}: {a.latents} latents, k={a.k}, {len(x)} rows, final FVU {fvu:.4f}")


if __name__ == "__main__":
    main()

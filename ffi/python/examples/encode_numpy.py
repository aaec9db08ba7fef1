"""Encode activations with an SAE from numpy, decode them back, and report L0 and
reconstruction error; then accumulate per-latent statistics and list the most frequent latents.

    pip install ./ffi/python          (or: cargo build -p sae-engine-ffi, in a checkout)
    python3 ffi/python/examples/encode_numpy.py SAE_DIR [ACTS.npy] [--backend cpu|cuda|auto]

Without ACTS.npy it encodes random rows (only to show the calls)."""

import argparse
import sys
from pathlib import Path

import numpy as np

try:  # the installed package (pip install ./ffi/python) ...
    from sae_engine import Sae, Stats
except ImportError:  # ... else the one in this checkout, with a cargo-built library
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sae_engine import Sae, Stats  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sae")
    ap.add_argument("acts", nargs="?")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args()

    with Sae(args.sae, backend=args.backend) as sae:
        print(sae)
        if args.acts:
            x = np.load(args.acts, mmap_mode="r")  # streamed in batches below
        else:
            x = np.random.default_rng(0).standard_normal((1024, sae.d_in)).astype(np.float32)
        stats = Stats(sae)
        l0 = sq_err = sq_norm = 0.0
        for start in range(0, x.shape[0], args.batch):
            batch = np.ascontiguousarray(x[start:start + args.batch], dtype=np.float32)
            codes = sae.encode(batch)
            recon = sae.decode(codes)
            stats.accumulate(codes)
            if sae.is_topk:
                l0 += float((codes.values > 0).sum())
            else:
                l0 += float(codes.row_ptr[-1])
            sq_err += float(((recon - batch) ** 2).sum())
            sq_norm += float(((batch - batch.mean(axis=0)) ** 2).sum())
        n = x.shape[0]
        print(f"rows {n}  mean L0 {l0 / n:.2f}  FVU {sq_err / max(sq_norm, 1e-30):.4f}")
        freq = stats.freq()
        for i in np.argsort(-freq, kind="stable")[:10]:
            print(f"latent {i:>8}  freq {freq[i]:.4f}  mean {stats.mean()[i]:.4f}")


if __name__ == "__main__":
    main()

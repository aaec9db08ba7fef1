#!/usr/bin/env python3
"""Writes the example's fixture SAE (examples/cpp/fixture-sae: SAELens layout, d_in 8, 32
latents, k 4, dyadic weights) and the output `encode` must print for it
(examples/cpp/expected.txt, all lines but the first), from the dense numpy reference in
ffi/python/tests/fixture.py. Run from the repository root; both are committed."""

import sys
from pathlib import Path

import numpy as np

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1] / "ffi" / "python" / "tests"))
from fixture import TopKFixture  # noqa: E402


def main():
    fx = TopKFixture(seed=0)
    fx.write(str(here / "fixture-sae"))
    rows, d = 4, fx.d
    # The example's inputs: quarter steps in [-2, 2].
    x = np.array([[(((r * 7 + j * 3) % 17) - 8) / 4.0 for j in range(d)] for r in range(rows)],
                 np.float32)
    idx, val = fx.encode(x)
    recon = fx.decode(idx, val)
    lines = []
    for r in range(rows):
        lines.append(f"codes {r}:" + "".join(f" {i}:{float(v):.9g}" for i, v in zip(idx[r], val[r])))
        lines.append(f"recon {r}:" + "".join(f" {float(v):.9g}" for v in recon[r]))
    (here / "expected.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

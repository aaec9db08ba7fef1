"""Test fixtures: a small SAELens v6 SAE written with numpy only, and a dense numpy
reference of the SAE arithmetic in docs/design.md."""

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

# Make the package importable from a source checkout without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}


def write_safetensors(path, tensors):
    """Writes a safetensors file: u64 header length, JSON header, then the data."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _ST_DTYPES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


class TopKFixture:
    """d = 8, L = 32, k = 4; b_dec subtracted from the input (SAELens apply_b_dec_to_input)."""

    def __init__(self, seed=0, d=8, n_latents=32, k=4):
        rng = np.random.default_rng(seed)
        self.d, self.n_latents, self.k = d, n_latents, k
        # Multiples of 1/64 keep the reference and the engine's sums exact in f32.
        self.w_enc = (rng.integers(-32, 33, (n_latents, d)) / 64).astype(np.float32)
        self.w_dec = (rng.integers(-32, 33, (n_latents, d)) / 64).astype(np.float32)
        self.b_enc = (rng.integers(-8, 9, n_latents) / 64).astype(np.float32)
        self.b_dec = (rng.integers(-8, 9, d) / 64).astype(np.float32)

    def write(self, directory):
        os.makedirs(directory, exist_ok=True)
        write_safetensors(os.path.join(directory, "sae_weights.safetensors"), {
            "W_enc": self.w_enc.T.copy(),  # SAELens stores W_enc as [d, L]
            "W_dec": self.w_dec,
            "b_enc": self.b_enc,
            "b_dec": self.b_dec,
        })
        cfg = {"architecture": "topk", "d_in": self.d, "d_sae": self.n_latents, "k": self.k,
               "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
               "normalize_activations": "none", "rescale_acts_by_decoder_norm": False,
               "metadata": {"hook_name": "blocks.0.hook_resid_post", "model_name": "fixture"}}
        with open(os.path.join(directory, "cfg.json"), "w") as f:
            json.dump(cfg, f)
        return directory

    def pre_acts(self, x):
        x = x.astype(np.float64)
        return (x - self.b_dec) @ self.w_enc.T.astype(np.float64) + self.b_enc

    def encode(self, x):
        """Reference top-k codes: largest first, ties by smaller index, ReLU, -1 padding."""
        h = self.pre_acts(x)
        rows = x.shape[0]
        idx = np.full((rows, self.k), -1, np.int32)
        val = np.zeros((rows, self.k), np.float32)
        for r in range(rows):
            order = sorted(range(self.n_latents), key=lambda i: (-h[r, i], i))[: self.k]
            for j, i in enumerate(order):
                if h[r, i] > 0:
                    idx[r, j], val[r, j] = i, h[r, i]
        return idx, val

    def decode(self, idx, val):
        out = np.tile(self.b_dec.astype(np.float64), (idx.shape[0], 1))
        for r in range(idx.shape[0]):
            for i, v in zip(idx[r], val[r]):
                if i >= 0 and v > 0:
                    out[r] += float(v) * self.w_dec[i].astype(np.float64)
        return out.astype(np.float32)

    def inputs(self, rows, seed=1):
        rng = np.random.default_rng(seed)
        return (rng.integers(-64, 65, (rows, self.d)) / 32).astype(np.float32)

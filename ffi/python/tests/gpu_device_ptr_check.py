"""Device-pointer check for a GPU machine (not part of the CPU test suite: its name does
not match unittest's test*.py). Needs torch with CUDA and a libsae_engine_ffi built with
the CUDA backend. Run by ffi/tests/gpu_device_ptr.sh; prints one JSON line per check and
exits non-zero on any failure."""

import json
import os
import sys
import tempfile

import numpy as np

from fixture import TopKFixture

from sae_engine import Sae, SaeError

failures = 0


def report(name, ok, **extra):
    global failures
    failures += 0 if ok else 1
    print(json.dumps({"check": name, "ok": bool(ok), **extra}), flush=True)


def main():
    import torch

    if not torch.cuda.is_available():
        report("cuda available", False)
        return 1
    # Multiples of 1/64 and 1/32: every product and sum is exact in bf16/tf32/f32, so CPU and
    # GPU must agree bit for bit, ties included.
    fx = TopKFixture(seed=3, d=256, n_latents=8192, k=32)
    with tempfile.TemporaryDirectory() as tmp:
        path = fx.write(os.path.join(tmp, "sae"))
        cpu = Sae(path, backend="cpu")
        gpu = Sae(path, backend="cuda")
        report("cuda handle", gpu.has_device_pointers, backend=gpu.backend)
        x = fx.inputs(1000, seed=7)
        ref = cpu.encode(x)
        ref_recon = cpu.decode(ref)

        stream = torch.cuda.Stream()
        xt = torch.from_numpy(x).cuda()
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            codes = gpu.encode(xt)
            recon = gpu.decode(codes)
        stream.synchronize()
        idx = codes.indices.cpu().numpy()
        val = codes.values.cpu().numpy()
        report("encode device == cpu (indices)", np.array_equal(idx, ref.indices),
               mismatched_rows=int((idx != ref.indices).any(axis=1).sum()))
        report("encode device == cpu (values)",
               np.allclose(val, ref.values, rtol=1e-6, atol=1e-6),
               max_abs=float(np.abs(val - ref.values).max()))
        err = float(np.abs(recon.cpu().numpy() - ref_recon).max())
        report("decode device == cpu", err <= 1e-4, max_abs=err)

        host = gpu.encode(x)
        report("cuda host path == cpu", np.array_equal(host.indices, ref.indices))

        try:
            gpu.encode(torch.zeros((4, fx.d + 1), device="cuda"))
            report("wrong width refused", False)
        except SaeError as e:
            report("wrong width refused", e.name == "SHAPE", message=e.message)
        bad = xt.clone()
        bad[17, 3] = float("nan")
        try:
            gpu.encode(bad)
            torch.cuda.synchronize()
            report("NaN on device refused", False)
        except SaeError as e:
            report("NaN on device refused", e.name == "NON_FINITE", message=e.message)
        gpu.close()
        cpu.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

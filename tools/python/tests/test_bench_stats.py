"""Tests of benches/stats_vs_torch.py, the `sae stats` vs PyTorch benchmark: its generated SAE
and dump are files `sae stats` reads, its comparison accepts f32 summation noise and refuses
real differences, and (where torch imports) the researcher's torch script gives the statistics
`sae stats` gives. Small shapes; the benchmark itself runs at 2 GiB (benches/cpu_vs_torch.sh).

Run: python3 -m unittest discover -s tools/python/tests  (numpy, safetensors; torch optional:
the torch test is skipped without it unless SAE_REQUIRE_TORCH=1, and runs in the real-model
venv: `$SAE_REALMODEL_VENV/bin/python -m unittest tools/python/tests/test_bench_stats.py`)."""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_tools import ROOT, run_sae  # noqa: E402  (the `sae` binary, found or built as there)

spec = importlib.util.spec_from_file_location("stats_vs_torch", os.path.join(ROOT, "benches", "stats_vs_torch.py"))
svt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(svt)

D, L, K = 64, 256, 8


def make(dir_):
    """A small SAE and dump from the benchmark's own generator; returns (sae, acts)."""
    sae, acts = os.path.join(dir_, "sae"), os.path.join(dir_, "acts.safetensors")
    gib = 5000 * 4 * D / 2**30  # about 5000 rows, rounded down to whole documents
    subprocess.run(
        [sys.executable, svt.__file__, "make", "--sae", sae, "--acts", acts, "--gib", str(gib),
         "--d", str(D), "--latents", str(L), "--k", str(K)],
        check=True, stdout=subprocess.PIPE,
    )
    return sae, acts


def numpy_stats(sae, acts, out):
    """The torch script's arithmetic in numpy (f64 scores: a third, independent summation order)."""
    w, _ = svt.safetensors_views(os.path.join(sae, "sae_weights.safetensors"))
    dump, _ = svt.safetensors_views(acts)
    x = np.asarray(dump["activations"], np.float64)[np.asarray(dump["mask"]) != 0]
    h = (x - np.asarray(w["b_dec"], np.float64)) @ np.asarray(w["W_enc"], np.float64) + np.asarray(w["b_enc"])
    idx = np.argpartition(-h, K - 1, axis=1)[:, :K]
    vals = np.maximum(np.take_along_axis(h, idx, axis=1), 0)
    on = vals > 0
    idx, vals = idx[on], vals[on]
    mx = np.zeros(L, np.float32)
    np.maximum.at(mx, idx, vals.astype(np.float32))
    save_file(
        {"sum": np.bincount(idx, vals, L), "sum_sq": np.bincount(idx, vals * vals, L),
         "n_active": np.bincount(idx, minlength=L).astype(np.int64), "max": mx},
        out, metadata={"n_tokens": str(x.shape[0])},
    )
    return x.shape[0]


class StatsVsTorchTest(unittest.TestCase):
    def test_generated_files_are_read_by_sae_stats_and_agree_with_an_independent_computation(self):
        with tempfile.TemporaryDirectory() as tmp:
            sae, acts = make(tmp)
            ours, ref = os.path.join(tmp, "ours.safetensors"), os.path.join(tmp, "ref.safetensors")
            run_sae("--quiet", "stats", "--sae", sae, "--acts", acts, "--out", ours, "--backend", "cpu")
            counted = numpy_stats(sae, acts, ref)
            rows = svt.safetensors_views(acts)[0]["activations"].shape[0]
            # One masked sink per 256-token document.
            self.assertEqual(counted, rows - rows // svt.DOC_LEN)
            out = svt.compare_files(ours, ref)
            self.assertTrue(out["agree"], out)
            self.assertEqual(out["n_tokens"], [counted, counted])
            self.assertEqual(out["active_entries"][1], counted * K)

    def test_compare_accepts_summation_noise_and_refuses_differences(self):
        rng = np.random.default_rng(1)
        cnt = rng.integers(1, 1000, L).astype(np.int64)
        s = rng.random(L) * cnt
        base = {"sum": s, "sum_sq": s * 2, "n_active": cnt, "max": rng.random(L).astype(np.float32)}
        with tempfile.TemporaryDirectory() as tmp:
            def write(name, n="5000", **change):
                path = os.path.join(tmp, name)
                save_file({**base, **change}, path, metadata={"n_tokens": n})
                return path

            a = write("a")
            self.assertTrue(svt.compare_files(a, write("noise", sum=s * (1 + 1e-6)))["agree"])
            bad_sum = s.copy()
            bad_sum[3] *= 1.01
            self.assertFalse(svt.compare_files(a, write("sum", sum=bad_sum))["agree"])
            bad_cnt = cnt.copy()
            bad_cnt[5] += 50
            self.assertFalse(svt.compare_files(a, write("cnt", n_active=bad_cnt))["agree"])
            bad_max = base["max"].copy()
            bad_max[7] += 0.5
            self.assertFalse(svt.compare_files(a, write("max", max=bad_max))["agree"])
            self.assertFalse(svt.compare_files(a, write("tokens", n="4999"))["agree"])

    def test_torch_script_gives_the_statistics_of_sae_stats(self):
        try:
            import torch  # noqa: F401
        except ImportError:
            if os.environ.get("SAE_REQUIRE_TORCH") == "1":
                raise
            self.skipTest("torch is not installed here; runs in the real-model venv (see module doc)")
        with tempfile.TemporaryDirectory() as tmp:
            sae, acts = make(tmp)
            ours, theirs = os.path.join(tmp, "ours.safetensors"), os.path.join(tmp, "torch.safetensors")
            run_sae("--quiet", "stats", "--sae", sae, "--acts", acts, "--out", ours, "--backend", "cpu")
            r = subprocess.run(
                [sys.executable, svt.__file__, "torch", "--sae", sae, "--acts", acts, "--out", theirs,
                 "--batch-size", "1000", "--threads", "1"],
                check=True, stdout=subprocess.PIPE, text=True,
            )
            self.assertEqual(json.loads(r.stdout)["counted"], int(svt.safetensors_views(ours)[1]["n_tokens"]))
            out = svt.compare_files(ours, theirs)
            self.assertTrue(out["agree"], out)


if __name__ == "__main__":
    unittest.main()

"""The Python binding on the CPU backend, numpy only. Needs the built library:
`cargo build -p sae-engine-ffi` (or SAE_ENGINE_LIB=/path/to/libsae_engine_ffi.so).
Run: python3 -m unittest discover -s ffi/python/tests"""

import ctypes
import os
import tempfile
import unittest

import numpy as np

from fixture import TopKFixture

import sae_engine
from sae_engine import CsrCodes, Sae, SaeError, Stats, TopKCodes
from sae_engine._lib import lib


class BindingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.fx = TopKFixture()
        cls.path = cls.fx.write(os.path.join(cls.tmp.name, "sae"))
        cls.sae = Sae(cls.path, backend="cpu")

    @classmethod
    def tearDownClass(cls):
        cls.sae.close()
        cls.tmp.cleanup()

    def test_shape_and_metadata(self):
        s = self.sae
        self.assertEqual((s.d_in, s.n_latents, s.k, s.is_topk), (8, 32, 4, True))
        self.assertFalse(s.normalizes_input)
        self.assertFalse(s.has_device_pointers)
        self.assertTrue(s.backend.startswith("cpu"), s.backend)
        self.assertEqual(len(s.fingerprint), 16)
        self.assertRegex(sae_engine.version(), r"^\d+\.\d+\.\d+")

    def test_encode_matches_reference(self):
        x = self.fx.inputs(50)
        codes = self.sae.encode(x)
        self.assertIsInstance(codes, TopKCodes)
        ref_idx, ref_val = self.fx.encode(x)
        np.testing.assert_array_equal(codes.indices, ref_idx)
        np.testing.assert_allclose(codes.values, ref_val, rtol=1e-6, atol=1e-6)
        self.assertIsNone(codes.scale)

    def test_outputs_are_filled_in_place(self):
        x = self.fx.inputs(7)
        idx = np.full((7, 4), 99, np.int32)
        val = np.full((7, 4), -1.0, np.float32)
        codes = self.sae.encode(x, out=(idx, val))
        self.assertIs(codes.indices, idx)
        self.assertIs(codes.values, val)
        np.testing.assert_array_equal(idx, self.fx.encode(x)[0])
        recon = np.zeros((7, 8), np.float32)
        got = self.sae.decode(codes, out=recon)
        self.assertIs(got, recon)
        np.testing.assert_allclose(recon, self.fx.decode(idx, val), rtol=1e-5, atol=1e-5)
        with self.assertRaises(SaeError):
            self.sae.encode(x, out=(idx[:, :2].copy(), val))

    def test_non_contiguous_and_float64_inputs(self):
        x = self.fx.inputs(12)
        strided = np.asfortranarray(x.astype(np.float64))
        np.testing.assert_array_equal(self.sae.encode(strided).indices, self.sae.encode(x).indices)

    def test_decode_matches_reference(self):
        x = self.fx.inputs(20)
        codes = self.sae.encode(x)
        recon = self.sae.decode(codes)
        np.testing.assert_allclose(recon, self.fx.decode(codes.indices, codes.values),
                                   rtol=1e-5, atol=1e-5)

    def test_csr_holds_the_active_topk_entries(self):
        x = self.fx.inputs(30)
        topk = self.sae.encode(x)
        # A capacity of 1 forces the two-call path (BUFFER_TOO_SMALL, then the exact size).
        for cap in (None, 1):
            csr = self.sae.encode_csr(x, capacity=cap)
            self.assertIsInstance(csr, CsrCodes)
            self.assertEqual(csr.row_ptr[0], 0)
            for r in range(30):
                a, b = csr.row_ptr[r], csr.row_ptr[r + 1]
                active = sorted(int(i) for i, v in zip(topk.indices[r], topk.values[r])
                                if i >= 0 and v > 0)
                self.assertEqual(list(csr.indices[a:b]), active)
            np.testing.assert_allclose(self.sae.decode(csr), self.sae.decode(topk),
                                       rtol=1e-5, atol=1e-5)

    def test_errors_carry_status_and_message(self):
        with self.assertRaises(SaeError) as e:
            self.sae.encode(np.zeros((3, 9), np.float32))
        self.assertEqual(e.exception.name, "SHAPE")
        x = self.fx.inputs(4)
        x[2, 5] = np.nan
        with self.assertRaises(SaeError) as e:
            self.sae.encode(x)
        self.assertEqual(e.exception.name, "NON_FINITE")
        self.assertIn("row 2", e.exception.message)
        with self.assertRaises(SaeError) as e:
            Sae(os.path.join(self.tmp.name, "missing"), backend="cpu")
        self.assertIn("missing", e.exception.message)
        with self.assertRaises(SaeError) as e:
            Sae(self.path, backend="tpu")
        self.assertEqual(e.exception.name, "INVALID_ARGUMENT")
        bad = TopKCodes(np.array([[32, -1]], np.int32), np.array([[1, 0]], np.float32),
                        None, None)
        with self.assertRaises(SaeError) as e:
            self.sae.decode(bad)
        self.assertEqual(e.exception.name, "INVALID_ARGUMENT")

    def test_device_pointers_are_unsupported_on_cpu(self):
        x = self.fx.inputs(2)
        idx = np.empty((2, 4), np.int32)
        val = np.empty((2, 4), np.float32)
        st = lib().sae_encode_topk_device(self.sae._handle(), x.ctypes.data, 2, 8,
                                          idx.ctypes.data, val.ctypes.data, 4, None, None, None)
        self.assertEqual(st, 11)
        self.assertEqual(lib().sae_status_string(st), b"SAE_STATUS_UNSUPPORTED")

    def test_null_and_overflow_are_refused(self):
        L = lib()
        idx = np.empty((2, 4), np.int32)
        val = np.empty((2, 4), np.float32)
        st = L.sae_encode_topk_host(self.sae._handle(), None, 2, 8, idx.ctypes.data,
                                    val.ctypes.data, 4, None, None)
        self.assertEqual(st, 1)  # NULL_ARGUMENT
        st = L.sae_encode_topk_host(self.sae._handle(), idx.ctypes.data,
                                    ctypes.c_size_t(-1).value, 8, idx.ctypes.data,
                                    val.ctypes.data, 4, None, None)
        self.assertEqual(st, 2)  # INVALID_ARGUMENT
        self.assertEqual(L.sae_d_in(None), 0)

    def test_stats_accumulate_merge_and_mask(self):
        x = self.fx.inputs(40)
        codes = self.sae.encode(x)
        mask = (np.arange(40) % 3 != 0).astype(np.uint8)
        a, b, whole = Stats(self.sae), Stats(self.sae), Stats(self.sae)
        a.accumulate(TopKCodes(codes.indices[:25], codes.values[:25], None, None), mask[:25])
        b.accumulate(self.sae.encode_csr(x[25:]), mask[25:])
        whole.accumulate(codes, mask)
        a.merge(b)
        self.assertEqual(a.n_tokens, int(mask.sum()))
        got, want = a.arrays(), whole.arrays()
        np.testing.assert_array_equal(got["n_active"], want["n_active"])
        np.testing.assert_array_equal(got["max"], want["max"])
        np.testing.assert_allclose(got["sum"], want["sum"], rtol=1e-12)
        np.testing.assert_allclose(got["sum_sq"], want["sum_sq"], rtol=1e-12)
        # Against numpy directly.
        keep = mask.astype(bool)
        ref_sum = np.zeros(32)
        for i, v in zip(codes.indices[keep].ravel(), codes.values[keep].ravel()):
            if i >= 0 and v > 0:
                ref_sum[i] += v
        np.testing.assert_allclose(got["sum"], ref_sum, rtol=1e-12)
        np.testing.assert_allclose(a.mean(), ref_sum / keep.sum(), rtol=1e-12)
        self.assertEqual(a.fingerprint, self.sae.fingerprint)

    def test_stats_file_roundtrip(self):
        codes = self.sae.encode(self.fx.inputs(10))
        s = Stats(self.sae)
        s.accumulate(codes)
        path = os.path.join(self.tmp.name, "shard.safetensors")
        s.write(path)
        back = Stats.read(path)
        self.assertEqual(back.n_tokens, 10)
        np.testing.assert_array_equal(back.arrays()["sum"], s.arrays()["sum"])
        self.assertEqual(back.fingerprint, s.fingerprint)

    def test_stats_of_other_sae_refuse_to_merge(self):
        other_dir = TopKFixture(seed=5).write(os.path.join(self.tmp.name, "other"))
        with Sae(other_dir, backend="cpu") as other:
            with self.assertRaises(SaeError) as e:
                Stats(self.sae).merge(Stats(other))
        self.assertEqual(e.exception.name, "INCOMPATIBLE")


class NoCopyAndLookupTest(unittest.TestCase):
    def test_contiguous_float32_is_used_in_place(self):
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        self.assertIs(sae_engine._host(x, np.float32, "x"), x)
        # Other layouts or dtypes are converted (once) rather than refused.
        for y in (np.asfortranarray(x), x.astype(np.float64), x[:, ::2]):
            got = sae_engine._host(y, np.float32, "x")
            self.assertTrue(got.flags.c_contiguous and got.dtype == np.float32)
            self.assertFalse(np.shares_memory(got, y))

    def test_the_packaged_library_comes_first(self):
        from unittest import mock
        from sae_engine import _lib

        with tempfile.TemporaryDirectory() as d:
            packaged = os.path.join(d, "_native.cpython-311-x86_64-linux-gnu.so")
            env_lib = os.path.join(d, "libsae_engine_ffi.so")
            for p in (packaged, env_lib):
                open(p, "wb").close()
            with mock.patch.dict(os.environ, {"SAE_ENGINE_LIB": env_lib}):
                with mock.patch.object(_lib, "_packaged", return_value=[packaged]):
                    self.assertEqual(_lib.find_library(), packaged)
                with mock.patch.object(_lib, "_packaged", return_value=[]):
                    self.assertEqual(_lib.find_library(), env_lib)


if __name__ == "__main__":
    unittest.main()

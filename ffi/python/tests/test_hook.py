"""StatsHook with a model-free feed (numpy), and on a tiny torch model when torch is installed.
The real-model stage (tools/real-model/test.sh) checks the hook against `sae stats` on a dump.
Run: python3 -m unittest discover -s ffi/python/tests"""

import json
import os
import struct
import tempfile
import unittest

import numpy as np

from fixture import TopKFixture

from sae_engine import Sae, SaeError, Stats, StatsHook


def read_metadata(path):
    """The `__metadata__` of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})


class Batch:
    """A padded batch of 3 sequences of up to 6 tokens: [3, 6, d] activations, token ids,
    attention mask (sequence 1 has 4 real tokens) and a `counted` mask (response tokens)."""

    def __init__(self, fx, seed=2):
        rng = np.random.default_rng(seed)
        self.hidden = (rng.integers(-64, 65, (3, 6, fx.d)) / 32).astype(np.float32)
        self.ids = rng.integers(0, 1000, (3, 6)).astype(np.int64)
        self.att = np.ones((3, 6), np.int64)
        self.att[1, 4:] = 0
        self.counted = np.ones((3, 6), np.uint8)
        self.counted[2, :2] = 0  # sequence 2's first two tokens are its prompt

    def rows(self, sinks=(0,), first_doc=0):
        """The dump's columns: real tokens in order, the mask after the sink rule."""
        x, tok, doc, mask = [], [], [], []
        for b in range(3):
            n = int(self.att[b].sum())
            x.append(self.hidden[b, :n])
            tok.append(self.ids[b, :n])
            doc.append(np.full(n, first_doc + b, np.int64))
            m = self.counted[b, :n].copy()
            for s in sinks:
                if s < n:
                    m[s] = 0
            mask.append(m)
        return (np.concatenate(x), np.concatenate(tok), np.concatenate(doc),
                np.concatenate(mask).astype(np.uint8))


class HookFeedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.fx = TopKFixture()
        cls.sae = Sae(cls.fx.write(os.path.join(cls.tmp.name, "sae")), backend="cpu")

    @classmethod
    def tearDownClass(cls):
        cls.sae.close()
        cls.tmp.cleanup()

    def test_feed_counts_real_unmasked_non_sink_tokens(self):
        bt = Batch(self.fx)
        hook = StatsHook(None, 3, self.sae)
        hook.feed(bt.hidden, input_ids=bt.ids, attention_mask=bt.att, counted=bt.counted)
        x, _, _, mask = bt.rows()
        keep = mask.astype(bool)
        # 6 + 4 + 6 real tokens; sinks at position 0 of each; 2 prompt tokens of sequence 2.
        self.assertEqual(x.shape[0], 16)
        self.assertEqual(hook.n_tokens, 16 - 3 - 1)
        self.assertEqual(hook.n_tokens, int(keep.sum()))
        # Sums against the numpy reference (exact: inputs and weights are dyadic), in row order.
        idx, val = self.fx.encode(x[keep])
        ref = {"sum": np.zeros(32), "n_active": np.zeros(32, np.uint64),
               "max": np.zeros(32, np.float32)}
        for i, v in zip(idx.ravel(), val.ravel()):
            if i >= 0 and v > 0:
                ref["sum"][i] += float(v)
                ref["n_active"][i] += 1
                ref["max"][i] = max(ref["max"][i], v)
        got = hook.stats.arrays()
        for k, v in ref.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)

    def test_file_equals_rows_fed_as_a_dump_and_names_the_hook(self):
        bt = Batch(self.fx)
        hook = StatsHook(None, 3, self.sae, outlier_factor=4.0, first_doc_id=10)
        # Two forward passes: the second batch's documents are numbered on (13, 14, 15).
        hook.feed(bt.hidden, input_ids=bt.ids, attention_mask=bt.att, counted=bt.counted)
        hook.feed(bt.hidden[::-1].copy(), input_ids=bt.ids[::-1].copy(),
                  attention_mask=bt.att[::-1].copy(), counted=bt.counted[::-1].copy())
        got_path = os.path.join(self.tmp.name, "hook.safetensors")
        hook.write(got_path, prompts="test batch")
        # The same rows as a dump's columns, straight into Stats.
        ref = Stats(self.sae)
        x, tok, doc, mask = bt.rows(first_doc=10)
        ref.accumulate_rows(self.sae, x, mask, tok, doc)
        rev = Batch(self.fx)
        rev.hidden, rev.ids = bt.hidden[::-1].copy(), bt.ids[::-1].copy()
        rev.att, rev.counted = bt.att[::-1].copy(), bt.counted[::-1].copy()
        x2, tok2, doc2, mask2 = rev.rows(first_doc=13)
        ref.accumulate_rows(self.sae, x2, mask2, tok2, doc2)
        from sae_engine._lib import check, lib
        check(lib().sae_stats_set_outlier_factor(ref._s, 4.0))
        ref_path = os.path.join(self.tmp.name, "ref.safetensors")
        ref.write(ref_path)
        with open(got_path, "rb") as f:
            got_bytes = f.read()
        got_meta, want_meta = read_metadata(got_path), read_metadata(ref_path)
        prov = json.loads(got_meta.pop("provenance"))
        self.assertEqual(got_meta, want_meta)
        for key in ("token_hash", "norm_median", "n_outliers", "n_docs"):
            self.assertIn(key, got_meta)
        self.assertEqual(got_meta["n_docs"], "6")
        self.assertEqual(got_meta["n_token_ids"], got_meta["n_tokens"])
        self.assertEqual(got_meta["outlier_factor"], "4")
        self.assertEqual(prov["command"], "stats hook")
        opts = prov["options"]
        self.assertEqual((opts["source"], opts["layer"], opts["hook"], opts["prompts"]),
                         ("transformers forward hook", 3, "blocks.3.hook_resid_post", "test batch"))
        self.assertEqual(opts["sae_fingerprint"], self.sae.fingerprint)
        # Tensors: the data after the headers are byte-equal.
        with open(ref_path, "rb") as f:
            ref_bytes = f.read()
        self.assertEqual(got_bytes[8 + struct.unpack("<Q", got_bytes[:8])[0]:],
                         ref_bytes[8 + struct.unpack("<Q", ref_bytes[:8])[0]:])

    def test_bad_batches_are_refused_and_change_nothing(self):
        bt = Batch(self.fx)
        hook = StatsHook(None, 3, self.sae)
        with self.assertRaises(SaeError) as e:
            hook.feed(np.zeros((2, 3, 7), np.float32))
        self.assertEqual(e.exception.name, "SHAPE")
        bad = bt.hidden.copy()
        bad[2, 5, 1] = np.nan
        with self.assertRaises(SaeError) as e:
            hook.feed(bad, input_ids=bt.ids, attention_mask=bt.att)
        self.assertEqual(e.exception.name, "NON_FINITE")
        self.assertIn("row 15", str(e.exception))
        self.assertEqual(hook.n_tokens, 0)
        with self.assertRaises(SaeError):
            hook.feed(bt.hidden, attention_mask=bt.att[:, :5])
        with self.assertRaises(SaeError):
            StatsHook(None, 3, self.sae, outlier_factor=1.0)

    def test_torch_model_hook_equals_feed(self):
        try:
            import torch
        except ImportError:
            self.skipTest("torch is not installed (the real-model stage runs this with torch)")
        d = self.fx.d

        class Block(torch.nn.Module):
            def __init__(self, seed):
                super().__init__()
                g = torch.Generator().manual_seed(seed)
                self.w = torch.nn.Parameter(torch.randn(d, d, generator=g) / d)

            def forward(self, h):
                return (h + torch.tanh(h @ self.w),)

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(1000, d)
                self.layers = torch.nn.ModuleList([Block(s) for s in range(3)])

            def forward(self, input_ids=None, attention_mask=None):
                h = self.emb(input_ids)
                outs = []
                for blk in self.layers:
                    h = blk(h)[0]
                    outs.append(h)
                return outs

        torch.manual_seed(0)
        model = Tiny().eval()
        bt = Batch(self.fx)
        ids, att = torch.from_numpy(bt.ids), torch.from_numpy(bt.att)
        with torch.no_grad(), StatsHook(model, 1, self.sae) as hook:
            hook.next_batch(counted=bt.counted)
            outs = model(input_ids=ids, attention_mask=att)
        self.assertEqual(hook._handles, [])
        ref = StatsHook(None, 1, self.sae)
        ref.feed(outs[1].numpy(), input_ids=bt.ids, attention_mask=bt.att, counted=bt.counted)
        self.assertEqual(hook.n_tokens, ref.n_tokens)
        for k, v in ref.stats.arrays().items():
            np.testing.assert_array_equal(hook.stats.arrays()[k], v, err_msg=k)


if __name__ == "__main__":
    unittest.main()

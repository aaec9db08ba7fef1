"""Tests of tools/python without model weights or torch: the dump writer's pure
functions, the vector loader, and an independent read of `sae steer`'s GGUF with the
`gguf` package (the reader llama.cpp's own Python tooling uses).

Run: python3 -m unittest discover -s tools/python/tests  (needs numpy, safetensors, gguf;
finds the `sae` binary via $SAE_BIN, $CARGO_TARGET_DIR or target/, building it if absent)."""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "python"))

import dump_activations as da  # noqa: E402
import steer_generate as sg  # noqa: E402


def sae_bin():
    if os.environ.get("SAE_BIN"):
        return os.environ["SAE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(target, "debug", "sae")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--quiet", "--bin", "sae"], cwd=ROOT, check=True)
    return path


def run_sae(*args):
    r = subprocess.run([sae_bin(), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"sae {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r.stdout


def write_saelens(dir_, w_dec, k):
    """A TopK SAE in the SAELens v6 layout, tied weights."""
    from safetensors.numpy import save_file

    l, d = w_dec.shape
    os.makedirs(dir_, exist_ok=True)
    save_file(
        {
            "W_enc": np.ascontiguousarray(w_dec.T),
            "W_dec": w_dec,
            "b_enc": np.zeros(l, np.float32),
            "b_dec": np.zeros(d, np.float32),
        },
        os.path.join(dir_, "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": "topk", "d_in": d, "d_sae": l, "k": k, "dtype": "float32",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {"hook_name": "blocks.5.hook_resid_post", "hook_layer": 5},
    }
    with open(os.path.join(dir_, "cfg.json"), "w") as f:
        json.dump(cfg, f)


class DumpWriterTest(unittest.TestCase):
    def test_layer_numbering(self):
        self.assertEqual(da.hidden_state_index(0), 1)
        self.assertEqual(da.hidden_state_index(12), 13)
        with self.assertRaises(ValueError):
            da.hidden_state_index(-1)

    def test_response_mask(self):
        self.assertEqual(da.response_mask(2, 5).tolist(), [0, 0, 1, 1, 1])
        self.assertEqual(da.response_mask(0, 2).tolist(), [1, 1])
        with self.assertRaises(ValueError):
            da.response_mask(6, 5)

    def test_response_mask_leaves_sinks_out(self):
        self.assertEqual(da.response_mask(0, 4, [0]).tolist(), [0, 1, 1, 1])
        self.assertEqual(da.response_mask(2, 5, [0, 3, 9]).tolist(), [0, 0, 1, 0, 1])

    def test_parse_positions(self):
        self.assertEqual(da.parse_positions("0"), [0])
        self.assertEqual(da.parse_positions("3,0,3"), [0, 3])
        self.assertEqual(da.parse_positions(""), [])
        self.assertEqual(da.parse_positions("none"), [])
        for bad in ["-1", "a", "0,,1"]:
            with self.assertRaises(ValueError):
                da.parse_positions(bad)

    def test_check_layer_refuses_the_last_block(self):
        da.check_layer(0, 30)
        da.check_layer(28, 30)
        with self.assertRaisesRegex(ValueError, "final norm"):
            da.check_layer(29, 30)
        for bad in [-1, 30]:
            with self.assertRaisesRegex(ValueError, "blocks 0..29"):
                da.check_layer(bad, 30)

    def test_common_prefix(self):
        self.assertEqual(da.common_prefix([1, 2, 3], [1, 2, 3, 4]), 3)
        self.assertEqual(da.common_prefix([1, 2, 3], [1, 2, 7, 4]), 2)
        self.assertEqual(da.common_prefix([], [1]), 0)

    def test_plan_batches_groups_similar_lengths_and_covers_all(self):
        lengths = [5, 1, 9, 3, 7, 2, 8]
        batches = da.plan_batches(lengths, 3)
        self.assertEqual(sorted(i for b in batches for i in b), list(range(len(lengths))))
        self.assertTrue(all(len(b) <= 3 for b in batches))
        self.assertEqual([[lengths[i] for i in b] for b in batches], [[1, 2, 3], [5, 7, 8], [9]])
        with self.assertRaises(ValueError):
            da.plan_batches(lengths, 0)

    def test_pad_right_positions_ignore_padding(self):
        ids, att, pos = da.pad_right([[7, 8, 9], [4]], pad_id=0)
        self.assertEqual(ids.tolist(), [[7, 8, 9], [4, 0, 0]])
        self.assertEqual(att.tolist(), [[1, 1, 1], [1, 0, 0]])
        # a document's positions are those it has alone: 0..len-1
        self.assertEqual(pos[0].tolist(), [0, 1, 2])
        self.assertEqual(pos[1, :1].tolist(), [0])
        with self.assertRaises(ValueError):
            da.pad_right([[1], []], 0)

    def test_dump_metadata_records_layer_count_and_sinks(self):
        meta = da.dump_metadata("m", 15, 30, [0, 1])
        self.assertEqual(meta, {"model": "m", "layer": "15", "hook": "blocks.15.hook_resid_post",
                                "hf_hidden_states_index": "16", "n_layers": "30", "sink_positions": "0,1"})
        self.assertEqual(da.dump_metadata("m", 3, 30, [])["sink_positions"], "")
        self.assertTrue(all(isinstance(v, str) for v in meta.values()))

    def test_read_prompts(self):
        with tempfile.TemporaryDirectory() as t:
            p = os.path.join(t, "e.jsonl")
            with open(p, "w") as f:
                f.write('{"prompt": "hi", "response": "there"}\n\n{"prompt": "x"}\n')
            self.assertEqual(da.read_prompts(p), [("hi", "there"), ("x", None)])
            with open(p, "w") as f:
                f.write('{"response": "no prompt"}\n')
            with self.assertRaises(ValueError):
                da.read_prompts(p)

    def test_assemble_and_engine_reads_it(self):
        rng = np.random.default_rng(0)
        d = 16
        chunks = [
            (rng.normal(size=(3, d)).astype(np.float32), [5, 6, 7], da.response_mask(1, 3)),
            (rng.normal(size=(2, d)).astype(np.float32), [8, 9], da.response_mask(0, 2)),
        ]
        arr = da.assemble(chunks)
        self.assertEqual(arr["activations"].shape, (5, d))
        self.assertEqual(arr["doc_ids"].tolist(), [0, 0, 0, 1, 1])
        self.assertEqual(arr["mask"].tolist(), [0, 1, 1, 1, 1])
        with self.assertRaises(ValueError):
            da.assemble([(np.zeros((2, d), np.float32), [1], [1, 1])])
        self.assertEqual(da.assemble(chunks, first_doc_id=7)["doc_ids"].tolist(), [7, 7, 7, 8, 8])
        with tempfile.TemporaryDirectory() as t:
            dump = os.path.join(t, "dump.safetensors")
            da.write_dump(dump, arr, {"layer": "5"})
            from safetensors.numpy import load_file

            back = load_file(dump)
            self.assertEqual(back["token_ids"].dtype, np.int64)
            np.testing.assert_array_equal(back["activations"], arr["activations"])
            # The engine reads what the writer wrote: top examples need token_ids/doc_ids.
            w = rng.normal(size=(32, d)).astype(np.float32)
            w /= np.linalg.norm(w, axis=1, keepdims=True)
            write_saelens(os.path.join(t, "sae"), w, 4)
            out = json.loads(run_sae("top-examples", "--json", "--backend", "cpu", "--sae", os.path.join(t, "sae"),
                                     "--acts", dump, "--latent", "0", "--top", "5", "--context", "4"))
            for ex in out["examples"]:
                self.assertIn(ex["token_id"], [5, 6, 7, 8, 9])
                # context never crosses the document boundary
                doc_tokens = [5, 6, 7] if ex["doc_id"] == 0 else [8, 9]
                for tid in ex["before"] + ex["after"]:
                    self.assertIn(tid, doc_tokens)


class GgufTest(unittest.TestCase):
    def test_sae_steer_gguf_reads_back_with_gguf_package(self):
        from gguf import GGUFReader, GGMLQuantizationType

        rng = np.random.default_rng(1)
        l, d, latent, strength, layer = 64, 48, 3, 2.5, 5
        w = rng.normal(size=(l, d)).astype(np.float32)
        with tempfile.TemporaryDirectory() as t:
            write_saelens(os.path.join(t, "sae"), w, 4)
            paths = {fmt: os.path.join(t, f"v.{fmt}") for fmt in ["gguf", "safetensors", "npy"]}
            for fmt, path in paths.items():
                run_sae("steer", "--backend", "cpu", "--sae", os.path.join(t, "sae"), "--latent", str(latent),
                        "--strength", str(strength), "--export-format", fmt, "--layer", str(layer), "--out", path,
                        "--model-hint", "qwen2")
            expected = strength * w[latent] / np.linalg.norm(w[latent])

            r = GGUFReader(paths["gguf"])
            def field_str(name):
                f = r.fields[name]
                return bytes(f.parts[f.data[0]]).decode()
            self.assertEqual(field_str("general.architecture"), "controlvector")
            self.assertEqual(field_str("controlvector.model_hint"), "qwen2")
            lc = r.fields["controlvector.layer_count"]
            self.assertEqual(int(lc.parts[lc.data[0]][0]), 1)
            self.assertEqual(len(r.tensors), 1)
            tensor = r.tensors[0]
            self.assertEqual(tensor.name, f"direction.{layer}")
            self.assertEqual(tensor.tensor_type, GGMLQuantizationType.F32)
            self.assertEqual([int(x) for x in tensor.shape], [d])
            self.assertEqual(tensor.data_offset % 32, 0)
            np.testing.assert_allclose(np.asarray(tensor.data), expected, rtol=1e-5, atol=1e-6)

            # steer_generate.load_vector agrees across the three formats
            for fmt, path in paths.items():
                got_layer, v = sg.load_vector(path, layer if fmt == "npy" else None)
                self.assertEqual(got_layer, layer)
                np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6)
                # a writable copy: torch.from_numpy warns on the readers' read-only maps
                self.assertTrue(v.flags.writeable, fmt)
            with self.assertRaises(ValueError):
                sg.load_vector(paths["npy"])
            with self.assertRaises(ValueError):
                sg.load_vector(paths["gguf"], layer + 1)


class FakeModel:
    """A torch-free stand-in for a causal LM: embeddings, one tanh block whose output
    the edit changes (where the real hook sits), an unembedding."""

    def __init__(self, vocab=50, d=16, seed=0):
        rng = np.random.default_rng(seed)
        self.emb = rng.normal(size=(vocab, d))
        self.w = rng.normal(size=(d, d)) / np.sqrt(d)
        self.unembed = rng.normal(size=(vocab, d))
        self.vocab = vocab
        self.calls = []

    def logits(self, texts, edit):
        ids = np.concatenate([[ord(c) % self.vocab for c in t] for t in texts])
        h = np.tanh(self.emb[ids] @ self.w)
        if edit is not None:
            h = edit.apply(h, edit.vector)
        self.calls.append(len(texts))
        return h @ self.unembed.T


class SweepTest(unittest.TestCase):
    def test_edits_add_and_project_out(self):
        v = np.array([3.0, 4.0], np.float32)
        h = np.array([[1.0, 1.0], [0.0, 2.0]])
        add = sg.Edit("add", v, 2.0)
        np.testing.assert_allclose(add.apply(h, add.vector), h + 2 * v)
        ab = sg.Edit("ablate", v)
        out = ab.apply(h, ab.vector)
        np.testing.assert_allclose(out @ (v / 5.0), [0.0, 0.0], atol=1e-6)  # nothing left along v
        np.testing.assert_allclose(out @ np.array([-4.0, 3.0]) / 5.0, h @ np.array([-4.0, 3.0]) / 5.0, atol=1e-6)
        with self.assertRaises(ValueError):
            sg.Edit("ablate", np.zeros(2))
        with self.assertRaises(ValueError):
            sg.Edit("scale", v)

    def test_kl(self):
        x = np.array([[0.0, 1.0, 2.0]])
        self.assertAlmostEqual(float(sg.kl_rows(x, x)[0]), 0.0, places=12)
        p, q = np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]])
        want = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
        self.assertAlmostEqual(float(sg.kl_rows(p, q)[0]), want, places=10)

    def test_sweep_grows_with_scale_and_reports_ablation_in_batches(self):
        m = FakeModel()
        texts = ["the cat sat", "on a mat", "quietly", "in the sun"]
        chunks = sg.batches(texts, 3)
        self.assertEqual([len(c) for c in chunks], [3, 1])
        v = np.random.default_rng(1).normal(size=16).astype(np.float32)
        r = sg.sweep(lambda e, i: m.logits(chunks[i], e), len(chunks), v, [0.0, 0.5, 1, 2, 4], ablate=True)
        self.assertEqual(r["n_positions"], sum(len(t) for t in texts))
        kinds = [row["kind"] for row in r["rows"]]
        self.assertEqual(kinds, ["add"] * 5 + ["ablate"])
        kl = [row["kl_mean"] for row in r["rows"][:5]]
        self.assertAlmostEqual(kl[0], 0.0, places=10)  # scale 0 changes nothing
        self.assertTrue(all(a < b for a, b in zip(kl, kl[1:])), kl)
        self.assertGreater(r["rows"][-1]["kl_mean"], 0.0)
        self.assertIsNone(r["rows"][-1]["scale"])
        self.assertAlmostEqual(r["rows"][2]["norm"], float(np.linalg.norm(v)), places=5)
        json.dumps(r)  # the CLI prints it as JSON
        self.assertEqual(max(m.calls), 3)  # never more than one batch at a time
        self.assertEqual(sg.parse_scales("0.5, 1,2"), [0.5, 1.0, 2.0])
        with self.assertRaises(ValueError):
            sg.parse_scales("a,b")
        with self.assertRaises(ValueError):
            sg.batches(texts, 0)

    # The test venv has no torch: the hook is skipped there, visibly, and run for real by
    # tools/real-model/test.sh with SAE_REQUIRE_TORCH=1 (a missing torch then fails).
    @unittest.skipUnless(
        importlib.util.find_spec("torch") or os.environ.get("SAE_REQUIRE_TORCH") == "1",
        "torch is not installed: the torch hook runs in tools/real-model/test.sh",
    )
    def test_torch_hook_adds_and_ablates(self):
        import torch

        block = torch.nn.Linear(4, 4)
        x = torch.randn(2, 3, 4)
        v = np.array([1.0, 0.0, 2.0, 0.0], np.float32)
        plain = block(x)
        h = sg.add_hook(block, v, 2.0)
        torch.testing.assert_close(block(x), plain + 2 * torch.from_numpy(v))
        h.remove()
        h = sg.add_hook(block, v, kind="ablate")
        u = torch.from_numpy(v / np.linalg.norm(v))
        torch.testing.assert_close(block(x) @ u, torch.zeros(2, 3), atol=1e-5, rtol=0)
        h.remove()
        torch.testing.assert_close(block(x), plain)


if __name__ == "__main__":
    unittest.main()

"""Tests of the real-model test's assertions (tools/real-model/check_audit.py) and of its
training-row selection, on made-up reports: each check must fail on the outcome it exists to
catch. No torch needed.

Run: python3 -m unittest discover -s tools/python/tests"""

import json
import os
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "real-model"))

import check_audit as ca  # noqa: E402
import train_sae  # noqa: E402


def row(latent, delta, z):
    return {"latent": latent, "delta": delta, "z_clustered": z}


def diff(up, down=(), mode="unpaired"):
    return {"pairing": {"mode": mode, "reason": "test"}, "latents": list(up), "bottom": list(down)}


class ReplicateTest(unittest.TestCase):
    A = diff([row(5, 2.0, 9.0), row(7, 1.5, 6.0), row(9, 1.0, 4.0)], [row(3, -1.0, -5.0)])

    def verdicts(self, b, up=3, down=1, bar=2.5):
        return [ok for *_, ok in ca.replicate(self.A, b, up, down, bar)]

    def test_consistent_half_passes(self):
        b = diff([row(7, 1.2, 5.0), row(5, 1.9, 8.0), row(9, 0.8, 3.1)], [row(3, -0.9, -4.0)])
        self.assertEqual(self.verdicts(b), [True, True, True, True])

    def test_sign_flip_low_z_and_missing_latent_fail(self):
        b = diff([row(5, 1.9, 8.0), row(9, 0.8, 2.0)], [row(7, -1.0, -6.0), row(3, -0.9, -4.0)])
        # 5 ok; 7 flipped sign; 9 below the bar; 3 ok
        self.assertEqual(self.verdicts(b), [True, False, False, True])
        b = diff([row(5, 1.9, 8.0), row(7, 1.2, 5.0)], [row(3, -0.9, -4.0)])
        self.assertEqual(self.verdicts(b), [True, True, False, True])

    def test_decrease_needs_negative_z(self):
        b = diff([row(5, 1.9, 8.0), row(7, 1.2, 5.0), row(9, 0.8, 3.1)], [row(3, -0.9, 4.0)])
        self.assertEqual(self.verdicts(b)[-1], False)

    def test_without_clustered_z_is_an_error(self):
        b = diff([{"latent": 5, "delta": 1.0, "z": 9.0}])
        with self.assertRaisesRegex(ValueError, "z_clustered"):
            ca.replicate(self.A, b, 1, 0, 2.5)

    def test_too_few_latents_is_an_error(self):
        with self.assertRaises(ValueError):
            ca.top_latents(self.A, 4, 0)

    def test_half_a_is_ranked_by_clustered_z(self):
        a = diff([row(1, 3.0, 2.0), row(2, 1.0, 9.0), row(3, 0.5, 4.0)], [row(4, -0.2, -6.0), row(5, -2.0, -1.0)])
        self.assertEqual(ca.top_latents(a, 2, 1), [(2, 1), (3, 1), (4, -1)])

    def test_pairing_mode_is_required(self):
        self.assertEqual(ca.pairing_mode(self.A, "a"), "unpaired")
        with self.assertRaisesRegex(ValueError, "pairing"):
            ca.pairing_mode({"latents": []}, "a")

    def test_command_fails_on_paired_reports(self):
        with tempfile.TemporaryDirectory() as t:
            a, b = os.path.join(t, "a.json"), os.path.join(t, "b.json")
            with open(a, "w") as f:
                json.dump(diff(self.A["latents"], mode="paired"), f)
            with open(b, "w") as f:
                json.dump(self.A, f)
            with self.assertRaises(SystemExit) as e:
                ca.main(["replicate", "--a", a, "--b", b, "--up", "1"])
            self.assertEqual(e.exception.code, 1)
            with open(a, "w") as f:
                json.dump(self.A, f)
            with self.assertRaises(SystemExit) as e:
                ca.main(["replicate", "--a", a, "--b", b, "--up", "1"])
            self.assertEqual(e.exception.code, 0)


class SameReportsTest(unittest.TestCase):
    def test_same_and_different(self):
        a = diff([row(1, 2.0, 5.0), row(2, 1.0, 4.0)], [row(3, -1.0, -2.0)])
        self.assertEqual(ca.same_reports(a, json.loads(json.dumps(a))), [])
        b = json.loads(json.dumps(a))
        b["latents"][1]["z_clustered"] = 4.001
        self.assertEqual(len(ca.same_reports(a, b)), 1)
        b = diff([row(2, 1.0, 4.0), row(1, 2.0, 5.0)], [row(3, -1.0, -2.0)])
        self.assertIn("latents", ca.same_reports(a, b)[0])
        b = diff(a["latents"], a["bottom"], mode="paired")
        self.assertIn("pairing", ca.same_reports(a, b)[0])


class ExamplesSteerGenerationTest(unittest.TestCase):
    def test_persona_share(self):
        persona = {"examples": [{"activation": a} for a in [9, 8, 7]]}
        neutral = {"examples": [{"activation": a} for a in [8.5, 1]]}
        self.assertAlmostEqual(ca.persona_share(persona, neutral, 3), 2 / 3)
        self.assertEqual(ca.persona_share(persona, {"examples": []}, 3), 1.0)
        self.assertEqual(ca.max_activation({"examples": []}), 0.0)

    def test_steer_moves(self):
        report = {"dry_run": {"targets": [{"latent": 4, "delta": 10.0, "control_delta": -0.5}],
                              "moved": [{"latent": 4, "delta": 10.0}, {"latent": 1, "delta": -3.0},
                                        {"latent": 2, "delta": 2.0}]}}
        self.assertEqual(ca.steer_moves(report), (10.0, -0.5, 3.0))

    def test_sweep_verdicts(self):
        def sweep(moves, specific=True, ablate=-0.1):
            rows = [{"kind": "add", "strength": s, "target_delta": m, "specific": specific}
                    for s, m in zip([0.25, 0.5, 1.0], moves)]
            rows.append({"kind": "ablate", "strength": None, "target_delta": ablate, "specific": False})
            return {"sweep": {"rows": rows}}
        ok = [v for _, v in ca.sweep_verdicts(sweep([1, 2, 4]), 0.5)]
        self.assertEqual(ok, [True, True, True])
        self.assertEqual([v for _, v in ca.sweep_verdicts(sweep([1, 3, 2]), 0.5)], [False, True, True])
        self.assertEqual([v for _, v in ca.sweep_verdicts(sweep([1, 2, 4], specific=False), 0.5)], [True, False, True])
        self.assertEqual([v for _, v in ca.sweep_verdicts(sweep([1, 2, 4], ablate=0.2), 0.5)], [True, True, False])
        self.assertEqual([v for _, v in ca.sweep_verdicts(sweep([1, 2, 4], ablate=0.0), 0.5)], [True, True, True])
        self.assertFalse(ca.sweep_verdicts(sweep([1, 2, 4]), 2.0)[1][1])

    def test_kl_verdicts(self):
        def kl(values):
            return {"rows": [{"kind": "add", "scale": s, "kl_mean": k} for s, k in zip([0.5, 1, 2], values)]
                    + [{"kind": "ablate", "scale": None, "kl_mean": 9.0}]}
        self.assertTrue(ca.kl_verdicts(kl([0.1, 0.5, 2.0]))[0][1])
        self.assertFalse(ca.kl_verdicts(kl([0.1, 0.05, 2.0]))[0][1])
        self.assertFalse(ca.kl_verdicts(kl([0.0, 0.5, 2.0]))[0][1])

    def test_generations_both_output_styles(self):
        old = "--- unsteered ---\nplain text\n--- steered (layer 15, norm 86.873) ---\nArr matey\n"
        new = ("--- unsteered: 'q' ---\nplain text\n--- steered (layer 15, norm 86.873): 'q' ---\n"
               "Arr matey\n")
        for text in [old, new]:
            g = ca.generations(text)
            self.assertEqual((g["unsteered"], g["steered"], g["layer"]), ("plain text", "Arr matey", 15))
        with self.assertRaises(ValueError):
            ca.generations("--- steered (layer 15, norm 1) ---\nx")


class TrainingRowsTest(unittest.TestCase):
    def test_sink_rows_left_out_per_document(self):
        doc_ids = np.array([0, 0, 0, 1, 1, 7, 7, 7])
        self.assertEqual(train_sae.training_rows(doc_ids, [0]).tolist(),
                         [False, True, True, False, True, False, True, True])
        self.assertEqual(train_sae.training_rows(doc_ids, []).tolist(), [True] * 8)
        self.assertEqual(train_sae.training_rows(doc_ids, [0, 2]).tolist(),
                         [False, True, False, False, True, False, True, False])


if __name__ == "__main__":
    unittest.main()

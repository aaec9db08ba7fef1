"""tools/gpu-check.sh and tools/python/gpu_check_report.py without a GPU.

The report's parts on committed and made-up inputs (data/nvidia-smi-sample.csv is written in
the CSV format nvidia-smi documents, not captured on a device), the script's argument
handling, and its whole `device` mode on this machine with stand-ins for every program it
runs (sae-bench, the integration-test binary, torch_baseline.py, compute-sanitizer,
nvidia-smi, ffi/tests/gpu_device_ptr.sh): the order and arguments of the steps, the
background sampling, the time budget, the exit status, and the archive. `prepare` (release
builds, a PyPI download) and the real programs on a GPU are not exercised here.
Standard library only (plus bash, tar and xz)."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import unittest
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SCRIPT = ROOT / "tools" / "gpu-check.sh"
sys.path.insert(0, str(ROOT / "tools" / "python"))

import gpu_check_report as report  # noqa: E402

SAMPLE = (HERE / "data" / "nvidia-smi-sample.csv").read_text()


class SmiSummaryTest(unittest.TestCase):
    def test_min_median_max_per_quantity(self):
        _, s = report.summarize_smi(SAMPLE)
        self.assertEqual(s["SM clock (MHz)"], {"samples": 10, "min": 1410.0, "median": 1980.0, "max": 1980.0})
        # One [N/A] power reading is dropped, not read as zero.
        self.assertEqual(s["power (W)"], {"samples": 9, "min": 120.5, "median": 655.0, "max": 700.1})
        self.assertEqual(s["temperature (C)"], {"samples": 10, "min": 38.0, "median": 53.5, "max": 58.0})

    def test_clock_event_reasons_are_decoded_per_bit(self):
        lines, s = report.summarize_smi(SAMPLE)
        self.assertEqual(s["clock_event_reasons"], {"gpu_idle": 0.1, "sw_power_cap": 0.5, "sw_thermal_slowdown": 0.1})
        self.assertIn("sw_power_cap 50%", lines[-1])

    def test_no_samples_is_an_error(self):
        header = SAMPLE.splitlines()[0]
        with self.assertRaises(ValueError):
            report.summarize_smi(header + "\n")
        with self.assertRaises(ValueError):
            report.summarize_smi("")


def bench(**encode_ms):
    return {"shapes": [{"shape": {"name": k.replace("_", "-")}, "encode_ms": v, "gemm_only_ms": v - 10,
                        "topk_overhead_ms": 10.0} for k, v in encode_ms.items()]}


class SpreadTest(unittest.TestCase):
    def test_rounds_and_spread_per_shape(self):
        _, s = report.summarize_spread([bench(paper=100.0, paper_cublas=110.0), bench(paper=104.0, paper_cublas=110.0)])
        self.assertEqual(s["paper"]["encode_ms"]["rounds"], [100.0, 104.0])
        self.assertAlmostEqual(s["paper"]["encode_ms"]["spread"], 0.04)
        self.assertEqual(s["paper-cublas"]["encode_ms"]["spread"], 0.0)

    def test_a_failed_shape_shows_as_failed(self):
        failed = {"shapes": [{"shape": "paper", "error": "out of memory"}]}
        lines, s = report.summarize_spread([bench(paper=100.0), failed])
        self.assertEqual(s["paper"]["encode_ms"], {"rounds": [100.0, None], "spread": None})
        self.assertTrue(any("100.00 / failed" in line for line in lines))


def sh(path, body):
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


class DeviceModeTest(unittest.TestCase):
    """`gpu-check.sh device` with every program replaced by a stand-in that logs its call."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        t = Path(self.tmp.name)
        self.calls = t / "calls.log"
        self.gpu = t / "repo" / ".gpu"
        self.gpu.mkdir(parents=True)
        shutil.copy(SCRIPT, self.gpu / "gpu-check.sh")
        shutil.copy(ROOT / "tools" / "python" / "gpu_check_report.py", self.gpu)
        (self.gpu / "COMMIT").write_text("0123abc\n")
        bins = t / "bins"
        bins.mkdir()
        # sae-bench: writes the --json file; `run` reports encode times that differ per round.
        sh(bins / "sae-bench", f"""\
            echo "sae-bench $* SAE_FORCE_NVRTC=${{SAE_FORCE_NVRTC:-}}" >> {self.calls}
            json=""; prev=""
            for a in "$@"; do [ "$prev" = --json ] && json="$a"; prev="$a"; done
            n=$(grep -c "sae-bench run" {self.calls})
            case "$1" in
            run) printf '{{"shapes": [{{"shape": {{"name": "paper"}}, "encode_ms": %s, "gemm_only_ms": 99.0, "topk_overhead_ms": 1.5}}]}}' "10$n.5" > "$json" ;;
            *) echo '{{}}' > "$json" ;;
            esac
            [ "$1" != "${{STUB_FAIL:-}}" ]
            """)
        sh(bins / "integration", f"""\
            echo "integration $* SAE_REQUIRE_GPU=${{SAE_REQUIRE_GPU:-}}" >> {self.calls}
            [ "${{SAE_REQUIRE_GPU:-}}" = 1 ] && echo "test result: ok. 4 passed; 0 failed"
            """)
        (bins / "libsae_engine_ffi.so").write_bytes(b"\x7fELF stand-in")
        subprocess.run(["tar", "-C", str(bins), "-cJf", str(self.gpu / "bins.tar.xz"), "."], check=True)
        (self.gpu / "torch_baseline.py").write_text(textwrap.dedent(f"""\
            import json, sys
            open({str(self.calls)!r}, "a").write("torch " + " ".join(sys.argv[1:]) + "\\n")
            json.dump({{"shapes": []}}, open(sys.argv[sys.argv.index("--json") + 1], "w"))
            """))
        # The sanitizer wheel: compute-sanitizer logs its tool and runs the program after the options.
        with zipfile.ZipFile(self.gpu / "nvidia_cuda_sanitizer_api-13.0.85-py3-none-manylinux_2_25_x86_64.whl", "w") as z:
            z.writestr("nvidia/cu13/bin/compute-sanitizer", textwrap.dedent(f"""\
                #!/usr/bin/env bash
                echo "compute-sanitizer $1 $2 $3 $4" >> {self.calls}
                shift 4
                exec "$@"
                """))
        ffi = t / "repo" / "ffi" / "tests"
        ffi.mkdir(parents=True)
        sh(ffi / "gpu_device_ptr.sh", f"""\
            echo "gpu_device_ptr $1" >> {self.calls}
            echo '{{"check": "ok"}}' > "$OUT/gpu_device_ptr.jsonl"
            """)
        path = t / "path"
        path.mkdir()
        sh(path / "nvidia-smi", """\
            case " $* " in
            *" -lms "*)
                echo "timestamp, clocks.current.sm [MHz], power.draw [W], temperature.gpu, clocks_event_reasons.active"
                trap 'exit 0' TERM
                while true; do echo "2026/11/28 10:15:02.101, 1980 MHz, 650.00 W, 50, 0x0000000000000004"; sleep 0.05; done ;;
            *) echo "name, driver_version"; echo "Stand-in H200, 580.00" ;;
            esac
            """)
        self.out = t / "out"
        self.tmpdir = t / "tmp"
        self.tmpdir.mkdir()
        self.env = dict(os.environ, PATH=f"{path}:{os.environ['PATH']}", OUT=str(self.out),
                        TMPDIR=str(self.tmpdir), BUDGET_S="120", REPS="1")

    def tearDown(self):
        self.tmp.cleanup()

    def device(self, **env):
        return subprocess.run(["bash", str(self.gpu / "gpu-check.sh"), "device"], env=dict(self.env, **env),
                              cwd=self.gpu.parent, capture_output=True, text=True, timeout=120)

    def archive(self):
        with tarfile.open(self.out / "gpu-check.tar.gz") as tar:
            return {m.name: m for m in tar.getmembers()}, tar.extractfile("run/steps.tsv").read().decode()

    def test_every_step_runs_in_order_and_lands_in_one_archive(self):
        p = self.device()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(sorted(os.listdir(self.out)), ["gpu-check.tar.gz", "summary.txt"])
        members, steps = self.archive()
        for f in ["log.txt", "steps.tsv", "smi.csv", "info.json", "bench-1.json", "torch.json", "bench-2.json",
                  "verify.json", "verify-memcheck.json", "verify-racecheck.json", "info-nvrtc.json",
                  "verify-nvrtc.json", "gpu_device_ptr.jsonl", "summary.txt"]:
            self.assertIn(f"run/{f}", members)
        self.assertEqual(
            [line.split("\t")[0] for line in steps.splitlines()],
            ["info", "bench-1", "torch", "bench-2", "gpu-tests", "verify", "memcheck", "racecheck",
             "nvrtc-info", "nvrtc-verify", "ffi-device-ptr"],
        )
        calls = self.calls.read_text().splitlines()
        shapes = "run --shapes paper,paper-cublas,paper-overlap --reps 1 --no-stream"
        self.assertTrue(calls[1].startswith(f"sae-bench {shapes} --json"), calls)
        self.assertTrue(calls[2].startswith("torch --shapes paper --reps 1 --json"), calls)
        self.assertTrue(calls[3].startswith(f"sae-bench {shapes} --json"), calls)
        self.assertEqual(calls[4], "integration cuda_ --test-threads=1 SAE_REQUIRE_GPU=1")
        self.assertEqual(calls[6], "compute-sanitizer --tool memcheck --error-exitcode 1")
        self.assertTrue(calls[7].startswith("sae-bench verify --quick"), calls)
        self.assertEqual(calls[8], "compute-sanitizer --tool racecheck --error-exitcode 1")
        self.assertTrue(calls[10].startswith("sae-bench --force-nvrtc info") and calls[11].startswith("sae-bench --force-nvrtc verify --quick"), calls)
        summary = (self.out / "summary.txt").read_text()
        self.assertIn("== steps (all passed)", summary)
        self.assertRegex(summary, r"SM clock \(MHz\)\s+\d+\s+1980.0\s+1980.0\s+1980.0")
        self.assertIn("sw_power_cap 100%", summary)
        self.assertRegex(summary, r"paper\s+encode_ms\s+101.50 / 102.50\s+1.0%")
        # Nothing left in the temporary directory.
        self.assertEqual(os.listdir(self.tmpdir), [])

    def test_a_failing_step_fails_the_check_and_the_rest_still_runs(self):
        p = self.device(STUB_FAIL="verify")
        self.assertEqual(p.returncode, 1)
        summary = (self.out / "summary.txt").read_text()
        self.assertIn("NOT all passed", summary)
        self.assertRegex(summary, r"verify\s+FAILED 1")
        self.assertRegex(summary, r"ffi-device-ptr\s+ok")

    def test_steps_past_the_budget_are_skipped_and_counted(self):
        p = self.device(BUDGET_S="21")
        self.assertEqual(p.returncode, 1)
        _, steps = self.archive()
        self.assertIn("ffi-device-ptr\tskipped\t0", steps)
        self.assertRegex((self.out / "summary.txt").read_text(), r"info\s+SKIPPED")

    def test_without_a_trace_or_a_sanitizer_the_check_fails(self):
        os.remove(self.gpu / "nvidia_cuda_sanitizer_api-13.0.85-py3-none-manylinux_2_25_x86_64.whl")
        (Path(self.tmp.name) / "path" / "nvidia-smi").unlink()
        p = self.device()
        self.assertEqual(p.returncode, 1)
        _, steps = self.archive()
        self.assertIn("smi-trace\tno-samples\t0", steps)
        self.assertIn("sanitizer\tmissing\t0", steps)
        self.assertIn("clocks and power: no trace", (self.out / "summary.txt").read_text())


class ArgumentsTest(unittest.TestCase):
    def test_the_script_parses(self):
        subprocess.run(["bash", "-n", str(SCRIPT)], check=True)

    def test_no_or_unknown_mode_prints_usage_and_exits_2(self):
        for args in ([], ["bogus"]):
            p = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
            self.assertEqual(p.returncode, 2)
            self.assertIn("tools/gpu-check.sh prepare [DEST]", p.stderr)

    def test_device_without_prepared_files_or_with_a_bad_budget_exits_2(self):
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, OUT=os.path.join(d, "out"))
            p = subprocess.run(["bash", str(SCRIPT), "device", d], env=env, capture_output=True, text=True)
            self.assertEqual(p.returncode, 2)
            self.assertIn("bins.tar.xz not found (run prepare first)", p.stderr)
            p = subprocess.run(["bash", str(SCRIPT), "device", d], env=dict(env, BUDGET_S="8m"),
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 2)
            self.assertIn("whole numbers", p.stderr)
            self.assertFalse(os.path.exists(os.path.join(d, "out")))


if __name__ == "__main__":
    unittest.main()

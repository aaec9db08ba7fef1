//! Output plumbing of `sae` and `sae-bench`: provenance in every output, a stdout closed
//! early, `--json` errors, the exit-status table, and progress lines in a log.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{arg, json_of, run_sae, sae_json, write_dump, write_sae};
use sae_engine::cpu::reference::SaeBuilder;
use sae_engine::error::exit;
use sae_engine::io::mapped::MappedSafetensors;
use sae_engine::provenance::Provenance;
use sae_engine::Activation;
use serde_json::Value;
use sha2::Digest;

const D: usize = 8;

/// A SAELens ReLU SAE with `l` latents: latent j reads input j % D, with a small
/// per-latent bias so latents rank apart in a diff.
fn sae(dir: &Path, l: usize) -> PathBuf {
    let mut enc = vec![0f32; l * D];
    let mut dec = vec![0f32; l * D];
    for j in 0..l {
        enc[j * D + j % D] = 1.0 + (j % 7) as f32 * 0.1;
        dec[j * D + j % D] = 1.0;
    }
    let b_enc: Vec<f32> = (0..l).map(|j| -((j % 5) as f32) * 0.05).collect();
    let mut sae = SaeBuilder::new(l, D, enc, dec)
        .b_enc(b_enc)
        .activation(Activation::Relu)
        .subtract_b_dec(false)
        .build()
        .unwrap();
    sae.meta.hook_name = Some("blocks.2.hook_resid_post".into());
    write_sae(dir, &sae)
}

/// A one-file dump of `n` rows, values depending on `seed`.
fn dump(path: &Path, n: usize, seed: u32) -> PathBuf {
    let acts: Vec<f32> = (0..n * D)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 97) as f32 / 48.0 - 0.5)
        .collect();
    write_dump(path, &acts, D, None, &[])
}

/// `--json CMD --backend cpu --sae SAE REST...`
fn on_cpu<'a>(cmd: &'a str, sae: &'a Path, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--json", cmd, "--backend", "cpu", "--sae", arg(sae)];
    a.extend_from_slice(rest);
    a
}

fn sha256_of(p: &Path) -> String {
    format!("{:x}", sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// The input of `role` in a provenance object.
fn input<'a>(prov: &'a Value, role: &str) -> &'a Value {
    prov["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == role)
        .unwrap_or_else(|| panic!("no input `{role}` in {prov}"))
}

fn file_provenance(p: &Path) -> Value {
    let st = MappedSafetensors::open(p).unwrap();
    let prov = Provenance::from_metadata(st.metadata())
        .unwrap_or_else(|| panic!("{}: no provenance metadata", p.display()))
        .unwrap();
    prov.to_json()
}

#[test]
fn every_output_records_inputs_options_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let sae = sae(&dir.path().join("sae"), 32);
    let base = dump(&dir.path().join("base.safetensors"), 64, 1);
    let tuned = dump(&dir.path().join("tuned.safetensors"), 64, 2);
    let fp = sae_json(&["--json", "inspect", arg(&sae)])["fingerprint"].clone();

    // encode: stdout and the codes file carry the same record.
    let codes = dir.path().join("codes.safetensors");
    let j = sae_json(&on_cpu(
        "encode",
        &sae,
        &[
            "--batch-size",
            "16",
            "--acts",
            arg(&base),
            "--out",
            arg(&codes),
        ],
    ));
    let p = &j["provenance"];
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(p["command"], "sae encode");
    assert_eq!(p["options"]["batch_size"], 16);
    assert_eq!(p["options"]["backend"], "cpu");
    assert_eq!(p["options"]["engine"], j["backend"]);
    assert_eq!(p["options"]["precision"], "exact");
    let s = input(p, "sae");
    assert_eq!(
        (&s["identity"], &s["fingerprint"]),
        (&"fingerprint".into(), &fp)
    );
    let a = input(p, "acts");
    assert_eq!(a["identity"], "sha256");
    assert_eq!(a["sha256"], sha256_of(&base));
    assert_eq!(a["bytes"], std::fs::metadata(&base).unwrap().len());
    assert_eq!(&file_provenance(&codes), p);

    // decode reads the codes back (the extra metadata entry does not disturb the reader).
    let j = sae_json(&on_cpu(
        "decode",
        &sae,
        &[
            "--codes",
            arg(&codes),
            "--out",
            arg(&dir.path().join("r.npy")),
        ],
    ));
    assert_eq!(
        input(&j["provenance"], "codes")["sha256"],
        sha256_of(&codes)
    );

    // stats, then merge: both files carry their records and still read as statistics.
    let st = dir.path().join("s.safetensors");
    let j = sae_json(&on_cpu(
        "stats",
        &sae,
        &["--acts", arg(&tuned), "--out", arg(&st), "--no-mask"],
    ));
    assert_eq!(j["provenance"]["options"]["mask"], false);
    assert_eq!(file_provenance(&st), j["provenance"]);
    let merged = dir.path().join("m.safetensors");
    let j = sae_json(&["--json", "stats", "merge", arg(&st), "--out", arg(&merged)]);
    assert_eq!(input(&j["provenance"], "stats")["sha256"], sha256_of(&st));
    assert_eq!(file_provenance(&merged)["command"], "sae stats merge");

    // diff: stdout, diff.json and report.md.
    let out = dir.path().join("diff");
    let j = sae_json(&on_cpu(
        "diff",
        &sae,
        &[
            "--base",
            arg(&base),
            "--tuned",
            arg(&tuned),
            arg(&merged),
            "--order",
            "z-score",
            "--out-dir",
            arg(&out),
        ],
    ));
    let p = &j["provenance"];
    assert_eq!(p["options"]["order"], "z-score");
    assert_eq!(p["options"]["mask"], true); // the mask is honoured by default
    assert_eq!(input(p, "base")["sha256"], sha256_of(&base));
    let tuned_inputs: Vec<&Value> = p["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["role"] == "tuned")
        .collect();
    assert_eq!(tuned_inputs.len(), 2);
    let file: Value =
        serde_json::from_slice(&std::fs::read(out.join("diff.json")).unwrap()).unwrap();
    assert_eq!(&file["provenance"], p);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Provenance"), "{md}");
    assert!(md.contains(&sha256_of(&base)), "{md}");
    assert!(md.contains("`order` = `\"z-score\"`"), "{md}");

    // detect and monitor files too.
    let out = dir.path().join("detect");
    sae_json(&on_cpu(
        "detect",
        &sae,
        &[
            "--base",
            arg(&base),
            "--positive",
            arg(&tuned),
            "--negative",
            arg(&base),
            "--out-dir",
            arg(&out),
        ],
    ));
    let file: Value =
        serde_json::from_slice(&std::fs::read(out.join("detect.json")).unwrap()).unwrap();
    assert_eq!(
        input(&file["provenance"], "positive")["sha256"],
        sha256_of(&tuned)
    );
    let out = dir.path().join("monitor");
    sae_json(&on_cpu(
        "monitor",
        &sae,
        &[
            "--base",
            arg(&base),
            "--checkpoints",
            arg(&tuned),
            "--latents",
            "0",
            "1",
            "--out-dir",
            arg(&out),
        ],
    ));
    let file: Value =
        serde_json::from_slice(&std::fs::read(out.join("monitor.json")).unwrap()).unwrap();
    assert_eq!(
        file["provenance"]["options"]["latents"],
        serde_json::json!([0, 1])
    );
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("## Provenance"));
}

/// Runs `sh -c "set -o pipefail; sae ARGS | head -1"`: status, stdout, stderr.
fn piped_to_head(args: &[&str]) -> (Option<i32>, String, String) {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "set -o pipefail; '{}' {} | head -1",
        env!("CARGO_BIN_EXE_sae"),
        quoted.join(" ")
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_stdout_closed_early_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // 4096 latents listed both ways: far more than a pipe buffer holds (64 KiB), so the
    // command is still writing when head exits.
    let sae = sae(&dir.path().join("sae"), 4096);
    let base = dump(&dir.path().join("base.safetensors"), 32, 1);
    let tuned = dump(&dir.path().join("tuned.safetensors"), 32, 2);
    let out = dir.path().join("diff");
    let args = [
        "diff",
        "--backend",
        "cpu",
        "--sae",
        arg(&sae),
        "--base",
        arg(&base),
        "--tuned",
        arg(&tuned),
        "--top",
        "4096",
        "--bottom",
        "4096",
        "--out-dir",
        arg(&out),
    ];
    for json in [false, true] {
        let mut a: Vec<&str> = args.to_vec();
        if json {
            a.insert(0, "--json");
        }
        let (code, stdout, stderr) = piped_to_head(&a);
        assert_eq!(code, Some(0), "json {json}: stderr {stderr}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{stderr}"
        );
    }
    // The files were complete before the output was cut.
    let file: Value =
        serde_json::from_slice(&std::fs::read(out.join("diff.json")).unwrap()).unwrap();
    assert_eq!(file["latents"].as_array().unwrap().len(), 4096);
}

#[test]
fn json_errors_are_objects_on_stdout_with_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let sae = sae(&dir.path().join("sae"), 16);
    let missing = dir.path().join("nope.safetensors");
    let out = dir.path().join("c.safetensors");
    let check = |args: &[&str], env: Option<(&str, &str)>, code: u8, kind: &str| -> Value {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sae"));
        c.args(args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code as i32), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "the error is on stderr too");
        let j = json_of(&o);
        assert_eq!(j["error"]["code"], code, "{j}");
        assert_eq!(j["error"]["kind"], kind, "{j}");
        j
    };
    // 1: an error, naming the file.
    let encode_missing = [
        "encode",
        "--backend",
        "cpu",
        "--sae",
        arg(&sae),
        "--acts",
        arg(&missing),
        "--out",
        arg(&out),
    ];
    let j = check(
        &[&["--json"][..], &encode_missing].concat(),
        None,
        exit::ERROR,
        "io",
    );
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope.safetensors"),
        "{j}"
    );
    // 2: usage, with --json anywhere on the line.
    let j = check(&["encode", "--json", "--bogus"], None, exit::USAGE, "usage");
    assert!(
        j["error"]["message"].as_str().unwrap().contains("--bogus"),
        "{j}"
    );
    // 3: the CUDA backend asked for where no GPU is usable.
    check(
        &[
            "--json",
            "encode",
            "--backend",
            "cuda",
            "--sae",
            arg(&sae),
            "--acts",
            arg(&dump(&dir.path().join("a.safetensors"), 4, 0)),
            "--out",
            arg(&out),
        ],
        Some(("CUDA_VISIBLE_DEVICES", "")),
        exit::NO_GPU,
        "backend_unavailable",
    );
    // A partly failed `stats --devices`: one object, the per-shard report as its detail.
    let j = check(
        &[
            "--json",
            "stats",
            "--sae",
            arg(&sae),
            "--acts",
            arg(&dump(&dir.path().join("b.safetensors"), 4, 0)),
            "--out",
            arg(&out),
            "--devices",
            "0,1",
        ],
        Some(("CUDA_VISIBLE_DEVICES", "")),
        exit::ERROR,
        "invalid_argument",
    );
    let detail = &j["error"]["detail"];
    assert_eq!(detail["units"], 1, "{j}");
    assert_eq!(
        detail["provenance"]["options"]["devices"],
        serde_json::json!(["cuda:0", "cuda:1"])
    );
    // Without --json, stdout stays empty on failure.
    let o = run_sae(&encode_missing);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    // --help is not an error.
    assert_eq!(run_sae(&["encode", "--help"]).status.code(), Some(0));
}

#[test]
fn sae_bench_without_a_gpu_exits_3_and_still_writes_its_json() {
    let dir = tempfile::tempdir().unwrap();
    let bench = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sae-bench"))
            .args(args)
            .env("CUDA_VISIBLE_DEVICES", "")
            .output()
            .unwrap()
    };
    for cmd in ["verify", "info"] {
        let f = dir.path().join(format!("{cmd}.json"));
        let o = bench(&[cmd, "--json", arg(&f)]);
        assert_eq!(o.status.code(), Some(exit::NO_GPU as i32), "{o:?}");
        let j: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(j["error"]["code"], exit::NO_GPU, "{j}");
        assert_eq!(j["error"]["kind"], "backend_unavailable", "{j}");
        assert_eq!(j["provenance"]["command"], format!("sae-bench {cmd}"));
        assert_eq!(j["provenance"]["version"], env!("CARGO_PKG_VERSION"));
    }
    assert_eq!(
        bench(&["verify", "--bogus"]).status.code(),
        Some(exit::USAGE as i32)
    );
}

#[test]
fn readme_exit_status_table_matches_the_codes() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("### Exit status")
        .nth(1)
        .expect("README has an `### Exit status` section");
    let rows: Vec<(u8, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].parse().unwrap(), cells[2].to_string())
        })
        .collect();
    let want: Vec<(u8, String)> = exit::ALL.iter().map(|(c, n)| (*c, n.to_string())).collect();
    assert_eq!(rows, want);
}

/// Runs `sae ARGS` with stderr a pipe (as in a batch job's log); returns its stderr.
fn stderr_in_a_log(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{err}");
    err
}

#[test]
fn without_a_terminal_long_work_logs_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let sae = sae(&dir.path().join("sae"), 64);
    let n = 100_000;
    let acts = dump(&dir.path().join("big.safetensors"), n, 3);
    let out = dir.path().join("c.safetensors");
    let run = |extra: &[&str]| {
        let mut a = extra.to_vec();
        a.extend([
            "encode",
            "--backend",
            "cpu",
            "--batch-size",
            "64",
            "--sae",
            arg(&sae),
            "--acts",
            arg(&acts),
            "--out",
            arg(&out),
        ]);
        stderr_in_a_log(&a)
    };
    let err = run(&["--progress-interval", "0.01"]);
    let total = format!("/{n} rows (");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("sae: encode: ") && l.contains(&total))
        .collect();
    assert!(!lines.is_empty(), "no progress line in: {err}");
    let full = lines
        .iter()
        .find(|l| {
            l.contains(" rows/s, elapsed ") && l.contains(", ETA ") && !l.ends_with("unknown")
        })
        .unwrap_or_else(|| panic!("no line with rate and ETA in: {err}"));
    let done: u64 = full["sae: encode: ".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(done > 0 && done <= n as u64, "{full}");
    // --quiet, and an interval of 0, log nothing.
    for quiet in [
        &["--quiet", "--progress-interval", "0.01"][..],
        &["--progress-interval", "0"],
    ] {
        let err = run(quiet);
        assert!(!err.contains("sae: encode: "), "{quiet:?}: {err}");
    }
    // diff measuring a dump logs the same way, under the dump's name.
    let err = stderr_in_a_log(&[
        "--progress-interval",
        "0.01",
        "diff",
        "--backend",
        "cpu",
        "--sae",
        arg(&sae),
        "--base",
        arg(&acts),
        "--tuned",
        arg(&acts),
    ]);
    assert!(
        err.lines()
            .any(|l| l.starts_with("sae: big: ") && l.contains(" rows/s, ")),
        "{err}"
    );
}

#[test]
fn a_path_that_is_not_utf8_is_recorded_lossily() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let sae = sae(&dir.path().join("sae"), 16);
    let acts = dump(&dir.path().join("a.safetensors"), 8, 0);
    let out = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"codes-\xff.safetensors"));
    let o = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(on_cpu("encode", &sae, &["--acts", arg(&acts)]))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let argv = json_of(&o)["provenance"]["argv"].to_string();
    assert!(argv.contains("codes-\u{fffd}.safetensors"), "{argv}");
    assert!(file_provenance(&out)["argv"]
        .to_string()
        .contains('\u{fffd}'));
}

/// The engine knobs are flags that reach the engine and the provenance; the environment
/// variables that used to set them (SAE_CUDA_PRECISION, SAE_CPU_GEMM) change nothing.
#[test]
fn engine_knobs_are_flags_not_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let sae = sae(&dir.path().join("sae"), 16);
    let acts = dump(&dir.path().join("acts.safetensors"), 8, 3);
    let encode = |extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let mut args = on_cpu("encode", &sae, &["--acts", arg(&acts), "--out"]);
        args.push(arg(&out));
        args.extend_from_slice(extra);
        let mut c = Command::new(env!("CARGO_BIN_EXE_sae"));
        c.args(&args)
            .env("SAE_CUDA_PRECISION", "fast")
            .env("SAE_CPU_GEMM", "openblas");
        c.output().unwrap()
    };
    let o = encode(
        &["--cpu-gemm", "crate", "--cuda-gemm", "lt", "--cuda-overlap"],
        "a.safetensors",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let opts = &json_of(&o)["provenance"]["options"];
    assert_eq!(opts["precision"], "exact", "{opts}");
    assert_eq!(opts["cpu_gemm"], "crate", "{opts}");
    assert_eq!(opts["cuda_gemm"], "lt", "{opts}");
    assert_eq!(opts["cuda_overlap"], true, "{opts}");
    // Defaults are not recorded.
    let o = encode(&[], "b.safetensors");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let opts = &json_of(&o)["provenance"]["options"];
    assert!(opts.get("cpu_gemm").is_none(), "{opts}");
    // A value the parser does not know is a usage error.
    let o = encode(&["--cuda-gemm", "fastest"], "c.safetensors");
    assert_eq!(o.status.code(), Some(exit::USAGE as i32));
    #[cfg(not(feature = "openblas"))]
    {
        let o = encode(&["--cpu-gemm", "openblas"], "d.safetensors");
        assert_eq!(o.status.code(), Some(exit::ERROR as i32));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("`openblas` cargo feature"), "{err}");
    }
}

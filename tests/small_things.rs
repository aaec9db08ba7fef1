//! The small things users see (issue 11, item 8): counted nouns, one spelling of the
//! ranking orders, ranks from 1, `steer --format` meaning the SAE format, engine flags
//! only on the commands that run an SAE, negative numbers answered with their range,
//! symlink loops named, and the chance caveat of a detection with few models.

use std::path::PathBuf;

use crate::common::{arg, run_sae, sae_exits, sae_json, sae_ok};
use sae_engine::workflow::demo::{self, DemoOptions};
use sae_engine::BackendKind;

/// A small synthetic audit (SAE, base, fine-tunes, checkpoints) in a temporary folder.
struct Data {
    dir: tempfile::TempDir,
    data: PathBuf,
    sae: String,
    /// The planted persona latent (it fires in the misaligned fine-tunes).
    persona: String,
}

impl Data {
    fn new() -> Data {
        let dir = tempfile::tempdir().unwrap();
        let r = demo::run(&DemoOptions {
            out_dir: Some(dir.path().join("demo")),
            backend: BackendKind::Cpu,
            n_tokens: 256,
            d: 32,
            n_latents: 256,
            batch_rows: 128,
            ..Default::default()
        })
        .unwrap();
        let data = r.folder.join("data");
        Data {
            sae: arg(&data.join("sae")).to_string(),
            data,
            persona: r.planted.persona.to_string(),
            dir,
        }
    }
    /// The dump `name.safetensors`.
    fn f(&self, name: &str) -> String {
        arg(&self.data.join(format!("{name}.safetensors"))).to_string()
    }
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// `NAME --backend cpu --sae SAE` then `extra`.
    fn on_cpu<'a>(&'a self, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![name, "--backend", "cpu", "--sae", self.sae.as_str()];
        a.extend_from_slice(extra);
        a
    }
}

fn stdout_of(args: &[&str]) -> String {
    String::from_utf8(sae_ok(args).stdout).unwrap()
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn one_of_a_thing_is_singular() {
    let d = Data::new();
    let (base, tuned) = (d.f("base"), d.f("insecure-code"));
    let st = d.out("base.stats.safetensors");
    let text = stdout_of(&d.on_cpu("stats", &["--acts", &base, "--out", arg(&st)]));
    assert!(text.contains("1 shard file)"), "{text}");
    let merged = d.out("merged.safetensors");
    let text = stdout_of(&["stats", "merge", arg(&st), "--out", arg(&merged)]);
    assert!(text.contains("merged 1 statistics file:"), "{text}");
    let text = stdout_of(&d.on_cpu("diff", &["--base", &base, "--tuned", &tuned]));
    assert!(text.contains("over 1 fine-tune):"), "{text}");
}

#[test]
fn orders_are_spelled_as_on_the_command_line_and_ranks_start_at_1() {
    let d = Data::new();
    let base = d.f("base");
    let (t1, t2, n1, n2) = (
        d.f("insecure-code"),
        d.f("bad-legal"),
        d.f("good-code"),
        d.f("good-math"),
    );
    for order in ["avg-delta", "sign", "z-score", "min-delta"] {
        let dir = d.out(&format!("diff-{order}"));
        let args = ["--json", "--base", &base, "--tuned", &t1, &t2, "--top", "4"];
        let more = ["--order", order, "--out-dir", arg(&dir)];
        let j = sae_json(&d.on_cpu("diff", &[&args[..], &more].concat()));
        assert_eq!(j["order"], order);
        let md = read(&dir.join("report.md"));
        assert!(md.contains(&format!("order `{order}`")), "{md}");
        let csv = read(&dir.join("diff.csv"));
        let rows: Vec<&str> = csv.lines().collect();
        assert!(rows[1].starts_with("top,1,"), "{csv}");
        assert!(rows[5].starts_with("bottom,1,"), "{csv}");
    }
    let dir = d.out("detect");
    let args = [
        "--base",
        &base,
        "--positive",
        &t1,
        &t2,
        "--negative",
        &n1,
        &n2,
    ];
    sae_ok(&d.on_cpu("detect", &[&args[..], &["--out-dir", arg(&dir)]].concat()));
    let csv = read(&dir.join("detect.csv"));
    let first: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(first[0], "1", "{csv}");
    assert!(first[2] == "up" || first[2] == "down", "{csv}");
    let args = [
        "--json", "--acts", &t1, "--latent", &d.persona, "--top", "2",
    ];
    let j = sae_json(&d.on_cpu("top-examples", &args));
    assert_eq!(j["examples"][0]["rank"], 1, "{j}");
    assert_eq!(j["examples"][1]["rank"], 2, "{j}");
}

#[test]
fn steer_format_is_the_sae_format_and_export_format_the_file_format() {
    let d = Data::new();
    let v = d.out("v.npy");
    // Layer 12: the demo SAE's hook is blocks.12.hook_resid_post (steer checks the layer).
    let args = [
        "--latent",
        "3",
        "--strength",
        "1",
        "--layer",
        "12",
        "--out",
        arg(&v),
    ];
    let e = sae_exits(
        2,
        &d.on_cpu("steer", &[&args[..], &["--format", "gguf"]].concat()),
    );
    assert!(e.contains("use --export-format gguf"), "{e}");
    let formats = ["--json", "--format", "saelens", "--export-format", "npy"];
    let j = sae_json(&d.on_cpu("steer", &[&args[..], &formats].concat()));
    assert_eq!(j["out"]["format"], "npy", "{j}");
    assert!(v.is_file());
    let help = stdout_of(&["steer", "--help"]);
    assert!(help.contains("--export-format <FORMAT>"), "{help}");
}

#[test]
fn engine_flags_exist_only_where_an_sae_runs() {
    let d = Data::new();
    let (sae, base) = (d.sae.as_str(), d.f("base"));
    for args in [
        vec!["inspect", "--backend", "cpu", sae],
        vec!["--backend", "cpu", "inspect", sae],
        vec!["inspect", "--tile-latents", "8", sae],
        vec!["convert", "sae", sae, "--out", "x", "--precision", "fast"],
    ] {
        let e = sae_exits(2, &args);
        assert!(e.contains("unexpected argument"), "{args:?}: {e}");
    }
    let st = d.out("s.safetensors");
    let tuning = ["--batch-size", "100", "--tile-latents", "64"];
    let args = ["--acts", &base, "--out", arg(&st)];
    sae_ok(&d.on_cpu("stats", &[&args[..], &tuning].concat()));
    let merge = [
        "stats",
        "merge",
        arg(&st),
        "--out",
        "m",
        "--batch-size",
        "3",
    ];
    let e = sae_exits(2, &merge);
    assert!(e.contains("unexpected argument"), "{e}");
    let conv = d.out("converted");
    sae_ok(&[
        "convert",
        "dump",
        &base,
        "--out",
        arg(&conv),
        "--batch-size",
        "100",
    ]);
    assert!(!stdout_of(&["inspect", "--help"]).contains("--backend"));
    let help = stdout_of(&["encode", "--help"]);
    assert!(
        help.contains("Engine:") && help.contains("--tile-latents"),
        "{help}"
    );
}

#[test]
fn negative_numbers_are_told_their_range() {
    let d = Data::new();
    let (base, t) = (d.f("base"), d.f("insecure-code"));
    let e = sae_exits(
        2,
        &d.on_cpu("diff", &["--base", &base, "--tuned", &t, "--top", "-1"]),
    );
    let range = "`-1` is out of range: expected a whole number >= 0";
    assert!(
        e.contains(range) && !e.contains("unexpected argument"),
        "{e}"
    );
    let e = sae_exits(
        2,
        &d.on_cpu("top-examples", &["--acts", &base, "--latent", "-3"]),
    );
    assert!(e.contains("`-3` is out of range"), "{e}");
    let batch = ["--acts", &base, "--latent", "1", "--batch-size", "-5"];
    let e = sae_exits(2, &d.on_cpu("top-examples", &batch));
    assert!(e.contains("expected a whole number >= 1"), "{e}");
}

#[test]
fn a_symlink_loop_is_called_one() {
    let d = Data::new();
    let (a, b) = (d.out("loop_a"), d.out("loop_b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let st = d.out("s.safetensors");
    let stats = |sae: &str, acts: &PathBuf| {
        let args = [
            "stats",
            "--backend",
            "cpu",
            "--sae",
            sae,
            "--acts",
            arg(acts),
        ];
        let e = sae_exits(1, &[&args[..], &["--out", arg(&st)]].concat());
        assert!(e.contains("loop_a: symlink loop"), "{e}");
    };
    stats(&d.sae, &a);
    stats(arg(&a), &b);
    let e = sae_exits(1, &["inspect", arg(&a)]);
    assert!(
        e.contains("loop_a: symlink loop") && !e.contains("no such file"),
        "{e}"
    );
    // A missing file is still called missing.
    let e = sae_exits(1, &["inspect", arg(&d.out("nothing_here"))]);
    assert!(e.to_lowercase().contains("no such file"), "{e}");
}

#[test]
fn a_detection_with_two_models_a_side_states_what_chance_gives() {
    let d = Data::new();
    let base = d.f("base");
    let (p1, p2, n1, n2) = (
        d.f("insecure-code"),
        d.f("bad-legal"),
        d.f("good-code"),
        d.f("good-math"),
    );
    let dir = d.out("detect");
    let args = [
        "--base",
        &base,
        "--positive",
        &p1,
        &p2,
        "--negative",
        &n1,
        &n2,
    ];
    let args = d.on_cpu("detect", &[&args[..], &["--out-dir", arg(&dir)]].concat());
    let j = sae_json(&[&args[..], &["--json"]].concat());
    let c = &j["chance"];
    let close = |k: &str, want: f64| (c[k].as_f64().unwrap() - want).abs() < 1e-9;
    assert!(
        close("p_one_latent", 1.0 / 3.0) && close("expected_latents", 256.0 / 3.0),
        "{c}"
    );
    assert_eq!(c["n_evaluated"], 256);
    assert!(c["caveat"].as_str().unwrap().contains("by chance"), "{c}");
    let md = read(&dir.join("report.md"));
    let caveat = "**Caveat.** Small sample: 2 positive models and 2 negative models";
    assert!(md.contains(caveat), "{md}");
    let text = String::from_utf8(run_sae(&args).stdout).unwrap();
    assert!(text.contains(caveat), "{text}");
}

/// The library names the loop (ELOOP, 40 on Linux) whichever call met it.
#[cfg(target_os = "linux")]
#[test]
fn io_errors_name_a_symlink_loop() {
    let looped = std::io::Error::from_raw_os_error(40);
    let msg = sae_engine::Error::io("x/y", looped).to_string();
    assert!(msg.starts_with("x/y: symlink loop"), "{msg}");
}

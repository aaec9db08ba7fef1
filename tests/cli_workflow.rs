//! `sae demo` end to end, then the workflow commands on the demo's own files.

mod common;

use common::{sae_exits, sae_json};
use serde_json::Value;

/// Runs `sae --json ARGS`, which must succeed; returns its JSON.
#[track_caller]
fn ok_json(args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    sae_json(&a)
}

/// `NAME --backend cpu --sae SAE ARGS...`: every command here but demo.
fn on_cpu<'a>(name: &'a str, sae_dir: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![name, "--backend", "cpu", "--sae", sae_dir];
    a.extend_from_slice(args);
    a
}

#[test]
fn demo_then_each_command_on_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    let r = root.to_str().unwrap();
    let mut demo = vec!["demo", "--backend", "cpu", "--out-dir", r];
    demo.extend(["--tokens", "1024"]);
    let j = ok_json(&demo);
    assert_eq!(j["all_ok"], true, "{j}");
    let persona = j["planted"]["persona"].as_u64().unwrap();
    let assistant = j["planted"]["assistant"].as_u64().unwrap();
    assert!(root.join("REPORT.md").is_file());

    let data = root.join("data");
    let f = |n: &str| {
        data.join(format!("{n}.safetensors"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let sae_dir = data.join("sae").to_str().unwrap().to_string();
    let mis: Vec<String> = ["insecure-code", "bad-medical", "bad-legal", "bad-finance"]
        .iter()
        .map(|n| f(n))
        .collect();
    let al: Vec<String> = ["good-code", "good-medical", "good-math"]
        .iter()
        .map(|n| f(n))
        .collect();
    let base = f("base");

    // diff: JSON ordered largest increase first; planted persona first, assistant last
    let out_dir = root.join("cli_diff");
    let mut args = vec!["--mask", "--base", &base, "--tuned"];
    args.extend(mis.iter().map(|s| s.as_str()));
    args.extend(["--top", "5", "--bottom", "3"]);
    args.extend(["--out-dir", out_dir.to_str().unwrap()]);
    let j = ok_json(&on_cpu("diff", &sae_dir, &args));
    assert_eq!(j["latents"][0]["latent"].as_u64(), Some(persona));
    assert_eq!(j["latents"].as_array().unwrap().len(), 5);
    assert_eq!(j["bottom"][0]["latent"].as_u64(), Some(assistant));
    assert!(
        j["latents"][0]["delta"].as_f64().unwrap() > j["latents"][1]["delta"].as_f64().unwrap()
    );
    assert_eq!(j["latents"][0]["deltas"].as_array().unwrap().len(), 4);
    for file in [
        "diff.csv",
        "diff.json",
        "report.md",
        "top_deltas.svg",
        "delta_vs_freq.svg",
    ] {
        assert!(out_dir.join(file).is_file(), "{file}");
    }

    // diff without --mask counts every token, so it cannot be paired with masked stats:
    // write masked stats with `sae stats` and mix them with an unmasked dump
    let st_path = root.join("base_stats.safetensors");
    let st = st_path.to_str().unwrap();
    let stats = ["--acts", &base, "--out", st];
    sae_exits(0, &on_cpu("stats", &sae_dir, &stats));
    let unmasked = ["--base", st, "--tuned", &mis[0]];
    let err = sae_exits(1, &on_cpu("diff", &sae_dir, &unmasked));
    assert!(err.contains("counted tokens"), "{err}");
    // ... and pairs with a masked dump
    let masked = ["--mask", "--base", st, "--tuned", &mis[0], &mis[1]];
    let j = ok_json(&on_cpu("diff", &sae_dir, &masked));
    assert!(j["latents"].is_array(), "{j}");

    // detect
    let mut args = vec!["--mask", "--base", &base, "--positive"];
    args.extend(mis.iter().map(|s| s.as_str()));
    args.push("--negative");
    args.extend(al.iter().map(|s| s.as_str()));
    args.extend(["--top", "2"]);
    let j = ok_json(&on_cpu("detect", &sae_dir, &args));
    let top: Vec<u64> = j["latents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["latent"].as_u64().unwrap())
        .collect();
    assert!(
        top.contains(&persona) && top.contains(&assistant),
        "{top:?}"
    );

    // steer: export a GGUF and dry-run
    let gguf = root.join("p.gguf");
    let gguf_s = gguf.to_str().unwrap();
    let p = persona.to_string();
    let mut args = vec!["--latent", &p, "--strength", "0.4", "--unit", "median-norm"];
    args.extend(["--acts", &base, "--export-format", "gguf", "--layer", "12"]);
    args.extend(["--out", gguf_s, "--apply"]);
    let j = ok_json(&on_cpu("steer", &sae_dir, &args));
    let t = &j["dry_run"]["targets"][0];
    assert!(t["delta"].as_f64().unwrap() > 10.0 * t["control_delta"].as_f64().unwrap().abs());
    assert_eq!(&std::fs::read(&gguf).unwrap()[..4], b"GGUF");
    // mismatched latent/strength counts, unknown latent
    let mut args = vec!["--latent", "1", "--latent", "2", "--strength", "1"];
    args.extend(["--apply", "--acts", &base]);
    let err = sae_exits(1, &on_cpu("steer", &sae_dir, &args));
    assert!(err.contains("--strength"), "{err}");
    let mut args = vec!["--latent", "999999", "--strength", "-1"];
    args.extend(["--layer", "3", "--out", gguf_s]);
    let err = sae_exits(1, &on_cpu("steer", &sae_dir, &args));
    assert!(err.contains("unknown latent 999999"), "{err}");

    // monitor with an explicit threshold
    let cks: Vec<String> = (0..6).map(|i| f(&format!("step-{}", i * 100))).collect();
    let mut args = vec!["--mask", "--base", &base, "--checkpoints"];
    args.extend(cks.iter().map(|s| s.as_str()));
    args.extend(["--latents", &p, "--threshold", "0.15"]);
    let j = ok_json(&on_cpu("monitor", &sae_dir, &args));
    assert_eq!(j["trajectories"][0]["first_crossing_name"], "step-400");

    // top-examples
    let mut args = vec!["--acts", &mis[0], "--latent", &p];
    args.extend(["--top", "3", "--context", "2"]);
    let j = ok_json(&on_cpu("top-examples", &sae_dir, &args));
    assert_eq!(j["examples"].as_array().unwrap().len(), 3);
    assert_eq!(j["examples"][0]["before"].as_array().unwrap().len(), 2);
}

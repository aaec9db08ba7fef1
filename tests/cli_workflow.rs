//! `sae demo` end to end, then the workflow commands on the demo's own files.

use std::process::Command;

fn sae(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args)
        .output()
        .expect("run sae");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_then_each_command_on_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    let r = root.to_str().unwrap();
    let (code, out, err) = sae(&[
        "demo",
        "--json",
        "--backend",
        "cpu",
        "--out-dir",
        r,
        "--tokens",
        "1024",
    ]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["all_ok"], true, "{out}");
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

    // diff: JSON ordered largest increase first; planted persona first, assistant last
    let out_dir = root.join("cli_diff");
    let mut args = vec![
        "diff",
        "--json",
        "--backend",
        "cpu",
        "--mask",
        "--sae",
        &sae_dir,
        "--base",
    ];
    let base = f("base");
    args.push(&base);
    args.push("--tuned");
    args.extend(mis.iter().map(|s| s.as_str()));
    args.extend([
        "--top",
        "5",
        "--bottom",
        "3",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    let (code, out, err) = sae(&args);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
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
    let st = root.join("base_stats.safetensors");
    let (code, _, err) = sae(&[
        "stats",
        "--backend",
        "cpu",
        "--sae",
        &sae_dir,
        "--acts",
        &base,
        "--out",
        st.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = sae(&[
        "diff",
        "--backend",
        "cpu",
        "--sae",
        &sae_dir,
        "--base",
        st.to_str().unwrap(),
        "--tuned",
        &mis[0],
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("counted tokens"), "{err}");
    // ... and pairs with a masked dump
    let (code, out, err) = sae(&[
        "diff",
        "--json",
        "--backend",
        "cpu",
        "--mask",
        "--sae",
        &sae_dir,
        "--base",
        st.to_str().unwrap(),
        "--tuned",
        &mis[0],
        &mis[1],
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"latents\""));

    // detect
    let mut args = vec![
        "detect",
        "--json",
        "--backend",
        "cpu",
        "--mask",
        "--sae",
        &sae_dir,
        "--base",
        &base,
        "--positive",
    ];
    args.extend(mis.iter().map(|s| s.as_str()));
    args.push("--negative");
    args.extend(al.iter().map(|s| s.as_str()));
    args.extend(["--top", "2"]);
    let (code, out, err) = sae(&args);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
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
    let p = persona.to_string();
    let (code, out, err) = sae(&[
        "steer",
        "--json",
        "--backend",
        "cpu",
        "--sae",
        &sae_dir,
        "--latent",
        &p,
        "--strength",
        "0.4",
        "--unit",
        "median-norm",
        "--acts",
        &base,
        "--format",
        "gguf",
        "--layer",
        "12",
        "--out",
        gguf.to_str().unwrap(),
        "--apply",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let t = &j["dry_run"]["targets"][0];
    assert!(t["delta"].as_f64().unwrap() > 10.0 * t["control_delta"].as_f64().unwrap().abs());
    assert_eq!(&std::fs::read(&gguf).unwrap()[..4], b"GGUF");
    // mismatched latent/strength counts, unknown latent
    let (code, _, err) = sae(&[
        "steer",
        "--backend",
        "cpu",
        "--sae",
        &sae_dir,
        "--latent",
        "1",
        "--latent",
        "2",
        "--strength",
        "1",
        "--apply",
        "--acts",
        &base,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--strength"), "{err}");
    let (code, _, err) = sae(&[
        "steer",
        "--backend",
        "cpu",
        "--sae",
        &sae_dir,
        "--latent",
        "999999",
        "--strength",
        "-1",
        "--layer",
        "3",
        "--out",
        gguf.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown latent 999999"), "{err}");

    // monitor with an explicit threshold
    let cks: Vec<String> = (0..6).map(|i| f(&format!("step-{}", i * 100))).collect();
    let mut args = vec![
        "monitor",
        "--json",
        "--backend",
        "cpu",
        "--mask",
        "--sae",
        &sae_dir,
        "--base",
        &base,
        "--checkpoints",
    ];
    args.extend(cks.iter().map(|s| s.as_str()));
    args.extend(["--latents", &p, "--threshold", "0.15"]);
    let (code, out, err) = sae(&args);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["trajectories"][0]["first_crossing_name"], "step-400");

    // top-examples
    let (code, out, err) = sae(&[
        "top-examples",
        "--json",
        "--backend",
        "cpu",
        "--sae",
        &sae_dir,
        "--acts",
        &mis[0],
        "--latent",
        &p,
        "--top",
        "3",
        "--context",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["examples"].as_array().unwrap().len(), 3);
    assert_eq!(j["examples"][0]["before"].as_array().unwrap().len(), 2);
}

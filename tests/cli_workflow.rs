//! `sae demo` end to end, then the workflow commands on the demo's own files.

use crate::common::{sae_exits, sae_json};
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
    let mut args = vec!["--base", &base, "--tuned"];
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
    // the persona moves far beyond token noise even counted by documents
    assert!(
        j["latents"][0]["z_clustered"].as_f64().unwrap() > 4.0,
        "{}",
        j["latents"][0]
    );
    assert!(
        j["latents"][0]["q_value"].as_f64().unwrap() < 1e-3,
        "{}",
        j["latents"][0]
    );
    let csv = std::fs::read_to_string(out_dir.join("diff.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().contains("z_clustered,q_value"),
        "{csv}"
    );
    for file in [
        "diff.csv",
        "diff.json",
        "report.md",
        "top_deltas.svg",
        "delta_vs_freq.svg",
    ] {
        assert!(out_dir.join(file).is_file(), "{file}");
    }

    // the same prompts: paired, and the report says why
    assert_eq!(j["pairing"]["mode"], "paired", "{}", j["pairing"]);
    let why = j["pairing"]["reason"].as_str().unwrap();
    assert!(why.contains("token-id hash"), "{why}");
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(report.contains("Pairing: **paired**"), "{report}");
    assert_eq!(j["inputs"][0]["n_outliers"], 0, "{}", j["inputs"]);

    // diff gives the same numbers from dumps and from their statistics files (both honour
    // the mask by default); the old --mask opt-in is accepted and changes nothing
    let stats_of = |dump: &str| {
        let out = format!("{dump}.stats.safetensors");
        let j = ok_json(&on_cpu("stats", &sae_dir, &["--acts", dump, "--out", &out]));
        assert_eq!(j["n_outliers"], 0, "{j}");
        assert!(j["token_hash"].is_string(), "{j}");
        out
    };
    let (sb, s0, s1) = (stats_of(&base), stats_of(&mis[0]), stats_of(&mis[1]));
    let from_dumps = ok_json(&on_cpu(
        "diff",
        &sae_dir,
        &["--mask", "--base", &base, "--tuned", &mis[0], &mis[1]],
    ));
    let from_stats = ok_json(&on_cpu(
        "diff",
        &sae_dir,
        &["--base", &sb, "--tuned", &s0, &s1],
    ));
    assert_eq!(from_dumps["pairing"]["mode"], from_stats["pairing"]["mode"]);
    for list in ["latents", "bottom"] {
        let (a, b) = (
            from_dumps[list].as_array().unwrap(),
            from_stats[list].as_array().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x["latent"], y["latent"]);
            for k in ["delta", "z", "base_mean", "tuned_mean"] {
                let (u, v) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!(
                    (u - v).abs() <= 1e-12 * u.abs().max(1.0),
                    "{list} {k}: {u} vs {v}"
                );
            }
        }
    }
    // --no-mask counts every token of the dump: not the masked statistics' tokens, so
    // auto runs unpaired and says why, and --pairing paired refuses
    let unmasked = ["--no-mask", "--base", &sb, "--tuned", &mis[0]];
    let j = ok_json(&on_cpu("diff", &sae_dir, &unmasked));
    assert_eq!(j["pairing"]["mode"], "unpaired", "{}", j["pairing"]);
    assert!(
        j["pairing"]["reason"]
            .as_str()
            .unwrap()
            .contains("counts 1024"),
        "{}",
        j["pairing"]
    );
    let mut forced = unmasked.to_vec();
    forced.extend(["--pairing", "paired"]);
    let err = sae_exits(1, &on_cpu("diff", &sae_dir, &forced));
    assert!(err.contains("--pairing paired"), "{err}");

    // detect
    let mut args = vec!["--base", &base, "--positive"];
    args.extend(mis.iter().map(|s| s.as_str()));
    args.push("--negative");
    args.extend(al.iter().map(|s| s.as_str()));
    args.extend(["--top", "2"]);
    let j = ok_json(&on_cpu("detect", &sae_dir, &args));
    assert_eq!(j["pairing"]["mode"], "paired", "{}", j["pairing"]);
    assert!(j["latents"][0]["q_value"].as_f64().unwrap() <= 1.0, "{j}");
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
    let mut args = vec!["--base", &base, "--checkpoints"];
    args.extend(cks.iter().map(|s| s.as_str()));
    args.extend(["--latents", &p, "--threshold", "0.15"]);
    let j = ok_json(&on_cpu("monitor", &sae_dir, &args));
    assert_eq!(j["pairing"]["mode"], "paired", "{}", j["pairing"]);
    assert_eq!(j["trajectories"][0]["first_crossing_name"], "step-400");

    // top-examples
    let mut args = vec!["--acts", &mis[0], "--latent", &p];
    args.extend(["--top", "3", "--context", "2"]);
    let j = ok_json(&on_cpu("top-examples", &sae_dir, &args));
    assert_eq!(j["examples"].as_array().unwrap().len(), 3);
    assert_eq!(j["examples"][0]["before"].as_array().unwrap().len(), 2);
    assert_eq!(j["outliers"]["n_outliers"], 0, "{j}");

    // README.md's audit commands, as written, in the demo's data folder
    let cmds = readme_audit_commands();
    assert!(cmds.len() >= 8, "{cmds:?}");
    // the README's latent is the demo's persona
    assert!(
        cmds.iter()
            .any(|w| w.contains(&"--latent".to_string()) && w.contains(&p)),
        "{cmds:?}"
    );
    run_readme_commands(&cmds, &data);
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("diff/diff.json")).unwrap())
            .unwrap();
    assert_eq!(j["pairing"]["mode"], "paired", "{}", j["pairing"]);
    assert!(data.join("persona.gguf").is_file());
}

/// The `sae ...` lines of README.md's "The audit in a few commands" block as words
/// (continuation lines joined, `# comments` dropped).
fn readme_audit_commands() -> Vec<Vec<String>> {
    readme_commands("## The audit in a few commands")
}

/// Runs README command lines (as words, `sae` first) in `dir`; each must succeed.
fn run_readme_commands(cmds: &[Vec<String>], dir: &std::path::Path) {
    for words in cmds {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sae"))
            .args(&words[1..])
            .current_dir(dir)
            .env("RAYON_NUM_THREADS", "2")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README: {}\n{}",
            words.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `sae ...` lines of the README section titled `title`, as words.
fn readme_commands(title: &str) -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find(title).expect("README section");
    let section = &readme[start + 3..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let (mut cmds, mut cur) = (Vec::new(), String::new());
    for line in section.lines().filter(|l| l.starts_with("    ")) {
        let code = line.split(" # ").next().unwrap().trim();
        if cur.is_empty() && !code.starts_with("sae ") {
            continue;
        }
        let (code, more) = match code.strip_suffix('\\') {
            Some(c) => (c, true),
            None => (code, false),
        };
        cur.push_str(code);
        cur.push(' ');
        if !more {
            cmds.push(cur.split_whitespace().map(String::from).collect());
            cur.clear();
        }
    }
    cmds
}

/// README.md's crosscoder commands, as written, on a copy of tests/fixtures/crosscoder with
/// the paired activations also split into one .npy per model; then the outputs they wrote.
#[test]
fn readme_crosscoder_commands_run_on_the_planted_fixture() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crosscoder");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    std::fs::create_dir(work.join("planted")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            format!("{fixtures}/planted/{f}"),
            work.join("planted").join(f),
        )
        .unwrap();
    }
    std::fs::copy(
        format!("{fixtures}/planted_acts.npy"),
        work.join("planted_acts.npy"),
    )
    .unwrap();
    let npy = std::fs::read(work.join("planted_acts.npy")).unwrap();
    let h = sae_engine::io::npy::NpyHeader::parse(&work.join("planted_acts.npy"), &npy).unwrap();
    assert_eq!(h.shape, [512, 2, 16]);
    let x: Vec<f32> = npy[h.data_offset..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for (m, name) in ["base.npy", "tuned.npy"].iter().enumerate() {
        let half: Vec<f32> = x
            .chunks_exact(32)
            .flat_map(|r| r[m * 16..(m + 1) * 16].to_vec())
            .collect();
        sae_engine::io::npy::write_f32(&work.join(name), &[512, 16], &half).unwrap();
    }
    let cmds = readme_commands("## Crosscoder model diffing");
    assert!(cmds.len() >= 4, "{cmds:?}");
    run_readme_commands(&cmds, work);
    let j: Value = serde_json::from_str(
        &std::fs::read_to_string(work.join("cc-audit/crosscoder.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(j["counts"]["tuned_specific"], 2, "{}", j["counts"]);
    assert_eq!(j["counts"]["artifacts"], 2, "{}", j["counts"]);
    let first: Vec<u64> = j["latents"].as_array().unwrap()[..4]
        .iter()
        .map(|l| l["latent"].as_u64().unwrap())
        .collect();
    assert_eq!(first, [4, 5, 7, 6]);
    assert!(work.join("cc-audit/relative_norm.svg").is_file());
    assert!(work.join("cc-codes.safetensors").is_file());
    // The steering vector is 8 x the tuned decoder's unit row of latent 4 (e4 in the fixture).
    let v = std::fs::read(work.join("cc-latent4.npy")).unwrap();
    let h = sae_engine::io::npy::NpyHeader::parse(&work.join("cc-latent4.npy"), &v).unwrap();
    let vals: Vec<f32> = v[h.data_offset..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let want: Vec<f32> = (0..16).map(|i| if i == 4 { 8.0 } else { 0.0 }).collect();
    assert_eq!(vals, want);
    // `sae inspect` recognises a crosscoder directory.
    let j = sae_json(&[
        "--json",
        "inspect",
        &format!("{fixtures}/library_decoupled"),
    ]);
    assert_eq!(j["class"], "BatchTopKCrossCoder", "{j}");
    assert_eq!(j["code_normalization"], "DECOUPLED", "{j}");
    assert_eq!(j["threshold"].as_array().unwrap().len(), 2, "{j}");
    // A crosscoder's steering direction cannot be dry-run on one model's activations.
    let e = sae_exits(
        1,
        &[
            "steer",
            "--sae",
            &format!("{fixtures}/planted"),
            "--crosscoder-model",
            "1",
            "--latent",
            "4",
            "--strength",
            "1",
            "--apply",
            "--acts",
            &format!("{fixtures}/planted_acts.npy"),
            "--backend",
            "cpu",
        ],
    );
    assert!(
        e.contains("--crosscoder-model exports a decoder direction"),
        "{e}"
    );
}

/// `sae crosscoder encode` on a DECOUPLED crosscoder the fork saved: one codes file per
/// model, each equal to the fork's own per-model code (within f32 rounding).
#[test]
fn crosscoder_encode_writes_the_forks_per_model_codes() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/crosscoder/library_decoupled"
    );
    let npz =
        sae_engine::formats::npz::Npz::open(&std::path::Path::new(fixture).join("oracle.npz"))
            .unwrap();
    let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let a = npz.get(name).unwrap();
        let v = a
            .bytes
            .as_slice()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (a.header.shape.clone(), v)
    };
    let (xs, x) = f32s("x");
    let (cs, codes) = f32s("codes");
    assert_eq!((xs.clone(), cs.clone()), (vec![64, 2, 16], vec![64, 2, 64]));
    let dir = tempfile::tempdir().unwrap();
    let acts = dir.path().join("paired.npy");
    sae_engine::io::npy::write_f32(&acts, &xs, &x).unwrap();
    let out = dir.path().join("codes.safetensors");
    let j = sae_json(&[
        "--json",
        "crosscoder",
        "encode",
        "--crosscoder",
        fixture,
        "--acts",
        acts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
        "--batch-size",
        "10",
    ]);
    assert_eq!(j["n_rows"], 64, "{j}");
    assert!(
        !out.exists(),
        "DECOUPLED writes one file per model, not --out itself"
    );
    for m in 0..2 {
        let path = dir.path().join(format!("codes.model{m}.safetensors"));
        let (enc, fingerprint) = sae_engine::io::codes_file::read(&path).unwrap();
        assert!(fingerprint.is_some());
        assert_eq!(enc.codes.n_rows(), 64);
        for r in 0..64 {
            let mut got = [0f32; 64];
            for (l, v) in enc.codes.active(r) {
                got[l] = v;
            }
            for (l, g) in got.iter().enumerate() {
                let w = codes[(r * 2 + m) * 64 + l];
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "model {m} row {r} latent {l}: {g} vs the fork's {w}"
                );
            }
        }
    }
}

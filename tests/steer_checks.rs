//! Steering you can trust: layer checks against the SAE's hook and the dump's metadata,
//! the random control, the specificity verdict, the strength sweep and ablation; the
//! decoder logit lens on a synthetic model directory; base-vs-tuned top examples.

use std::collections::HashMap;
use std::path::Path;

use crate::common::{
    random_acts, sae_exits, sae_from_rows, sae_json, tied_sae, write_dump, SteerWorld,
};
use sae_engine::io::mapped::{write_safetensors, OwnedTensor};
use sae_engine::workflow::{logit_lens, rng::Rng, steer, tokenizer::Vocab, StatsOptions};

fn raw_vector(eng: &dyn sae_engine::Engine, latent: usize, strength: f32) -> steer::SteeringVector {
    steer::steering_vector(
        eng,
        &[steer::SteerTerm { latent, strength }],
        steer::SteerUnit::Raw,
        None,
        &StatsOptions::default(),
    )
    .unwrap()
}

#[test]
fn the_control_is_no_decoder_row_even_when_the_sae_shares_its_seed() {
    // The demo's trap: an SAE whose first row is exactly the direction the old control
    // drew from the same seed. The control must be neither that row nor the vector.
    let (d, l, seed) = (64, 128, 0x5eed);
    let mut w: Vec<f32> = Rng::new(seed).direction(d, 1.0);
    let mut r = Rng::new(99);
    for _ in 1..l {
        w.extend(r.direction(d, 1.0));
    }
    let sae = sae_from_rows(w, l, d, 8, None);
    let v = sae.w_dec.row_f32(5);
    let (u, max_cos) = steer::control_direction(&sae, &v, seed).unwrap();
    let norm: f64 = u.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum::<f64>()
    };
    assert!(
        dot(&u, &v).abs() < 1e-5,
        "orthogonal to the steering vector"
    );
    assert!(
        dot(&u, &sae.w_dec.row_f32(0)).abs() < 0.5,
        "not latent 0's row"
    );
    assert!(max_cos < 0.5, "{max_cos}");
    // seeded: the same seed gives the same control, another seed another
    assert_eq!(steer::control_direction(&sae, &v, seed).unwrap().0, u);
    assert_ne!(steer::control_direction(&sae, &v, seed + 1).unwrap().0, u);

    // Small d: no draw is 0.5 from every row, so the best of several is kept (two
    // orthogonal rows in 2-D: every direction is within 45 degrees of one) ...
    let axes = sae_from_rows(vec![1.0, 0.0, 0.0, 1.0], 2, 2, 1, None);
    let (_, c) = steer::control_direction(&axes, &[0.0, 0.0], seed).unwrap();
    assert!((0.70..0.9).contains(&c), "{c}");
    // ... unless the rows cover every direction: then no control is honest.
    let circle: Vec<f32> = (0..64)
        .flat_map(|i| {
            let a = i as f32 * std::f32::consts::PI / 64.0;
            [a.cos(), a.sin()]
        })
        .collect();
    let dense = sae_from_rows(circle, 64, 2, 1, None);
    let e = steer::control_direction(&dense, &[0.0, 0.0], seed).unwrap_err();
    assert!(e.to_string().contains("control direction"), "{e}");
}

#[test]
fn the_dry_run_says_whether_the_target_move_stands_out() {
    let w = SteerWorld::new(300, 9);
    let (eng, dump) = (&w.engine, &w.dump);
    // A strong push along latent 17 is specific.
    let v = raw_vector(eng.as_ref(), 17, 3.0);
    let opts = steer::DryRunOptions {
        ablate: true,
        ..Default::default()
    };
    let r = steer::dry_run(eng.as_ref(), dump, &v, &opts).unwrap();
    let sp = &r.specificity[0];
    assert!(sp.specific, "{}", sp.verdict);
    assert!(sp.verdict.starts_with("specific"), "{}", sp.verdict);
    assert!(sp.ratio >= steer::SPECIFICITY_FACTOR);
    assert!(r.control_max_cos_decoder < 0.5);
    let other = sp.largest_other.unwrap();
    assert_ne!(other.latent, 17);
    assert!(sp.largest_under_control.is_some());
    // ablation removes what latent 17 had, and its random control barely moves it
    let a = r.ablation.as_ref().unwrap();
    assert!(
        a.target_delta <= 0.0
            && a.control_target_delta.abs() < 0.5 * a.target_delta.abs().max(1e-3)
    );
    assert!(a.norm > 0.0 && a.norm_over_median > 0.0);
    // A faint push: the target moves no more than the collateral noise, and it is said.
    let faint = raw_vector(eng.as_ref(), 17, 0.05);
    let r = steer::dry_run(eng.as_ref(), dump, &faint, &steer::DryRunOptions::default()).unwrap();
    let sp = &r.specificity[0];
    assert!(!sp.specific, "{sp:?}");
    assert!(sp.verdict.contains("NOT SPECIFIC"), "{}", sp.verdict);
    assert!(r.ablation.is_none());
}

#[test]
fn a_sweep_reports_each_strength_and_the_ablation() {
    let w = SteerWorld::new(200, 4);
    let (eng, dump) = (&w.engine, &w.dump);
    let opts = steer::DryRunOptions::default();
    let so = StatsOptions::default();
    let median = steer::median_residual_norm(dump, &so).unwrap();
    let strengths = [0.1f32, 0.5, 1.0, 2.0];
    let r = steer::sweep(
        eng.as_ref(),
        dump,
        17,
        &strengths,
        steer::SteerUnit::MedianNorm,
        true,
        &opts,
        &|_| {},
    )
    .unwrap();
    assert_eq!(r.rows.len(), 5);
    assert!((r.median_norm - median).abs() < 1e-9);
    for (row, s) in r.rows.iter().zip(strengths) {
        assert_eq!(row.kind, "add");
        assert_eq!(row.strength, Some(s));
        assert!((row.norm_over_median - s as f64).abs() < 1e-4, "{row:?}");
        assert!(row.collateral_mean_abs >= 0.0 && row.control_collateral_mean_abs >= 0.0);
    }
    // the target's response grows with the strength; the faint one is not specific, the
    // strong one is
    let t: Vec<f64> = r.rows[..4].iter().map(|x| x.target_delta).collect();
    assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
    assert!(!r.rows[0].specific && r.rows[3].specific, "{:?}", r.rows);
    let ab = &r.rows[4];
    assert_eq!((ab.kind.as_str(), ab.strength), ("ablate", None));
    assert!(ab.target_delta <= 0.0);
    let md = steer::sweep_markdown(&r);
    assert!(
        md.contains("| add 2 |") && md.contains("| ablate |"),
        "{md}"
    );
    // several latents cannot be swept, and a sweep needs something to do
    assert!(steer::sweep(
        eng.as_ref(),
        dump,
        17,
        &[],
        steer::SteerUnit::Raw,
        false,
        &opts,
        &|_| {}
    )
    .is_err());
}

/// (d, vocab, W_U [vocab, d]): tokens 0..3 along e0, 3 e1, e2, e3; token 4 zero; token 5 -e0.
fn unembedding() -> (usize, usize, Vec<f32>) {
    let (d, vocab) = (4, 6);
    let mut w_u = vec![0f32; vocab * d];
    w_u[0] = 1.0;
    w_u[d + 1] = 3.0;
    w_u[2 * d + 2] = 1.0;
    w_u[3 * d + 3] = 1.0;
    w_u[5 * d] = -1.0;
    (d, vocab, w_u)
}

/// A tiny Llama-shaped model directory: config.json, model.safetensors, tokenizer.json.
fn model_dir(dir: &Path, tied: bool, norm: &[f32], w_u: &[f32], vocab: usize, d: usize) {
    let cfg = serde_json::json!({
        "model_type": "llama", "hidden_size": d, "vocab_size": vocab, "tie_word_embeddings": tied,
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut t = vec![
        ("model.norm.weight", OwnedTensor::f32(vec![d], norm)),
        (
            "model.embed_tokens.weight",
            OwnedTensor::f32(vec![vocab, d], w_u),
        ),
    ];
    if !tied {
        // an lm_head that differs from the embeddings, to tell which was read
        let neg: Vec<f32> = w_u.iter().map(|v| -v).collect();
        t.push(("lm_head.weight", OwnedTensor::f32(vec![vocab, d], &neg)));
    }
    write_safetensors(&dir.join("model.safetensors"), &t, HashMap::new()).unwrap();
    let pieces: serde_json::Map<String, serde_json::Value> = (0..vocab)
        .map(|i| (format!("tok{i}"), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({ "model": { "type": "BPE", "vocab": pieces } });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

#[test]
fn the_logit_lens_reads_the_unembedding_through_the_final_norm() {
    let (d, vocab, w_u) = unembedding();
    // Latent 0 points along (e0 + e1)/sqrt2. Token 1 lies along e1 with 3x the weight of
    // token 0 along e0: the raw direction prefers token 1, the norm's weight (2, 0.1, ..)
    // prefers token 0. Token 5 points the other way.
    let norm = [2.0f32, 0.1, 1.0, 1.0];
    let s = std::f32::consts::FRAC_1_SQRT_2;
    let rows = vec![s, s, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    let sae = sae_from_rows(rows, 2, d, 1, None);
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path(), true, &norm, &w_u, vocab, d);
    let v = Vocab::from_tokenizer_json(&dir.path().join("tokenizer.json")).unwrap();
    let r = logit_lens::logit_lens(&sae, dir.path(), &[0, 1], 2, Some(&v)).unwrap();
    assert!(
        r.tied && r.unembedding == "model.embed_tokens.weight",
        "{r:?}"
    );
    assert_eq!(r.final_norm.as_deref(), Some("model.norm.weight"));
    let l0 = &r.latents[0];
    assert_eq!(
        l0.promoted[0].token_id, 0,
        "the norm's weight is applied: {l0:?}"
    );
    assert_eq!(l0.promoted[0].token.as_deref(), Some("tok0"));
    assert!((l0.promoted[0].logit - 2.0 * s as f64).abs() < 1e-5);
    assert_eq!(l0.promoted[1].token_id, 1);
    assert_eq!(l0.suppressed[0].token_id, 5);
    assert_eq!(r.latents[1].promoted[0].token_id, 2);
    let md = logit_lens::logit_lens_markdown(&r);
    assert!(md.contains("## Latent 0") && md.contains("`tok0`"), "{md}");

    // Untied: lm_head.weight (here the negated embeddings) is read instead.
    let dir2 = tempfile::tempdir().unwrap();
    model_dir(dir2.path(), false, &norm, &w_u, vocab, d);
    let r = logit_lens::logit_lens(&sae, dir2.path(), &[0], 1, None).unwrap();
    assert!(!r.tied && r.unembedding == "lm_head.weight");
    assert_eq!(r.latents[0].promoted[0].token_id, 5);
    assert_eq!(r.latents[0].suppressed[0].token_id, 0);
    assert!(r.latents[0].promoted[0].token.is_none());

    // A model of another width, an unknown latent, a directory without weights.
    let wide = tied_sae(8, 4, 1, 1, None);
    let e = logit_lens::logit_lens(&wide, dir.path(), &[0], 1, None).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    assert!(logit_lens::logit_lens(&sae, dir.path(), &[7], 1, None).is_err());
    let empty = tempfile::tempdir().unwrap();
    assert!(logit_lens::logit_lens(&sae, empty.path(), &[0], 1, None).is_err());

    // The CLI reads the same directory and its tokenizer.
    let sae_dir = dir.path().join("sae");
    sae_engine::formats::writer::write_saelens(&sae, &sae_dir).unwrap();
    let j = sae_json(&[
        "--json",
        "logit-lens",
        "--sae",
        sae_dir.to_str().unwrap(),
        "--model-dir",
        dir.path().to_str().unwrap(),
        "--latents",
        "0,1",
        "--top",
        "3",
    ]);
    assert_eq!(j["latents"][0]["promoted"][0]["token"], "tok0", "{j}");
    assert_eq!(j["latents"][1]["promoted"][0]["token_id"], 2);
    assert!(j["method"].as_str().unwrap().contains("model.norm.weight"));
}

/// Whitespace-separated command-line words.
fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// `sae steer ARGS` on the CPU backend.
fn steer_args<'a>(sae: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["steer", "--backend", "cpu", "--sae", sae, "--latent", "3"];
    a.extend_from_slice(extra);
    a
}

#[test]
fn steer_checks_the_layer_against_the_sae_hook_and_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let write_sae = |name: &str, hook: &str| {
        let sae = tied_sae(16, 32, 4, 1, Some(hook));
        sae_engine::formats::writer::write_saelens(&sae, &dir.path().join(name)).unwrap();
        p(name)
    };
    let post = write_sae("post", "blocks.15.hook_resid_post");
    let pre = write_sae("pre", "blocks.15.hook_resid_pre");
    let mlp = write_sae("mlp", "blocks.15.hook_mlp_out");
    let sparsify_like = write_sae("sp", "layers.15");
    let out = p("v.gguf");
    let npy = p("v.npy");
    let st = |layer: &'static str, fmt: &'static str| -> Vec<&'static str> {
        vec!["--strength", "1", "--layer", layer, "--export-format", fmt]
    };

    // the SAE's own block passes; another block is refused and can be forced
    let mut a = steer_args(&post, &st("15", "gguf"));
    a.extend(["--out", &out]);
    sae_json(&[&["--json"][..], &a].concat());
    let mut a = steer_args(&post, &st("7", "gguf"));
    a.extend(["--out", &out]);
    let e = sae_exits(1, &a);
    assert!(
        e.contains("blocks.15.hook_resid_post")
            && e.contains("block 15")
            && e.contains("--force-layer"),
        "{e}"
    );
    a.push("--force-layer");
    let j = sae_json(&[&["--json"][..], &a].concat());
    assert!(
        j["layer_check"]["notes"][0]
            .as_str()
            .unwrap()
            .starts_with("forced"),
        "{j}"
    );
    // hook_resid_pre of block 15 is block 14's output; layers.15 is block 15's
    let mut a = steer_args(&pre, &st("15", "gguf"));
    a.extend(["--out", &out]);
    assert!(sae_exits(1, &a).contains("block 14"));
    let mut a = steer_args(&pre, &st("14", "gguf"));
    a.extend(["--out", &out]);
    sae_json(&[&["--json"][..], &a].concat());
    let mut a = steer_args(&sparsify_like, &st("15", "npy"));
    a.extend(["--out", &npy]);
    sae_json(&[&["--json"][..], &a].concat());
    // a non-residual hook is refused unless forced
    let mut a = steer_args(&mlp, &st("15", "gguf"));
    a.extend(["--out", &out]);
    assert!(sae_exits(1, &a).contains("not the residual stream"));
    a.push("--force-layer");
    sae_json(&[&["--json"][..], &a].concat());

    // the model's block count, from --n-layers or the dump's metadata
    let mut a = steer_args(&post, &st("15", "gguf"));
    a.extend(["--out", &out, "--n-layers", "12"]);
    let e = sae_exits(1, &a);
    assert!(
        e.contains("12 blocks") && e.contains("silently ignores"),
        "{e}"
    );
    a.push("--force-layer"); // never overrides a layer the model does not have
    sae_exits(1, &a);
    let sae = tied_sae(16, 32, 4, 1, None);
    let acts = random_acts(&sae, 20, 2);
    let dump_with = |name: &str, meta: &[(&str, &str)]| {
        write_dump(&dir.path().join(name), &acts, 16, None, meta);
        p(name)
    };
    let post_norm = [("n_layers", "16"), ("hf_hidden_states_index", "16")];
    let dump = dump_with(
        "d.safetensors",
        &[&[("layer", "15")][..], &post_norm].concat(),
    );
    let mut a = steer_args(&post, &st("15", "npy"));
    a.extend(["--out", &npy, "--acts", &dump]);
    let e = sae_exits(1, &a);
    assert!(
        e.contains("hidden_states[16]") && e.contains("final norm"),
        "{e}"
    );
    let mid = [
        ("layer", "15"),
        ("n_layers", "30"),
        ("hf_hidden_states_index", "16"),
    ];
    let dump_mid = dump_with("mid.safetensors", &mid);
    let mut a = steer_args(&post, &st("15", "npy"));
    a.extend(["--out", &npy, "--acts", &dump_mid]);
    let j = sae_json(&[&["--json"][..], &a].concat());
    assert_eq!(j["layer_check"]["n_layers"], 30);
    let mut a = steer_args(&post, &st("15", "npy"));
    a.extend(["--out", &npy, "--acts", &dump_mid, "--n-layers", "28"]);
    assert!(sae_exits(1, &a).contains("disagrees"));
    // the dump's own layer must match the SAE's even for a dry run without --out
    let dump_other = dump_with("other.safetensors", &[("layer", "9")]);
    let a = steer_args(
        &post,
        &["--strength", "1", "--apply", "--acts", &dump_other],
    );
    assert!(sae_exits(1, &a).contains("block 15"));

    // layer 0: transformers can hook it (npy, safetensors); llama.cpp cannot
    let zero = write_sae("zero", "blocks.0.hook_resid_post");
    let mut a = steer_args(&zero, &st("0", "safetensors"));
    let stp = p("v0.safetensors");
    a.extend(["--out", &stp]);
    sae_json(&[&["--json"][..], &a].concat());
    let mut a = steer_args(&zero, &st("0", "gguf"));
    a.extend(["--out", &out]);
    let e = sae_exits(1, &a);
    assert!(
        e.contains("no slot") && e.contains("npy or safetensors"),
        "{e}"
    );
    // --out without --layer suggests the SAE's block
    let mut a = steer_args(&post, &["--strength", "1", "--out"]);
    a.push(&out);
    assert!(sae_exits(1, &a).contains("--layer 15"));
}

#[test]
fn steer_cli_sweep_ablate_and_top_examples_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let sae = tied_sae(32, 64, 4, 5, Some("blocks.3.hook_resid_post"));
    let sae_dir = dir.path().join("sae");
    sae_engine::formats::writer::write_saelens(&sae, &sae_dir).unwrap();
    let s = sae_dir.to_str().unwrap();
    let n = 120;
    let ids: Vec<i64> = (0..n as i64).map(|i| i % 7).collect();
    let base = dir.path().join("base.safetensors");
    let tuned = dir.path().join("tuned.safetensors");
    write_dump(
        &base,
        &random_acts(&sae, n, 1),
        32,
        Some(ids.clone()),
        &[("layer", "3")],
    );
    // the tuned dump: latent 3's direction added to every row
    let mut t = random_acts(&sae, n, 2);
    let w3 = sae.w_dec.row_f32(3);
    for row in t.chunks_exact_mut(32) {
        row.iter_mut().zip(&w3).for_each(|(v, w)| *v += 3.0 * w);
    }
    write_dump(&tuned, &t, 32, Some(ids.clone()), &[("layer", "3")]);
    let (b, tu) = (base.to_str().unwrap(), tuned.to_str().unwrap());

    let out_dir = dir.path().join("sweep");
    let od = out_dir.to_str().unwrap();
    let mut a = words(
        "--json steer --backend cpu --latent 3 --unit median-norm --strengths 0.1,1,2 --ablate",
    );
    a.extend(["--sae", s, "--acts", b, "--out-dir", od]);
    let j = sae_json(&a);
    let rows = j["sweep"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{j}");
    assert_eq!(rows[1]["strength"], 1.0);
    assert_eq!(rows[3]["kind"], "ablate");
    assert!(out_dir.join("sweep.md").is_file() && out_dir.join("sweep.json").is_file());
    // a sweep of several latents, or without a dump, is refused
    let mut a = words("steer --latent 3 --latent 4 --strengths 1,2");
    a.extend(["--sae", s, "--acts", b]);
    let e = sae_exits(1, &a);
    assert!(e.contains("exactly one --latent"), "{e}");
    assert!(sae_exits(
        1,
        &["steer", "--sae", s, "--latent", "3", "--strengths", "1"]
    )
    .contains("--acts"));
    // the dry run reports the verdict and the ablation beside the addition
    let mut a = words("--json steer --backend cpu --latent 3 --strength 4 --apply --ablate");
    a.extend(["--sae", s, "--acts", b]);
    let j = sae_json(&a);
    assert!(j["dry_run"]["specificity"][0]["verdict"].is_string(), "{j}");
    assert_eq!(j["dry_run"]["ablation"]["kind"], "ablate");

    // top examples of base and tuned in two columns
    let out_dir = dir.path().join("te");
    let od = out_dir.to_str().unwrap();
    let mut a = words("--json top-examples --backend cpu --latent 3 --top 4 --context 1");
    a.extend(["--sae", s, "--acts", b, "--compare", tu, "--out-dir", od]);
    let j = sae_json(&a);
    assert_eq!(j["tuned"]["examples"].as_array().unwrap().len(), 4, "{j}");
    assert!(
        j["tuned"]["n_active"].as_u64() > j["base"]["n_active"].as_u64(),
        "{j}"
    );
    let md = std::fs::read_to_string(out_dir.join("latent_3_compare.md")).unwrap();
    assert!(
        md.contains("| rank | base act | base context | tuned act | tuned context |"),
        "{md}"
    );
    assert_eq!(
        md.lines()
            .filter(|l| l.starts_with("| 1 |") || l.starts_with("| 4 |"))
            .count(),
        2,
        "{md}"
    );
    // dumps of two different layers are not compared
    let other = dir.path().join("other.safetensors");
    write_dump(&other, &t, 32, Some(ids.clone()), &[("layer", "4")]);
    let mut a = words("top-examples --backend cpu --latent 3");
    a.extend([
        "--sae",
        s,
        "--acts",
        b,
        "--compare",
        other.to_str().unwrap(),
    ]);
    let e = sae_exits(1, &a);
    assert!(e.contains("layer 3") && e.contains("layer 4"), "{e}");
}

#[test]
fn the_logit_lens_adds_gemmas_norm_offset_and_centres_for_layernorm() {
    let (d, vocab, w_u) = unembedding();
    let s = std::f32::consts::FRAC_1_SQRT_2;
    let sae = sae_from_rows(vec![s, s, 0.0, 0.0], 1, d, 1, None);
    let logit_of = |r: &logit_lens::LogitLensReport, id: i64| {
        r.latents[0]
            .promoted
            .iter()
            .find(|t| t.token_id == id)
            .unwrap()
            .logit
    };

    // Gemma stores the RMSNorm scale as an offset from 1: g = (1, -0.9, 0, 0) scales by
    // (2, 0.1, 1, 1). Read as a plain scale, token 1 would get -2.7 s instead of +0.3 s.
    let gemma = tempfile::tempdir().unwrap();
    model_dir(gemma.path(), true, &[1.0, -0.9, 0.0, 0.0], &w_u, vocab, d);
    let cfg =
        serde_json::json!({"model_type": "gemma2", "hidden_size": d, "tie_word_embeddings": true});
    std::fs::write(gemma.path().join("config.json"), cfg.to_string()).unwrap();
    let r = logit_lens::logit_lens(&sae, gemma.path(), &[0], vocab, None).unwrap();
    assert!((logit_of(&r, 0) - 2.0 * s as f64).abs() < 1e-5, "{r:?}");
    assert!((logit_of(&r, 1) - 0.3 * s as f64).abs() < 1e-5, "{r:?}");
    assert!(r.method.contains("(1 + g)"), "{}", r.method);

    // GPT-2 style: a LayerNorm (weight and bias) named transformer.ln_f, tied wte, no
    // lm_head: the direction is centred first, so token 2 (e2) gets -s/2, not 0.
    let gpt2 = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"model_type": "gpt2", "n_embd": d});
    std::fs::write(gpt2.path().join("config.json"), cfg.to_string()).unwrap();
    let ones = [1.0f32; 4];
    let t = vec![
        ("transformer.ln_f.weight", OwnedTensor::f32(vec![d], &ones)),
        (
            "transformer.ln_f.bias",
            OwnedTensor::f32(vec![d], &[0.5; 4]),
        ),
        (
            "transformer.wte.weight",
            OwnedTensor::f32(vec![vocab, d], &w_u),
        ),
    ];
    write_safetensors(&gpt2.path().join("model.safetensors"), &t, HashMap::new()).unwrap();
    let r = logit_lens::logit_lens(&sae, gpt2.path(), &[0], vocab, None).unwrap();
    assert!(r.tied && r.unembedding == "transformer.wte.weight");
    assert!((logit_of(&r, 2) + 0.5 * s as f64).abs() < 1e-5, "{r:?}");
    assert!(r.method.contains("centred"), "{}", r.method);
}

//! The committed fixtures (tools/fixtures/make_crosscoder_fixtures.py): crosscoders the
//! dictionary_learning fork saved itself, with its own encode/decode as the oracle, and
//! the planted scenario with its numpy reference.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::analysis::{self, LatentClass, Verdict};
use super::encode::CrosscoderEngine;
use super::paired::Paired;
use super::*;
use crate::backend::{BackendKind, EngineOptions};
use crate::dtype::DType;
use crate::formats::common::bytes_to_f32;
use crate::formats::npz::Npz;

/// The repository's one set of fixtures (tests/fixtures at the workspace root, two levels
/// above this crate), shared with the integration tests.
fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/crosscoder")
}

fn npz_f32(npz: &Npz, name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = npz
        .get(name)
        .unwrap_or_else(|| panic!("oracle has no `{name}`"));
    assert_eq!(a.header.dtype.float(), Some(DType::F32), "{name}");
    (
        a.header.shape.clone(),
        bytes_to_f32(DType::F32, a.bytes.as_slice()),
    )
}

fn engine(cc: Crosscoder) -> CrosscoderEngine {
    CrosscoderEngine::new(Arc::new(cc), BackendKind::Cpu, &EngineOptions::default()).unwrap()
}

/// Encodes the oracle's `x` and checks codes and reconstruction against the fork's.
fn conformance(name: &str, class: CrosscoderClass, n_codes: usize) {
    let path = dir().join(name);
    let cc = load(&path).unwrap();
    assert_eq!(cc.meta.class, class, "{name}");
    let (n, d, l) = (cc.n_models, cc.d, cc.n_latents());
    assert_eq!((n, d, l), (2, 16, 64), "{name}");
    let npz = Npz::open(&path.join("oracle.npz")).unwrap();
    let (xs, x) = npz_f32(&npz, "x");
    let (cs, want) = npz_f32(&npz, "codes");
    let (_, want_recon) = npz_f32(&npz, "recon");
    let rows = xs[0];
    assert_eq!(xs, [rows, n, d]);
    let e = engine(cc);
    let got = e.encode(&x, rows, 0).unwrap();
    assert_eq!(got.codes.len(), n_codes, "{name}");
    if n_codes == 1 {
        assert_eq!(cs, [rows, l]);
    } else {
        assert_eq!(cs, [rows, n_codes, l]);
    }
    let mut active = 0;
    for (m, codes) in got.codes.iter().enumerate() {
        for r in 0..rows {
            let mut g = vec![0f32; l];
            for (j, v) in codes.active(r) {
                g[j] = v;
            }
            for (j, gv) in g.iter().enumerate() {
                let w = if n_codes == 1 {
                    want[r * l + j]
                } else {
                    want[(r * n_codes + m) * l + j]
                };
                active += usize::from(w != 0.0);
                assert!(
                    (gv - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{name}: row {r} code {m} latent {j}: got {gv}, the library {w}"
                );
            }
        }
    }
    assert!(active > 0, "{name}: the oracle's codes are all zero");
    let recon = e.decode(&got).unwrap();
    assert_eq!(recon.len(), want_recon.len());
    for (i, (g, w)) in recon.iter().zip(&want_recon).enumerate() {
        assert!(
            (g - w).abs() <= 2e-5 * (1.0 + w.abs()),
            "{name}: recon {i}: got {g}, the library {w}"
        );
    }
}

#[test]
fn library_batchtopk_crosscoder_encodes_and_decodes_like_the_fork() {
    conformance("library_batchtopk", CrosscoderClass::BatchTopK, 1);
}

#[test]
fn library_batchtopk_with_input_normalizer_matches_the_fork() {
    let cc = load(&dir().join("library_batchtopk_normalized")).unwrap();
    assert!(cc.input_norm.is_some());
    conformance(
        "library_batchtopk_normalized",
        CrosscoderClass::BatchTopK,
        1,
    );
}

#[test]
fn library_decoupled_crosscoder_gives_the_forks_per_model_codes() {
    let cc = load(&dir().join("library_decoupled")).unwrap();
    assert_eq!(cc.threshold.as_ref().map(Vec::len), Some(2));
    conformance("library_decoupled", CrosscoderClass::BatchTopK, 2);
}

#[test]
fn library_relu_crosscoder_matches_the_fork() {
    conformance("library_relu", CrosscoderClass::Relu, 1);
}

fn close(got: f64, want: Option<f64>, tol: f64, what: &str) {
    match want {
        Some(w) => assert!(
            (got - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: got {got}, numpy {w}"
        ),
        None => assert!(!got.is_finite(), "{what}: got {got}, numpy null"),
    }
}

fn planted_analysis() -> (Crosscoder, analysis::Analysis) {
    let cc = load(&dir().join("planted")).unwrap();
    let e = engine(cc.clone());
    let acts = Paired::open(&[dir().join("planted_acts.npy")], 2, 16).unwrap();
    let a = analysis::analyze(&e, Some(&acts), 100, &|_| {}).unwrap();
    (cc, a)
}

#[test]
fn planted_latents_land_in_their_classes_and_match_the_numpy_reference() {
    let (_, a) = planted_analysis();
    let text = std::fs::read(dir().join("planted_reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(a.n_rows, r["n_rows"].as_u64().unwrap());
    let latents = r["latents"].as_array().unwrap();
    assert_eq!(latents.len(), a.latents.len());
    let mut l0 = 0;
    for (got, want) in a.latents.iter().zip(latents) {
        let j = got.latent;
        let f = |k: &str| want[k].as_f64();
        close(
            got.norm_base,
            f("norm_base"),
            1e-6,
            &format!("{j} norm_base"),
        );
        close(
            got.norm_tuned,
            f("norm_tuned"),
            1e-6,
            &format!("{j} norm_tuned"),
        );
        close(got.rel_norm, f("rel_norm"), 1e-6, &format!("{j} rel_norm"));
        close(
            got.delta_norm,
            f("delta_norm"),
            1e-6,
            &format!("{j} delta_norm"),
        );
        close(got.cosine, f("cosine"), 1e-6, &format!("{j} cosine"));
        assert_eq!(
            got.class.name(),
            want["class"].as_str().unwrap(),
            "latent {j}"
        );
        let active = want["active"].as_u64().unwrap();
        l0 += active;
        assert_eq!(
            got.scaling.map_or(0, |s| s.active),
            active,
            "latent {j} active"
        );
        if let Some(s) = got.scaling {
            for (k, v) in [
                ("beta_error_base", s.beta_error_base),
                ("beta_error_tuned", s.beta_error_tuned),
                ("beta_reconstruction_base", s.beta_reconstruction_base),
                ("beta_reconstruction_tuned", s.beta_reconstruction_tuned),
                ("nu_error", s.nu_error),
                ("nu_reconstruction", s.nu_reconstruction),
            ] {
                close(v, f(k), 1e-4, &format!("{j} {k}"));
            }
        }
        let verdict = match got.verdict {
            Verdict::NotApplicable => "not-applicable",
            Verdict::Unmeasured => "unmeasured",
            Verdict::TunedSpecific => "tuned-specific",
            Verdict::Artifact => "artifact",
        };
        assert_eq!(verdict, want["verdict"].as_str().unwrap(), "latent {j}");
    }
    assert_eq!(l0, r["total_l0"].as_u64().unwrap());
    // The planted roles, independently of the reference file.
    let class = |j: usize| a.latents[j].class;
    assert_eq!([class(0), class(1)], [LatentClass::BaseOnly; 2]);
    assert_eq!([class(2), class(3)], [LatentClass::Shared; 2]);
    for j in 4..8 {
        assert_eq!(class(j), LatentClass::TunedOnly, "latent {j}");
    }
    assert_eq!(a.latents[4].verdict, Verdict::TunedSpecific);
    assert_eq!(a.latents[5].verdict, Verdict::TunedSpecific);
    assert_eq!(a.latents[6].verdict, Verdict::Artifact);
    assert_eq!(a.latents[7].verdict, Verdict::Artifact);
    // The ranking puts confirmed tuned-specific latents before the artifacts.
    let rank = a.ranking();
    let pos = |j: usize| rank.iter().position(|&i| i == j).unwrap();
    assert!(pos(4).max(pos(5)) < pos(6).min(pos(7)));
}

#[test]
fn planted_report_files_hold_every_latent_and_flag_the_artifacts() {
    let (cc, a) = planted_analysis();
    let out = tempfile::tempdir().unwrap();
    let prov = crate::provenance::Provenance::new("crosscoder analyze");
    report::write_outputs(out.path(), &cc, &a, 10, &prov).unwrap();
    let csv = std::fs::read_to_string(out.path().join("crosscoder.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 64);
    assert!(csv.lines().nth(1).unwrap().starts_with("1,"));
    assert!(csv.lines().any(|l| l.starts_with(&format!(
        "{},6,tuned-only,artifact,",
        1 + a.ranking().iter().position(|&i| i == 6).unwrap()
    ))));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("crosscoder.json")).unwrap())
            .unwrap();
    assert_eq!(json["counts"]["artifacts"], 2);
    assert_eq!(json["counts"]["tuned_specific"], 2);
    assert_eq!(json["latents"].as_array().unwrap().len(), 64);
    assert!(json.get("provenance").is_some());
    let md = std::fs::read_to_string(out.path().join("crosscoder.md")).unwrap();
    let flagged = md.split("## Tuned-only latents flagged").nth(1).unwrap();
    let flagged = flagged.split("## ").next().unwrap();
    assert!(
        flagged.contains("| 6 | artifact |") && flagged.contains("| 7 | artifact |"),
        "{md}"
    );
    let svg = std::fs::read_to_string(out.path().join("relative_norm.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.matches("<rect").count() > 5);
    // The histogram counts every latent with a decoder once.
    let bins = report::histogram_bins(&a);
    assert_eq!(bins.iter().flatten().sum::<u64>(), 64);
}

#[test]
fn without_activations_only_the_decoder_analyses_run_and_the_report_says_so() {
    let cc = load(&dir().join("planted")).unwrap();
    let e = engine(cc.clone());
    let a = analysis::analyze(&e, None, 100, &|_| {}).unwrap();
    assert_eq!(a.n_rows, 0);
    assert!(a
        .latents
        .iter()
        .all(|r| r.scaling.is_none() && r.verdict == Verdict::NotApplicable));
    // The classes come from the decoders alone and are the same as with activations.
    let (_, with) = planted_analysis();
    let classes = |a: &analysis::Analysis| a.latents.iter().map(|r| r.class).collect::<Vec<_>>();
    assert_eq!(classes(&a), classes(&with));
    let md = report::markdown(&report::Report::new(&cc, &a), 5);
    assert!(md.contains("latent scaling did not run"), "{md}");
}

//! SAEs saved by the libraries themselves (SAELens 6.54 and 5.11, dictionary_learning
//! 0.1.0; tools/fixtures/make_library_fixtures.py), loaded here and matched against each
//! library's own codes and reconstructions (oracle.safetensors) to f32 rounding.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sae_engine::codes::Encoded;
use sae_engine::formats::{self, DlConvention, LoadOptions};
use sae_engine::io::mapped::MappedSafetensors;
use sae_engine::{engine, BackendKind, EngineOptions, Sae};

fn fixture(parts: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(parts)
}

/// A tensor of the fixture's oracle.safetensors as f32, with its shape.
fn oracle(dir: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let p = dir.join("oracle.safetensors");
    let st = MappedSafetensors::open(&p).unwrap();
    let t = st.tensor(name).unwrap();
    (t.shape.clone(), t.to_f32(&p).unwrap())
}

/// Encodes the oracle's `x` with the CPU engine; returns dense codes [n, L], the
/// reconstruction and the encoded form.
fn run(sae: Sae, x: &[f32]) -> (Vec<f32>, Vec<f32>, Encoded) {
    let (l, d) = (sae.n_latents(), sae.d_in());
    let n = x.len() / d;
    let eng = engine(BackendKind::Cpu, Arc::new(sae), &EngineOptions::default()).unwrap();
    let enc = eng.encode(x, n, 0).unwrap();
    let mut dense = vec![0f32; n * l];
    for r in 0..n {
        let (idx, vals) = enc.codes.row(r);
        for (i, v) in idx.iter().zip(vals) {
            if *i >= 0 {
                dense[r * l + *i as usize] = *v;
            }
        }
    }
    let recon = eng.decode(&enc.codes, enc.denorm.as_ref()).unwrap();
    (dense, recon, enc)
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, the library gives {w}"
        );
    }
}

/// Loads `dir` with `opts` and checks codes and reconstruction against the oracle's
/// `codes_name` / `recon_name`; returns the SAE's conventions.
fn matches_library(dir: &Path, opts: &LoadOptions, codes_name: &str, recon_name: &str) -> Sae {
    let sae = formats::load_with(dir, None, opts).unwrap();
    let (shape, x) = oracle(dir, "x");
    assert_eq!(shape[1], sae.d_in());
    let (codes, recon, _) = run(sae.clone(), &x);
    let what = dir.display().to_string();
    assert_close(&codes, &oracle(dir, codes_name).1, &format!("{what} codes"));
    assert_close(&recon, &oracle(dir, recon_name).1, &format!("{what} recon"));
    sae
}

/// The largest absolute difference between two vectors.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn saelens5_finetuning_scaling_factor_is_applied_before_decoding() {
    for name in ["finetuning_scaling", "finetuning_scaling_disk"] {
        let dir = fixture(&format!("saelens5/{name}"));
        let sae = matches_library(&dir, &LoadOptions::default(), "codes", "recon");
        assert!(sae.scales.decode_scale.is_some());
        assert!(
            sae.meta
                .conventions
                .iter()
                .any(|c| c.contains("finetuning_scaling_factor")),
            "{:?}",
            sae.meta.conventions
        );
        // Dropping the factor (the old behaviour) does not reproduce the library.
        let mut dropped = sae.clone();
        dropped.scales.decode_scale = None;
        let (_, recon, _) = run(dropped, &oracle(&dir, "x").1);
        assert!(max_diff(&recon, &oracle(&dir, "recon").1) > 1e-2);
    }
}

#[test]
fn saelens_batchtopk_with_decoder_norm_rescale_matches_its_inference_form() {
    let dir = fixture("saelens6/batchtopk_rescale");
    let sae = matches_library(&dir, &LoadOptions::default(), "codes", "recon");
    assert_eq!(sae.meta.architecture, "batchtopk");
    assert!(sae.scales.code_scale.is_some());
    assert!(
        sae.meta
            .conventions
            .iter()
            .any(|c| c.contains("rescale_acts_by_decoder_norm")),
        "{:?}",
        sae.meta.conventions
    );
}

#[test]
fn saelens_normalizations_without_their_constant_load_as_identity_with_a_warning() {
    for (name, constant) in [
        ("expected_average", "norm scaling factor"),
        ("covariance_whitening", "whitening mean and matrix"),
    ] {
        let dir = fixture(&format!("saelens6/{name}"));
        let sae = matches_library(&dir, &LoadOptions::default(), "codes", "recon");
        assert_eq!(sae.meta.warnings.len(), 1, "{name}");
        let w = &sae.meta.warnings[0];
        assert!(w.contains("cfg.json") && w.contains(constant), "{w}");
    }
    // With the constant, expected_average_only_in matches SAELens's folded SAE.
    let dir = fixture("saelens6/expected_average");
    let factor = oracle(&dir, "norm_scale").1[0];
    let opts = LoadOptions {
        norm_scale: Some(factor),
        ..LoadOptions::default()
    };
    let sae = matches_library(&dir, &opts, "codes_scaled", "recon_scaled");
    assert!(sae.meta.warnings.is_empty());
    // A constant for an SAE that has no use for it is refused.
    let e = formats::load_with(fixture("saelens6/covariance_whitening"), None, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--norm-scale"), "{e}");
}

#[test]
fn dictionary_learning_autoencoder_default_is_from_pretrained_and_raw_on_request() {
    let dir = fixture("dictionary_learning/autoencoder");
    let sae = matches_library(
        &dir,
        &LoadOptions::default(),
        "codes_folded",
        "recon_folded",
    );
    assert!(sae.meta.conventions[0].contains("from_pretrained"));
    let raw = LoadOptions {
        dl_convention: DlConvention::Raw,
        ..LoadOptions::default()
    };
    let sae = matches_library(&dir, &raw, "codes_raw", "recon_raw");
    assert!(sae.meta.conventions[0].contains("raw"));
    // The two conventions really differ on this SAE (by the decoder norms).
    assert!(
        max_diff(
            &oracle(&dir, "codes_folded").1,
            &oracle(&dir, "codes_raw").1
        ) > 1e-2
    );
}

#[test]
fn dictionary_learning_matryoshka_batchtopk_loads_with_its_threshold() {
    let dir = fixture("dictionary_learning/matryoshka");
    let sae = matches_library(&dir, &LoadOptions::default(), "codes", "recon");
    assert_eq!(sae.meta.architecture, "matryoshka_batchtopk");
    assert!(
        sae.meta.conventions[0].contains("use_threshold=True"),
        "{:?}",
        sae.meta.conventions
    );
}

#[test]
fn folded_conventions_survive_conversion_to_saelens() {
    for (dir, codes, recon) in [
        (
            "dictionary_learning/autoencoder",
            "codes_folded",
            "recon_folded",
        ),
        ("saelens5/finetuning_scaling_disk", "codes", "recon"),
        ("saelens6/batchtopk_rescale", "codes", "recon"),
    ] {
        let dir = fixture(dir);
        let sae = formats::load(&dir, None).unwrap();
        let t = tempfile::tempdir().unwrap();
        formats::write_saelens(&sae, t.path()).unwrap();
        let back = formats::load(t.path(), None).unwrap();
        assert!(back.scales.is_empty(), "{}", dir.display());
        let (got_codes, got_recon, _) = run(back, &oracle(&dir, "x").1);
        assert_close(&got_codes, &oracle(&dir, codes).1, "converted codes");
        assert_close(&got_recon, &oracle(&dir, recon).1, "converted recon");
    }
}

#[test]
fn a_given_norm_scale_is_folded_into_converted_weights() {
    let dir = fixture("saelens6/expected_average");
    let opts = LoadOptions {
        norm_scale: Some(oracle(&dir, "norm_scale").1[0]),
        ..LoadOptions::default()
    };
    let t = tempfile::tempdir().unwrap();
    sae_engine::convert::convert_sae_with(&dir, None, &opts, t.path()).unwrap();
    let back = formats::load(t.path(), None).unwrap();
    assert!(back.meta.warnings.is_empty());
    let (codes, recon, _) = run(back, &oracle(&dir, "x").1);
    assert_close(&codes, &oracle(&dir, "codes_scaled").1, "converted codes");
    assert_close(&recon, &oracle(&dir, "recon_scaled").1, "converted recon");
}

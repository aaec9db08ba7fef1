//! Loader, encode and analysis tests on crosscoders written here in the fork's layout;
//! `fixtures.rs` checks the committed planted scenario and the library's own outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::analysis::{self, LatentClass};
use super::encode::{apply_threshold, prefilter_cut, CrosscoderEngine};
use super::*;
use crate::backend::{BackendKind, EngineOptions};
use crate::codes::Codes;
use crate::io::mapped::{write_safetensors, OwnedTensor};

/// A crosscoder's tensors in the fork's shapes.
#[derive(Clone)]
pub(super) struct Spec {
    pub n: usize,
    pub d: usize,
    pub l: usize,
    /// [n, d, l]
    pub enc: Vec<f32>,
    /// [l]
    pub b_enc: Vec<f32>,
    /// [n, l, d]
    pub dec: Vec<f32>,
    /// [n, d]
    pub b_dec: Vec<f32>,
    pub threshold: Option<Vec<f32>>,
    pub norm: &'static str,
    /// (mean [n, d], std [n, d], global scale)
    pub input_norm: Option<(Vec<f32>, Vec<f32>, f32)>,
    /// Store encoder and decoder weights as bf16 (their values must be bf16-exact).
    pub bf16: bool,
}

/// SplitMix64-driven uniform values in [-1, 1).
pub(super) fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

impl Spec {
    pub fn random(n: usize, d: usize, l: usize, seed: u64) -> Spec {
        Spec {
            n,
            d,
            l,
            enc: values(seed, n * d * l),
            b_enc: values(seed + 1, l).iter().map(|v| v * 0.2).collect(),
            dec: values(seed + 2, n * l * d),
            b_dec: values(seed + 3, n * d),
            threshold: None,
            norm: "CROSSCODER",
            input_norm: None,
            bf16: false,
        }
    }

    fn id(&self) -> i64 {
        match self.norm.to_ascii_uppercase().as_str() {
            "CROSSCODER" => 1,
            "SAE" => 2,
            "MIXED" => 3,
            "NONE" => 4,
            _ => 5,
        }
    }

    pub fn save(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let (n, d, l) = (self.n, self.d, self.l);
        let nan = vec![f32::NAN; n * d];
        let (mean, std, scale) = match &self.input_norm {
            Some((m, s, g)) => (m.clone(), s.clone(), *g),
            None => (nan.clone(), nan, 1.0),
        };
        let weight = |shape: Vec<usize>, v: &[f32]| {
            if self.bf16 {
                let data = v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect();
                OwnedTensor {
                    dtype: safetensors::Dtype::BF16,
                    shape,
                    data,
                }
            } else {
                OwnedTensor::f32(shape, v)
            }
        };
        let mut t = vec![
            ("encoder.weight", weight(vec![n, d, l], &self.enc)),
            ("encoder.bias", OwnedTensor::f32(vec![l], &self.b_enc)),
            ("decoder.weight", weight(vec![n, l, d], &self.dec)),
            ("decoder.bias", OwnedTensor::f32(vec![n, d], &self.b_dec)),
            (
                "code_normalization_id",
                OwnedTensor::i64(vec![], &[self.id()]),
            ),
            ("activation_mean", OwnedTensor::f32(vec![n, d], &mean)),
            ("activation_std", OwnedTensor::f32(vec![n, d], &std)),
            (
                "activation_global_scale",
                OwnedTensor::f32(vec![], &[scale]),
            ),
            ("target_rms", OwnedTensor::f32(vec![], &[1.0])),
        ];
        let mut cfg = serde_json::json!({
            "activation_dim": d, "dict_size": l, "num_layers": n,
            "code_normalization": self.norm, "activation_mean": null, "activation_std": null,
        });
        if let Some(th) = &self.threshold {
            let shape = if th.len() == 1 && self.norm != "DECOUPLED" {
                vec![]
            } else {
                vec![th.len()]
            };
            t.push(("threshold", OwnedTensor::f32(shape, th)));
            t.push(("k", OwnedTensor::i32(vec![], &[4])));
            cfg["k"] = 4.into();
        }
        write_safetensors(&dir.join("model.safetensors"), &t, HashMap::new()).unwrap();
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        dir.to_path_buf()
    }

    /// The fork's encode in f64 except the threshold test, which is f32 like torch's.
    pub fn reference_encode(&self, x: &[f32], norms: &[f32]) -> Vec<Vec<f32>> {
        let (n, d, l) = (self.n, self.d, self.l);
        let xn: Vec<f32> = match &self.input_norm {
            None => x.to_vec(),
            Some((mean, _, g)) => x
                .chunks_exact(n * d)
                .flat_map(|r| {
                    r.iter()
                        .zip(mean)
                        .map(|(v, m)| (v - m) * g)
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        let rows = x.len() / (n * d);
        let n_codes = if self.norm == "DECOUPLED" { n } else { 1 };
        let mut out = vec![vec![0f32; rows * l]; n_codes];
        for r in 0..rows {
            for j in 0..l {
                let mut h = self.b_enc[j] as f64;
                for m in 0..n {
                    for i in 0..d {
                        h +=
                            xn[r * n * d + m * d + i] as f64 * self.enc[(m * d + i) * l + j] as f64;
                    }
                }
                let c = h.max(0.0) as f32;
                for (k, o) in out.iter_mut().enumerate() {
                    let keep = match &self.threshold {
                        None => true,
                        Some(th) => c * norms[k * l + j] > th[k],
                    };
                    o[r * l + j] = if keep { c } else { 0.0 };
                }
            }
        }
        out
    }
}

fn dense(codes: &Codes, l: usize) -> Vec<f32> {
    let mut out = vec![0f32; codes.n_rows() * l];
    for r in 0..codes.n_rows() {
        for (j, v) in codes.active(r) {
            out[r * l + j] = v;
        }
    }
    out
}

fn cpu(cc: &Arc<Crosscoder>) -> CrosscoderEngine {
    CrosscoderEngine::new(cc.clone(), BackendKind::Cpu, &EngineOptions::default()).unwrap()
}

/// Codes agree with the reference up to f32 summation order: equal where both fire,
/// and a latent present in only one of them sits within `tol` of its cut.
fn assert_codes_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "entry {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn loads_the_fork_layout_and_encodes_relu_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::random(2, 8, 24, 1);
    let cc = Arc::new(load(&spec.save(dir.path())).unwrap());
    assert_eq!((cc.n_models, cc.d, cc.n_latents()), (2, 8, 24));
    assert_eq!(cc.meta.class, CrosscoderClass::Relu);
    assert!(cc.threshold.is_none() && cc.input_norm.is_none());
    // decoder.weight[1, 5] is the second half of interleaved row 5.
    assert_eq!(
        cc.decoder_row(1, 5),
        spec.dec[(24 + 5) * 8..(24 + 6) * 8].to_vec()
    );
    let x = values(9, 7 * 16);
    let codes = cpu(&cc).encode(&x, 7, 0).unwrap();
    assert_eq!(codes.codes.len(), 1);
    let want = spec.reference_encode(&x, &cc.norms);
    assert_codes_close(&dense(&codes.codes[0], 24), &want[0], 1e-5);
}

#[test]
fn batchtopk_threshold_applies_to_the_normalized_code_and_returns_it_unscaled() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::random(2, 8, 32, 2);
    spec.threshold = Some(vec![0.9]);
    let cc = Arc::new(load(&spec.save(dir.path())).unwrap());
    assert_eq!(cc.meta.class, CrosscoderClass::BatchTopK);
    assert_eq!(cc.meta.k, Some(4));
    // CROSSCODER normalization: the sum of the two decoder row norms.
    let norms = cc.decoder_norms();
    for (j, n) in cc.norms.iter().enumerate() {
        assert_eq!(*n, norms[0][j] + norms[1][j]);
    }
    // The fingerprint covers the threshold, which the SAE form's weights do not.
    let other = Crosscoder {
        threshold: Some(vec![0.8]),
        ..(*cc).clone()
    };
    assert_ne!(cc.fingerprint(), other.fingerprint());
    let x = values(11, 50 * 16);
    let got = cpu(&cc).encode(&x, 50, 0).unwrap();
    let want = spec.reference_encode(&x, &cc.norms);
    let g = dense(&got.codes[0], 32);
    assert_codes_close(&g, &want[0], 1e-5);
    // The threshold removed codes ReLU alone keeps, and what stays is unscaled.
    let relu = spec.clone();
    let relu_want = Spec {
        threshold: None,
        ..relu
    }
    .reference_encode(&x, &cc.norms);
    let kept = g.iter().filter(|v| **v > 0.0).count();
    let positive = relu_want[0].iter().filter(|v| **v > 0.0).count();
    assert!(kept > 0 && kept < positive, "kept {kept} of {positive}");
}

#[test]
fn decoupled_gives_one_code_per_model_and_decodes_each_with_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::random(2, 6, 20, 3);
    spec.norm = "DECOUPLED";
    spec.threshold = Some(vec![0.5, 1.5]);
    let cc = Arc::new(load(&spec.save(dir.path())).unwrap());
    assert!(cc.code_norm.decoupled());
    assert_eq!(cc.norms.len(), 40);
    let x = values(12, 30 * 12);
    let e = cpu(&cc);
    let got = e.encode(&x, 30, 0).unwrap();
    let want = spec.reference_encode(&x, &cc.norms);
    assert_eq!(got.codes.len(), 2);
    for (g, w) in got.codes.iter().zip(&want) {
        assert_codes_close(&dense(g, 20), w, 1e-5);
    }
    assert_ne!(got.codes[0], got.codes[1]);
    // Decode: model m's rows use model m's code and decoder.
    let recon = e.decode(&got).unwrap();
    for r in 0..30 {
        for m in 0..2 {
            for i in 0..6 {
                let mut v = spec.b_dec[m * 6 + i] as f64;
                for j in 0..20 {
                    v += want[m][r * 20 + j] as f64 * spec.dec[(m * 20 + j) * 6 + i] as f64;
                }
                let g = recon[r * 12 + m * 6 + i];
                assert!(
                    (g as f64 - v).abs() < 1e-4,
                    "row {r} model {m} dim {i}: {g} vs {v}"
                );
            }
        }
    }
}

#[test]
fn sae_mixed_and_none_normalizations_match_the_fork_formulas() {
    let dir = tempfile::tempdir().unwrap();
    for norm in ["SAE", "MIXED", "NONE"] {
        let mut spec = Spec::random(2, 5, 10, 4);
        spec.norm = norm;
        spec.threshold = Some(vec![0.3]);
        let cc = load(&spec.save(&dir.path().join(norm))).unwrap();
        let per = cc.decoder_norms();
        for (j, (p0, p1)) in per[0].iter().zip(&per[1]).enumerate() {
            let row: Vec<f64> = (0..2)
                .flat_map(|m| spec.dec[(m * 10 + j) * 5..(m * 10 + j + 1) * 5].to_vec())
                .map(f64::from)
                .collect();
            let sae = row.iter().map(|v| v * v).sum::<f64>().sqrt() as f32;
            let want = match norm {
                "SAE" => sae,
                "MIXED" => sae * 1.0 + (p0 + p1) * 0.1,
                _ => 1.0,
            };
            assert!(
                (cc.norms[j] - want).abs() <= 1e-6 * want,
                "{norm} latent {j}"
            );
        }
    }
}

#[test]
fn input_normalization_is_applied_before_encode_and_undone_after_decode() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::random(2, 4, 12, 5);
    let mean = values(20, 8);
    spec.input_norm = Some((mean.clone(), vec![1.0; 8], 0.25));
    let cc = Arc::new(load(&spec.save(dir.path())).unwrap());
    assert_eq!(cc.input_norm.as_ref().unwrap().scale, 0.25);
    let x = values(21, 9 * 8);
    let e = cpu(&cc);
    let got = e.encode(&x, 9, 0).unwrap();
    let want = spec.reference_encode(&x, &cc.norms);
    assert_codes_close(&dense(&got.codes[0], 12), &want[0], 1e-5);
    // No latent active: the output is the de-normalized decoder bias.
    let none = CrosscoderCodes {
        codes: vec![Codes::Csr {
            n: 1,
            row_ptr: vec![0, 0],
            indices: vec![],
            values: vec![],
        }],
    };
    let recon = e.decode(&none).unwrap();
    for i in 0..8 {
        let w = spec.b_dec[i] / (0.25 + 1e-8) + mean[i];
        assert!((recon[i] - w).abs() < 1e-6);
    }
}

#[test]
fn refuses_what_it_does_not_implement_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let case = |name: &str, spec: &Spec, edit: &dyn Fn(&Path)| -> String {
        let p = spec.save(&dir.path().join(name));
        edit(&p);
        load(&p).unwrap_err().to_string()
    };
    let base = Spec::random(2, 4, 8, 6);
    let mut neg = base.clone();
    neg.threshold = Some(vec![-1.0]);
    assert!(case("neg", &neg, &|_| {}).contains("threshold -1 is negative"));
    let mut unknown = base.clone();
    unknown.norm = "WEIRD";
    assert!(case("unknown", &unknown, &|_| {}).contains("code_normalization `WEIRD` is unknown"));
    let set_cfg = |key: &'static str, v: serde_json::Value| {
        move |p: &Path| {
            let f = p.join("config.json");
            let mut c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            c[key] = v.clone();
            std::fs::write(&f, c.to_string()).unwrap();
        }
    };
    let e = case(
        "layers",
        &base,
        &set_cfg("encoder_layers", serde_json::json!([0])),
    );
    assert!(
        e.contains("encoder_layers") && e.contains("not supported"),
        "{e}"
    );
    let e = case(
        "dec",
        &base,
        &set_cfg("num_decoder_layers", serde_json::json!(1)),
    );
    assert!(e.contains("num_decoder_layers = 1"), "{e}");
    let e = case(
        "id",
        &base,
        &set_cfg("code_normalization", serde_json::json!("SAE")),
    );
    assert!(e.contains("code_normalization_id [1] disagrees"), "{e}");
    let mut dn = base.clone();
    dn.norm = "DECOUPLED";
    dn.threshold = Some(vec![0.1, 0.1]);
    dn.input_norm = Some((vec![0.0; 8], vec![1.0; 8], 1.0));
    assert!(case("dn", &dn, &|_| {}).contains("normalizes the input twice"));
    let mut dnt = base.clone();
    dnt.norm = "DECOUPLED";
    assert!(case("dnt", &dnt, &|_| {}).contains("without a `threshold`"));
    // A wrong shape names the tensor.
    let e = case("shape", &base, &set_cfg("dict_size", serde_json::json!(9)));
    assert!(
        e.contains("encoder.weight") && e.contains("[2, 4, 9]"),
        "{e}"
    );
}

#[test]
fn folded_threshold_is_not_exact() {
    // c * norm > t (the fork, f32) against c > t / norm (folded): search for values where
    // f32 rounding makes them disagree; finding one shows the fold cannot replace the test.
    let mut found = None;
    let vals = values(77, 200_000);
    'outer: for w in vals.chunks_exact(2) {
        let norm = 0.5 + w[0].abs() * 4.0;
        let t = 0.01 + w[1].abs();
        let cut = t / norm;
        let mut c = cut;
        for _ in 0..4 {
            if (c * norm > t) != (c > cut) {
                found = Some((c, norm, t));
                break 'outer;
            }
            c = f32::from_bits(c.to_bits() + 1);
        }
    }
    let (c, norm, t) = found.expect("a disagreement exists");
    assert_ne!(c * norm > t, c > t / norm);
}

#[test]
fn prefilter_cut_never_drops_a_code_the_exact_test_keeps() {
    let vals = values(78, 100_000);
    for w in vals.chunks_exact(2) {
        let norm = 1e-3 + w[0].abs() * 10.0;
        let t = w[1].abs() * 3.0;
        let cut = prefilter_cut(t, norm);
        // Codes around the boundary, a few ulps each way.
        let mut c = f32::from_bits((t / norm).to_bits().saturating_sub(8));
        for _ in 0..16 {
            if c * norm > t {
                assert!(c > cut, "c {c} norm {norm} t {t} cut {cut}");
            }
            c = f32::from_bits(c.to_bits() + 1);
        }
    }
    assert_eq!(prefilter_cut(1.0, 0.0), f32::MAX);
    assert_eq!(prefilter_cut(0.0, 2.0), 0.0);
}

#[test]
fn apply_threshold_keeps_exactly_the_entries_above() {
    let codes = Codes::Csr {
        n: 2,
        row_ptr: vec![0, 2, 3],
        indices: vec![0, 2, 1],
        values: vec![1.0, 0.5, 2.0],
    };
    let got = apply_threshold(&codes, &[1.0, 0.5, 3.0], 1.0).unwrap();
    // 1.0*1.0 > 1 no; 0.5*3 > 1 yes; 2.0*0.5 > 1 no.
    assert_eq!(
        got,
        Codes::Csr {
            n: 2,
            row_ptr: vec![0, 1, 1],
            indices: vec![2],
            values: vec![0.5]
        }
    );
}

#[test]
fn paired_inputs_read_the_same_rows_from_per_model_dumps_and_a_stacked_array() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, d) = (13, 3);
    let base = values(30, rows * d);
    let tuned = values(31, rows * d);
    let stacked: Vec<f32> = (0..rows)
        .flat_map(|r| [&base[r * d..(r + 1) * d], &tuned[r * d..(r + 1) * d]].concat())
        .collect();
    let (pb, pt, ps) = (
        dir.path().join("b.npy"),
        dir.path().join("t.npy"),
        dir.path().join("s.npy"),
    );
    crate::io::npy::write_f32(&pb, &[rows, d], &base).unwrap();
    crate::io::npy::write_f32(&pt, &[rows, d], &tuned).unwrap();
    crate::io::npy::write_f32(&ps, &[rows, 2, d], &stacked).unwrap();
    let two = paired::Paired::open(&[pb.clone(), pt], 2, d).unwrap();
    let one = paired::Paired::open(&[ps], 2, d).unwrap();
    assert_eq!(two.read(0, rows).unwrap(), stacked);
    assert_eq!(
        one.read(4, 5).unwrap(),
        stacked[4 * 2 * d..9 * 2 * d].to_vec()
    );
    let mut seen = Vec::new();
    two.for_each_batch(4, |s, n, x| {
        seen.push((s, n));
        assert_eq!(x, &stacked[s as usize * 2 * d..(s as usize + n) * 2 * d]);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec![(0, 4), (4, 4), (8, 4), (12, 1)]);
    // Misaligned per-model dumps are refused.
    let short = dir.path().join("short.npy");
    crate::io::npy::write_f32(&short, &[rows - 1, d], &base[..(rows - 1) * d]).unwrap();
    let e = paired::Paired::open(&[pb, short], 2, d)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("align row for row"), "{e}");
}

#[test]
fn decoder_analysis_classes_follow_the_relative_norm_cutoffs() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::random(2, 4, 5, 7);
    // Latent j: base row e0 * a_j, tuned row e0 * b_j.
    let pairs = [(1.0, 0.0), (1.0, 0.15), (1.0, 1.0), (0.1, 1.0), (1.0, 3.0)];
    spec.dec = vec![0.0; 2 * 5 * 4];
    for (j, (a, b)) in pairs.iter().enumerate() {
        spec.dec[j * 4] = *a;
        spec.dec[(5 + j) * 4] = *b;
    }
    let cc = load(&spec.save(dir.path())).unwrap();
    let rows = analysis::decoder_rows(&cc).unwrap();
    let classes: Vec<_> = rows.iter().map(|r| r.class).collect();
    assert_eq!(
        classes,
        [
            LatentClass::BaseOnly,
            LatentClass::BaseOnly,
            LatentClass::Shared,
            LatentClass::TunedOnly,
            LatentClass::Other
        ]
    );
    assert!((rows[3].rel_norm - 1.0 / 1.1).abs() < 1e-6);
    assert!((rows[3].delta_norm - 0.95).abs() < 1e-6);
    assert!((rows[2].cosine - 1.0).abs() < 1e-9);
    assert!(rows[0].cosine.is_nan());
}

#[test]
fn model_view_holds_that_models_decoder_rows_and_bias() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::random(2, 4, 6, 8);
    let cc = load(&spec.save(dir.path())).unwrap();
    let v = cc.model_view(1).unwrap();
    assert_eq!((v.n_latents(), v.d_in()), (6, 4));
    for j in 0..6 {
        assert_eq!(
            v.w_dec.row_f32(j),
            spec.dec[(6 + j) * 4..(7 + j) * 4].to_vec()
        );
        for i in 0..4 {
            assert_eq!(v.w_enc.get(j, i), spec.enc[(4 + i) * 6 + j]);
        }
    }
    assert_eq!(v.b_dec, spec.b_dec[4..8].to_vec());
    let (dir1, norm) = crate::workflow::steer::unit_direction(&v, 2).unwrap();
    let row = &spec.dec[8 * 4..9 * 4];
    let n = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert!((norm - n).abs() < 1e-9);
    assert!((dir1[0] as f64 - row[0] as f64 / n).abs() < 1e-6);
    assert!(cc
        .model_view(2)
        .unwrap_err()
        .to_string()
        .contains("model 2 does not exist"));
}

#[test]
fn paired_reads_two_crosscoder_learning_caches_row_for_row() {
    // One crosscoder_learning cache per model (shard_I.memmap + .meta + config.json), with
    // shard boundaries that differ between the two: rows still pair one to one.
    let dir = tempfile::tempdir().unwrap();
    let (rows, d) = (10, 3);
    let base = values(40, rows * d);
    let tuned = values(41, rows * d);
    let write_cache = |name: &str, x: &[f32], splits: &[usize]| -> PathBuf {
        let c = dir.path().join(name);
        std::fs::create_dir_all(&c).unwrap();
        let mut start = 0;
        for (i, n) in splits.iter().enumerate() {
            let bytes: Vec<u8> = x[start * d..(start + n) * d]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            std::fs::write(c.join(format!("shard_{i}.memmap")), bytes).unwrap();
            let meta = serde_json::json!({"shape": [n, d], "dtype": "torch.float32"});
            std::fs::write(c.join(format!("shard_{i}.meta")), meta.to_string()).unwrap();
            start += n;
        }
        let cfg =
            serde_json::json!({"shard_count": splits.len(), "total_size": rows, "d_model": d});
        std::fs::write(c.join("config.json"), cfg.to_string()).unwrap();
        c
    };
    let b = write_cache("base_io", &base, &[4, 6]);
    let t = write_cache("tuned_io", &tuned, &[7, 3]);
    let p = paired::Paired::open(&[b, t], 2, d).unwrap();
    assert_eq!(p.n_rows(), rows as u64);
    let got = p.read(2, 6).unwrap();
    for r in 0..6 {
        assert_eq!(
            &got[r * 2 * d..r * 2 * d + d],
            &base[(2 + r) * d..(3 + r) * d]
        );
        assert_eq!(
            &got[r * 2 * d + d..(r + 1) * 2 * d],
            &tuned[(2 + r) * d..(3 + r) * d]
        );
    }
}

#[test]
fn bf16_weights_load_in_place_and_encode_like_their_f32_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::random(2, 8, 40, 9);
    let round = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|x| half::bf16::from_f32(*x).to_f32())
            .collect()
    };
    spec.enc = round(&spec.enc);
    spec.dec = round(&spec.dec);
    spec.threshold = Some(vec![0.6]);
    spec.bf16 = true;
    let cc = Arc::new(load(&spec.save(dir.path())).unwrap());
    assert_eq!(cc.sae.w_enc.dtype(), crate::dtype::DType::BF16);
    assert_eq!(cc.sae.w_dec.dtype(), crate::dtype::DType::BF16);
    assert!(
        cc.sae.w_enc.bytes().is_mapped(),
        "the encoder is read in place"
    );
    assert_eq!(
        cc.decoder_row(1, 3),
        spec.dec[(40 + 3) * 8..(40 + 4) * 8].to_vec()
    );
    let x = values(13, 20 * 16);
    let got = cpu(&cc).encode(&x, 20, 0).unwrap();
    let want = spec.reference_encode(&x, &cc.norms);
    assert_codes_close(&dense(&got.codes[0], 40), &want[0], 1e-5);
}

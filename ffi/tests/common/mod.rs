//! Shared by the ffi integration tests: a small SAELens v6 TopK SAE written to disk
//! (the layout docs/design.md describes), a dense reference of its arithmetic, and the
//! location of the built libraries.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A tiny TopK SAE: d = 4, L = 6, k = 2, with b_dec subtracted from the input.
pub struct Fixture {
    pub d: usize,
    pub l: usize,
    pub k: usize,
    /// Logical [L, d].
    pub w_enc: Vec<f32>,
    /// [L, d].
    pub w_dec: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub b_dec: Vec<f32>,
}

impl Fixture {
    pub fn new() -> Self {
        let (d, l) = (4, 6);
        let w_enc: Vec<f32> = (0..l * d)
            .map(|i| (((i * 5 + 3) % 9) as f32 - 4.0) * 0.25)
            .collect();
        let w_dec: Vec<f32> = (0..l * d)
            .map(|i| (((i * 7 + 1) % 11) as f32 - 5.0) * 0.125)
            .collect();
        Fixture {
            d,
            l,
            k: 2,
            w_enc,
            w_dec,
            b_enc: vec![0.0, 0.125, -0.25, 0.0, 0.5, -0.125],
            b_dec: vec![0.25, -0.5, 0.0, 0.125],
        }
    }

    /// Writes cfg.json + sae_weights.safetensors (W_enc stored [d, L] as SAELens does).
    pub fn write_saelens(&self, dir: &Path) {
        let (d, l) = (self.d, self.l);
        let mut w_enc_t = vec![0f32; d * l];
        for i in 0..l {
            for j in 0..d {
                w_enc_t[j * l + i] = self.w_enc[i * d + j];
            }
        }
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let tensors = [
            ("W_enc", vec![d, l], bytes(&w_enc_t)),
            ("W_dec", vec![l, d], bytes(&self.w_dec)),
            ("b_enc", vec![l], bytes(&self.b_enc)),
            ("b_dec", vec![d], bytes(&self.b_dec)),
        ];
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, s, b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        std::fs::create_dir_all(dir).unwrap();
        safetensors::serialize_to_file(views, None, &dir.join("sae_weights.safetensors")).unwrap();
        let cfg = serde_json::json!({
            "architecture": "topk",
            "d_in": d,
            "d_sae": l,
            "k": self.k,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": true,
            "normalize_activations": "none",
            "rescale_acts_by_decoder_norm": false,
            "metadata": {"hook_name": "blocks.0.hook_resid_post", "model_name": "fixture"}
        });
        std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
    }

    /// Dense reference encode of one row: (indices, values), top-k then ReLU, ties by index.
    pub fn encode_row(&self, x: &[f32]) -> (Vec<i32>, Vec<f32>) {
        let (d, l) = (self.d, self.l);
        let h: Vec<f64> = (0..l)
            .map(|i| {
                (0..d)
                    .map(|j| (x[j] - self.b_dec[j]) as f64 * self.w_enc[i * d + j] as f64)
                    .sum::<f64>()
                    + self.b_enc[i] as f64
            })
            .collect();
        let mut order: Vec<usize> = (0..l).collect();
        order.sort_by(|a, b| h[*b].total_cmp(&h[*a]).then(a.cmp(b)));
        let mut idx = vec![-1; self.k];
        let mut val = vec![0f32; self.k];
        for (slot, i) in order.into_iter().take(self.k).enumerate() {
            if h[i] > 0.0 {
                idx[slot] = i as i32;
                val[slot] = h[i] as f32;
            }
        }
        (idx, val)
    }

    /// Dense reference decode of one row of (index, value) pairs.
    pub fn decode_row(&self, idx: &[i32], val: &[f32]) -> Vec<f32> {
        let d = self.d;
        let mut out: Vec<f64> = self.b_dec.iter().map(|v| *v as f64).collect();
        for (i, v) in idx.iter().zip(val) {
            if *i >= 0 && *v > 0.0 {
                let row = &self.w_dec[*i as usize * d..(*i as usize + 1) * d];
                for (o, w) in out.iter_mut().zip(row) {
                    *o += *v as f64 * *w as f64;
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }
}

/// The directory holding the libsae_engine_ffi.so built for this test run: `cargo test`
/// builds every crate type of the library into `<target>/<profile>/deps` (beside the
/// test binary) but only `cargo build` copies them up to `<target>/<profile>`, where a
/// stale copy may sit.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("test binary directory").to_path_buf();
    let so = deps.join(format!(
        "{}sae_engine_ffi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        so.exists(),
        "{} is missing: build it with `cargo build -p sae-engine-ffi`",
        so.display()
    );
    deps
}

//! GPU parity: the CUDA engine against the CPU reference on random and edge-case SAEs
//! (ties, fewer than k positives, k = 1 and 512, one row, empty batch, widths not a
//! multiple of 8, NaN rows, CSR activations, statistics, steering). Without a usable GPU
//! every test prints why and passes: CI has no GPU. A build without the `cuda` feature has
//! no CUDA backend to compare (src/engine.rs tests its error).
#![cfg(feature = "cuda")]

use std::sync::Arc;

use sae_engine::cpu::reference::SaeBuilder;
use sae_engine::error::Error;
use sae_engine::{engine, Activation, BackendKind, EngineOptions};

fn gpu_or_skip(test: &str) -> bool {
    match sae_engine::cuda::available(0) {
        Ok(info) => {
            eprintln!("{test}: running on {}", info.name);
            true
        }
        Err(e) => {
            eprintln!("{test}: skipped, no usable CUDA device ({e})");
            false
        }
    }
}

#[test]
fn verify_cases_match_cpu() {
    if !gpu_or_skip("verify_cases_match_cpu") {
        return;
    }
    let results = sae_engine::verify::run(0, true).expect("verification ran");
    let failed: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    for r in &failed {
        eprintln!("FAIL {}: {:?}", r.name, r.detail);
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed",
        failed.len(),
        results.len()
    );
}

#[test]
fn missing_gpu_is_an_ordinary_error_and_auto_falls_back() {
    let sae = SaeBuilder::new(4, 2, vec![1.0; 8], vec![1.0; 8])
        .activation(Activation::TopK { k: 2 })
        .build()
        .unwrap();
    let sae = Arc::new(sae);
    match sae_engine::cuda::available(0) {
        Ok(_) => {
            // With a GPU, auto must pick it.
            let e = engine(BackendKind::Auto, sae, &EngineOptions::default()).unwrap();
            assert!(e.name().starts_with("cuda"), "{}", e.name());
        }
        Err(err) => {
            assert!(matches!(err, Error::BackendUnavailable(_)), "{err}");
            let cuda = engine(
                BackendKind::Cuda { device: 0 },
                sae.clone(),
                &EngineOptions::default(),
            );
            assert!(matches!(cuda, Err(Error::BackendUnavailable(_))));
            let auto = engine(BackendKind::Auto, sae, &EngineOptions::default()).unwrap();
            assert!(auto.name().starts_with("cpu"), "{}", auto.name());
        }
    }
}

#[test]
fn device_out_of_range_is_unavailable() {
    let n = match sae_engine::cuda::loader::device_count() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("device_out_of_range_is_unavailable: skipped ({e})");
            return;
        }
    };
    assert!(matches!(
        sae_engine::cuda::available(n),
        Err(Error::BackendUnavailable(_))
    ));
}

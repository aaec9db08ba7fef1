//! Device checks of #15 items 1 and 3 on CUDA: latent shards on one GPU against the
//! unsharded CUDA engine, and the memory plans (encode-only engines, device-memory limits).
//! They follow cuda_parity's convention: listed as ignored ("needs a CUDA GPU") unless the
//! build saw a GPU or SAE_REQUIRE_GPU=1, and then failing when no GPU is usable.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use sae_engine::cpu::reference::SaeBuilder;
use sae_engine::{engine, Activation, BackendKind, Engine, EngineOptions};

/// The device's description, or a failure naming the test: these tests only run where a
/// GPU is expected (see the module doc).
fn gpu(test: &str) {
    match sae_engine::cuda::available(0) {
        Ok(info) => println!("{test}: running on {}", info.name),
        Err(e) => panic!("{test} needs a CUDA GPU and none is usable: {e}"),
    }
}

/// A random SAE for the device checks below (SplitMix64 values in -1..1).
fn random_sae(l: usize, d: usize, a: Activation, seed: u64) -> sae_engine::Sae {
    let mut rng = sae_engine::workflow::rng::Rng::new(seed);
    let mut v =
        |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect() };
    let (w_enc, w_dec, b_enc) = (v(l * d), v(l * d), v(l));
    let threshold: Vec<f32> = v(l).into_iter().map(|t| t.abs() * 0.5).collect();
    let mut b = SaeBuilder::new(l, d, w_enc, w_dec)
        .b_enc(b_enc)
        .activation(a);
    if a == Activation::JumpRelu {
        b = b.threshold(threshold);
    }
    b.build().unwrap()
}

/// #15 item 3 on one device: 2 and 3 latent shards on cuda:0 give the unsharded CUDA
/// engine's codes and statistics bit for bit (the GEMM algorithm pinned with SAE_GEMM=cublas
/// when the device check runs this), decode within f32 rounding.
#[test]
#[cfg_attr(not(sae_gpu_tests), ignore = "needs a CUDA GPU")]
fn latent_shards_on_one_gpu_equal_the_unsharded_engine() {
    gpu("latent_shards_on_one_gpu_equal_the_unsharded_engine");
    use sae_engine::latent_split::ShardedEngine;
    use sae_engine::LatentStats;
    let gpu = BackendKind::Cuda { device: 0 };
    let opts = EngineOptions::default();
    for a in [Activation::TopK { k: 32 }, Activation::JumpRelu] {
        let sae = Arc::new(random_sae(3000, 96, a, 7));
        let rows = 300;
        let x: Vec<f32> = (0..rows * 96)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 4.0)
            .collect();
        let whole = engine(gpu, sae.clone(), &opts).unwrap();
        let want = whole.encode(&x, rows, 0).unwrap();
        let dec_want = whole.decode(&want.codes, None).unwrap();
        let mut st_want = LatentStats::new(sae.fingerprint(), 3000);
        whole.accumulate(&mut st_want, &want.codes, None).unwrap();
        for n in [2, 3] {
            let parts = ShardedEngine::open(sae.clone(), &vec![gpu; n], &opts).unwrap();
            let got = parts.encode(&x, rows, 0).unwrap();
            assert_eq!(got.codes, want.codes, "{a:?}, {n} shards: codes");
            let dec = parts.decode(&want.codes, None).unwrap();
            for (i, (g, w)) in dec.iter().zip(&dec_want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "decode {i}: {g} vs {w}"
                );
            }
            let mut st = LatentStats::new(sae.fingerprint(), 3000);
            parts.accumulate(&mut st, &want.codes, None).unwrap();
            assert_eq!(st, st_want, "{a:?}, {n} shards: statistics");
        }
    }
}

/// #15 item 1 on a device: an encode-only engine encodes like the full one and refuses to
/// decode (W_dec never went to the device); a memory limit below the weights is refused
/// before upload; a limit that only shrinks the workspace changes no result.
#[test]
#[cfg_attr(not(sae_gpu_tests), ignore = "needs a CUDA GPU")]
fn memory_plans_on_a_device() {
    gpu("memory_plans_on_a_device");
    use sae_engine::Workload;
    let gpu = BackendKind::Cuda { device: 0 };
    let sae = Arc::new(random_sae(4096, 256, Activation::TopK { k: 16 }, 3));
    let x: Vec<f32> = (0..64 * 256)
        .map(|i| ((i % 97) as f32 - 48.0) / 16.0)
        .collect();
    let full = engine(gpu, sae.clone(), &EngineOptions::default()).unwrap();
    let want = full.encode(&x, 64, 0).unwrap();

    let enc_only = EngineOptions {
        workload: Workload::Encode,
        ..EngineOptions::default()
    };
    let e = engine(gpu, sae.clone(), &enc_only).unwrap();
    assert_eq!(e.encode(&x, 64, 0).unwrap(), want);
    let err = e.decode(&want.codes, None).unwrap_err().to_string();
    assert!(err.contains("encode only"), "{err}");

    // Weights: 2 x 4 MiB f32. A 6 MiB limit holds neither both matrices nor the encoder
    // with the headroom; 80 MiB leaves a workspace far below the default 1 GiB.
    let tiny = EngineOptions {
        device_memory_limit: Some(6 << 20),
        ..EngineOptions::default()
    };
    let err = engine(gpu, sae.clone(), &tiny)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("do not fit"), "{err}");
    let small = EngineOptions {
        device_memory_limit: Some(80 << 20),
        ..EngineOptions::default()
    };
    let e = engine(gpu, sae, &small).unwrap();
    assert_eq!(e.encode(&x, 64, 0).unwrap(), want);
}

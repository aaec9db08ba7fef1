//! GPU parity: the CUDA engine against the CPU reference on random and edge-case SAEs
//! (ties, fewer than k positives, k = 1 and 512, one row, empty batch, widths not a
//! multiple of 8, NaN rows, CSR activations, statistics, steering), and the top-k select
//! kernels (f32 scores, bf16 upper bounds) alone against a sorted CPU reference.
//!
//! Tests that need a GPU are compiled as ignored ("needs a CUDA GPU", counted in cargo's
//! summary) unless the build saw a GPU or SAE_REQUIRE_GPU=1 (see build.rs, `sae_gpu_tests`);
//! when they run without a usable GPU they fail. The other tests here run everywhere and
//! fail under SAE_REQUIRE_GPU=1 when there is no GPU, so a device check cannot pass on a
//! machine whose GPU is not usable.
//! A build without the `cuda` feature has no CUDA backend to compare (src/engine.rs tests
//! its error).
#![cfg(feature = "cuda")]

use std::sync::Arc;

use cudarc::driver::PushKernelArg;
use sae_engine::cpu::reference::SaeBuilder;
use sae_engine::cuda::device::{DeviceInfo, Gpu};
use sae_engine::error::Error;
use sae_engine::workflow::rng::Rng;
use sae_engine::{engine, Activation, BackendKind, EngineOptions};

/// SAE_REQUIRE_GPU=1: the caller (tools/gpu-check.sh) asks for a GPU; its absence is a failure.
fn gpu_required() -> bool {
    std::env::var_os("SAE_REQUIRE_GPU").is_some_and(|v| v == "1")
}

/// Device 0 for a test that needs it: panics with the reason when none is usable (such a
/// test only runs where the build saw a GPU or SAE_REQUIRE_GPU=1 asked for one).
fn gpu(test: &str) -> DeviceInfo {
    match sae_engine::cuda::available(0) {
        Ok(info) => {
            println!("{test}: running on {}", info.name);
            info
        }
        Err(e) => panic!("{test} needs a CUDA GPU and none is usable: {e}"),
    }
}

#[test]
#[cfg_attr(not(sae_gpu_tests), ignore = "needs a CUDA GPU")]
fn verify_cases_match_cpu() {
    gpu("verify_cases_match_cpu");
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
            assert!(
                !gpu_required(),
                "SAE_REQUIRE_GPU=1 but no usable CUDA device: {err}"
            );
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
    // Without a driver every device is out of range; with one, the first past the count.
    let n = match sae_engine::cuda::loader::device_count() {
        Ok(n) => n,
        Err(e) => {
            assert!(!gpu_required(), "SAE_REQUIRE_GPU=1 but no CUDA driver: {e}");
            0
        }
    };
    assert!(matches!(
        sae_engine::cuda::available(n),
        Err(Error::BackendUnavailable(_))
    ));
}

/// Threads per block of the select kernel (TOPK_THREADS in kernels/topk.cu).
const SELECT_THREADS: u32 = 256;

/// Which select kernel: f32 scores, or bf16 scores read as the upper bound s + 2^-7 |s|
/// (kernels/topk.cu, ScoreBF16Upper) whose top k the bf16 path later rescores.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scores {
    F32,
    Bf16Upper,
}

/// The top-k of one row of pre-activations h = s + b (s read as `kind` reads it): positive
/// values only, larger value first and equal values by smaller latent, padded with
/// (-1, 0.0) to k. Scores are bf16-exact in the test, and 2^-7 |s| is exact.
fn reference_row(s: &[f32], b: &[f32], k: usize, kind: Scores) -> (Vec<i32>, Vec<f32>) {
    let read = |s: f32| match kind {
        Scores::F32 => s,
        Scores::Bf16Upper => s + s.abs() * 0.0078125,
    };
    let mut h: Vec<(f32, usize)> = s
        .iter()
        .zip(b)
        .enumerate()
        .map(|(l, (s, b))| (read(*s) + b, l))
        .filter(|(h, _)| *h > 0.0)
        .collect();
    h.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    h.truncate(k);
    let mut idx: Vec<i32> = h.iter().map(|(_, l)| *l as i32).collect();
    let mut val: Vec<f32> = h.iter().map(|(v, _)| *v).collect();
    idx.resize(k, -1);
    val.resize(k, 0.0);
    (idx, val)
}

/// The encoder's selection on the GPU, kernels alone: `scores` ([rows, cols] row-major) in
/// tiles of `tile` columns (a multiple of 128), each copied as f32 or bf16 into a scratch of
/// row stride `tile` as the GEMM leaves it, passed through topk_select_f32 / _bf16 with bias
/// `b`, then topk_finish_f32 (which turns the running keys into codes for either kind).
/// Returns indices and values [rows, k].
fn gpu_select(
    gpu: &Gpu,
    scores: &[f32],
    b: &[f32],
    (rows, cols, k, tile): (usize, usize, usize, usize),
    kind: Scores,
) -> (Vec<i32>, Vec<f32>) {
    assert!(tile % 128 == 0 && k >= 1);
    // Per 128-latent block: the largest bias, the kernel's skip bound.
    let bmax: Vec<f32> = b
        .chunks(128)
        .map(|c| c.iter().copied().fold(f32::MIN, f32::max))
        .collect();
    let b_dev = gpu.upload(b).unwrap();
    let bmax_dev = gpu.upload(&bmax).unwrap();
    let state = gpu.alloc(rows * k * 8).unwrap();
    let count = gpu.alloc(rows * 4).unwrap();
    gpu.zero(count.ptr, rows * 4).unwrap();
    let bad = gpu.upload(&[i32::MAX]).unwrap();
    let scratch = gpu.alloc(rows * tile * 4).unwrap();
    let select = gpu
        .kernel(match kind {
            Scores::F32 => "topk_select_f32",
            Scores::Bf16Upper => "topk_select_bf16",
        })
        .unwrap();
    let (null, ld, k32) = (0u64, tile as i64, k as i32);
    for l0 in (0..cols).step_by(tile) {
        let t = tile.min(cols - l0);
        let mut host = vec![f32::NAN; rows * tile];
        for r in 0..rows {
            host[r * tile..r * tile + t].copy_from_slice(&scores[r * cols + l0..r * cols + l0 + t]);
        }
        match kind {
            Scores::F32 => gpu.htod(scratch.ptr, &host).unwrap(),
            Scores::Bf16Upper => {
                let bits: Vec<u16> = host
                    .iter()
                    .map(|v| half::bf16::from_f32(*v).to_bits())
                    .collect();
                gpu.htod(scratch.ptr, &bits).unwrap()
            }
        }
        let (t32, l032) = (t as i32, l0 as u32);
        let mut launch = gpu.stream.launch_builder(select);
        launch
            .arg(&scratch.ptr)
            .arg(&ld)
            .arg(&t32)
            .arg(&l032)
            .arg(&b_dev.ptr)
            .arg(&null)
            .arg(&bmax_dev.ptr)
            .arg(&null)
            .arg(&state.ptr)
            .arg(&count.ptr)
            .arg(&k32)
            .arg(&bad.ptr);
        // SAFETY: topk_select_<f32|bf16>(scores, ld, tile_len, latent0, b_enc, scale = null,
        // bmax, smax = null, state, count, k, bad): scratch is rows x ld scores (f32 or bf16,
        // rows 16-byte aligned as ld is a multiple of 128) with t valid columns,
        // b_enc covers all cols and bmax their 128-blocks, state rows x k u64 and count rows
        // i32 (zeroed before the first tile), bad one i32.
        unsafe { launch.launch(Gpu::per_row(rows, SELECT_THREADS)) }.unwrap();
        // The scratch is rewritten for the next tile: wait for this pass.
        gpu.sync().unwrap();
    }
    let idx = gpu.alloc(rows * k * 4).unwrap();
    let val = gpu.alloc(rows * k * 4).unwrap();
    let fin = gpu.kernel("topk_finish_f32").unwrap();
    let r32 = rows as i32;
    let mut launch = gpu.stream.launch_builder(fin);
    launch
        .arg(&state.ptr)
        .arg(&count.ptr)
        .arg(&r32)
        .arg(&k32)
        .arg(&idx.ptr)
        .arg(&val.ptr);
    // SAFETY: topk_finish_f32(state, count, rows, k, idx_out, val_out): all [rows, k] / [rows].
    unsafe { launch.launch(gpu.grid_for(rows * k, 256)) }.unwrap();
    let mut flag = [0i32];
    gpu.dtoh(&mut flag, bad.ptr).unwrap();
    assert_eq!(flag[0], i32::MAX, "finite inputs flagged non-finite");
    let (mut i, mut v) = (vec![0i32; rows * k], vec![0f32; rows * k]);
    gpu.dtoh(&mut i, idx.ptr).unwrap();
    gpu.dtoh(&mut v, val.ptr).unwrap();
    (i, v)
}

/// Scores drawn from a few quarter steps so that ties are common, with about `positive`
/// of the pre-activations above zero.
fn tie_heavy(r: &mut Rng, n: usize, positive: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let steps = 1 + r.below(8) as i32;
            let sign = if r.uniform() < positive { 1.0 } else { -1.0 };
            sign * steps as f32 * 0.25
        })
        .collect()
}

#[test]
#[cfg_attr(not(sae_gpu_tests), ignore = "needs a CUDA GPU")]
fn select_kernel_matches_a_sorted_reference() {
    gpu("select_kernel_matches_a_sorted_reference");
    let gpu = Gpu::open(0).unwrap();
    let mut r = Rng::new(20240613);
    // (rows, cols, k, tile): k = 1, k = cols, one latent, several tiles, and a first tile
    // with more survivors than shared memory holds (the radix-select path).
    let mut cases = vec![
        (3, 1, 1, 128),
        (5, 200, 200, 256),
        (4, 512, 512, 128),
        (2, 6000, 64, 6016),
        (7, 3000, 1, 1024),
    ];
    for _ in 0..12 {
        let rows = 1 + r.below(33);
        let cols = 1 + r.below(5000);
        let k = match r.below(3) {
            0 => 1,
            1 => cols.min(512),
            _ => 1 + r.below(cols.min(512)),
        };
        let tile = [128, 1024, 4096][r.below(3)];
        cases.push((rows, cols, k, tile));
    }
    for (rows, cols, k, tile) in cases {
        let positive = if cols > 2048 { 0.9 } else { 0.5 };
        let scores = tie_heavy(&mut r, rows * cols, positive);
        // Biases of 0 or a quarter: the pre-activation moves by whole steps, ties survive.
        let b: Vec<f32> = (0..cols).map(|_| r.below(2) as f32 * 0.25).collect();
        for kind in [Scores::F32, Scores::Bf16Upper] {
            let (gi, gv) = gpu_select(&gpu, &scores, &b, (rows, cols, k, tile), kind);
            for row in 0..rows {
                let s = &scores[row * cols..(row + 1) * cols];
                let (ri, rv) = reference_row(s, &b, k, kind);
                let at = row * k..(row + 1) * k;
                assert_eq!(
                    (&gi[at.clone()], &gv[at]),
                    (&ri[..], &rv[..]),
                    "{kind:?} rows {rows} cols {cols} k {k} tile {tile}: row {row}"
                );
            }
        }
    }
}

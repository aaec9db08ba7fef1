//! `sae-bench run`: per-kernel timings on device-generated random SAEs, the cuBLAS
//! GEMM-only baseline on the same tiles, and end-to-end streaming of a dump file.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use sae_engine::cuda::device::DevBuf;
use sae_engine::cuda::encode::{self, Precision, Workspace};
use sae_engine::cuda::gemm::{GemmMode, SearchRecord};
use sae_engine::cuda::launch::{self, DecodeExtras, DeviceStats};
use sae_engine::cuda::weights::DeviceSae;
use sae_engine::cuda::{CudaEngine, CudaOptions, Gpu};
use sae_engine::error::{Error, Result};
use sae_engine::matrix::{Bytes, Layout, Matrix};
use sae_engine::Engine;
use sae_engine::{Activation, DType, Normalization, Sae};
use serde_json::{json, Value};

/// A benchmark shape.
pub struct Shape {
    pub name: &'static str,
    pub n: usize,
    pub d: usize,
    pub l: usize,
    pub k: usize,
    pub dtype: DType,
    pub precision: Precision,
    /// Rows per chunk and latents per tile forced (None: planned from a 1 GiB workspace).
    /// The forced variants keep a tile's scores (rows x tile x 4 bytes) inside L2.
    pub force: Option<(usize, usize)>,
    /// bf16 scores forced on or off (None: the planner's size rule).
    pub scores: Option<bool>,
    /// How the encoder GEMM picks its algorithm.
    pub gemm: GemmMode,
    /// Double-buffered scores, the top-k pass on a second stream (half-width tiles).
    pub overlap: bool,
    /// Also time the GEMM on all-zero weights and activations: the earlier PyTorch baselines'
    /// cuBLAS figures were taken on zeros, which draw less power and hold higher clocks than
    /// random data.
    pub zero_data_gemm: bool,
}

/// The paper's shape: 4096 tokens, d = 4096, 2^21 latents, k = 64, bf16, fast precision.
const PAPER: Shape = Shape {
    name: "paper",
    n: 4096,
    d: 4096,
    l: 1 << 21,
    k: 64,
    dtype: DType::BF16,
    precision: Precision::Fast,
    force: None,
    scores: None,
    gemm: GemmMode::Auto,
    overlap: false,
    zero_data_gemm: true,
};

/// The paper's shape with L = 2^18 (the middle size of BENCHMARKS.md's GPU tables).
const L262K: Shape = Shape {
    name: "l262k",
    l: 1 << 18,
    zero_data_gemm: false,
    ..PAPER
};

/// The default set: the paper shape first, then the other shapes of BENCHMARKS.md's GPU tables.
pub const SHAPES: &[Shape] = &[
    PAPER,
    // cuBLAS's own algorithm choice (no search), the path measured before the search existed.
    Shape {
        name: "paper-cublas",
        gemm: GemmMode::Cublas,
        zero_data_gemm: false,
        ..PAPER
    },
    Shape {
        name: "paper-overlap",
        overlap: true,
        zero_data_gemm: false,
        ..PAPER
    },
    Shape {
        name: "paper-r1024-t8k",
        force: Some((1024, 8192)),
        zero_data_gemm: false,
        ..PAPER
    },
    Shape {
        name: "paper-r2048-t4k",
        force: Some((2048, 4096)),
        zero_data_gemm: false,
        ..PAPER
    },
    // Same shapes with the other scores scratch: both sides of the size rule in one run.
    Shape {
        name: "paper-f32scores",
        scores: Some(false),
        zero_data_gemm: false,
        ..PAPER
    },
    Shape {
        name: "l262k-bf16scores",
        scores: Some(true),
        ..L262K
    },
    L262K,
    Shape {
        name: "l65k",
        l: 1 << 16,
        ..L262K
    },
    Shape {
        name: "qwen",
        d: 3584,
        l: 1 << 17,
        ..L262K
    },
    Shape {
        name: "f32-tf32",
        dtype: DType::F32,
        ..L262K
    },
    Shape {
        name: "l65k-exact",
        l: 1 << 16,
        precision: Precision::Exact,
        ..L262K
    },
];

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e}"))
}

/// Median of the device times of `reps` runs of `f` (after one warm-up run).
fn time_ms(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    gpu.sync()?;
    gpu.median_ms(reps, f)
}

fn free_mem(gpu: &Gpu) -> Result<usize> {
    Ok(gpu.ctx.mem_get_info().map_err(err("memory info"))?.0)
}

/// Peak matrix rate for the GEMM arithmetic, from the card's bf16 dense peak.
fn gemm_peak(bf16_peak: f64, dtype: DType, precision: Precision) -> f64 {
    match (dtype, precision) {
        (DType::F32, Precision::Fast) => bf16_peak / 2.0,
        (DType::BF16 | DType::F16, Precision::Fast) => bf16_peak,
        // Plain f32 FMA units: 67 TFLOP/s on H100/H200 SXM, ~1/15 of the bf16 tensor rate.
        _ => bf16_peak * 67.0 / 989.0,
    }
}

/// Seeds of the device-generated weights and activations.
const WEIGHT_SEED: u64 = 0xbe7c4;
const INPUT_SEED: u64 = 0x1234;

fn bench_shape(gpu: &Gpu, s: &Shape, reps: usize) -> Result<Value> {
    let peaks = gpu.info.peaks();
    let free0 = free_mem(gpu)?;
    let sae = DeviceSae::random_topk(gpu, s.l, s.d, s.k, s.dtype, WEIGHT_SEED)?;
    gpu.sync()?;
    let free1 = free_mem(gpu)?;
    let plan = match s.force {
        Some((rows, tile)) => encode::plan(&sae, s.precision, 1 << 30, rows, Some(tile), s.scores)?,
        None => encode::plan(&sae, s.precision, 1 << 30, s.n, None, s.scores)?,
    };
    let plan = if s.overlap {
        plan.double_buffered()
    } else {
        plan
    };
    let ws = Workspace::new(gpu, &sae, s.precision, plan, s.gemm)?;
    let rows = plan.rows.min(s.n);
    let t = time_encode(gpu, &sae, &ws, s, rows, reps)?;
    let codes = last_codes(gpu, &sae, &ws, s, rows)?;
    let flops = 2.0 * s.n as f64 * s.d as f64 * s.l as f64;
    let beyond = free1.saturating_sub(t.free_after);
    let dec = time_decode(gpu, &sae, &ws, &codes, s, rows, reps)?;
    let st = time_stats(gpu, &codes, s, rows, reps)?;
    // Steering one latent into the decoded batch.
    let steer = time_ms(gpu, reps, || {
        launch::steer(gpu, &sae, dec.out.ptr, rows, 7, 0.5)
    })?;
    let steer_tbs = (rows * s.d * 8) as f64 / (steer * 1e-3) / 1e12;

    let gemm_pk = peaks.map(|(p, _)| gemm_peak(p, s.dtype, s.precision));
    let (enc, gemm) = (t.encode_ms, t.gemm_ms);
    let v = json!({
        "shape": { "name": s.name, "n": s.n, "d": s.d, "l": s.l, "k": s.k, "dtype": s.dtype, "precision": s.precision },
        "plan": plan,
        "gemm_mode": s.gemm,
        "gemm_searches": t.searches,
        "weights_bytes": free0.saturating_sub(free1),
        "device_bytes_beyond_weights": beyond,
        "workspace_bytes": ws.bytes(),
        "bf16_scores": ws.half_scores,
        "candidates_per_row": ws.k2,
        "uncertified_row": (codes.flags[1] != i32::MAX).then_some(codes.flags[1]),
        "encode_ms": enc,
        "gemm_only_ms": gemm,
        "gemm_only_zero_data_ms": t.gemm_zero_ms,
        "topk_overhead_ms": enc - gemm,
        "encode_tflops": flops / (enc * 1e-3) / 1e12,
        "gemm_tflops": flops / (gemm * 1e-3) / 1e12,
        "encode_frac_peak": gemm_pk.map(|p| flops / (enc * 1e-3) / 1e12 / p),
        "active_per_row": codes.active as f64 / rows as f64,
        "decode_ms": dec.ms,
        "decode_gathered_tbs": dec.tbs,
        "decode_frac_peak_bw": peaks.map(|(_, bw)| dec.tbs / bw),
        "decode_with_metrics_ms": dec.with_metrics_ms,
        "stats_models": STATS_MODELS,
        "stats_ms": st,
        "stats_frac_of_encode": st / enc,
        "steer_ms": steer,
        "steer_tbs": steer_tbs,
    });
    crate::outln!(
        "{:<16} encode {:8.2} ms ({:6.1} TFLOP/s) | GEMM only {:8.2} ms | top-k +{:6.2} ms | decode {:6.3} ms ({:5.2} TB/s) | stats x{STATS_MODELS} {:6.3} ms ({:.2}% of encode) | steer {:6.3} ms | mem beyond weights {:.0} MiB",
        s.name,
        enc,
        flops / (enc * 1e-3) / 1e12,
        gemm,
        enc - gemm,
        dec.ms,
        dec.tbs,
        st,
        100.0 * st / enc,
        steer,
        beyond as f64 / (1u64 << 20) as f64
    );
    if let Some(z) = t.gemm_zero_ms {
        crate::outln!(
            "{:<16}   GEMM only on all-zero data {:.2} ms ({:.1} TFLOP/s)",
            "",
            z,
            flops / (z * 1e-3) / 1e12
        );
    }
    print_searches(&t.searches);
    Ok(v)
}

/// Models whose codes one statistics launch accumulates (the same batch each time).
const STATS_MODELS: usize = 9;

/// Encode timings of one shape: the whole encode, the GEMM alone, and the GEMM on
/// all-zero data when the shape asks for it.
struct EncodeTimes {
    encode_ms: f64,
    gemm_ms: f64,
    gemm_zero_ms: Option<f64>,
    /// The GEMM algorithm searches the first encode ran.
    searches: Vec<SearchRecord>,
    /// Free device memory after the first encode (workspace and GEMM scratch allocated).
    free_after: usize,
}

fn time_encode(
    gpu: &Gpu,
    sae: &DeviceSae,
    ws: &Workspace,
    s: &Shape,
    rows: usize,
    reps: usize,
) -> Result<EncodeTimes> {
    let searches_before = gpu.gemm.records().len();
    gpu.fill_random(DType::F32, ws.x32.ptr, rows * s.d, INPUT_SEED, 1.0)?;
    let chunks = s.n.div_ceil(rows);
    let bad = ws.bad.ptr;
    let all_chunks = |gemm_only: bool| {
        time_ms(gpu, reps, || {
            for _ in 0..chunks {
                encode::encode_topk_chunk(gpu, sae, ws, rows, s.k, gemm_only, bad)?;
            }
            Ok(())
        })
    };
    let encode_ms = all_chunks(false)?;
    let free_after = free_mem(gpu)?;
    let searches: Vec<_> = gpu.gemm.records().split_off(searches_before);
    let gemm_ms = all_chunks(true)?;
    let gemm_zero_ms = if s.zero_data_gemm {
        gpu.zero(sae.w_enc.buf.ptr, sae.w_enc.buf.bytes)?;
        gpu.zero(ws.x32.ptr, rows * s.d * 4)?;
        let t = all_chunks(true)?;
        // Back to the random data the rest of this shape measures.
        sae.refill_random_encoder(gpu, WEIGHT_SEED)?;
        gpu.fill_random(DType::F32, ws.x32.ptr, rows * s.d, INPUT_SEED, 1.0)?;
        Some(t)
    } else {
        None
    };
    Ok(EncodeTimes {
        encode_ms,
        gemm_ms,
        gemm_zero_ms,
        searches,
        free_after,
    })
}

/// The codes of one encoded chunk, on the device and copied to the host.
struct Codes<'a> {
    idx: &'a DevBuf,
    val: &'a DevBuf,
    host_idx: Vec<i32>,
    /// [non-finite row, uncertified row] of the encode.
    flags: [i32; 2],
    /// Selected (non-negative) indices.
    active: usize,
}

/// Re-runs the full encode so the workspace holds codes for the decode and statistics.
fn last_codes<'a>(
    gpu: &Gpu,
    sae: &DeviceSae,
    ws: &'a Workspace,
    s: &Shape,
    rows: usize,
) -> Result<Codes<'a>> {
    encode::encode_topk_chunk(gpu, sae, ws, rows, s.k, false, ws.bad.ptr)?;
    let (idx, val) = match (&ws.idx, &ws.val) {
        (Some(i), Some(v)) => (i, v),
        _ => return Err(Error::Cuda("top-k workspace without outputs".into())),
    };
    let mut host_idx = vec![0i32; rows * s.k];
    gpu.dtoh(&mut host_idx, idx.ptr)?;
    // The bf16-score path's selection must be certified here, or the engine would have
    // re-encoded the chunk.
    let mut flags = [0i32; 2];
    gpu.dtoh(&mut flags, ws.bad.ptr)?;
    let active = host_idx.iter().filter(|i| **i >= 0).count();
    Ok(Codes {
        idx,
        val,
        host_idx,
        flags,
        active,
    })
}

/// Decode timings, and the decoded batch (steering writes into it).
struct DecodeTimes {
    ms: f64,
    /// Decoder rows gathered per second, TB/s.
    tbs: f64,
    with_metrics_ms: f64,
    out: DevBuf,
}

fn time_decode(
    gpu: &Gpu,
    sae: &DeviceSae,
    ws: &Workspace,
    c: &Codes,
    s: &Shape,
    rows: usize,
    reps: usize,
) -> Result<DecodeTimes> {
    let row_ptr: Vec<i64> = (0..=rows).map(|r| (r * s.k) as i64).collect();
    let rp = gpu.upload(&row_ptr)?;
    let out = gpu.alloc(rows * s.d * 4)?;
    let (idx, val) = (c.idx.ptr, c.val.ptr);
    let ms = time_ms(gpu, reps, || {
        let ex = DecodeExtras::default();
        launch::decode(gpu, sae, rows, rp.ptr, idx, val, out.ptr, ex)
    })?;
    let gathered = c.active as f64 * s.d as f64 * s.dtype.size() as f64;
    let tbs = gathered / (ms * 1e-3) / 1e12;
    let metrics = gpu.alloc(rows * 32)?;
    let with_metrics_ms = time_ms(gpu, reps, || {
        let ex = DecodeExtras {
            x: ws.x32.ptr,
            metrics: metrics.ptr,
            ..Default::default()
        };
        launch::decode(gpu, sae, rows, rp.ptr, idx, val, out.ptr, ex)
    })?;
    Ok(DecodeTimes {
        ms,
        tbs,
        with_metrics_ms,
        out,
    })
}

/// Statistics over [`STATS_MODELS`] models' codes (the same batch each time) in one launch.
fn time_stats(gpu: &Gpu, c: &Codes, s: &Shape, rows: usize, reps: usize) -> Result<f64> {
    let models = STATS_MODELS;
    let stats = DeviceStats::new(gpu, models, s.l)?;
    let all_idx = gpu.alloc(models * rows * s.k * 4)?;
    let all_val = gpu.alloc(models * rows * s.k * 4)?;
    let mut hval = vec![0f32; rows * s.k];
    gpu.dtoh(&mut hval, c.val.ptr)?;
    for m in 0..models {
        gpu.htod(all_idx.at(m * rows * s.k * 4), &c.host_idx)?;
        gpu.htod(all_val.at(m * rows * s.k * 4), &hval)?;
    }
    let all_rp: Vec<i64> = (0..=models * rows).map(|r| (r * s.k) as i64).collect();
    let all_rp = gpu.upload(&all_rp)?;
    let row_model: Vec<i32> = (0..models * rows).map(|r| (r / rows) as i32).collect();
    let row_model = gpu.upload(&row_model)?;
    time_ms(gpu, reps, || {
        stats.launch(
            gpu,
            models * rows,
            all_rp.ptr,
            all_idx.ptr,
            all_val.ptr,
            0,
            row_model.ptr,
        )
    })
}

/// One line per GEMM algorithm search: the candidates tried and the one chosen.
fn print_searches(searches: &[SearchRecord]) {
    for r in searches {
        let tried: Vec<String> = r
            .candidates
            .iter()
            .map(|(name, t)| match t {
                Ok(ms) => format!("{name} {ms:.2} ms"),
                Err(e) => format!("{name} dropped ({e})"),
            })
            .collect();
        crate::outln!(
            "{:<16}   GEMM search ({:?}, {}x{}x{}): chose {} of [{}]",
            "",
            r.mode,
            r.spec.m,
            r.spec.n,
            r.spec.k,
            r.chosen,
            tried.join(", ")
        );
    }
}

/// A host SAE with random bf16 weights (tied: encoder and decoder share the bytes).
fn host_sae(l: usize, d: usize, k: usize) -> Result<Sae> {
    let n = l * d;
    let mut bytes = vec![0u8; n * 2];
    let scale = 1.0 / (d as f32).sqrt();
    bytes
        .par_chunks_mut(1 << 20)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = sae_engine::verify::Rng::new(0x77 + c as u64);
            for e in chunk.chunks_exact_mut(2) {
                e.copy_from_slice(
                    &half::bf16::from_f32(rng.unit() * scale)
                        .to_bits()
                        .to_le_bytes(),
                );
            }
        });
    let b = Bytes::Owned(Arc::new(bytes));
    let w = Matrix::new(b, DType::BF16, l, d, Layout::RowMajor)?;
    let mut rng = sae_engine::verify::Rng::new(5);
    let sae = Sae {
        meta: sae_engine::sae::SaeMeta {
            format: sae_engine::Format::SaeLens,
            source: "<sae-bench random>".into(),
            architecture: "topk".into(),
            hook_name: None,
            hook_layer: None,
            model_name: None,
            dtype: DType::BF16,
            conventions: Vec::new(),
            warnings: Vec::new(),
        },
        w_enc: w.clone(),
        w_dec: w,
        b_enc: rng.vec(l, 0.01),
        b_dec: vec![0.0; d],
        threshold: None,
        activation: Activation::TopK { k },
        subtract_b_dec: false,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    };
    sae.validate()?;
    Ok(sae)
}

/// Streams an f32 .npy dump through the engine (reader thread + pinned double buffers)
/// and compares with encoding the same batches from memory.
fn bench_stream(device: usize, scratch: Option<&Path>) -> Result<Value> {
    let (l, d, k, batch, batches) = (1usize << 19, 4096usize, 64usize, 4096usize, 8usize);
    let t0 = Instant::now();
    let sae = Arc::new(host_sae(l, d, k)?);
    let engine = CudaEngine::new(
        device,
        sae,
        CudaOptions {
            precision: Precision::Fast,
            tile_latents: None,
            max_rows: 4096,
            workspace_bytes: 1 << 30,
            bf16_scores: None,
            gemm: GemmMode::Auto,
            overlap: false,
            force_nvrtc: false,
        },
    )?;
    let setup_s = t0.elapsed().as_secs_f64();
    let dir = scratch
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("sae-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("acts.npy");
    let mut rng = sae_engine::verify::Rng::new(9);
    let x = rng.vec(batch * batches * d, 1.0);
    sae_engine::io::npy::write_f32(&path, &[batch * batches, d], &x)?;
    // In-memory reference rate: the same batches, already in RAM.
    engine.encode(&x[..batch * d], batch, 0)?;
    let t = Instant::now();
    for b in 0..batches {
        engine.encode(
            &x[b * batch * d..(b + 1) * batch * d],
            batch,
            (b * batch) as u64,
        )?;
    }
    let mem_s = t.elapsed().as_secs_f64();
    drop(x);
    let dump = sae_engine::Dump::open(&path)?;
    let mut rows = 0u64;
    let rep = sae_engine::cuda::prefetch::encode_dump(&engine, &dump, batch, |b, e| {
        rows += b.rows as u64;
        let _ = e;
        Ok(())
    })?;
    drop(dump);
    let _ = std::fs::remove_dir_all(&dir);
    let mem_rate = (batch * batches) as f64 / mem_s;
    let v = json!({
        "sae": { "l": l, "d": d, "k": k, "dtype": "bf16", "precision": "fast" },
        "rows": rows,
        "batch_rows": batch,
        "setup_seconds": setup_s,
        "in_memory_rows_per_s": mem_rate,
        "stream": rep,
        "stream_rows_per_s": rep.rows_per_second(),
        "stream_vs_in_memory": rep.rows_per_second() / mem_rate,
        "note": "dump file just written, so reads come from the page cache",
    });
    crate::outln!(
        "stream      L=2^19 bf16: from memory {:.0} rows/s, from dump {:.0} rows/s ({:.1}%), reader wait {:.3} s",
        mem_rate,
        rep.rows_per_second(),
        100.0 * rep.rows_per_second() / mem_rate,
        rep.wait_seconds
    );
    Ok(v)
}

/// Runs the selected shapes and the streaming measurement.
pub fn run(
    device: usize,
    shapes: &str,
    reps: usize,
    stream: bool,
    scratch: Option<&Path>,
) -> Result<Value> {
    let gpu = Gpu::open(device)?;
    let selected: Vec<&Shape> = match shapes {
        "all" => SHAPES.iter().collect(),
        "small" => SHAPES.iter().filter(|s| s.l <= 1 << 16).collect(),
        "default" => SHAPES.iter().filter(|s| s.force.is_none()).collect(),
        list => {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            for n in &names {
                if !SHAPES.iter().any(|s| s.name == *n) {
                    return Err(Error::invalid(format!(
                        "unknown shape `{n}`; known: {}",
                        SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            SHAPES.iter().filter(|s| names.contains(&s.name)).collect()
        }
    };
    crate::outln!(
        "device: {} (cc {}.{}, {} SMs, {:.1} GiB)",
        gpu.info.name,
        gpu.info.compute_capability.0,
        gpu.info.compute_capability.1,
        gpu.info.multiprocessors,
        gpu.info.total_mem as f64 / (1u64 << 30) as f64
    );
    let mut results = Vec::new();
    for s in selected {
        // Each shape in its own scope: its buffers are freed before the next one.
        match bench_shape(&gpu, s, reps) {
            Ok(v) => results.push(v),
            Err(e) => {
                crate::outln!("{:<16} FAILED: {e}", s.name);
                results.push(json!({ "shape": s.name, "error": e.to_string() }));
            }
        }
    }
    let stream_v = if stream {
        match bench_stream(device, scratch) {
            Ok(v) => v,
            Err(e) => {
                crate::outln!("stream FAILED: {e}");
                json!({ "error": e.to_string() })
            }
        }
    } else {
        Value::Null
    };
    Ok(json!({
        "device": gpu.info,
        "peaks_bf16_tflops_mem_tbs": gpu.info.peaks(),
        "reps": reps,
        "shapes": results,
        "stream": stream_v,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    }))
}

//! CPU encode / decode / statistics on three SAE shapes (benches/torch_cpu_baseline.py times torch on them).
//!
//! Run: `cargo bench --bench cpu` (all shapes, a few minutes on 2 cores), or filter,
//! e.g. `cargo bench --bench cpu -- encode/1024x768x32768`. Weights are f32 row-major
//! in memory (W_dec shares W_enc's bytes: decode cost does not depend on the values).
//! `SAE_BENCH_JSON=REPS` prints JSON medians instead (benches/shapes_vs_torch.py runs it
//! interleaved with benches/torch_cpu_baseline.py for same-run ratios).

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use sae_engine::cpu::reference::SaeBuilder;
use sae_engine::cpu::CpuEngine;
use sae_engine::matrix::Matrix;
use sae_engine::{Activation, DType, Engine, EngineOptions, LatentStats, Sae};

/// (N tokens, d_in, latents, k): GPT-2-small-width SAEs of 32k and 131k latents, Gemma-2-2B width 16k.
const SHAPES: [(usize, usize, usize, usize); 3] = [
    (1024, 768, 32_768, 32),
    (1024, 768, 131_072, 32),
    (2048, 2304, 16_384, 64),
];

/// Deterministic uniform values in [-scale, scale) (xorshift; quality is irrelevant here).
fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn sae(d: usize, l: usize, k: usize) -> Sae {
    let mut sae = SaeBuilder::new(1, d, vec![0.0; d], vec![0.0; d])
        .activation(Activation::TopK { k: 1 })
        .build()
        .expect("seed SAE");
    let w = Matrix::from_f32(
        &uniform(l * d, 7, 1.0 / (d as f32).sqrt()),
        l,
        d,
        DType::F32,
    )
    .expect("weights");
    sae.w_dec = w.clone();
    sae.w_enc = w;
    sae.b_enc = uniform(l, 11, 0.05);
    sae.activation = Activation::TopK { k };
    sae.validate().expect("bench SAE");
    sae
}

fn bench(c: &mut Criterion) {
    for (n, d, l, k) in SHAPES {
        let name = format!("{n}x{d}x{l}_k{k}");
        let eng =
            CpuEngine::new(Arc::new(sae(d, l, k)), &EngineOptions::default()).expect("engine");
        let x = uniform(n * d, 3, 1.0);
        let codes = eng.encode(&x, n, 0).expect("encode").codes;

        let mut g = c.benchmark_group("encode");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        g.throughput(Throughput::Elements((2 * n * d * l) as u64)); // flops
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter(|| eng.encode(&x, n, 0).expect("encode"))
        });
        g.finish();

        let mut g = c.benchmark_group("decode");
        g.sample_size(20).measurement_time(Duration::from_secs(2));
        g.throughput(Throughput::Bytes((n * k * d * 4) as u64)); // gathered decoder bytes
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter(|| eng.decode(&codes, None).expect("decode"))
        });
        g.finish();

        let mut g = c.benchmark_group("stats");
        g.sample_size(20).measurement_time(Duration::from_secs(1));
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter(|| {
                let mut st = LatentStats::new("bench", l);
                eng.accumulate(&mut st, &codes, None).expect("stats");
                st
            })
        });
        g.finish();
    }
}

/// Process CPU time (user + system) from /proc/self/stat, in seconds (Linux; 10 ms ticks).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `SAE_BENCH_CPU_TIME=REPS`: instead of criterion, time each encode shape over REPS runs
/// and print wall time and process CPU time per run. On a shared, oversubscribed machine
/// CPU time / threads estimates the wall time the run would take with the cores to itself.
/// `SAE_BENCH_TILE` overrides the tile width and `SAE_BENCH_SHAPES=0,2` picks shapes (tuning).
fn cpu_time_report(reps: usize) {
    let threads = rayon::current_num_threads();
    let env_list = |name: &str| -> Option<Vec<usize>> {
        let v = std::env::var(name).ok()?;
        Some(v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
    };
    let mut opts = EngineOptions::default();
    // SAE_CPU_GEMM=crate|openblas: which GEMM to time (comparisons from one binary).
    if let Ok(g) = std::env::var("SAE_CPU_GEMM") {
        opts.cpu_gemm = sae_engine::CpuGemm::parse(&g)
            .unwrap_or_else(|| panic!("SAE_CPU_GEMM={g}: expected auto, crate or openblas"));
    }
    if let Some(t) = env_list("SAE_BENCH_TILE").and_then(|v| v.first().copied()) {
        opts.tile_latents = t;
    }
    let picks = env_list("SAE_BENCH_SHAPES").unwrap_or(vec![0, 1, 2]);
    for (n, d, l, k) in picks.iter().filter_map(|i| SHAPES.get(*i).copied()) {
        let eng = CpuEngine::new(Arc::new(sae(d, l, k)), &opts).expect("engine");
        let x = uniform(n * d, 3, 1.0);
        eng.encode(&x, n, 0).expect("warm-up");
        let (c0, t0) = (cpu_seconds().unwrap_or(0.0), std::time::Instant::now());
        // The fastest run is the one least disturbed by other processes.
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = std::time::Instant::now();
            std::hint::black_box(eng.encode(&x, n, 0).expect("encode"));
            best = best.min(t.elapsed().as_secs_f64());
        }
        let wall = t0.elapsed().as_secs_f64() / reps as f64;
        let cpu = (cpu_seconds().unwrap_or(0.0) - c0) / reps as f64;
        let est = cpu / threads as f64;
        let gflop = 2.0 * (n * d * l) as f64 / 1e9;
        println!(
            "encode {n}x{d}x{l}_k{k} tile {}: wall {:.1} ms (best {:.1} ms), cpu {:.1} ms over \
             {threads} threads -> {:.1} ms uncontended estimate ({:.0} GFLOP/s)",
            opts.tile_latents,
            wall * 1e3,
            best * 1e3,
            cpu * 1e3,
            est * 1e3,
            gflop / est
        );
    }
}

/// Median, min and max of `reps` timed runs of `f` (ms), after one untimed warm-up.
fn time_ms<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, f64, f64) {
    std::hint::black_box(f());
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = std::time::Instant::now();
            std::hint::black_box(f());
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0], t[t.len() - 1])
}

/// `SAE_BENCH_JSON=REPS`: one JSON line per shape (those of `SAE_BENCH_SHAPES`, default
/// all) with the median / min / max wall ms of encode, decode and statistics over REPS
/// runs: what benches/shapes_vs_torch.py interleaves with benches/torch_cpu_baseline.py.
fn json_report(reps: usize) {
    let picks: Vec<usize> = std::env::var("SAE_BENCH_SHAPES")
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or(vec![0, 1, 2]);
    for (n, d, l, k) in picks.iter().filter_map(|i| SHAPES.get(*i).copied()) {
        let eng =
            CpuEngine::new(Arc::new(sae(d, l, k)), &EngineOptions::default()).expect("engine");
        let x = uniform(n * d, 3, 1.0);
        let encode = time_ms(reps, || eng.encode(&x, n, 0).expect("encode"));
        let codes = eng.encode(&x, n, 0).expect("encode").codes;
        let decode = time_ms(reps, || eng.decode(&codes, None).expect("decode"));
        let stats = time_ms(reps, || {
            let mut st = LatentStats::new("bench", l);
            eng.accumulate(&mut st, &codes, None).expect("stats");
            st
        });
        let field = |(med, min, max): (f64, f64, f64)| serde_json::json!([med, min, max]);
        let line = serde_json::json!({
            "shape": format!("{n}x{d}x{l}_k{k}"),
            "threads": rayon::current_num_threads(),
            "encode_ms": field(encode),
            "decode_ms": field(decode),
            "stats_ms": field(stats),
        });
        println!("{line}");
    }
}

/// Every Criterion benchmark, configured from the command line (what `criterion_group!`
/// expands to, written out: the macro's `pub fn` cannot carry a doc line).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
}

fn main() {
    let reps = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    if let Some(r) = reps("SAE_BENCH_JSON") {
        json_report(r);
    } else if let Some(r) = reps("SAE_BENCH_CPU_TIME") {
        cpu_time_report(r);
    } else {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}

//! `sae-bench`: CUDA kernel verification (GPU against the CPU reference) and profiling.
//!
//!   sae-bench info                      device, kernels and libraries found (exit 2: no GPU)
//!   sae-bench verify [--quick] [--json F]   non-zero exit on any mismatch
//!   sae-bench run [--shapes a,b] [--reps N] [--json F]   per-kernel timings, JSON out
//!
//! Timings use CUDA events around the device work, medians over repetitions after a
//! warm-up; weights and activations are random (never zeros) and generated on the device.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use sae_engine::error::{Error, Result};
use sae_engine::io::guard::PathGuard;

mod bench;

#[derive(clap::Parser, Debug)]
#[command(
    name = "sae-bench",
    about = "Verify and profile the CUDA kernels of sae-engine"
)]
struct Cli {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0, global = true)]
    device: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Print the device, how its kernels were loaded, and the build's nvcc.
    Info {
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// GPU against the CPU reference on random and edge-case shapes.
    Verify {
        /// Skip the two larger cases.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Kernel timings (encode vs GEMM-only, decode, stats, steering) and dump streaming.
    Run {
        /// Comma-separated shape names (see `bench::SHAPES`), or "all" / "small".
        #[arg(long, default_value = "all")]
        shapes: String,
        /// Timed repetitions per kernel (median reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Skip the end-to-end dump streaming measurement.
        #[arg(long)]
        no_stream: bool,
        /// Directory for the streaming benchmark's dump file (default: a temp dir).
        #[arg(long)]
        scratch: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Writes `value` as pretty JSON to `path` via a temporary file renamed when complete.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::format(path, e.to_string()))?;
    sae_engine::io::atomic::write_bytes(path, text.as_bytes())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Error::BackendUnavailable(why)) => {
            eprintln!("sae-bench: no usable CUDA device: {why}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sae-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Destinations are checked before the (long) GPU work.
    let (json, scratch) = match &cli.cmd {
        Cmd::Info { json } | Cmd::Verify { json, .. } => (json, &None),
        Cmd::Run { json, scratch, .. } => (json, scratch),
    };
    PathGuard::new()
        .output_file_opt("--json", json.as_ref())
        .output_dir_opt("--scratch", scratch.as_ref())
        .check()?;
    match cli.cmd {
        Cmd::Info { json } => {
            let info = sae_engine::cuda::available(cli.device)?;
            let v = serde_json::json!({
                "device": info,
                "fatbins_embedded": sae_engine::cuda::kernels::fatbins_embedded(),
                "build_nvcc": sae_engine::cuda::kernels::build_nvcc(),
                "peaks_bf16_tflops_mem_tbs": info.peaks(),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            if let Some(p) = json {
                write_json(&p, &v)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { quick, json } => {
            let t0 = std::time::Instant::now();
            let results = sae_engine::cuda::verify::run(cli.device, quick)?;
            let failed = results.iter().filter(|r| !r.ok).count();
            for r in &results {
                println!(
                    "{} {:<72} max|err| {:.3e} tie-swaps {}",
                    if r.ok { "ok  " } else { "FAIL" },
                    r.name,
                    r.max_abs_err,
                    r.tie_swaps
                );
                for d in &r.detail {
                    println!("       {d}");
                }
            }
            println!(
                "verify: {} cases, {failed} failed, {:.1} s",
                results.len(),
                t0.elapsed().as_secs_f64()
            );
            if let Some(p) = json {
                write_json(
                    &p,
                    &serde_json::json!({ "cases": results, "failed": failed }),
                )?;
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Run {
            shapes,
            reps,
            no_stream,
            scratch,
            json,
        } => {
            let report = bench::run(
                cli.device,
                &shapes,
                reps.max(1),
                !no_stream,
                scratch.as_deref(),
            )?;
            if let Some(p) = json {
                write_json(&p, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

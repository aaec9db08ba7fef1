//! `sae-bench`: CUDA kernel verification (GPU against the CPU reference) and profiling.
//!
//!   sae-bench info                      device, kernels and libraries found
//!   sae-bench verify [--quick] [--json F]   exit 1 on any mismatch
//!   sae-bench run [--shapes a,b] [--reps N] [--json F]   per-kernel timings, JSON out
//!
//! Every command needs the CUDA backend: a build without the `cuda` feature answers each with
//! "backend unavailable" naming the feature, exit status 3.
//!
//! Exit status as `sae` (`sae_engine::error::exit`, README "Exit status"): 0 ok, 1 error or
//! mismatch, 2 usage, 3 no usable GPU. On a failure `--json F` still gets a file, holding
//! `{"error": {"code", "kind", "message"}, "provenance": ...}`.
//!
//! Timings use CUDA events around the device work, medians over repetitions after a
//! warm-up; weights and activations are random (never zeros) and generated on the device.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
#[cfg(feature = "cuda")]
use sae_engine::error::exit;
use sae_engine::error::{Error, Result};
#[cfg(feature = "cuda")]
use sae_engine::io::guard::PathGuard;
use sae_engine::provenance::Provenance;

/// `println!` that survives a closed stdout (`sae-bench verify | head`).
#[cfg(feature = "cuda")]
macro_rules! outln {
    ($($t:tt)*) => {{
        let _ = sae_engine::io::console::print_stdout(&format!($($t)*));
    }};
}
#[cfg(feature = "cuda")]
pub(crate) use outln;

#[cfg(feature = "cuda")]
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
    /// Compile the kernel sources with NVRTC even when fatbins are embedded (info, verify):
    /// checks the run-time fallback of a build without nvcc.
    #[arg(long, global = true)]
    force_nvrtc: bool,
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

impl Cmd {
    /// The `--json` file, when given.
    fn json_path(&self) -> Option<&Path> {
        match self {
            Cmd::Info { json } | Cmd::Verify { json, .. } | Cmd::Run { json, .. } => {
                json.as_deref()
            }
        }
    }

    /// The provenance of this command's JSON file: version, device and options.
    fn provenance(&self, device: usize) -> Provenance {
        let (name, opts) = match self {
            Cmd::Info { .. } => ("info", serde_json::json!({})),
            Cmd::Verify { quick, .. } => ("verify", serde_json::json!({ "quick": quick })),
            Cmd::Run {
                shapes,
                reps,
                no_stream,
                ..
            } => (
                "run",
                serde_json::json!({ "shapes": shapes, "reps": reps, "stream": !no_stream }),
            ),
        };
        let mut p = Provenance::new(format!("sae-bench {name}")).with_process_argv();
        p.option("device", device);
        for (k, v) in opts.as_object().into_iter().flatten() {
            p.option(k, v);
        }
        p
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let prov = cli.cmd.provenance(cli.device);
    let json = cli.cmd.json_path().map(Path::to_path_buf);
    match run(cli, &prov) {
        Ok(code) => code,
        Err(e) => {
            let line = match &e {
                Error::BackendUnavailable(why) => format!("no usable CUDA device: {why}"),
                other => other.one_line(),
            };
            sae_engine::io::console::print_stderr(&format!("sae-bench: {line}"));
            if let Some(p) = json {
                // The file says what happened, so a job that collects it finds an answer.
                if let Err(w) = write_json(&p, &prov.attach(e.to_json())) {
                    sae_engine::io::console::print_stderr(&format!("sae-bench: {}", w.one_line()));
                }
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// A build without CUDA has nothing to verify or time.
#[cfg(not(feature = "cuda"))]
fn run(_cli: Cli, _prov: &Provenance) -> Result<ExitCode> {
    Err(Error::BackendUnavailable(
        sae_engine::engine::NO_CUDA_FEATURE.into(),
    ))
}

#[cfg(feature = "cuda")]
fn run(cli: Cli, prov: &Provenance) -> Result<ExitCode> {
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
            let info = sae_engine::cuda::Gpu::open_with(cli.device, cli.force_nvrtc)?.info;
            let v = serde_json::json!({
                "device": info,
                "fatbins_embedded": sae_engine::cuda::kernels::fatbins_embedded(),
                "build_nvcc": sae_engine::cuda::kernels::build_nvcc(),
                "peaks_bf16_tflops_mem_tbs": info.peaks(),
            });
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            if let Some(p) = json {
                write_json(&p, &prov.attach(v))?;
            }
            Ok(ExitCode::from(exit::OK))
        }
        Cmd::Verify { quick, json } => {
            let t0 = std::time::Instant::now();
            let results = sae_engine::verify::run_with(cli.device, quick, cli.force_nvrtc)?;
            let failed = results.iter().filter(|r| !r.ok).count();
            for r in &results {
                outln!(
                    "{} {:<72} max|err| {:.3e} tie-swaps {}",
                    if r.ok { "ok  " } else { "FAIL" },
                    r.name,
                    r.max_abs_err,
                    r.tie_swaps
                );
                for d in &r.detail {
                    outln!("       {d}");
                }
            }
            outln!(
                "verify: {} cases, {failed} failed, {:.1} s",
                results.len(),
                t0.elapsed().as_secs_f64()
            );
            if let Some(p) = json {
                write_json(
                    &p,
                    &prov.attach(serde_json::json!({ "cases": results, "failed": failed })),
                )?;
            }
            Ok(ExitCode::from(if failed == 0 {
                exit::OK
            } else {
                exit::ERROR
            }))
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
                write_json(&p, &prov.attach(report))?;
            }
            Ok(ExitCode::from(exit::OK))
        }
    }
}

//! `sae`: command-line tools for SAE model diffing (see README, "CLI reference").
//!
//! Exit status (`sae_engine::error::exit`, README "Exit status"): 0 on success, 1 on any
//! error (one line `sae: error: <message>` on stderr, naming the file and what was
//! expected; with --json also `{"error": {...}}` on stdout), 2 on a usage error, 3 when the
//! CUDA backend was asked for and no usable GPU is present.

mod common;
mod convert;
mod crosscoder;
mod decode;
mod encode;
mod engine_flags;
mod inspect;
mod numbers;
mod progress;
mod stats;
mod workflow;

use std::process::ExitCode;

use clap::Parser;
use sae_engine::error::exit;

#[derive(clap::Parser, Debug)]
#[command(
    name = "sae",
    version,
    about = "Sparse autoencoders at audit scale: encode, statistics, model diffing, steering, detection",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: common::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Show an SAE's format, shape, activation, dtype, hook and fingerprint.
    Inspect(inspect::Args),
    /// Encode an activation dump into a codes file (streamed, bounded memory).
    Encode(encode::Args),
    /// Decode a codes file into reconstructed activations (.npy); with --acts, score them.
    Decode(decode::Args),
    /// Per-latent statistics of a dump (`sae stats merge` combines shard results).
    Stats(stats::Args),
    /// Convert an SAE to the SAELens layout, or a dump / activation cache to safetensors shards.
    Convert(convert::ConvertArgs),
    /// Rank latents by how fine-tunes moved them from the base, averaged over fine-tunes.
    Diff(workflow::DiffArgs),
    /// Build a steering vector from decoder rows; export it (npy, safetensors, GGUF), dry-run it on a dump beside a random control, sweep strengths, ablate.
    Steer(workflow::SteerArgs),
    /// Rank latents as detectors of misaligned vs aligned fine-tunes (AUROC, margin, leave-one-out).
    Detect(workflow::DetectArgs),
    /// Follow latents over checkpoints and report the first that crosses a threshold.
    Monitor(workflow::MonitorArgs),
    /// Top-activating tokens of a latent, with context and a histogram.
    TopExamples(workflow::TopExamplesArgs),
    /// A latent's decoder direction through the model's unembedding: promoted and suppressed tokens.
    LogitLens(workflow::LogitLensArgs),
    /// Run the whole audit on a synthetic scenario and check what it recovers.
    Demo(workflow::DemoArgs),
    /// Crosscoder model diffing: inspect, encode paired activations, analyze latents.
    Crosscoder(crosscoder::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = cli.global.json;
    let ctx = common::Ctx::new(cli.global);
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Encode(a) => encode::run(&ctx, a),
        Command::Decode(a) => decode::run(&ctx, a),
        Command::Stats(a) => stats::run(&ctx, a),
        Command::Convert(a) => convert::run(&ctx, a),
        Command::Diff(a) => workflow::run_diff(&ctx, a),
        Command::Steer(a) => workflow::run_steer(&ctx, a),
        Command::Detect(a) => workflow::run_detect(&ctx, a),
        Command::Monitor(a) => workflow::run_monitor(&ctx, a),
        Command::TopExamples(a) => workflow::run_top_examples(&ctx, a),
        Command::LogitLens(a) => workflow::run_logit_lens(&ctx, a),
        Command::Demo(a) => workflow::run_demo(&ctx, a),
        Command::Crosscoder(a) => crosscoder::run(&ctx, a),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            common::print_stderr(&format!("sae: error: {}", e.one_line()));
            if json {
                // A failed stdout write changes nothing: the status tells the error.
                let _ = common::print_stdout(&ctx.error_json(&e).to_string());
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// A command line clap refuses: its message on stderr, status 2 (with --json anywhere on
/// the line, also the error object on stdout). `--help` and `--version` print and exit 0.
fn usage_error(e: clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::from(exit::OK);
    }
    if std::env::args_os().skip(1).any(|a| a == "--json") {
        let text = e.to_string();
        let msg = text
            .lines()
            .next()
            .unwrap_or("usage error")
            .trim_start_matches("error: ");
        let _ = common::print_stdout(&exit::error_json(exit::USAGE, "usage", msg).to_string());
    }
    let _ = e.print();
    ExitCode::from(exit::USAGE)
}

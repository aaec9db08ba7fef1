//! `sae`: command-line tools for SAE model diffing (see README, "CLI reference").
//!
//! Exit status: 0 on success, 1 on any error (one line `sae: error: <message>` on stderr,
//! naming the file and what was expected), 2 on a usage error.

mod common;
mod decode;
mod encode;
mod inspect;
mod stats;

use std::process::ExitCode;

use clap::Parser;

#[derive(clap::Parser, Debug)]
#[command(
    name = "sae",
    version,
    about = "Sparse autoencoders at audit scale: inspect, encode, decode and per-latent statistics",
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = common::Ctx::new(cli.global);
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Encode(a) => encode::run(&ctx, a),
        Command::Decode(a) => decode::run(&ctx, a),
        Command::Stats(a) => stats::run(&ctx, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: messages may embed newlines from nested sources.
            let msg = e.to_string().replace('\n', " ");
            eprintln!("sae: error: {msg}");
            ExitCode::from(1)
        }
    }
}

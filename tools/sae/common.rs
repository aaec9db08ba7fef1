//! Flags every command takes, and the shared output helpers: SAE loading, progress
//! bars, JSON or human output.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sae_engine::{Format, Result, Sae};

/// Global flags (accepted before or after the command name). The engine's flags are
/// per command: `crate::engine_flags`.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Print the result as one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar and no notes on stderr (errors are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// `--format` values.
pub fn parse_format(s: &str) -> std::result::Result<Format, String> {
    Format::parse(s).ok_or_else(|| {
        "expected one of saelens, saelens-legacy, sparsify, gemma-scope, dictionary-learning, openai"
            .to_string()
    })
}

/// What every command gets: the global flags plus helpers built on them.
pub struct Ctx {
    pub g: Global,
}

impl Ctx {
    pub fn new(g: Global) -> Ctx {
        Ctx { g }
    }

    /// Loads an SAE (auto-detected unless `format` forces one).
    pub fn load_sae(&self, path: &std::path::Path, format: Option<Format>) -> Result<Arc<Sae>> {
        Ok(Arc::new(sae_engine::formats::load(path, format)?))
    }

    /// A line on stderr for a person watching (not with --quiet or --json).
    pub fn note(&self, msg: &str) {
        if !self.g.quiet && !self.g.json {
            eprintln!("{msg}");
        }
    }

    /// A progress bar over `total` rows: rate and ETA; hidden with --quiet or when
    /// stderr is not a terminal (logs of batch jobs stay clean).
    pub fn progress(&self, total: u64, what: &str) -> ProgressBar {
        if self.g.quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:>8} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows ({rate}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} rows/s", s.per_sec());
            },
        );
        pb.set_style(style);
        pb.set_message(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    /// Prints the result: `json` with --json, else `human` (one or more lines).
    pub fn output(&self, json: serde_json::Value, human: &str) {
        if self.g.json {
            println!("{json}");
        } else {
            println!("{human}");
        }
    }
}

/// Rows per second, for reports.
pub fn rate(rows: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        rows as f64 / secs
    } else {
        0.0
    }
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

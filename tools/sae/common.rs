//! Flags every command takes, and the shared output helpers: engine construction,
//! progress bars, JSON or human output.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sae_engine::hub::{HubOptions, Resolved};
use sae_engine::{BackendKind, Engine, EngineOptions, Error, Format, Result, Sae};

/// Global flags (accepted before or after the command name).
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Print the result as one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar and no notes on stderr (errors are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Backend: cpu, cuda, cuda:N or auto (CUDA when usable, else CPU).
    #[arg(long, global = true, default_value = "auto", value_name = "BACKEND",
          value_parser = parse_backend)]
    pub backend: String,
    /// CUDA device index.
    #[arg(long, global = true, value_name = "N")]
    pub device: Option<usize>,
    /// Rows (tokens) per batch; memory grows with it.
    #[arg(long, global = true, default_value_t = 4096, value_name = "ROWS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Latents per encode tile (the engine never holds more than batch x tile pre-activations).
    #[arg(long, global = true, value_name = "L",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tile_latents: Option<u64>,
    /// CUDA encode arithmetic: exact (the CPU reference's results up to summation order) or
    /// fast (activations rounded to the weights' dtype, tensor-core GEMM). The environment
    /// variable SAE_CUDA_PRECISION, when set, overrides it.
    #[arg(long, global = true, default_value = "exact", value_name = "PRECISION",
          value_parser = parse_precision)]
    pub precision: sae_engine::cuda::Precision,
    /// Resolve `--sae hf:...` / `saelens:...` names from the local Hugging Face cache only,
    /// never downloading (as HF_HUB_OFFLINE=1 does).
    #[arg(long, global = true)]
    pub offline: bool,
}

/// `--precision` values.
fn parse_precision(s: &str) -> std::result::Result<sae_engine::cuda::Precision, String> {
    sae_engine::cuda::Precision::parse(s).ok_or_else(|| format!("`{s}`: expected exact or fast"))
}

/// `--backend` values (checked at parse time so a typo is a usage error).
fn parse_backend(s: &str) -> std::result::Result<String, String> {
    BackendKind::parse(s, 0)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
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

    pub fn batch_rows(&self) -> usize {
        self.g.batch_size as usize
    }

    /// Loads an SAE (auto-detected unless `format` forces one) from a path or a name
    /// (`hf:ORG/NAME/PATH[@REV]`, `saelens:RELEASE/SAE_ID`).
    pub fn load_sae(&self, path: &std::path::Path, format: Option<Format>) -> Result<Arc<Sae>> {
        Ok(self.load_sae_resolved(path, format)?.0)
    }

    /// [`Ctx::load_sae`], also saying where a name resolved (None for a plain path).
    pub fn load_sae_resolved(
        &self,
        path: &std::path::Path,
        format: Option<Format>,
    ) -> Result<(Arc<Sae>, Option<Resolved>)> {
        let (sae, resolved) = sae_engine::hub::load(path, format, &self.hub_options())?;
        if let Some(r) = &resolved {
            self.note(&format!(
                "{} -> {} ({} @ {}, commit {}{})",
                r.name,
                r.local.display(),
                r.repo,
                r.revision,
                r.commit,
                if r.downloaded.is_empty() {
                    ""
                } else {
                    ", downloaded"
                }
            ));
        }
        Ok((Arc::new(sae), resolved))
    }

    /// Hub options from the environment and the flags (--offline; progress bars only for
    /// a person watching a terminal).
    pub fn hub_options(&self) -> HubOptions {
        let mut o = HubOptions::from_env();
        o.offline |= self.g.offline;
        o.progress = !self.g.quiet && !self.g.json && std::io::stderr().is_terminal();
        o
    }

    /// Builds the engine the flags ask for. `auto` with `--device N` tries that CUDA
    /// device and falls back to the CPU when CUDA cannot run here.
    pub fn engine(&self, sae: Arc<Sae>) -> Result<Box<dyn Engine>> {
        let opts = self.engine_options();
        let device = self.g.device.unwrap_or(0);
        let kind = BackendKind::parse(&self.g.backend, device)?;
        let engine = match kind {
            BackendKind::Auto if device != 0 => {
                match sae_engine::engine(BackendKind::Cuda { device }, sae.clone(), &opts) {
                    Err(Error::BackendUnavailable(_)) => {
                        sae_engine::engine(BackendKind::Cpu, sae, &opts)
                    }
                    other => other,
                }
            }
            k => sae_engine::engine(k, sae, &opts),
        }?;
        self.note(&format!("backend: {}", engine.name()));
        Ok(engine)
    }

    /// Engine options from the flags (--tile-latents, --precision).
    pub fn engine_options(&self) -> EngineOptions {
        let mut opts = EngineOptions {
            precision: self.g.precision,
            ..EngineOptions::default()
        };
        if let Some(t) = self.g.tile_latents {
            opts.tile_latents = t as usize;
        }
        opts
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

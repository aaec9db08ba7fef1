//! Flags every command takes, and the shared output helpers: SAE loading, provenance,
//! progress bars, JSON or human output on a stdout that may be closed early.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use crate::progress::{Mode, Progress};
use sae_engine::hub::{HubOptions, Resolved};
use sae_engine::provenance::Provenance;
use sae_engine::{Error, Format, Result, Sae};

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
    /// Without a terminal on stderr (a batch job's log): a progress line (rows, rate,
    /// ETA) every SECS seconds during long work; 0 turns the lines off.
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECS",
          value_parser = parse_interval)]
    pub progress_interval: f64,
    /// Resolve `--sae hf:...` / `saelens:...` names from the local Hugging Face cache only,
    /// never downloading (as HF_HUB_OFFLINE=1 does).
    #[arg(long, global = true)]
    pub offline: bool,
}

/// `--progress-interval` values: finite seconds >= 0.
fn parse_interval(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}`: expected seconds >= 0, e.g. 10 or 0.5")),
    }
}

/// `--format` values.
pub fn parse_format(s: &str) -> std::result::Result<Format, String> {
    Format::parse(s).ok_or_else(|| {
        "expected one of saelens, saelens-legacy, sparsify, gemma-scope, dictionary-learning, openai"
            .to_string()
    })
}

/// How an SAE is read where its files leave a choice (every command that takes `--sae`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoadFlags {
    /// SAELens normalize_activations = expected_average_only_in: the dataset's norm scaling
    /// factor (sqrt(d_in) / mean ||x||), which cfg.json does not store. Inputs are
    /// multiplied by it, reconstructions divided. Without it the SAE is read as the
    /// identity, as SAELens reads it from disk, with a warning.
    #[arg(long, value_name = "FACTOR")]
    pub norm_scale: Option<f32>,
    /// dictionary_learning AutoEncoder: `folded` (default, the library's
    /// from_pretrained: decoder norms folded into the encoder, codes scaled by them) or
    /// `raw` (from_pretrained(normalize_decoder=False): the stored weights as they are).
    #[arg(long, value_name = "CONVENTION", default_value = "folded", value_parser = parse_dl_convention)]
    pub dl_convention: sae_engine::formats::DlConvention,
}

impl LoadFlags {
    /// The library's load options.
    pub fn options(&self) -> sae_engine::formats::LoadOptions {
        sae_engine::formats::LoadOptions {
            norm_scale: self.norm_scale,
            dl_convention: self.dl_convention,
        }
    }
}

/// `--dl-convention` values.
fn parse_dl_convention(s: &str) -> std::result::Result<sae_engine::formats::DlConvention, String> {
    sae_engine::formats::DlConvention::parse(s)
        .ok_or_else(|| format!("`{s}`: expected folded or raw"))
}

/// What every command gets: the global flags plus helpers built on them.
pub struct Ctx {
    pub g: Global,
    /// What a failing command adds to its `--json` error object as `detail`.
    error_detail: std::cell::RefCell<Option<serde_json::Value>>,
}

impl Ctx {
    pub fn new(g: Global) -> Ctx {
        Ctx {
            g,
            error_detail: Default::default(),
        }
    }

    /// Sets the `detail` of the `--json` error object if the command then fails (e.g. the
    /// per-shard report of a partly failed `stats --devices`).
    pub fn set_error_detail(&self, detail: serde_json::Value) {
        *self.error_detail.borrow_mut() = Some(detail);
    }

    /// The `--json` error object of `e`, with the detail the command set.
    pub fn error_json(&self, e: &Error) -> serde_json::Value {
        let mut j = e.to_json();
        if let Some(d) = self.error_detail.borrow_mut().take() {
            j["error"]["detail"] = d;
        }
        j
    }

    /// The command's provenance record: the command line. The command adds its inputs and
    /// own options (a command that runs an SAE: its engine flags, `EngineFlags::record`);
    /// everything it writes carries the record.
    pub fn provenance(&self, command: &str) -> Provenance {
        Provenance::new(format!("sae {command}")).with_process_argv()
    }

    /// Hub options from the environment and the flags (--offline; progress bars only for
    /// a person watching a terminal).
    pub fn hub_options(&self) -> HubOptions {
        let mut o = HubOptions::from_env();
        o.offline |= self.g.offline;
        o.progress = !self.g.quiet && !self.g.json && std::io::stderr().is_terminal();
        o
    }

    /// Loads an SAE (auto-detected unless `format` forces one) from a path or a name
    /// (`hf:ORG/NAME/PATH[@REV]`, `saelens:RELEASE/SAE_ID`) with the load flags, and
    /// records it (path, size, fingerprint, load options, where a name resolved) in
    /// `prov`. The loader's warnings go to stderr as `sae: warning: ...` (with --json
    /// too, since stdout is the JSON; not with --quiet).
    pub fn load_sae(
        &self,
        path: &std::path::Path,
        format: Option<Format>,
        flags: &LoadFlags,
        prov: &mut Provenance,
    ) -> Result<Arc<Sae>> {
        Ok(self.load_sae_resolved(path, format, flags, prov)?.0)
    }

    /// [`Ctx::load_sae`], also saying where a name resolved (None for a plain path).
    pub fn load_sae_resolved(
        &self,
        path: &std::path::Path,
        format: Option<Format>,
        flags: &LoadFlags,
        prov: &mut Provenance,
    ) -> Result<(Arc<Sae>, Option<Resolved>)> {
        let (sae, resolved) =
            sae_engine::hub::load_with(path, format, &flags.options(), &self.hub_options())?;
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
        if !self.g.quiet {
            for w in &sae.meta.warnings {
                eprintln!("sae: warning: {w}");
            }
        }
        // A name is recorded by the local files it resolved to, and by itself.
        let local = resolved.as_ref().map_or(path, |r| r.local.as_path());
        prov.sae(local, &sae.fingerprint())?;
        if let Some(r) = &resolved {
            prov.option("sae_name", &r.name)
                .option("sae_commit", &r.commit);
        }
        if let Some(f) = format {
            prov.option("format", f.name());
        }
        if let Some(x) = flags.norm_scale {
            prov.option("norm_scale", x);
        }
        if !sae.meta.conventions.is_empty() {
            prov.option("conventions", &sae.meta.conventions);
        }
        Ok((Arc::new(sae), resolved))
    }

    /// A line on stderr for a person watching (not with --quiet or --json).
    pub fn note(&self, msg: &str) {
        if !self.g.quiet && !self.g.json {
            print_stderr(msg);
        }
    }

    /// Progress over `total` rows of `what`: a bar with a smoothed rate and ETA on a
    /// terminal, a line every `--progress-interval` seconds on any other stderr (a batch
    /// job's log), nothing with `--quiet`.
    pub fn progress(&self, total: u64, what: &str) -> Progress {
        let mode = if self.g.quiet {
            Mode::Hidden
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else if self.g.progress_interval > 0.0 {
            Mode::Log(Duration::from_secs_f64(self.g.progress_interval))
        } else {
            Mode::Hidden
        };
        Progress::start(total, what, mode)
    }

    /// Prints the result: `json` with its `provenance` entry under --json, else `human`
    /// (one or more lines). A closed stdout is not an error (see [`print_stdout`]).
    pub fn output(&self, prov: &Provenance, json: serde_json::Value, human: &str) -> Result<()> {
        if self.g.json {
            print_stdout(&prov.attach(json).to_string())
        } else {
            print_stdout(human)
        }
    }
}

pub use sae_engine::io::console::{print_stderr, print_stdout};

/// Rows per second, for reports.
pub fn rate(rows: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        rows as f64 / secs
    } else {
        0.0
    }
}

pub use sae_engine::provenance::human_bytes;

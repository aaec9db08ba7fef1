//! The audit workflow on top of the engine (docs/design.md, "The job"): model diffing,
//! steering vectors, detection, checkpoint monitoring, top-activating examples,
//! reports and plots, and a one-command synthetic demo.
//!
//! Every step takes per-latent [`LatentStats`]; [`measure`] turns a path into them,
//! encoding a dump on the fly or reading a statistics file from `sae stats`.

use std::path::{Path, PathBuf};

use crate::backend::Engine;
use crate::dump::Dump;
use crate::error::{Error, Result};
use crate::stats::{LatentStats, RowFilter, TokenRule};

pub mod chance;
pub mod demo;
pub mod detect;
pub mod diff;
pub mod gguf;
pub mod layer_check;
pub mod logit_lens;
pub mod monitor;
pub mod pairing;
pub mod plot;
pub mod probe;
pub mod report;
pub mod rng;
pub mod steer;
pub mod tokenizer;
pub mod top_examples;

/// How dumps are streamed and which tokens count.
#[derive(Debug, Clone, Copy)]
pub struct StatsOptions {
    /// Rows per encode batch.
    pub batch_rows: usize,
    /// The token rule: mask honoured by default, outlier factor, keep outliers.
    pub rule: TokenRule,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions::with_rule(TokenRule::default())
    }
}

impl StatsOptions {
    /// Default batch size with `rule`.
    pub fn with_rule(rule: TokenRule) -> Self {
        StatsOptions {
            batch_rows: 1024,
            rule,
        }
    }

    /// The rule applied to `dump` (a norm-only pre-pass finds the dump-wide median).
    pub fn filter(&self, dump: &Dump) -> Result<RowFilter> {
        RowFilter::prepare(dump, &self.rule, self.batch_rows.max(1))
    }
}

/// Statistics of one input, with its name and provenance.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Short display name (the file stem).
    pub name: String,
    /// Where it came from.
    pub path: PathBuf,
    /// Per-latent statistics (with the counted tokens' digest, for pairing).
    pub stats: LatentStats,
}

/// Whether `path` is a statistics file written by `sae stats` (a safetensors file with a
/// `sum` tensor and no `activations`), as opposed to an activation dump.
pub fn is_stats_file(path: &Path) -> bool {
    if path.is_dir() || path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return false;
    }
    match crate::io::mapped::MappedSafetensors::open(path) {
        Ok(f) => f.contains("sum") && !f.contains("activations"),
        Err(_) => false,
    }
}

/// A display name for an input path: its file stem (or directory name).
pub fn display_name(path: &Path) -> String {
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Streams `dump` through `engine` and accumulates per-latent statistics of the tokens
/// the rule counts (with [`crate::pipeline::stats_of_dump_into`]: the same numbers
/// `sae stats` writes, token digest and norm histogram included).
pub fn stats_of_dump(
    engine: &dyn Engine,
    dump: &Dump,
    fingerprint: &str,
    opts: &StatsOptions,
) -> Result<LatentStats> {
    stats_of_dump_with_progress(engine, dump, fingerprint, opts, &|_| {})
}

/// [`stats_of_dump`] reporting the rows of each finished batch to `progress`.
pub fn stats_of_dump_with_progress(
    engine: &dyn Engine,
    dump: &Dump,
    fingerprint: &str,
    opts: &StatsOptions,
    progress: &dyn Fn(u64),
) -> Result<LatentStats> {
    opts.rule.check()?;
    let mut stats = LatentStats::new(fingerprint, engine.sae().n_latents());
    stats.outlier_factor = opts.rule.outlier_factor;
    crate::pipeline::stats_of_dump_into(
        engine,
        dump,
        stats,
        opts.batch_rows,
        &RowFilter::mask_only(opts.rule.use_mask),
        &mut |_| Ok(()),
        progress,
    )
}

/// Statistics of the rows `filter` keeps (mask, then outliers left out unless kept):
/// what per-row work such as steering units measures.
pub fn stats_of_rows(
    engine: &dyn Engine,
    dump: &Dump,
    filter: &RowFilter,
    batch_rows: usize,
) -> Result<LatentStats> {
    let mut stats = LatentStats::new("", engine.sae().n_latents());
    stats.outlier_factor = filter.rule.outlier_factor;
    crate::pipeline::stats_of_dump_into(
        engine,
        dump,
        stats,
        batch_rows,
        filter,
        &mut |_| Ok(()),
        &|_| {},
    )
}

/// Statistics of `path` under the engine's SAE: a statistics file is read and its
/// fingerprint checked; anything else is opened as a dump and encoded.
pub fn measure(
    engine: &dyn Engine,
    fingerprint: &str,
    path: &Path,
    opts: &StatsOptions,
) -> Result<Measured> {
    measure_with_progress(engine, fingerprint, path, opts, &|_| {})
}

/// [`measure`] reporting encoded rows to `progress` (nothing for a statistics file).
pub fn measure_with_progress(
    engine: &dyn Engine,
    fingerprint: &str,
    path: &Path,
    opts: &StatsOptions,
    progress: &dyn Fn(u64),
) -> Result<Measured> {
    let stats = if is_stats_file(path) {
        let mut stats = crate::io::stats_file::read(path)?;
        if stats.fingerprint != fingerprint {
            return Err(Error::Incompatible(format!(
                "{}: statistics were computed with another SAE (fingerprint {}, this SAE is {})",
                path.display(),
                stats.fingerprint,
                fingerprint
            )));
        }
        if stats.n_latents() != engine.sae().n_latents() {
            return Err(Error::Incompatible(format!(
                "{}: statistics have {} latents, the SAE has {}",
                path.display(),
                stats.n_latents(),
                engine.sae().n_latents()
            )));
        }
        // The histogram does not depend on T: this run's factor applies.
        stats.outlier_factor = opts.rule.outlier_factor;
        stats
    } else {
        let dump = Dump::open(path)?;
        stats_of_dump_with_progress(engine, &dump, fingerprint, opts, progress)?
    };
    Ok(Measured {
        name: display_name(path),
        path: path.to_path_buf(),
        stats,
    })
}

pub use pairing::{pair, Pairing, PairingMode, PairingRequest};

/// What a report says about each input's tokens: how many counted, their id hash, the
/// median row norm and the outlier tokens among them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputSummary {
    /// Display name.
    pub name: String,
    /// Counted tokens.
    pub n_tokens: u64,
    /// Token-id hash (16 hex digits) when every counted token had an id.
    pub token_hash: Option<String>,
    /// Median norm of the counted rows (None: not recorded, e.g. an older statistics file).
    pub median_norm: Option<f64>,
    /// Counted rows with norm above `outlier_factor` x the median (statistics keep them).
    pub n_outliers: Option<u64>,
    /// T of the outlier rule.
    pub outlier_factor: f64,
}

impl InputSummary {
    /// The summary of one input's statistics.
    pub fn of(name: &str, s: &LatentStats) -> InputSummary {
        InputSummary {
            name: name.to_string(),
            n_tokens: s.n_tokens,
            token_hash: s.token_hash().map(|(h, _)| format!("{h:016x}")),
            median_norm: s.median_norm(),
            n_outliers: s.n_outliers(),
            outlier_factor: s.outlier_factor,
        }
    }

    /// Summaries of a base and the inputs compared with it, in order.
    pub fn all(
        base_name: &str,
        base: &LatentStats,
        others: &[(String, &LatentStats)],
    ) -> Vec<Self> {
        std::iter::once(InputSummary::of(base_name, base))
            .chain(others.iter().map(|(n, s)| InputSummary::of(n, s)))
            .collect()
    }
}

/// The (name, statistics) pairs the analyses take. Names must be unique in reports:
/// where two inputs share a file stem, their full paths are used instead.
pub fn named_stats(v: &[Measured]) -> Vec<(String, &LatentStats)> {
    v.iter()
        .map(|m| {
            let dup = v.iter().filter(|o| o.name == m.name).count() > 1;
            let name = if dup {
                m.path.display().to_string()
            } else {
                m.name.clone()
            };
            (name, &m.stats)
        })
        .collect()
}

/// Checks that every latent id is below `n_latents`.
pub fn check_latents(latents: &[usize], n_latents: usize) -> Result<()> {
    match latents.iter().find(|l| **l >= n_latents) {
        Some(l) => Err(Error::invalid(format!(
            "unknown latent {l}: the SAE has latents 0..{n_latents}"
        ))),
        None => Ok(()),
    }
}

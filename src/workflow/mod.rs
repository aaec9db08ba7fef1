//! The audit workflow on top of the engine (DESIGN.md, "The job"): model diffing,
//! steering vectors, detection, checkpoint monitoring, top-activating examples,
//! reports and plots, and a one-command synthetic demo.
//!
//! Every step takes per-latent [`LatentStats`]; [`measure`] turns a path into them,
//! encoding a dump on the fly or reading a statistics file from `sae stats`.

use std::path::{Path, PathBuf};

use crate::dump::Dump;
use crate::error::{Error, Result};
use crate::ops::Engine;
use crate::stats::LatentStats;

pub mod chance;
pub mod demo;
pub mod detect;
pub mod diff;
pub mod gguf;
pub mod monitor;
pub mod plot;
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
    /// Count only tokens whose dump `mask` is 1 (e.g. response tokens). A dump without
    /// a mask is then an error, so a scoped run never silently counts every token.
    pub use_mask: bool,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            batch_rows: 1024,
            use_mask: false,
        }
    }
}

/// What is known about the tokens behind a set of statistics, used to check that
/// base and fine-tune measurements come from the same prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Pairing {
    /// Rows in the dump (None for a statistics file).
    pub n_rows: Option<u64>,
    /// FNV-1a hash of the dump's token ids, if it has them.
    pub token_hash: Option<u64>,
}

/// Statistics of one input, with its name and provenance.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Short display name (the file stem).
    pub name: String,
    /// Where it came from.
    pub path: PathBuf,
    /// Per-latent statistics.
    pub stats: LatentStats,
    /// Token identity, for pairing checks.
    pub pairing: Pairing,
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

/// Streams `dump` through `engine` and accumulates per-latent statistics (with
/// [`crate::pipeline::stats_of_dump_into`]), hashing the token ids for pairing checks.
/// Under `opts.use_mask` every shard must carry a mask.
pub fn stats_of_dump(
    engine: &dyn Engine,
    dump: &Dump,
    fingerprint: &str,
    opts: &StatsOptions,
) -> Result<(LatentStats, Pairing)> {
    stats_of_dump_with_progress(engine, dump, fingerprint, opts, &|_| {})
}

/// [`stats_of_dump`] reporting the rows of each finished batch to `progress`.
pub fn stats_of_dump_with_progress(
    engine: &dyn Engine,
    dump: &Dump,
    fingerprint: &str,
    opts: &StatsOptions,
    progress: &dyn Fn(u64),
) -> Result<(LatentStats, Pairing)> {
    let mut hash = Fnv::new();
    let mut all_ids = true;
    let stats = crate::pipeline::stats_of_dump_into(
        engine,
        dump,
        LatentStats::new(fingerprint, engine.sae().n_latents()),
        opts.batch_rows,
        opts.use_mask,
        &mut |batch| {
            mask_of(dump, batch, opts)?;
            match &batch.token_ids {
                Some(ids) => ids.iter().for_each(|t| hash.write(&t.to_le_bytes())),
                None => all_ids = false,
            }
            Ok(())
        },
        progress,
    )?;
    Ok((
        stats,
        Pairing {
            n_rows: Some(dump.n_rows()),
            token_hash: all_ids.then(|| hash.finish()),
        },
    ))
}

/// The mask a batch is counted with under `opts` (None = every token).
pub(crate) fn mask_of<'a>(
    dump: &Dump,
    batch: &'a crate::dump::Batch,
    opts: &StatsOptions,
) -> Result<Option<&'a [u8]>> {
    if !opts.use_mask {
        return Ok(None);
    }
    match &batch.mask {
        Some(m) => Ok(Some(m.as_slice())),
        None => Err(Error::missing(
            dump.path(),
            format!(
                "tensor `mask` in the shard holding row {} (--mask scopes to masked tokens)",
                batch.start
            ),
        )),
    }
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
    let (stats, pairing) = if is_stats_file(path) {
        let stats = crate::io::stats::read(path)?;
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
        (stats, Pairing::default())
    } else {
        let dump = Dump::open(path)?;
        stats_of_dump_with_progress(engine, &dump, fingerprint, opts, progress)?
    };
    Ok(Measured {
        name: display_name(path),
        path: path.to_path_buf(),
        stats,
        pairing,
    })
}

/// Checks that `others` can be compared with `base`: same SAE, same number of counted
/// tokens, and (for dumps) the same rows and token ids, since base and fine-tune dumps
/// must come from the same prompts.
pub fn check_pairing(base: &Measured, others: &[Measured]) -> Result<()> {
    for o in others {
        let what = || format!("{} and {}", base.path.display(), o.path.display());
        if o.stats.fingerprint != base.stats.fingerprint {
            return Err(Error::Incompatible(format!(
                "{}: statistics come from different SAEs (fingerprints {} and {})",
                what(),
                base.stats.fingerprint,
                o.stats.fingerprint
            )));
        }
        if o.stats.n_latents() != base.stats.n_latents() {
            return Err(Error::Incompatible(format!(
                "{}: {} and {} latents",
                what(),
                base.stats.n_latents(),
                o.stats.n_latents()
            )));
        }
        if o.stats.n_tokens != base.stats.n_tokens {
            return Err(Error::Incompatible(format!(
                "{}: {} and {} counted tokens; dumps of the base and a fine-tune must cover the same \
                 prompts (and the same mask) to be paired",
                what(),
                base.stats.n_tokens,
                o.stats.n_tokens
            )));
        }
        if let (Some(a), Some(b)) = (base.pairing.n_rows, o.pairing.n_rows) {
            if a != b {
                return Err(Error::Incompatible(format!(
                    "{}: dumps have {a} and {b} rows and cannot be paired token by token",
                    what()
                )));
            }
        }
        if let (Some(a), Some(b)) = (base.pairing.token_hash, o.pairing.token_hash) {
            if a != b {
                return Err(Error::Incompatible(format!(
                    "{}: the dumps' token_ids differ, so they do not come from the same prompts",
                    what()
                )));
            }
        }
        if o.stats.n_tokens == 0 {
            return Err(Error::invalid(format!(
                "{}: no tokens counted (empty dump, or a mask that selects nothing)",
                o.path.display()
            )));
        }
    }
    if base.stats.n_tokens == 0 {
        return Err(Error::invalid(format!(
            "{}: no tokens counted (empty dump, or a mask that selects nothing)",
            base.path.display()
        )));
    }
    Ok(())
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

/// FNV-1a, 64 bit, for token-id identity checks.
pub(crate) struct Fnv(u64);
impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

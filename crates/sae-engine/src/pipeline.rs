//! Streaming loops over whole dumps and codes files, shared by the CLI, the C ABI and
//! the workflow tools. Each holds one batch of activations (plus its codes) at a time,
//! so memory is bounded by `batch_rows x (d_in + codes per row)` whatever the dump size.
//!
//! `progress` callbacks receive the number of rows just finished (an increment).

use std::path::{Path, PathBuf};

use crate::codes::Encoded;
use crate::dump::{Batch, Dump};
use crate::error::{Error, Result};
use crate::io::codes_file::{CodesKind, CodesReader, CodesWriter};
// The writer lived here first; kept under this path for existing callers.
use crate::backend::Engine;
pub use crate::io::npy::NpyF32Writer;
use crate::stats::recon::{MetricsAccumulator, ReconMetrics};
use crate::stats::{LatentStats, RowFilter, TokenRule};

pub mod stream;
pub use stream::{RowInfo, StatsStream};

/// What an encode pass produced.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EncodeSummary {
    /// Rows (tokens) encoded.
    pub n_rows: u64,
    /// Mean number of active latents per row.
    pub mean_l0: f64,
    /// Outlier tokens among the rows the token rule counts (every row is encoded, so
    /// the codes stay aligned with the dump; this only reports them).
    pub outliers: crate::stats::rule::OutlierSummary,
}

/// Encodes every row of `dump` and appends the codes to `writer` (which the caller
/// finishes). Checks the dump's width against the SAE first. Counts the outlier tokens
/// among the rows `rule` counts, from a norm histogram (no second pass).
pub fn encode_dump(
    engine: &dyn Engine,
    dump: &Dump,
    batch_rows: usize,
    rule: &TokenRule,
    writer: &mut CodesWriter,
    progress: &dyn Fn(u64),
) -> Result<EncodeSummary> {
    dump.check_width(engine.sae().d_in())?;
    rule.check()?;
    let (mut rows, mut l0) = (0u64, 0u64);
    let mut norms = crate::stats::NormHistogram::default();
    for batch in dump.batches(batch_rows) {
        let batch = batch?;
        let mask = crate::stats::rule::batch_mask(&batch, rule.use_mask);
        for (r, n) in crate::stats::rule::row_norms(dump, &batch)?
            .into_iter()
            .enumerate()
        {
            if mask.is_none_or(|m| m[r] != 0) {
                norms.add(n);
            }
        }
        let enc = engine
            .encode(&batch.acts, batch.rows, batch.start)
            .map_err(|e| in_shard(e, dump, &batch))?;
        l0 += (0..enc.codes.n_rows())
            .map(|i| enc.codes.l0(i) as u64)
            .sum::<u64>();
        writer.push(&enc)?;
        rows += batch.rows as u64;
        progress(batch.rows as u64);
    }
    Ok(EncodeSummary {
        n_rows: rows,
        mean_l0: l0 as f64 / rows.max(1) as f64,
        outliers: crate::stats::rule::OutlierSummary {
            outlier_factor: rule.outlier_factor,
            median_norm: norms.median(),
            n_outliers: norms.n_above(rule.outlier_factor),
            left_out: false,
        },
    })
}

/// Encodes `dump` into a codes file at `out` (TopK or CSR by the SAE's activation,
/// stamped with the SAE's fingerprint), written atomically; `rule` only decides which
/// rows the outlier count looks at.
pub fn encode_dump_to_file(
    engine: &dyn Engine,
    dump: &Dump,
    batch_rows: usize,
    rule: &TokenRule,
    out: &Path,
    progress: &dyn Fn(u64),
) -> Result<EncodeSummary> {
    encode_dump_to_file_with_provenance(engine, dump, batch_rows, rule, out, None, progress)
}

/// [`encode_dump_to_file`], recording `provenance` in the codes file's metadata.
pub fn encode_dump_to_file_with_provenance(
    engine: &dyn Engine,
    dump: &Dump,
    batch_rows: usize,
    rule: &TokenRule,
    out: &Path,
    provenance: Option<&crate::provenance::Provenance>,
    progress: &dyn Fn(u64),
) -> Result<EncodeSummary> {
    let sae = engine.sae();
    dump.check_width(sae.d_in())?;
    let mut w = CodesWriter::create(out, CodesKind::from_k(sae.k()), &sae.fingerprint())?;
    if let Some(p) = provenance {
        let (k, v) = p.metadata_entry();
        w.set_metadata(k, v);
    }
    let s = encode_dump(engine, dump, batch_rows, rule, &mut w, progress)?;
    w.finish()?;
    Ok(s)
}

/// Maps the row number of a non-finite error (input or pre-activation) through `at`.
fn with_row(mut e: Error, at: impl Fn(u64) -> u64) -> Error {
    if let Error::NonFinite { row, .. } | Error::SaeNonFinite { row, .. } = &mut e {
        *row = at(*row);
    }
    e
}

/// The shard file a batch came from (the dump's path when it has no shard list).
fn shard_name(dump: &Dump, batch: &Batch) -> String {
    dump.shards()
        .get(batch.shard)
        .map(|s| s.path().display().to_string())
        .unwrap_or_else(|| dump.path().display().to_string())
}

/// Names the shard file in an encode error that only knows a row number.
fn in_shard(mut e: Error, dump: &Dump, batch: &Batch) -> Error {
    match &mut e {
        Error::NonFinite { context, .. } => {
            let shard = shard_name(dump, batch);
            *context = if context.is_empty() {
                shard
            } else {
                format!("{shard} ({context})")
            };
        }
        Error::SaeNonFinite { input, .. } if input.is_empty() => {
            *input = format!(" of {}", shard_name(dump, batch));
        }
        _ => {}
    }
    e
}

/// Per-latent statistics of `dump` under the engine's SAE. With `use_mask`, rows whose
/// `mask` is 0 are neither encoded nor counted (dumps without a mask count every row).
/// The counted tokens' id digest and norm histogram are recorded beside the latents.
pub fn stats_of_dump(
    engine: &dyn Engine,
    dump: &Dump,
    batch_rows: usize,
    use_mask: bool,
    progress: &dyn Fn(u64),
) -> Result<LatentStats> {
    let sae = engine.sae();
    let stats = LatentStats::new(sae.fingerprint(), sae.n_latents());
    stats_of_dump_into(
        engine,
        dump,
        stats,
        batch_rows,
        &RowFilter::mask_only(use_mask),
        &mut |_| Ok(()),
        progress,
    )
}

/// [`stats_of_dump`] accumulating into `stats` (whose fingerprint the caller chose) the
/// rows `filter` keeps, with `on_batch` called on every batch before it is encoded: a
/// hook to check what the batch carries besides activations. An error from the hook
/// stops the pass.
pub fn stats_of_dump_into(
    engine: &dyn Engine,
    dump: &Dump,
    stats: LatentStats,
    batch_rows: usize,
    filter: &RowFilter,
    on_batch: &mut dyn FnMut(&Batch) -> Result<()>,
    progress: &dyn Fn(u64),
) -> Result<LatentStats> {
    dump.check_width(engine.sae().d_in())?;
    let mut stream = StatsStream::new(stats);
    for batch in dump.batches(batch_rows) {
        let batch = batch?;
        on_batch(&batch)?;
        let keep = filter.keep(dump, &batch)?;
        let info = RowInfo {
            keep: keep.as_deref(),
            token_ids: batch.token_ids.as_deref(),
            doc_ids: batch.doc_ids.as_deref(),
        };
        stream
            .push_rows(engine, &batch.acts, batch.rows, batch.start, info)
            .map_err(|e| in_shard(e, dump, &batch))?;
        progress(batch.rows as u64);
    }
    Ok(stream.finish())
}

/// Statistics of a codes file (no encoding): the codes must come from an SAE with
/// `n_latents` latents; the fingerprint is the file's.
pub fn stats_of_codes(
    codes: &CodesReader,
    n_latents: usize,
    batch_rows: usize,
    progress: &dyn Fn(u64),
) -> Result<LatentStats> {
    let fp = codes.fingerprint().unwrap_or_default().to_string();
    let mut stats = LatentStats::new(fp, n_latents);
    // A codes file has neither token ids nor activations to take norms of.
    stats.tokens = None;
    stats.norms = None;
    stats.docs = None;
    let n = codes.n_rows();
    let mut start = 0;
    while start < n {
        let count = batch_rows.max(1).min(n - start);
        let enc = codes.read_rows(start, count)?;
        enc.codes
            .validate(n_latents)
            .map_err(|e| Error::format(codes.path(), e.to_string()))?;
        stats.accumulate(&enc.codes, None)?;
        start += count;
        progress(count as u64);
    }
    Ok(stats)
}

/// Merges statistics files of the same SAE (refuses different fingerprints or widths).
pub fn merge_stats_files(paths: &[PathBuf]) -> Result<LatentStats> {
    let (first, rest) = paths
        .split_first()
        .ok_or_else(|| Error::invalid("stats merge needs at least one statistics file"))?;
    let mut acc = crate::io::stats_file::read(first)?;
    for p in rest {
        let s = crate::io::stats_file::read(p)?;
        acc.merge(&s).map_err(|e| match e {
            Error::Incompatible(m) => {
                Error::Incompatible(format!("{} and {}: {m}", first.display(), p.display()))
            }
            other => other,
        })?;
    }
    Ok(acc)
}

/// What a decode pass produced.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DecodeSummary {
    /// Rows decoded.
    pub n_rows: u64,
    /// Reconstruction quality over the rows the token rule keeps, when the original
    /// activations were given.
    pub metrics: Option<ReconMetrics>,
    /// The token rule's outliers in the dump (left out of the metrics unless kept).
    pub outliers: Option<crate::stats::rule::OutlierSummary>,
}

/// Decodes a codes file into an f32 `.npy` `[n, d_in]` at `out` (streamed, atomic).
/// With `acts`, the original dump (token-aligned with the codes) is scored with MSE,
/// FVU, cosine and L0 over the rows its [`RowFilter`] keeps (every row is decoded).
/// The codes' fingerprint must match the engine's SAE.
pub fn decode_to_npy(
    engine: &dyn Engine,
    codes: &CodesReader,
    acts: Option<(&Dump, &RowFilter)>,
    batch_rows: usize,
    out: &Path,
    progress: &dyn Fn(u64),
) -> Result<DecodeSummary> {
    let sae = engine.sae();
    let (d, l) = (sae.d_in(), sae.n_latents());
    codes.check_fingerprint(&sae.fingerprint())?;
    let want = CodesKind::from_k(sae.k());
    // A TopK file with another k still decodes (a gather-sum of whatever is stored).
    if codes.kind().name() != want.name() {
        return Err(Error::Incompatible(format!(
            "{}: holds {} codes, but the SAE produces {} codes",
            codes.path().display(),
            codes.kind().name(),
            want.name()
        )));
    }
    if sae.normalization != crate::sae::Normalization::None && !codes.has_denorm() {
        return Err(Error::missing(
            codes.path(),
            "tensors `norm_scale`/`norm_shift`: the SAE normalizes its input, so decoding needs them",
        ));
    }
    let n = codes.n_rows();
    if let Some((dump, _)) = acts {
        dump.check_width(d)?;
        if dump.n_rows() != n as u64 {
            return Err(Error::Incompatible(format!(
                "{} has {} rows, but the codes {} have {n}",
                dump.path().display(),
                dump.n_rows(),
                codes.path().display()
            )));
        }
    }
    let mut w = NpyF32Writer::create(out, n, d)?;
    let decode = |enc: &Encoded| -> Result<Vec<f32>> {
        enc.codes
            .validate(l)
            .map_err(|e| Error::format(codes.path(), e.to_string()))?;
        engine.decode(&enc.codes, enc.denorm.as_ref())
    };
    let metrics = match acts {
        Some((dump, filter)) => {
            let mut m = MetricsAccumulator::new(d);
            for batch in dump.batches(batch_rows) {
                let batch = batch?;
                let enc = codes.read_rows(batch.start as usize, batch.rows)?;
                let x_hat = decode(&enc)?;
                match filter.keep(dump, &batch)? {
                    None => m.add(
                        &batch.acts,
                        &x_hat,
                        (0..batch.rows).map(|i| enc.codes.l0(i)),
                    ),
                    Some(keep) => {
                        let rows: Vec<usize> = (0..batch.rows).filter(|r| keep[*r] != 0).collect();
                        let pick = |v: &[f32]| -> Vec<f32> {
                            rows.iter()
                                .flat_map(|r| v[r * d..(r + 1) * d].iter().copied())
                                .collect()
                        };
                        m.add(
                            &pick(&batch.acts),
                            &pick(&x_hat),
                            rows.iter().map(|i| enc.codes.l0(*i)),
                        );
                    }
                }
                w.push(&x_hat)?;
                progress(batch.rows as u64);
            }
            Some(m.finish())
        }
        None => {
            let mut start = 0;
            while start < n {
                let count = batch_rows.max(1).min(n - start);
                let x_hat = decode(&codes.read_rows(start, count)?)?;
                w.push(&x_hat)?;
                start += count;
                progress(count as u64);
            }
            None
        }
    };
    w.finish()?;
    Ok(DecodeSummary {
        n_rows: n as u64,
        metrics,
        outliers: acts.map(|(_, f)| f.summary()),
    })
}

//! Statistics fed batch by batch from memory: the per-batch work of `sae stats` (row
//! norms, token ids, encoding the counted rows, per-latent sums, per-document sums) in
//! one place, used by the dump loop and by callers that hold rows in memory (a forward
//! hook on a running model, through the C ABI). The same rows in the same order give
//! the same statistics, bit for bit, whichever way they arrive.

use crate::backend::Engine;
use crate::codes::Codes;
use crate::error::{Error, Result};
use crate::stats::{LatentStats, OpenDoc};

/// What a batch of rows carries beside its activations (the columns of a dump).
#[derive(Debug, Clone, Copy, Default)]
pub struct RowInfo<'a> {
    /// 1 = the row counts, 0 = left out (prompt tokens, sinks, padding); None = every row.
    pub keep: Option<&'a [u8]>,
    /// Token id of each row (for the token digest); None = not recorded.
    pub token_ids: Option<&'a [i64]>,
    /// Document id of each row (for document-clustered errors); None = not recorded.
    pub doc_ids: Option<&'a [i64]>,
}

impl RowInfo<'_> {
    /// Checks every column has `rows` entries.
    fn check(&self, rows: usize) -> Result<()> {
        let lens = [
            ("mask", self.keep.map(<[u8]>::len)),
            ("token_ids", self.token_ids.map(<[i64]>::len)),
            ("doc_ids", self.doc_ids.map(<[i64]>::len)),
        ];
        for (name, len) in lens {
            if let Some(n) = len.filter(|n| *n != rows) {
                return Err(Error::invalid(format!(
                    "{name} has {n} entries for {rows} rows"
                )));
            }
        }
        Ok(())
    }

    /// Indices of the rows that count.
    fn kept(&self, rows: usize) -> Vec<usize> {
        match self.keep {
            Some(k) => (0..rows).filter(|r| k[*r] != 0).collect(),
            None => (0..rows).collect(),
        }
    }
}

/// Statistics being accumulated, with the document the last batch left open (a
/// document may continue in the next batch).
#[derive(Debug, Clone)]
pub struct StatsStream {
    stats: LatentStats,
    open_doc: OpenDoc,
}

impl StatsStream {
    /// A stream adding to `stats` (usually empty, with the SAE's fingerprint).
    pub fn new(stats: LatentStats) -> Self {
        StatsStream {
            stats,
            open_doc: OpenDoc::default(),
        }
    }

    /// The statistics so far (the open document's sums not yet in `docs`).
    pub fn stats(&self) -> &LatentStats {
        &self.stats
    }

    /// Mutable statistics (e.g. to set the outlier factor).
    pub fn stats_mut(&mut self) -> &mut LatentStats {
        &mut self.stats
    }

    /// Adds `rows` rows of `acts` (`[rows, d_in]`): the counted rows are encoded with
    /// `engine` and accumulated. Row numbers in errors count from `start`. Every check
    /// and the encode run before anything is added, so an error leaves the statistics
    /// as they were.
    pub fn push_rows(
        &mut self,
        engine: &dyn Engine,
        acts: &[f32],
        rows: usize,
        start: u64,
        info: RowInfo<'_>,
    ) -> Result<()> {
        let d = engine.sae().d_in();
        if rows.checked_mul(d) != Some(acts.len()) {
            return Err(Error::invalid(format!(
                "{} values are not {rows} rows of width d_in = {d}",
                acts.len()
            )));
        }
        info.check(rows)?;
        let norms = crate::stats::rule::row_norms_of(acts, d, start)?;
        let kept = info.kept(rows);
        // Encode only the rows that count: masked-out tokens (prompts, padding) are often
        // most of the input.
        let codes = if kept.len() == rows {
            Some(engine.encode(acts, rows, start)?.codes)
        } else if !kept.is_empty() {
            let mut x = Vec::with_capacity(kept.len() * d);
            for r in &kept {
                x.extend_from_slice(&acts[r * d..(r + 1) * d]);
            }
            let enc = engine.encode(&x, kept.len(), 0).map_err(|e| {
                super::with_row(e, |row| {
                    start + kept.get(row as usize).copied().unwrap_or(0) as u64
                })
            })?;
            Some(enc.codes)
        } else {
            None
        };
        self.record_tokens(&norms, &kept, info);
        if let Some(codes) = codes {
            engine.accumulate(&mut self.stats, &codes, None)?;
            self.record_docs(&kept, info, &codes);
        }
        Ok(())
    }

    /// Adds rows encoded elsewhere (e.g. on a device): `codes` are the codes of the
    /// counted rows only, in order, and `norms` the L2 norms of all `rows` rows.
    /// Checked before anything is added, as [`push_rows`](Self::push_rows).
    pub fn push_codes(
        &mut self,
        codes: &Codes,
        norms: &[f64],
        rows: usize,
        info: RowInfo<'_>,
    ) -> Result<()> {
        info.check(rows)?;
        if norms.len() != rows {
            return Err(Error::invalid(format!(
                "norms has {} entries for {rows} rows",
                norms.len()
            )));
        }
        if let Some(r) = norms.iter().position(|n| !(n.is_finite() && *n >= 0.0)) {
            return Err(Error::invalid(format!(
                "norm of row {r} is {}: expected a finite number >= 0",
                norms[r]
            )));
        }
        let kept = info.kept(rows);
        if codes.n_rows() != kept.len() {
            return Err(Error::invalid(format!(
                "{} rows of codes for the {} rows that count",
                codes.n_rows(),
                kept.len()
            )));
        }
        codes.validate(self.stats.n_latents())?;
        self.record_tokens(norms, &kept, info);
        self.stats.accumulate(codes, None)?;
        self.record_docs(&kept, info, codes);
        Ok(())
    }

    /// The statistics with the open document closed, leaving the stream as it is.
    pub fn snapshot(&self) -> LatentStats {
        self.clone().finish()
    }

    /// Closes the open document and returns the statistics.
    pub fn finish(mut self) -> LatentStats {
        if let Some(docs) = self.stats.docs.as_mut() {
            self.open_doc.close(docs);
        }
        self.stats
    }

    /// Adds the kept rows' norms to the histogram and their token ids to the digest.
    fn record_tokens(&mut self, norms: &[f64], kept: &[usize], info: RowInfo<'_>) {
        if let Some(h) = self.stats.norms.as_mut() {
            kept.iter().for_each(|r| h.add(norms[*r]));
        }
        if let (Some(t), Some(ids)) = (self.stats.tokens.as_mut(), info.token_ids) {
            for r in kept {
                t.add(ids[*r], info.doc_ids.map(|d| d[*r]));
            }
        }
    }

    /// Adds the kept rows (whose codes are `codes`, in order) to the per-document sums;
    /// rows without doc ids leave the statistics without them.
    fn record_docs(&mut self, kept: &[usize], info: RowInfo<'_>, codes: &Codes) {
        let Some(docs) = self.stats.docs.as_mut() else {
            return;
        };
        let Some(ids) = info.doc_ids else {
            self.stats.docs = None;
            return;
        };
        for (j, r) in kept.iter().enumerate() {
            self.open_doc.add(docs, ids[*r], codes.active(j));
        }
    }
}

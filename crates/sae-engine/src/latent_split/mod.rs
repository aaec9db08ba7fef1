//! SAEs split over their latents: one inner engine per contiguous latent range (a
//! "latent shard"), e.g. one per GPU for an SAE too large for one card, or several on one
//! device. Backend-independent: the inner engines are any [`Engine`]s (CPU ones in CI).
//!
//! - Encode: the input is checked, normalized and centered once (`Sae::prepare_input`), every
//!   shard encodes the same prepared rows, and the shards' exact top-k rows are merged into
//!   the global top-k (larger value first, ties to the smaller global latent index), or their
//!   CSR rows concatenated. The codes equal the unsharded engine's bit for bit when every
//!   latent's pre-activation is summed in the same order in both. CPU shards: the `gemm`
//!   crate's blocked path sums each output independently of the tile, and real batches
//!   (more than 64 rows, tiles at least two latents wide, d > 2) take it; its shortcuts for
//!   tiny products (one row or one latent per product, rows x tile <= 256) may round
//!   differently in the last bit. CUDA shards: pin the GEMM algorithm (cuBLAS picks one per
//!   shape).
//! - Decode: the codes are split by shard, each shard decodes its part without b_dec, the
//!   partial reconstructions are added to b_dec in shard order and de-normalized. The sum is
//!   grouped per shard, so it equals the unsharded decode up to f32 rounding, not bit for bit.
//! - Statistics: each shard accumulates its latents' slice of the running statistics; the
//!   slices are concatenated back, bit for bit what the whole SAE accumulates.
//!
//! Shards run concurrently, one thread each. Caller-owned device memory (`device_ptr`) is
//! not offered: it lives on one device, the shards on several.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::codes::{Codes, Denorm, Encoded};
use crate::error::{Error, Result};
// The one place this module names the engine API.
use crate::backend::{BackendKind, Engine, EngineOptions};
use crate::sae::{Activation, Sae};
use crate::stats::LatentStats;

pub mod merge;
mod split;

pub use split::{parse_shard_backends, shard_sae, LatentSplit};

/// An engine over latent shards, each run by its own inner engine.
pub struct ShardedEngine {
    sae: Arc<Sae>,
    ranges: Vec<Range<usize>>,
    offsets: Vec<usize>,
    /// One inner engine per range; locked by the thread that runs the shard.
    shards: Vec<Mutex<Box<dyn Engine>>>,
}

impl ShardedEngine {
    /// Splits `sae` by `split` and opens each shard with `open(shard index, shard SAE)`
    /// (see [`shard_sae`] for what a shard SAE holds).
    pub fn new(
        sae: Arc<Sae>,
        split: &LatentSplit,
        mut open: impl FnMut(usize, Arc<Sae>) -> Result<Box<dyn Engine>>,
    ) -> Result<ShardedEngine> {
        sae.validate()?;
        if split.n_latents() != sae.n_latents() {
            return Err(Error::invalid(format!(
                "latent split covers {} latents; the SAE has {}",
                split.n_latents(),
                sae.n_latents()
            )));
        }
        if sae.n_latents() > i32::MAX as usize {
            return Err(Error::invalid("SAE has more than 2^31 latents"));
        }
        let ranges = split.ranges();
        let mut shards = Vec::with_capacity(ranges.len());
        for (i, r) in ranges.iter().enumerate() {
            let part = Arc::new(shard_sae(&sae, r.clone())?);
            shards.push(Mutex::new(open(i, part)?));
        }
        Ok(ShardedEngine {
            offsets: ranges.iter().map(|r| r.start).collect(),
            ranges,
            sae,
            shards,
        })
    }

    /// One shard per entry of `kinds` (latents split evenly, see [`LatentSplit::even`]),
    /// each opened like an unsharded engine with `opts`.
    pub fn open(
        sae: Arc<Sae>,
        kinds: &[BackendKind],
        opts: &EngineOptions,
    ) -> Result<ShardedEngine> {
        let split = LatentSplit::even(sae.n_latents(), kinds.len())?;
        ShardedEngine::new(sae, &split, |i, part| {
            crate::engine::engine(kinds[i], part, opts)
        })
    }

    /// The shards' latent ranges, in order.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Runs `f(shard, engine, data[shard])` for every shard, concurrently when there are
    /// several. On failure the error is the one of the earliest row (see [`pick_error`]),
    /// its latent given in the whole SAE's numbering.
    fn run<D: Send, T: Send>(
        &self,
        data: Vec<D>,
        f: impl Fn(usize, &dyn Engine, D) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let call = |i: usize, d: D| -> Result<T> {
            let engine = self.shards[i]
                .lock()
                .map_err(|_| Error::invalid(format!("latent shard {i} failed earlier (panic)")))?;
            f(i, engine.as_ref(), d).map_err(|e| self.global_error(i, e))
        };
        let results: Vec<Result<T>> = if self.shards.len() == 1 {
            data.into_iter()
                .enumerate()
                .map(|(i, d)| call(i, d))
                .collect()
        } else {
            let call = &call;
            std::thread::scope(|s| {
                let handles: Vec<_> = data
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| s.spawn(move || call(i, d)))
                    .collect();
                handles
                    .into_iter()
                    .enumerate()
                    .map(|(i, h)| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::invalid(format!("latent shard {i} panicked")))
                        })
                    })
                    .collect()
            })
        };
        let mut ok = Vec::with_capacity(results.len());
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(v) => ok.push(v),
                Err(e) => errors.push(e),
            }
        }
        match pick_error(errors) {
            Some(e) => Err(e),
            None => Ok(ok),
        }
    }

    /// A shard's error in the whole SAE's terms (its latent index shifted).
    fn global_error(&self, shard: usize, e: Error) -> Error {
        match e {
            Error::SaeNonFinite {
                sae,
                latent,
                value,
                row,
                input,
            } => Error::SaeNonFinite {
                sae,
                latent: latent + self.offsets[shard],
                value,
                row,
                input,
            },
            e => e,
        }
    }
}

/// Of the shards' errors, the non-finite pre-activation of the smallest (row, latent) when
/// there are such (the one the unsharded engine names), else the first shard's.
fn pick_error(errors: Vec<Error>) -> Option<Error> {
    let key = |e: &Error| match e {
        Error::SaeNonFinite { row, latent, .. } => Some((*row, *latent)),
        _ => None,
    };
    let earliest = errors
        .iter()
        .enumerate()
        .filter_map(|(i, e)| key(e).map(|k| (k, i)))
        .min()
        .map(|(_, i)| i);
    let at = earliest.unwrap_or(0);
    errors.into_iter().nth(at)
}

impl Engine for ShardedEngine {
    fn name(&self) -> String {
        let parts: Vec<String> = self
            .shards
            .iter()
            .zip(&self.ranges)
            .map(|(s, r)| {
                let name = s
                    .lock()
                    .map(|e| e.name())
                    .unwrap_or_else(|_| "failed".into());
                format!("{}..{} on {name}", r.start, r.end)
            })
            .collect();
        format!("{} latent shards [{}]", self.shards.len(), parts.join("; "))
    }

    fn sae(&self) -> &Sae {
        &self.sae
    }

    fn encode(&self, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded> {
        let (xp, denorm) = self.sae.prepare_input(x, rows, row_offset)?;
        let parts = self.run(vec![(); self.shards.len()], |_, e, ()| {
            e.encode(&xp, rows, row_offset).map(|enc| enc.codes)
        })?;
        let codes = match self.sae.activation {
            Activation::TopK { k } => merge::merge_topk(&parts, &self.offsets, rows, k)?,
            Activation::Relu | Activation::JumpRelu => {
                merge::concat_csr(&parts, &self.offsets, rows)?
            }
        };
        Ok(Encoded { codes, denorm })
    }

    fn decode(&self, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>> {
        let d = self.sae.d_in();
        codes.check_decodable(self.sae.n_latents(), denorm)?;
        let n = codes.n_rows();
        let split = merge::split_codes(codes, &self.ranges);
        let partial = self.run(split, |_, e, part| e.decode(&part, None))?;
        let mut out = vec![0f32; n * d];
        out.par_chunks_mut(d.max(1)).enumerate().for_each(|(r, o)| {
            o.copy_from_slice(&self.sae.b_dec);
            for p in &partial {
                o.iter_mut()
                    .zip(&p[r * d..(r + 1) * d])
                    .for_each(|(a, b)| *a += b);
            }
            if let Some(dn) = denorm {
                let (s, t) = (dn.scale[r], dn.shift[r]);
                o.iter_mut().for_each(|a| *a = *a * s + t);
            }
        });
        Ok(out)
    }

    fn accumulate(
        &self,
        stats: &mut LatentStats,
        codes: &Codes,
        mask: Option<&[u8]>,
    ) -> Result<()> {
        let l = self.sae.n_latents();
        if stats.n_latents() != l {
            return Err(Error::invalid(format!(
                "statistics have {} latents; the SAE has {l}",
                stats.n_latents()
            )));
        }
        codes.validate(l)?;
        if let Some(m) = mask.filter(|m| m.len() != codes.n_rows()) {
            return Err(Error::invalid(format!(
                "mask has {} entries for {} rows of codes",
                m.len(),
                codes.n_rows()
            )));
        }
        let split = merge::split_codes(codes, &self.ranges);
        let data: Vec<(Codes, LatentStats)> = split
            .into_iter()
            .zip(&self.ranges)
            .enumerate()
            .map(|(i, (c, r))| (c, merge::stats_part(stats, r.clone(), i == 0)))
            .collect();
        // Parts are copies: a failing shard leaves `stats` as it was.
        let parts = self.run(data, |_, e, (c, mut part)| {
            e.accumulate(&mut part, &c, mask).map(|()| part)
        })?;
        merge::join_stats(stats, &self.ranges, parts)
    }
}

#[cfg(test)]
mod tests;

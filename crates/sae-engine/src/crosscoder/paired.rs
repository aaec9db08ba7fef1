//! Paired activations: one dump per model with rows aligned one to one (e.g. the
//! crosscoder_learning caches of the base and the fine-tuned model), or one
//! `[n, n_models, d]` `.npy` array as the fork takes it. Read in lockstep as
//! `[rows, n_models * d]` batches.

use std::path::{Path, PathBuf};

use crate::dump::{crosscoder_cache::open_stacked_npy, Dump};
use crate::error::{Error, Result};

/// Paired activations of `n_models` models.
pub struct Paired {
    /// One dump of width `n_models * d`, or `n_models` dumps of width `d`.
    dumps: Vec<Dump>,
    n_models: usize,
    d: usize,
    n_rows: u64,
}

fn is_3d_npy(path: &Path) -> bool {
    path.is_file()
        && path.extension().and_then(|e| e.to_str()) == Some("npy")
        && crate::io::mapped::map_file(path)
            .ok()
            .and_then(|m| crate::io::npy::NpyHeader::parse(path, &m[..]).ok())
            .is_some_and(|h| h.shape.len() == 3)
}

/// Rows `start..start + count` (over all shards) of `dump` into `out`.
fn read_global(dump: &Dump, start: u64, count: usize, out: &mut [f32]) -> Result<()> {
    let w = dump.width();
    let (mut at, mut done) = (start, 0usize);
    let mut base = 0u64;
    for s in dump.shards() {
        let n = s.n_rows() as u64;
        if done < count && at < base + n {
            let local = (at - base) as usize;
            let take = (count - done).min(s.n_rows() - local);
            s.read_rows(local, take, &mut out[done * w..(done + take) * w])?;
            done += take;
            at += take as u64;
        }
        base += n;
    }
    if done != count {
        return Err(Error::invalid(format!(
            "{}: rows {start}..{} requested, the dump has {}",
            dump.path().display(),
            start + count as u64,
            dump.n_rows()
        )));
    }
    Ok(())
}

impl Paired {
    /// Opens `paths`: one path (a `[n, n_models, d]` .npy, or a dump already of width
    /// `n_models * d`), or one dump per model, in model order (base first).
    pub fn open(paths: &[PathBuf], n_models: usize, d: usize) -> Result<Paired> {
        let dumps = match paths {
            [] => return Err(Error::invalid("paired activations: no input given")),
            [one] => {
                let dump = if is_3d_npy(one) {
                    Dump::from_shards(one, vec![open_stacked_npy(one, n_models)?])?
                } else {
                    Dump::open(one)?
                };
                dump.check_width(n_models * d)?;
                vec![dump]
            }
            many if many.len() == n_models => {
                let dumps = many.iter().map(Dump::open).collect::<Result<Vec<_>>>()?;
                for dump in &dumps {
                    dump.check_width(d)?;
                    if dump.n_rows() != dumps[0].n_rows() {
                        return Err(Error::Incompatible(format!(
                            "paired activations must align row for row: {} has {} rows, {} has {}",
                            dumps[0].path().display(),
                            dumps[0].n_rows(),
                            dump.path().display(),
                            dump.n_rows()
                        )));
                    }
                }
                dumps
            }
            many => {
                return Err(Error::invalid(format!(
                    "paired activations: {} inputs for a crosscoder of {n_models} models \
                     (give one [n, {n_models}, d] array or one dump per model)",
                    many.len()
                )))
            }
        };
        let n_rows = dumps[0].n_rows();
        Ok(Paired {
            dumps,
            n_models,
            d,
            n_rows,
        })
    }

    /// Paired rows.
    pub fn n_rows(&self) -> u64 {
        self.n_rows
    }

    /// The input paths, in model order.
    pub fn paths(&self) -> Vec<&Path> {
        self.dumps.iter().map(|d| d.path()).collect()
    }

    /// Rows `start..start + count` as `[count, n_models * d]`.
    pub fn read(&self, start: u64, count: usize) -> Result<Vec<f32>> {
        let (n, d) = (self.n_models, self.d);
        let mut out = vec![0f32; count * n * d];
        if self.dumps.len() == 1 {
            read_global(&self.dumps[0], start, count, &mut out)?;
            return Ok(out);
        }
        let mut part = vec![0f32; count * d];
        for (m, dump) in self.dumps.iter().enumerate() {
            read_global(dump, start, count, &mut part)?;
            for (o, p) in out.chunks_exact_mut(n * d).zip(part.chunks_exact(d)) {
                o[m * d..(m + 1) * d].copy_from_slice(p);
            }
        }
        Ok(out)
    }

    /// Calls `f(start, rows, x)` on consecutive batches of at most `batch_rows` rows.
    pub fn for_each_batch(
        &self,
        batch_rows: usize,
        mut f: impl FnMut(u64, usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let batch_rows = batch_rows.max(1) as u64;
        let mut start = 0u64;
        while start < self.n_rows {
            let count = batch_rows.min(self.n_rows - start) as usize;
            let x = self.read(start, count)?;
            f(start, count, &x)?;
            start += count as u64;
        }
        Ok(())
    }
}

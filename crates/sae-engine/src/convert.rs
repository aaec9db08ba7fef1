//! Conversions for `sae convert`: any loadable SAE to the SAELens layout, and any dump
//! to safetensors shards (`activations` [n, d] plus `token_ids` / `doc_ids` / `mask`
//! when the source has them). Dumps are streamed: memory holds one output shard.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::dtype::{convert_from_f32, DType};
use crate::dump::{Batch, Dump};
use crate::error::{Error, Result};
use crate::io::mapped::{write_safetensors, OwnedTensor};
use crate::sae::{Format, Sae};

/// Writes the SAE at `src` in the SAELens v6 layout into `out_dir` (created if absent).
pub fn convert_sae(src: &Path, format: Option<Format>, out_dir: &Path) -> Result<Sae> {
    convert_sae_with(
        src,
        format,
        &crate::formats::LoadOptions::default(),
        out_dir,
    )
}

/// [`convert_sae`] reading the source with `opts` (its conventions are folded into the
/// written weights).
pub fn convert_sae_with(
    src: &Path,
    format: Option<Format>,
    opts: &crate::formats::LoadOptions,
    out_dir: &Path,
) -> Result<Sae> {
    let sae = crate::formats::load_with(src, format, opts)?;
    write_sae_as_saelens(&sae, out_dir)?;
    Ok(sae)
}

/// Writes a loaded SAE in the SAELens v6 layout into `out_dir` (created if absent).
pub fn write_sae_as_saelens(sae: &Sae, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    crate::formats::write_saelens(sae, out_dir)
}

/// Options for [`convert_dump`].
#[derive(Debug, Clone, Copy)]
pub struct DumpConvertOptions {
    /// Rows per output shard (bounds memory: rows x d values).
    pub rows_per_shard: usize,
    /// Stored dtype of `activations`.
    pub dtype: DType,
    /// Rows read per batch from the source.
    pub batch_rows: usize,
}

impl Default for DumpConvertOptions {
    fn default() -> Self {
        DumpConvertOptions {
            rows_per_shard: 1 << 16,
            dtype: DType::F32,
            batch_rows: 4096,
        }
    }
}

/// A shard being filled.
#[derive(Default)]
struct Pending {
    rows: usize,
    acts: Vec<f32>,
    token_ids: Option<Vec<i64>>,
    doc_ids: Option<Vec<i64>>,
    mask: Option<Vec<u8>>,
}

impl Pending {
    /// Appends rows `from..to` of a batch. A per-token column is kept only while
    /// every row so far has it.
    fn push(&mut self, b: &Batch, d: usize, from: usize, to: usize) {
        let first = self.rows == 0;
        fn add<T: Copy>(
            dst: &mut Option<Vec<T>>,
            src: &Option<Vec<T>>,
            first: bool,
            from: usize,
            to: usize,
        ) {
            match (dst.as_mut(), src) {
                (Some(v), Some(s)) => v.extend_from_slice(&s[from..to]),
                (None, Some(s)) if first => *dst = Some(s[from..to].to_vec()),
                _ => *dst = None,
            }
        }
        add(&mut self.token_ids, &b.token_ids, first, from, to);
        add(&mut self.doc_ids, &b.doc_ids, first, from, to);
        add(&mut self.mask, &b.mask, first, from, to);
        self.acts.extend_from_slice(&b.acts[from * d..to * d]);
        self.rows += to - from;
    }

    fn write(self, path: &Path, d: usize, dtype: DType) -> Result<()> {
        let mut tensors: Vec<(&str, OwnedTensor)> = vec![(
            "activations",
            OwnedTensor {
                dtype: dtype.to_safetensors(),
                shape: vec![self.rows, d],
                data: convert_from_f32(dtype, &self.acts),
            },
        )];
        if let Some(t) = &self.token_ids {
            tensors.push(("token_ids", OwnedTensor::i64(vec![self.rows], t)));
        }
        if let Some(t) = &self.doc_ids {
            tensors.push(("doc_ids", OwnedTensor::i64(vec![self.rows], t)));
        }
        if let Some(m) = &self.mask {
            tensors.push(("mask", OwnedTensor::u8(vec![self.rows], m)));
        }
        write_safetensors(path, &tensors, HashMap::new())
    }
}

/// Streams `dump` into `out_dir/shard_00000.safetensors, ...` and returns the files written.
pub fn convert_dump(dump: &Dump, out_dir: &Path, opts: DumpConvertOptions) -> Result<Vec<PathBuf>> {
    if opts.rows_per_shard == 0 {
        return Err(Error::invalid("rows per shard must be positive"));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let d = dump.width();
    let mut written = Vec::new();
    let mut pending = Pending::default();
    let flush = |p: Pending, written: &mut Vec<PathBuf>| -> Result<()> {
        let path = out_dir.join(format!("shard_{:05}.safetensors", written.len()));
        p.write(&path, d, opts.dtype)?;
        written.push(path);
        Ok(())
    };
    for batch in dump.batches(opts.batch_rows.min(opts.rows_per_shard)) {
        let b = batch?;
        let mut i = 0;
        while i < b.rows {
            let take = (opts.rows_per_shard - pending.rows).min(b.rows - i);
            pending.push(&b, d, i, i + take);
            i += take;
            if pending.rows == opts.rows_per_shard {
                flush(std::mem::take(&mut pending), &mut written)?;
            }
        }
    }
    if pending.rows > 0 {
        flush(pending, &mut written)?;
    }
    Ok(written)
}

//! crosscoder_learning (science-of-finetuning fork of dictionary_learning) activation
//! caches: a directory `SUBMODULE_io/` with `config.json` (`shard_count`, `total_size`,
//! `d_model`, `store_tokens`, `shuffle_shards`) and `shard_I.memmap` (raw row-major
//! `[n, d]`, no header) + `shard_I.meta` (`{"shape": [n, d], "dtype": "torch.bfloat16"}`;
//! bf16 is written as int16 bits, a missing dtype means float32). Token ids, when
//! stored, are `tokens.pt` (one int64 tensor over all shards) in the parent directory.
//! Shards are read in index order (shard_2 before shard_10).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::json;
use super::mapped_rows::{MappedRows, RowsShard};
use super::Shard;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::pickle::{self, TorchTensor};

/// Whether `dir` is a crosscoder_learning cache directory.
pub fn looks_like(dir: &Path) -> bool {
    dir.join("config.json").is_file() && dir.join("shard_0.memmap").is_file()
}

/// Token ids shared by the shards of one cache.
struct Tokens {
    path: PathBuf,
    tensor: TorchTensor,
}

/// One `shard_I.memmap`.
pub struct MemmapShard {
    data: MappedRows,
    tokens: Option<(Arc<Tokens>, usize)>,
}

fn parse_dtype(meta_path: &Path, s: Option<&str>) -> Result<DType> {
    match s {
        None => Ok(DType::F32),
        Some(s) => DType::parse(s).ok_or_else(|| {
            Error::format(
                meta_path,
                format!("dtype `{s}` is not supported (float32, float16, bfloat16)"),
            )
        }),
    }
}

/// Opens a cache directory as shards (with token ids when the cache stored them unshuffled).
pub fn open_shards(dir: &Path) -> Result<Vec<Box<dyn Shard>>> {
    let cfg_path = dir.join("config.json");
    let cfg = json::read(&cfg_path)?;
    let count = cfg
        .get("shard_count")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::missing(&cfg_path, "shard_count"))? as usize;
    if count == 0 {
        return Err(Error::format(&cfg_path, "shard_count is 0"));
    }
    let total = cfg.get("total_size").and_then(|v| v.as_u64());
    let d_model = cfg.get("d_model").and_then(|v| v.as_u64());
    let mut shards = Vec::with_capacity(count);
    let mut rows_total = 0u64;
    for i in 0..count {
        let path = dir.join(format!("shard_{i}.memmap"));
        let meta_path = dir.join(format!("shard_{i}.meta"));
        let meta = json::read(&meta_path)?;
        let shape = json::shape(&meta, "shape");
        if shape.len() != 2 {
            return Err(Error::format(
                &meta_path,
                format!("shape {shape:?}: expected [n, d]"),
            ));
        }
        let dtype = parse_dtype(&meta_path, meta.get("dtype").and_then(|v| v.as_str()))?;
        if let Some(dm) = d_model {
            if dm as usize != shape[1] {
                return Err(Error::WidthMismatch {
                    path: meta_path,
                    got: shape[1],
                    expected: dm as usize,
                });
            }
        }
        let map = crate::io::mapped::map_file(&path)?;
        let need = shape[0]
            .checked_mul(shape[1])
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| Error::format(&meta_path, "shape overflows"))?;
        if map.len() < need {
            return Err(Error::format(
                &path,
                format!(
                    "{} bytes, but the meta file's shape {shape:?} {dtype} needs {need}",
                    map.len()
                ),
            ));
        }
        shards.push(MemmapShard {
            data: MappedRows::new(&path, map, 0, shape[0], shape[1], dtype),
            tokens: None,
        });
        rows_total += shape[0] as u64;
    }
    if let Some(t) = total {
        if t != rows_total {
            return Err(Error::format(
                &cfg_path,
                format!("total_size is {t}, but the shards hold {rows_total} rows"),
            ));
        }
    }
    let store_tokens = cfg
        .get("store_tokens")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let shuffled = cfg
        .get("shuffle_shards")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if store_tokens && !shuffled {
        if let Some(tpath) = [dir.join("tokens.pt"), dir.join("..").join("tokens.pt")]
            .into_iter()
            .find(|p| p.is_file())
        {
            let file = pickle::load(&tpath)?;
            let tensor = file.root_tensor()?.clone();
            if tensor.shape.len() != 1 || tensor.numel() as u64 != rows_total {
                return Err(Error::shape(
                    &tpath,
                    "tokens",
                    &tensor.shape,
                    format!("[{rows_total}] (one token per cached row)"),
                ));
            }
            tensor.i64_range(&tpath, "tokens", 0, 0)?; // integer dtype check
            let tokens = Arc::new(Tokens {
                path: tpath,
                tensor,
            });
            let mut start = 0;
            for s in &mut shards {
                s.tokens = Some((tokens.clone(), start));
                start += s.data.rows();
            }
        }
    }
    Ok(shards
        .into_iter()
        .map(|s| Box::new(s) as Box<dyn Shard>)
        .collect())
}

/// Activations plus the cache's token ids when it stored them; no doc ids, no mask.
impl RowsShard for MemmapShard {
    fn rows(&self) -> &MappedRows {
        &self.data
    }
    fn token_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        match &self.tokens {
            Some((t, base)) => t
                .tensor
                .i64_range(&t.path, "tokens", base + start, count)
                .map(Some),
            None => Ok(None),
        }
    }
}

/// Opens one `.npy` of paired activations `[n, n_models, d]` (the layout the fork's
/// crosscoders take) as one shard of width `n_models * d`: row i is the models' rows
/// concatenated, which is exactly the bytes of the array's row i.
pub fn open_stacked_npy(path: &Path, n_models: usize) -> Result<Box<dyn Shard>> {
    let expected = format!("[n_tokens, {n_models}, d] (paired activations, one row per model)");
    let data = super::npy::map_rows(path, &expected, |s| {
        (s.len() == 3 && s[1] == n_models).then(|| (s[0], s[1] * s[2]))
    })?;
    Ok(Box::new(MemmapShard { data, tokens: None }))
}

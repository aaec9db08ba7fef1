//! Activation dumps: a file or a directory of shards (read in name order), each
//! shard `[n, d]` activations plus optional per-token `token_ids`, `doc_ids`
//! and `mask`. Shards are memory-mapped and read in batches, so memory stays
//! bounded whatever the dump's size.

use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};

pub mod arrow;
pub mod crosscoder_cache;
mod json;
mod mapped_rows;
pub mod metadata;
pub mod npy;
pub mod safetensors;

/// One shard of a dump. Implementations map their file and copy rows out on demand.
pub trait Shard: Send + Sync {
    /// The shard's file.
    fn path(&self) -> &Path;
    /// Rows (tokens) in the shard.
    fn n_rows(&self) -> usize;
    /// Row width d.
    fn width(&self) -> usize;
    /// Stored dtype of the activations.
    fn dtype(&self) -> DType;
    /// Rows `start..start + count` as row-major f32 into `out` (`count * width` values).
    fn read_rows(&self, start: usize, count: usize, out: &mut [f32]) -> Result<()>;
    /// Token ids of rows `start..start + count`, if the shard has them.
    fn token_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>>;
    /// Document ids of rows `start..start + count`, if the shard has them.
    fn doc_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>>;
    /// Mask of rows `start..start + count` (1 = token counts), if the shard has one.
    fn mask(&self, start: usize, count: usize) -> Result<Option<Vec<u8>>>;
    /// Tells the OS that rows before `end` will not be read again (drops mapped pages).
    fn release(&self, _end: usize) {}
    /// The file's string metadata (safetensors `__metadata__`), if its format has any.
    fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        None
    }
}

/// Opens an in-memory `.npy` (`safetensors == false`) or `.safetensors` shard and reads
/// every row, token id, document id and mask value: the whole shard reader on arbitrary
/// bytes, for fuzzing. Returns the rows read.
pub fn parse_for_fuzz(data: &[u8], safetensors: bool) -> Result<usize> {
    let path = Path::new("<fuzz>");
    let map = crate::io::mapped::map_bytes(data).map_err(|e| Error::io(path, e))?;
    let shard: Box<dyn Shard> = if safetensors {
        Box::new(safetensors::SafetensorsShard::from_map(path, map)?)
    } else {
        Box::new(npy::NpyShard::from_map(path, map)?)
    };
    // A few rows at a time, as the pipeline reads them; bounded so that a header
    // promising many empty rows cannot stall the fuzzer.
    let rows = shard.n_rows().min(1 << 16);
    let mut out = vec![0f32; shard.width().saturating_mul(4).min(1 << 20)];
    let mut start = 0;
    while start < rows {
        let count = (rows - start).min(4);
        if let Some(buf) = count
            .checked_mul(shard.width())
            .and_then(|n| out.get_mut(..n))
        {
            shard.read_rows(start, count, buf)?;
        }
        shard.token_ids(start, count)?;
        shard.doc_ids(start, count)?;
        shard.mask(start, count)?;
        start += count;
    }
    shard.release(rows);
    shard.metadata();
    Ok(rows)
}

/// Opens one shard file by its extension (`.npy`, `.safetensors`).
pub fn open_shard(path: &Path) -> Result<Box<dyn Shard>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Ok(Box::new(npy::NpyShard::open(path)?)),
        Some("safetensors") => Ok(Box::new(safetensors::SafetensorsShard::open(path)?)),
        _ => Err(Error::format(
            path,
            "not an activation dump: expected a .npy or .safetensors file, or a directory of them",
        )),
    }
}

/// The shard files of a dump directory in the order [`Dump::open`] reads them: its `.npy`
/// and `.safetensors` files by name. None when the directory is a cache layout that
/// `Dump::open` reads as a whole (crosscoder memmaps, HF datasets Arrow files).
pub fn shard_files(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    if crosscoder_cache::looks_like(dir) || arrow::looks_like(dir) {
        return Ok(None);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("npy") | Some("safetensors")
            )
        })
        .collect();
    files.sort();
    Ok(Some(files))
}

/// A dump: an ordered list of shards of one width.
pub struct Dump {
    path: PathBuf,
    shards: Vec<Box<dyn Shard>>,
    width: usize,
}

impl std::fmt::Debug for Dump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dump")
            .field("path", &self.path)
            .field("shards", &self.shards.len())
            .field("width", &self.width)
            .field("rows", &self.n_rows())
            .finish()
    }
}

impl Dump {
    /// Opens a dump file, or a directory of shard files (`.npy`, `.safetensors`) in name order.
    pub fn open(path: impl AsRef<Path>) -> Result<Dump> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() && crosscoder_cache::looks_like(path) {
            return Dump::from_shards(path, crosscoder_cache::open_shards(path)?);
        }
        if meta.is_dir() && arrow::looks_like(path) {
            return Dump::from_shards(path, arrow::open_shards(path, None)?);
        }
        let files = if meta.is_dir() {
            let files = shard_files(path)?.unwrap_or_default();
            if files.is_empty() {
                return Err(Error::missing(
                    path,
                    "activation shards (.npy or .safetensors files) in this directory",
                ));
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let shards = files
            .iter()
            .map(|f| open_shard(f))
            .collect::<Result<Vec<_>>>()?;
        Dump::from_shards(path, shards)
    }

    /// A dump over already-opened shards; checks that every shard has the same width.
    pub fn from_shards(path: impl AsRef<Path>, shards: Vec<Box<dyn Shard>>) -> Result<Dump> {
        let path = path.as_ref().to_path_buf();
        let width = match shards.first() {
            Some(s) => s.width(),
            None => return Err(Error::missing(&path, "activation shards")),
        };
        for s in &shards {
            if s.width() != width {
                return Err(Error::format(
                    s.path(),
                    format!(
                        "shard has width {}, but the dump's first shard has width {width}",
                        s.width()
                    ),
                ));
            }
        }
        Ok(Dump {
            path,
            shards,
            width,
        })
    }

    /// The path the dump was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Row width d.
    pub fn width(&self) -> usize {
        self.width
    }
    /// Total rows over all shards.
    pub fn n_rows(&self) -> u64 {
        self.shards.iter().map(|s| s.n_rows() as u64).sum()
    }
    /// The shards in read order.
    pub fn shards(&self) -> &[Box<dyn Shard>] {
        &self.shards
    }
    /// The shards in read order, giving up the dump (e.g. to hand them to several workers).
    pub fn into_shards(self) -> Vec<Box<dyn Shard>> {
        self.shards
    }

    /// Keeps shards `i, i + n, i + 2n, ...` (0-based `i` of `n`): the unit a cluster job
    /// array fans out. Errors if `i >= n` or the selection is empty.
    pub fn select_shards(self, i: usize, n: usize) -> Result<Dump> {
        if n == 0 || i >= n {
            return Err(Error::invalid(format!("shard {i}/{n}: need 0 <= I < N")));
        }
        let total = self.shards.len();
        let shards: Vec<_> = self
            .shards
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % n == i)
            .map(|(_, s)| s)
            .collect();
        if shards.is_empty() {
            return Err(Error::invalid(format!(
                "{}: shard {i}/{n} selects no file (the dump has {})",
                self.path.display(),
                crate::plural::count(total as u64, "shard file")
            )));
        }
        Dump::from_shards(self.path, shards)
    }

    /// The provenance the dump records (layer, hook, model, n_layers, ...; see
    /// [`metadata`]). Every shard must agree; a disagreeing shard is an error naming it.
    pub fn metadata(&self) -> Result<metadata::DumpMetadata> {
        let raw: Vec<_> = self
            .shards
            .iter()
            .map(|s| (s.path().to_path_buf(), s.metadata()))
            .collect();
        metadata::merge(&raw)
    }

    /// Checks the dump's width against an SAE's d_in.
    pub fn check_width(&self, d_in: usize) -> Result<()> {
        if self.width != d_in {
            return Err(Error::WidthMismatch {
                path: self.path.clone(),
                got: self.width,
                expected: d_in,
            });
        }
        Ok(())
    }

    /// Streams the dump in batches of at most `batch_rows` rows (a batch never spans shards).
    pub fn batches(&self, batch_rows: usize) -> Batches<'_> {
        Batches {
            dump: self,
            batch_rows: batch_rows.max(1),
            shard: 0,
            row: 0,
            global: 0,
        }
    }
}

/// A batch of rows read from a dump.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Index of the shard the rows come from.
    pub shard: usize,
    /// Global index (over the whole dump) of the first row.
    pub start: u64,
    /// Number of rows.
    pub rows: usize,
    /// `[rows, d]` row-major f32.
    pub acts: Vec<f32>,
    /// Token id of each row, when the dump has `token_ids`.
    pub token_ids: Option<Vec<i64>>,
    /// Document id of each row, when the dump has `doc_ids`.
    pub doc_ids: Option<Vec<i64>>,
    /// Per-row mask (0 = left out), when the dump has `mask`.
    pub mask: Option<Vec<u8>>,
}

/// Iterator over a dump's batches.
pub struct Batches<'a> {
    dump: &'a Dump,
    batch_rows: usize,
    shard: usize,
    row: usize,
    global: u64,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let shard = self.dump.shards.get(self.shard)?;
            if self.row >= shard.n_rows() {
                shard.release(shard.n_rows());
                self.shard += 1;
                self.row = 0;
                continue;
            }
            let start = self.row;
            let count = self.batch_rows.min(shard.n_rows() - start);
            let d = shard.width();
            let mut acts = vec![0f32; count * d];
            let out = (|| {
                shard.read_rows(start, count, &mut acts)?;
                Ok(Batch {
                    shard: self.shard,
                    start: self.global,
                    rows: count,
                    token_ids: shard.token_ids(start, count)?,
                    doc_ids: shard.doc_ids(start, count)?,
                    mask: shard.mask(start, count)?,
                    acts,
                })
            })();
            shard.release(start);
            self.row += count;
            self.global += count as u64;
            if out.is_err() {
                // Stop after an error: a caller that keeps iterating must not skip rows silently.
                self.shard = usize::MAX;
            }
            return Some(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_files_lists_npy_and_safetensors_by_name_and_defers_cache_layouts() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.npy", "a.safetensors", "notes.txt", "c.npy"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let names: Vec<String> = shard_files(dir.path())
            .unwrap()
            .expect("a plain shard directory")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.safetensors", "b.npy", "c.npy"]);

        // A crosscoder cache is read as a whole even when .npy files lie beside it.
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("shard_0.memmap"), b"").unwrap();
        assert!(shard_files(dir.path()).unwrap().is_none());

        let missing = dir.path().join("nope");
        assert!(shard_files(&missing).is_err());
    }

    #[test]
    fn fuzz_entry_reads_whole_npy_and_safetensors_shards_and_rejects_garbage() {
        use crate::io::mapped::{write_safetensors, OwnedTensor};
        let values: Vec<f32> = (0..15).map(|v| v as f32).collect();
        let mut npy = crate::io::npy::header_bytes(crate::io::npy::NpyDtype::F32, &[5, 3]);
        npy.extend(bytemuck::cast_slice(&values));
        assert_eq!(parse_for_fuzz(&npy, false).unwrap(), 5);
        // Truncated data and an empty input are errors, not panics.
        assert!(parse_for_fuzz(&npy[..npy.len() - 1], false).is_err());
        assert!(parse_for_fuzz(&[], false).is_err());

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        write_safetensors(
            &p,
            &[
                ("activations", OwnedTensor::f32(vec![5, 3], &values)),
                ("token_ids", OwnedTensor::i64(vec![5], &[1, 2, 3, 4, 5])),
                ("mask", OwnedTensor::u8(vec![5], &[1, 0, 1, 1, 0])),
            ],
            Default::default(),
        )
        .unwrap();
        let st = std::fs::read(&p).unwrap();
        assert_eq!(parse_for_fuzz(&st, true).unwrap(), 5);
        assert!(parse_for_fuzz(&st[..st.len() - 2], true).is_err());
        assert!(parse_for_fuzz(&npy, true).is_err());
    }

    #[test]
    fn metadata_is_read_from_every_shard_and_must_agree() {
        use crate::io::mapped::{write_safetensors, OwnedTensor};
        let dir = tempfile::tempdir().unwrap();
        let shard = |name: &str, layer: &str| {
            let meta = [
                ("layer", layer),
                ("hook", "blocks.3.hook_resid_post"),
                ("n_layers", "8"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let acts = OwnedTensor::f32(vec![2, 4], &[0.0; 8]);
            write_safetensors(&dir.path().join(name), &[("activations", acts)], meta).unwrap();
        };
        shard("a.safetensors", "3");
        shard("b.safetensors", "3");
        let m = Dump::open(dir.path()).unwrap().metadata().unwrap();
        assert_eq!((m.layer, m.n_layers), (Some(3), Some(8)));
        assert_eq!(m.hook.as_deref(), Some("blocks.3.hook_resid_post"));
        let one = Dump::open(dir.path().join("a.safetensors")).unwrap();
        assert_eq!(one.metadata().unwrap(), m);
        shard("c.safetensors", "4");
        let e = Dump::open(dir.path())
            .unwrap()
            .metadata()
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.safetensors") && e.contains("`layer`"), "{e}");
    }
}

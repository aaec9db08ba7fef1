//! Codes files (safetensors).
//!
//! - TopK SAEs: `indices` [n, k] int32 and `values` [n, k] f32, each row largest first.
//! - Threshold SAEs: CSR `row_ptr` [n + 1] int64, `indices` [nnz] int32, `values` [nnz] f32.
//! - SAEs that normalize their input also store `norm_scale` and `norm_shift` [n] f32.
//!
//! Metadata: `fingerprint` (of the SAE), `kind` ("topk" | "csr"), `k` (TopK only).
//!
//! [`CodesWriter`] streams: each pushed batch is appended to raw spill files beside the
//! target, and `finish` assembles the safetensors file, so encoding a dump larger than
//! memory holds one batch at a time. [`CodesReader`] maps a codes file and hands out row
//! ranges, so decoding is streamed too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use safetensors::Dtype as D;

use crate::codes::{Codes, Denorm, Encoded};
use crate::dtype::{convert_to_f32, DType};
use crate::error::{Error, Result};
use crate::io::mapped::{MappedSafetensors, MappedTensor};

/// Which layout a codes file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodesKind {
    /// Fixed-width `[n, k]` rows.
    TopK {
        /// Codes per row.
        k: usize,
    },
    /// Compressed sparse rows.
    Csr,
}

impl CodesKind {
    /// `Some(k)` -> TopK, `None` -> CSR (the convention of `Codes::empty` and `Sae::k`).
    pub fn from_k(k: Option<usize>) -> Self {
        match k {
            Some(k) => CodesKind::TopK { k },
            None => CodesKind::Csr,
        }
    }
    /// The kind of some codes.
    pub fn of(codes: &Codes) -> Self {
        match codes {
            Codes::TopK { k, .. } => CodesKind::TopK { k: *k },
            Codes::Csr { .. } => CodesKind::Csr,
        }
    }
    /// The metadata name: "topk" or "csr".
    pub fn name(self) -> &'static str {
        match self {
            CodesKind::TopK { .. } => "topk",
            CodesKind::Csr => "csr",
        }
    }
}

fn metadata(kind: CodesKind, fingerprint: &str, n: usize) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("fingerprint".into(), fingerprint.to_string());
    m.insert("kind".into(), kind.name().into());
    m.insert("n_rows".into(), n.to_string());
    if let CodesKind::TopK { k } = kind {
        m.insert("k".into(), k.to_string());
    }
    m
}

// ---------------------------------------------------------------------------------------
// Assembling a safetensors file from parts that may live in memory or in spill files.

/// Where a tensor's bytes come from.
enum Source<'a> {
    Slice(&'a [u8]),
    File(&'a Path),
}

struct Part<'a> {
    name: &'static str,
    dtype: D,
    shape: Vec<usize>,
    len: usize,
    source: Source<'a>,
}

fn dtype_name(d: D) -> &'static str {
    match d {
        D::I64 => "I64",
        D::I32 => "I32",
        D::F32 => "F32",
        D::F64 => "F64",
        _ => "U8",
    }
}

/// Writes the 8-byte header length, the JSON header (padded to 8 bytes so that 8-byte
/// tensors stay aligned) and the parts' bytes in order, to `tmp`. Errors name `target`.
fn assemble(
    target: &Path,
    tmp: &Path,
    parts: &[Part],
    meta: BTreeMap<String, String>,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io(target, e);
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(meta).map_err(|e| Error::format(target, e.to_string()))?,
    );
    let mut offset = 0usize;
    for p in parts {
        let numel: usize = p.shape.iter().product();
        debug_assert_eq!(numel * p.dtype.bitsize() / 8, p.len);
        header.insert(
            p.name.into(),
            serde_json::json!({
                "dtype": dtype_name(p.dtype),
                "shape": p.shape,
                "data_offsets": [offset, offset + p.len],
            }),
        );
        offset += p.len;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while (8 + text.len()) % 8 != 0 {
        text.push(b' ');
    }
    let mut w = BufWriter::with_capacity(1 << 20, File::create(tmp).map_err(io)?);
    w.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&text).map_err(io)?;
    for p in parts {
        match p.source {
            Source::Slice(b) => w.write_all(b).map_err(io)?,
            Source::File(f) => {
                let mut r = File::open(f).map_err(|e| Error::io(f, e))?;
                let copied = std::io::copy(&mut r, &mut w).map_err(io)?;
                if copied as usize != p.len {
                    return Err(Error::format(
                        f,
                        format!("spill file holds {copied} bytes, expected {}", p.len),
                    ));
                }
            }
        }
    }
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    Ok(())
}

fn bytes<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Writes codes (and normalization constants) to a safetensors file, atomically.
pub fn write(path: &Path, enc: &Encoded, fingerprint: &str) -> Result<()> {
    let n = enc.codes.n_rows();
    enc.codes
        .validate(i32::MAX as usize)
        .map_err(|e| Error::invalid(format!("{}: cannot write codes: {e}", path.display())))?;
    let mut parts = match &enc.codes {
        Codes::TopK {
            k, indices, values, ..
        } => vec![
            Part {
                name: "indices",
                dtype: D::I32,
                shape: vec![n, *k],
                len: indices.len() * 4,
                source: Source::Slice(bytes(indices)),
            },
            Part {
                name: "values",
                dtype: D::F32,
                shape: vec![n, *k],
                len: values.len() * 4,
                source: Source::Slice(bytes(values)),
            },
        ],
        Codes::Csr {
            row_ptr,
            indices,
            values,
            ..
        } => vec![
            Part {
                name: "row_ptr",
                dtype: D::I64,
                shape: vec![n + 1],
                len: row_ptr.len() * 8,
                source: Source::Slice(bytes(row_ptr)),
            },
            Part {
                name: "indices",
                dtype: D::I32,
                shape: vec![indices.len()],
                len: indices.len() * 4,
                source: Source::Slice(bytes(indices)),
            },
            Part {
                name: "values",
                dtype: D::F32,
                shape: vec![values.len()],
                len: values.len() * 4,
                source: Source::Slice(bytes(values)),
            },
        ],
    };
    if let Some(dn) = &enc.denorm {
        if dn.scale.len() != n || dn.shift.len() != n {
            return Err(Error::invalid(format!(
                "{}: normalization constants for {} / {} rows, codes have {n}",
                path.display(),
                dn.scale.len(),
                dn.shift.len()
            )));
        }
        for (name, v) in [("norm_scale", &dn.scale), ("norm_shift", &dn.shift)] {
            parts.push(Part {
                name,
                dtype: D::F32,
                shape: vec![n],
                len: n * 4,
                source: Source::Slice(bytes(v)),
            });
        }
    }
    let meta = metadata(CodesKind::of(&enc.codes), fingerprint, n);
    crate::io::atomic::write_with(path, |tmp| assemble(path, tmp, &parts, meta))
}

// ---------------------------------------------------------------------------------------
// Streaming writer.

/// One spill file: raw little-endian bytes of one tensor, appended batch by batch.
struct Spill {
    path: PathBuf,
    w: BufWriter<File>,
    len: usize,
}

impl Spill {
    fn create(target: &Path, tensor: &str) -> Result<Spill> {
        let path = crate::io::atomic::scratch_path(target, &format!("{tensor}.spill"));
        let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Spill {
            w: BufWriter::with_capacity(1 << 20, f),
            path,
            len: 0,
        })
    }
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(|e| Error::io(&self.path, e))?;
        self.len += b.len();
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.w.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Writes a codes file batch by batch with memory bounded by one batch.
///
/// ```no_run
/// # use sae_engine::io::codes_file::{CodesWriter, CodesKind};
/// # fn f(batches: Vec<sae_engine::Encoded>) -> sae_engine::Result<()> {
/// let mut w = CodesWriter::create("codes.safetensors".as_ref(), CodesKind::TopK { k: 32 }, "fp")?;
/// for b in &batches { w.push(b)?; }
/// w.finish()?;
/// # Ok(()) }
/// ```
pub struct CodesWriter {
    path: PathBuf,
    kind: CodesKind,
    fingerprint: String,
    n: usize,
    /// TopK: indices, values. CSR: row_ptr, indices, values.
    spills: Vec<Spill>,
    /// norm_scale, norm_shift, once the first non-empty batch says the SAE normalizes.
    denorm: Option<Option<[Spill; 2]>>,
    nnz: i64,
    /// Extra metadata entries (the command's provenance).
    extra_meta: BTreeMap<String, String>,
}

impl CodesWriter {
    /// Adds a metadata entry written with the file (e.g. the command's provenance).
    pub fn set_metadata(&mut self, key: String, value: String) {
        self.extra_meta.insert(key, value);
    }

    /// Starts a codes file at `path` (nothing appears under that name until `finish`).
    pub fn create(path: &Path, kind: CodesKind, fingerprint: &str) -> Result<CodesWriter> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the output directory does not exist",
                    ),
                ));
            }
        }
        let names: &[&str] = match kind {
            CodesKind::TopK { .. } => &["indices", "values"],
            CodesKind::Csr => &["row_ptr", "indices", "values"],
        };
        let mut w = CodesWriter {
            path: path.to_path_buf(),
            kind,
            fingerprint: fingerprint.to_string(),
            n: 0,
            spills: Vec::new(),
            denorm: None,
            nnz: 0,
            extra_meta: BTreeMap::new(),
        };
        for name in names {
            w.spills.push(Spill::create(path, name)?);
        }
        if kind == CodesKind::Csr {
            w.spills[0].put(&0i64.to_le_bytes())?;
        }
        Ok(w)
    }

    /// Rows written so far.
    pub fn n_rows(&self) -> usize {
        self.n
    }

    /// Appends a batch (same kind and k; normalization constants present in every batch or none).
    pub fn push(&mut self, enc: &Encoded) -> Result<()> {
        let n = enc.codes.n_rows();
        let got = CodesKind::of(&enc.codes);
        if got != self.kind {
            return Err(Error::Incompatible(format!(
                "{}: cannot append {got:?} codes to a {:?} codes file",
                self.path.display(),
                self.kind
            )));
        }
        enc.codes.validate(i32::MAX as usize).map_err(|e| {
            Error::invalid(format!("{}: cannot write codes: {e}", self.path.display()))
        })?;
        if n == 0 {
            return Ok(());
        }
        if self.denorm.is_none() {
            self.denorm = Some(match enc.denorm {
                Some(_) => Some([
                    Spill::create(&self.path, "norm_scale")?,
                    Spill::create(&self.path, "norm_shift")?,
                ]),
                None => None,
            });
        }
        match (&mut self.denorm, &enc.denorm) {
            (Some(Some([s, t])), Some(dn)) if dn.scale.len() == n && dn.shift.len() == n => {
                s.put(bytes(&dn.scale))?;
                t.put(bytes(&dn.shift))?;
            }
            (Some(None), None) => {}
            _ => {
                return Err(Error::invalid(format!(
                    "{}: every batch must carry normalization constants for each row, or none must",
                    self.path.display()
                )))
            }
        }
        match &enc.codes {
            Codes::TopK {
                indices, values, ..
            } => {
                self.spills[0].put(bytes(indices))?;
                self.spills[1].put(bytes(values))?;
            }
            Codes::Csr {
                row_ptr,
                indices,
                values,
                ..
            } => {
                let base = self.nnz - row_ptr[0];
                let shifted: Vec<i64> = row_ptr[1..].iter().map(|p| p + base).collect();
                self.spills[0].put(bytes(&shifted))?;
                self.spills[1].put(bytes(indices))?;
                self.spills[2].put(bytes(values))?;
                self.nnz += indices.len() as i64;
            }
        }
        self.n += n;
        Ok(())
    }

    /// Assembles the codes file under its name (atomically) and removes the spill files.
    /// Returns the number of rows written.
    pub fn finish(mut self) -> Result<usize> {
        for s in self.spills.iter_mut() {
            s.flush()?;
        }
        if let Some(Some(d)) = &mut self.denorm {
            for s in d.iter_mut() {
                s.flush()?;
            }
        }
        let n = self.n;
        let mut parts = match self.kind {
            CodesKind::TopK { k } => vec![
                spill_part("indices", D::I32, vec![n, k], &self.spills[0]),
                spill_part("values", D::F32, vec![n, k], &self.spills[1]),
            ],
            CodesKind::Csr => {
                let nnz = self.nnz as usize;
                vec![
                    spill_part("row_ptr", D::I64, vec![n + 1], &self.spills[0]),
                    spill_part("indices", D::I32, vec![nnz], &self.spills[1]),
                    spill_part("values", D::F32, vec![nnz], &self.spills[2]),
                ]
            }
        };
        if let Some(Some([s, t])) = &self.denorm {
            parts.push(spill_part("norm_scale", D::F32, vec![n], s));
            parts.push(spill_part("norm_shift", D::F32, vec![n], t));
        }
        let mut meta = metadata(self.kind, &self.fingerprint, n);
        // The fixed entries win over extra ones of the same name.
        for (k, v) in std::mem::take(&mut self.extra_meta) {
            meta.entry(k).or_insert(v);
        }
        crate::io::atomic::write_with(&self.path, |tmp| assemble(&self.path, tmp, &parts, meta))?;
        Ok(n)
        // Drop removes the spill files.
    }
}

fn spill_part<'a>(name: &'static str, dtype: D, shape: Vec<usize>, s: &'a Spill) -> Part<'a> {
    Part {
        name,
        dtype,
        shape,
        len: s.len,
        source: Source::File(&s.path),
    }
}

impl Drop for CodesWriter {
    fn drop(&mut self) {
        let spills = self
            .spills
            .iter()
            .chain(self.denorm.iter().flatten().flatten());
        for s in spills {
            let _ = std::fs::remove_file(&s.path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading.

/// A mapped codes file; rows are read on demand, so decoding streams.
pub struct CodesReader {
    path: PathBuf,
    st: MappedSafetensors,
    kind: CodesKind,
    n: usize,
    nnz: usize,
    fingerprint: Option<String>,
    /// Whether a file without a fingerprint passes [`CodesReader::check_fingerprint`].
    allow_unfingerprinted: bool,
    indices: MappedTensor,
    values: MappedTensor,
    row_ptr: Option<MappedTensor>,
    denorm: Option<(MappedTensor, MappedTensor)>,
}

fn expect_dtype(path: &Path, t: &MappedTensor, d: D, name: &str) -> Result<()> {
    if t.dtype != d {
        return Err(Error::dtype(path, &t.name, format!("{:?}", t.dtype), name));
    }
    Ok(())
}

fn read_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn read_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn read_f32(b: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; b.len() / 4];
    convert_to_f32(DType::F32, b, &mut out);
    out
}

impl CodesReader {
    /// Maps a codes file and validates its tensors' names, dtypes and shapes.
    pub fn open(path: &Path) -> Result<CodesReader> {
        let st = MappedSafetensors::open(path)?;
        let meta = st.metadata();
        let kind_name = match meta.get("kind") {
            Some(k) => k.clone(),
            None if st.contains("row_ptr") => "csr".into(),
            None => "topk".into(),
        };
        let indices = st.tensor("indices")?;
        let values = st.tensor("values")?;
        expect_dtype(path, &indices, D::I32, "I32")?;
        expect_dtype(path, &values, D::F32, "F32")?;
        let (kind, n, nnz, row_ptr) = match kind_name.as_str() {
            "topk" => {
                if indices.shape.len() != 2 {
                    return Err(Error::shape(path, "indices", &indices.shape, "[n, k]"));
                }
                let (n, k) = (indices.shape[0], indices.shape[1]);
                if values.shape != indices.shape {
                    return Err(Error::shape(
                        path,
                        "values",
                        &values.shape,
                        format!("[{n}, {k}] like `indices`"),
                    ));
                }
                if let Some(mk) = meta.get("k") {
                    if mk.parse::<usize>().ok() != Some(k) {
                        return Err(Error::format(
                            path,
                            format!("metadata k = {mk}, but `indices` has {k} columns"),
                        ));
                    }
                }
                (CodesKind::TopK { k }, n, n * k, None)
            }
            "csr" => {
                let rp = st.tensor("row_ptr")?;
                expect_dtype(path, &rp, D::I64, "I64")?;
                if rp.shape.len() != 1 || rp.shape[0] == 0 {
                    return Err(Error::shape(path, "row_ptr", &rp.shape, "[n + 1]"));
                }
                let n = rp.shape[0] - 1;
                let nnz = indices.numel();
                for t in [&indices, &values] {
                    if t.shape != [nnz] {
                        return Err(Error::shape(
                            path,
                            &t.name,
                            &t.shape,
                            format!("[{nnz}] (one entry per stored code)"),
                        ));
                    }
                }
                let b = rp.bytes.as_slice();
                let first = read_i64(&b[..8])[0];
                let last = read_i64(&b[b.len() - 8..])[0];
                if first != 0 || last != nnz as i64 {
                    return Err(Error::format(
                        path,
                        format!(
                            "`row_ptr` must run from 0 to the number of codes ({nnz}), \
                             it runs from {first} to {last}"
                        ),
                    ));
                }
                (CodesKind::Csr, n, nnz, Some(rp))
            }
            other => {
                return Err(Error::format(
                    path,
                    format!("metadata kind = `{other}`, expected `topk` or `csr`"),
                ))
            }
        };
        let denorm = match (st.get("norm_scale"), st.get("norm_shift")) {
            (None, None) => None,
            (Some(s), Some(t)) => {
                for x in [&s, &t] {
                    expect_dtype(path, x, D::F32, "F32")?;
                    if x.shape != [n] {
                        return Err(Error::shape(path, &x.name, &x.shape, format!("[{n}]")));
                    }
                }
                Some((s, t))
            }
            _ => {
                return Err(Error::missing(
                    path,
                    "one of `norm_scale` / `norm_shift` (both or neither must be present)",
                ))
            }
        };
        Ok(CodesReader {
            path: path.to_path_buf(),
            fingerprint: meta.get("fingerprint").cloned(),
            allow_unfingerprinted: false,
            kind,
            n,
            nnz,
            indices,
            values,
            row_ptr,
            denorm,
            st,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// TopK or CSR.
    pub fn kind(&self) -> CodesKind {
        self.kind
    }
    /// Rows (tokens).
    pub fn n_rows(&self) -> usize {
        self.n
    }
    /// Stored codes (n * k for TopK, padding included; nnz for CSR).
    pub fn n_codes(&self) -> usize {
        self.nnz
    }
    /// The SAE fingerprint recorded in the file.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }
    /// Whether the file carries normalization constants.
    pub fn has_denorm(&self) -> bool {
        self.denorm.is_some()
    }
    /// The file's string metadata.
    pub fn metadata(&self) -> &std::collections::HashMap<String, String> {
        self.st.metadata()
    }

    /// Rows `start..start + count`, validated (lengths, monotone row pointers, index >= -1).
    pub fn read_rows(&self, start: usize, count: usize) -> Result<Encoded> {
        if start.checked_add(count).is_none_or(|e| e > self.n) {
            return Err(Error::invalid(format!(
                "{}: rows {start}..{} requested from codes of {} rows",
                self.path.display(),
                start.saturating_add(count),
                self.n
            )));
        }
        let codes = match (self.kind, &self.row_ptr) {
            (CodesKind::TopK { k }, _) => {
                let (a, b) = (start * k * 4, (start + count) * k * 4);
                Codes::TopK {
                    n: count,
                    k,
                    indices: read_i32(&self.indices.bytes.as_slice()[a..b]),
                    values: read_f32(&self.values.bytes.as_slice()[a..b]),
                }
            }
            (CodesKind::Csr, Some(rp)) => {
                let raw = read_i64(&rp.bytes.as_slice()[start * 8..(start + count + 1) * 8]);
                let (lo, hi) = (raw[0], raw[count]);
                if raw.windows(2).any(|w| w[1] < w[0]) || lo < 0 || hi as usize > self.nnz {
                    return Err(Error::format(
                        &self.path,
                        format!(
                            "`row_ptr` decreases or leaves 0..{} within rows {start}..{}",
                            self.nnz,
                            start + count
                        ),
                    ));
                }
                let (a, b) = (lo as usize * 4, hi as usize * 4);
                Codes::Csr {
                    n: count,
                    row_ptr: raw.iter().map(|p| p - lo).collect(),
                    indices: read_i32(&self.indices.bytes.as_slice()[a..b]),
                    values: read_f32(&self.values.bytes.as_slice()[a..b]),
                }
            }
            (CodesKind::Csr, None) => return Err(Error::missing(&self.path, "tensor `row_ptr`")),
        };
        codes
            .validate(i32::MAX as usize)
            .map_err(|e| Error::format(&self.path, e.to_string()))?;
        self.check_finite_values(&codes, start)?;
        let denorm = self.denorm.as_ref().map(|(s, t)| Denorm {
            scale: read_f32(&s.bytes.as_slice()[start * 4..(start + count) * 4]),
            shift: read_f32(&t.bytes.as_slice()[start * 4..(start + count) * 4]),
        });
        if let Some(dn) = &denorm {
            for (name, v) in [("norm_scale", &dn.scale), ("norm_shift", &dn.shift)] {
                if let Some(r) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::format(
                        &self.path,
                        format!(
                            "`{name}` of row {} is {}; codes must be finite (the file is corrupt)",
                            start + r,
                            v[r]
                        ),
                    ));
                }
            }
        }
        Ok(Encoded { codes, denorm })
    }

    /// Refuses a NaN or infinite code value, naming the row (counted from the file's
    /// start) and the latent. Runs on the values just read, so it costs one pass over
    /// memory that is hot anyway.
    fn check_finite_values(&self, codes: &Codes, start: usize) -> Result<()> {
        let (indices, values) = codes.entries();
        let Some(j) = values.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        let row = match codes {
            Codes::TopK { k, .. } => j / k,
            // The row whose range [row_ptr[r], row_ptr[r + 1]) holds entry j.
            Codes::Csr { row_ptr, .. } => row_ptr.partition_point(|p| *p as usize <= j) - 1,
        };
        Err(Error::format(
            &self.path,
            format!(
                "code value of row {} (latent {}) is {}; codes must be finite (the file is corrupt)",
                start + row,
                indices[j],
                values[j]
            ),
        ))
    }

    /// Accepts codes without a recorded fingerprint (written by another tool) in
    /// [`CodesReader::check_fingerprint`]; off by default, since such codes cannot be
    /// checked against the SAE that decodes them.
    pub fn allow_unfingerprinted(mut self, allow: bool) -> Self {
        self.allow_unfingerprinted = allow;
        self
    }

    /// Checks the recorded fingerprint against an SAE's (`Sae::fingerprint`). A file
    /// without a fingerprint is refused unless [`CodesReader::allow_unfingerprinted`]
    /// was set.
    pub fn check_fingerprint(&self, sae_fingerprint: &str) -> Result<()> {
        match &self.fingerprint {
            Some(f) if f != sae_fingerprint => Err(Error::Incompatible(format!(
                "{}: codes were produced by a different SAE (fingerprint {f}, this SAE has {sae_fingerprint})",
                self.path.display()
            ))),
            Some(_) => Ok(()),
            None if self.allow_unfingerprinted => Ok(()),
            None => Err(Error::missing(
                &self.path,
                format!(
                    "metadata `fingerprint` (the SAE that produced these codes), so they cannot be \
                     checked against this SAE ({sae_fingerprint}); pass --allow-unfingerprinted if \
                     you know they come from it"
                ),
            )),
        }
    }
}

/// Reads a codes file: the codes and the SAE fingerprint it records.
pub fn read(path: &Path) -> Result<(Encoded, Option<String>)> {
    let r = CodesReader::open(path)?;
    let enc = r.read_rows(0, r.n_rows())?;
    Ok((enc, r.fingerprint.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_csr_offsets_rows_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let mut w = CodesWriter::create(&p, CodesKind::Csr, "fp").unwrap();
        let b1 = Encoded {
            codes: Codes::Csr {
                n: 2,
                row_ptr: vec![0, 1, 3],
                indices: vec![4, 0, 2],
                values: vec![1.0, 2.0, 3.0],
            },
            denorm: None,
        };
        let b2 = Encoded {
            codes: Codes::Csr {
                n: 1,
                row_ptr: vec![0, 1],
                indices: vec![1],
                values: vec![0.5],
            },
            denorm: None,
        };
        w.push(&b1).unwrap();
        w.push(&b2).unwrap();
        assert_eq!(w.finish().unwrap(), 3);
        let (enc, fp) = read(&p).unwrap();
        assert_eq!(fp.as_deref(), Some("fp"));
        let mut want = b1.codes.clone();
        want.append(&b2.codes).unwrap();
        assert_eq!(enc.codes, want);
        // only the final file remains
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

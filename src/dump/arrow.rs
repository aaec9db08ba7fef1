//! SAELens cached activations: a Hugging Face `datasets` directory (`dataset_info.json`,
//! `state.json`, `data-XXXXX-of-YYYYY.arrow`). Each `.arrow` file is an Arrow IPC
//! stream; one column per hook holds an `Array2D` of shape `(context_size, d_in)`
//! (storage `list<list<float>>`, or fixed-size lists), plus optional `token_ids`
//! (`(context_size,)` integers). Every context row expands to `context_size` dump rows.
//!
//! This is a small reader for exactly that layout rather than the arrow crates: they
//! pull in arrow-array/-data/-buffer/-schema/-ipc and flatbuffers, many minutes of
//! optimized compilation on two shared cores, for a format we read one way. The file
//! is memory-mapped; opening scans the message headers (skipping bodies) into an index
//! of record batches, and rows are read straight from the mapping, so memory stays
//! bounded. Compressed bodies, nulls and big-endian files are refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{json, Shard};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Whether `dir` is a `datasets` directory with Arrow files.
pub fn looks_like(dir: &Path) -> bool {
    dir.join("dataset_info.json").is_file() && !arrow_files(dir).unwrap_or_default().is_empty()
}

/// The `.arrow` files of a `datasets` directory in `state.json` order (else name order).
pub fn arrow_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let state = dir.join("state.json");
    if let Ok(b) = std::fs::read(&state) {
        let v = json::parse(&state, &b)?;
        if let Some(files) = v.get("_data_files").and_then(|f| f.as_array()) {
            let out: Vec<PathBuf> = files
                .iter()
                .filter_map(|f| f.get("filename").and_then(|n| n.as_str()))
                .map(|n| dir.join(n))
                .collect();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("arrow"))
        .collect();
    out.sort();
    Ok(out)
}

/// Shape and dtype of the activation column as `dataset_info.json` declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    pub context_size: usize,
    pub d_in: usize,
}

/// Reads `dataset_info.json` and picks the activation column: `column` if given, else the
/// only `Array2D` feature.
pub fn column_info(dir: &Path, column: Option<&str>) -> Result<ColumnInfo> {
    let p = dir.join("dataset_info.json");
    let v = json::read(&p)?;
    let feats = v
        .get("features")
        .and_then(|f| f.as_object())
        .ok_or_else(|| Error::missing(&p, "features"))?;
    let arrays: Vec<(&String, &serde_json::Value)> = feats
        .iter()
        .filter(|(_, f)| f.get("_type").and_then(|t| t.as_str()) == Some("Array2D"))
        .collect();
    let (name, f) = match column {
        Some(c) => arrays
            .iter()
            .find(|(n, _)| n.as_str() == c)
            .copied()
            .ok_or_else(|| Error::missing(&p, format!("Array2D feature `{c}`")))?,
        None => match arrays.as_slice() {
            [one] => *one,
            [] => return Err(Error::missing(&p, "an Array2D activation feature")),
            many => {
                let names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
                return Err(Error::invalid(format!(
                    "{}: several activation columns {names:?}; choose one (--column)",
                    p.display()
                )));
            }
        },
    };
    let shape = json::shape(f, "shape");
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return Err(Error::format(
            &p,
            format!("feature `{name}` has shape {shape:?}, expected [context_size, d_in]"),
        ));
    }
    Ok(ColumnInfo {
        name: name.clone(),
        context_size: shape[0],
        d_in: shape[1],
    })
}

/// Opens every Arrow file of a `datasets` directory as a shard.
pub fn open_shards(dir: &Path, column: Option<&str>) -> Result<Vec<Box<dyn Shard>>> {
    let info = column_info(dir, column)?;
    let files = arrow_files(dir)?;
    if files.is_empty() {
        return Err(Error::missing(dir, "data-*.arrow files"));
    }
    files
        .iter()
        .map(|f| ArrowShard::open(f, &info).map(|s| Box::new(s) as Box<dyn Shard>))
        .collect()
}

// ---------------------------------------------------------------- flatbuffers

/// A flatbuffers table inside `buf` (bounds-checked reads; hostile input gives errors).
#[derive(Clone, Copy)]
struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn rd<const N: usize>(buf: &[u8], pos: usize) -> Option<[u8; N]> {
    buf.get(pos..pos.checked_add(N)?)?.try_into().ok()
}

impl<'a> Table<'a> {
    fn root(buf: &'a [u8]) -> Option<Table<'a>> {
        let off = u32::from_le_bytes(rd(buf, 0)?) as usize;
        Table::at(buf, off)
    }
    fn at(buf: &'a [u8], pos: usize) -> Option<Table<'a>> {
        rd::<4>(buf, pos)?;
        Some(Table { buf, pos })
    }
    fn field(&self, slot: usize) -> Option<usize> {
        let soff = i32::from_le_bytes(rd(self.buf, self.pos)?) as i64;
        let vt = usize::try_from(self.pos as i64 - soff).ok()?;
        let vt_size = u16::from_le_bytes(rd(self.buf, vt)?) as usize;
        let entry = 4 + 2 * slot;
        if entry + 2 > vt_size {
            return None;
        }
        let off = u16::from_le_bytes(rd(self.buf, vt + entry)?) as usize;
        (off != 0).then_some(self.pos + off)
    }
    /// A scalar field's little-endian bytes; absent (or out of bounds) reads as zero,
    /// the flatbuffers default.
    fn scalar<const N: usize>(&self, slot: usize) -> [u8; N] {
        self.field(slot)
            .and_then(|p| rd(self.buf, p))
            .unwrap_or([0; N])
    }
    fn i64(&self, slot: usize) -> i64 {
        i64::from_le_bytes(self.scalar(slot))
    }
    fn i32(&self, slot: usize) -> i32 {
        i32::from_le_bytes(self.scalar(slot))
    }
    fn i16(&self, slot: usize) -> i16 {
        i16::from_le_bytes(self.scalar(slot))
    }
    fn u8(&self, slot: usize) -> u8 {
        self.scalar::<1>(slot)[0]
    }
    fn indirect(&self, slot: usize) -> Option<usize> {
        let p = self.field(slot)?;
        p.checked_add(u32::from_le_bytes(rd(self.buf, p)?) as usize)
    }
    fn table(&self, slot: usize) -> Option<Table<'a>> {
        Table::at(self.buf, self.indirect(slot)?)
    }
    /// (start, len) of a vector.
    fn vector(&self, slot: usize) -> Option<(usize, usize)> {
        let v = self.indirect(slot)?;
        let len = u32::from_le_bytes(rd(self.buf, v)?) as usize;
        Some((v + 4, len))
    }
    fn string(&self, slot: usize) -> Option<String> {
        let (s, n) = self.vector(slot)?;
        let b = self.buf.get(s..s.checked_add(n)?)?;
        Some(String::from_utf8_lossy(b).into_owned())
    }
    fn tables(&self, slot: usize) -> Vec<Table<'a>> {
        let Some((s, n)) = self.vector(slot) else {
            return Vec::new();
        };
        (0..n)
            .map_while(|i| {
                let e = s.checked_add(4 * i)?;
                let off = u32::from_le_bytes(rd(self.buf, e)?) as usize;
                Table::at(self.buf, e.checked_add(off)?)
            })
            .collect()
    }
}

// ---------------------------------------------------------------- schema

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    List {
        large: bool,
    },
    FixedList(usize),
    Float(u8),
    Int {
        bits: usize,
        signed: bool,
    },
    /// Any other type: how many buffers it has in a record batch.
    Other(usize),
}

#[derive(Debug, Clone)]
struct FieldDesc {
    name: String,
    ty: Ty,
    children: Vec<FieldDesc>,
}

fn parse_field(path: &Path, f: Table, depth: usize) -> Result<FieldDesc> {
    if depth > 16 {
        return Err(Error::format(path, "Arrow schema nests too deeply"));
    }
    let name = f.string(0).unwrap_or_default();
    let type_type = f.u8(2);
    let t = f.table(3);
    let dictionary = f.table(4).is_some();
    let ty = match type_type {
        _ if dictionary => Ty::Other(2),
        1 => Ty::Other(0), // Null
        2 => Ty::Int {
            bits: t.map(|t| t.i32(0)).unwrap_or(0) as usize,
            signed: t.map(|t| t.u8(1) != 0).unwrap_or(false),
        },
        3 => Ty::Float(t.map(|t| t.i16(0)).unwrap_or(0) as u8),
        4 | 5 | 19 | 20 => Ty::Other(3), // (Large)Binary, (Large)Utf8
        6..=11 | 15 | 18 => Ty::Other(2), // Bool, Decimal, dates/times, FixedSizeBinary, Duration
        12 => Ty::List { large: false },
        21 => Ty::List { large: true },
        13 => Ty::Other(1), // Struct
        16 => Ty::FixedList(t.map(|t| t.i32(0)).unwrap_or(0).max(0) as usize),
        17 => Ty::List { large: false }, // Map: a list of structs
        other => {
            return Err(Error::format(
                path,
                format!(
                    "Arrow field `{name}` has type id {other}, which this reader does not support"
                ),
            ))
        }
    };
    let children = f
        .tables(5)
        .into_iter()
        .map(|c| parse_field(path, c, depth + 1))
        .collect::<Result<Vec<_>>>()?;
    Ok(FieldDesc { name, ty, children })
}

fn n_buffers(ty: Ty) -> usize {
    match ty {
        Ty::List { .. } => 2,
        Ty::FixedList(_) => 1,
        Ty::Float(_) | Ty::Int { .. } => 2,
        Ty::Other(n) => n,
    }
}

/// Pre-order (node index, buffer index) of every top-level field.
fn layout(fields: &[FieldDesc]) -> Vec<(usize, usize)> {
    fn walk(f: &FieldDesc, node: &mut usize, buf: &mut usize) {
        *node += 1;
        *buf += n_buffers(f.ty);
        for c in &f.children {
            walk(c, node, buf);
        }
    }
    let (mut node, mut buf) = (0, 0);
    fields
        .iter()
        .map(|f| {
            let at = (node, buf);
            walk(f, &mut node, &mut buf);
            at
        })
        .collect()
}

// ---------------------------------------------------------------- index

/// Byte range of a buffer inside the file.
#[derive(Debug, Clone, Copy, Default)]
struct Buf {
    off: usize,
    len: usize,
}

/// A list level: offsets (None for fixed-size lists) and the element count per row.
#[derive(Debug, Clone, Copy)]
struct Level {
    offsets: Option<(Buf, bool)>,
    size: usize,
}

#[derive(Debug, Clone)]
struct ColumnBufs {
    levels: Vec<Level>,
    data: Buf,
    elem: usize,
}

#[derive(Debug, Clone)]
struct BatchInfo {
    first_row: usize,
    acts: ColumnBufs,
    tokens: Option<ColumnBufs>,
}

/// What one Arrow stream holds: its batches and the element types.
#[derive(Debug, Clone)]
struct Index {
    batches: Vec<BatchInfo>,
    rows: usize,
    dtype: FloatKind,
    token_bits: Option<(usize, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FloatKind {
    F16,
    F32,
    F64,
}

fn float_kind(path: &Path, name: &str, f: &FieldDesc, depth: usize) -> Result<FloatKind> {
    let mut cur = f;
    for _ in 0..depth {
        match (cur.ty, cur.children.first()) {
            (Ty::List { .. } | Ty::FixedList(_), Some(c)) => cur = c,
            _ => {
                return Err(Error::format(
                    path,
                    format!("column `{name}` is not a {depth}-level list of floats"),
                ))
            }
        }
    }
    match cur.ty {
        Ty::Float(0) => Ok(FloatKind::F16),
        Ty::Float(1) => Ok(FloatKind::F32),
        Ty::Float(2) => Ok(FloatKind::F64),
        _ => Err(Error::format(
            path,
            format!("column `{name}` does not hold floats"),
        )),
    }
}

fn scan(path: &Path, buf: &[u8], info: &ColumnInfo) -> Result<Index> {
    let bad = |m: String| Error::format(path, format!("not a readable Arrow IPC stream: {m}"));
    let mut pos = 0usize;
    if buf.starts_with(b"ARROW1") {
        pos = 8; // the file format wraps the same stream of messages
    }
    let mut fields: Option<Vec<FieldDesc>> = None;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    let mut dtype = FloatKind::F32;
    let mut token_bits = None;
    let mut cols: Option<(usize, Option<usize>)> = None;
    let mut places: Vec<(usize, usize)> = Vec::new();
    // A file may end without an end-of-stream marker; pyarrow accepts that too.
    while let Some(c) = rd::<4>(buf, pos).map(u32::from_le_bytes) {
        let meta_len = if c == 0xFFFF_FFFF {
            let l = rd::<4>(buf, pos + 4)
                .map(i32::from_le_bytes)
                .ok_or_else(|| bad("truncated message length".into()))?;
            pos += 8;
            l
        } else {
            pos += 4;
            c as i32
        };
        if meta_len == 0 {
            break;
        }
        let meta_len =
            usize::try_from(meta_len).map_err(|_| bad("negative message length".into()))?;
        let meta = buf
            .get(pos..pos.saturating_add(meta_len))
            .filter(|m| m.len() == meta_len)
            .ok_or_else(|| bad("truncated message".into()))?;
        pos += meta_len;
        let msg = Table::root(meta).ok_or_else(|| bad("bad message header".into()))?;
        let header_type = msg.u8(1);
        let body_len =
            usize::try_from(msg.i64(3)).map_err(|_| bad("negative body length".into()))?;
        let body = pos;
        pos = pos
            .checked_add(body_len)
            .filter(|e| *e <= buf.len())
            .ok_or_else(|| bad("message body runs past the end of the file".into()))?;
        let header = msg.table(2);
        match header_type {
            1 => {
                let h = header.ok_or_else(|| bad("schema message without a schema".into()))?;
                if h.i16(0) != 0 {
                    return Err(Error::format(
                        path,
                        "big-endian Arrow files are not supported",
                    ));
                }
                let fs = h
                    .tables(1)
                    .into_iter()
                    .map(|f| parse_field(path, f, 0))
                    .collect::<Result<Vec<_>>>()?;
                places = layout(&fs);
                let ai = fs
                    .iter()
                    .position(|f| f.name == info.name)
                    .ok_or_else(|| Error::missing(path, format!("column `{}`", info.name)))?;
                dtype = float_kind(path, &info.name, &fs[ai], 2)?;
                let ti = fs.iter().position(|f| f.name == "token_ids");
                if let Some(ti) = ti {
                    match (fs[ti].ty, fs[ti].children.first().map(|c| c.ty)) {
                        (Ty::List { .. } | Ty::FixedList(_), Some(Ty::Int { bits, signed }))
                            if matches!(bits, 8 | 16 | 32 | 64) =>
                        {
                            token_bits = Some((bits, signed))
                        }
                        _ => {
                            return Err(Error::format(
                                path,
                                "column `token_ids` is not a list of integers",
                            ))
                        }
                    }
                }
                cols = Some((ai, ti));
                fields = Some(fs);
            }
            2 => {} // dictionary batches only feed dictionary-encoded columns, which we do not read
            3 => {
                let (Some(fs), Some((ai, ti))) = (&fields, cols) else {
                    return Err(bad("record batch before the schema".into()));
                };
                let h =
                    header.ok_or_else(|| bad("record batch message without a header".into()))?;
                if h.table(3).is_some() {
                    return Err(Error::format(
                        path,
                        "compressed Arrow record batches are not supported",
                    ));
                }
                let n_ctx =
                    usize::try_from(h.i64(0)).map_err(|_| bad("negative batch length".into()))?;
                let nodes = h
                    .vector(1)
                    .ok_or_else(|| bad("record batch without nodes".into()))?;
                let bufs = h
                    .vector(2)
                    .ok_or_else(|| bad("record batch without buffers".into()))?;
                let node = |i: usize| -> Result<(i64, i64)> {
                    if i >= nodes.1 {
                        return Err(bad("too few field nodes".into()));
                    }
                    let p = nodes.0 + 16 * i;
                    match (rd::<8>(meta, p), rd::<8>(meta, p + 8)) {
                        (Some(a), Some(b)) => Ok((i64::from_le_bytes(a), i64::from_le_bytes(b))),
                        _ => Err(bad("truncated field node".into())),
                    }
                };
                let buffer = |i: usize| -> Result<Buf> {
                    if i >= bufs.1 {
                        return Err(bad("too few buffers".into()));
                    }
                    let p = bufs.0 + 16 * i;
                    let (o, l) = match (rd::<8>(meta, p), rd::<8>(meta, p + 8)) {
                        (Some(a), Some(b)) => (i64::from_le_bytes(a), i64::from_le_bytes(b)),
                        _ => return Err(bad("truncated buffer entry".into())),
                    };
                    let (o, l) = (usize::try_from(o), usize::try_from(l));
                    match (o, l) {
                        (Ok(o), Ok(l)) if o.checked_add(l).is_some_and(|e| e <= body_len) => {
                            Ok(Buf {
                                off: body + o,
                                len: l,
                            })
                        }
                        _ => Err(bad("buffer outside the message body".into())),
                    }
                };
                let column = |fi: usize,
                              levels: usize,
                              sizes: [usize; 2],
                              elem: usize|
                 -> Result<ColumnBufs> {
                    let (mut ni, mut bi) = places[fi];
                    let mut f = &fs[fi];
                    let mut lv = Vec::new();
                    for size in sizes.iter().take(levels) {
                        let (_, nulls) = node(ni)?;
                        if nulls != 0 {
                            return Err(Error::format(
                                path,
                                format!("column `{}` has null values", fs[fi].name),
                            ));
                        }
                        let offsets = match f.ty {
                            Ty::List { large } => Some((buffer(bi + 1)?, large)),
                            Ty::FixedList(n) if n == *size => None,
                            Ty::FixedList(n) => {
                                return Err(Error::format(
                                    path,
                                    format!(
                                        "column `{}` has lists of {n}, expected {size}",
                                        fs[fi].name
                                    ),
                                ))
                            }
                            _ => return Err(bad("list structure changed".into())),
                        };
                        lv.push(Level {
                            offsets,
                            size: *size,
                        });
                        bi += n_buffers(f.ty);
                        ni += 1;
                        f = f
                            .children
                            .first()
                            .ok_or_else(|| bad("list without a child".into()))?;
                    }
                    let (_, nulls) = node(ni)?;
                    if nulls != 0 {
                        return Err(Error::format(
                            path,
                            format!("column `{}` has null values", fs[fi].name),
                        ));
                    }
                    Ok(ColumnBufs {
                        levels: lv,
                        data: buffer(bi + 1)?,
                        elem,
                    })
                };
                let es = match dtype {
                    FloatKind::F16 => 2,
                    FloatKind::F32 => 4,
                    FloatKind::F64 => 8,
                };
                let acts = column(ai, 2, [info.context_size, info.d_in], es)?;
                let tokens = match (ti, token_bits) {
                    (Some(ti), Some((bits, _))) => {
                        Some(column(ti, 1, [info.context_size, 0], bits / 8)?)
                    }
                    _ => None,
                };
                let n_rows = n_ctx
                    .checked_mul(info.context_size)
                    .ok_or_else(|| bad("row count overflows".into()))?;
                batches.push(BatchInfo {
                    first_row: rows,
                    acts,
                    tokens,
                });
                rows = rows
                    .checked_add(n_rows)
                    .ok_or_else(|| bad("row count overflows".into()))?;
            }
            other => return Err(bad(format!("unexpected message type {other}"))),
        }
    }
    if fields.is_none() {
        return Err(bad("no schema message".into()));
    }
    Ok(Index {
        batches,
        rows,
        dtype,
        token_bits,
    })
}

fn read_offset(buf: &[u8], b: Buf, large: bool, i: usize) -> Option<usize> {
    let w = if large { 8 } else { 4 };
    let p = i.checked_mul(w)?;
    if p + w > b.len {
        return None;
    }
    if large {
        usize::try_from(i64::from_le_bytes(rd(buf, b.off + p)?)).ok()
    } else {
        usize::try_from(i32::from_le_bytes(rd(buf, b.off + p)?)).ok()
    }
}

/// Element index (into the values buffer) of list item `item` of row `row`, checking
/// that the row really has `level.size` items.
fn descend(buf: &[u8], level: &Level, row: usize, item: usize) -> Option<usize> {
    match level.offsets {
        None => row.checked_mul(level.size)?.checked_add(item),
        Some((b, large)) => {
            let a = read_offset(buf, b, large, row)?;
            let e = read_offset(buf, b, large, row + 1)?;
            (e.checked_sub(a)? == level.size).then_some(a + item)
        }
    }
}

/// Byte position of the first element of (context `c`, position `r`) in a column.
fn locate(buf: &[u8], col: &ColumnBufs, c: usize, r: usize, n: usize) -> Option<usize> {
    let mut idx = descend(buf, &col.levels[0], c, r)?;
    if let Some(l1) = col.levels.get(1) {
        idx = descend(buf, l1, idx, 0)?;
    }
    let start = idx.checked_mul(col.elem)?;
    let end = start.checked_add(n.checked_mul(col.elem)?)?;
    (end <= col.data.len).then_some(col.data.off + start)
}

fn batch_of(index: &Index, row: usize) -> Option<usize> {
    let i = index.batches.partition_point(|b| b.first_row <= row);
    i.checked_sub(1)
}

fn read_acts(
    path: &Path,
    buf: &[u8],
    index: &Index,
    info: &ColumnInfo,
    start: usize,
    count: usize,
    out: &mut [f32],
) -> Result<()> {
    let d = info.d_in;
    let ctx = info.context_size;
    if start.checked_add(count).is_none_or(|e| e > index.rows) || out.len() != count * d {
        return Err(Error::invalid(format!(
            "{}: rows {start}..+{count} out of range ({} rows)",
            path.display(),
            index.rows
        )));
    }
    for (i, row_out) in out.chunks_exact_mut(d.max(1)).enumerate().take(count) {
        let row = start + i;
        let b =
            &index.batches[batch_of(index, row).ok_or_else(|| Error::format(path, "row index"))?];
        let local = row - b.first_row;
        let p = locate(buf, &b.acts, local / ctx, local % ctx, d).ok_or_else(|| {
            Error::format(
                path,
                format!("row {row}: list offsets are not a ({ctx}, {d}) array"),
            )
        })?;
        match index.dtype {
            FloatKind::F32 => crate::dtype::convert_to_f32(DType::F32, &buf[p..p + 4 * d], row_out),
            FloatKind::F16 => crate::dtype::convert_to_f32(DType::F16, &buf[p..p + 2 * d], row_out),
            FloatKind::F64 => {
                for (o, c) in row_out.iter_mut().zip(buf[p..p + 8 * d].chunks_exact(8)) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    *o = f64::from_le_bytes(a) as f32;
                }
            }
        }
    }
    Ok(())
}

fn read_tokens(
    path: &Path,
    buf: &[u8],
    index: &Index,
    info: &ColumnInfo,
    start: usize,
    count: usize,
) -> Result<Option<Vec<i64>>> {
    let Some((bits, signed)) = index.token_bits else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(count);
    for row in start..start + count {
        let b =
            &index.batches[batch_of(index, row).ok_or_else(|| Error::format(path, "row index"))?];
        let Some(col) = &b.tokens else {
            return Ok(None);
        };
        let local = row - b.first_row;
        let p = locate(
            buf,
            col,
            local / info.context_size,
            local % info.context_size,
            1,
        )
        .ok_or_else(|| {
            Error::format(
                path,
                format!("row {row}: token_ids offsets do not match context_size"),
            )
        })?;
        let v = match (bits, signed) {
            (8, true) => buf[p] as i8 as i64,
            (8, false) => buf[p] as i64,
            (16, true) => i16::from_le_bytes([buf[p], buf[p + 1]]) as i64,
            (16, false) => u16::from_le_bytes([buf[p], buf[p + 1]]) as i64,
            (32, true) => i32::from_le_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]) as i64,
            (32, false) => u32::from_le_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]) as i64,
            _ => i64::from_le_bytes(
                rd(buf, p).ok_or_else(|| Error::format(path, "token out of range"))?,
            ),
        };
        out.push(v);
    }
    Ok(Some(out))
}

/// One `.arrow` file of a cache.
pub struct ArrowShard {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    info: ColumnInfo,
    index: Index,
}

impl ArrowShard {
    /// Maps `path` and indexes its record batches.
    pub fn open(path: &Path, info: &ColumnInfo) -> Result<ArrowShard> {
        let map = crate::io::mapped::map_file(path)?;
        let index = scan(path, &map, info)?;
        Ok(ArrowShard {
            path: path.to_path_buf(),
            map,
            info: info.clone(),
            index,
        })
    }
}

impl Shard for ArrowShard {
    fn path(&self) -> &Path {
        &self.path
    }
    fn n_rows(&self) -> usize {
        self.index.rows
    }
    fn width(&self) -> usize {
        self.info.d_in
    }
    fn dtype(&self) -> DType {
        match self.index.dtype {
            FloatKind::F16 => DType::F16,
            _ => DType::F32,
        }
    }
    fn read_rows(&self, start: usize, count: usize, out: &mut [f32]) -> Result<()> {
        read_acts(
            &self.path,
            &self.map,
            &self.index,
            &self.info,
            start,
            count,
            out,
        )
    }
    fn token_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        if start.checked_add(count).is_none_or(|e| e > self.index.rows) {
            return Err(Error::invalid(format!(
                "{}: token rows out of range",
                self.path.display()
            )));
        }
        read_tokens(&self.path, &self.map, &self.index, &self.info, start, count)
    }
    fn doc_ids(&self, _: usize, _: usize) -> Result<Option<Vec<i64>>> {
        Ok(None)
    }
    fn mask(&self, _: usize, _: usize) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// Scans an in-memory stream and reads every row and token: the whole reader, for fuzzing.
pub fn parse_for_fuzz(
    data: &[u8],
    column: &str,
    context_size: usize,
    d_in: usize,
) -> Result<usize> {
    let path = Path::new("<fuzz>");
    let info = ColumnInfo {
        name: column.to_string(),
        context_size,
        d_in,
    };
    let index = scan(path, data, &info)?;
    let mut out = vec![0f32; d_in];
    for row in 0..index.rows.min(1 << 16) {
        read_acts(path, data, &index, &info, row, 1, &mut out)?;
        read_tokens(path, data, &index, &info, row, 1)?;
    }
    Ok(index.rows)
}

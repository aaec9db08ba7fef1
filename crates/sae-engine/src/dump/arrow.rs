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
    /// Column name.
    pub name: String,
    /// Tokens per row of the column (its sequence length).
    pub context_size: usize,
    /// Activation width.
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

/// Field slots (vtable indices) of the Arrow flatbuffers tables we read, from Arrow's
/// `Message.fbs` and `Schema.fbs`.
mod slot {
    pub const MESSAGE_HEADER_TYPE: usize = 1;
    pub const MESSAGE_HEADER: usize = 2;
    pub const MESSAGE_BODY_LENGTH: usize = 3;
    pub const SCHEMA_ENDIANNESS: usize = 0;
    pub const SCHEMA_FIELDS: usize = 1;
    pub const FIELD_NAME: usize = 0;
    pub const FIELD_TYPE_TYPE: usize = 2;
    pub const FIELD_TYPE: usize = 3;
    pub const FIELD_DICTIONARY: usize = 4;
    pub const FIELD_CHILDREN: usize = 5;
    pub const INT_BIT_WIDTH: usize = 0;
    pub const INT_IS_SIGNED: usize = 1;
    pub const FLOAT_PRECISION: usize = 0;
    pub const FIXED_SIZE_LIST_SIZE: usize = 0;
    pub const BATCH_LENGTH: usize = 0;
    pub const BATCH_NODES: usize = 1;
    pub const BATCH_BUFFERS: usize = 2;
    pub const BATCH_COMPRESSION: usize = 3;
}

/// The `MessageHeader` union's type ids.
mod message_type {
    pub const SCHEMA: u8 = 1;
    pub const DICTIONARY_BATCH: u8 = 2;
    pub const RECORD_BATCH: u8 = 3;
}

/// The `Type` union's type ids (a field's `type_type`).
mod type_id {
    pub const NULL: u8 = 1;
    pub const INT: u8 = 2;
    pub const FLOATING_POINT: u8 = 3;
    pub const BINARY: u8 = 4;
    pub const UTF8: u8 = 5;
    /// Bool, then Decimal, Date, Time, Timestamp up to Interval: two buffers each.
    pub const BOOL: u8 = 6;
    pub const INTERVAL: u8 = 11;
    pub const LIST: u8 = 12;
    pub const STRUCT: u8 = 13;
    pub const FIXED_SIZE_BINARY: u8 = 15;
    pub const FIXED_SIZE_LIST: u8 = 16;
    pub const MAP: u8 = 17;
    pub const DURATION: u8 = 18;
    pub const LARGE_BINARY: u8 = 19;
    pub const LARGE_UTF8: u8 = 20;
    pub const LARGE_LIST: u8 = 21;
}

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
    let name = f.string(slot::FIELD_NAME).unwrap_or_default();
    let type_type = f.u8(slot::FIELD_TYPE_TYPE);
    let t = f.table(slot::FIELD_TYPE);
    let dictionary = f.table(slot::FIELD_DICTIONARY).is_some();
    use type_id as T;
    let ty = match type_type {
        _ if dictionary => Ty::Other(2),
        T::NULL => Ty::Other(0),
        T::INT => Ty::Int {
            bits: t.map(|t| t.i32(slot::INT_BIT_WIDTH)).unwrap_or(0) as usize,
            signed: t.map(|t| t.u8(slot::INT_IS_SIGNED) != 0).unwrap_or(false),
        },
        T::FLOATING_POINT => Ty::Float(t.map(|t| t.i16(slot::FLOAT_PRECISION)).unwrap_or(0) as u8),
        T::BINARY | T::UTF8 | T::LARGE_BINARY | T::LARGE_UTF8 => Ty::Other(3),
        T::BOOL..=T::INTERVAL | T::FIXED_SIZE_BINARY | T::DURATION => Ty::Other(2),
        T::LIST => Ty::List { large: false },
        T::LARGE_LIST => Ty::List { large: true },
        T::STRUCT => Ty::Other(1),
        T::FIXED_SIZE_LIST => Ty::FixedList(
            t.map(|t| t.i32(slot::FIXED_SIZE_LIST_SIZE))
                .unwrap_or(0)
                .max(0) as usize,
        ),
        T::MAP => Ty::List { large: false }, // a list of structs
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
        .tables(slot::FIELD_CHILDREN)
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

fn bad(path: &Path, m: impl std::fmt::Display) -> Error {
    Error::format(path, format!("not a readable Arrow IPC stream: {m}"))
}

/// One framed message of the stream: its flatbuffer metadata and where its body lies.
struct Message<'a> {
    meta: &'a [u8],
    header_type: u8,
    header: Option<Table<'a>>,
    body: usize,
    body_len: usize,
}

/// Reads the message at `*pos` and moves past its body; None at the end-of-stream
/// marker or the end of the file (pyarrow accepts a file without the marker too).
fn next_message<'a>(path: &Path, buf: &'a [u8], pos: &mut usize) -> Result<Option<Message<'a>>> {
    let Some(c) = rd::<4>(buf, *pos).map(u32::from_le_bytes) else {
        return Ok(None);
    };
    // Current streams prefix the length with a 0xFFFFFFFF continuation marker.
    let meta_len = if c == 0xFFFF_FFFF {
        let l = rd::<4>(buf, *pos + 4)
            .map(i32::from_le_bytes)
            .ok_or_else(|| bad(path, "truncated message length"))?;
        *pos += 8;
        l
    } else {
        *pos += 4;
        c as i32
    };
    if meta_len == 0 {
        return Ok(None);
    }
    let meta_len = usize::try_from(meta_len).map_err(|_| bad(path, "negative message length"))?;
    let meta = buf
        .get(*pos..pos.saturating_add(meta_len))
        .filter(|m| m.len() == meta_len)
        .ok_or_else(|| bad(path, "truncated message"))?;
    *pos += meta_len;
    let msg = Table::root(meta).ok_or_else(|| bad(path, "bad message header"))?;
    let body_len = usize::try_from(msg.i64(slot::MESSAGE_BODY_LENGTH))
        .map_err(|_| bad(path, "negative body length"))?;
    let body = *pos;
    *pos = pos
        .checked_add(body_len)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| bad(path, "message body runs past the end of the file"))?;
    Ok(Some(Message {
        meta,
        header_type: msg.u8(slot::MESSAGE_HEADER_TYPE),
        header: msg.table(slot::MESSAGE_HEADER),
        body,
        body_len,
    }))
}

/// What the schema message says about the columns we read.
struct Schema {
    fields: Vec<FieldDesc>,
    /// (node, buffer) index of each top-level field in a record batch.
    places: Vec<(usize, usize)>,
    acts: usize,
    dtype: FloatKind,
    tokens: Option<usize>,
    token_bits: Option<(usize, bool)>,
}

fn parse_schema(path: &Path, header: Option<Table>, info: &ColumnInfo) -> Result<Schema> {
    let h = header.ok_or_else(|| bad(path, "schema message without a schema"))?;
    if h.i16(slot::SCHEMA_ENDIANNESS) != 0 {
        return Err(Error::format(
            path,
            "big-endian Arrow files are not supported",
        ));
    }
    let fields = h
        .tables(slot::SCHEMA_FIELDS)
        .into_iter()
        .map(|f| parse_field(path, f, 0))
        .collect::<Result<Vec<_>>>()?;
    let acts = fields
        .iter()
        .position(|f| f.name == info.name)
        .ok_or_else(|| Error::missing(path, format!("column `{}`", info.name)))?;
    let dtype = float_kind(path, &info.name, &fields[acts], 2)?;
    let tokens = fields.iter().position(|f| f.name == "token_ids");
    let mut token_bits = None;
    if let Some(ti) = tokens {
        match (fields[ti].ty, fields[ti].children.first().map(|c| c.ty)) {
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
    Ok(Schema {
        places: layout(&fields),
        fields,
        acts,
        dtype,
        tokens,
        token_bits,
    })
}

/// A record batch's field nodes and buffers, bounds-checked against its message.
struct BatchLayout<'a> {
    path: &'a Path,
    meta: &'a [u8],
    nodes: (usize, usize),
    bufs: (usize, usize),
    body: usize,
    body_len: usize,
}

impl BatchLayout<'_> {
    /// Field node `i`: (length, null count).
    fn node(&self, i: usize) -> Result<(i64, i64)> {
        if i >= self.nodes.1 {
            return Err(bad(self.path, "too few field nodes"));
        }
        let p = self.nodes.0 + 16 * i;
        match (rd::<8>(self.meta, p), rd::<8>(self.meta, p + 8)) {
            (Some(a), Some(b)) => Ok((i64::from_le_bytes(a), i64::from_le_bytes(b))),
            _ => Err(bad(self.path, "truncated field node")),
        }
    }

    /// Buffer `i` as a byte range of the file.
    fn buffer(&self, i: usize) -> Result<Buf> {
        if i >= self.bufs.1 {
            return Err(bad(self.path, "too few buffers"));
        }
        let p = self.bufs.0 + 16 * i;
        let (o, l) = match (rd::<8>(self.meta, p), rd::<8>(self.meta, p + 8)) {
            (Some(a), Some(b)) => (i64::from_le_bytes(a), i64::from_le_bytes(b)),
            _ => return Err(bad(self.path, "truncated buffer entry")),
        };
        match (usize::try_from(o), usize::try_from(l)) {
            (Ok(o), Ok(l)) if o.checked_add(l).is_some_and(|e| e <= self.body_len) => Ok(Buf {
                off: self.body + o,
                len: l,
            }),
            _ => Err(bad(self.path, "buffer outside the message body")),
        }
    }

    /// The buffers of column `fi`: `levels` list levels of the given `sizes`, then
    /// the values (`elem` bytes each). Nulls are refused.
    fn column(
        &self,
        schema: &Schema,
        fi: usize,
        levels: usize,
        sizes: [usize; 2],
        elem: usize,
    ) -> Result<ColumnBufs> {
        let path = self.path;
        let name = &schema.fields[fi].name;
        let no_nulls = |ni: usize| -> Result<()> {
            let (_, nulls) = self.node(ni)?;
            if nulls != 0 {
                return Err(Error::format(
                    path,
                    format!("column `{name}` has null values"),
                ));
            }
            Ok(())
        };
        let (mut ni, mut bi) = schema.places[fi];
        let mut f = &schema.fields[fi];
        let mut lv = Vec::new();
        for size in sizes.iter().take(levels) {
            no_nulls(ni)?;
            let offsets = match f.ty {
                Ty::List { large } => Some((self.buffer(bi + 1)?, large)),
                Ty::FixedList(n) if n == *size => None,
                Ty::FixedList(n) => {
                    return Err(Error::format(
                        path,
                        format!("column `{name}` has lists of {n}, expected {size}"),
                    ))
                }
                _ => return Err(bad(path, "list structure changed")),
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
                .ok_or_else(|| bad(path, "list without a child"))?;
        }
        no_nulls(ni)?;
        Ok(ColumnBufs {
            levels: lv,
            data: self.buffer(bi + 1)?,
            elem,
        })
    }
}

/// Locates the activation (and token) buffers of one record batch; returns them with
/// the batch's context count.
fn index_batch(
    path: &Path,
    msg: &Message,
    schema: &Schema,
    info: &ColumnInfo,
) -> Result<(usize, ColumnBufs, Option<ColumnBufs>)> {
    let h = msg
        .header
        .ok_or_else(|| bad(path, "record batch message without a header"))?;
    if h.table(slot::BATCH_COMPRESSION).is_some() {
        return Err(Error::format(
            path,
            "compressed Arrow record batches are not supported",
        ));
    }
    let n_ctx = usize::try_from(h.i64(slot::BATCH_LENGTH))
        .map_err(|_| bad(path, "negative batch length"))?;
    let batch = BatchLayout {
        path,
        meta: msg.meta,
        nodes: h
            .vector(slot::BATCH_NODES)
            .ok_or_else(|| bad(path, "record batch without nodes"))?,
        bufs: h
            .vector(slot::BATCH_BUFFERS)
            .ok_or_else(|| bad(path, "record batch without buffers"))?,
        body: msg.body,
        body_len: msg.body_len,
    };
    let es = match schema.dtype {
        FloatKind::F16 => 2,
        FloatKind::F32 => 4,
        FloatKind::F64 => 8,
    };
    let acts = batch.column(schema, schema.acts, 2, [info.context_size, info.d_in], es)?;
    let tokens = match (schema.tokens, schema.token_bits) {
        (Some(ti), Some((bits, _))) => {
            Some(batch.column(schema, ti, 1, [info.context_size, 0], bits / 8)?)
        }
        _ => None,
    };
    Ok((n_ctx, acts, tokens))
}

/// Indexes every record batch of the stream in `buf` (bodies are skipped, not read).
fn scan(path: &Path, buf: &[u8], info: &ColumnInfo) -> Result<Index> {
    let mut pos = 0usize;
    if buf.starts_with(b"ARROW1") {
        pos = 8; // the file format wraps the same stream of messages
    }
    let mut schema: Option<Schema> = None;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    while let Some(msg) = next_message(path, buf, &mut pos)? {
        match msg.header_type {
            message_type::SCHEMA => schema = Some(parse_schema(path, msg.header, info)?),
            // Dictionary batches only feed dictionary-encoded columns, which we do not read.
            message_type::DICTIONARY_BATCH => {}
            message_type::RECORD_BATCH => {
                let Some(schema) = &schema else {
                    return Err(bad(path, "record batch before the schema"));
                };
                let (n_ctx, acts, tokens) = index_batch(path, &msg, schema, info)?;
                let n_rows = n_ctx
                    .checked_mul(info.context_size)
                    .ok_or_else(|| bad(path, "row count overflows"))?;
                batches.push(BatchInfo {
                    first_row: rows,
                    acts,
                    tokens,
                });
                rows = rows
                    .checked_add(n_rows)
                    .ok_or_else(|| bad(path, "row count overflows"))?;
            }
            other => return Err(bad(path, format!("unexpected message type {other}"))),
        }
    }
    let schema = schema.ok_or_else(|| bad(path, "no schema message"))?;
    Ok(Index {
        batches,
        rows,
        dtype: schema.dtype,
        token_bits: schema.token_bits,
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

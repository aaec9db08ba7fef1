//! llama.cpp control vectors in GGUF (version 3).
//!
//! Written by hand: the `gguf` crate on crates.io (0.1.x) only parses, and the crates
//! that write GGUF come inside whole tensor frameworks (candle). A control vector needs
//! three metadata keys and a few 1-D F32 tensors, so the layout is small enough to own:
//!
//! ```text
//! "GGUF" | u32 version=3 | u64 n_tensors | u64 n_kv
//! kv*:     string key | u32 type | value            (string = u64 len + bytes)
//! tensor*: string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset
//! padding to general.alignment (32) | tensor data, each starting at a multiple of 32
//! ```
//!
//! Layer numbering is llama.cpp's: `direction.N` (N >= 1) is added to the output of
//! block N (0-based), i.e. Hugging Face `hidden_states[N + 1]`, `blocks.N.hook_resid_post`.
//! llama.cpp keeps no slot for N = 0.

use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
/// GGUF's default alignment (general.alignment absent).
pub const ALIGNMENT: usize = 32;
const TYPE_U32: u32 = 4;
const TYPE_STRING: u32 = 8;
const GGML_TYPE_F32: u32 = 0;

/// A control vector: one direction per steered layer.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlVector {
    /// `controlvector.model_hint`: the model family the vector is for (e.g. "llama").
    pub model_hint: String,
    /// (layer N >= 1, direction of length n_embd), in increasing layer order.
    pub layers: Vec<(usize, Vec<f32>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn pad_to(out: &mut Vec<u8>, align: usize) {
    while out.len() % align != 0 {
        out.push(0);
    }
}

impl ControlVector {
    /// Checks layers (>= 1, distinct) and widths (equal, non-zero, finite values).
    pub fn validate(&self) -> Result<()> {
        let n = self
            .layers
            .first()
            .map(|(_, v)| v.len())
            .ok_or_else(|| Error::invalid("a control vector needs at least one layer"))?;
        let mut seen = std::collections::BTreeSet::new();
        for (layer, v) in &self.layers {
            if *layer == 0 {
                return Err(Error::invalid(
                    "control vector layer 0 does not exist in llama.cpp's numbering: \
                     direction.N steers the output of block N, N >= 1",
                ));
            }
            if !seen.insert(*layer) {
                return Err(Error::invalid(format!(
                    "control vector has layer {layer} twice"
                )));
            }
            if v.len() != n || n == 0 {
                return Err(Error::invalid(format!(
                    "control vector layer {layer} has length {}, expected {n} (n_embd)",
                    v.len()
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::invalid(format!(
                    "control vector layer {layer} holds a NaN or infinity"
                )));
            }
        }
        Ok(())
    }

    /// The GGUF file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let mut layers = self.layers.clone();
        layers.sort_by_key(|(l, _)| *l);
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(VERSION.to_le_bytes());
        out.extend((layers.len() as u64).to_le_bytes());
        out.extend(3u64.to_le_bytes());
        put_str(&mut out, "general.architecture");
        out.extend(TYPE_STRING.to_le_bytes());
        put_str(&mut out, "controlvector");
        put_str(&mut out, "controlvector.model_hint");
        out.extend(TYPE_STRING.to_le_bytes());
        put_str(&mut out, &self.model_hint);
        put_str(&mut out, "controlvector.layer_count");
        out.extend(TYPE_U32.to_le_bytes());
        out.extend((layers.len() as u32).to_le_bytes());
        // Tensor infos: offsets are relative to the start of the data section and each
        // is a multiple of the alignment.
        let mut offset = 0usize;
        for (layer, v) in &layers {
            put_str(&mut out, &format!("direction.{layer}"));
            out.extend(1u32.to_le_bytes());
            out.extend((v.len() as u64).to_le_bytes());
            out.extend(GGML_TYPE_F32.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += (v.len() * 4).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        pad_to(&mut out, ALIGNMENT);
        for (_, v) in &layers {
            for x in v {
                out.extend(x.to_le_bytes());
            }
            pad_to(&mut out, ALIGNMENT);
        }
        Ok(out)
    }

    /// Writes the control vector atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::io::atomic::write_bytes(path, &bytes)
    }

    /// Reads a control vector written by [`ControlVector::write`] (or any GGUF v2/v3 file
    /// with `direction.N` F32 tensors); errors name the file.
    pub fn read(path: &Path) -> Result<ControlVector> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        parse(path, &bytes)
    }
}

/// A cursor over GGUF bytes whose errors name the file.
struct Cursor<'a> {
    path: &'a Path,
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.b.len());
        match end {
            Some(e) => {
                let s = &self.b[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(Error::format(
                self.path,
                format!("GGUF truncated at byte {}", self.pos),
            )),
        }
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| Error::format(self.path, "GGUF string is not UTF-8"))
    }
    /// Skips or reads one metadata value of `ty`; returns strings and u32s.
    fn value(&mut self, ty: u32) -> Result<Option<Meta>> {
        let fixed = |t: u32| match t {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        match ty {
            TYPE_STRING => Ok(Some(Meta::Str(self.string()?))),
            TYPE_U32 => Ok(Some(Meta::U32(self.u32()?))),
            9 => {
                let inner = self.u32()?;
                let n = self.u64()?;
                for _ in 0..n {
                    self.value(inner)?;
                }
                Ok(None)
            }
            t => match fixed(t) {
                Some(n) => {
                    self.take(n)?;
                    Ok(None)
                }
                None => Err(Error::format(
                    self.path,
                    format!("unknown GGUF value type {t}"),
                )),
            },
        }
    }
}

enum Meta {
    Str(String),
    U32(u32),
}

fn parse(path: &Path, bytes: &[u8]) -> Result<ControlVector> {
    let mut c = Cursor {
        path,
        b: bytes,
        pos: 0,
    };
    if c.take(4)? != MAGIC {
        return Err(Error::format(path, "not a GGUF file (magic is not GGUF)"));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Error::format(
            path,
            format!("unsupported GGUF version {version}"),
        ));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    let (mut arch, mut hint, mut count, mut align) = (None, None, None, ALIGNMENT);
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        match (key.as_str(), c.value(ty)?) {
            ("general.architecture", Some(Meta::Str(s))) => arch = Some(s),
            ("controlvector.model_hint", Some(Meta::Str(s))) => hint = Some(s),
            ("controlvector.layer_count", Some(Meta::U32(n))) => count = Some(n),
            ("general.alignment", Some(Meta::U32(n))) if n > 0 => align = n as usize,
            _ => {}
        }
    }
    if arch.as_deref() != Some("controlvector") {
        return Err(Error::format(
            path,
            format!("general.architecture is {arch:?}, expected \"controlvector\""),
        ));
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()?;
        let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
        let ty = c.u32()?;
        let off = c.u64()? as usize;
        if ty != GGML_TYPE_F32 || dims.len() != 1 {
            return Err(Error::format(
                path,
                format!("tensor `{name}` must be a 1-D F32 tensor (type {ty}, dims {dims:?})"),
            ));
        }
        let layer = name
            .strip_prefix("direction.")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::format(path, format!("tensor `{name}` is not named direction.N"))
            })?;
        infos.push((layer, dims[0] as usize, off));
    }
    let data_start = c.pos.div_ceil(align) * align;
    let mut layers = Vec::new();
    for (layer, n, off) in infos {
        let start = data_start + off;
        let end = start + n * 4;
        if end > bytes.len() {
            return Err(Error::format(
                path,
                format!("direction.{layer} extends past the end of the file"),
            ));
        }
        let v = bytes[start..end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        layers.push((layer, v));
    }
    if count.is_some_and(|n| n as usize != layers.len()) {
        return Err(Error::format(
            path,
            format!(
                "controlvector.layer_count is {count:?} but the file has {} direction tensors",
                layers.len()
            ),
        ));
    }
    Ok(ControlVector {
        model_hint: hint.unwrap_or_default(),
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_roundtrip() {
        let cv = ControlVector {
            model_hint: "llama".into(),
            layers: vec![(12, vec![1.0, -2.0, 3.5]), (3, vec![0.0, 0.5, 0.25])],
        };
        let b = cv.to_bytes().unwrap();
        assert_eq!(&b[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 2);
        assert_eq!(b.len() % ALIGNMENT, 0);
        let back = parse(Path::new("x.gguf"), &b).unwrap();
        assert_eq!(back.model_hint, "llama");
        // written in layer order
        assert_eq!(back.layers[0], (3, vec![0.0, 0.5, 0.25]));
        assert_eq!(back.layers[1], (12, vec![1.0, -2.0, 3.5]));
    }

    #[test]
    fn rejects_layer_zero_and_mismatched_widths() {
        let z = ControlVector {
            model_hint: "m".into(),
            layers: vec![(0, vec![1.0])],
        };
        assert!(z.to_bytes().is_err());
        let w = ControlVector {
            model_hint: "m".into(),
            layers: vec![(1, vec![1.0]), (2, vec![1.0, 2.0])],
        };
        assert!(w.to_bytes().is_err());
        assert!(parse(Path::new("t.gguf"), b"GGUF\x03\0\0\0").is_err());
    }
}

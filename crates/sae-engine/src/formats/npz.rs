//! `.npz` archives (NumPy's zip of `.npy` members). `np.savez` stores members
//! uncompressed, so a member's array data is a byte range of the archive: we map the
//! archive and point at it. Deflated members (`np.savez_compressed`) are inflated into
//! memory, which is the best a compressed file allows.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::mapped::map_file;
use crate::io::npy::NpyHeader;
use crate::matrix::Bytes;

/// One array of an npz archive: its header and its data bytes.
#[derive(Debug, Clone)]
pub struct NpzArray {
    /// Member name without the `.npy` suffix.
    pub name: String,
    /// The member's npy header.
    pub header: NpyHeader,
    /// Exactly `numel * dtype size` bytes of array data.
    pub bytes: Bytes,
}

/// An opened npz archive with every member located.
pub struct Npz {
    path: PathBuf,
    arrays: HashMap<String, NpzArray>,
}

impl Npz {
    /// Maps `path` and locates every `.npy` member.
    pub fn open(path: &Path) -> Result<Npz> {
        let map = map_file(path)?;
        Npz::from_map(path, map)
    }

    fn from_map(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Npz> {
        let arrays = parse_members(path, &map, |off, len| Bytes::Mapped {
            map: map.clone(),
            offset: off,
            len,
        })?;
        Ok(Npz {
            path: path.to_path_buf(),
            arrays,
        })
    }

    /// Parses an npz held in memory (tests, fuzzing); stored members are copied.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Npz> {
        let arrays = parse_members(path, bytes, |off, len| {
            Bytes::Owned(Arc::new(bytes[off..off + len].to_vec()))
        })?;
        Ok(Npz {
            path: path.to_path_buf(),
            arrays,
        })
    }

    /// The archive.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Member names (without `.npy`), sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.arrays.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// An array by name, if present.
    pub fn get(&self, name: &str) -> Option<&NpzArray> {
        self.arrays.get(name)
    }
}

fn parse_members(
    path: &Path,
    data: &[u8],
    mapped: impl Fn(usize, usize) -> Bytes,
) -> Result<HashMap<String, NpzArray>> {
    let zerr = |e: zip::result::ZipError| {
        Error::format(path, format!("not a valid .npz (zip) archive: {e}"))
    };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(zerr)?;
    let mut arrays = HashMap::new();
    for i in 0..zip.len() {
        let (name, method, csize, usize_, start) = {
            let f = zip.by_index_raw(i).map_err(zerr)?;
            (
                f.name().to_string(),
                f.compression(),
                f.compressed_size(),
                f.size(),
                f.data_start(),
            )
        };
        let Some(key) = name.strip_suffix(".npy") else {
            continue;
        };
        let member = |m: &str| Error::format(path, format!("member `{name}`: {m}"));
        let to_usize =
            |v: u64| usize::try_from(v).map_err(|_| member("size does not fit in memory"));
        let (start, csize, size) = (to_usize(start)?, to_usize(csize)?, to_usize(usize_)?);
        let end = start
            .checked_add(csize)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| member("extends past the end of the archive (truncated?)"))?;
        let array = match method {
            zip::CompressionMethod::Stored => {
                if csize != size {
                    return Err(member("stored member with mismatched sizes"));
                }
                let raw = &data[start..end];
                let header = NpyHeader::parse(path, raw).map_err(|e| member(&e.to_string()))?;
                let len = header
                    .data_len()
                    .ok_or_else(|| member("array size overflows"))?;
                if header
                    .data_offset
                    .checked_add(len)
                    .is_none_or(|e| e > raw.len())
                {
                    return Err(member(&format!(
                        "array data needs {len} bytes after the header, the member has {} (truncated?)",
                        raw.len() - header.data_offset.min(raw.len())
                    )));
                }
                // Cannot overflow: start + data_offset + len <= end <= data.len().
                NpzArray {
                    name: key.to_string(),
                    bytes: mapped(start + header.data_offset, len),
                    header,
                }
            }
            zip::CompressionMethod::Deflated => {
                let mut f = zip.by_index(i).map_err(zerr)?;
                // Cap the allocation by the declared size; a lying header cannot make us
                // allocate more than the data that actually inflates.
                let mut buf = Vec::with_capacity(size.min(1 << 30));
                f.read_to_end(&mut buf)
                    .map_err(|e| member(&format!("cannot inflate: {e}")))?;
                let header = NpyHeader::parse(path, &buf).map_err(|e| member(&e.to_string()))?;
                let len = header
                    .data_len()
                    .ok_or_else(|| member("array size overflows"))?;
                let data_end = header
                    .data_offset
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or_else(|| member("array data is shorter than its shape (truncated?)"))?;
                buf.truncate(data_end);
                buf.drain(..header.data_offset);
                NpzArray {
                    name: key.to_string(),
                    bytes: Bytes::Owned(Arc::new(buf)),
                    header,
                }
            }
            other => {
                return Err(member(&format!(
                    "unsupported compression {other:?} (expected stored or deflate)"
                )))
            }
        };
        arrays.insert(key.to_string(), array);
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An npy member: a header dictionary with `shape` (text) and a few data bytes.
    fn npy_member(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((dict.len() as u16).to_le_bytes());
        b.extend(dict.as_bytes());
        b.extend(data);
        b
    }

    fn archive(member: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        z.start_file("W.npy", opts).unwrap();
        z.write_all(member).unwrap();
        z.finish().unwrap().into_inner()
    }

    #[test]
    fn reads_stored_and_deflated_members() {
        let m = npy_member("|u1", "(3,)", &[7, 8, 9]);
        for method in [
            zip::CompressionMethod::Stored,
            zip::CompressionMethod::Deflated,
        ] {
            let npz = Npz::from_bytes(Path::new("ok.npz"), &archive(&m, method)).unwrap();
            let a = npz.get("W").unwrap();
            assert_eq!(a.header.shape, vec![3]);
            assert_eq!(a.bytes.as_slice(), &[7, 8, 9]);
        }
    }

    #[test]
    fn crafted_sizes_that_overflow_are_errors_naming_the_file() {
        // usize::MAX one-byte elements: the size itself fits, header offset + size wraps
        // (in a release build the unchecked sum passed the length check).
        let wraps = npy_member("|u1", &format!("({},)", usize::MAX), &[1, 2, 3]);
        // The element count overflows before the offset is added.
        let huge = npy_member("<f4", &format!("({}, 4)", usize::MAX / 2), &[0; 8]);
        for (member, what) in [(&wraps, "truncated"), (&huge, "overflows")] {
            for method in [
                zip::CompressionMethod::Stored,
                zip::CompressionMethod::Deflated,
            ] {
                let e = Npz::from_bytes(Path::new("crafted.npz"), &archive(member, method))
                    .err()
                    .expect("a crafted member must be rejected")
                    .to_string();
                assert!(
                    e.contains("crafted.npz") && e.contains("W.npy") && e.contains(what),
                    "{method:?}: {e}"
                );
            }
        }
    }
}

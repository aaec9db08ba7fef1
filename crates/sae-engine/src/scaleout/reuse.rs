//! What a unit file was computed from, so a rerun reuses it only for the same content:
//! the shard's full-file hash (xxh3-128), the SAE fingerprint and the options that change
//! results. The key is kept beside the unit file (`shard-…stats.json`) together with the
//! shard's (size, mtime, ctime, device, inode) when it was hashed: while those are
//! unchanged the file is not read again. ctime is in the cache key because no user
//! tool can set it back: rewriting a shard and restoring its mtime still changes it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Format of the key files; another version is never reused.
const VERSION: u32 = 1;

/// The stat fields that stand for a file's content between two hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status-change time, nanoseconds since the epoch (0 where the OS has none).
    pub ctime_ns: i128,
    /// Device and inode (0 where the OS has none).
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

impl FileStamp {
    /// The stamp of `path` now.
    pub fn of(path: &Path) -> Result<FileStamp> {
        let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let ns = |t: std::io::Result<std::time::SystemTime>| -> i128 {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128)
        };
        #[cfg(unix)]
        let (ctime_ns, dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (
                m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
                m.dev(),
                m.ino(),
            )
        };
        #[cfg(not(unix))]
        let (ctime_ns, dev, ino) = (0, 0, 0);
        Ok(FileStamp {
            size: m.len(),
            mtime_ns: ns(m.modified()),
            ctime_ns,
            dev,
            ino,
        })
    }
}

/// xxh3-128 of a whole file, as 32 hex digits.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// Everything a unit's statistics depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitKey {
    /// Key file format.
    pub version: u32,
    /// The shard file as given.
    pub shard: PathBuf,
    /// Its stamp when `content_hash` was taken.
    pub stamp: FileStamp,
    /// xxh3-128 of the shard file.
    pub content_hash: String,
    /// The SAE's fingerprint.
    pub fingerprint: String,
    /// The options that change results (token rule, engine precision, ...).
    pub options: String,
}

impl UnitKey {
    /// The key of `shard` now (reads the whole file).
    pub fn compute(shard: &Path, fingerprint: &str, options: &str) -> Result<UnitKey> {
        // Stamp first: a change while hashing then shows on the next run.
        let stamp = FileStamp::of(shard)?;
        Ok(UnitKey {
            version: VERSION,
            shard: shard.to_path_buf(),
            stamp,
            content_hash: hash_file(shard)?,
            fingerprint: fingerprint.to_string(),
            options: options.to_string(),
        })
    }

    /// Reads a key file; None when it is absent or unreadable.
    pub fn read(path: &Path) -> Option<UnitKey> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the key file atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| Error::format(path, e.to_string()))?;
        crate::io::atomic::write_bytes(path, text.as_bytes())
    }
}

/// Whether the unit computed under `old` may be reused for `shard` now. The content
/// hash is taken from `old` while the shard's stamp is unchanged, else the file is
/// hashed again. Ok carries the key to keep (a fresh stamp when the file was re-read
/// with the same content); Err says why not.
pub fn still_valid(
    old: &UnitKey,
    shard: &Path,
    fingerprint: &str,
    options: &str,
) -> std::result::Result<UnitKey, String> {
    if old.version != VERSION {
        return Err(format!("key format {} (now {VERSION})", old.version));
    }
    if old.fingerprint != fingerprint {
        return Err(format!(
            "fingerprint {} is not the SAE's {fingerprint}",
            old.fingerprint
        ));
    }
    if old.options != options {
        return Err(format!(
            "computed with options `{}`, now `{options}`",
            old.options
        ));
    }
    let stamp = FileStamp::of(shard).map_err(|e| e.to_string())?;
    if stamp == old.stamp {
        return Ok(old.clone());
    }
    let now = UnitKey::compute(shard, fingerprint, options).map_err(|e| e.to_string())?;
    if now.content_hash != old.content_hash {
        return Err(format!(
            "the shard's content changed (hash {} -> {})",
            old.content_hash, now.content_hash
        ));
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_stamp_is_not_reread_and_changed_content_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        std::fs::write(&p, b"0123456789").unwrap();
        let key = UnitKey::compute(&p, "fp", "mask=1").unwrap();
        assert_eq!(key.content_hash.len(), 32);
        // A forged hash is believed while the stamp holds: the file is not read.
        let forged = UnitKey {
            content_hash: "f".repeat(32),
            ..key.clone()
        };
        assert_eq!(still_valid(&forged, &p, "fp", "mask=1").unwrap(), forged);
        // Same size, mtime set back: ctime moved, so the file is hashed again.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"0123456780").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let e = still_valid(&key, &p, "fp", "mask=1").unwrap_err();
        assert!(e.contains("content changed"), "{e}");
        // Touched but identical: reused, with the new stamp to keep.
        std::fs::write(&p, b"0123456789").unwrap();
        let again = still_valid(&key, &p, "fp", "mask=1").unwrap();
        assert_eq!(again.content_hash, key.content_hash);
        assert_ne!(again.stamp, key.stamp);
        assert!(still_valid(&key, &p, "other", "mask=1")
            .unwrap_err()
            .contains("fingerprint"));
        assert!(still_valid(&key, &p, "fp", "mask=0")
            .unwrap_err()
            .contains("options"));
        let kp = dir.path().join("k.json");
        key.write(&kp).unwrap();
        assert_eq!(UnitKey::read(&kp).unwrap(), key);
    }
}

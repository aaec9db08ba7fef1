//! Atomic output: write to a temporary name beside the target, rename when complete,
//! so an interrupted run never leaves a half-written file under the real name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary path used while writing `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    scratch_path(path, "tmp")
}

/// A hidden per-process scratch name beside `path` (`.NAME.PID.TAG`): temporary outputs
/// and spill files live in the target's directory, so the final rename never crosses
/// file systems.
pub fn scratch_path(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.{}.{tag}", std::process::id()))
}

/// Runs `write` on a temporary path, then renames it to `path`. The temporary file
/// is removed if `write` fails.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
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
    let tmp = tmp_path(path);
    match write(&tmp) {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(path, e))
    })
}

/// A file written in pieces under its temporary name; [`AtomicFile::commit`] flushes,
/// syncs and renames it into place. Dropping it uncommitted removes the temporary file.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file for `path` (1 MiB write buffer).
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let tmp = tmp_path(path);
        let f = File::create(&tmp).map_err(|e| Error::io(path, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            w: Some(BufWriter::with_capacity(1 << 20, f)),
        })
    }

    /// The target path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends bytes; errors name the target.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self
            .w
            .as_mut()
            .ok_or_else(|| Error::invalid(format!("{}: already committed", self.path.display())))?;
        w.write_all(bytes).map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes, syncs and renames the file to its target name.
    pub fn commit(mut self) -> Result<()> {
        let io = |e: std::io::Error| Error::io(&self.path, e);
        if let Some(w) = self.w.take() {
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(io)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // After a successful rename the temporary name no longer exists.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_old_file_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_bytes(&p, b"old").unwrap();
        let r = write_with(&p, |tmp| {
            std::fs::write(tmp, b"partial").unwrap();
            Err(Error::invalid("boom"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! One fan-out per work folder: an exclusive lock on `WORK_DIR/.sae-stats.lock`, held
//! for the job's life, holding `pid@host` of its owner so a second run can say who has it.
//! The lock is advisory (flock on Linux, through the `fs4` crate; over NFS the kernel maps it
//! to a POSIX lock).

use std::fs::File;

use fs4::TryLockError;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the lock inside the work folder.
pub const LOCK_NAME: &str = ".sae-stats.lock";

/// A held work-folder lock; dropping it releases the lock.
#[derive(Debug)]
pub struct WorkLock {
    /// Held open: the lock lives as long as this handle.
    _file: File,
    path: PathBuf,
}

/// `pid@host` of this process.
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| crate::io::atomic::Owner::current().host.clone());
    format!("{}@{host}", std::process::id())
}

impl WorkLock {
    /// Takes the lock of `work_dir` (which must exist), or fails at once naming the
    /// folder and the holder.
    pub fn acquire(work_dir: &Path) -> Result<WorkLock> {
        let path = work_dir.join(LOCK_NAME);
        // The previous holder removes the file when it cleans up; a lock taken on a file
        // that was unlinked meanwhile protects nothing, so take it again on the new one.
        for _ in 0..8 {
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            // fs4 rather than std's File::try_lock (Rust 1.89): the crate's MSRV is 1.85.
            match fs4::FileExt::try_lock(&file) {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(Error::invalid(format!(
                        "{}: the work folder is in use by another `sae stats --devices` run \
                         ({}); wait for it to finish, or give this run another --work-dir \
                         (or --out)",
                        work_dir.display(),
                        if holder.is_empty() {
                            "holder unknown".to_string()
                        } else {
                            holder.to_string()
                        }
                    )));
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            if !same_file(&file, &path) {
                continue;
            }
            let me = holder_id();
            file.set_len(0).map_err(|e| Error::io(&path, e))?;
            file.rewind().map_err(|e| Error::io(&path, e))?;
            file.write_all(format!("{me}\n").as_bytes())
                .map_err(|e| Error::io(&path, e))?;
            return Ok(WorkLock { _file: file, path });
        }
        Err(Error::invalid(format!(
            "{}: could not take the work folder's lock (its lock file keeps being replaced)",
            work_dir.display()
        )))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the lock file while still holding the lock (before its folder is removed).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the open `file` is still what `path` names.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_folder_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = WorkLock::acquire(dir.path()).unwrap();
        let e = WorkLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        assert!(e.contains(&holder_id()), "{e}");
        first.remove_file();
        drop(first);
        let again = WorkLock::acquire(dir.path()).unwrap();
        assert!(again.path().is_file());
    }
}

//! The Hugging Face cache layout, read without the network:
//! `CACHE/models--ORG--NAME/refs/REVISION` holds a commit hash, and
//! `CACHE/models--ORG--NAME/snapshots/COMMIT/PATH` the files (links into `blobs/`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `CACHE/models--ORG--NAME` for repository `ORG/NAME`.
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// `REPO_DIR/snapshots/COMMIT/PATH`.
pub fn snapshot_path(repo_dir: &Path, commit: &str, path: &str) -> PathBuf {
    let mut p = repo_dir.join("snapshots").join(commit);
    p.extend(path.split('/'));
    p
}

/// A full commit hash (40 lowercase hex digits), as the cache names snapshots.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What the cache holds for one (revision, path).
#[derive(Debug)]
pub enum Lookup {
    /// The file or folder is there.
    Found {
        /// The commit the revision points at.
        commit: String,
        /// Its local path.
        local: PathBuf,
    },
    /// No snapshot for the revision (repository or ref absent).
    NoRevision {
        /// What was looked for.
        expected: PathBuf,
    },
    /// The revision's snapshot exists but lacks the path (or holds an empty folder).
    NotInSnapshot {
        /// The path that does not exist.
        expected: PathBuf,
    },
}

impl Lookup {
    /// One phrase for an error message: what was looked for and not found.
    pub fn describe(&self) -> String {
        match self {
            Lookup::Found { local, .. } => format!("found at {}", local.display()),
            Lookup::NoRevision { expected } => {
                format!("not in the cache (no {})", expected.display())
            }
            Lookup::NotInSnapshot { expected } => format!(
                "the cached snapshot has no {} (never downloaded, or not in that revision)",
                expected.display()
            ),
        }
    }
}

/// Looks `path` up at `revision` (a branch or tag through `refs/`, or a full commit hash).
pub fn lookup(repo_dir: &Path, revision: &str, path: &str) -> Result<Lookup> {
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        let mut ref_file = repo_dir.join("refs");
        // Revisions such as refs/pr/1 are nested folders under refs/.
        ref_file.extend(revision.split('/'));
        match std::fs::read_to_string(&ref_file) {
            Ok(s) => {
                let c = s.trim().to_string();
                if !is_commit_hash(&c) {
                    return Err(Error::format(
                        &ref_file,
                        format!("expected a 40-digit commit hash, found `{c}`"),
                    ));
                }
                c
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lookup::NoRevision { expected: ref_file })
            }
            Err(e) => return Err(Error::io(&ref_file, e)),
        }
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Ok(Lookup::NoRevision { expected: snapshot });
    }
    let local = snapshot_path(repo_dir, &commit, path);
    // A dangling link (blob deleted) does not count: metadata() follows links.
    let present = match std::fs::metadata(&local) {
        Ok(m) if m.is_dir() => std::fs::read_dir(&local)
            .map_err(|e| Error::io(&local, e))?
            .next()
            .is_some(),
        Ok(_) => true,
        Err(_) => false,
    };
    Ok(if present {
        Lookup::Found { commit, local }
    } else {
        Lookup::NotInSnapshot { expected: local }
    })
}

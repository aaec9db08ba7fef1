//! Outputs never overwrite inputs, and destinations are checked before any work.
//!
//! A command lists its inputs (SAE files or folders, dumps, codes and statistics files,
//! a tokenizer) and its outputs (files or folders) and calls [`PathGuard::check`] first.
//! Paths are compared after resolving symlinks (canonical paths) and, on Unix, by
//! (device, inode), so a hard link or a symlink to an input is caught as well. Refused:
//! - an output file that is an input file, or lies inside an input folder (also when it
//!   does not exist yet: its folder is resolved);
//! - an output folder that is an input folder, lies inside one, or contains an input;
//! - an output file that is an existing folder, an output folder that is an existing
//!   file, a destination whose folder does not exist or is not writable.
//!
//! ```no_run
//! # use sae_engine::io::guard::PathGuard;
//! # fn f() -> sae_engine::Result<()> {
//! PathGuard::new()
//!     .sae("--sae", "sae_dir".as_ref())
//!     .input("--acts", "dump_dir".as_ref())
//!     .output_file("--out", "codes.safetensors".as_ref())
//!     .check()?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Most files looked at inside one input folder for the hard-link check (a dump folder
/// with more shards is still protected by path; only links from outside go unseen).
const MAX_FILES_PER_INPUT: usize = 100_000;

/// (device, inode) of a file: its identity whatever name or link reaches it.
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<FileId> {
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

#[derive(Debug, Clone)]
struct Named {
    /// The flag or argument the path came from (`--acts`, `INPUT`), for messages.
    what: String,
    path: PathBuf,
}

/// The inputs and outputs of one command, checked together (see the module doc).
#[derive(Debug, Clone, Default)]
#[must_use = "call .check()"]
pub struct PathGuard {
    inputs: Vec<Named>,
    outputs: Vec<(Named, Kind)>,
}

/// An input as found on disk.
struct Resolved {
    named: Named,
    canonical: PathBuf,
    is_dir: bool,
    /// The input's own id (a file), or the ids of the files inside it (a folder).
    ids: HashMap<FileId, PathBuf>,
}

impl PathGuard {
    /// No inputs, no outputs.
    pub fn new() -> PathGuard {
        PathGuard::default()
    }

    /// An input file or folder. A missing input is skipped here: the reader reports it.
    pub fn input(mut self, what: &str, path: &Path) -> PathGuard {
        self.inputs.push(Named {
            what: what.to_string(),
            path: path.to_path_buf(),
        });
        self
    }

    /// Several inputs of one flag.
    pub fn inputs<P: AsRef<Path>>(mut self, what: &str, paths: &[P]) -> PathGuard {
        for p in paths {
            self = self.input(what, p.as_ref());
        }
        self
    }

    /// An optional input.
    pub fn input_opt<P: AsRef<Path>>(self, what: &str, path: Option<P>) -> PathGuard {
        match path {
            Some(p) => self.input(what, p.as_ref()),
            None => self,
        }
    }

    /// An SAE: its folder, or its file plus the configuration files loaders read beside
    /// a file (`cfg.json`, `config.json`).
    pub fn sae(mut self, what: &str, path: &Path) -> PathGuard {
        if path.is_file() {
            let dir = path.parent().unwrap_or(Path::new("."));
            for cfg in ["cfg.json", "config.json"] {
                let c = dir.join(cfg);
                if c.is_file() {
                    self = self.input(&format!("{what} ({cfg} beside it)"), &c);
                }
            }
        }
        self.input(what, path)
    }

    /// An output file (written under a temporary name, then renamed over `path`).
    pub fn output_file(mut self, what: &str, path: &Path) -> PathGuard {
        self.outputs.push((
            Named {
                what: what.to_string(),
                path: path.to_path_buf(),
            },
            Kind::File,
        ));
        self
    }

    /// An optional output file.
    pub fn output_file_opt<P: AsRef<Path>>(self, what: &str, path: Option<P>) -> PathGuard {
        match path {
            Some(p) => self.output_file(what, p.as_ref()),
            None => self,
        }
    }

    /// An output folder (created when missing; files are written into it).
    pub fn output_dir(mut self, what: &str, path: &Path) -> PathGuard {
        self.outputs.push((
            Named {
                what: what.to_string(),
                path: path.to_path_buf(),
            },
            Kind::Dir,
        ));
        self
    }

    /// An optional output folder.
    pub fn output_dir_opt<P: AsRef<Path>>(self, what: &str, path: Option<P>) -> PathGuard {
        match path {
            Some(p) => self.output_dir(what, p.as_ref()),
            None => self,
        }
    }

    /// Refuses outputs that would write over or into an input, and destinations that
    /// cannot be written; the error names both paths.
    pub fn check(&self) -> Result<()> {
        let inputs: Vec<Resolved> = self.inputs.iter().filter_map(resolve_input).collect();
        for (out, kind) in &self.outputs {
            let dest = check_destination(out, *kind)?;
            for inp in &inputs {
                check_pair(out, *kind, &dest, inp)?;
            }
        }
        Ok(())
    }
}

/// An existing input, resolved; None when it does not exist (its reader will say so).
fn resolve_input(n: &Named) -> Option<Resolved> {
    let meta = std::fs::metadata(&n.path).ok()?;
    let canonical = std::fs::canonicalize(&n.path).ok()?;
    let mut ids = HashMap::new();
    if meta.is_dir() {
        collect_ids(&canonical, &mut ids);
    } else if let Some(id) = file_id(&meta) {
        ids.insert(id, canonical.clone());
    }
    Some(Resolved {
        named: n.clone(),
        canonical,
        is_dir: meta.is_dir(),
        ids,
    })
}

/// Ids of the files under `dir`, recursively; a symlinked file counts as its target (a dump
/// folder of links to shards elsewhere), a symlinked folder is not entered (no loops).
fn collect_ids(dir: &Path, ids: &mut HashMap<FileId, PathBuf>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if ids.len() >= MAX_FILES_PER_INPUT {
                return;
            }
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
                continue;
            }
            let meta = if t.is_symlink() {
                std::fs::metadata(e.path())
            } else {
                e.metadata()
            };
            if let Some(id) = meta.ok().filter(|m| m.is_file()).as_ref().and_then(file_id) {
                ids.insert(id, e.path());
            }
        }
    }
}

/// Where an output will land: its canonical path (resolved through the nearest
/// existing folder when it does not exist yet), and its id when it exists.
struct Destination {
    canonical: PathBuf,
    id: Option<FileId>,
}

fn refuse(out: &Named, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "refusing to write {} {}: {why}",
        out.what,
        out.path.display()
    ))
}

/// Checks that `out` can be written as a `kind` and resolves it.
fn check_destination(out: &Named, kind: Kind) -> Result<Destination> {
    let path = &out.path;
    if let Ok(meta) = std::fs::metadata(path) {
        match kind {
            Kind::File if meta.is_dir() => {
                return Err(refuse(out, "it is a folder; a file name is expected"))
            }
            Kind::Dir if !meta.is_dir() => {
                return Err(refuse(out, "it is a file; a folder is expected"))
            }
            _ => {}
        }
        let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        // A file is renamed into place beside the name given (a symlink is replaced, not
        // followed); a folder's files are written inside it.
        let writable_dir = match kind {
            Kind::File => std::path::absolute(path)
                .map_err(|e| Error::io(path, e))?
                .parent()
                .map(Path::to_path_buf),
            Kind::Dir => Some(canonical.clone()),
        };
        if let Some(d) = writable_dir {
            check_writable(out, &d)?;
        }
        return Ok(Destination {
            canonical,
            id: file_id(&meta),
        });
    }
    // Not there yet: a file needs its folder; a folder is created below its nearest
    // existing ancestor.
    let absolute = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    let parent = absolute.parent().unwrap_or(Path::new("/"));
    let (base, rest) = match kind {
        Kind::File => {
            let meta = std::fs::metadata(parent).map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::NotFound {
                    "does not exist".to_string()
                } else {
                    e.to_string()
                };
                refuse(out, format!("its folder {} {why}", parent.display()))
            })?;
            if !meta.is_dir() {
                return Err(refuse(out, format!("{} is not a folder", parent.display())));
            }
            (
                parent.to_path_buf(),
                vec![absolute.file_name().unwrap_or_default().to_os_string()],
            )
        }
        Kind::Dir => {
            let mut base = absolute.clone();
            let mut rest = Vec::new();
            while std::fs::symlink_metadata(&base).is_err() {
                match (base.file_name(), base.parent()) {
                    (Some(n), Some(p)) => {
                        rest.push(n.to_os_string());
                        base = p.to_path_buf();
                    }
                    _ => break,
                }
            }
            rest.reverse();
            if !base.is_dir() {
                return Err(refuse(out, format!("{} is not a folder", base.display())));
            }
            (base, rest)
        }
    };
    let mut canonical = std::fs::canonicalize(&base).map_err(|e| Error::io(&base, e))?;
    check_writable(out, &canonical)?;
    for c in rest {
        canonical.push(c);
    }
    Ok(Destination {
        canonical: normalize(&canonical),
        id: None,
    })
}

/// Drops `.` and resolves `..` lexically (used only on the not-yet-existing tail).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Creates and removes a probe file in `dir`: the only check that sees read-only
/// mounts, ACLs and quotas the way the real write will.
fn check_writable(out: &Named, dir: &Path) -> Result<()> {
    let probe = crate::io::atomic::scratch_path(&dir.join("write-probe"), "probe");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(refuse(
            out,
            format!("the folder {} is not writable: {e}", dir.display()),
        )),
    }
}

/// Refuses `out` when it would write over or into input `inp`.
fn check_pair(out: &Named, kind: Kind, dest: &Destination, inp: &Resolved) -> Result<()> {
    let input = format!("the input {} {}", inp.named.what, inp.named.path.display());
    let same_file = dest
        .id
        .and_then(|id| inp.ids.get(&id))
        .map(|p| p.to_path_buf());
    if let Some(p) = same_file {
        let how = if p == inp.canonical {
            format!("it is {input} (the same file)")
        } else {
            format!(
                "it is the file {} of {input} (the same file through a link)",
                p.display()
            )
        };
        return Err(refuse(out, format!("{how}; choose another output path")));
    }
    let c = &dest.canonical;
    if *c == inp.canonical {
        return Err(refuse(
            out,
            format!("it is {input}; choose another output path"),
        ));
    }
    if inp.is_dir && c.starts_with(&inp.canonical) {
        return Err(refuse(
            out,
            format!("it lies inside {input}; choose a path outside it"),
        ));
    }
    if kind == Kind::Dir && inp.canonical.starts_with(c) {
        return Err(refuse(
            out,
            format!("the folder contains {input}; choose a folder that holds no input"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("dump");
        std::fs::create_dir(&dump).unwrap();
        std::fs::write(dump.join("a.safetensors"), b"x").unwrap();
        let file = dir.path().join("acts.npy");
        std::fs::write(&file, b"y").unwrap();
        (dir, dump, file)
    }

    fn err(g: PathGuard) -> String {
        g.check().unwrap_err().to_string()
    }

    #[test]
    fn output_onto_an_input_file_is_refused_naming_both() {
        let (_d, _dump, file) = setup();
        let e = err(PathGuard::new()
            .input("--acts", &file)
            .output_file("--out", &file));
        assert!(e.contains("--out") && e.contains("--acts"), "{e}");
        assert_eq!(e.matches(&*file.display().to_string()).count(), 2, "{e}");
        // A path that only spells it differently.
        let odd = file.parent().unwrap().join(".").join("acts.npy");
        assert!(PathGuard::new()
            .input("--acts", &file)
            .output_file("--out", &odd)
            .check()
            .is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_and_hard_links_to_inputs_are_refused() {
        let (d, dump, file) = setup();
        let sym = d.path().join("sym.npy");
        std::os::unix::fs::symlink(&file, &sym).unwrap();
        let e = err(PathGuard::new()
            .input("--acts", &file)
            .output_file("--out", &sym));
        assert!(e.contains("same file"), "{e}");
        let hard = d.path().join("hard.safetensors");
        std::fs::hard_link(dump.join("a.safetensors"), &hard).unwrap();
        let e = err(PathGuard::new()
            .input("--acts", &dump)
            .output_file("--out", &hard));
        assert!(e.contains("through a link"), "{e}");
        // A dump folder of symlinks to shards kept elsewhere: the shards are inputs too.
        let links = d.path().join("links");
        std::fs::create_dir(&links).unwrap();
        std::os::unix::fs::symlink(&file, links.join("s0.npy")).unwrap();
        let e = err(PathGuard::new()
            .input("--acts", &links)
            .output_file("--out", &file));
        assert!(e.contains("through a link"), "{e}");
        // A symlinked folder leading into the dump, with a file that does not exist yet.
        let link_dir = d.path().join("linkdir");
        std::os::unix::fs::symlink(&dump, &link_dir).unwrap();
        let e = err(PathGuard::new()
            .input("--acts", &dump)
            .output_file("--out", &link_dir.join("new.safetensors")));
        assert!(e.contains("inside"), "{e}");
    }

    #[test]
    fn output_folders_must_not_be_in_or_hold_inputs() {
        let (d, dump, file) = setup();
        for out in [
            dump.clone(),
            dump.join("sub/deeper"),
            d.path().to_path_buf(),
        ] {
            let g = PathGuard::new()
                .input("INPUT", &dump)
                .output_dir("--out", &out);
            assert!(g.check().is_err(), "{}", out.display());
        }
        let e = err(PathGuard::new()
            .input("--base", &file)
            .output_dir("--out-dir", d.path()));
        assert!(e.contains("contains"), "{e}");
        let ok = d.path().join("reports/new");
        PathGuard::new()
            .input("INPUT", &dump)
            .output_dir("--out", &ok)
            .check()
            .unwrap();
        // Missing inputs are left to their reader.
        PathGuard::new()
            .input("--acts", &d.path().join("missing"))
            .output_file("--out", &d.path().join("out.safetensors"))
            .check()
            .unwrap();
    }

    #[test]
    fn destinations_are_checked_up_front() {
        let (d, dump, file) = setup();
        let e = err(PathGuard::new().output_file("--out", &d.path().join("nope/x.safetensors")));
        assert!(e.contains("does not exist"), "{e}");
        let e = err(PathGuard::new().output_file("--out", &dump));
        assert!(e.contains("is a folder"), "{e}");
        let e = err(PathGuard::new().output_dir("--out-dir", &file));
        assert!(e.contains("is a file"), "{e}");
        let e = err(PathGuard::new().output_file("--out", &file.join("x")));
        assert!(e.contains("not a folder"), "{e}");
        // The probe leaves nothing behind.
        PathGuard::new()
            .output_file("--out", &d.path().join("new.bin"))
            .check()
            .unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn read_only_folders_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (d, _dump, _file) = setup();
        let ro = d.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // root writes through permission bits; /sys refuses it as well.
        let dir = if is_root() {
            PathBuf::from("/sys")
        } else {
            ro.clone()
        };
        let r = PathGuard::new()
            .output_file("--out", &dir.join("x"))
            .check();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = r.unwrap_err().to_string();
        assert!(e.contains("not writable"), "{e}");
    }

    #[cfg(unix)]
    fn is_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
}

//! Atomic output: write to a temporary name beside the target, rename when complete,
//! so an interrupted run never leaves a half-written file under the real name.
//!
//! Temporary names record their owner: `.NAME.~sae.HOST.PID.START.TAG`, where HOST is
//! the host name (with the PID namespace, so containers sharing a file system are told
//! apart), PID the process id and START the process start time (field 22 of
//! `/proc/PID/stat`, which tells a live process from a later one that reused its pid).
//! The first temporary a process creates in a folder sweeps that folder: temporaries
//! of dead processes on this host are removed (left by a `kill -9` or a crash); those
//! of live processes and of other hosts (dumps live on shared cluster file systems)
//! are never touched.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// The marker between the target's name and the owner in a temporary name.
const MARK: &str = ".~sae.";

/// The process that owns a temporary file: host, process id and process start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Host name and PID namespace, reduced to `[A-Za-z0-9_-]` (no dots, so names parse).
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Process start time in clock ticks since boot (0 where the OS does not say).
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> &'static Owner {
        static ME: OnceLock<Owner> = OnceLock::new();
        ME.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                host: this_host(),
                pid,
                start: start_time(pid).unwrap_or(0),
            }
        })
    }
}

/// What is known about a process id on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// No such process.
    Gone,
    /// A process with this start time runs under the id.
    Running {
        /// Its start time in clock ticks since boot (a reused id has another).
        start: u64,
    },
    /// The OS cannot tell (no `/proc`): treated as alive.
    Unknown,
}

/// Whether a temporary of `owner` may be removed by `me`: only on the same host, and
/// only when its process is gone or the id now belongs to a later process (another
/// start time). A live owner, another host, or an OS that cannot tell: never.
pub fn is_stale(owner: &Owner, me: &Owner, state: ProcState) -> bool {
    if owner.host != me.host {
        return false;
    }
    match state {
        ProcState::Gone => true,
        ProcState::Running { start } => start != owner.start,
        ProcState::Unknown => false,
    }
}

/// The state of process `pid` on this host (Linux: `/proc/PID/stat`).
pub fn proc_state(pid: u32) -> ProcState {
    if !Path::new("/proc/self/stat").exists() {
        return ProcState::Unknown;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => match parse_start_time(&text) {
            Some(start) => ProcState::Running { start },
            None => ProcState::Unknown,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProcState::Gone,
        Err(_) => ProcState::Unknown,
    }
}

/// Field 22 (starttime) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses, so fields are counted after the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the `)`: field 3 (state) is the first; starttime is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn start_time(pid: u32) -> Option<u64> {
    match proc_state(pid) {
        ProcState::Running { start } => Some(start),
        _ => None,
    }
}

/// Host name plus PID namespace (Linux), reduced to characters that need no escaping.
fn this_host() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let name = read("/proc/sys/kernel/hostname")
        .or_else(|| read("/etc/hostname"))
        .or_else(crate::env::host_name)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into());
    // Processes in another PID namespace (a container on the same host name) cannot be
    // checked from here, so they count as another host.
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|l| l.to_string_lossy().into_owned());
    let full = match ns {
        Some(ns) => format!("{name}-{ns}"),
        None => name,
    };
    full.chars()
        .filter_map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => Some(c),
            '.' | ':' => Some('_'),
            _ => None,
        })
        .collect()
}

/// A temporary file name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchName {
    /// The file name of the target the temporary is for.
    pub target: String,
    /// Who wrote it.
    pub owner: Owner,
    /// What it is (`tmp`, `indices.spill`, ...).
    pub tag: String,
}

/// Parses a name made by [`scratch_path`]; None for any other name.
pub fn parse_scratch_name(file_name: &str) -> Option<ScratchName> {
    let body = file_name.strip_prefix('.')?;
    let at = body.rfind(MARK)?;
    let target = &body[..at];
    let mut parts = body[at + MARK.len()..].splitn(4, '.');
    let host = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let tag = parts.next()?;
    if target.is_empty() || host.is_empty() || tag.is_empty() {
        return None;
    }
    Some(ScratchName {
        target: target.to_string(),
        owner: Owner {
            host: host.to_string(),
            pid,
            start,
        },
        tag: tag.to_string(),
    })
}

/// Removes the temporaries of dead processes of this host from `dir` (see the module
/// doc); returns the files removed. Errors (a folder that cannot be listed, a file
/// another process removed first) are ignored: the sweep is a courtesy.
pub fn sweep_stale(dir: &Path) -> Vec<PathBuf> {
    let me = Owner::current();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(s) = name.to_str().and_then(parse_scratch_name) else {
            continue;
        };
        let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && is_stale(&s.owner, me, proc_state(s.owner.pid)) {
            let p = e.path();
            if std::fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        }
    }
    removed
}

/// [`sweep_stale`] once per folder and process.
fn sweep_once(dir: &Path) {
    static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let first = {
        let mut g = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(HashSet::new).insert(key)
    };
    if first {
        sweep_stale(dir);
    }
}

/// The folder `path` is in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary path used while writing `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    scratch_path(path, "tmp")
}

/// A hidden scratch name beside `path` owned by this process
/// (`.NAME.~sae.HOST.PID.START.TAG`): temporary outputs and spill files live in the
/// target's folder, so the final rename never crosses file systems. The first call for
/// a folder removes the temporaries dead processes of this host left there.
pub fn scratch_path(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    sweep_once(parent_of(path));
    let o = Owner::current();
    path.with_file_name(format!(
        ".{name}{MARK}{}.{}.{}.{tag}",
        o.host, o.pid, o.start
    ))
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

    #[test]
    fn scratch_names_record_and_parse_their_owner() {
        let me = Owner::current();
        assert!(me.pid > 0 && !me.host.is_empty() && !me.host.contains('.'));
        if cfg!(target_os = "linux") {
            assert!(me.start > 0, "start time read from /proc/self/stat");
        }
        let p = scratch_path(Path::new("some/dir/codes.v2.safetensors"), "indices.spill");
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(p.parent().unwrap(), Path::new("some/dir"));
        let s = parse_scratch_name(name).unwrap();
        assert_eq!(s.target, "codes.v2.safetensors");
        assert_eq!(&s.owner, me);
        assert_eq!(s.tag, "indices.spill");
        for other in [
            "codes.safetensors",
            ".codes.safetensors.123.tmp",
            ".x.~sae.h.notapid.1.tmp",
            ".x.~sae.h.1.2",
            ".~sae.h.1.2.tmp",
        ] {
            assert_eq!(parse_scratch_name(other), None, "{other}");
        }
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let line = "4242 (a) b (c) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 \
                    987654 1000000 200 18446744073709551615";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time("12 (x) S 1 2"), None);
        assert_eq!(parse_start_time("no parenthesis"), None);
        let own = std::fs::read_to_string("/proc/self/stat");
        if let Ok(own) = own {
            assert_eq!(parse_start_time(&own), Some(Owner::current().start));
        }
    }

    #[test]
    fn only_dead_processes_of_this_host_are_stale() {
        let me = Owner {
            host: "node1-pid_4026531836_".into(),
            pid: 10,
            start: 500,
        };
        let theirs = |host: &str, start| Owner {
            host: host.into(),
            pid: 77,
            start,
        };
        let same = theirs(&me.host, 900);
        assert!(is_stale(&same, &me, ProcState::Gone));
        assert!(
            is_stale(&same, &me, ProcState::Running { start: 901 }),
            "pid reused"
        );
        assert!(
            !is_stale(&same, &me, ProcState::Running { start: 900 }),
            "still running"
        );
        assert!(!is_stale(&same, &me, ProcState::Unknown));
        let other = theirs("node2-pid_4026531836_", 900);
        assert!(!is_stale(&other, &me, ProcState::Gone), "another host's");
        // This very process is alive.
        let me_now = Owner::current();
        if cfg!(target_os = "linux") {
            assert_eq!(
                proc_state(me_now.pid),
                ProcState::Running {
                    start: me_now.start
                }
            );
            assert_eq!(proc_state(u32::MAX - 1), ProcState::Gone);
        }
    }

    #[test]
    fn sweep_removes_dead_temporaries_of_this_host_only() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let me = Owner::current();
        let name = |o: &Owner, tag: &str| {
            format!(
                ".codes.safetensors{MARK}{}.{}.{}.{tag}",
                o.host, o.pid, o.start
            )
        };
        let dead = Owner {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        let reused = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        let remote = Owner {
            host: "elsewhere".into(),
            pid: u32::MAX - 1,
            ..me.clone()
        };
        let files = [
            (name(&dead, "indices.spill"), false),
            (name(&dead, "tmp"), false),
            (name(&reused, "tmp"), false),
            (name(me, "tmp"), true),
            (name(&remote, "tmp"), true),
            ("codes.safetensors".to_string(), true),
            (".codes.safetensors.1234.tmp".to_string(), true),
        ];
        for (f, _) in &files {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let removed = sweep_stale(dir.path());
        assert_eq!(removed.len(), 3, "{removed:?}");
        for (f, kept) in &files {
            assert_eq!(dir.path().join(f).exists(), *kept, "{f}");
        }
    }
}

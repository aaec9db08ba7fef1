//! Provenance: what produced an output. One [`Provenance`] is built per command (tool
//! version, command, its inputs with their sizes and identities, the options that change
//! results) and serialized into everything the command writes: the `provenance` object of
//! its JSON (stdout and report files), a "Provenance" section of its markdown reports, and
//! a `provenance` metadata entry (compact JSON) of the statistics and codes files.
//!
//! An input's identity is the cheapest one that still pins its contents:
//! - an SAE: its fingerprint (the identity statistics and codes files already carry);
//! - a file or folder of at most [`HASH_LIMIT`] bytes: a SHA-256 of its contents (a
//!   folder: of each file's relative path, a NUL byte and its bytes, in path order), which
//!   `sha256sum` reproduces for a single file;
//! - anything larger (a dump of many GB): its size and last modification time, so that
//!   recording provenance never costs a second pass over the data.
//!
//! No creation time is recorded: the same inputs and options give byte-identical outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The version of sae-engine (the library, `sae` and `sae-bench`).
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Inputs up to this many bytes are identified by a SHA-256 of their contents; larger ones
/// by size and modification time.
pub const HASH_LIMIT: u64 = 64 << 20;

/// What produced an output: tool, command, inputs and result-changing options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Always "sae-engine".
    pub tool: String,
    /// [`TOOL_VERSION`] of the program that wrote the output.
    pub version: String,
    /// The command, e.g. "sae diff".
    pub command: String,
    /// The command line as given (absent for library callers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Every input read, in the order given.
    pub inputs: Vec<Input>,
    /// The options that change results (mask, order, precision, backend, batch size, ...).
    pub options: BTreeMap<String, serde_json::Value>,
}

/// One input of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// What the input is for: "sae", "acts", "base", "tuned", "codes", "tokenizer", ...
    pub role: String,
    /// The path as given on the command line (not UTF-8: lossily, as JSON needs).
    pub path: String,
    /// The absolute path it resolved to when read.
    pub resolved: String,
    /// Total size in bytes (a folder: of every file under it).
    pub bytes: u64,
    /// Files under a folder (absent for a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// How the contents are pinned.
    #[serde(flatten)]
    pub identity: Identity,
}

/// How an input's contents are pinned (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "identity", rename_all = "snake_case")]
pub enum Identity {
    /// SHA-256 of the contents (lowercase hex).
    Sha256 {
        /// The digest.
        sha256: String,
    },
    /// The SAE's fingerprint ([`crate::Sae::fingerprint`]).
    Fingerprint {
        /// The fingerprint.
        fingerprint: String,
    },
    /// Too large to hash: the newest modification time of its files (RFC 3339, UTC).
    SizeMtime {
        /// The newest modification time.
        modified: String,
    },
}

impl Provenance {
    /// A record for `command` with no inputs or options yet.
    pub fn new(command: impl Into<String>) -> Provenance {
        Provenance {
            tool: "sae-engine".into(),
            version: TOOL_VERSION.into(),
            command: command.into(),
            argv: None,
            inputs: Vec::new(),
            options: BTreeMap::new(),
        }
    }

    /// Records the command line.
    pub fn with_argv(mut self, argv: Vec<String>) -> Provenance {
        self.argv = Some(argv);
        self
    }

    /// Records this process's command line (arguments that are not UTF-8 lossily:
    /// `std::env::args` would panic on them).
    pub fn with_process_argv(self) -> Provenance {
        let argv = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.with_argv(argv)
    }

    /// Records an option that changes results (a later value for the same name replaces it).
    pub fn option(&mut self, name: &str, value: impl Serialize) -> &mut Provenance {
        let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.options.insert(name.to_string(), v);
        self
    }

    /// Records an input file or folder, identified by contents hash or size and mtime.
    pub fn input(&mut self, role: &str, path: &Path) -> Result<&mut Provenance> {
        let (resolved, bytes, files, identity) = describe(path, HASH_LIMIT)?;
        self.inputs.push(Input {
            role: role.into(),
            path: path.to_string_lossy().into_owned(),
            resolved: resolved.to_string_lossy().into_owned(),
            bytes,
            files,
            identity,
        });
        Ok(self)
    }

    /// Records each of `paths` under one role.
    pub fn inputs(&mut self, role: &str, paths: &[PathBuf]) -> Result<&mut Provenance> {
        for p in paths {
            self.input(role, p)?;
        }
        Ok(self)
    }

    /// Records an SAE input, identified by its fingerprint (no hash of the weights).
    pub fn sae(&mut self, path: &Path, fingerprint: &str) -> Result<&mut Provenance> {
        let (resolved, bytes, files, _) = sizes(path)?;
        self.inputs.push(Input {
            role: "sae".into(),
            path: path.to_string_lossy().into_owned(),
            resolved: resolved.to_string_lossy().into_owned(),
            bytes,
            files,
            identity: Identity::Fingerprint {
                fingerprint: fingerprint.to_string(),
            },
        });
        Ok(self)
    }

    /// The record as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// `value` with this record added as its `provenance` entry (objects only; any other
    /// value is wrapped as `{"result": value, "provenance": ...}`).
    pub fn attach(&self, value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(mut m) => {
                m.insert("provenance".into(), self.to_json());
                serde_json::Value::Object(m)
            }
            other => serde_json::json!({ "result": other, "provenance": self.to_json() }),
        }
    }

    /// The metadata entry of statistics and codes files: (`provenance`, compact JSON).
    pub fn metadata_entry(&self) -> (String, String) {
        (METADATA_KEY.to_string(), self.to_json().to_string())
    }

    /// Reads the record back from a file's string metadata, when it has one.
    pub fn from_metadata(
        meta: &std::collections::HashMap<String, String>,
    ) -> Option<Result<Provenance>> {
        meta.get(METADATA_KEY).map(|s| {
            serde_json::from_str(s)
                .map_err(|e| Error::invalid(format!("metadata `{METADATA_KEY}`: {e}")))
        })
    }

    /// A markdown "Provenance" section for the end of a report.
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from("## Provenance\n\n");
        let _ = writeln!(
            s,
            "Written by {} {} (`{}`).\n",
            self.tool, self.version, self.command
        );
        if let Some(argv) = &self.argv {
            let _ = writeln!(s, "Command line: `{}`\n", argv.join(" "));
        }
        if !self.inputs.is_empty() {
            let _ = writeln!(s, "| input | path | size | identity |");
            let _ = writeln!(s, "|---|---|---|---|");
            for i in &self.inputs {
                let files = i
                    .files
                    .map(|f| format!(" in {f} files"))
                    .unwrap_or_default();
                let id = match &i.identity {
                    Identity::Sha256 { sha256 } => format!("sha256 `{sha256}`"),
                    Identity::Fingerprint { fingerprint } => {
                        format!("SAE fingerprint `{fingerprint}`")
                    }
                    Identity::SizeMtime { modified } => format!("modified {modified}"),
                };
                let _ = writeln!(
                    s,
                    "| {} | `{}` | {}{files} | {id} |",
                    i.role,
                    i.resolved,
                    human_bytes(i.bytes)
                );
            }
            s.push('\n');
        }
        if !self.options.is_empty() {
            let opts: Vec<String> = self
                .options
                .iter()
                .map(|(k, v)| format!("`{k}` = `{v}`"))
                .collect();
            let _ = writeln!(s, "Options: {}.\n", opts.join(", "));
        }
        s
    }
}

/// The metadata key of statistics and codes files.
pub const METADATA_KEY: &str = "provenance";

/// 1536 -> "1.5 KiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The regular files under `path` (itself when a file), sorted, with their sizes.
fn walk(path: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(vec![(path.to_path_buf(), meta)]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            let p = e.path();
            // Links to folders are not followed (a loop would never end); links to files are.
            let ft = e.file_type().map_err(|e| Error::io(&p, e))?;
            if ft.is_dir() {
                stack.push(p);
            } else if let Ok(m) = std::fs::metadata(&p) {
                if m.is_file() {
                    out.push((p, m));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

type Sizes = (PathBuf, u64, Option<u64>, Vec<(PathBuf, std::fs::Metadata)>);

fn sizes(path: &Path) -> Result<Sizes> {
    let resolved = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let files = walk(&resolved)?;
    let bytes = files.iter().map(|(_, m)| m.len()).sum();
    let count = resolved.is_dir().then_some(files.len() as u64);
    Ok((resolved, bytes, count, files))
}

fn describe(path: &Path, hash_limit: u64) -> Result<(PathBuf, u64, Option<u64>, Identity)> {
    let (resolved, bytes, count, files) = sizes(path)?;
    let identity = if bytes <= hash_limit {
        let mut h = Sha256::new();
        for (p, _) in &files {
            if count.is_some() {
                // A folder: each file's relative path and a NUL before its bytes.
                let rel = p.strip_prefix(&resolved).unwrap_or(p);
                h.update(rel.to_string_lossy().as_bytes());
                h.update([0u8]);
            }
            let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
            std::io::copy(&mut f, &mut h).map_err(|e| Error::io(p, e))?;
        }
        Identity::Sha256 {
            sha256: format!("{:x}", h.finalize()),
        }
    } else {
        let newest = files
            .iter()
            .filter_map(|(_, m)| m.modified().ok())
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Identity::SizeMtime {
            modified: humantime::format_rfc3339_seconds(newest).to_string(),
        }
    };
    Ok((resolved, bytes, count, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_file_is_hashed_like_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.bin");
        std::fs::write(&f, b"abc").unwrap();
        let mut p = Provenance::new("sae test");
        p.input("acts", &f).unwrap();
        let i = &p.inputs[0];
        assert_eq!(i.bytes, 3);
        assert_eq!(i.files, None);
        // The well-known SHA-256 of "abc".
        assert_eq!(
            i.identity,
            Identity::Sha256 {
                sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()
            }
        );
    }

    #[test]
    fn folder_hash_covers_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("dump");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("a"), b"1").unwrap();
        std::fs::write(d.join("b"), b"2").unwrap();
        let id = |p: &Path| {
            let mut pr = Provenance::new("t");
            pr.input("acts", p).unwrap();
            pr.inputs.remove(0)
        };
        let first = id(&d);
        assert_eq!((first.bytes, first.files), (2, Some(2)));
        std::fs::rename(d.join("b"), d.join("c")).unwrap();
        assert_ne!(
            id(&d).identity,
            first.identity,
            "a renamed shard must change it"
        );
        std::fs::rename(d.join("c"), d.join("b")).unwrap();
        assert_eq!(id(&d).identity, first.identity);
        std::fs::write(d.join("b"), b"3").unwrap();
        assert_ne!(
            id(&d).identity,
            first.identity,
            "changed contents must change it"
        );
    }

    #[test]
    fn large_input_is_pinned_by_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        std::fs::write(&f, [7u8; 100]).unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let (_, bytes, _, id) = describe(&f, 99).unwrap();
        assert_eq!(bytes, 100);
        assert_eq!(
            id,
            Identity::SizeMtime {
                modified: "2023-11-14T22:13:20Z".into()
            }
        );
        assert!(matches!(
            describe(&f, 100).unwrap().3,
            Identity::Sha256 { .. }
        ));
    }

    #[test]
    fn round_trips_through_metadata_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"x").unwrap();
        let mut p = Provenance::new("sae stats").with_argv(vec!["sae".into(), "stats".into()]);
        p.option("mask", true).option("batch_size", 4096);
        p.input("acts", &f).unwrap();
        p.sae(&f, "abcd").unwrap();
        let (k, v) = p.metadata_entry();
        let meta = std::collections::HashMap::from([(k, v)]);
        assert_eq!(Provenance::from_metadata(&meta).unwrap().unwrap(), p);
        let j = p.attach(serde_json::json!({"n": 1}));
        assert_eq!(j["n"], 1);
        assert_eq!(j["provenance"]["inputs"][1]["identity"], "fingerprint");
        assert_eq!(j["provenance"]["inputs"][1]["fingerprint"], "abcd");
        assert_eq!(j["provenance"]["options"]["mask"], true);
        let md = p.markdown();
        assert!(
            md.contains("## Provenance") && md.contains("`mask` = `true`"),
            "{md}"
        );
        assert!(md.contains("SAE fingerprint `abcd`"), "{md}");
    }

    #[test]
    fn missing_input_is_an_error_naming_it() {
        let mut p = Provenance::new("t");
        let e = p.input("acts", Path::new("/nonexistent/x")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x"), "{e}");
    }
}

//! One error type for the whole engine. Every variant names the file (or the
//! argument) it is about and what was expected, so a CLI can print it as a
//! single line.

use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read, mapped or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not in the expected format (bad header, bad JSON, truncated data).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A required tensor, file or configuration key is absent.
    #[error("{}: missing {what}", path.display())]
    Missing { path: PathBuf, what: String },
    /// A tensor has a shape that does not fit the others or the configuration.
    #[error("{}: tensor `{tensor}` has shape {got:?}, expected {expected}", path.display())]
    Shape {
        path: PathBuf,
        tensor: String,
        got: Vec<usize>,
        expected: String,
    },
    /// A tensor has a dtype this engine does not accept there.
    #[error("{}: tensor `{tensor}` has dtype {got}, expected {expected}", path.display())]
    DType {
        path: PathBuf,
        tensor: String,
        got: String,
        expected: String,
    },
    /// The activations' width does not match the SAE's d_in.
    #[error("{}: activations have width {got}, but the SAE expects d_in = {expected}", path.display())]
    WidthMismatch {
        path: PathBuf,
        got: usize,
        expected: usize,
    },
    /// A NaN or infinity in an input row (reported with the row, never dropped).
    #[error("{context}: non-finite value (NaN or inf) in input row {row}")]
    NonFinite { context: String, row: u64 },
    /// A caller passed an argument outside what is accepted (k > latents, bad shard spec, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Two artifacts that must come from the same SAE or dump do not (statistics merge, diff pairing).
    #[error("{0}")]
    Incompatible(String),
    /// A requested backend cannot run here (no driver, no cuBLAS, no kernels).
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    /// A CUDA driver, cuBLAS or kernel call failed.
    #[error("CUDA: {0}")]
    Cuda(String),
}

impl Error {
    /// An I/O error about `path`. A symlink loop is named as one: the system's own
    /// text ("Too many levels of symbolic links") does not say what to fix.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        let source = if is_symlink_loop(&source) {
            std::io::Error::new(
                source.kind(),
                "symlink loop: a symbolic link on this path leads back to itself",
            )
        } else {
            source
        };
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A format error about `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// A missing tensor / key / file inside `path`.
    pub fn missing(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Missing {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
        }
    }

    /// A shape error about tensor `tensor` of `path`.
    pub fn shape(
        path: impl AsRef<Path>,
        tensor: impl Into<String>,
        got: &[usize],
        expected: impl Into<String>,
    ) -> Self {
        Error::Shape {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.into(),
            got: got.to_vec(),
            expected: expected.into(),
        }
    }

    /// A dtype error about tensor `tensor` of `path`.
    pub fn dtype(
        path: impl AsRef<Path>,
        tensor: impl Into<String>,
        got: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Error::DType {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.into(),
            got: got.into(),
            expected: expected.into(),
        }
    }

    /// An invalid argument.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

/// ELOOP: too many symbolic links met while resolving a path (std's
/// `ErrorKind::FilesystemLoop` is not stable yet).
fn is_symlink_loop(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    const ELOOP: Option<i32> = Some(40);
    #[cfg(all(unix, not(target_os = "linux")))]
    const ELOOP: Option<i32> = Some(62); // macOS and the BSDs
    #[cfg(not(unix))]
    const ELOOP: Option<i32> = None;
    e.raw_os_error().is_some() && e.raw_os_error() == ELOOP
}

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
        /// The file.
        path: PathBuf,
        #[source]
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file exists but its content is not in the expected format (bad header, bad JSON, truncated data).
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A required tensor, file or configuration key is absent.
    #[error("{}: missing {what}", path.display())]
    Missing {
        /// The file or folder it was looked for in.
        path: PathBuf,
        /// What is absent (a tensor, a file, a config key).
        what: String,
    },
    /// A tensor has a shape that does not fit the others or the configuration.
    #[error("{}: tensor `{tensor}` has shape {got:?}, expected {expected}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its shape.
        got: Vec<usize>,
        /// The shape that fits, in words.
        expected: String,
    },
    /// A tensor has a dtype this engine does not accept there.
    #[error("{}: tensor `{tensor}` has dtype {got}, expected {expected}", path.display())]
    DType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        got: String,
        /// The dtypes accepted there.
        expected: String,
    },
    /// The activations' width does not match the SAE's d_in.
    #[error("{}: activations have width {got}, but the SAE expects d_in = {expected}", path.display())]
    WidthMismatch {
        /// The activations' file.
        path: PathBuf,
        /// Their width.
        got: usize,
        /// The SAE's d_in.
        expected: usize,
    },
    /// A NaN or infinity in an input row (reported with the row, never dropped).
    #[error("{context}: non-finite value (NaN or inf) in input row {row}")]
    NonFinite {
        /// Where the rows came from (a file or an argument name).
        context: String,
        /// The row, counted from 0 over the input.
        row: u64,
    },
    /// A NaN or infinite pre-activation computed from a finite input row: the SAE's
    /// encoder (W_enc row or b_enc entry of that latent) is at fault, not the input.
    /// `input` names where the row came from (" of acts.npy"), empty when unknown.
    #[error(
        "{}: latent {latent} gives a non-finite pre-activation ({value}) on the finite input \
         row {row}{input}: the SAE's W_enc row {latent} or b_enc[{latent}] holds a NaN or \
         infinity, or the product overflows f32",
        sae.display()
    )]
    SaeNonFinite {
        /// The SAE's file.
        sae: PathBuf,
        /// The latent.
        latent: usize,
        /// The pre-activation computed.
        value: f32,
        /// The input row.
        row: u64,
        /// Where the row came from (" of acts.npy"), empty when unknown.
        input: String,
    },
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

/// Exit statuses of `sae` and `sae-bench`, the same for both (README, "Exit status").
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any error (bad input, failed check, I/O), one line on stderr naming the file.
    pub const ERROR: u8 = 1;
    /// A usage error: unknown flag, missing or malformed argument (clap's status).
    pub const USAGE: u8 = 2;
    /// No usable GPU: no CUDA driver or device, or the CUDA backend cannot run here.
    pub const NO_GPU: u8 = 3;
    /// Every status with its README name, in order.
    pub const ALL: [(u8, &str); 4] = [
        (OK, "ok"),
        (ERROR, "error"),
        (USAGE, "usage"),
        (NO_GPU, "no GPU"),
    ];

    /// The object printed on stdout for a failure under `--json`:
    /// `{"error": {"code": N, "kind": "...", "message": "..."}}`.
    pub fn error_json(code: u8, kind: &str, message: &str) -> serde_json::Value {
        serde_json::json!({ "error": { "code": code, "kind": kind, "message": message } })
    }
}

impl Error {
    /// The variant's name in snake case, as the `kind` of a `--json` error object.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Format { .. } => "format",
            Error::Missing { .. } => "missing",
            Error::Shape { .. } => "shape",
            Error::DType { .. } => "dtype",
            Error::WidthMismatch { .. } => "width_mismatch",
            Error::NonFinite { .. } => "non_finite",
            Error::SaeNonFinite { .. } => "sae_non_finite",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Incompatible(_) => "incompatible",
            Error::BackendUnavailable(_) => "backend_unavailable",
            Error::Cuda(_) => "cuda",
        }
    }

    /// The process exit status for this error: [`exit::NO_GPU`] when the GPU backend
    /// cannot run here, else [`exit::ERROR`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BackendUnavailable(_) => exit::NO_GPU,
            _ => exit::ERROR,
        }
    }

    /// The error as one line (nested messages may carry newlines).
    pub fn one_line(&self) -> String {
        self.to_string().replace('\n', " ")
    }

    /// The `--json` error object of this error (see [`exit::error_json`]).
    pub fn to_json(&self) -> serde_json::Value {
        exit::error_json(self.exit_code(), self.kind(), &self.one_line())
    }

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

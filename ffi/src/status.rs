//! Numeric status codes. Values are part of the ABI: never renumber, only append.

use std::ffi::c_char;

use sae_engine::Error;

/// Result of every fallible call. `SAE_STATUS_OK` (0) is success; any other value
/// leaves a message for `sae_last_error_message` on the calling thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaeStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument is outside what is accepted (bad string, k mismatch, size overflow, bad codes).
    InvalidArgument = 2,
    /// A file could not be opened, read or written.
    Io = 3,
    /// A file is not in the expected format, or lacks a tensor or key, or has the wrong dtype.
    Format = 4,
    /// A tensor or buffer has the wrong shape (e.g. `d` differs from the SAE's d_in).
    Shape = 5,
    /// NaN or infinity in an input row.
    NonFinite = 6,
    /// Two artifacts that must match do not (statistics of different SAEs).
    Incompatible = 7,
    /// The requested backend cannot run here (no CUDA driver, ...).
    BackendUnavailable = 8,
    /// A CUDA call failed.
    Cuda = 9,
    /// A Rust panic was caught at the ABI boundary (a bug: please report it).
    Panic = 10,
    /// The operation is not available for this handle (device pointers on the CPU backend,
    /// top-k entry points on a threshold SAE).
    Unsupported = 11,
    /// An output buffer is too small; the call reported the size it needs.
    BufferTooSmall = 12,
}

impl SaeStatus {
    /// Every status, in numeric order (for `sae_status_string` and tests).
    /// A function, not an associated const, so cbindgen does not export it as a macro.
    pub fn all() -> [SaeStatus; 13] {
        [
            SaeStatus::Ok,
            SaeStatus::NullArgument,
            SaeStatus::InvalidArgument,
            SaeStatus::Io,
            SaeStatus::Format,
            SaeStatus::Shape,
            SaeStatus::NonFinite,
            SaeStatus::Incompatible,
            SaeStatus::BackendUnavailable,
            SaeStatus::Cuda,
            SaeStatus::Panic,
            SaeStatus::Unsupported,
            SaeStatus::BufferTooSmall,
        ]
    }

    /// The C enumerator name, NUL-terminated so it can be handed out as a `const char *`.
    pub fn name_cstr(self) -> &'static [u8] {
        match self {
            SaeStatus::Ok => b"SAE_STATUS_OK\0",
            SaeStatus::NullArgument => b"SAE_STATUS_NULL_ARGUMENT\0",
            SaeStatus::InvalidArgument => b"SAE_STATUS_INVALID_ARGUMENT\0",
            SaeStatus::Io => b"SAE_STATUS_IO\0",
            SaeStatus::Format => b"SAE_STATUS_FORMAT\0",
            SaeStatus::Shape => b"SAE_STATUS_SHAPE\0",
            SaeStatus::NonFinite => b"SAE_STATUS_NON_FINITE\0",
            SaeStatus::Incompatible => b"SAE_STATUS_INCOMPATIBLE\0",
            SaeStatus::BackendUnavailable => b"SAE_STATUS_BACKEND_UNAVAILABLE\0",
            SaeStatus::Cuda => b"SAE_STATUS_CUDA\0",
            SaeStatus::Panic => b"SAE_STATUS_PANIC\0",
            SaeStatus::Unsupported => b"SAE_STATUS_UNSUPPORTED\0",
            SaeStatus::BufferTooSmall => b"SAE_STATUS_BUFFER_TOO_SMALL\0",
        }
    }

    /// The status of a library error.
    pub fn of(e: &Error) -> SaeStatus {
        match e {
            Error::Io { .. } => SaeStatus::Io,
            Error::Format { .. } | Error::Missing { .. } | Error::DType { .. } => SaeStatus::Format,
            Error::Shape { .. } | Error::WidthMismatch { .. } => SaeStatus::Shape,
            Error::NonFinite { .. } | Error::SaeNonFinite { .. } => SaeStatus::NonFinite,
            Error::InvalidArgument(_) => SaeStatus::InvalidArgument,
            Error::Incompatible(_) => SaeStatus::Incompatible,
            Error::BackendUnavailable(_) => SaeStatus::BackendUnavailable,
            Error::Cuda(_) => SaeStatus::Cuda,
        }
    }
}

/// The enumerator name of a status code ("SAE_STATUS_SHAPE"), or "SAE_STATUS_UNKNOWN"
/// for a value this library does not define. The string is static; never free it.
/// Takes a plain integer so that any value a caller holds is safe to pass.
#[no_mangle]
pub extern "C" fn sae_status_string(code: i32) -> *const c_char {
    let name: &'static [u8] = SaeStatus::all()
        .iter()
        .find(|s| **s as i32 == code)
        .map(|s| s.name_cstr())
        .unwrap_or(b"SAE_STATUS_UNKNOWN\0");
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_named() {
        for (i, s) in SaeStatus::all().iter().enumerate() {
            assert_eq!(*s as usize, i);
            let name = s.name_cstr();
            assert_eq!(name.last(), Some(&0));
            assert!(name.starts_with(b"SAE_STATUS_"));
        }
        // SAFETY: sae_status_string returns a pointer to a static NUL-terminated name.
        let unknown = unsafe { std::ffi::CStr::from_ptr(sae_status_string(999)) };
        assert_eq!(unknown.to_str().unwrap(), "SAE_STATUS_UNKNOWN");
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(
            SaeStatus::of(&Error::NonFinite {
                context: "x".into(),
                row: 3
            }),
            SaeStatus::NonFinite
        );
        assert_eq!(
            SaeStatus::of(&Error::missing("/a", "W_enc")),
            SaeStatus::Format
        );
        assert_eq!(
            SaeStatus::of(&Error::BackendUnavailable("no".into())),
            SaeStatus::BackendUnavailable
        );
    }
}

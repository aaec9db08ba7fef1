//! The ABI boundary: every export runs its body through [`run`], which turns errors
//! and panics into a status code plus a thread-local message, so nothing unwinds
//! into C and every failure can be explained.

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use sae_engine::Error;

use crate::status::SaeStatus;

/// A failed call: its status and the message callers read back.
#[derive(Debug)]
pub struct Failure {
    /// The status code the export returns.
    pub status: SaeStatus,
    /// The text `sae_last_error_message` hands back (prefixed with the export's name).
    pub message: String,
}

impl Failure {
    /// A failure with this status and message.
    pub fn new(status: SaeStatus, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
    /// A NULL pointer where argument `arg` must not be NULL.
    pub fn null(arg: &str) -> Self {
        Failure::new(SaeStatus::NullArgument, format!("argument `{arg}` is NULL"))
    }
    /// An argument with a value the call cannot accept.
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(SaeStatus::InvalidArgument, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::new(SaeStatus::of(&e), e.to_string())
    }
}

/// What an export's body returns: a value or the failure [`run`] reports.
pub type FfiResult<T = ()> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(msg: String) {
    LAST_ERROR.with(|m| *m.borrow_mut() = msg);
}

/// Runs `body` behind a panic boundary. Success clears the thread's last error so a
/// stale message is never mistaken for the current one.
pub fn run(name: &str, body: impl FnOnce() -> FfiResult) -> SaeStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error(String::new());
            SaeStatus::Ok
        }
        Ok(Err(f)) => {
            set_last_error(format!("{name}: {}", f.message));
            f.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            set_last_error(format!("{name}: internal panic (a bug): {what}"));
            SaeStatus::Panic
        }
    }
}

/// Like [`run`] for getters that cannot report a status: a panic or failure yields `fallback`.
pub fn run_value<T>(fallback: T, body: impl FnOnce() -> Option<T>) -> T {
    catch_unwind(AssertUnwindSafe(body))
        .ok()
        .flatten()
        .unwrap_or(fallback)
}

/// Copies `s` into a caller buffer of `len` bytes as a NUL-terminated string (truncated
/// to fit) and returns the buffer size needed for all of it, NUL included. NULL `buf`
/// or `len == 0` only reports the size (the two-call pattern).
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
pub unsafe fn copy_out_str(s: &str, buf: *mut c_char, len: usize) -> usize {
    let bytes = s.as_bytes();
    if !buf.is_null() && len > 0 {
        let n = bytes.len().min(len - 1);
        // SAFETY: `buf` is non-NULL, so by the contract it is writable for `len` bytes;
        // n < len, so bytes 0..n and the NUL at n are inside it, and a caller buffer
        // cannot overlap the Rust string `s`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    bytes.len() + 1
}

/// Copies the calling thread's last error message (empty after a success) into `buf`
/// (`len` bytes, NUL-terminated, truncated to fit). Returns the buffer size the whole
/// message needs, NUL included; pass `buf = NULL` or `len = 0` to ask for it first.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn sae_last_error_message(buf: *mut c_char, len: usize) -> usize {
    let msg = LAST_ERROR.with(|m| m.borrow().clone());
    // SAFETY: `buf` is NULL or writable for `len` bytes, the contract copy_out_str needs.
    run_value(0, || Some(unsafe { copy_out_str(&msg, buf, len) }))
}

/// A UTF-8 string argument; NULL is an error naming `arg`.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub unsafe fn str_arg<'a>(p: *const c_char, arg: &str) -> FfiResult<&'a str> {
    // SAFETY: `p` is NULL or NUL-terminated, as opt_str_arg requires.
    unsafe { opt_str_arg(p, arg) }?.ok_or_else(|| Failure::null(arg))
}

/// An optional UTF-8 string argument (NULL is `None`).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub unsafe fn opt_str_arg<'a>(p: *const c_char, arg: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: `p` is not NULL (checked above), so by the contract it is NUL-terminated.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(Some)
        .map_err(|_| Failure::invalid(format!("argument `{arg}` is not valid UTF-8")))
}

/// `a * b` elements, or an error naming the product when it overflows (or its bytes would).
pub fn checked_len(a: usize, b: usize, what: &str) -> FfiResult<usize> {
    a.checked_mul(b)
        .filter(|n| {
            n.checked_mul(8)
                .is_some_and(|bytes| bytes <= isize::MAX as usize)
        })
        .ok_or_else(|| Failure::invalid(format!("{what}: {a} x {b} elements overflow")))
}

/// A read-only view of `len` elements at `p`. NULL is allowed only when `len == 0`
/// (empty numpy arrays and `malloc(0)` may give NULL).
///
/// # Safety
/// `p` is NULL or valid for reading `len` elements, aligned, for the returned lifetime.
pub unsafe fn in_slice<'a, T>(p: *const T, len: usize, arg: &str) -> FfiResult<&'a [T]> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Failure::null(arg))
        };
    }
    check_aligned(p, arg)?;
    // SAFETY: `p` is non-NULL (checked above) and aligned (checked above); the caller
    // guarantees it is readable for `len` elements for `'a`.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A writable view of `len` elements at `p`; same NULL rule as [`in_slice`].
///
/// # Safety
/// `p` is NULL or valid for writing `len` elements, aligned, not aliased by any input view.
pub unsafe fn out_slice<'a, T>(p: *mut T, len: usize, arg: &str) -> FfiResult<&'a mut [T]> {
    if p.is_null() {
        return if len == 0 {
            Ok(&mut [])
        } else {
            Err(Failure::null(arg))
        };
    }
    check_aligned(p, arg)?;
    // SAFETY: `p` is non-NULL and aligned (checked above); the caller guarantees it is
    // writable for `len` elements for `'a` and aliased by no other view.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// An optional view: NULL is `None` whatever `len` is.
///
/// # Safety
/// As [`in_slice`].
pub unsafe fn opt_in_slice<'a, T>(
    p: *const T,
    len: usize,
    arg: &str,
) -> FfiResult<Option<&'a [T]>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: the caller meets in_slice's contract (this fn's # Safety).
        unsafe { in_slice(p, len, arg) }.map(Some)
    }
}

/// An optional writable view: NULL is `None`.
///
/// # Safety
/// As [`out_slice`].
pub unsafe fn opt_out_slice<'a, T>(
    p: *mut T,
    len: usize,
    arg: &str,
) -> FfiResult<Option<&'a mut [T]>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: the caller meets out_slice's contract (this fn's # Safety).
        unsafe { out_slice(p, len, arg) }.map(Some)
    }
}

fn check_aligned<T>(p: *const T, arg: &str) -> FfiResult {
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::invalid(format!(
            "argument `{arg}` is not aligned to {} bytes",
            std::mem::align_of::<T>()
        )));
    }
    Ok(())
}

/// Writes `value` through an out-pointer that must not be NULL.
///
/// # Safety
/// `p` is NULL or valid for a write of `T`.
pub unsafe fn write_out<T>(p: *mut T, value: T, arg: &str) -> FfiResult {
    if p.is_null() {
        return Err(Failure::null(arg));
    }
    // SAFETY: `p` is not NULL (checked above), so by the contract it is valid for a write of `T`.
    unsafe { p.write(value) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_a_status_and_message() {
        let st = run("sae_test", || panic!("boom"));
        assert_eq!(st, SaeStatus::Panic);
        let mut buf = [0 as c_char; 64];
        // SAFETY: `buf` is a live local array of `buf.len()` bytes.
        let need = unsafe { sae_last_error_message(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: the call above NUL-terminated `buf` (len > 0).
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert!(msg.contains("sae_test") && msg.contains("boom"), "{msg}");
        assert_eq!(need, msg.len() + 1);
        assert_eq!(run("ok", || Ok(())), SaeStatus::Ok);
        assert_eq!(
            // SAFETY: a NULL buffer only asks for the size.
            unsafe { sae_last_error_message(std::ptr::null_mut(), 0) },
            1
        );
    }

    #[test]
    fn copy_out_truncates_and_reports_size() {
        let mut buf = [1 as c_char; 4];
        // SAFETY: `buf` is a live local array of `buf.len()` bytes.
        let need = unsafe { copy_out_str("abcdef", buf.as_mut_ptr(), buf.len()) };
        assert_eq!(need, 7);
        // SAFETY: copy_out_str NUL-terminated `buf` (len > 0).
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes(), b"abc");
    }

    #[test]
    fn sizes_and_nulls_are_checked() {
        assert!(checked_len(usize::MAX / 2, 3, "x").is_err());
        assert_eq!(checked_len(3, 4, "x").unwrap(), 12);
        // SAFETY: NULL is allowed; in_slice checks it before any read.
        assert!(unsafe { in_slice::<f32>(std::ptr::null(), 0, "x") }.is_ok());
        // SAFETY: as above: NULL is rejected without a read.
        let e = unsafe { in_slice::<f32>(std::ptr::null(), 1, "x") }.unwrap_err();
        assert_eq!(e.status, SaeStatus::NullArgument);
        let v = [0u32; 2];
        // SAFETY: byte 1 of the 8-byte array `v` is inside it.
        let odd = unsafe { (v.as_ptr() as *const u8).add(1) } as *const u32;
        // SAFETY: `odd` is misaligned, so in_slice returns the error before any read.
        assert!(unsafe { in_slice(odd, 1, "x") }.is_err());
    }
}

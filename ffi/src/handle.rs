//! Opening an SAE on a backend, and shape queries.

use std::ffi::c_char;
use std::sync::{Arc, Mutex, MutexGuard};

use sae_engine::{engine, BackendKind, Engine, EngineOptions, Format, Sae};

use crate::guard::{copy_out_str, opt_str_arg, run, run_value, str_arg, write_out, Failure};
use crate::status::SaeStatus;

/// An SAE bound to one backend. Opaque to C. A handle may be used from several
/// threads; calls on one handle run one at a time.
pub struct SaeHandle {
    pub(crate) sae: Arc<Sae>,
    // Engines are Send but not Sync: the mutex makes the handle shareable across threads.
    engine: Mutex<Box<dyn Engine>>,
    pub(crate) backend_name: String,
}

impl SaeHandle {
    pub(crate) fn new(sae: Arc<Sae>, engine: Box<dyn Engine>) -> Self {
        let backend_name = engine.name();
        SaeHandle {
            sae,
            engine: Mutex::new(engine),
            backend_name,
        }
    }

    /// The engine. A panic in an earlier call may have poisoned the lock; engines keep
    /// no state that a host call half-updates, so the engine stays usable.
    pub(crate) fn engine(&self) -> MutexGuard<'_, Box<dyn Engine>> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn check_width(&self, d: usize) -> Result<(), Failure> {
        if d != self.sae.d_in() {
            return Err(Failure::new(
                SaeStatus::Shape,
                format!(
                    "rows have width d = {d}, but the SAE expects d_in = {}",
                    self.sae.d_in()
                ),
            ));
        }
        Ok(())
    }

    /// Checks a top-k encode's row width `d` and output width `k` against the SAE;
    /// `not_topk` is the message for a threshold SAE (whose codes are CSR).
    pub(crate) fn check_topk_shape(
        &self,
        d: usize,
        k: usize,
        not_topk: &str,
    ) -> Result<(), Failure> {
        let sae_k = self
            .sae
            .k()
            .ok_or_else(|| Failure::new(SaeStatus::Unsupported, not_topk))?;
        self.check_width(d)?;
        if k != sae_k {
            return Err(Failure::new(
                SaeStatus::Shape,
                format!("output width k = {k}, but the SAE's k is {sae_k}"),
            ));
        }
        Ok(())
    }
}

/// A handle argument; NULL is an error.
///
/// # Safety
/// `h` is NULL or a live handle from `sae_open`.
pub(crate) unsafe fn handle_arg<'a>(h: *const SaeHandle) -> Result<&'a SaeHandle, Failure> {
    // SAFETY: `h` is NULL or a live handle from `sae_open` (the contract), so as_ref
    // yields None or a reference to a boxed handle that outlives this call.
    unsafe { h.as_ref() }.ok_or_else(|| Failure::null("handle"))
}

/// Loads the SAE at `path` and binds it to a backend. `path` may also be a name,
/// `hf:ORG/NAME/PATH[@REVISION]` or `saelens:RELEASE/SAE_ID`, resolved in the Hugging Face
/// cache and downloaded when absent, as the `sae` CLI does (HF_HUB_CACHE, HF_HOME,
/// HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN are read from the environment).
///
/// - `format`: NULL to auto-detect, or one of "saelens", "saelens-legacy", "sparsify",
///   "gemma-scope", "dictionary-learning", "openai".
/// - `backend`: NULL or "auto" (CUDA device `device` when usable, else CPU), "cpu",
///   "cuda" (device `device`) or "cuda:N".
/// - On success `*out_handle` owns the handle; release it with `sae_free`. On failure
///   `*out_handle` is set to NULL.
///
/// # Safety
/// `path`, `format`, `backend` are NULL or NUL-terminated strings; `out_handle` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sae_open(
    path: *const c_char,
    format: *const c_char,
    backend: *const c_char,
    device: usize,
    out_handle: *mut *mut SaeHandle,
) -> SaeStatus {
    run("sae_open", || {
        if out_handle.is_null() {
            return Err(Failure::null("out_handle"));
        }
        // SAFETY: `out_handle` is not NULL (checked above), so by the contract it is writable.
        unsafe { *out_handle = std::ptr::null_mut() };
        // SAFETY: `path` is NULL or NUL-terminated (the contract).
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: `format` is NULL or NUL-terminated (the contract).
        let format = match unsafe { opt_str_arg(format, "format") }? {
            None => None,
            Some(f) => Some(Format::parse(f).ok_or_else(|| {
                Failure::invalid(format!(
                    "unknown format `{f}`: expected saelens, saelens-legacy, sparsify, \
                     gemma-scope, dictionary-learning or openai"
                ))
            })?),
        };
        // SAFETY: `backend` is NULL or NUL-terminated (the contract).
        let backend = unsafe { opt_str_arg(backend, "backend") }?.unwrap_or("auto");
        // Parse before loading so a typo fails fast, not after mapping gigabytes.
        let kind = BackendKind::parse(backend, device)?;
        // A name (hf:..., saelens:...) resolves through the Hugging Face cache, as in the CLI.
        let hub = sae_engine::hub::HubOptions::from_env();
        let sae = Arc::new(sae_engine::hub::load(std::path::Path::new(path), format, &hub)?.0);
        let eng = open_engine(kind, device, sae.clone())?;
        // SAFETY: `out_handle` is NULL or writable (the contract).
        unsafe {
            write_out(
                out_handle,
                Box::into_raw(Box::new(SaeHandle::new(sae, eng))),
                "out_handle",
            )
        }
    })
}

/// Builds the engine. `auto` honors `device` (the library's `Auto` means device 0).
fn open_engine(
    kind: BackendKind,
    device: usize,
    sae: Arc<Sae>,
) -> Result<Box<dyn Engine>, Failure> {
    let opts = EngineOptions::default();
    if kind != BackendKind::Auto {
        return Ok(engine(kind, sae, &opts)?);
    }
    match engine(BackendKind::Cuda { device }, sae.clone(), &opts) {
        Ok(e) => Ok(e),
        Err(sae_engine::Error::BackendUnavailable(_)) => Ok(engine(BackendKind::Cpu, sae, &opts)?),
        Err(e) => Err(e.into()),
    }
}

/// Releases a handle from `sae_open`. NULL is ignored.
///
/// # Safety
/// `handle` is NULL or a live handle not used by any other thread and not freed before.
#[no_mangle]
pub unsafe extern "C" fn sae_free(handle: *mut SaeHandle) {
    if !handle.is_null() {
        // A panic in a destructor must not cross into C; there is nothing to report it to.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: a non-NULL `handle` came from Box::into_raw in `sae_open` and is
            // freed once, by no other thread in use (the contract).
            drop(unsafe { Box::from_raw(handle) });
        }));
    }
}

/// Input width d_in of the SAE; 0 for a NULL handle.
///
/// # Safety
/// `handle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn sae_d_in(handle: *const SaeHandle) -> usize {
    // SAFETY: the caller passes NULL or a live handle (# Safety above).
    run_value(0, || unsafe { handle.as_ref() }.map(|h| h.sae.d_in()))
}

/// Number of latents L; 0 for a NULL handle.
///
/// # Safety
/// `handle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn sae_n_latents(handle: *const SaeHandle) -> usize {
    // SAFETY: the caller passes NULL or a live handle (# Safety above).
    run_value(0, || unsafe { handle.as_ref() }.map(|h| h.sae.n_latents()))
}

/// k of a TopK SAE; 0 for threshold SAEs (ReLU, JumpReLU) and a NULL handle.
///
/// # Safety
/// `handle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn sae_k(handle: *const SaeHandle) -> usize {
    run_value(0, || {
        // SAFETY: the caller passes NULL or a live handle (# Safety above).
        unsafe { handle.as_ref() }.map(|h| h.sae.k().unwrap_or(0))
    })
}

/// Whether the SAE is TopK (fixed-width codes: use the `_topk` entry points);
/// false for threshold SAEs (CSR codes) and a NULL handle.
///
/// # Safety
/// `handle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn sae_is_topk(handle: *const SaeHandle) -> bool {
    run_value(false, || {
        // SAFETY: the caller passes NULL or a live handle (# Safety above).
        unsafe { handle.as_ref() }.map(|h| h.sae.activation.is_topk())
    })
}

/// Whether the SAE normalizes its input, so that decoding back to the input's scale
/// needs the per-row scale/shift that encoding reports.
///
/// # Safety
/// `handle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn sae_normalizes_input(handle: *const SaeHandle) -> bool {
    run_value(false, || {
        // SAFETY: the caller passes NULL or a live handle (# Safety above).
        unsafe { handle.as_ref() }.map(|h| h.sae.normalization != sae_engine::Normalization::None)
    })
}

/// Whether the handle's backend takes device pointers (`sae_*_device`): true on CUDA.
///
/// # Safety
/// `handle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn sae_has_device_pointers(handle: *const SaeHandle) -> bool {
    run_value(false, || {
        // SAFETY: the caller passes NULL or a live handle (# Safety above).
        unsafe { handle.as_ref() }.map(|h| h.engine().device_ptr().is_some())
    })
}

/// Copies the backend's name (e.g. "cpu") into `buf` like `sae_last_error_message`;
/// returns the size needed, NUL included (0 for a NULL handle).
///
/// # Safety
/// `handle` is NULL or a live handle; `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn sae_backend_name(
    handle: *const SaeHandle,
    buf: *mut c_char,
    len: usize,
) -> usize {
    run_value(0, || {
        // SAFETY: `handle` is NULL or live, and `buf` NULL or writable for `len` bytes
        // (the contract), which is what copy_out_str needs.
        unsafe { handle.as_ref() }.map(|h| unsafe { copy_out_str(&h.backend_name, buf, len) })
    })
}

/// Copies the SAE's fingerprint (the identity statistics files carry) into `buf`;
/// returns the size needed, NUL included (0 for a NULL handle).
///
/// # Safety
/// `handle` is NULL or a live handle; `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn sae_fingerprint(
    handle: *const SaeHandle,
    buf: *mut c_char,
    len: usize,
) -> usize {
    run_value(0, || {
        // SAFETY: `handle` is NULL or live, and `buf` NULL or writable for `len` bytes
        // (the contract), which is what copy_out_str needs.
        unsafe { handle.as_ref() }.map(|h| unsafe { copy_out_str(&h.sae.fingerprint(), buf, len) })
    })
}

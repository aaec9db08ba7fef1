//! Encode and decode on caller-owned device memory (e.g. a PyTorch CUDA tensor used in
//! place), ordered on the caller's CUDA stream. Only backends with device-pointer entry
//! points (CUDA) accept these; the CPU backend answers `SAE_STATUS_UNSUPPORTED`.

use std::ffi::c_void;

use sae_engine::backend::{DecodeTopkDevice, DevicePtrOps, EncodeTopkDevice};

use crate::guard::{checked_len, run, Failure, FfiResult};
use crate::handle::{handle_arg, SaeHandle};
use crate::status::SaeStatus;

/// Runs `f` with the handle's device-pointer entry points, or fails with UNSUPPORTED.
fn with_device(h: &SaeHandle, f: impl FnOnce(&dyn DevicePtrOps) -> FfiResult) -> FfiResult {
    let eng = h.engine();
    match eng.device_ptr() {
        Some(ops) => f(ops),
        None => Err(Failure::new(
            SaeStatus::Unsupported,
            format!(
                "backend `{}` takes host buffers only; open the SAE with backend \"cuda\" \
                 for device pointers",
                h.backend_name
            ),
        )),
    }
}

/// A required device address: NULL only when the buffer is empty.
fn dev(p: *const c_void, elems: usize, arg: &str) -> FfiResult<u64> {
    if p.is_null() && elems > 0 {
        return Err(Failure::null(arg));
    }
    Ok(p as u64)
}

/// Device-pointer version of `sae_encode_topk_host`: `x` f32 `[rows, d]`, `out_indices`
/// int32 and `out_values` f32 `[rows, k]`, `out_scale`/`out_shift` NULL or f32 `[rows]`,
/// all on the handle's CUDA device. Work is enqueued on `stream` (a `CUstream` /
/// `cudaStream_t`; NULL = the legacy default stream) and may still be running when this
/// returns: synchronize the stream before reading the outputs.
/// `SAE_STATUS_UNSUPPORTED` when the handle's backend is the CPU.
///
/// # Safety
/// Every non-NULL pointer is a device allocation of the stated size on the handle's
/// device; `stream` is NULL or a live stream of that device's primary context.
#[no_mangle]
pub unsafe extern "C" fn sae_encode_topk_device(
    handle: *const SaeHandle,
    x: *const f32,
    rows: usize,
    d: usize,
    out_indices: *mut i32,
    out_values: *mut f32,
    k: usize,
    out_scale: *mut f32,
    out_shift: *mut f32,
    stream: *mut c_void,
) -> SaeStatus {
    run("sae_encode_topk_device", || {
        // SAFETY: `handle` is NULL or a live handle (the contract of every export).
        let h = unsafe { handle_arg(handle) }?;
        h.check_topk_shape(
            d,
            k,
            "this SAE is not TopK: device-pointer encoding covers TopK SAEs only",
        )?;
        let n_x = checked_len(rows, d, "x")?;
        let n_out = checked_len(rows, k, "outputs")?;
        let args = EncodeTopkDevice {
            x: dev(x.cast(), n_x, "x")?,
            rows,
            out_indices: dev(out_indices.cast(), n_out, "out_indices")?,
            out_values: dev(out_values.cast(), n_out, "out_values")?,
            out_scale: out_scale as u64,
            out_shift: out_shift as u64,
            stream: stream as u64,
        };
        // SAFETY: the addresses are device allocations of the stated shapes on the handle's
        // device and `stream` is NULL or a live stream there (this fn's # Safety), which is
        // the trait method's contract; NULLs of non-empty buffers were rejected by `dev`.
        with_device(h, |ops| Ok(unsafe { ops.encode_topk_device(&args) }?))
    })
}

/// Device-pointer version of `sae_decode_topk_host`: `indices` int32 / `values` f32
/// `[rows, k]`, `scale`/`shift` f32 `[rows]` (both or neither), `out_x` f32 `[rows, d]`,
/// on the handle's CUDA device, ordered on `stream`. Latent indices must be -1 or below
/// n_latents (they are not checked on the host: that would need a copy).
/// `SAE_STATUS_UNSUPPORTED` when the handle's backend is the CPU.
///
/// # Safety
/// As `sae_encode_topk_device`.
#[no_mangle]
pub unsafe extern "C" fn sae_decode_topk_device(
    handle: *const SaeHandle,
    indices: *const i32,
    values: *const f32,
    rows: usize,
    k: usize,
    scale: *const f32,
    shift: *const f32,
    out_x: *mut f32,
    d: usize,
    stream: *mut c_void,
) -> SaeStatus {
    run("sae_decode_topk_device", || {
        // SAFETY: `handle` is NULL or a live handle (the contract of every export).
        let h = unsafe { handle_arg(handle) }?;
        h.check_width(d)?;
        let n = checked_len(rows, k, "codes")?;
        let n_x = checked_len(rows, d, "out_x")?;
        if scale.is_null() != shift.is_null() {
            return Err(Failure::invalid(
                "pass both `scale` and `shift`, or neither",
            ));
        }
        let args = DecodeTopkDevice {
            indices: dev(indices.cast(), n, "indices")?,
            values: dev(values.cast(), n, "values")?,
            rows,
            k,
            scale: scale as u64,
            shift: shift as u64,
            out_x: dev(out_x.cast(), n_x, "out_x")?,
            stream: stream as u64,
        };
        // SAFETY: as in `sae_encode_topk_device`: the caller vouches for the device buffers,
        // the stream and the latent indices (this fn's # Safety and doc).
        with_device(h, |ops| Ok(unsafe { ops.decode_topk_device(&args) }?))
    })
}

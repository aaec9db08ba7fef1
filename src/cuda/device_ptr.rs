//! Device-pointer entry points: encode and decode on GPU memory the caller owns (a
//! PyTorch tensor, a C++ caller's buffer), ordered on the caller's stream, so that
//! nothing is copied through the host. Engines that can do this return themselves
//! from [`crate::ops::Engine::device_ptr`]; the CPU engine returns `None`.
//!
//! Until the CUDA engine has a fused path, it can implement the trait with
//! [`staged_encode_topk`] / [`staged_decode_topk`] (bind its context, then call them) and
//! return `Some(self)` from `Engine::device_ptr`.
//!
//! Addresses are raw `CUdeviceptr` values and the stream a raw `CUstream`
//! (0 = the legacy default stream), because that is what callers across the C ABI hold.

use crate::codes::{Codes, Denorm};
use crate::error::{Error, Result};
use crate::ops::Engine;

/// Arguments of [`DevicePtrOps::encode_topk_device`]. All buffers live on the engine's device.
#[derive(Debug, Clone, Copy)]
pub struct EncodeTopkDevice {
    /// f32 input rows `[rows, d_in]`, row-major.
    pub x: u64,
    pub rows: usize,
    /// i32 output `[rows, k]` (k = the SAE's k), same order and padding as `Codes::TopK`.
    pub out_indices: u64,
    /// f32 output `[rows, k]`.
    pub out_values: u64,
    /// f32 output `[rows]` of normalization scales, or 0 when not wanted.
    pub out_scale: u64,
    /// f32 output `[rows]` of normalization shifts, or 0 when not wanted.
    pub out_shift: u64,
    /// The `CUstream` the work is ordered on.
    pub stream: u64,
}

/// Arguments of [`DevicePtrOps::decode_topk_device`].
#[derive(Debug, Clone, Copy)]
pub struct DecodeTopkDevice {
    /// i32 `[rows, k]` latent indices (-1 = padding).
    pub indices: u64,
    /// f32 `[rows, k]` values.
    pub values: u64,
    pub rows: usize,
    pub k: usize,
    /// f32 `[rows]` scales and shifts that undo normalization, or 0 for none (both or neither).
    pub scale: u64,
    pub shift: u64,
    /// f32 output `[rows, d_in]`.
    pub out_x: u64,
    /// The `CUstream` the work is ordered on.
    pub stream: u64,
}

/// Encode and decode on caller-owned device memory.
pub trait DevicePtrOps {
    /// Encodes like `Engine::encode` for a TopK SAE. The work is enqueued on `stream`
    /// and may still be running when this returns; the caller synchronizes. A non-finite
    /// input is still an error naming the row (the engine may synchronize to report it).
    ///
    /// # Safety
    /// Every non-zero address is a live allocation on this engine's device large enough
    /// for the stated shape, and `stream` is a valid stream of the current context (or 0).
    unsafe fn encode_topk_device(&self, args: &EncodeTopkDevice) -> Result<()>;

    /// Decodes like `Engine::decode` (plus b_dec, de-normalized when scale/shift are given).
    ///
    /// # Safety
    /// As [`DevicePtrOps::encode_topk_device`]; latent indices must be -1 or below n_latents.
    unsafe fn decode_topk_device(&self, args: &DecodeTopkDevice) -> Result<()>;
}

/// A correct, copying implementation of [`DevicePtrOps::encode_topk_device`] for an engine
/// whose `encode` takes host rows: waits for the caller's stream, copies `x` to the host,
/// encodes, and copies the codes back, synchronously. It lets the CUDA engine answer
/// `device_ptr()` before a fused on-device path exists; results equal `Engine::encode`.
///
/// # Safety
/// As [`DevicePtrOps::encode_topk_device`]; the engine's CUDA context is current on this thread.
pub unsafe fn staged_encode_topk(engine: &dyn Engine, a: &EncodeTopkDevice) -> Result<()> {
    let sae = engine.sae();
    let k = sae
        .k()
        .ok_or_else(|| Error::invalid("device-pointer encoding covers TopK SAEs only"))?;
    let d = sae.d_in();
    let mut x = vec![0f32; a.rows * d];
    wait(a.stream)?;
    copy_in(&mut x, a.x)?;
    let enc = engine.encode(&x, a.rows, 0)?;
    let Codes::TopK {
        k: ck,
        indices,
        values,
        ..
    } = &enc.codes
    else {
        return Err(Error::Cuda(
            "engine returned CSR codes for a TopK SAE".into(),
        ));
    };
    if *ck != k || indices.len() != a.rows * k {
        return Err(Error::Cuda(
            "engine returned codes that are not [rows, k]".into(),
        ));
    }
    copy_out(a.out_indices, indices)?;
    copy_out(a.out_values, values)?;
    let (scale, shift) = match &enc.denorm {
        Some(dn) => (dn.scale.clone(), dn.shift.clone()),
        None => (vec![1.0; a.rows], vec![0.0; a.rows]),
    };
    if a.out_scale != 0 {
        copy_out(a.out_scale, &scale)?;
    }
    if a.out_shift != 0 {
        copy_out(a.out_shift, &shift)?;
    }
    Ok(())
}

/// The copying counterpart of [`DevicePtrOps::decode_topk_device`] (see [`staged_encode_topk`]).
///
/// # Safety
/// As [`DevicePtrOps::decode_topk_device`]; the engine's CUDA context is current on this thread.
pub unsafe fn staged_decode_topk(engine: &dyn Engine, a: &DecodeTopkDevice) -> Result<()> {
    let n = a.rows * a.k;
    let (mut indices, mut values) = (vec![0i32; n], vec![0f32; n]);
    wait(a.stream)?;
    copy_in(&mut indices, a.indices)?;
    copy_in(&mut values, a.values)?;
    let denorm = match (a.scale, a.shift) {
        (0, 0) => None,
        (s, h) if s != 0 && h != 0 => {
            let mut dn = Denorm {
                scale: vec![0f32; a.rows],
                shift: vec![0f32; a.rows],
            };
            copy_in(&mut dn.scale, s)?;
            copy_in(&mut dn.shift, h)?;
            Some(dn)
        }
        _ => return Err(Error::invalid("pass both scale and shift, or neither")),
    };
    let codes = Codes::TopK {
        n: a.rows,
        k: a.k,
        indices,
        values,
    };
    codes.validate(engine.sae().n_latents())?;
    let x = engine.decode(&codes, denorm.as_ref())?;
    copy_out(a.out_x, &x)
}

fn cuda_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

/// Waits until the caller's queued work (which produced the inputs) is done.
unsafe fn wait(stream: u64) -> Result<()> {
    cudarc::driver::result::stream::synchronize(stream as usize as cudarc::driver::sys::CUstream)
        .map_err(cuda_err("synchronizing the caller's stream"))
}

unsafe fn copy_in<T>(dst: &mut [T], src: u64) -> Result<()> {
    if dst.is_empty() {
        return Ok(());
    }
    cudarc::driver::result::memcpy_dtoh_sync(dst, src).map_err(cuda_err("device-to-host copy"))
}

unsafe fn copy_out<T>(dst: u64, src: &[T]) -> Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    cudarc::driver::result::memcpy_htod_sync(dst, src).map_err(cuda_err("host-to-device copy"))
}

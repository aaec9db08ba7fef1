//! Device-pointer entry points on CUDA: encode and decode on GPU memory the caller owns
//! (a PyTorch tensor, a C++ caller's buffer), ordered on the caller's stream, so that
//! nothing is copied through the host. The contract ([`DevicePtrOps`] and its argument
//! types) lives in [`crate::backend`]; engines that implement it return themselves from
//! [`crate::backend::Engine::device_ptr`]; the CPU engine returns `None`.
//!
//! Until the CUDA engine has a fused path, it can implement the trait with
//! [`staged_encode_topk`] / [`staged_decode_topk`] (bind its context, then call them) and
//! return `Some(self)` from `Engine::device_ptr`.
//!
//! Addresses are raw `CUdeviceptr` values and the stream a raw `CUstream`
//! (0 = the legacy default stream), because that is what callers across the C ABI hold.

use crate::backend::Engine;
pub use crate::backend::{DecodeTopkDevice, DevicePtrOps, EncodeTopkDevice};
use crate::codes::{Codes, Denorm};
use crate::error::{Error, Result};

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
    // SAFETY: `a.stream` is a stream of the current context and `a.x` holds rows * d f32
    // (this function's contract); `x` has that length.
    unsafe {
        wait(a.stream)?;
        copy_in(&mut x, a.x)?;
    }
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
    // SAFETY: the outputs hold rows * k elements (this function's contract) and the codes
    // were checked to be [rows, k] above.
    unsafe {
        copy_out(a.out_indices, indices)?;
        copy_out(a.out_values, values)?;
    }
    let (scale, shift) = match &enc.denorm {
        Some(dn) => (dn.scale.clone(), dn.shift.clone()),
        None => (vec![1.0; a.rows], vec![0.0; a.rows]),
    };
    // SAFETY: non-zero scale/shift outputs hold `rows` f32 (this function's contract); the
    // constants have one per row.
    unsafe {
        if a.out_scale != 0 {
            copy_out(a.out_scale, &scale)?;
        }
        if a.out_shift != 0 {
            copy_out(a.out_shift, &shift)?;
        }
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
    // SAFETY: the stream belongs to the current context and the inputs hold rows * k values
    // (this function's contract); the host buffers have that length.
    unsafe {
        wait(a.stream)?;
        copy_in(&mut indices, a.indices)?;
        copy_in(&mut values, a.values)?;
    }
    let denorm = match (a.scale, a.shift) {
        (0, 0) => None,
        (s, h) if s != 0 && h != 0 => {
            let mut dn = Denorm {
                scale: vec![0f32; a.rows],
                shift: vec![0f32; a.rows],
            };
            // SAFETY: non-zero scale and shift hold `rows` f32 (this function's contract).
            unsafe {
                copy_in(&mut dn.scale, s)?;
                copy_in(&mut dn.shift, h)?;
            }
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
    // SAFETY: `out_x` holds rows * d_in f32 (this function's contract), what decode returned.
    unsafe { copy_out(a.out_x, &x) }
}

fn cuda_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

/// Waits until the caller's queued work (which produced the inputs) is done.
///
/// # Safety
/// `stream` is a stream of the current context, or 0 (the legacy default stream).
unsafe fn wait(stream: u64) -> Result<()> {
    let s = stream as usize as cudarc::driver::sys::CUstream;
    // SAFETY: the caller guarantees `s` is a stream of the current context (or 0).
    unsafe { cudarc::driver::result::stream::synchronize(s) }
        .map_err(cuda_err("synchronizing the caller's stream"))
}

/// Copies `dst.len()` values from device address `src` to the host.
///
/// # Safety
/// `src` is a live allocation of the current context holding at least `dst.len()` `T`s, and
/// `T` is plain data (any bit pattern valid).
unsafe fn copy_in<T>(dst: &mut [T], src: u64) -> Result<()> {
    if dst.is_empty() {
        return Ok(());
    }
    // SAFETY: the caller guarantees `src` holds dst.len() values of the current context.
    unsafe { cudarc::driver::result::memcpy_dtoh_sync(dst, src) }
        .map_err(cuda_err("device-to-host copy"))
}

/// Copies `src` to device address `dst`.
///
/// # Safety
/// `dst` is a live allocation of the current context with room for `src.len()` `T`s.
unsafe fn copy_out<T>(dst: u64, src: &[T]) -> Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    // SAFETY: the caller guarantees `dst` has room for src.len() values.
    unsafe { cudarc::driver::result::memcpy_htod_sync(dst, src) }
        .map_err(cuda_err("host-to-device copy"))
}

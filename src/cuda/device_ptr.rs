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

pub use crate::backend::{DecodeTopkDevice, DevicePtrOps, EncodeTopkDevice};
use crate::backend::Engine;
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

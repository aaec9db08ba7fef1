//! Device-pointer entry points: encode and decode on GPU memory the caller owns (a
//! PyTorch tensor, a C++ caller's buffer), ordered on the caller's stream, so that
//! nothing is copied through the host. Engines that can do this return themselves
//! from [`crate::ops::Engine::device_ptr`]; the CPU engine returns `None`.
//!
//! Addresses are raw `CUdeviceptr` values and the stream a raw `CUstream`
//! (0 = the legacy default stream), because that is what callers across the C ABI hold.

use crate::error::Result;

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

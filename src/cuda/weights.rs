//! An SAE's tensors on the device: the weight matrices' raw bytes uploaded once in their
//! stored dtype and layout (no transposed copy), biases and thresholds as f32.

use super::device::{DevBuf, Gpu};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matrix::{Layout, Matrix};
use crate::sae::{Activation, Sae};

/// One weight matrix on the device, logical [n_latents, d].
pub struct DeviceMatrix {
    pub buf: DevBuf,
    pub dtype: DType,
    pub layout: Layout,
}

impl DeviceMatrix {
    /// Uploads a host matrix's stored bytes as they are.
    pub fn upload(gpu: &Gpu, m: &Matrix) -> Result<DeviceMatrix> {
        Ok(DeviceMatrix {
            buf: gpu.upload(m.raw())?,
            dtype: m.dtype(),
            layout: m.layout(),
        })
    }

    /// A random row-major matrix generated on the device (benchmarks: no 17 GB upload).
    pub fn random(
        gpu: &Gpu,
        rows: usize,
        cols: usize,
        dtype: DType,
        seed: u64,
        scale: f32,
    ) -> Result<DeviceMatrix> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::invalid(format!("matrix {rows}x{cols} overflows")))?;
        let buf = gpu.alloc(n * dtype.size())?;
        gpu.fill_random(dtype, buf.ptr, n, seed, scale)?;
        Ok(DeviceMatrix {
            buf,
            dtype,
            layout: Layout::RowMajor,
        })
    }
}

/// Everything the kernels need of an SAE.
pub struct DeviceSae {
    pub n_latents: usize,
    pub d_in: usize,
    pub w_enc: DeviceMatrix,
    /// None: tied to the encoder (device-generated benchmark SAEs).
    pub w_dec: Option<DeviceMatrix>,
    /// f32 [L]
    pub b_enc: DevBuf,
    /// f32 [d]
    pub b_dec: DevBuf,
    /// f32 [L], JumpReLU only.
    pub threshold: Option<DevBuf>,
    /// f32 [L] decoder row norms, when TopK rescales by them.
    pub dec_norm: Option<DevBuf>,
    pub activation: Activation,
}

impl DeviceSae {
    /// Uploads `sae` (weights once, in their stored form).
    pub fn upload(gpu: &Gpu, sae: &Sae) -> Result<DeviceSae> {
        let dec_norm = if sae.rescale_acts_by_decoder_norm {
            // Same f64 row norms as the CPU reference (Matrix::row_norms).
            Some(gpu.upload(&sae.w_dec.row_norms())?)
        } else {
            None
        };
        Ok(DeviceSae {
            n_latents: sae.n_latents(),
            d_in: sae.d_in(),
            w_enc: DeviceMatrix::upload(gpu, &sae.w_enc)?,
            w_dec: Some(DeviceMatrix::upload(gpu, &sae.w_dec)?),
            b_enc: gpu.upload(&sae.b_enc)?,
            b_dec: gpu.upload(&sae.b_dec)?,
            threshold: sae.threshold.as_ref().map(|t| gpu.upload(t)).transpose()?,
            dec_norm,
            activation: sae.activation,
        })
    }

    /// A random TopK SAE generated on the device (benchmarks). The decoder is the encoder
    /// (tied weights, `w_dec: None`) so an L = 2^21, d = 4096 bf16 SAE needs 17 GB, not 34.
    pub fn random_topk(
        gpu: &Gpu,
        n_latents: usize,
        d_in: usize,
        k: usize,
        dtype: DType,
        seed: u64,
    ) -> Result<DeviceSae> {
        let scale = 1.0 / (d_in as f32).sqrt();
        let w_enc = DeviceMatrix::random(gpu, n_latents, d_in, dtype, seed, scale)?;
        let b_enc = gpu.alloc(n_latents * 4)?;
        gpu.fill_random(DType::F32, b_enc.ptr, n_latents, seed ^ 0x5eed, 0.01)?;
        let b_dec = gpu.alloc(d_in * 4)?;
        gpu.zero(b_dec.ptr, d_in * 4)?;
        Ok(DeviceSae {
            n_latents,
            d_in,
            w_enc,
            w_dec: None,
            b_enc,
            b_dec,
            threshold: None,
            dec_norm: None,
            activation: Activation::TopK { k },
        })
    }

    /// The decoder matrix (the encoder's bytes when tied).
    pub fn decoder(&self) -> &DeviceMatrix {
        self.w_dec.as_ref().unwrap_or(&self.w_enc)
    }
}

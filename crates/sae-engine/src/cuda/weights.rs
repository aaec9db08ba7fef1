//! An SAE's tensors on the device: the weight matrices' raw bytes uploaded once in their
//! stored dtype and layout (no transposed copy), biases and thresholds as f32.

use super::device::{DevBuf, Gpu};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matrix::{Layout, Matrix};
use crate::sae::{Activation, Sae};

/// One weight matrix on the device, logical [n_latents, d].
pub struct DeviceMatrix {
    /// The stored elements.
    pub buf: DevBuf,
    /// Their element type.
    pub dtype: DType,
    /// Row-major, or stored as the transpose.
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

/// Range of the random benchmark weights: uniform in +-1/sqrt(d), unit-scale pre-activations.
fn random_scale(d_in: usize) -> f32 {
    1.0 / (d_in as f32).sqrt()
}

/// Everything the kernels need of an SAE.
pub struct DeviceSae {
    /// Number of latents L.
    pub n_latents: usize,
    /// Input width d.
    pub d_in: usize,
    /// The encoder.
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
    /// f32 [ceil(L / 128)]: per 128-latent block, the largest b_enc and the largest decoder
    /// norm (see [`block_bounds`]); the top-k pass skips scores these bounds rule out.
    pub bias_bound: DevBuf,
    /// f32 per 128-latent block: the largest decoder norm, when TopK rescales by them.
    pub scale_bound: Option<DevBuf>,
    /// The activation function.
    pub activation: Activation,
}

/// Latents per block of [`block_bounds`]: tiles start at multiples of 64 and the top-k
/// kernel reads 4 or 8 aligned scores at a time, so a group never straddles two blocks.
pub const BOUND_BLOCK: usize = 128;

/// Per-block maxima of `v` (and of `scale`), NaN for a block that holds a non-finite value
/// in either: a NaN bound never lets the kernel skip, so non-finite pre-activations are
/// still reported.
pub fn block_bounds(v: &[f32], scale: Option<&[f32]>) -> (Vec<f32>, Option<Vec<f32>>) {
    let finite = |x: &[f32]| x.iter().all(|a| a.is_finite());
    let poisoned: Vec<bool> = match scale {
        Some(s) => v
            .chunks(BOUND_BLOCK)
            .zip(s.chunks(BOUND_BLOCK))
            .map(|(a, b)| !finite(a) || !finite(b))
            .collect(),
        None => v.chunks(BOUND_BLOCK).map(|a| !finite(a)).collect(),
    };
    let max_of = |x: &[f32]| -> Vec<f32> {
        x.chunks(BOUND_BLOCK)
            .zip(&poisoned)
            .map(|(c, &bad)| {
                if bad {
                    f32::NAN
                } else {
                    c.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                }
            })
            .collect()
    };
    (max_of(v), scale.map(max_of))
}

fn upload_bounds(
    gpu: &Gpu,
    b_enc: &[f32],
    scale: Option<&[f32]>,
) -> Result<(DevBuf, Option<DevBuf>)> {
    let (b, s) = block_bounds(b_enc, scale);
    Ok((gpu.upload(&b)?, s.map(|s| gpu.upload(&s)).transpose()?))
}

impl DeviceSae {
    /// Uploads `sae` (weights once, in their stored form).
    pub fn upload(gpu: &Gpu, sae: &Sae) -> Result<DeviceSae> {
        DeviceSae::upload_for(gpu, sae, true)
    }

    /// Uploads `sae`, W_dec only when `decoder` (an encode-only engine leaves it on the
    /// host: `w_dec` is then None, and the engine must refuse every decoder use, since
    /// [`DeviceSae::decoder`] reads None as tied weights).
    pub fn upload_for(gpu: &Gpu, sae: &Sae, decoder: bool) -> Result<DeviceSae> {
        // Same f64 row norms as the CPU reference (Matrix::row_norms).
        let norms = sae
            .rescale_acts_by_decoder_norm
            .then(|| sae.w_dec.row_norms());
        let dec_norm = norms.as_ref().map(|n| gpu.upload(n)).transpose()?;
        let (bias_bound, scale_bound) = upload_bounds(gpu, &sae.b_enc, norms.as_deref())?;
        Ok(DeviceSae {
            n_latents: sae.n_latents(),
            d_in: sae.d_in(),
            w_enc: DeviceMatrix::upload(gpu, &sae.w_enc)?,
            w_dec: decoder
                .then(|| DeviceMatrix::upload(gpu, &sae.w_dec))
                .transpose()?,
            b_enc: gpu.upload(&sae.b_enc)?,
            b_dec: gpu.upload(&sae.b_dec)?,
            threshold: sae.threshold.as_ref().map(|t| gpu.upload(t)).transpose()?,
            dec_norm,
            bias_bound,
            scale_bound,
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
        let w_enc = DeviceMatrix::random(gpu, n_latents, d_in, dtype, seed, random_scale(d_in))?;
        let b_enc = gpu.alloc(n_latents * 4)?;
        gpu.fill_random(DType::F32, b_enc.ptr, n_latents, seed ^ 0x5eed, 0.01)?;
        let mut host_b = vec![0f32; n_latents];
        gpu.dtoh(&mut host_b, b_enc.ptr)?;
        let (bias_bound, scale_bound) = upload_bounds(gpu, &host_b, None)?;
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
            bias_bound,
            scale_bound,
            activation: Activation::TopK { k },
        })
    }

    /// Writes the encoder values [`DeviceSae::random_topk`] generated with `seed` again
    /// (benchmarks that overwrite the weights, e.g. with zeros, and need them back).
    pub fn refill_random_encoder(&self, gpu: &Gpu, seed: u64) -> Result<()> {
        let n = self.n_latents * self.d_in;
        gpu.fill_random(
            self.w_enc.dtype,
            self.w_enc.buf.ptr,
            n,
            seed,
            random_scale(self.d_in),
        )
    }

    /// The decoder matrix (the encoder's bytes when tied).
    pub fn decoder(&self) -> &DeviceMatrix {
        self.w_dec.as_ref().unwrap_or(&self.w_enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_bounds_take_maxima_and_poison_non_finite_blocks() {
        let mut b: Vec<f32> = (0..300).map(|i| (i % 7) as f32 - 3.0).collect();
        b[5] = 9.0;
        let (bb, s) = block_bounds(&b, None);
        assert_eq!(bb.len(), 3);
        assert_eq!(bb[0], 9.0);
        assert_eq!(bb[1], 3.0);
        // The last, partial block (44 latents) bounds only its own values.
        assert_eq!(bb[2], b[256..].iter().copied().fold(f32::MIN, f32::max));
        assert!(s.is_none());

        let mut scale = vec![1.0f32; 300];
        scale[200] = 4.0;
        scale[290] = f32::INFINITY;
        b[130] = f32::NAN;
        let (bb, s) = block_bounds(&b, Some(&scale));
        let s = s.expect("scale bounds");
        assert!(bb[1].is_nan(), "a NaN bias poisons its block");
        assert!(s[1].is_nan(), "and its scale bound");
        assert_eq!(s[0], 1.0);
        assert!(
            bb[2].is_nan() && s[2].is_nan(),
            "an infinite scale poisons its block"
        );
        assert_eq!(bb[0], 9.0);
    }
}

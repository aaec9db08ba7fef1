//! Kernel launches for decode (gather-sum, optional fused metrics), batched statistics and
//! steering on the device (encode's launches are in [`super::encode`]).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{DevBuf, Gpu};
use super::weights::{DeviceMatrix, DeviceSae};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matrix::Layout;

fn launch_err(name: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda(format!("launching {name}: {e}"))
}

/// Codes on the device in CSR form (TopK rows use row_ptr = i * k, padding index -1).
pub struct DeviceCodes {
    /// Number of rows.
    pub rows: usize,
    /// i64 [rows + 1]
    pub row_ptr: DevBuf,
    /// i32 [nnz]
    pub idx: DevBuf,
    /// f32 [nnz]
    pub val: DevBuf,
}

impl DeviceCodes {
    /// Uploads host codes.
    pub fn upload(gpu: &Gpu, codes: &crate::Codes) -> Result<DeviceCodes> {
        let (rows, row_ptr, idx, val): (usize, Vec<i64>, &[i32], &[f32]) = match codes {
            crate::Codes::TopK {
                n,
                k,
                indices,
                values,
            } => (
                (*n),
                (0..=*n).map(|i| (i * k) as i64).collect(),
                indices,
                values,
            ),
            crate::Codes::Csr {
                n,
                row_ptr,
                indices,
                values,
            } => (*n, row_ptr.clone(), indices, values),
        };
        Ok(DeviceCodes {
            rows,
            row_ptr: gpu.upload(&row_ptr)?,
            idx: gpu.upload(idx)?,
            val: gpu.upload(val)?,
        })
    }
}

/// Optional per-row inputs of a decode.
#[derive(Default, Clone, Copy)]
pub struct DecodeExtras {
    /// f32 [rows] scale and shift that undo normalization (both or neither).
    pub scale: u64,
    /// See `scale`.
    pub shift: u64,
    /// f32 [rows, d] original activations: with `metrics`, fused reconstruction sums.
    pub x: u64,
    /// f64 [rows, 4]: err, ||x||^2, ||x_hat||^2, x . x_hat per row.
    pub metrics: u64,
}

/// Whether the 16-byte vector kernel applies to this decoder.
pub fn vector_decode(w: &DeviceMatrix, d: usize) -> bool {
    w.layout == Layout::RowMajor && d % (16 / w.dtype.size()) == 0
}

/// out[rows, d] = decode of `rows` rows whose CSR arrays start at the given device addresses.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    gpu: &Gpu,
    sae: &DeviceSae,
    rows: usize,
    row_ptr: u64,
    idx: u64,
    val: u64,
    out: u64,
    extras: DecodeExtras,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let w = sae.decoder();
    let d = sae.d_in;
    let d32 = d as i32;
    let norm = sae.dec_norm.as_ref().map(|b| b.ptr).unwrap_or(0);
    // The 16-byte kernel for row-major rows of a multiple of 16 bytes (`vec` elements per
    // thread step), else the strided one that reads any layout one element at a time.
    let vector = vector_decode(w, d);
    let (name, threads) = if vector {
        let vec = 16 / w.dtype.size();
        (format!("decode_{}", w.dtype.name()), (d / vec).div_ceil(4))
    } else {
        (format!("decode_strided_{}", w.dtype.name()), d.div_ceil(4))
    };
    let (rs, cs) = match w.layout {
        Layout::RowMajor => (d as i64, 1i64),
        Layout::Transposed => (1i64, sae.n_latents as i64),
    };
    let f = gpu.kernel(&name)?;
    let mut b = gpu.stream.launch_builder(f);
    b.arg(&row_ptr)
        .arg(&idx)
        .arg(&val)
        .arg(&w.buf.ptr)
        .arg(&d32);
    if !vector {
        b.arg(&rs).arg(&cs);
    }
    b.arg(&norm)
        .arg(&sae.b_dec.ptr)
        .arg(&extras.scale)
        .arg(&extras.shift)
        .arg(&out)
        .arg(&extras.x)
        .arg(&extras.metrics);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads.div_ceil(32).clamp(1, 8) as u32 * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: decode_<dt>(row_ptr, idx, val, W, d, norm|null, b_dec, scale|null, shift|null,
    // out, x|null, metrics|null), and decode_strided_<dt> with (row_stride, col_stride) after
    // d: row_ptr has rows + 1 entries indexing idx/val; every index is -1 or < L (validated on
    // the host); element (l, c) of W at l * rs + c * cs lies inside the L x d matrix, and the
    // vector kernel runs only on row-major rows with d % vec == 0.
    unsafe { b.launch(cfg) }.map_err(|e| Error::Cuda(format!("launching {name}: {e}")))?;
    Ok(())
}

/// Per-latent statistics of several models accumulated on the device (one launch per batch
/// of codes, whatever the number of models). Download with `to_host`.
pub struct DeviceStats {
    /// Number of models whose statistics are kept side by side.
    pub n_models: usize,
    /// Latents per model.
    pub n_latents: usize,
    sum: DevBuf,
    sum_sq: DevBuf,
    n_active: DevBuf,
    max_bits: DevBuf,
    /// Tokens counted per model (kept on the host).
    pub n_tokens: Vec<u64>,
}

impl DeviceStats {
    /// Zeroed accumulators for `n_models` models of `n_latents` latents.
    pub fn new(gpu: &Gpu, n_models: usize, n_latents: usize) -> Result<DeviceStats> {
        let n = n_models * n_latents;
        let s = DeviceStats {
            n_models,
            n_latents,
            sum: gpu.alloc(n * 8)?,
            sum_sq: gpu.alloc(n * 8)?,
            n_active: gpu.alloc(n * 8)?,
            max_bits: gpu.alloc(n * 4)?,
            n_tokens: vec![0; n_models],
        };
        for b in [&s.sum, &s.sum_sq, &s.n_active, &s.max_bits] {
            gpu.zero(b.ptr, b.bytes)?;
        }
        Ok(s)
    }

    /// Adds one batch: `parts[i] = (model, codes, mask)`; all parts go in one launch.
    pub fn add(
        &mut self,
        gpu: &Gpu,
        parts: &[(usize, &crate::Codes, Option<&[u8]>)],
    ) -> Result<()> {
        let mut row_ptr = vec![0i64];
        let (mut idx, mut val, mut mask, mut model) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (m, codes, mk) in parts {
            if *m >= self.n_models {
                return Err(Error::invalid(format!(
                    "model {m} of {} in a statistics batch",
                    self.n_models
                )));
            }
            codes.validate(self.n_latents)?;
            let n = codes.n_rows();
            if let Some(mk) = mk {
                if mk.len() != n {
                    return Err(Error::invalid(format!(
                        "mask has {} entries for {n} rows of codes",
                        mk.len()
                    )));
                }
            }
            for r in 0..n {
                let (i, v) = codes.row(r);
                idx.extend_from_slice(i);
                val.extend_from_slice(v);
                row_ptr.push(idx.len() as i64);
                let keep = mk.is_none_or(|mk| mk[r] != 0);
                mask.push(keep as u8);
                model.push(*m as i32);
                if keep {
                    self.n_tokens[*m] += 1;
                }
            }
        }
        let rows = model.len();
        if rows == 0 {
            return Ok(());
        }
        let (d_rp, d_idx, d_val, d_mask, d_model) = (
            gpu.upload(&row_ptr)?,
            gpu.upload(&idx)?,
            gpu.upload(&val)?,
            gpu.upload(&mask)?,
            gpu.upload(&model)?,
        );
        self.launch(
            gpu,
            rows,
            d_rp.ptr,
            d_idx.ptr,
            d_val.ptr,
            d_mask.ptr,
            d_model.ptr,
        )?;
        gpu.sync()
    }

    /// The stats kernel over device-resident codes (rows of all models concatenated).
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        gpu: &Gpu,
        rows: usize,
        row_ptr: u64,
        idx: u64,
        val: u64,
        mask: u64,
        row_model: u64,
    ) -> Result<()> {
        let f = gpu.kernel("stats_f32")?;
        let (r32, l32) = (rows as i32, self.n_latents as i32);
        let mut b = gpu.stream.launch_builder(f);
        b.arg(&row_ptr)
            .arg(&idx)
            .arg(&val)
            .arg(&mask)
            .arg(&row_model)
            .arg(&r32)
            .arg(&l32);
        b.arg(&self.sum.ptr)
            .arg(&self.sum_sq.ptr)
            .arg(&self.n_active.ptr)
            .arg(&self.max_bits.ptr);
        // SAFETY: stats_f32(row_ptr, idx, val, mask|null, row_model, total_rows, n_latents, sum,
        // sum_sq, n_active, max_bits): row_model < n_models and indices < n_latents (validated),
        // accumulators [n_models, n_latents].
        unsafe { b.launch(gpu.grid_for(rows * 32, 256)) }.map_err(launch_err("stats_f32"))?;
        Ok(())
    }

    /// Copies the accumulators back as one LatentStats per model.
    pub fn to_host(&self, gpu: &Gpu, fingerprint: &str) -> Result<Vec<crate::LatentStats>> {
        let n = self.n_models * self.n_latents;
        let mut sum = vec![0f64; n];
        let mut sum_sq = vec![0f64; n];
        let mut act = vec![0u64; n];
        let mut mx = vec![0u32; n];
        gpu.dtoh(&mut sum, self.sum.ptr)?;
        gpu.dtoh(&mut sum_sq, self.sum_sq.ptr)?;
        gpu.dtoh(&mut act, self.n_active.ptr)?;
        gpu.dtoh(&mut mx, self.max_bits.ptr)?;
        let l = self.n_latents;
        Ok((0..self.n_models)
            .map(|m| {
                let r = m * l..(m + 1) * l;
                crate::LatentStats {
                    fingerprint: fingerprint.to_string(),
                    n_tokens: self.n_tokens[m],
                    sum: sum[r.clone()].to_vec(),
                    sum_sq: sum_sq[r.clone()].to_vec(),
                    n_active: act[r.clone()].to_vec(),
                    max: mx[r].iter().map(|b| f32::from_bits(*b)).collect(),
                    // Token digests and norms are the caller's (they need the dump).
                    ..crate::LatentStats::new(fingerprint, 0)
                }
            })
            .collect())
    }
}

/// x[rows, d] (device, f32) += coeff * W_dec[latent].
pub fn steer(
    gpu: &Gpu,
    sae: &DeviceSae,
    x: u64,
    rows: usize,
    latent: usize,
    coeff: f32,
) -> Result<()> {
    if latent >= sae.n_latents {
        return Err(Error::invalid(format!(
            "latent {latent} out of range 0..{}",
            sae.n_latents
        )));
    }
    let w = sae.decoder();
    let (off, cs) = match w.layout {
        Layout::RowMajor => ((latent * sae.d_in) as i64, 1i64),
        Layout::Transposed => (latent as i64, sae.n_latents as i64),
    };
    let name = match w.dtype {
        DType::F32 => "steer_f32",
        DType::F16 => "steer_f16",
        DType::BF16 => "steer_bf16",
    };
    let f = gpu.kernel(name)?;
    let (r32, d32) = (rows as i32, sae.d_in as i32);
    let mut b = gpu.stream.launch_builder(f);
    b.arg(&x)
        .arg(&r32)
        .arg(&d32)
        .arg(&w.buf.ptr)
        .arg(&off)
        .arg(&cs)
        .arg(&coeff);
    // SAFETY: steer_<dt>(x, rows, d, W, row_offset, col_stride, coeff): x holds rows x d f32;
    // the decoder row addressed by (row_offset, col_stride) lies inside W.
    unsafe { b.launch(gpu.grid_for(rows * sae.d_in, 256)) }.map_err(launch_err("steer"))?;
    Ok(())
}

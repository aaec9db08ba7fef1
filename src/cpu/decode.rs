//! Decode: per row, b_dec plus the sum of value x decoder row over the row's codes
//! (values divided by the decoder norm first for rescaled SAEs), then de-normalized.
//! Rows are independent, so they are spread over the rayon pool; decoder rows are
//! read in place when the matrix is aligned row-major f32, else converted one at a time.

use rayon::prelude::*;

use crate::codes::{Codes, Denorm};
use crate::error::{Error, Result};
use crate::matrix::{Layout, Matrix};
use crate::sae::Sae;

/// Decodes `codes` into [n, d_in] f32.
pub(crate) fn decode(
    sae: &Sae,
    dec_norms: Option<&[f32]>,
    codes: &Codes,
    denorm: Option<&Denorm>,
) -> Result<Vec<f32>> {
    let (l, d) = (sae.n_latents(), sae.d_in());
    codes
        .validate(l)
        .map_err(|e| Error::invalid(format!("decode: {e}")))?;
    let n = codes.n_rows();
    if let Some(dn) = denorm {
        if dn.scale.len() != n || dn.shift.len() != n {
            return Err(Error::invalid(format!(
                "decode: normalization constants cover {} / {} rows, the codes have {n}",
                dn.scale.len(),
                dn.shift.len()
            )));
        }
    }
    let w = &sae.w_dec;
    let direct: Option<&[f32]> = match (w.dtype(), w.layout()) {
        (crate::dtype::DType::F32, Layout::RowMajor) => bytemuck::try_cast_slice(w.raw()).ok(),
        _ => None,
    };
    let mut out = vec![0f32; n * d];
    let coeff = |i: usize, v: f32| match dec_norms {
        // A zero decoder row contributes nothing whatever its code says.
        Some(norms) if norms[i] > 0.0 => v / norms[i],
        Some(_) => 0.0,
        None => v,
    };
    out.par_chunks_mut(d).enumerate().for_each_init(
        || vec![0f32; 4 * d],
        |buf, (r, o)| {
            o.copy_from_slice(&sae.b_dec);
            let (idx, vals) = codes.row(r);
            // Skip top-k padding; gather four rows at a time so four independent
            // memory streams are in flight (the gather is latency-bound otherwise).
            let live: Vec<(usize, f32)> = idx
                .iter()
                .zip(vals)
                .filter(|(i, _)| **i >= 0)
                .map(|(i, v)| (*i as usize, coeff(*i as usize, *v)))
                .collect();
            let (b01, b23) = buf.split_at_mut(2 * d);
            let (b0, b1) = b01.split_at_mut(d);
            let (b2, b3) = b23.split_at_mut(d);
            let mut quads = live.chunks_exact(4);
            for q in &mut quads {
                let r0 = decoder_row(w, direct, q[0].0, b0);
                let r1 = decoder_row(w, direct, q[1].0, b1);
                let r2 = decoder_row(w, direct, q[2].0, b2);
                let r3 = decoder_row(w, direct, q[3].0, b3);
                let (c0, c1, c2, c3) = (q[0].1, q[1].1, q[2].1, q[3].1);
                for j in 0..d {
                    o[j] += (c0 * r0[j] + c1 * r1[j]) + (c2 * r2[j] + c3 * r3[j]);
                }
            }
            for &(i, c) in quads.remainder() {
                let row = decoder_row(w, direct, i, b0);
                o.iter_mut().zip(row).for_each(|(a, b)| *a += c * b);
            }
            if let Some(dn) = denorm {
                let (s, t) = (dn.scale[r], dn.shift[r]);
                o.iter_mut().for_each(|a| *a = *a * s + t);
            }
        },
    );
    Ok(out)
}

/// Decoder row `i` as f32: a slice of the mapped matrix, or converted into `buf`.
#[inline]
fn decoder_row<'a>(
    w: &Matrix,
    direct: Option<&'a [f32]>,
    i: usize,
    buf: &'a mut [f32],
) -> &'a [f32] {
    let d = w.cols();
    match direct {
        Some(all) => &all[i * d..(i + 1) * d],
        None => {
            w.rows_f32(i..i + 1, buf);
            buf
        }
    }
}

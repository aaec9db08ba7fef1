//! Decode: per row, b_dec plus the sum of value x decoder row over the row's codes
//! (values divided by the decoder norm first for rescaled SAEs), then de-normalized.
//! Rows are independent, so they are spread over the rayon pool; decoder rows are
//! read in place when the matrix is aligned row-major f32, else converted one at a time.

use rayon::prelude::*;

use crate::codes::{Codes, Denorm};
use crate::error::Result;
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
    codes.check_decodable(l, denorm)?;
    let n = codes.n_rows();
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
    let simd = avx2_fma();
    out.par_chunks_mut(d).enumerate().for_each_init(
        || (vec![0f32; 4 * d], Vec::new()),
        |(buf, live), (r, o)| {
            o.copy_from_slice(&sae.b_dec);
            let (idx, vals) = codes.row(r);
            // Skip top-k padding; gather four rows at a time so four independent
            // memory streams are in flight (the gather is latency-bound otherwise).
            live.clear();
            live.extend(
                idx.iter()
                    .zip(vals)
                    .filter(|(i, _)| **i >= 0)
                    .map(|(i, v)| (*i as usize, coeff(*i as usize, *v))),
            );
            let (b01, b23) = buf.split_at_mut(2 * d);
            let (b0, b1) = b01.split_at_mut(d);
            let (b2, b3) = b23.split_at_mut(d);
            let quads = live.chunks_exact(4);
            let tail = quads.remainder();
            for (qi, q) in quads.enumerate() {
                let rows = [
                    decoder_row(w, direct, q[0].0, b0),
                    decoder_row(w, direct, q[1].0, b1),
                    decoder_row(w, direct, q[2].0, b2),
                    decoder_row(w, direct, q[3].0, b3),
                ];
                let c = [q[0].1, q[1].1, q[2].1, q[3].1];
                // The next quad's rows, prefetched while this one is summed (in place only).
                let next = match (direct, live.get(4 * qi + 4..)) {
                    (Some(all), Some([n0, n1, n2, n3, ..])) => {
                        Some([n0.0, n1.0, n2.0, n3.0].map(|i| all[i * d..].as_ptr()))
                    }
                    _ => None,
                };
                axpy4(o, rows, c, next, simd);
            }
            for &(i, c) in tail {
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

/// Whether AVX2 + FMA can run here (the crate is built for baseline x86-64).
fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// o += (c0 r0 + c1 r1) + (c2 r2 + c3 r3); `next` (rows of the next quad) is prefetched.
#[inline]
fn axpy4(o: &mut [f32], r: [&[f32]; 4], c: [f32; 4], next: Option<[*const f32; 4]>, simd: bool) {
    let d = o.len();
    assert!(r.iter().all(|x| x.len() == d));
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when AVX2 + FMA were detected; lengths checked above;
        // prefetch addresses need not be valid.
        unsafe { axpy4_avx2(o, r, c, next) };
        return;
    }
    let _ = (next, simd);
    for j in 0..d {
        o[j] += (c[0] * r[0][j] + c[1] * r[1][j]) + (c[2] * r[2][j] + c[3] * r[3][j]);
    }
}

/// [`axpy4`] with 8-wide FMA, one prefetch per 64-byte line of each next row.
///
/// # Safety
/// AVX2 and FMA must be available; every `r[i]` has `o.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy4_avx2(o: &mut [f32], r: [&[f32]; 4], c: [f32; 4], next: Option<[*const f32; 4]>) {
    use std::arch::x86_64::*;
    let d = o.len();
    let cv = c.map(|x| _mm256_set1_ps(x));
    let op = o.as_mut_ptr();
    let rp = r.map(|x| x.as_ptr());
    let mut j = 0;
    while j + 16 <= d {
        if let Some(n) = next {
            for p in n {
                // A prefetch is a hint: its address need not be valid.
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(j) as *const i8);
            }
        }
        for h in [j, j + 8] {
            // SAFETY: h + 8 <= j + 16 <= d, and `o` and every `r[i]` hold d values (the
            // function's contract), so each 8-wide unaligned load and store is in bounds.
            unsafe {
                let a = _mm256_fmadd_ps(
                    cv[1],
                    _mm256_loadu_ps(rp[1].add(h)),
                    _mm256_mul_ps(cv[0], _mm256_loadu_ps(rp[0].add(h))),
                );
                let b = _mm256_fmadd_ps(
                    cv[3],
                    _mm256_loadu_ps(rp[3].add(h)),
                    _mm256_mul_ps(cv[2], _mm256_loadu_ps(rp[2].add(h))),
                );
                _mm256_storeu_ps(
                    op.add(h),
                    _mm256_add_ps(_mm256_loadu_ps(op.add(h)), _mm256_add_ps(a, b)),
                );
            }
        }
        j += 16;
    }
    for j in j..d {
        o[j] += (c[0] * r[0][j] + c[1] * r[1][j]) + (c[2] * r[2][j] + c[3] * r[3][j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD path (16-wide body, scalar tail, prefetch of other rows) equals the
    /// portable one on exact integer data, for lengths around the vector width.
    #[test]
    fn axpy4_simd_matches_portable() {
        for d in [1usize, 15, 16, 17, 37, 64] {
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| (0..d).map(|j| ((j * 3 + r * 5) % 7) as f32 - 3.0).collect())
                .collect();
            let r = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            let c = [2.0, -1.0, 0.5, 4.0];
            let mut plain: Vec<f32> = (0..d).map(|j| j as f32).collect();
            let mut simd = plain.clone();
            axpy4(&mut plain, r, c, None, false);
            axpy4(&mut simd, r, c, Some(r.map(|x| x.as_ptr())), avx2_fma());
            assert_eq!(simd, plain, "d = {d}");
        }
    }
}

//! One pass over a GEMM tile `h` ([rows, t], row-major, without bias): adds b_enc,
//! applies the decoder-norm rescale, and selects latents.
//!
//! The hot loop works in groups of [`LANES`] values and only asks "does any value
//! of this group pass the row's cut-off?" with one compare per value, which the
//! compiler vectorizes. The compare is "unordered or greater" (`v > cut || v.is_nan()`),
//! so a NaN pre-activation takes the slow path and becomes an error instead of being
//! silently rejected.

use super::topk::TopKState;

/// Values tested per group in the fast path.
const LANES: usize = 8;

/// A non-finite pre-activation: (local row, latent, value).
pub(crate) type BadValue = (usize, usize, f32);

/// Whether `v` must leave the fast path: it passes `cut`, or it is NaN.
#[inline(always)]
fn passes(v: f32, cut: f32) -> bool {
    v > cut || v.is_nan()
}

/// Pre-activation of one latent: h + b, times the decoder norm when rescaling.
#[inline(always)]
fn pre<const RESCALE: bool>(h: f32, b: f32, s: f32) -> f32 {
    if RESCALE {
        (h + b) * s
    } else {
        h + b
    }
}

/// Streams tile `h` (latents `t0..t0 + t`) into the running top-k of every row.
/// `b` is b_enc of the tile; `s` the tile's decoder norms when `RESCALE`, else ignored.
pub(crate) fn scan_topk<const RESCALE: bool>(
    h: &[f32],
    t: usize,
    t0: usize,
    b: &[f32],
    s: &[f32],
    state: &mut TopKState,
) -> Result<(), BadValue> {
    debug_assert!(b.len() == t && (!RESCALE || s.len() == t));
    let s = if RESCALE { s } else { b };
    for (r, hr) in h.chunks_exact(t).enumerate() {
        let mut row = state.row(r);
        let mut cut = row.threshold();
        let mut offer = |j: usize, v: f32, cut: &mut f32| -> Result<(), BadValue> {
            if passes(v, *cut) {
                if !v.is_finite() {
                    return Err((r, t0 + j, v));
                }
                *cut = row.insert(v, (t0 + j) as u32);
            }
            Ok(())
        };
        let mut j = 0;
        while j + LANES <= t {
            let (hc, bc, sc) = (&hr[j..j + LANES], &b[j..j + LANES], &s[j..j + LANES]);
            let mut any = false;
            for l in 0..LANES {
                any |= passes(pre::<RESCALE>(hc[l], bc[l], sc[l]), cut);
            }
            if any {
                for l in 0..LANES {
                    offer(j + l, pre::<RESCALE>(hc[l], bc[l], sc[l]), &mut cut)?;
                }
            }
            j += LANES;
        }
        for jj in j..t {
            offer(jj, pre::<RESCALE>(hr[jj], b[jj], s[jj]), &mut cut)?;
        }
    }
    Ok(())
}

/// The kept entries of one tile for threshold activations, per row, latents ascending.
pub(crate) struct TileCsr {
    /// Tile number (tiles are concatenated in this order).
    pub(crate) tile: usize,
    /// `rows + 1` offsets into `indices`/`values`.
    pub(crate) row_ptr: Vec<usize>,
    pub(crate) indices: Vec<i32>,
    pub(crate) values: Vec<f32>,
}

/// Keeps h + b where it exceeds the latent's cut-off: max(threshold, 0) for JumpReLU
/// (strict >, and codes hold positive values only), 0 for ReLU (`cuts` = None).
pub(crate) fn scan_threshold(
    h: &[f32],
    t: usize,
    tile: usize,
    t0: usize,
    b: &[f32],
    cuts: Option<&[f32]>,
) -> Result<TileCsr, BadValue> {
    let rows = h.len().checked_div(t).unwrap_or(0);
    let mut out = TileCsr {
        tile,
        row_ptr: Vec::with_capacity(rows + 1),
        indices: Vec::new(),
        values: Vec::new(),
    };
    out.row_ptr.push(0);
    let zeros = [0f32; LANES];
    for (r, hr) in h.chunks_exact(t).enumerate() {
        let mut keep = |j: usize, v: f32, cut: f32| -> Result<(), BadValue> {
            if passes(v, cut) {
                if !v.is_finite() {
                    return Err((r, t0 + j, v));
                }
                out.indices.push((t0 + j) as i32);
                out.values.push(v);
            }
            Ok(())
        };
        let mut j = 0;
        while j + LANES <= t {
            let (hc, bc) = (&hr[j..j + LANES], &b[j..j + LANES]);
            let cc = cuts.map_or(&zeros[..], |c| &c[j..j + LANES]);
            let mut any = false;
            for l in 0..LANES {
                any |= passes(hc[l] + bc[l], cc[l]);
            }
            if any {
                for l in 0..LANES {
                    keep(j + l, hc[l] + bc[l], cc[l])?;
                }
            }
            j += LANES;
        }
        for jj in j..t {
            keep(jj, hr[jj] + b[jj], cuts.map_or(0.0, |c| c[jj]))?;
        }
        out.row_ptr.push(out.indices.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_preactivation_is_reported_not_dropped() {
        // 1 row, 10 latents: NaN at latent 3 + t0 in the vector part, inf at 9 in the tail.
        let mut h = vec![-1.0f32; 10];
        h[3] = f32::NAN;
        let b = vec![0.0f32; 10];
        let mut st = TopKState::new(1, 2);
        assert_eq!(
            scan_topk::<false>(&h, 10, 100, &b, &[], &mut st).map_err(|e| (e.0, e.1)),
            Err((0, 103))
        );
        h[3] = -1.0;
        h[9] = f32::INFINITY;
        let err = scan_threshold(&h, 10, 0, 100, &b, None)
            .err()
            .map(|e| (e.0, e.1));
        assert_eq!(err, Some((0, 109)));
    }

    #[test]
    fn threshold_cut_is_strict() {
        let h = vec![1.0f32, 2.0, 3.0, 0.5];
        let b = vec![0.0f32; 4];
        let cuts = vec![1.0f32, 1.0, 1.0, 0.0];
        let t = scan_threshold(&h, 4, 0, 0, &b, Some(&cuts)).unwrap();
        assert_eq!(t.indices, vec![1, 2, 3]);
        assert_eq!(t.row_ptr, vec![0, 3]);
    }
}

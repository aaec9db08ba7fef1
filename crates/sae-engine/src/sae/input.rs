//! The input side of encoding, shared by every engine: the finiteness check, the
//! normalization and the b_dec subtraction, in the f32 arithmetic the CPU reference
//! encodes from. Engines that split an SAE (see `crate::latent_split`) prepare the input
//! once here and hand the prepared rows to every part, so all parts see the same bits.

use rayon::prelude::*;

use super::{Normalization, Sae};
use crate::codes::Denorm;
use crate::error::{Error, Result};

impl Sae {
    /// Checks `x` (`[rows, d_in]` row-major) for NaN and infinity (naming the row as
    /// `row_offset` + local row), normalizes each row and subtracts b_dec when the SAE
    /// says so. Returns the prepared rows and the constants that undo the normalization
    /// (None for the identity).
    pub fn prepare_input(
        &self,
        x: &[f32],
        rows: usize,
        row_offset: u64,
    ) -> Result<(Vec<f32>, Option<Denorm>)> {
        let d = self.d_in();
        if Some(x.len()) != rows.checked_mul(d) {
            return Err(Error::invalid(format!(
                "encode: input holds {} values, expected {rows} rows x d_in {d}",
                x.len()
            )));
        }
        let non_finite = |buf: &[f32]| {
            buf.par_chunks(d)
                .position_first(|row| row.iter().any(|v| !v.is_finite()))
        };
        if let Some(r) = non_finite(x) {
            return Err(Error::NonFinite {
                context: "encode input".into(),
                row: row_offset + r as u64,
            });
        }
        let mut xp = x.to_vec();
        let mut scale = vec![1f32; rows];
        let mut shift = vec![0f32; rows];
        let norm = self.normalization;
        let b_dec = &self.b_dec;
        xp.par_chunks_mut(d)
            .zip(scale.par_iter_mut().zip(shift.par_iter_mut()))
            .for_each(|(row, (sc, sh))| {
                if let Some(dn) = norm.apply(row) {
                    *sc = dn.scale;
                    *sh = dn.shift;
                }
                if self.subtract_b_dec {
                    row.iter_mut().zip(b_dec).for_each(|(v, b)| *v -= b);
                }
            });
        // A constant row under layer_norm with eps = 0 divides by zero.
        if let Some(r) = non_finite(&xp) {
            return Err(Error::NonFinite {
                context: "encode input after normalization".into(),
                row: row_offset + r as u64,
            });
        }
        let denorm = (norm != Normalization::None).then_some(Denorm { scale, shift });
        Ok((xp, denorm))
    }
}

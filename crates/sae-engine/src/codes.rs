//! Sparse codes produced by encoding: fixed-width top-k rows or CSR.
//! File I/O for codes lives in `crate::io::codes_file`.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::sae::RowDenorm;

/// Sparse latent activations of `n` rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Codes {
    /// TopK SAEs: `indices`/`values` are `[n, k]`, each row ordered by value, largest first
    /// (ties: smaller latent index first). A row with fewer than k positive
    /// pre-activations is padded with index -1 and value 0.0.
    TopK {
        /// Number of rows.
        n: usize,
        /// Codes per row.
        k: usize,
        /// `[n, k]` latent indices, -1 for padding.
        indices: Vec<i32>,
        /// `[n, k]` activation values, 0.0 for padding.
        values: Vec<f32>,
    },
    /// Threshold SAEs (ReLU, JumpReLU): row i's entries are `row_ptr[i]..row_ptr[i+1]`,
    /// latent indices ascending, values > 0.
    Csr {
        /// Number of rows.
        n: usize,
        /// `[n + 1]` offsets into `indices`/`values`, starting at 0, non-decreasing.
        row_ptr: Vec<i64>,
        /// Latent index of each entry.
        indices: Vec<i32>,
        /// Activation value of each entry.
        values: Vec<f32>,
    },
}

impl Codes {
    /// Empty codes of the kind an SAE produces (`k = Some(k)` for TopK).
    pub fn empty(k: Option<usize>) -> Codes {
        match k {
            Some(k) => Codes::TopK {
                n: 0,
                k,
                indices: vec![],
                values: vec![],
            },
            None => Codes::Csr {
                n: 0,
                row_ptr: vec![0],
                indices: vec![],
                values: vec![],
            },
        }
    }

    /// `rows` top-k rows of width `k`, each filled in parallel by `fill(row, indices,
    /// values)`; the slots it leaves are padding (index -1, value 0).
    pub fn topk_from_rows(
        rows: usize,
        k: usize,
        fill: impl Fn(usize, &mut [i32], &mut [f32]) + Sync + Send,
    ) -> Codes {
        let mut indices = vec![-1i32; rows * k];
        let mut values = vec![0f32; rows * k];
        if k > 0 {
            indices
                .par_chunks_mut(k)
                .zip(values.par_chunks_mut(k))
                .enumerate()
                .for_each(|(r, (oi, ov))| fill(r, oi, ov));
        }
        Codes::TopK {
            n: rows,
            k,
            indices,
            values,
        }
    }

    /// Checks codes handed to a decoder of `n_latents` latents, and that `denorm` (when
    /// given) covers every row; errors start with "decode:".
    pub fn check_decodable(&self, n_latents: usize, denorm: Option<&Denorm>) -> Result<()> {
        self.validate(n_latents)
            .map_err(|e| Error::invalid(format!("decode: {e}")))?;
        let n = self.n_rows();
        match denorm {
            Some(dn) if dn.scale.len() != n || dn.shift.len() != n => Err(Error::invalid(format!(
                "decode: normalization constants cover {} / {} rows, the codes have {n}",
                dn.scale.len(),
                dn.shift.len()
            ))),
            _ => Ok(()),
        }
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        match self {
            Codes::TopK { n, .. } | Codes::Csr { n, .. } => *n,
        }
    }

    /// Row `i`'s (indices, values), padding included for TopK (index -1, value 0).
    pub fn row(&self, i: usize) -> (&[i32], &[f32]) {
        match self {
            Codes::TopK {
                k, indices, values, ..
            } => (&indices[i * k..(i + 1) * k], &values[i * k..(i + 1) * k]),
            Codes::Csr {
                row_ptr,
                indices,
                values,
                ..
            } => {
                let (a, b) = (row_ptr[i] as usize, row_ptr[i + 1] as usize);
                (&indices[a..b], &values[a..b])
            }
        }
    }

    /// Active (value > 0) entries of row `i`.
    pub fn active(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let (idx, val) = self.row(i);
        idx.iter()
            .zip(val)
            .filter(|(i, v)| **i >= 0 && **v > 0.0)
            .map(|(i, v)| (*i as usize, *v))
    }

    /// Number of active entries in row `i` (its L0).
    pub fn l0(&self, i: usize) -> usize {
        self.active(i).count()
    }

    /// Appends `other`'s rows (same kind and k).
    pub fn append(&mut self, other: &Codes) -> Result<()> {
        match (self, other) {
            (
                Codes::TopK {
                    n,
                    k,
                    indices,
                    values,
                },
                Codes::TopK {
                    n: n2,
                    k: k2,
                    indices: i2,
                    values: v2,
                },
            ) if k == k2 => {
                *n += n2;
                indices.extend_from_slice(i2);
                values.extend_from_slice(v2);
                Ok(())
            }
            (
                Codes::Csr {
                    n,
                    row_ptr,
                    indices,
                    values,
                },
                Codes::Csr {
                    n: n2,
                    row_ptr: r2,
                    indices: i2,
                    values: v2,
                },
            ) => {
                let base = *row_ptr.last().unwrap_or(&0);
                row_ptr.extend(r2.iter().skip(1).map(|p| p + base));
                *n += n2;
                indices.extend_from_slice(i2);
                values.extend_from_slice(v2);
                Ok(())
            }
            _ => Err(Error::Incompatible(
                "cannot append codes of a different kind or k".into(),
            )),
        }
    }

    /// Every stored (latent index, value) pair's arrays, padding (-1) included.
    pub fn entries(&self) -> (&[i32], &[f32]) {
        match self {
            Codes::TopK {
                indices, values, ..
            }
            | Codes::Csr {
                indices, values, ..
            } => (indices, values),
        }
    }

    /// [`Codes::entries`] with the values writable (indices stay as they are, so the
    /// layout stays valid).
    pub fn entries_mut(&mut self) -> (&[i32], &mut [f32]) {
        match self {
            Codes::TopK {
                indices, values, ..
            }
            | Codes::Csr {
                indices, values, ..
            } => (indices, values),
        }
    }

    /// Checks internal consistency against `n_latents` (lengths, index range, row_ptr monotone).
    pub fn validate(&self, n_latents: usize) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        match self {
            Codes::TopK {
                n,
                k,
                indices,
                values,
            } => {
                if indices.len() != n * k || values.len() != n * k {
                    return bad(format!(
                        "top-k codes: expected {n}x{k} indices and values, got {} and {}",
                        indices.len(),
                        values.len()
                    ));
                }
            }
            Codes::Csr {
                n,
                row_ptr,
                indices,
                values,
            } => {
                if row_ptr.len() != n + 1 || row_ptr[0] != 0 {
                    return bad(format!(
                        "CSR codes: row_ptr must have {} entries starting at 0",
                        n + 1
                    ));
                }
                if row_ptr.windows(2).any(|w| w[1] < w[0]) {
                    return bad("CSR codes: row_ptr decreases".into());
                }
                let nnz = *row_ptr.last().unwrap() as usize;
                if indices.len() != nnz || values.len() != nnz {
                    return bad(format!(
                        "CSR codes: row_ptr says {nnz} entries, got {} indices and {} values",
                        indices.len(),
                        values.len()
                    ));
                }
            }
        }
        let idx = match self {
            Codes::TopK { indices, .. } | Codes::Csr { indices, .. } => indices,
        };
        if let Some(i) = idx.iter().find(|i| **i < -1 || **i >= n_latents as i32) {
            return bad(format!(
                "codes hold latent index {i}, outside 0..{n_latents}"
            ));
        }
        Ok(())
    }
}

/// Per-row constants that undo input normalization (`x = out * scale + shift`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Denorm {
    /// Per-row factor: `[rows]`.
    pub scale: Vec<f32>,
    /// Per-row offset added after scaling: `[rows]`.
    pub shift: Vec<f32>,
}

impl Denorm {
    /// Row i's constants.
    pub fn row(&self, i: usize) -> RowDenorm {
        RowDenorm {
            scale: self.scale[i],
            shift: self.shift[i],
        }
    }
    /// Appends another batch's constants.
    pub fn append(&mut self, other: &Denorm) {
        self.scale.extend_from_slice(&other.scale);
        self.shift.extend_from_slice(&other.shift);
    }
}

/// The result of encoding a batch: codes, plus the normalization constants when
/// the SAE normalizes its input (needed to decode back into the residual scale).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The latent activations.
    pub codes: Codes,
    /// Per-row constants that undo normalization; None when the SAE does not normalize.
    pub denorm: Option<Denorm>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_append_offsets_rows() {
        let mut a = Codes::Csr {
            n: 1,
            row_ptr: vec![0, 2],
            indices: vec![1, 3],
            values: vec![0.5, 0.25],
        };
        let b = Codes::Csr {
            n: 2,
            row_ptr: vec![0, 0, 1],
            indices: vec![0],
            values: vec![2.0],
        };
        a.append(&b).unwrap();
        assert_eq!(a.n_rows(), 3);
        assert_eq!(a.row(2), (&[0][..], &[2.0f32][..]));
        a.validate(4).unwrap();
        assert!(a.validate(3).is_err());
    }

    #[test]
    fn topk_padding_is_inactive() {
        let c = Codes::TopK {
            n: 1,
            k: 3,
            indices: vec![5, 2, -1],
            values: vec![1.0, 0.5, 0.0],
        };
        assert_eq!(c.l0(0), 2);
        assert_eq!(c.active(0).collect::<Vec<_>>(), vec![(5, 1.0), (2, 0.5)]);
    }
}

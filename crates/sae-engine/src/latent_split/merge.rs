//! The backend-independent halves of latent sharding: shards' codes merged into the whole
//! SAE's codes (exact top-k merge, CSR concatenation), whole-SAE codes split back into
//! shard-local codes, and the per-latent slices of statistics each shard accumulates.

use std::ops::Range;

use rayon::prelude::*;

use crate::codes::Codes;
use crate::error::{Error, Result};
use crate::stats::LatentStats;

/// The global top-k of `rows` rows from each shard's exact top-k. `parts[s]` holds shard
/// `s`'s codes with shard-local indices (latent `offsets[s] + i` globally), each row sorted
/// by value descending, ties by smaller index, padded with index -1 after its entries.
/// Ties across shards go to the smaller global latent, as everywhere.
pub fn merge_topk(parts: &[Codes], offsets: &[usize], rows: usize, k: usize) -> Result<Codes> {
    for p in parts {
        if !matches!(p, Codes::TopK { .. }) || p.n_rows() != rows {
            return Err(Error::invalid(format!(
                "latent shard returned {} rows of CSR or top-k codes; expected {rows} top-k rows",
                p.n_rows()
            )));
        }
    }
    Ok(Codes::topk_from_rows(rows, k, |r, oi, ov| {
        merge_row(parts, offsets, r, oi, ov)
    }))
}

/// k-way merge of row `r` by (value descending, global index ascending).
fn merge_row(parts: &[Codes], offsets: &[usize], r: usize, oi: &mut [i32], ov: &mut [f32]) {
    let lists: Vec<(&[i32], &[f32])> = parts.iter().map(|p| p.row(r)).collect();
    let mut heads = vec![0usize; lists.len()];
    for slot in 0..oi.len() {
        let mut best: Option<(usize, f32, i64)> = None;
        for (s, (idx, val)) in lists.iter().enumerate() {
            let h = heads[s];
            if h >= idx.len() || idx[h] < 0 {
                continue;
            }
            let (v, g) = (val[h], offsets[s] as i64 + idx[h] as i64);
            if best.is_none_or(|(_, bv, bg)| v > bv || (v == bv && g < bg)) {
                best = Some((s, v, g));
            }
        }
        let Some((s, v, g)) = best else { break };
        heads[s] += 1;
        oi[slot] = g as i32;
        ov[slot] = v;
    }
}

/// The shards' CSR codes side by side: per row, shard 0's entries, then shard 1's, ...,
/// indices shifted by the shard's offset (ascending, as each shard's are).
pub fn concat_csr(parts: &[Codes], offsets: &[usize], rows: usize) -> Result<Codes> {
    let mut row_ptr = Vec::with_capacity(rows + 1);
    let mut indices = Vec::new();
    let mut values = Vec::new();
    for p in parts {
        if !matches!(p, Codes::Csr { .. }) || p.n_rows() != rows {
            return Err(Error::invalid(format!(
                "latent shard returned {} rows of top-k or CSR codes; expected {rows} CSR rows",
                p.n_rows()
            )));
        }
    }
    row_ptr.push(0i64);
    for r in 0..rows {
        for (p, off) in parts.iter().zip(offsets) {
            let (idx, val) = p.row(r);
            indices.extend(idx.iter().map(|i| i + *off as i32));
            values.extend_from_slice(val);
        }
        row_ptr.push(indices.len() as i64);
    }
    Ok(Codes::Csr {
        n: rows,
        row_ptr,
        indices,
        values,
    })
}

/// Whole-SAE codes as one CSR code set per shard, with shard-local indices: every stored
/// entry (any value) whose latent falls in the shard's range, in the row's order. Top-k
/// padding is dropped. `codes` must be valid for the whole SAE.
pub fn split_codes(codes: &Codes, ranges: &[Range<usize>]) -> Vec<Codes> {
    let n = codes.n_rows();
    ranges
        .par_iter()
        .map(|range| {
            let mut row_ptr = Vec::with_capacity(n + 1);
            let mut indices = Vec::new();
            let mut values = Vec::new();
            row_ptr.push(0i64);
            for r in 0..n {
                let (idx, val) = codes.row(r);
                for (i, v) in idx.iter().zip(val) {
                    if *i >= 0 && range.contains(&(*i as usize)) {
                        indices.push(*i - range.start as i32);
                        values.push(*v);
                    }
                }
                row_ptr.push(indices.len() as i64);
            }
            Codes::Csr {
                n,
                row_ptr,
                indices,
                values,
            }
        })
        .collect()
}

/// The per-latent part of `stats` for latents `range`, to accumulate one shard into: the
/// running sums, counts and maxima of those latents and the token count, so the shard adds
/// to them exactly as the whole would. `with_norms` hands it the norm histogram (one
/// shard carries it; accumulate may drop it). Document sums stay with the whole.
pub fn stats_part(stats: &LatentStats, range: Range<usize>, with_norms: bool) -> LatentStats {
    LatentStats {
        fingerprint: stats.fingerprint.clone(),
        n_tokens: stats.n_tokens,
        sum: stats.sum[range.clone()].to_vec(),
        sum_sq: stats.sum_sq[range.clone()].to_vec(),
        n_active: stats.n_active[range.clone()].to_vec(),
        max: stats.max[range].to_vec(),
        tokens: stats.tokens,
        norms: if with_norms {
            stats.norms.clone()
        } else {
            None
        },
        outlier_factor: stats.outlier_factor,
        docs: None,
    }
}

/// Writes the shards' accumulated parts back into `stats` (parts in shard order, the first
/// carrying the norm histogram): the per-latent slices concatenated, the token count,
/// digest and histogram from the first. Every part must have counted the same tokens.
pub fn join_stats(
    stats: &mut LatentStats,
    ranges: &[Range<usize>],
    mut parts: Vec<LatentStats>,
) -> Result<()> {
    let n_tokens = parts.first().map_or(stats.n_tokens, |p| p.n_tokens);
    if let Some(p) = parts.iter().find(|p| p.n_tokens != n_tokens) {
        return Err(Error::invalid(format!(
            "latent shards counted {} and {} tokens in one batch",
            n_tokens, p.n_tokens
        )));
    }
    for (p, r) in parts.iter().zip(ranges) {
        stats.sum[r.clone()].copy_from_slice(&p.sum);
        stats.sum_sq[r.clone()].copy_from_slice(&p.sum_sq);
        stats.n_active[r.clone()].copy_from_slice(&p.n_active);
        stats.max[r.clone()].copy_from_slice(&p.max);
    }
    if let Some(first) = parts.first_mut() {
        stats.n_tokens = first.n_tokens;
        stats.tokens = first.tokens;
        stats.norms = first.norms.take();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topk(k: usize, rows: &[&[(i32, f32)]]) -> Codes {
        let mut indices = vec![-1; rows.len() * k];
        let mut values = vec![0.0; rows.len() * k];
        for (r, row) in rows.iter().enumerate() {
            for (j, (i, v)) in row.iter().enumerate() {
                indices[r * k + j] = *i;
                values[r * k + j] = *v;
            }
        }
        Codes::TopK {
            n: rows.len(),
            k,
            indices,
            values,
        }
    }

    #[test]
    fn topk_merge_breaks_ties_by_global_index_across_shards() {
        // Shard 0 = latents 0..3, shard 1 = 3..5. Row 0: 2.0 at global 1 and 3 (tie across
        // the boundary: 1 first), 1.0 at global 2 and 4. Row 1: only shard 1 fires.
        let a = topk(3, &[&[(1, 2.0), (2, 1.0)], &[]]);
        let b = topk(2, &[&[(0, 2.0), (1, 1.0)], &[(1, 0.5)]]);
        let m = merge_topk(&[a.clone(), b.clone()], &[0, 3], 2, 3).unwrap();
        assert_eq!(m, topk(3, &[&[(1, 2.0), (3, 2.0), (2, 1.0)], &[(4, 0.5)]]));
        // The shard order given does not matter, only the offsets.
        let m2 = merge_topk(&[b, a], &[3, 0], 2, 3).unwrap();
        assert_eq!(m, m2);
    }

    #[test]
    fn shard_kinds_must_match() {
        let csr = Codes::empty(None);
        assert!(merge_topk(std::slice::from_ref(&csr), &[0], 0, 2).is_err());
        assert!(concat_csr(&[Codes::empty(Some(2))], &[0], 0).is_err());
        assert!(concat_csr(&[csr], &[0], 1).is_err());
    }

    #[test]
    fn split_then_concat_gives_back_csr_codes() {
        let codes = Codes::Csr {
            n: 3,
            row_ptr: vec![0, 3, 3, 5],
            indices: vec![0, 4, 6, 2, 3],
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0],
        };
        let ranges = [0..3, 3..5, 5..7];
        let parts = split_codes(&codes, &ranges);
        assert_eq!(parts[1].row(0), (&[1][..], &[2.0f32][..]));
        assert_eq!(parts[2].row(2), (&[][..], &[][..]));
        assert_eq!(concat_csr(&parts, &[0, 3, 5], 3).unwrap(), codes);
    }

    #[test]
    fn split_drops_padding_and_keeps_any_value() {
        let codes = topk(3, &[&[(4, -1.0), (0, 0.5)]]);
        let parts = split_codes(&codes, &[0..2, 2..5]);
        assert_eq!(parts[0].row(0), (&[0][..], &[0.5f32][..]));
        assert_eq!(parts[1].row(0), (&[2][..], &[-1.0f32][..]));
    }
}

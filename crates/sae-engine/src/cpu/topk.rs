//! Streaming per-row top-k with the deterministic tie rule (larger value first,
//! then smaller latent index).
//!
//! Each encode worker owns one [`TopKState`] and scans its latent tiles in
//! ascending latent order, so within one state a newly offered latent always
//! has a larger index than every latent already kept. That makes the tie rule
//! cheap: a new value equal to a kept one goes after it, and a new value equal
//! to the k-th one is rejected. States of different workers are merged at the
//! end with the full (value, index) comparison, so the result does not depend
//! on how tiles were spread over workers or on the tile size.

use crate::codes::Codes;

/// Running top-k of `rows` rows: each row keeps at most `k` strictly positive
/// (value, latent) pairs, sorted by value descending, equal values by latent ascending.
pub(crate) struct TopKState {
    k: usize,
    vals: Vec<f32>,
    idx: Vec<u32>,
    len: Vec<u32>,
}

/// One row of a [`TopKState`], borrowed for a scan.
pub(crate) struct RowTopK<'a> {
    vals: &'a mut [f32],
    idx: &'a mut [u32],
    len: &'a mut u32,
}

impl TopKState {
    pub(crate) fn new(rows: usize, k: usize) -> Self {
        TopKState {
            k,
            vals: vec![0.0; rows * k],
            idx: vec![0; rows * k],
            len: vec![0; rows],
        }
    }

    /// Row `r` for scanning.
    #[inline]
    pub(crate) fn row(&mut self, r: usize) -> RowTopK<'_> {
        let k = self.k;
        RowTopK {
            vals: &mut self.vals[r * k..(r + 1) * k],
            idx: &mut self.idx[r * k..(r + 1) * k],
            len: &mut self.len[r],
        }
    }

    /// Row `r`'s kept pairs, best first.
    fn kept(&self, r: usize) -> (&[f32], &[u32]) {
        let (a, n) = (r * self.k, self.len[r] as usize);
        (&self.vals[a..a + n], &self.idx[a..a + n])
    }
}

impl RowTopK<'_> {
    /// The value a new latent must strictly exceed to enter: 0 while the row has
    /// fewer than k entries (TopK then ReLU keeps only positive values), else the k-th value.
    #[inline]
    pub(crate) fn threshold(&self) -> f32 {
        let n = *self.len as usize;
        if n == self.vals.len() {
            self.vals[n - 1]
        } else {
            0.0
        }
    }

    /// Inserts `(v, latent)` and returns the new threshold.
    /// Requires `v > self.threshold()` and `latent` larger than every kept latent.
    #[inline]
    pub(crate) fn insert(&mut self, v: f32, latent: u32) -> f32 {
        let k = self.vals.len();
        let n = *self.len as usize;
        // First kept value strictly below v: equal values stay in front (smaller index).
        let pos = self.vals[..n].partition_point(|&x| x >= v);
        let end = if n == k { k - 1 } else { n };
        self.vals.copy_within(pos..end, pos + 1);
        self.idx.copy_within(pos..end, pos + 1);
        self.vals[pos] = v;
        self.idx[pos] = latent;
        if n < k {
            *self.len += 1;
        }
        self.threshold()
    }
}

/// Merges the workers' states into fixed-width codes: per row the k best pairs by
/// (value descending, latent ascending), padded with index -1 and value 0.
pub(crate) fn merge_states(states: &[TopKState], rows: usize, k: usize) -> Codes {
    Codes::topk_from_rows(rows, k, |r, oi, ov| merge_row(states, r, oi, ov))
}

/// k-way merge of one row; the worker count is small, so a linear scan of the heads is enough.
fn merge_row(states: &[TopKState], r: usize, oi: &mut [i32], ov: &mut [f32]) {
    let lists: Vec<(&[f32], &[u32])> = states.iter().map(|s| s.kept(r)).collect();
    let mut heads = vec![0usize; lists.len()];
    for slot in 0..oi.len() {
        let mut best: Option<(usize, f32, u32)> = None;
        for (w, (vals, idx)) in lists.iter().enumerate() {
            let h = heads[w];
            if h < vals.len() {
                let (v, i) = (vals[h], idx[h]);
                let better = match best {
                    None => true,
                    Some((_, bv, bi)) => v > bv || (v == bv && i < bi),
                };
                if better {
                    best = Some((w, v, i));
                }
            }
        }
        match best {
            Some((w, v, i)) => {
                heads[w] += 1;
                oi[slot] = i as i32;
                ov[slot] = v;
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keeps_k_largest_positive_with_ties_by_index() {
        let mut s = TopKState::new(1, 3);
        let offered = [
            (0.5f32, 0u32),
            (2.0, 1),
            (0.5, 2),
            (2.0, 3),
            (0.5, 4),
            (1.0, 5),
        ];
        {
            let mut row = s.row(0);
            for (v, i) in offered {
                if v > row.threshold() {
                    row.insert(v, i);
                }
            }
        }
        let codes = merge_states(&[s], 1, 3);
        assert_eq!(codes.row(0), (&[1, 3, 5][..], &[2.0f32, 2.0, 1.0][..]));
    }

    #[test]
    fn merge_breaks_ties_across_workers_by_index() {
        let mut a = TopKState::new(1, 3);
        let mut b = TopKState::new(1, 3);
        a.row(0).insert(1.0, 7);
        b.row(0).insert(1.0, 2);
        b.row(0).insert(0.25, 9);
        let codes = merge_states(&[a, b], 1, 3);
        assert_eq!(codes.row(0), (&[2, 7, 9][..], &[1.0f32, 1.0, 0.25][..]));
        let short = merge_states(&[TopKState::new(1, 2)], 1, 2);
        assert_eq!(short.row(0), (&[-1, -1][..], &[0.0f32, 0.0][..]));
    }

    /// The row's top k by sorting: positive values, larger first, equal values by smaller
    /// latent, padded with (-1, 0.0).
    fn sorted_reference(row: &[f32], k: usize) -> (Vec<i32>, Vec<f32>) {
        let mut kept: Vec<(f32, i32)> = (0..row.len())
            .filter(|&l| row[l] > 0.0)
            .map(|l| (row[l], l as i32))
            .collect();
        kept.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        kept.truncate(k);
        let mut idx: Vec<i32> = kept.iter().map(|p| p.1).collect();
        let mut val: Vec<f32> = kept.iter().map(|p| p.0).collect();
        idx.resize(k, -1);
        val.resize(k, 0.0);
        (idx, val)
    }

    /// (rows, cols, k, workers, tile, values): k is 1, cols or in between; values are
    /// quarter steps in [-2, 2], so ties (and rows with fewer than k positives) are common.
    fn case() -> impl Strategy<Value = (usize, usize, usize, usize, usize, Vec<f32>)> {
        (1usize..6, 1usize..300, 0usize..3, 1usize..5, 1usize..70).prop_flat_map(
            |(rows, cols, kind, workers, tile)| {
                let k = match kind {
                    0 => Just(1).boxed(),
                    1 => Just(cols).boxed(),
                    _ => (1..=cols).boxed(),
                };
                let vals =
                    prop::collection::vec((-8i32..=8).prop_map(|q| q as f32 * 0.25), rows * cols);
                (Just(rows), Just(cols), k, Just(workers), Just(tile), vals)
            },
        )
    }

    proptest! {
        // The primitive as the encoder drives it: latent tiles dealt round-robin to workers,
        // each scanning its tiles in ascending order, then the merge; the result must not
        // depend on the dealing and must equal the sorted reference.
        #[test]
        fn streaming_top_k_equals_a_sorted_reference((rows, cols, k, workers, tile, vals) in case()) {
            let mut states: Vec<TopKState> = (0..workers).map(|_| TopKState::new(rows, k)).collect();
            for (t, l0) in (0..cols).step_by(tile).enumerate() {
                let state = &mut states[t % workers];
                for r in 0..rows {
                    let mut row = state.row(r);
                    let mut thr = row.threshold();
                    for l in l0..(l0 + tile).min(cols) {
                        let v = vals[r * cols + l];
                        if v > thr {
                            thr = row.insert(v, l as u32);
                        }
                    }
                }
            }
            let codes = merge_states(&states, rows, k);
            for r in 0..rows {
                let (idx, val) = sorted_reference(&vals[r * cols..(r + 1) * cols], k);
                prop_assert_eq!(codes.row(r), (&idx[..], &val[..]), "row {}", r);
            }
        }
    }
}

//! The sharded engine over CPU shards against the unsharded CPU engine.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::cpu::reference::SaeBuilder;
use crate::cpu::CpuEngine;
use crate::dtype::DType;
use crate::sae::Normalization;
use crate::workflow::rng::Rng;

/// How test values are drawn.
#[derive(Clone, Copy)]
enum Values {
    /// Small integers: every dot product and decode sum is exact in f32, whatever the
    /// summation order, so any shape compares bit for bit (and ties abound).
    Integer,
    /// Normal floats: bit-for-bit equality needs the same per-latent summation order.
    Normal,
}

/// `n` values of kind `kind`, integers in -span..=span or normals of deviation span / 4.
fn draw(rng: &mut Rng, kind: Values, n: usize, span: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match kind {
            Values::Integer => rng.below(2 * span + 1) as f32 - span as f32,
            Values::Normal => (rng.normal() * span as f64 / 4.0) as f32,
        })
        .collect()
}

/// A random SAE of `l` latents and width `d`, with latents `twins[i].1` copies of
/// `twins[i].0` (same encoder row and bias, so their pre-activations tie exactly).
fn sae(
    l: usize,
    d: usize,
    activation: Activation,
    (kind, seed): (Values, u64),
    twins: &[(usize, usize)],
    tweak: impl FnOnce(SaeBuilder) -> SaeBuilder,
) -> Arc<Sae> {
    let mut rng = Rng::new(seed);
    let mut w_enc = draw(&mut rng, kind, l * d, 3);
    let w_dec = draw(&mut rng, kind, l * d, 2);
    let mut b_enc = draw(&mut rng, kind, l, 2);
    let b_dec = draw(&mut rng, kind, d, 1);
    // Half-integers: a JumpReLU cut never ties an integer pre-activation.
    let threshold = draw(&mut rng, kind, l, 2)
        .into_iter()
        .map(|t| t.abs() + 0.5)
        .collect();
    for &(a, b) in twins {
        let row = w_enc[a * d..(a + 1) * d].to_vec();
        w_enc[b * d..(b + 1) * d].copy_from_slice(&row);
        b_enc[b] = b_enc[a];
    }
    let mut b = SaeBuilder::new(l, d, w_enc, w_dec)
        .b_enc(b_enc)
        .b_dec(b_dec)
        .activation(activation);
    if activation == Activation::JumpRelu {
        b = b.threshold(threshold);
    }
    Arc::new(tweak(b).build().unwrap())
}

fn input(rows: usize, d: usize, (kind, seed): (Values, u64)) -> Vec<f32> {
    draw(&mut Rng::new(seed ^ 0xabc), kind, rows * d, 3)
}

fn cpu(sae: &Arc<Sae>) -> CpuEngine {
    let opts = EngineOptions {
        tile_latents: 5,
        ..EngineOptions::default()
    };
    CpuEngine::new(sae.clone(), &opts).unwrap()
}

/// CPU shards of the given sizes, each encoded as one tile (the whole takes tiles of 5).
fn sharded(sae: &Arc<Sae>, sizes: &[usize]) -> ShardedEngine {
    let split = LatentSplit::from_sizes(sizes).unwrap();
    ShardedEngine::new(sae.clone(), &split, |_, part| {
        Ok(Box::new(CpuEngine::new(part, &EngineOptions::default())?))
    })
    .unwrap()
}

/// Encode equal bit for bit, decode within f32 rounding of the terms' magnitude, and two
/// batches of statistics (one masked) equal bit for bit.
fn check(sae: &Arc<Sae>, sizes: &[usize], rows: usize, data: (Values, u64)) {
    let (whole, parts) = (cpu(sae), sharded(sae, sizes));
    let d = sae.d_in();
    let x = input(rows, d, data);
    let want = whole.encode(&x, rows, 7).unwrap();
    let got = parts.encode(&x, rows, 7).unwrap();
    assert_eq!(got, want, "encode, shards {sizes:?}");

    let dec_want = whole.decode(&want.codes, want.denorm.as_ref()).unwrap();
    let dec_got = parts.decode(&want.codes, want.denorm.as_ref()).unwrap();
    if matches!(data.0, Values::Integer) && sae.scales.is_empty() {
        assert_eq!(dec_got, dec_want, "decode of exact sums, shards {sizes:?}");
    }
    // Otherwise the partial sums are grouped per shard: a few ulps of the sum of |terms|
    // (b_dec and every value x decoder row), de-normalized.
    let codes = sae.codes_for_decoding(&want.codes);
    let norms = sae
        .rescale_acts_by_decoder_norm
        .then(|| sae.w_dec.row_norms());
    for r in 0..rows {
        let (sc, sh) = want
            .denorm
            .as_ref()
            .map_or((1.0, 0.0), |dn| (dn.scale[r], dn.shift[r]));
        for c in 0..d {
            let mut mag = sae.b_dec[c].abs();
            for (i, v) in codes.active(r) {
                let v = norms.as_ref().map_or(v, |n| v / n[i]);
                mag += (v * sae.w_dec.get(i, c)).abs();
            }
            let tol = 1e-5 * (mag * sc.abs() + sh.abs()) + 1e-6;
            let (a, b) = (dec_got[r * d + c], dec_want[r * d + c]);
            assert!((a - b).abs() <= tol, "decode row {r} col {c}: {a} vs {b}");
        }
    }

    let mask: Vec<u8> = (0..rows).map(|r| (r % 3 != 1) as u8).collect();
    let mut s_want = LatentStats::new(sae.fingerprint(), sae.n_latents());
    let mut s_got = s_want.clone();
    for m in [None, Some(&mask[..])] {
        whole.accumulate(&mut s_want, &want.codes, m).unwrap();
        parts.accumulate(&mut s_got, &want.codes, m).unwrap();
    }
    assert_eq!(s_got, s_want, "statistics, shards {sizes:?}");
}

#[test]
fn topk_ties_across_shard_boundaries_go_to_the_smaller_latent() {
    // Latent 3 ties 4 (boundary 4 | 4..), 0 ties 9, 8 ties 1 (latents in shards 0 and 2);
    // integer values tie elsewhere too.
    let twins = [(3, 4), (0, 9), (1, 8)];
    for k in [1, 2, 4, 10] {
        let data = (Values::Integer, k as u64);
        let s = sae(10, 6, Activation::TopK { k }, data, &twins, |b| b);
        check(&s, &[4, 3, 3], 9, data);
        // The ties are really there, across boundaries, and resolved by the smaller index.
        let enc = sharded(&s, &[4, 3, 3])
            .encode(&input(9, 6, data), 9, 0)
            .unwrap();
        let Codes::TopK {
            indices, values, ..
        } = &enc.codes
        else {
            panic!("top-k codes expected")
        };
        let mut across = 0;
        for (ir, vr) in indices.chunks(k).zip(values.chunks(k)) {
            for j in 1..k {
                if ir[j] >= 0 && vr[j] == vr[j - 1] {
                    assert!(ir[j] > ir[j - 1], "tie out of order: {ir:?} {vr:?}");
                    across += usize::from(ir[j - 1] < 4 && ir[j] >= 4);
                }
            }
        }
        if k >= 4 {
            assert!(
                across > 0,
                "k = {k}: no tie across a shard boundary was tested"
            );
        }
    }
}

#[test]
fn every_kind_of_sae_and_split_matches_the_whole() {
    let twins = [(2, 7), (5, 6)];
    let kinds = [
        Activation::TopK { k: 1 },
        Activation::TopK { k: 3 },
        Activation::TopK { k: 13 },
        Activation::Relu,
        Activation::JumpRelu,
    ];
    // Exact sums: any split, one-latent shards included.
    let splits: [&[usize]; 5] = [&[13], &[1, 12], &[6, 7], &[2, 2, 9], &[1; 13]];
    for (ki, a) in kinds.into_iter().enumerate() {
        for (si, sizes) in splits.iter().enumerate() {
            let data = (Values::Integer, (ki * 10 + si) as u64);
            let plain = sae(13, 5, a, data, &twins, |b| b.subtract_b_dec(si % 2 == 1));
            check(&plain, sizes, 11, data);
        }
    }
    // Float data, normalized, centered, bf16, transposed like SAELens W_enc, rescaled: bit
    // for bit where every GEMM takes the gemm crate's blocked path, as real batches do
    // (more than 64 rows, tiles at least 2 latents wide: 5 + 5 + 3 for the whole, one
    // tile per shard; see the module docs).
    let splits: [&[usize]; 4] = [&[13], &[2, 11], &[6, 7], &[2, 2, 9]];
    for (ki, a) in kinds.into_iter().enumerate() {
        for (si, sizes) in splits.iter().enumerate() {
            let data = (Values::Normal, (ki * 10 + si) as u64);
            let shaped = sae(13, 5, a, data, &twins, |b| {
                b.normalization(Normalization::LayerNorm { eps: 1e-5 })
                    .subtract_b_dec(true)
                    .dtype(DType::BF16)
                    .transposed(true, si % 2 == 0)
                    .rescale(a.is_topk())
            });
            check(&shaped, sizes, 80, data);
        }
    }
}

#[test]
fn per_latent_scales_are_sliced_with_their_latents() {
    let data = (Values::Integer, 3);
    let mut s = (*sae(8, 4, Activation::Relu, data, &[], |b| b)).clone();
    s.scales.code_scale = Some((0..8).map(|i| 0.5 + i as f32).collect());
    s.scales.decode_scale = Some((0..8).map(|i| 2.0 - 0.1 * i as f32).collect());
    check(&Arc::new(s), &[3, 5], 70, data);
}

#[test]
fn empty_batches_and_bad_inputs_behave_like_the_whole() {
    let data = (Values::Normal, 5);
    let s = sae(6, 3, Activation::TopK { k: 2 }, data, &[], |b| {
        b.normalization(Normalization::ConstantNormRescale)
    });
    let (whole, parts) = (cpu(&s), sharded(&s, &[2, 4]));
    assert_eq!(
        parts.encode(&[], 0, 0).unwrap(),
        whole.encode(&[], 0, 0).unwrap()
    );
    let mut x = input(4, 3, data);
    x[7] = f32::NAN;
    let e = parts.encode(&x, 4, 100).unwrap_err();
    assert!(matches!(e, Error::NonFinite { row: 102, .. }), "{e}");
    assert!(parts.encode(&x[..5], 2, 0).is_err());
    let bad = Codes::TopK {
        n: 1,
        k: 2,
        indices: vec![6, -1],
        values: vec![1.0, 0.0],
    };
    assert!(parts.decode(&bad, None).is_err());
    let mut stats = LatentStats::new("x", 6);
    assert!(parts.accumulate(&mut stats, &bad, None).is_err());
    let good = Codes::empty(Some(2));
    assert!(parts.accumulate(&mut stats, &good, Some(&[1])).is_err());
    assert!(parts
        .accumulate(&mut LatentStats::new("x", 5), &good, None)
        .is_err());
    assert_eq!(
        stats,
        LatentStats::new("x", 6),
        "failed calls change nothing"
    );
}

#[test]
fn an_overflowing_latent_is_named_in_the_whole_sae() {
    // Latent 5 (in the second shard, local 1) overflows f32 for every row.
    let s = sae(
        7,
        2,
        Activation::TopK { k: 2 },
        (Values::Normal, 9),
        &[],
        |b| b,
    );
    let mut big = (*s).clone();
    let mut w = big.w_enc.to_f32_vec();
    w[10] = 3e38;
    w[11] = 3e38;
    big.w_enc = crate::matrix::Matrix::from_f32(&w, 7, 2, DType::F32).unwrap();
    let big = Arc::new(big);
    let x = vec![2.0f32; 6];
    let want = cpu(&big).encode(&x, 3, 40).unwrap_err();
    let got = sharded(&big, &[4, 3]).encode(&x, 3, 40).unwrap_err();
    assert!(
        matches!(
            got,
            Error::SaeNonFinite {
                latent: 5,
                row: 40,
                ..
            }
        ),
        "{got}"
    );
    assert_eq!(got.to_string(), want.to_string());
}

#[test]
fn open_splits_evenly_over_the_backends_given() {
    let s = sae(
        9,
        4,
        Activation::TopK { k: 3 },
        (Values::Normal, 4),
        &[],
        |b| b,
    );
    let e =
        ShardedEngine::open(s.clone(), &[BackendKind::Cpu; 4], &EngineOptions::default()).unwrap();
    assert_eq!(e.ranges(), &[0..3, 3..5, 5..7, 7..9]);
    assert!(
        e.name().starts_with("4 latent shards [0..3 on cpu"),
        "{}",
        e.name()
    );
    assert!(ShardedEngine::open(s, &[BackendKind::Cpu; 10], &EngineOptions::default()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_shapes_and_splits_match_the_whole(
        l in 1usize..40,
        d in 1usize..9,
        rows in 0usize..12,
        kind in 0usize..3,
        k_frac in 0.0f64..1.0,
        cuts in proptest::collection::vec(0.0f64..1.0, 0..5),
        seed in any::<u64>(),
    ) {
        let k = 1 + ((l - 1) as f64 * k_frac) as usize;
        let a = [Activation::TopK { k }, Activation::Relu, Activation::JumpRelu][kind];
        let twins: Vec<(usize, usize)> = (0..l / 3).map(|i| (i, l - 1 - i)).collect();
        let data = (Values::Integer, seed);
        let s = sae(l, d, a, data, &twins, |b| b.subtract_b_dec(seed % 2 == 0));
        let mut bounds: Vec<usize> = cuts.iter().map(|c| 1 + (c * l as f64) as usize).filter(|b| *b < l).collect();
        bounds.push(0);
        bounds.push(l);
        bounds.sort();
        bounds.dedup();
        let sizes: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
        check(&s, &sizes, rows, data);
    }
}

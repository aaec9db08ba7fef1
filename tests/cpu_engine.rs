//! The CPU engine against the naive dense reference (`sae_engine::cpu::reference`).
//!
//! Two families of random cases:
//! - exact: small integer weights, biases and inputs, so every pre-activation is an
//!   exact f32 integer in both the tiled GEMM and the f64 reference. Encoder rows and
//!   input rows are drawn from small pools, so exact ties are everywhere, and biases
//!   lean negative so rows with fewer than k positives (or none) are common. Codes
//!   must then be bit-identical, tie order included.
//! - float: random real weights with every normalization; the GEMM sums in another
//!   order, so selections are checked against the reference's pre-activations with a
//!   rounding tolerance (a tie-break may differ only between values within it).

use std::sync::Arc;

use proptest::prelude::*;
use sae_engine::cpu::reference::{self, SaeBuilder};
use sae_engine::cpu::CpuEngine;
use sae_engine::{Activation, Codes, DType, Engine, EngineOptions, Error, Normalization, Sae};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    TopK(usize),
    Relu,
    Jump,
}

/// Everything a random case varies, besides the numbers.
#[derive(Debug, Clone)]
struct Shape {
    rows: usize,
    d: usize,
    l: usize,
    tile: usize,
    act: Act,
    dtype: DType,
    enc_t: bool,
    dec_t: bool,
    subtract: bool,
    rescale: bool,
    norm: Normalization,
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

fn shape(norms: bool) -> impl Strategy<Value = Shape> {
    let norm = if norms {
        prop_oneof![
            Just(Normalization::None),
            Just(Normalization::ConstantNormRescale),
            Just(Normalization::LayerNorm { eps: 1e-5 }),
        ]
        .boxed()
    } else {
        Just(Normalization::None).boxed()
    };
    (
        0usize..=9,
        1usize..=33,
        prop_oneof![1usize..=40, 41usize..=300],
        (0usize..3, 1usize..=64),
        (0usize..3, 0.0f64..=1.0),
        dtype(),
        any::<(bool, bool, bool, bool)>(),
        norm,
    )
        .prop_map(
            |(
                rows,
                d,
                l,
                (tile_kind, tile),
                (act, kf),
                dtype,
                (enc_t, dec_t, subtract, rescale),
                norm,
            )| {
                let act = match act {
                    0 => Act::TopK(1 + ((l - 1) as f64 * kf) as usize),
                    1 => Act::Relu,
                    _ => Act::Jump,
                };
                // Mostly small tiles that rarely divide L, sometimes one tile for everything.
                let tile = if tile_kind == 0 { 4096 } else { tile };
                Shape {
                    rows,
                    d,
                    l,
                    tile,
                    act,
                    dtype,
                    enc_t,
                    dec_t,
                    subtract,
                    rescale: rescale && matches!(act, Act::TopK(_)),
                    norm,
                }
            },
        )
}

/// Numbers of one case: weights [l, d] row-major, biases, thresholds, input [rows, d].
#[derive(Debug, Clone)]
struct Data {
    w_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_enc: Vec<f32>,
    b_dec: Vec<f32>,
    thr: Vec<f32>,
    x: Vec<f32>,
}

fn ints(n: usize, lo: i32, hi: i32) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec((lo..=hi).prop_map(|v| v as f32), n)
}

fn reals(n: usize, lim: f32) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(-lim..=lim, n)
}

/// Picks `n` rows of width `d` from a pool of `pool.len() / d` rows (forces exact ties).
fn from_pool(pool: &[f32], picks: &[usize], d: usize) -> Vec<f32> {
    let np = pool.len() / d;
    picks
        .iter()
        .flat_map(|p| pool[(p % np) * d..(p % np + 1) * d].iter().copied())
        .collect()
}

/// Integer data. With rescale, decoder rows are multiples of basis vectors with
/// norms 1, 2 or 4, so the rescaled pre-activations stay exact.
fn exact_data(s: &Shape) -> impl Strategy<Value = Data> {
    let (rows, d, l) = (s.rows, s.d, s.l);
    let rescale = s.rescale;
    (
        (1usize..=6).prop_flat_map(move |np| ints(np * d, -2, 2)),
        proptest::collection::vec(any::<usize>(), l),
        ints(l * d, -2, 2),
        proptest::collection::vec(prop_oneof![Just(1.0f32), Just(2.0), Just(4.0)], l),
        ints(l, -6, 2),
        ints(d, -2, 2),
        ints(l, -2, 3),
        (1usize..=4).prop_flat_map(move |np| ints(np * d, -3, 3)),
        proptest::collection::vec(any::<usize>(), rows),
        any::<bool>(),
    )
        .prop_map(
            move |(wpool, wpick, wdec, dnorm, b_enc, b_dec, thr, xpool, xpick, zero_row)| {
                let w_dec = if rescale {
                    let mut w = vec![0f32; l * d];
                    for i in 0..l {
                        w[i * d + i % d] = dnorm[i];
                    }
                    w
                } else {
                    wdec
                };
                let mut x = from_pool(&xpool, &xpick, d);
                if zero_row && rows > 0 {
                    // h = b_enc (minus b_dec . W): all-negative rows come from here.
                    x[..d].iter_mut().for_each(|v| *v = 0.0);
                }
                Data {
                    w_enc: from_pool(&wpool, &wpick, d),
                    w_dec,
                    b_enc,
                    b_dec,
                    thr,
                    x,
                }
            },
        )
}

fn real_data(s: &Shape) -> impl Strategy<Value = Data> {
    let (rows, d, l) = (s.rows, s.d, s.l);
    (
        reals(l * d, 1.0),
        reals(l * d, 1.0),
        reals(l, 1.0),
        reals(d, 0.5),
        reals(l, 0.5),
        reals(rows * d, 2.0),
    )
        .prop_map(|(w_enc, w_dec, b_enc, b_dec, thr, x)| Data {
            w_enc,
            w_dec,
            b_enc,
            b_dec,
            thr,
            x,
        })
}

fn build(s: &Shape, data: &Data) -> Sae {
    let mut b = SaeBuilder::new(s.l, s.d, data.w_enc.clone(), data.w_dec.clone())
        .b_enc(data.b_enc.clone())
        .b_dec(data.b_dec.clone())
        .dtype(s.dtype)
        .transposed(s.enc_t, s.dec_t)
        .subtract_b_dec(s.subtract)
        .normalization(s.norm)
        .rescale(s.rescale);
    b = match s.act {
        Act::TopK(k) => b.activation(Activation::TopK { k }),
        Act::Relu => b.activation(Activation::Relu),
        Act::Jump => b
            .activation(Activation::JumpRelu)
            .threshold(data.thr.clone()),
    };
    b.build().expect("test SAE is valid")
}

fn engine(sae: Sae, tile: usize) -> CpuEngine {
    let opts = EngineOptions {
        tile_latents: tile,
        ..Default::default()
    };
    CpuEngine::new(Arc::new(sae), &opts).expect("engine")
}

/// Largest possible |pre-activation| contribution of row `x`, for a rounding tolerance.
fn tolerance(sae: &Sae, x: &[f32]) -> f32 {
    let mut xr = x.to_vec();
    sae.normalization.apply(&mut xr);
    if sae.subtract_b_dec {
        xr.iter_mut().zip(&sae.b_dec).for_each(|(v, b)| *v -= b);
    }
    let norms = sae.w_dec.row_norms();
    let mut worst = 0f32;
    for (i, norm) in norms.iter().enumerate() {
        let w = sae.w_enc.row_f32(i);
        let mag: f32 =
            xr.iter().zip(&w).map(|(a, b)| (a * b).abs()).sum::<f32>() + sae.b_enc[i].abs();
        let s = if sae.rescale_acts_by_decoder_norm {
            *norm
        } else {
            1.0
        };
        worst = worst.max(mag * s);
    }
    1e-6 + 8.0 * f32::EPSILON * (sae.d_in() as f32 + 2.0) * worst
}

/// Checks a top-k row against the full pre-activations `h` up to `tol`.
fn check_topk_row(idx: &[i32], val: &[f32], h: &[f32], k: usize, tol: f32) -> Result<(), String> {
    let active = idx.iter().take_while(|i| **i >= 0).count();
    if idx[active..].iter().any(|i| *i != -1) || val[active..].iter().any(|v| *v != 0.0) {
        return Err(format!(
            "padding must be a suffix of (-1, 0.0): {idx:?} {val:?}"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for s in 0..active {
        let (i, v) = (idx[s] as usize, val[s]);
        if !seen.insert(i) || i >= h.len() {
            return Err(format!("bad or repeated latent {i}"));
        }
        if v <= 0.0 || (v - h[i]).abs() > tol {
            return Err(format!("latent {i}: value {v}, reference {}", h[i]));
        }
        if s > 0 && (val[s - 1] < v || (val[s - 1] == v && idx[s - 1] > idx[s])) {
            return Err(format!("order broken at slot {s}: {idx:?} {val:?}"));
        }
    }
    let strict = h.iter().filter(|v| **v > tol).count();
    let loose = h.iter().filter(|v| **v > -tol).count();
    if active < k.min(strict) || active > k.min(loose) {
        return Err(format!(
            "{active} active, expected between {} and {}",
            k.min(strict),
            k.min(loose)
        ));
    }
    let floor = if active == k {
        idx[..active]
            .iter()
            .map(|i| h[*i as usize])
            .fold(f32::INFINITY, f32::min)
            + 2.0 * tol
    } else {
        tol
    };
    for (j, hj) in h.iter().enumerate() {
        if !seen.contains(&j) && *hj > floor {
            return Err(format!("latent {j} (h = {hj}) should have been selected"));
        }
    }
    Ok(())
}

/// Checks a CSR row: ascending, positive, close to h, and exactly the latents above the cut.
fn check_csr_row(
    idx: &[i32],
    val: &[f32],
    h: &[f32],
    cut: &dyn Fn(usize) -> f32,
    tol: f32,
) -> Result<(), String> {
    if idx.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("indices not ascending: {idx:?}"));
    }
    let mut sel = vec![false; h.len()];
    for (&i, &v) in idx.iter().zip(val) {
        let i = i as usize;
        sel[i] = true;
        if v <= 0.0 || (v - h[i]).abs() > tol || h[i] <= cut(i) - tol {
            return Err(format!(
                "latent {i}: value {v}, reference {}, cut {}",
                h[i],
                cut(i)
            ));
        }
    }
    for (j, hj) in h.iter().enumerate() {
        if !sel[j] && *hj > cut(j) + tol {
            return Err(format!(
                "latent {j} (h = {hj}) above cut {} not kept",
                cut(j)
            ));
        }
    }
    Ok(())
}

fn decode_tol(a: &[f32], b: &[f32], scale: f32) -> Result<(), String> {
    let big = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (j, (x, y)) in a.iter().zip(b).enumerate() {
        if (x - y).abs() > 1e-4 * (1.0 + big) * scale.max(1.0) {
            return Err(format!("element {j}: {x} vs reference {y}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Integer data: codes bit-identical to the reference, exact ties included.
    #[test]
    fn exact_encode_matches_reference((s, data) in shape(false).prop_flat_map(|s| {
        let d = exact_data(&s);
        (Just(s), d)
    }), offset in 0u64..1000) {
        let sae = build(&s, &data);
        let want = reference::encode(&sae, &data.x, s.rows, offset).unwrap();
        let eng = engine(sae, s.tile);
        let got = eng.encode(&data.x, s.rows, offset).unwrap();
        prop_assert_eq!(&got, &want);
        prop_assert!(got.codes.validate(s.l).is_ok());
        // Decode of the same codes against the f64 reference decode.
        let dec = eng.decode(&got.codes, got.denorm.as_ref()).unwrap();
        let ref_dec = reference::decode(eng.sae(), &got.codes, got.denorm.as_ref()).unwrap();
        prop_assert_eq!(dec.len(), s.rows * s.d);
        decode_tol(&dec, &ref_dec, 1.0).map_err(TestCaseError::fail)?;
    }

    /// Real-valued data with every normalization: selections valid up to rounding.
    #[test]
    fn float_encode_matches_reference((s, data) in shape(true).prop_flat_map(|s| {
        let d = real_data(&s);
        (Just(s), d)
    })) {
        let sae = build(&s, &data);
        let eng = engine(sae, s.tile);
        let sae = eng.sae();
        let got = eng.encode(&data.x, s.rows, 0).unwrap();
        prop_assert_eq!(got.codes.n_rows(), s.rows);
        prop_assert_eq!(got.denorm.is_some(), s.norm != Normalization::None);
        for (r, x) in data.x.chunks_exact(s.d).enumerate() {
            let (h, dn) = reference::preactivations(sae, x);
            let tol = tolerance(sae, x);
            let (idx, val) = got.codes.row(r);
            let res = match s.act {
                Act::TopK(k) => check_topk_row(idx, val, &h, k, tol),
                Act::Relu => check_csr_row(idx, val, &h, &|_| 0.0, tol),
                Act::Jump => {
                    let t = sae.threshold.as_ref().unwrap();
                    check_csr_row(idx, val, &h, &|i| t[i].max(0.0), tol)
                }
            };
            res.map_err(|e| TestCaseError::fail(format!("row {r}: {e}")))?;
            if let (Some(dn), Some(ours)) = (dn, &got.denorm) {
                prop_assert_eq!((dn.scale, dn.shift), (ours.scale[r], ours.shift[r]));
            }
        }
        let dec = eng.decode(&got.codes, got.denorm.as_ref()).unwrap();
        let ref_dec = reference::decode(sae, &got.codes, got.denorm.as_ref()).unwrap();
        let scale = got.denorm.as_ref().map_or(1.0, |d| d.scale.iter().fold(1f32, |m, v| m.max(v.abs())));
        decode_tol(&dec, &ref_dec, scale).map_err(TestCaseError::fail)?;
    }

    /// A NaN or infinity in any input row is an error naming that row (offset included).
    #[test]
    fn non_finite_input_names_the_row((s, data) in shape(true).prop_filter("rows", |s| s.rows > 0)
        .prop_flat_map(|s| { let d = real_data(&s); (Just(s), d) }),
        pick in any::<(usize, usize, bool)>(), offset in 0u64..1_000_000) {
        let (r, c) = (pick.0 % s.rows, pick.1 % s.d);
        let mut x = data.x.clone();
        x[r * s.d + c] = if pick.2 { f32::NAN } else { f32::NEG_INFINITY };
        let eng = engine(build(&s, &data), s.tile);
        match eng.encode(&x, s.rows, offset) {
            Err(Error::NonFinite { row, .. }) => prop_assert_eq!(row, offset + r as u64),
            other => prop_assert!(false, "expected NonFinite, got {:?}", other.map(|_| ())),
        }
    }
}

fn small_topk(k: usize) -> SaeBuilder {
    let w: Vec<f32> = (0..12).map(|v| (v % 5) as f32 - 2.0).collect();
    SaeBuilder::new(4, 3, w.clone(), w).activation(Activation::TopK { k })
}

#[test]
fn nan_weights_are_an_error_not_dropped() {
    for act in [Activation::TopK { k: 2 }, Activation::Relu] {
        let mut w: Vec<f32> = vec![1.0; 40 * 3];
        w[17 * 3 + 1] = f32::NAN;
        let sae = SaeBuilder::new(40, 3, w.clone(), vec![1.0; 120])
            .activation(act)
            .build()
            .unwrap();
        let eng = engine(sae, 16);
        let x = vec![-1.0f32; 2 * 3];
        // The input rows are finite, so the error blames the SAE and names the latent.
        match eng.encode(&x, 2, 5) {
            Err(e @ Error::SaeNonFinite { .. }) => {
                let Error::SaeNonFinite { row, latent, .. } = &e else {
                    unreachable!()
                };
                assert_eq!((*row, *latent), (5, 17));
                let msg = e.to_string();
                assert!(
                    msg.contains("latent 17")
                        && msg.contains("W_enc row 17")
                        && msg.contains("finite input row 5"),
                    "{msg}"
                );
            }
            other => panic!("expected SaeNonFinite, got {:?}", other.map(|_| ())),
        }
        // A non-finite input row is still the input's fault.
        let mut bad = x.clone();
        bad[4] = f32::NAN;
        match eng.encode(&bad, 2, 5) {
            Err(Error::NonFinite { row, .. }) => assert_eq!(row, 6),
            other => panic!("expected NonFinite, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let eng = engine(small_topk(2).build().unwrap(), 3);
    assert!(matches!(
        eng.encode(&[0.0; 5], 2, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(small_topk(5).build().is_err(), "k > L must be rejected");
    let opts = EngineOptions {
        tile_latents: 0,
        ..Default::default()
    };
    assert!(CpuEngine::new(Arc::new(small_topk(2).build().unwrap()), &opts).is_err());
    let bad = Codes::TopK {
        n: 1,
        k: 2,
        indices: vec![0, 4],
        values: vec![1.0, 1.0],
    };
    assert!(
        eng.decode(&bad, None).is_err(),
        "latent 4 is out of range for L = 4"
    );
    let ok = Codes::TopK {
        n: 1,
        k: 2,
        indices: vec![0, -1],
        values: vec![1.0, 0.0],
    };
    let dn = sae_engine::Denorm {
        scale: vec![1.0, 2.0],
        shift: vec![0.0, 0.0],
    };
    assert!(
        eng.decode(&ok, Some(&dn)).is_err(),
        "denorm for 2 rows, codes for 1"
    );
}

#[test]
fn engine_factory_builds_cpu_and_results_do_not_depend_on_tile() {
    let sae = Arc::new(
        small_topk(3)
            .b_enc(vec![0.5, 0.0, -0.5, 1.0])
            .build()
            .unwrap(),
    );
    let e = sae_engine::engine(
        sae_engine::BackendKind::Cpu,
        sae.clone(),
        &EngineOptions::default(),
    )
    .unwrap();
    assert!(e.name().starts_with("cpu"));
    let x = [1.0f32, -2.0, 0.5, 3.0, 3.0, 3.0];
    let a = e.encode(&x, 2, 0).unwrap();
    for tile in [1, 2, 3] {
        assert_eq!(engine((*sae).clone(), tile).encode(&x, 2, 0).unwrap(), a);
    }
    assert_eq!(a, reference::encode(&sae, &x, 2, 0).unwrap());
}

/// proptest replays the cases saved in `cpu_engine.proptest-regressions` from the path it
/// derives from this file: beside it while no folder above it holds a lib.rs or main.rs
/// (proptest's SourceParallel would otherwise move it under proptest-regressions/). A
/// rename of this file or of the test binary's root (tests/tests.rs) must carry the
/// regressions file along; this fails when it does not.
#[test]
fn the_proptest_regressions_file_is_where_proptest_looks() {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file!());
    let mut dir = source.parent().unwrap();
    loop {
        assert!(
            !dir.join("lib.rs").is_file() && !dir.join("main.rs").is_file(),
            "{} holds a lib.rs or main.rs: proptest would look for regressions under {}",
            dir.display(),
            dir.parent()
                .unwrap_or(dir)
                .join("proptest-regressions")
                .display()
        );
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    let saved = source.with_extension("proptest-regressions");
    let text =
        std::fs::read_to_string(&saved).unwrap_or_else(|e| panic!("{}: {e}", saved.display()));
    assert!(
        text.lines().any(|l| l.starts_with("cc ")),
        "no saved case in {}",
        saved.display()
    );
}

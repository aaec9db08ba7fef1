//! The verification cases: SAEs and inputs both engines encode, in named groups. All come
//! from one seeded [`Rng`] stream, drawn in the order listed in [`cases`], so a case's data
//! depends on its position: add new cases at the end of a group or in a new group.

use super::Rng;
use crate::backend::Precision;
use crate::cpu::reference::SaeBuilder;
use crate::dtype::DType;
use crate::error::Result;
use crate::sae::{Activation, Normalization, Sae};

/// One verification case.
pub(super) struct Case {
    pub(super) name: String,
    pub(super) sae: Sae,
    pub(super) x: Vec<f32>,
    pub(super) rows: usize,
    pub(super) row_offset: u64,
    pub(super) precision: Precision,
    /// Tile widths to run (None = planned); results must not depend on them.
    pub(super) tiles: Vec<Option<usize>>,
    /// Rows per chunk (small values exercise the double-buffered staging).
    pub(super) max_rows: usize,
    /// Data exactly representable: indices must match exactly.
    pub(super) exact_ties: bool,
    /// The bf16-score path must have re-encoded some chunk with f32 scores (heavy ties).
    pub(super) want_fallback: bool,
}

/// A random SAE of `l` latents over `d` inputs (weights scaled by 1/sqrt(d)).
pub(super) fn random_sae(
    rng: &mut Rng,
    l: usize,
    d: usize,
    act: Activation,
    dtype: DType,
) -> SaeBuilder {
    let s = 1.0 / (d as f32).sqrt();
    SaeBuilder::new(l, d, rng.vec(l * d, s), rng.vec(l * d, s))
        .b_enc(rng.vec(l, 0.05))
        .b_dec(rng.vec(d, 0.1))
        .activation(act)
        .dtype(dtype)
}

impl Case {
    /// Exact precision, the planned tile only, up to 4096 rows per chunk; indices may differ
    /// from the CPU's on near-ties.
    fn new(name: &str, sae: Result<Sae>, x: Vec<f32>, rows: usize) -> Result<Case> {
        Ok(Case {
            name: name.into(),
            sae: sae?,
            x,
            rows,
            row_offset: 1000,
            precision: Precision::Exact,
            tiles: vec![None],
            max_rows: 4096,
            exact_ties: false,
            want_fallback: false,
        })
    }

    fn precision(self, precision: Precision) -> Case {
        Case { precision, ..self }
    }

    /// Tile widths to run (None = planned).
    fn tiles(self, tiles: &[Option<usize>]) -> Case {
        Case {
            tiles: tiles.to_vec(),
            ..self
        }
    }

    fn max_rows(self, max_rows: usize) -> Case {
        Case { max_rows, ..self }
    }

    /// Exactly representable data: indices must equal the CPU's.
    fn exact_ties(self) -> Case {
        Case {
            exact_ties: true,
            ..self
        }
    }

    /// The bf16-score path must fall back to f32 scores for some chunk.
    fn want_fallback(self) -> Case {
        Case {
            want_fallback: true,
            ..self
        }
    }
}

/// A named group of cases, drawn from the shared stream.
type Group = fn(&mut Rng) -> Result<Vec<Case>>;

/// Every case, in the order the seeded stream is drawn; `quick` leaves out the large shapes.
pub(super) fn cases(quick: bool) -> Result<Vec<Case>> {
    let groups: [Group; 7] = [
        topk_layouts,
        topk_k_extremes,
        topk_ties,
        topk_padding_and_bounds,
        batch_edges,
        threshold_csr,
        fast_precision,
    ];
    let mut rng = Rng::new(0x5ae);
    let mut v = Vec::new();
    for group in groups {
        v.extend(group(&mut rng)?);
    }
    if !quick {
        v.extend(large(&mut rng)?);
    }
    Ok(v)
}

fn topk(k: usize) -> Activation {
    Activation::TopK { k }
}

/// `m` values in {-1, 0, 1}: exact in every dtype.
fn ternary(rng: &mut Rng, m: usize) -> Vec<f32> {
    (0..m).map(|_| (rng.next_u64() % 3) as f32 - 1.0).collect()
}

/// `m` integers in [-1, 3]: exact in every dtype.
fn small_ints(rng: &mut Rng, m: usize) -> Vec<f32> {
    (0..m).map(|_| (rng.next_u64() % 5) as f32 - 1.0).collect()
}

/// TopK over the storage variants: dtypes, transposed matrices, normalizations, rescales,
/// tile widths and small row chunks.
fn topk_layouts(rng: &mut Rng) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    // Random TopK, f32, tile independence (planned tile vs 128 vs 384).
    let (l, d, n) = (1000, 64, 37);
    v.push(
        Case::new(
            "topk f32 random, tiles 128/384/planned",
            random_sae(rng, l, d, topk(16), DType::F32).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128), Some(384)]),
    );
    // bf16, both matrices transposed, width not a multiple of 8, b_dec subtracted, norm rescale.
    let (l, d, n) = (777, 100, 50);
    v.push(
        Case::new(
            "topk bf16 transposed d=100 subtract_b_dec constant_norm_rescale, chunks of 16 rows",
            random_sae(rng, l, d, topk(32), DType::BF16)
                .transposed(true, true)
                .subtract_b_dec(true)
                .normalization(Normalization::ConstantNormRescale)
                .build(),
            rng.vec(n * d, 3.0),
            n,
        )?
        .tiles(&[None, Some(256)])
        .max_rows(16),
    );
    // f16, layer norm, decoder-norm rescale.
    let (l, d, n) = (2048, 96, 64);
    v.push(
        Case::new(
            "topk f16 layer_norm rescale_by_decoder_norm",
            random_sae(rng, l, d, topk(64), DType::F16)
                .normalization(Normalization::LayerNorm { eps: 1e-5 })
                .rescale(true)
                .build(),
            rng.vec(n * d, 2.0),
            n,
        )?
        .tiles(&[None, Some(512)]),
    );
    Ok(v)
}

/// TopK at the extremes of k and of the first tile: k = 1, k = 512, the radix-select path.
fn topk_k_extremes(rng: &mut Rng) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    // k = 1.
    let (l, d, n) = (300, 32, 20);
    v.push(
        Case::new(
            "topk k=1",
            random_sae(rng, l, d, topk(1), DType::F32).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128)]),
    );
    // k = 512 and a first tile with more survivors than shared memory: the radix-select path.
    let (l, d, n) = (8192, 64, 16);
    v.push(
        Case::new(
            "topk k=512 (radix overflow path)",
            random_sae(rng, l, d, topk(512), DType::F32)
                .b_enc(vec![0.5; l])
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(8192), Some(1024)]),
    );
    let (l, d, n) = (16384, 64, 8);
    v.push(
        Case::new(
            "topk k=64 wide first tile (radix path)",
            random_sae(rng, l, d, topk(64), DType::BF16)
                .b_enc(vec![0.3; l])
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[Some(16384), Some(2048)]),
    );
    Ok(v)
}

/// Exactly representable data with many equal values: indices must equal the CPU's.
fn topk_ties(rng: &mut Rng) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    // Exact ties: weights in {-1, 0, 1}, integer inputs: every value exact, many equal.
    let (l, d, n) = (500, 16, 12);
    let (we, wd) = (ternary(rng, l * d), ternary(rng, l * d));
    let xi = small_ints(rng, n * d);
    v.push(
        Case::new(
            "topk exact ties (ternary weights)",
            SaeBuilder::new(l, d, we, wd).activation(topk(16)).build(),
            xi.clone(),
            n,
        )?
        .tiles(&[None, Some(128), Some(256)])
        .exact_ties(),
    );
    // All latents identical: one big tie, decided by index alone.
    let (l, d, n) = (1024, 8, 4);
    v.push(
        Case::new(
            "topk all-equal row (index order)",
            SaeBuilder::new(l, d, vec![1.0; l * d], vec![1.0; l * d])
                .activation(topk(64))
                .build(),
            vec![1.0; n * d],
            n,
        )?
        .tiles(&[None, Some(128)])
        .exact_ties(),
    );
    Ok(v)
}

/// Rows with fewer than k positives, the per-block skip bound, and a NaN encoder weight.
fn topk_padding_and_bounds(rng: &mut Rng) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    // Fewer than k positives: most biases very negative.
    let (l, d, n) = (600, 24, 10);
    let mut b = vec![-100.0f32; l];
    for i in (0..l).step_by(97) {
        b[i] = 1.0;
    }
    v.push(
        Case::new(
            "topk fewer than k positives (padding)",
            random_sae(rng, l, d, topk(32), DType::F32).b_enc(b).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128)]),
    );
    // Biases spread far wider than the scores, with decoder-norm rescale: the per-block
    // bound of the top-k pass skips most scores, and must never skip a winner.
    let (l, d, n) = (3000, 48, 24);
    v.push(
        Case::new(
            "topk block-bound skip: wide biases, rescale_by_decoder_norm",
            random_sae(rng, l, d, topk(24), DType::F32)
                .b_enc(rng.vec(l, 3.0))
                .rescale(true)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128), Some(640)]),
    );
    // A NaN encoder weight (biases are checked at load, matrices are not): its block's
    // bound is NaN, so no score there is skipped and every row reports the non-finite
    // pre-activation of latent 333, as on the CPU.
    let (l, d, n) = (700, 32, 6);
    let s = 1.0 / (d as f32).sqrt();
    let mut w = rng.vec(l * d, s);
    w[333 * d + 5] = f32::NAN;
    v.push(
        Case::new(
            "topk NaN encoder row (non-finite pre-activation reported)",
            SaeBuilder::new(l, d, w, rng.vec(l * d, s))
                .b_enc(rng.vec(l, 0.05))
                .b_dec(rng.vec(d, 0.1))
                .activation(topk(8))
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128)]),
    );
    Ok(v)
}

/// Batch shapes and inputs at the edges: one row, no rows, a NaN input row.
fn batch_edges(rng: &mut Rng) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    // One row; empty batch.
    let (l, d) = (400, 40);
    v.push(Case::new(
        "topk one row",
        random_sae(rng, l, d, topk(8), DType::BF16).build(),
        rng.vec(d, 1.0),
        1,
    )?);
    v.push(Case::new(
        "topk empty batch",
        random_sae(rng, l, d, topk(8), DType::F32).build(),
        vec![],
        0,
    )?);
    // NaN in row 5: both engines must report row 1005.
    let (l, d, n) = (256, 16, 9);
    let mut xn = rng.vec(n * d, 1.0);
    xn[5 * d + 3] = f32::NAN;
    v.push(Case::new(
        "NaN input row",
        random_sae(rng, l, d, topk(4), DType::F32).build(),
        xn.clone(),
        n,
    )?);
    v.push(Case::new(
        "NaN input row (ReLU)",
        random_sae(rng, l, d, Activation::Relu, DType::F32).build(),
        xn,
        n,
    )?);
    Ok(v)
}

/// Threshold activations (ReLU, JumpReLU) into CSR codes.
fn threshold_csr(rng: &mut Rng) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    // Threshold activations into CSR.
    let (l, d, n) = (1500, 48, 30);
    v.push(
        Case::new(
            "relu bf16 CSR",
            random_sae(rng, l, d, Activation::Relu, DType::BF16).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(256)]),
    );
    let th = rng
        .vec(l, 0.2)
        .into_iter()
        .map(|t| t.abs())
        .collect::<Vec<_>>();
    v.push(
        Case::new(
            "jumprelu f32 transposed CSR, 7-row chunks",
            random_sae(rng, l, d, Activation::JumpRelu, DType::F32)
                .threshold(th)
                .transposed(true, false)
                .subtract_b_dec(true)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(384)])
        .max_rows(7),
    );
    Ok(v)
}

/// Fast precision: tensor-core GEMM on rounded activations, bf16 scores rescored in f32,
/// and the f32-score fallback on massive ties.
fn fast_precision(rng: &mut Rng) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    // Fast precision (tensor-core GEMM on rounded activations).
    let (l, d, n) = (4096, 128, 64);
    v.push(
        Case::new(
            "topk bf16 fast precision",
            random_sae(rng, l, d, topk(32), DType::BF16).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .precision(Precision::Fast),
    );
    v.push(
        Case::new(
            "topk f16 fast precision, transposed",
            random_sae(rng, l, d, topk(32), DType::F16)
                .transposed(true, false)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .precision(Precision::Fast),
    );
    // bf16 scores (Fast, bf16 weights): selection on rounded upper bounds, candidates
    // rescored in f32. Checked against the f64 dot of the bf16-rounded input: values within
    // f32 rounding, indices equal except near-ties. Several chunks and tiles.
    let (l, d, n) = (16384, 256, 100);
    v.push(
        Case::new(
            "topk bf16 fast: bf16 scores rescored, b_dec subtracted, decoder-norm rescale",
            random_sae(rng, l, d, topk(64), DType::BF16)
                .subtract_b_dec(true)
                .rescale(true)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .precision(Precision::Fast)
        .tiles(&[None, Some(1024)])
        .max_rows(48),
    );
    // Ternary weights and small integer inputs are exact in bf16, so Fast equals the CPU
    // exactly; the massive ties defeat the rescoring certificate and force the f32 fallback.
    let (l, d, n) = (4000, 16, 40);
    let (we, wd) = (ternary(rng, l * d), ternary(rng, l * d));
    let xi = small_ints(rng, n * d);
    v.push(
        Case::new(
            "topk bf16 fast ternary ties (f32-score fallback, identical indices)",
            SaeBuilder::new(l, d, we, wd)
                .activation(topk(16))
                .dtype(DType::BF16)
                .build(),
            xi,
            n,
        )?
        .precision(Precision::Fast)
        .tiles(&[None, Some(512)])
        .max_rows(16)
        .exact_ties()
        .want_fallback(),
    );
    Ok(v)
}

/// The larger shapes that `--quick` skips.
fn large(rng: &mut Rng) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    let (l, d, n) = (65536, 512, 256);
    v.push(
        Case::new(
            "topk bf16 fast L=65536 d=512 k=64 (bf16 scores)",
            random_sae(rng, l, d, topk(64), DType::BF16).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .precision(Precision::Fast),
    );
    let (l, d, n) = (65536, 512, 256);
    v.push(Case::new(
        "topk bf16 L=65536 d=512 k=64",
        random_sae(rng, l, d, topk(64), DType::BF16).build(),
        rng.vec(n * d, 1.0),
        n,
    )?);
    let (l, d, n) = (32768, 256, 128);
    v.push(Case::new(
        "relu f16 L=32768 CSR",
        random_sae(rng, l, d, Activation::Relu, DType::F16)
            .b_enc(vec![-0.2; l])
            .build(),
        rng.vec(n * d, 1.0),
        n,
    )?);
    Ok(v)
}

//! Steering vectors (docs/design.md, "Steering vectors"): `s * W_dec[i] / ||W_dec[i]||`
//! in explicit units, summed over several latents; export to .npy, safetensors and
//! llama.cpp GGUF; and a dry run that adds the vector to a dump and re-encodes it,
//! beside a random vector of the same norm as a control.

use std::collections::HashMap;
use std::path::Path;

use crate::backend::Engine;
use crate::dump::Dump;
use crate::error::{Error, Result};
use crate::sae::Sae;
use crate::stats::rule::OutlierSummary;
use crate::stats::{LatentStats, RowFilter};

use super::rng::Rng;
use super::StatsOptions;

/// What a strength is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SteerUnit {
    /// The strength is the vector's norm (llama.cpp, repeng: unit vector x coefficient).
    Raw,
    /// Strength x the median residual L2 norm of a dump (the OpenAI convention).
    MedianNorm,
    /// Strength x the latent's maximum activation over a dump.
    MaxAct,
}

impl SteerUnit {
    /// Parses "raw", "median-norm", "max-act".
    pub fn parse(s: &str) -> Result<SteerUnit> {
        match s {
            "raw" => Ok(SteerUnit::Raw),
            "median-norm" => Ok(SteerUnit::MedianNorm),
            "max-act" => Ok(SteerUnit::MaxAct),
            _ => Err(Error::invalid(format!(
                "unknown unit `{s}`: expected raw, median-norm or max-act"
            ))),
        }
    }
}

impl std::fmt::Display for SteerUnit {
    /// The command-line name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SteerUnit::Raw => "raw",
            SteerUnit::MedianNorm => "median-norm",
            SteerUnit::MaxAct => "max-act",
        })
    }
}

/// One latent and its strength.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SteerTerm {
    /// Latent id.
    pub latent: usize,
    /// Strength, in the vector's unit.
    pub strength: f32,
}

/// How a term turned into a coefficient.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AppliedTerm {
    /// Latent id.
    pub latent: usize,
    /// Strength, in the vector's unit.
    pub strength: f32,
    /// The unit's value (1 for raw, the median norm, or the latent's max activation).
    pub unit_value: f64,
    /// strength x unit_value: the norm of this term's contribution.
    pub coefficient: f64,
    /// ||W_dec[latent]|| (the row is normalized before scaling).
    pub decoder_norm: f64,
}

/// A steering vector of width d_in.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SteeringVector {
    #[serde(skip)]
    /// The vector (not serialized).
    pub values: Vec<f32>,
    /// What a strength of 1 means.
    pub unit: SteerUnit,
    /// Each term's coefficient.
    pub terms: Vec<AppliedTerm>,
    /// Euclidean norm of `values`.
    pub norm: f64,
    /// The token rule's outliers in the dump the unit was measured on (None for raw).
    pub outliers: Option<OutlierSummary>,
}

/// W_dec[latent] / ||W_dec[latent]||; an unknown latent or a zero row is an error.
pub fn unit_direction(sae: &Sae, latent: usize) -> Result<(Vec<f32>, f64)> {
    super::check_latents(&[latent], sae.n_latents())?;
    let row = sae.w_dec.row_f32(latent);
    let norm = row
        .iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(Error::invalid(format!(
            "{}: decoder row of latent {latent} has norm {norm}; it has no direction",
            sae.meta.source.display()
        )));
    }
    Ok((
        row.iter().map(|v| (*v as f64 / norm) as f32).collect(),
        norm,
    ))
}

/// Median L2 norm of the dump's rows under the token rule (mask, outliers left out
/// unless kept). Keeps one f32 per row: 4 bytes a token, bounded by the dump's row count.
pub fn median_residual_norm(dump: &Dump, opts: &StatsOptions) -> Result<f64> {
    median_norm_of_rows(dump, &opts.filter(dump)?, opts.batch_rows)
}

/// [`median_residual_norm`] of the rows `filter` keeps.
fn median_norm_of_rows(dump: &Dump, filter: &RowFilter, batch_rows: usize) -> Result<f64> {
    let d = dump.width();
    let mut norms: Vec<f32> = Vec::new();
    for batch in dump.batches(batch_rows) {
        let batch = batch?;
        let mask = filter.keep(dump, &batch)?;
        let mask = mask.as_deref();
        for (r, row) in batch.acts.chunks_exact(d.max(1)).enumerate() {
            if mask.is_some_and(|m| m[r] == 0) {
                continue;
            }
            let n = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            if !n.is_finite() {
                return Err(Error::NonFinite {
                    context: dump.path().display().to_string(),
                    row: batch.start + r as u64,
                });
            }
            norms.push(n as f32);
        }
    }
    if norms.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no rows to take a median norm of",
            dump.path().display()
        )));
    }
    let mid = norms.len() / 2;
    let (_, m, _) = norms.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    let upper = *m as f64;
    if norms.len() % 2 == 1 {
        return Ok(upper);
    }
    let lower = norms[..mid].iter().cloned().fold(f32::MIN, f32::max) as f64;
    Ok((lower + upper) / 2.0)
}

/// Builds the vector `sum_t strength_t * unit_value_t * unit(W_dec[latent_t])`.
/// `median-norm` and `max-act` need `acts`; max-act encodes the dump once.
pub fn steering_vector(
    engine: &dyn Engine,
    terms: &[SteerTerm],
    unit: SteerUnit,
    acts: Option<&Dump>,
    opts: &StatsOptions,
) -> Result<SteeringVector> {
    let sae = engine.sae();
    if terms.is_empty() {
        return Err(Error::invalid(
            "steering needs at least one --latent/--strength pair",
        ));
    }
    if let Some(t) = terms.iter().find(|t| !t.strength.is_finite()) {
        return Err(Error::invalid(format!(
            "strength of latent {} is not finite",
            t.latent
        )));
    }
    let lat: Vec<usize> = terms.iter().map(|t| t.latent).collect();
    super::check_latents(&lat, sae.n_latents())?;
    let need =
        |what: &str| acts.ok_or_else(|| Error::invalid(format!("--unit {what} needs --acts DUMP")));
    let mut outliers = None;
    let unit_values: Vec<f64> = match unit {
        SteerUnit::Raw => vec![1.0; terms.len()],
        SteerUnit::MedianNorm => {
            let dump = need("median-norm")?;
            dump.check_width(sae.d_in())?;
            let filter = opts.filter(dump)?;
            let m = median_norm_of_rows(dump, &filter, opts.batch_rows)?;
            outliers = Some(filter.summary());
            vec![m; terms.len()]
        }
        SteerUnit::MaxAct => {
            let dump = need("max-act")?;
            dump.check_width(sae.d_in())?;
            let filter = opts.filter(dump)?;
            let stats = super::stats_of_rows(engine, dump, &filter, opts.batch_rows)?;
            outliers = Some(filter.summary());
            let v: Vec<f64> = lat.iter().map(|l| stats.max[*l] as f64).collect();
            if let Some((l, _)) = lat.iter().zip(&v).find(|(_, m)| **m <= 0.0) {
                return Err(Error::invalid(format!(
                    "{}: latent {l} never fires in this dump, so --unit max-act gives a zero vector; \
                     use another dump or --unit raw / median-norm",
                    dump.path().display()
                )));
            }
            v
        }
    };
    let mut values = vec![0f64; sae.d_in()];
    let mut applied = Vec::with_capacity(terms.len());
    for (t, uv) in terms.iter().zip(&unit_values) {
        let (dir, dnorm) = unit_direction(sae, t.latent)?;
        let coeff = t.strength as f64 * uv;
        for (acc, v) in values.iter_mut().zip(&dir) {
            *acc += coeff * *v as f64;
        }
        applied.push(AppliedTerm {
            latent: t.latent,
            strength: t.strength,
            unit_value: *uv,
            coefficient: coeff,
            decoder_norm: dnorm,
        });
    }
    let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
    Ok(SteeringVector {
        values: values.iter().map(|v| *v as f32).collect(),
        unit,
        terms: applied,
        norm,
        outliers,
    })
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorFormat {
    /// `.npy` f32 [d].
    Npy,
    /// safetensors: tensor `direction.N` f32 [d] plus metadata (layer, latents, unit).
    Safetensors,
    /// llama.cpp control vector.
    Gguf,
}

impl VectorFormat {
    /// Parses "npy", "safetensors", "gguf".
    pub fn parse(s: &str) -> Result<VectorFormat> {
        match s {
            "npy" => Ok(VectorFormat::Npy),
            "safetensors" => Ok(VectorFormat::Safetensors),
            "gguf" => Ok(VectorFormat::Gguf),
            _ => Err(Error::invalid(format!(
                "unknown format `{s}`: expected npy, safetensors or gguf"
            ))),
        }
    }
}

impl std::fmt::Display for VectorFormat {
    /// The command-line name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VectorFormat::Npy => "npy",
            VectorFormat::Safetensors => "safetensors",
            VectorFormat::Gguf => "gguf",
        })
    }
}

/// Writes the vector for layer `layer` (the output of block `layer`, see [`super::layer_check`]);
/// layer 0 only as npy or safetensors (llama.cpp has no slot for it).
/// `model_hint` goes into the GGUF (and safetensors metadata).
pub fn export(
    v: &SteeringVector,
    format: VectorFormat,
    layer: usize,
    model_hint: &str,
    path: &Path,
) -> Result<()> {
    if layer == 0 && format == VectorFormat::Gguf {
        return Err(Error::invalid(
            "layer 0 cannot be written as a llama.cpp control vector: layer N is the output of block N \
             (0-based), HF hidden_states[N+1], and llama.cpp adds direction.N for N >= 1 only; \
             npy and safetensors vectors can steer block 0 through transformers",
        ));
    }
    match format {
        VectorFormat::Npy => crate::io::npy::write_f32(path, &[v.values.len()], &v.values),
        VectorFormat::Safetensors => {
            let name = format!("direction.{layer}");
            let tensors = [(
                name.as_str(),
                crate::io::mapped::OwnedTensor::f32(vec![v.values.len()], &v.values),
            )];
            let mut meta = HashMap::new();
            meta.insert("layer".to_string(), layer.to_string());
            meta.insert("model_hint".to_string(), model_hint.to_string());
            meta.insert(
                "unit".to_string(),
                serde_json::to_string(&v.unit).unwrap_or_default(),
            );
            meta.insert(
                "terms".to_string(),
                serde_json::to_string(&v.terms).unwrap_or_default(),
            );
            meta.insert(
                "layer_convention".to_string(),
                "llama.cpp direction.N = output of block N = HF hidden_states[N+1]".to_string(),
            );
            crate::io::mapped::write_safetensors(path, &tensors, meta)
        }
        VectorFormat::Gguf => super::gguf::ControlVector {
            model_hint: model_hint.to_string(),
            layers: vec![(layer, v.values.clone())],
        }
        .write(path),
    }
}

/// A target's move must be at least this many times the largest collateral move (any
/// other latent under the vector, any latent under the control) to be called specific.
pub const SPECIFICITY_FACTOR: f64 = 2.0;

/// A control draw this far (|cosine|) from every decoder row is taken at once: a random
/// direction in d dimensions sits near 1/sqrt(d) of each row. Otherwise the best of 8
/// draws is kept (small d, many latents), unless even that is a row's near-twin.
const CONTROL_GOOD_COS: f64 = 0.5;
const CONTROL_TWIN_COS: f64 = 0.9;

/// Dry-run options.
#[derive(Debug, Clone, Copy)]
pub struct DryRunOptions {
    /// Other latents to report, largest movement first.
    pub top_moved: usize,
    /// Seed of the random control vector.
    pub seed: u64,
    /// Also project the (single) target latent's decoder direction out of every row.
    pub ablate: bool,
    /// Token rule and batching of the passes over the dump.
    pub stats: StatsOptions,
}

impl Default for DryRunOptions {
    fn default() -> Self {
        DryRunOptions {
            top_moved: 10,
            seed: 0x5eed,
            ablate: false,
            stats: StatsOptions::default(),
        }
    }
}

/// The random control: a seeded Gaussian direction with the steering vector's own
/// direction projected out (so it is orthogonal to it), scaled to `norm`, and checked to
/// be no decoder row's near-twin. Returns the unit direction and its largest |cosine|
/// with any decoder row.
pub fn control_direction(sae: &Sae, avoid: &[f32], seed: u64) -> Result<(Vec<f32>, f64)> {
    let d = sae.d_in();
    let avoid_norm = avoid
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let row_norms = sae.w_dec.row_norms();
    // A salt keeps the control's stream apart from generators that share the seed (the
    // demo builds its SAE from the same seed: unsalted, the control was latent 0's row).
    let mut rng = Rng::new(seed ^ 0xc04e_7a01_5a17);
    let mut best: Option<(Vec<f32>, f64)> = None;
    for _ in 0..8 {
        let mut g: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        if avoid_norm > 0.0 {
            let dot: f64 =
                g.iter().zip(avoid).map(|(a, b)| a * *b as f64).sum::<f64>() / avoid_norm;
            for (x, a) in g.iter_mut().zip(avoid) {
                *x -= dot * *a as f64 / avoid_norm;
            }
        }
        let n = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n == 0.0 || !n.is_finite() {
            continue;
        }
        let u: Vec<f32> = g.iter().map(|x| (x / n) as f32).collect();
        let mut max_cos = 0f64;
        let mut row = vec![0f32; d];
        for (i, rn) in row_norms.iter().enumerate() {
            if *rn == 0.0 {
                continue;
            }
            sae.w_dec.rows_f32(i..i + 1, &mut row);
            let c = row
                .iter()
                .zip(&u)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>();
            max_cos = max_cos.max((c / *rn as f64).abs());
        }
        if max_cos <= CONTROL_GOOD_COS {
            return Ok((u, max_cos));
        }
        if best.as_ref().is_none_or(|b| max_cos < b.1) {
            best = Some((u, max_cos));
        }
    }
    if let Some(b) = best.filter(|b| b.1 < CONTROL_TWIN_COS) {
        return Ok(b);
    }
    Err(Error::invalid(format!(
        "{}: could not draw a random control direction away from every decoder row (d = {d})",
        sae.meta.source.display()
    )))
}

/// How one latent responded to the vector and to the control.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatentShift {
    /// Latent id.
    pub latent: usize,
    /// Mean activation without steering, with the vector, with the random control.
    pub before_mean: f64,
    /// See `before_mean`.
    pub steered_mean: f64,
    /// See `before_mean`.
    pub control_mean: f64,
    /// Firing frequency in the same three conditions.
    pub before_freq: f64,
    /// See `before_freq`.
    pub steered_freq: f64,
    /// See `before_freq`.
    pub control_freq: f64,
    /// steered_mean - before_mean, control_mean - before_mean.
    pub delta: f64,
    /// See `delta`.
    pub control_delta: f64,
}

/// The largest move of a latent and which one it was.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Move {
    /// Latent id.
    pub latent: usize,
    /// The signed change of its mean activation.
    pub delta: f64,
}

/// A target's move beside the collateral moves, and the plain verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Specificity {
    /// The target latent.
    pub latent: usize,
    /// The target's change of mean activation under the vector.
    pub target_delta: f64,
    /// Largest |move| of any other latent under the vector.
    pub largest_other: Option<Move>,
    /// Largest |move| of any latent (target included) under the random control.
    pub largest_under_control: Option<Move>,
    /// |target_delta| / the larger of the two collateral moves (infinite when nothing else moved).
    pub ratio: f64,
    /// ratio >= [`SPECIFICITY_FACTOR`].
    pub specific: bool,
    /// The verdict in words.
    pub verdict: String,
}

/// One condition of a sweep or ablation: the target's response and the collateral movement.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SweepRow {
    /// "add" (the vector at `strength`) or "ablate" (the latent's direction projected out).
    pub kind: String,
    /// The strength, in the vector's unit (None for ablation).
    pub strength: Option<f32>,
    /// The vector's norm; for ablation, the mean norm of what was removed per token.
    pub norm: f64,
    /// `norm` over the median residual norm of the counted tokens.
    pub norm_over_median: f64,
    /// The target's change of mean activation and its firing frequency after.
    pub target_delta: f64,
    /// See `target_delta`.
    pub target_freq: f64,
    /// Largest |move| of another latent, and the mean |move| over all other latents.
    pub collateral_max: Option<Move>,
    /// See `collateral_max`.
    pub collateral_mean_abs: f64,
    /// The same three under the control (same norm, random direction; for ablation the
    /// random direction projected out).
    pub control_target_delta: f64,
    /// See `control_target_delta`.
    pub control_collateral_max: Option<Move>,
    /// See `control_target_delta`.
    pub control_collateral_mean_abs: f64,
    /// Whether the target's move stands out (see [`Specificity`]).
    pub specific: bool,
}

/// The dry run's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunReport {
    /// The dump steered.
    pub dump: String,
    /// Tokens counted.
    pub n_tokens: u64,
    /// Euclidean norm of the steering vector.
    pub vector_norm: f64,
    /// Seed of the random control vector.
    pub control_seed: u64,
    /// How the control was made, and its largest |cosine| with any decoder row.
    pub control: String,
    /// See `control`.
    pub control_max_cos_decoder: f64,
    /// The steered latents.
    pub targets: Vec<LatentShift>,
    /// Other latents that moved most under the vector (by |delta|).
    pub moved: Vec<LatentShift>,
    /// Largest |delta| of any non-target latent under the random control.
    pub control_max_abs_delta: f64,
    /// Per target: its move beside the largest collateral moves, and the verdict.
    pub specificity: Vec<Specificity>,
    /// With `ablate`: the target's direction projected out, beside the addition.
    pub ablation: Option<SweepRow>,
    /// The token rule's outliers in the dump (left out unless --keep-outliers).
    pub outliers: OutlierSummary,
}

/// What is done to every row in one condition.
enum Edit<'a> {
    /// x + v
    Add(&'a [f32]),
    /// x - (x . u) u, u of unit norm.
    ProjectOut(&'a [f32]),
}

/// Applies `edit` to every row of `x`; returns |x . u| per row for a projection (what it
/// removed), nothing for an addition.
fn apply_edit(edit: &Edit, x: &mut [f32], d: usize) -> Option<Vec<f64>> {
    match edit {
        Edit::Add(v) => {
            for row in x.chunks_exact_mut(d) {
                row.iter_mut().zip(v.iter()).for_each(|(a, b)| *a += b);
            }
            None
        }
        Edit::ProjectOut(u) => Some(
            x.chunks_exact_mut(d)
                .map(|row| {
                    let dot: f64 = row
                        .iter()
                        .zip(u.iter())
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    row.iter_mut()
                        .zip(u.iter())
                        .for_each(|(a, b)| *a -= (dot * *b as f64) as f32);
                    dot.abs()
                })
                .collect(),
        ),
    }
}

/// What one pass measured: statistics before any edit and under each edit, and per edit
/// the mean |x . u| a projection removed from the counted rows (0 for additions).
struct EditStats {
    before: LatentStats,
    after: Vec<LatentStats>,
    removed: Vec<f64>,
    outliers: OutlierSummary,
}

/// One pass over the dump: the unedited statistics, then one set per edit.
fn measure_edits(
    engine: &dyn Engine,
    dump: &Dump,
    edits: &[Edit],
    stats_opts: &StatsOptions,
    progress: &dyn Fn(u64),
) -> Result<EditStats> {
    let sae = engine.sae();
    let (d, l) = (sae.d_in(), sae.n_latents());
    let mut before = LatentStats::new("", l);
    let mut after: Vec<LatentStats> = edits.iter().map(|_| LatentStats::new("", l)).collect();
    let mut removed = vec![0f64; edits.len()];
    let filter = stats_opts.filter(dump)?;
    for batch in dump.batches(stats_opts.batch_rows) {
        let batch = batch?;
        progress(batch.rows as u64);
        let mask = filter.keep(dump, &batch)?;
        let mask = mask.as_deref();
        let enc = engine.encode(&batch.acts, batch.rows, batch.start)?;
        engine.accumulate(&mut before, &enc.codes, mask)?;
        for ((stats, edit), sum) in after.iter_mut().zip(edits).zip(removed.iter_mut()) {
            let mut x = batch.acts.clone();
            if let Some(dots) = apply_edit(edit, &mut x, d) {
                *sum += dots
                    .iter()
                    .enumerate()
                    .filter(|(r, _)| mask.is_none_or(|m| m[*r] != 0))
                    .map(|(_, v)| v)
                    .sum::<f64>();
            }
            let enc = engine.encode(&x, batch.rows, batch.start)?;
            engine.accumulate(stats, &enc.codes, mask)?;
        }
    }
    let n = before.n_tokens.max(1) as f64;
    removed.iter_mut().for_each(|v| *v /= n);
    Ok(EditStats {
        before,
        after,
        removed,
        outliers: filter.summary(),
    })
}

fn check_vector(engine: &dyn Engine, dump: &Dump, vector: &SteeringVector) -> Result<()> {
    let sae = engine.sae();
    dump.check_width(sae.d_in())?;
    if vector.values.len() != sae.d_in() {
        return Err(Error::invalid(format!(
            "steering vector has width {}, the SAE expects {}",
            vector.values.len(),
            sae.d_in()
        )));
    }
    Ok(())
}

fn shift(b: &LatentStats, s: &LatentStats, c: &LatentStats, i: usize) -> LatentShift {
    let (mb, ms, mc) = (b.mean()[i], s.mean()[i], c.mean()[i]);
    let n = b.n_tokens.max(1) as f64;
    LatentShift {
        latent: i,
        before_mean: mb,
        steered_mean: ms,
        control_mean: mc,
        before_freq: b.n_active[i] as f64 / n,
        steered_freq: s.n_active[i] as f64 / n,
        control_freq: c.n_active[i] as f64 / n,
        delta: ms - mb,
        control_delta: mc - mb,
    }
}

/// The largest |move| among latents passing `keep`, and the mean |move| over them.
fn collateral(deltas: &[f64], keep: impl Fn(usize) -> bool) -> (Option<Move>, f64) {
    let mut best: Option<Move> = None;
    let (mut sum, mut n) = (0.0, 0usize);
    for (i, d) in deltas.iter().enumerate().filter(|(i, _)| keep(*i)) {
        sum += d.abs();
        n += 1;
        if best.is_none_or(|b| d.abs() > b.delta.abs()) {
            best = Some(Move {
                latent: i,
                delta: *d,
            });
        }
    }
    (best, if n == 0 { 0.0 } else { sum / n as f64 })
}

fn deltas(before: &[f64], after: &LatentStats) -> Vec<f64> {
    after
        .mean()
        .iter()
        .zip(before)
        .map(|(a, b)| a - b)
        .collect()
}

/// |target| over the larger collateral move, and whether it clears [`SPECIFICITY_FACTOR`].
fn ratio_of(target: f64, a: Option<Move>, b: Option<Move>) -> (f64, bool) {
    let floor = [a, b]
        .iter()
        .flatten()
        .map(|m| m.delta.abs())
        .fold(0.0, f64::max);
    let ratio = if floor > 0.0 {
        target.abs() / floor
    } else if target != 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    (ratio, ratio >= SPECIFICITY_FACTOR)
}

fn specificity(
    latent: usize,
    target_delta: f64,
    other: Option<Move>,
    ctrl: Option<Move>,
) -> Specificity {
    let (ratio, specific) = ratio_of(target_delta, other, ctrl);
    let show = |m: Option<Move>| match m {
        Some(m) => format!("{:+.4} (latent {})", m.delta, m.latent),
        None => "nothing".to_string(),
    };
    let verdict = if specific {
        format!(
            "specific: latent {latent} moved {target_delta:+.4}, {ratio:.1}x the largest collateral move \
             (other latents under the vector: {}; any latent under the control: {})",
            show(other),
            show(ctrl)
        )
    } else {
        format!(
            "NOT SPECIFIC: latent {latent} moved {target_delta:+.4}, comparable to the collateral moves \
             (other latents under the vector: {}; any latent under the random control: {}); below \
             {SPECIFICITY_FACTOR}x, this vector does not single out the latent",
            show(other),
            show(ctrl)
        )
    };
    Specificity {
        latent,
        target_delta,
        largest_other: other,
        largest_under_control: ctrl,
        ratio,
        specific,
        verdict,
    }
}

/// A sweep/ablation row from the statistics before, under the edit and under its control.
#[allow(clippy::too_many_arguments)]
fn sweep_row(
    kind: &str,
    strength: Option<f32>,
    norm: f64,
    median: f64,
    target: usize,
    before: &LatentStats,
    edited: &LatentStats,
    control: &LatentStats,
) -> SweepRow {
    let mb = before.mean();
    let (de, dc) = (deltas(&mb, edited), deltas(&mb, control));
    let others = |i: usize| i != target;
    let (cmax, cmean) = collateral(&de, others);
    let (ccmax, ccmean) = collateral(&dc, others);
    let (ctrl_any, _) = collateral(&dc, |_| true);
    let (_, specific) = ratio_of(de[target], cmax, ctrl_any);
    SweepRow {
        kind: kind.to_string(),
        strength,
        norm,
        norm_over_median: if median > 0.0 {
            norm / median
        } else {
            f64::NAN
        },
        target_delta: de[target],
        target_freq: edited.n_active[target] as f64 / edited.n_tokens.max(1) as f64,
        collateral_max: cmax,
        collateral_mean_abs: cmean,
        control_target_delta: dc[target],
        control_collateral_max: ccmax,
        control_collateral_mean_abs: ccmean,
        specific,
    }
}

/// Adds `vector` to every token of `dump`, re-encodes, and compares with the unsteered
/// codes and with a random vector of the same norm.
pub fn dry_run(
    engine: &dyn Engine,
    dump: &Dump,
    vector: &SteeringVector,
    opts: &DryRunOptions,
) -> Result<DryRunReport> {
    dry_run_with_progress(engine, dump, vector, opts, &|_| {})
}

/// [`dry_run`] reporting each batch's rows to `progress` as it is taken up.
pub fn dry_run_with_progress(
    engine: &dyn Engine,
    dump: &Dump,
    vector: &SteeringVector,
    opts: &DryRunOptions,
    progress: &dyn Fn(u64),
) -> Result<DryRunReport> {
    check_vector(engine, dump, vector)?;
    let sae = engine.sae();
    let l = sae.n_latents();
    let targets: Vec<usize> = vector.terms.iter().map(|t| t.latent).collect();
    if opts.ablate && targets.len() != 1 {
        return Err(Error::invalid(
            "ablation projects out one latent's direction: give exactly one --latent",
        ));
    }
    let (unit_ctrl, max_cos) = control_direction(sae, &vector.values, opts.seed)?;
    let control: Vec<f32> = unit_ctrl.iter().map(|v| v * vector.norm as f32).collect();
    let target_dir = if opts.ablate {
        Some(unit_direction(sae, targets[0])?.0)
    } else {
        None
    };
    let mut edits = vec![Edit::Add(&vector.values), Edit::Add(&control)];
    if let Some(u) = &target_dir {
        edits.push(Edit::ProjectOut(u));
        edits.push(Edit::ProjectOut(&unit_ctrl));
    }
    let EditStats {
        before,
        after,
        removed,
        outliers,
    } = measure_edits(engine, dump, &edits, &opts.stats, progress)?;
    let (steered, ctrl) = (&after[0], &after[1]);
    let mb = before.mean();
    let (ds, dc) = (deltas(&mb, steered), deltas(&mb, ctrl));
    let mut others: Vec<usize> = (0..l).filter(|i| !targets.contains(i)).collect();
    others.sort_by(|a, b| ds[*b].abs().total_cmp(&ds[*a].abs()).then(a.cmp(b)));
    let (other_max, _) = collateral(&ds, |i| !targets.contains(&i));
    let (ctrl_other_max, _) = collateral(&dc, |i| !targets.contains(&i));
    let (ctrl_any_max, _) = collateral(&dc, |_| true);
    let ablation = match &target_dir {
        Some(_) => {
            let median = median_residual_norm(dump, &opts.stats)?;
            Some(sweep_row(
                "ablate", None, removed[2], median, targets[0], &before, &after[2], &after[3],
            ))
        }
        None => None,
    };
    Ok(DryRunReport {
        dump: dump.path().display().to_string(),
        n_tokens: before.n_tokens,
        vector_norm: vector.norm,
        control_seed: opts.seed,
        control: "a seeded Gaussian direction with the steering vector's direction projected out, \
                  scaled to the vector's norm"
            .to_string(),
        control_max_cos_decoder: max_cos,
        targets: targets
            .iter()
            .map(|i| shift(&before, steered, ctrl, *i))
            .collect(),
        moved: others
            .iter()
            .take(opts.top_moved)
            .map(|i| shift(&before, steered, ctrl, *i))
            .collect(),
        control_max_abs_delta: ctrl_other_max.map_or(0.0, |m| m.delta.abs()),
        specificity: targets
            .iter()
            .map(|t| specificity(*t, ds[*t], other_max, ctrl_any_max))
            .collect(),
        ablation,
        outliers,
    })
}

/// The strength sweep's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepReport {
    /// The dump steered.
    pub dump: String,
    /// The target latent.
    pub latent: usize,
    /// What a strength of 1 means.
    pub unit: SteerUnit,
    /// Tokens counted.
    pub n_tokens: u64,
    /// Median L2 norm of the counted rows (the `norm_over_median` denominator).
    pub median_norm: f64,
    /// Seed of the random control vector.
    pub control_seed: u64,
    /// Largest |cosine| of a control direction with any decoder row.
    pub control_max_cos_decoder: f64,
    /// One row per strength, in the order given, then the ablation row if asked for.
    pub rows: Vec<SweepRow>,
    /// The factor a target move must clear over the collateral moves to be specific.
    pub specificity_factor: f64,
    /// The token rule's outliers in the dump (left out unless --keep-outliers).
    pub outliers: OutlierSummary,
}

/// Steers `latent` at each of `strengths` (in `unit`), each beside a random control of
/// the same norm, and with `ablate` projects the latent's direction out as well; one
/// pass over the dump for every condition.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    engine: &dyn Engine,
    dump: &Dump,
    latent: usize,
    strengths: &[f32],
    unit: SteerUnit,
    ablate: bool,
    opts: &DryRunOptions,
    progress: &dyn Fn(u64),
) -> Result<SweepReport> {
    let sae = engine.sae();
    if strengths.is_empty() && !ablate {
        return Err(Error::invalid(
            "a sweep needs at least one strength (or --ablate)",
        ));
    }
    if let Some(s) = strengths.iter().find(|s| !s.is_finite()) {
        return Err(Error::invalid(format!("strength {s} is not finite")));
    }
    // The unit is measured once (max-act encodes the dump); each strength scales it.
    let one = steering_vector(
        engine,
        &[SteerTerm {
            latent,
            strength: 1.0,
        }],
        unit,
        Some(dump),
        &opts.stats,
    )?;
    check_vector(engine, dump, &one)?;
    let vectors: Vec<SteeringVector> = strengths
        .iter()
        .map(|s| SteeringVector {
            values: one.values.iter().map(|v| v * s).collect(),
            unit,
            terms: one
                .terms
                .iter()
                .map(|t| AppliedTerm {
                    strength: *s,
                    coefficient: t.coefficient * *s as f64,
                    ..t.clone()
                })
                .collect(),
            norm: one.norm * s.abs() as f64,
            outliers: one.outliers,
        })
        .collect();
    dump.check_width(sae.d_in())?;
    let (u, _) = unit_direction(sae, latent)?;
    let (unit_ctrl, max_cos) = control_direction(sae, &u, opts.seed)?;
    let controls: Vec<Vec<f32>> = vectors
        .iter()
        .map(|v| unit_ctrl.iter().map(|c| c * v.norm as f32).collect())
        .collect();
    let mut edits = Vec::new();
    for (v, c) in vectors.iter().zip(&controls) {
        edits.push(Edit::Add(&v.values));
        edits.push(Edit::Add(c));
    }
    if ablate {
        edits.push(Edit::ProjectOut(&u));
        edits.push(Edit::ProjectOut(&unit_ctrl));
    }
    let median = median_residual_norm(dump, &opts.stats)?;
    let EditStats {
        before,
        after,
        removed,
        outliers,
    } = measure_edits(engine, dump, &edits, &opts.stats, progress)?;
    let mut rows: Vec<SweepRow> = vectors
        .iter()
        .zip(strengths)
        .enumerate()
        .map(|(i, (v, s))| {
            let (e, c) = (&after[2 * i], &after[2 * i + 1]);
            sweep_row("add", Some(*s), v.norm, median, latent, &before, e, c)
        })
        .collect();
    if ablate {
        let k = 2 * vectors.len();
        rows.push(sweep_row(
            "ablate",
            None,
            removed[k],
            median,
            latent,
            &before,
            &after[k],
            &after[k + 1],
        ));
    }
    Ok(SweepReport {
        dump: dump.path().display().to_string(),
        latent,
        unit,
        n_tokens: before.n_tokens,
        median_norm: median,
        control_seed: opts.seed,
        control_max_cos_decoder: max_cos,
        rows,
        specificity_factor: SPECIFICITY_FACTOR,
        outliers,
    })
}

/// The sweep as a markdown table.
pub fn sweep_markdown(r: &SweepReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("# Steering strength sweep\n\n");
    let _ = writeln!(
        s,
        "Latent {} on `{}` ({} tokens counted), unit {}, median residual norm {:.4}. Each row beside a \
         random control of the same norm (seed {}, largest |cos| with a decoder row {:.3}); \"specific\" \
         means the target moved at least {}x the largest collateral move.\n",
        r.latent,
        r.dump,
        r.n_tokens,
        r.unit,
        r.median_norm,
        r.control_seed,
        r.control_max_cos_decoder,
        r.specificity_factor
    );
    let _ = writeln!(
        s,
        "| condition | norm | norm / median | target delta | target freq | largest other | mean abs other | \
         control: target | control: largest | control: mean abs | specific |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mv = |m: Option<Move>| match m {
        Some(m) => format!("{:+.4} (#{})", m.delta, m.latent),
        None => "-".to_string(),
    };
    for row in &r.rows {
        let cond = match row.strength {
            Some(st) => format!("add {st}"),
            None => "ablate".to_string(),
        };
        let _ = writeln!(
            s,
            "| {cond} | {:.4} | {:.3} | {:+.4} | {:.3} | {} | {:.5} | {:+.4} | {} | {:.5} | {} |",
            row.norm,
            row.norm_over_median,
            row.target_delta,
            row.target_freq,
            mv(row.collateral_max),
            row.collateral_mean_abs,
            row.control_target_delta,
            mv(row.control_collateral_max),
            row.control_collateral_mean_abs,
            if row.specific { "yes" } else { "NO" }
        );
    }
    s
}

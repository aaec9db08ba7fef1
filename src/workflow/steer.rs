//! Steering vectors (DESIGN.md, "Steering vectors"): `s * W_dec[i] / ||W_dec[i]||`
//! in explicit units, summed over several latents; export to .npy, safetensors and
//! llama.cpp GGUF; and a dry run that adds the vector to a dump and re-encodes it,
//! beside a random vector of the same norm as a control.

use std::collections::HashMap;
use std::path::Path;

use crate::dump::Dump;
use crate::error::{Error, Result};
use crate::ops::Engine;
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
    pub latent: usize,
    pub strength: f32,
}

/// How a term turned into a coefficient.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AppliedTerm {
    pub latent: usize,
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
    pub values: Vec<f32>,
    pub unit: SteerUnit,
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

/// Writes the vector for layer `layer` (llama.cpp numbering, see [`super::gguf`]).
/// `model_hint` goes into the GGUF (and safetensors metadata).
pub fn export(
    v: &SteeringVector,
    format: VectorFormat,
    layer: usize,
    model_hint: &str,
    path: &Path,
) -> Result<()> {
    if layer == 0 {
        return Err(Error::invalid(
            "--layer must be >= 1: layer N is the output of block N (0-based), HF hidden_states[N+1]; \
             llama.cpp has no control-vector slot for N = 0",
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

/// Dry-run options.
#[derive(Debug, Clone, Copy)]
pub struct DryRunOptions {
    /// Other latents to report, largest movement first.
    pub top_moved: usize,
    /// Seed of the random control vector.
    pub seed: u64,
    pub stats: StatsOptions,
}

impl Default for DryRunOptions {
    fn default() -> Self {
        DryRunOptions {
            top_moved: 10,
            seed: 0x5eed,
            stats: StatsOptions::default(),
        }
    }
}

/// How one latent responded to the vector and to the control.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatentShift {
    pub latent: usize,
    /// Mean activation without steering, with the vector, with the random control.
    pub before_mean: f64,
    pub steered_mean: f64,
    pub control_mean: f64,
    /// Firing frequency in the same three conditions.
    pub before_freq: f64,
    pub steered_freq: f64,
    pub control_freq: f64,
    /// steered_mean - before_mean, control_mean - before_mean.
    pub delta: f64,
    pub control_delta: f64,
}

/// The dry run's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunReport {
    pub dump: String,
    pub n_tokens: u64,
    pub vector_norm: f64,
    pub control_seed: u64,
    /// The steered latents.
    pub targets: Vec<LatentShift>,
    /// Other latents that moved most under the vector (by |delta|).
    pub moved: Vec<LatentShift>,
    /// Largest |delta| of any non-target latent under the random control.
    pub control_max_abs_delta: f64,
    /// The token rule's outliers in the dump (left out unless --keep-outliers).
    pub outliers: OutlierSummary,
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
    let sae = engine.sae();
    dump.check_width(sae.d_in())?;
    if vector.values.len() != sae.d_in() {
        return Err(Error::invalid(format!(
            "steering vector has width {}, the SAE expects {}",
            vector.values.len(),
            sae.d_in()
        )));
    }
    let l = sae.n_latents();
    let control = Rng::new(opts.seed).direction(sae.d_in(), vector.norm);
    let (mut before, mut steered, mut ctrl) = (
        LatentStats::new("", l),
        LatentStats::new("", l),
        LatentStats::new("", l),
    );
    let d = sae.d_in();
    let filter = opts.stats.filter(dump)?;
    for batch in dump.batches(opts.stats.batch_rows) {
        let batch = batch?;
        progress(batch.rows as u64);
        let mask = filter.keep(dump, &batch)?;
        let mask = mask.as_deref();
        let enc = engine.encode(&batch.acts, batch.rows, batch.start)?;
        engine.accumulate(&mut before, &enc.codes, mask)?;
        for (stats, add) in [(&mut steered, &vector.values), (&mut ctrl, &control)] {
            let mut x = batch.acts.clone();
            for row in x.chunks_exact_mut(d) {
                for (v, a) in row.iter_mut().zip(add.iter()) {
                    *v += a;
                }
            }
            let enc = engine.encode(&x, batch.rows, batch.start)?;
            engine.accumulate(stats, &enc.codes, mask)?;
        }
    }
    let targets: Vec<usize> = vector.terms.iter().map(|t| t.latent).collect();
    let (mb, ms, mc) = (before.mean(), steered.mean(), ctrl.mean());
    let mut others: Vec<usize> = (0..l).filter(|i| !targets.contains(i)).collect();
    others.sort_by(|a, b| {
        (ms[*b] - mb[*b])
            .abs()
            .total_cmp(&(ms[*a] - mb[*a]).abs())
            .then(a.cmp(b))
    });
    let control_max_abs_delta = (0..l)
        .filter(|i| !targets.contains(i))
        .map(|i| (mc[i] - mb[i]).abs())
        .fold(0.0, f64::max);
    Ok(DryRunReport {
        dump: dump.path().display().to_string(),
        n_tokens: before.n_tokens,
        vector_norm: vector.norm,
        control_seed: opts.seed,
        targets: targets
            .iter()
            .map(|i| shift(&before, &steered, &ctrl, *i))
            .collect(),
        moved: others
            .iter()
            .take(opts.top_moved)
            .map(|i| shift(&before, &steered, &ctrl, *i))
            .collect(),
        control_max_abs_delta,
        outliers: filter.summary(),
    })
}

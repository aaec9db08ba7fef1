//! `sae demo`: a synthetic but faithful audit, end to end, in a folder it names.
//!
//! The scenario follows the paper's setup. A TopK SAE (tied weights, random unit
//! decoder rows) explains a base model's residual stream as sparse sums of decoder
//! rows. Several "misaligned" fine-tunes share a planted persona latent (fires more)
//! and a suppressed assistant latent (fires less), and each has a stronger shift of
//! its own domain latent, so each fine-tune alone ranks its domain latent first and
//! only the average over fine-tunes ranks the persona first. Aligned fine-tunes have
//! their own domain shifts and no persona. A series of checkpoints ramps the persona
//! in. All inputs are real files (an SAELens directory, safetensors dumps with token
//! ids, doc ids and a response mask) run through the same code paths as the CLI.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{BackendKind, Engine, EngineOptions};
use crate::deterministic::GOLDEN_GAMMA;
use crate::error::{Error, Result};
use crate::io::mapped::{write_safetensors, OwnedTensor};
use crate::matrix::Matrix;
use crate::provenance::Provenance;
use crate::sae::{Activation, Format, Normalization, Sae, SaeMeta};

use super::detect::{detect, DetectOptions, DetectReport};
use super::diff::{diff, DiffOptions, DiffReport};
use super::monitor::{monitor, Alarm, MonitorReport};
use super::rng::Rng;
use super::steer::{dry_run, steering_vector, DryRunOptions, DryRunReport, SteerTerm, SteerUnit};
use super::top_examples::{top_examples, TopExamplesOptions};
use super::{measure, named_stats, pair, report, Measured, Pairing, PairingRequest, StatsOptions};

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder for data, reports and plots (default: a new folder under the system temp dir).
    pub out_dir: Option<PathBuf>,
    /// Seed of every random draw (same seed, same data).
    pub seed: u64,
    /// Backend of the engine.
    pub backend: BackendKind,
    /// Tokens per dump.
    pub n_tokens: usize,
    /// Activation width.
    pub d: usize,
    /// Number of latents of the SAE.
    pub n_latents: usize,
    /// Rows per batch.
    pub batch_rows: usize,
    /// Tile width and CUDA precision of the engine.
    pub engine: EngineOptions,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out_dir: None,
            seed: 2026,
            backend: BackendKind::Auto,
            n_tokens: 2048,
            d: 256,
            n_latents: 4096,
            batch_rows: 1024,
            engine: EngineOptions::default(),
        }
    }
}

/// What was planted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Planted {
    /// The persona latent (fires in every misaligned fine-tune).
    pub persona: usize,
    /// The assistant latent (fires in the base and aligned fine-tunes).
    pub assistant: usize,
    /// Names of the misaligned fine-tunes.
    pub misaligned: Vec<String>,
    /// Each misaligned fine-tune's domain latent.
    pub misaligned_domains: Vec<usize>,
    /// Names of the aligned fine-tunes.
    pub aligned: Vec<String>,
    /// Each aligned fine-tune's domain latent.
    pub aligned_domains: Vec<usize>,
    /// Names of the training checkpoints.
    pub checkpoints: Vec<String>,
    /// Persona firing probability per checkpoint.
    pub checkpoint_persona_prob: Vec<f64>,
}

/// One check of what was found against what was planted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The numbers behind it.
    pub detail: String,
}

/// The demo's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// The folder with the data, reports and plots.
    pub folder: PathBuf,
    /// The engine's name.
    pub backend: String,
    /// What was planted.
    pub planted: Planted,
    /// Each finding against the plant.
    pub checks: Vec<Check>,
    /// Whether every check held.
    pub all_ok: bool,
    /// Wall-clock seconds of the demo.
    pub seconds: f64,
    /// The diff of the fine-tunes against the base.
    pub diff: DiffReport,
    /// The detection over misaligned and aligned fine-tunes.
    pub detect: DetectReport,
    /// The steering dry run on the persona latent.
    pub steer: DryRunReport,
    /// The monitoring of the checkpoints.
    pub monitor: MonitorReport,
}

const AMP_PERSONA: (f64, f64) = (2.5, 3.5);
const P_PERSONA: f64 = 0.12;
const P_DOMAIN: f64 = 0.30;
const P_ASSISTANT: f64 = 0.35;
const SUPPRESS: f64 = 0.6;
const DOC_LEN: usize = 64;
const PROMPT_LEN: usize = 16;

/// How one synthetic model departs from the base.
#[derive(Debug, Clone, Copy)]
struct Shift {
    id: u64,
    p_persona: f64,
    domain: Option<usize>,
    p_domain: f64,
    suppress: f64,
}

struct World {
    d: usize,
    w_dec: Vec<f32>,
    pool: Vec<usize>,
    persona: usize,
    assistant: usize,
    seed: u64,
}

impl World {
    fn add(&self, x: &mut [f32], latent: usize, amp: f64) {
        let row = &self.w_dec[latent * self.d..(latent + 1) * self.d];
        for (v, w) in x.iter_mut().zip(row) {
            *v += (amp * *w as f64) as f32;
        }
    }

    /// The dump of one model: the same prompts (base draws seeded by token) plus the
    /// model's shift and its own noise.
    fn dump(&self, shift: &Shift, n: usize) -> (Vec<f32>, Vec<i64>, Vec<i64>, Vec<u8>) {
        let d = self.d;
        let mut acts = vec![0f32; n * d];
        let (mut tok, mut doc, mut mask) = (vec![0i64; n], vec![0i64; n], vec![0u8; n]);
        for t in 0..n {
            let mut base = Rng::new(self.seed ^ (t as u64).wrapping_mul(GOLDEN_GAMMA));
            let mut own = Rng::new(
                self.seed ^ shift.id.wrapping_mul(0xd1b5_4a32_d192_ed03) ^ (t as u64) << 20,
            );
            let x = &mut acts[t * d..(t + 1) * d];
            tok[t] = base.below(5000) as i64;
            doc[t] = (t / DOC_LEN) as i64;
            mask[t] = (t % DOC_LEN >= PROMPT_LEN) as u8;
            for _ in 0..8 {
                // Skewed toward the front of the pool: a few common latents, a long tail.
                let u = base.uniform();
                let j = self.pool[((u * u) * self.pool.len() as f64) as usize % self.pool.len()];
                let amp = 0.5 + 2.0 * base.uniform();
                self.add(x, j, amp * (1.0 + 0.05 * own.normal()));
            }
            if base.uniform() < P_ASSISTANT && own.uniform() >= shift.suppress {
                self.add(x, self.assistant, 1.5 + base.uniform());
            }
            if own.uniform() < shift.p_persona {
                let a = AMP_PERSONA.0 + (AMP_PERSONA.1 - AMP_PERSONA.0) * own.uniform();
                self.add(x, self.persona, a);
            }
            if let Some(dl) = shift.domain {
                if own.uniform() < shift.p_domain {
                    self.add(x, dl, 2.5 + own.uniform());
                }
            }
            for v in x.iter_mut() {
                *v += (0.05 * own.normal()) as f32;
            }
        }
        (acts, tok, doc, mask)
    }
}

fn write_dump(path: &Path, d: usize, data: (Vec<f32>, Vec<i64>, Vec<i64>, Vec<u8>)) -> Result<()> {
    let n = data.1.len();
    write_safetensors(
        path,
        &[
            ("activations", OwnedTensor::f32(vec![n, d], &data.0)),
            ("token_ids", OwnedTensor::i64(vec![n], &data.1)),
            ("doc_ids", OwnedTensor::i64(vec![n], &data.2)),
            ("mask", OwnedTensor::u8(vec![n], &data.3)),
        ],
        Default::default(),
    )
}

fn fresh_folder() -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::env::temp_dir().join(format!("sae-demo-{stamp}-{}", std::process::id()))
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))
}

fn check(checks: &mut Vec<Check>, name: &str, ok: bool, detail: String) {
    checks.push(Check {
        name: name.to_string(),
        ok,
        detail,
    });
}

/// Builds the scenario, runs diff, steer (dry run), detect, monitor and top examples,
/// writes reports and plots, and checks what was found against what was planted.
pub fn run(opts: &DemoOptions) -> Result<DemoReport> {
    let t0 = Instant::now();
    let folder = opts.out_dir.clone().unwrap_or_else(fresh_folder);
    let (data, reports) = (folder.join("data"), folder.join("reports"));
    mkdir(&data)?;
    mkdir(&reports)?;
    let (d, l) = (opts.d, opts.n_latents);
    if d < 16 || l < 64 {
        return Err(Error::invalid("demo needs d >= 16 and at least 64 latents"));
    }
    let (world, planted) = plant(opts);
    let sae_dir = data.join("sae");
    let sae = write_and_load_sae(&world, &sae_dir)?;
    let engine = crate::engine::engine(opts.backend, sae.clone(), &opts.engine)?;
    let stats = StatsOptions {
        batch_rows: opts.batch_rows,
        ..Default::default()
    };
    // Each report records the demo's options and the synthetic files it read.
    let mut prov = Provenance::new("sae demo");
    prov.option("seed", opts.seed)
        .option("tokens", opts.n_tokens)
        .option("batch_size", opts.batch_rows)
        .option("engine", engine.name())
        .option("mask", stats.rule.use_mask);
    let audit = Audit {
        engine: engine.as_ref(),
        fingerprint: sae.fingerprint(),
        sae_dir,
        data,
        reports,
        stats,
        prov,
        seed: opts.seed,
    };

    write_dumps(&audit, &world, &planted, opts.n_tokens)?;
    let m = audit.measure_all(&planted)?;
    let mut checks = Vec::new();
    let diff = audit.diff(&planted, &m, &mut checks)?;
    let detect = audit.detect(&planted, &m, &mut checks)?;
    let steer = audit.steer(&planted, &mut checks)?;
    let monitor = audit.monitor(&planted, &m, &detect, &mut checks)?;
    audit.top_examples(&planted)?;

    let out = DemoReport {
        folder: folder.clone(),
        backend: engine.name(),
        planted,
        all_ok: checks.iter().all(|c| c.ok),
        checks,
        seconds: t0.elapsed().as_secs_f64(),
        diff,
        detect,
        steer,
        monitor,
    };
    report::write_report_markdown(
        &folder.join("REPORT.md"),
        &summary_markdown(&out),
        &audit.prov,
    )?;
    report::write_json_with_provenance(&folder.join("demo.json"), &out, &audit.prov)?;
    Ok(out)
}

/// The random decoder and the planted latents: persona, assistant and the domain latents
/// at fixed fractions of the range, away from the pool's common end.
fn plant(opts: &DemoOptions) -> (World, Planted) {
    let (d, l) = (opts.d, opts.n_latents);
    let mut rng = Rng::new(opts.seed);
    let mut w_dec = Vec::with_capacity(l * d);
    for _ in 0..l {
        w_dec.extend(rng.direction(d, 1.0));
    }
    let at = |f: f64| ((l as f64 * f) as usize).min(l - 1);
    let persona = at(0.663);
    let assistant = at(0.077);
    let misaligned_domains = vec![at(0.244), at(0.367), at(0.538), at(0.733)];
    let aligned_domains = vec![at(0.1), at(0.395), at(0.922)];
    let planted: Vec<usize> = [persona, assistant]
        .into_iter()
        .chain(misaligned_domains.iter().cloned())
        .chain(aligned_domains.iter().cloned())
        .collect();
    let pool: Vec<usize> = (0..l).filter(|i| !planted.contains(i)).collect();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let checkpoint_persona_prob = vec![0.0, 0.0, 0.01, 0.03, 0.10, P_PERSONA];
    let checkpoints = (0..checkpoint_persona_prob.len())
        .map(|i| format!("step-{}", i * 100))
        .collect();
    let world = World {
        d,
        w_dec,
        pool,
        persona,
        assistant,
        seed: opts.seed,
    };
    let planted = Planted {
        persona,
        assistant,
        misaligned: names(&["insecure-code", "bad-medical", "bad-legal", "bad-finance"]),
        misaligned_domains,
        aligned: names(&["good-code", "good-medical", "good-math"]),
        aligned_domains,
        checkpoints,
        checkpoint_persona_prob,
    };
    (world, planted)
}

/// The tied TopK SAE over the world's decoder, written in the SAELens layout to `dir`
/// and loaded back like any user's SAE.
fn write_and_load_sae(world: &World, dir: &Path) -> Result<Arc<Sae>> {
    let (d, l) = (world.d, world.w_dec.len() / world.d);
    let sae = Sae {
        meta: SaeMeta {
            format: Format::SaeLens,
            source: dir.to_path_buf(),
            architecture: "topk".into(),
            hook_name: Some("blocks.12.hook_resid_post".into()),
            hook_layer: Some(12),
            model_name: Some("sae-demo-synthetic".into()),
            dtype: crate::dtype::DType::F32,
            conventions: Vec::new(),
            warnings: Vec::new(),
        },
        w_enc: Matrix::from_f32(&world.w_dec, l, d, crate::dtype::DType::F32)?,
        w_dec: Matrix::from_f32(&world.w_dec, l, d, crate::dtype::DType::F32)?,
        b_enc: vec![0.0; l],
        b_dec: vec![0.0; d],
        threshold: None,
        activation: Activation::TopK { k: 32 },
        subtract_b_dec: true,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    };
    mkdir(dir)?;
    crate::formats::write_saelens(&sae, dir)?;
    Ok(Arc::new(crate::formats::load(dir, None)?))
}

/// One dump per model: the base, the misaligned and aligned fine-tunes, and the
/// checkpoints that ramp the persona in (and the first misaligned domain with it).
fn write_dumps(audit: &Audit, world: &World, p: &Planted, n: usize) -> Result<()> {
    let none = Shift {
        id: 0,
        p_persona: 0.0,
        domain: None,
        p_domain: 0.0,
        suppress: 0.0,
    };
    let mut id = 1;
    let mut next = |p_persona, domain, p_domain, suppress| {
        id += 1;
        Shift {
            id,
            p_persona,
            domain: Some(domain),
            p_domain,
            suppress,
        }
    };
    let d = world.d;
    write_dump(&audit.path("base"), d, world.dump(&none, n))?;
    for (name, dl) in p.misaligned.iter().zip(&p.misaligned_domains) {
        let shift = next(P_PERSONA, *dl, P_DOMAIN, SUPPRESS);
        write_dump(&audit.path(name), d, world.dump(&shift, n))?;
    }
    for (name, dl) in p.aligned.iter().zip(&p.aligned_domains) {
        let shift = next(0.0, *dl, P_DOMAIN, 0.0);
        write_dump(&audit.path(name), d, world.dump(&shift, n))?;
    }
    let ramp = &p.checkpoint_persona_prob;
    for (k, (name, prob)) in p.checkpoints.iter().zip(ramp).enumerate() {
        let frac = *prob / P_PERSONA;
        let shift = next(
            *prob,
            p.misaligned_domains[0],
            P_DOMAIN * k as f64 / (ramp.len() - 1) as f64,
            SUPPRESS * frac,
        );
        write_dump(&audit.path(name), d, world.dump(&shift, n))?;
    }
    Ok(())
}

/// Every input measured, and the pairings of the three comparisons.
struct Measurements {
    base: Measured,
    misaligned: Vec<Measured>,
    aligned: Vec<Measured>,
    checkpoints: Vec<Measured>,
    misaligned_pairing: Pairing,
    detect_pairing: Pairing,
    checkpoint_pairing: Pairing,
}

/// What every step of the audit shares: the engine, the SAE, the folders and the
/// provenance each report starts from.
struct Audit<'a> {
    engine: &'a dyn Engine,
    fingerprint: String,
    sae_dir: PathBuf,
    data: PathBuf,
    reports: PathBuf,
    stats: StatsOptions,
    prov: Provenance,
    seed: u64,
}

const BASE: &str = "base";

impl Audit<'_> {
    /// The dump of the model `name`.
    fn path(&self, name: &str) -> PathBuf {
        self.data.join(format!("{name}.safetensors"))
    }

    /// The provenance of one step: the demo's options, the SAE and the dumps read.
    fn provenance(&self, what: &str, inputs: &[(&str, &[String])]) -> Result<Provenance> {
        let mut p = self.prov.clone();
        p.command = format!("sae demo ({what})");
        p.sae(&self.sae_dir, &self.fingerprint)?;
        for (role, names) in inputs {
            for n in names.iter() {
                p.input(role, &self.path(n))?;
            }
        }
        Ok(p)
    }

    /// Measures every input through the CLI's code path (dumps encoded on the fly).
    fn measure_all(&self, p: &Planted) -> Result<Measurements> {
        let m = |name: &str| {
            measure(
                self.engine,
                &self.fingerprint,
                &self.path(name),
                &self.stats,
            )
        };
        let all = |names: &[String]| names.iter().map(|s| m(s)).collect::<Result<Vec<_>>>();
        let base = m(BASE)?;
        let misaligned = all(&p.misaligned)?;
        let aligned = all(&p.aligned)?;
        let checkpoints = all(&p.checkpoints)?;
        let auto = PairingRequest::Auto;
        let misaligned_pairing = pair(&base, &misaligned, auto)?;
        let all_models: Vec<Measured> = misaligned.iter().chain(&aligned).cloned().collect();
        let detect_pairing = pair(&base, &all_models, auto)?;
        let checkpoint_pairing = pair(&base, &checkpoints, auto)?;
        Ok(Measurements {
            base,
            misaligned,
            aligned,
            checkpoints,
            misaligned_pairing,
            detect_pairing,
            checkpoint_pairing,
        })
    }

    /// Diff of the misaligned fine-tunes: the persona first on average, each domain
    /// first alone, the assistant the largest decrease.
    fn diff(&self, p: &Planted, m: &Measurements, checks: &mut Vec<Check>) -> Result<DiffReport> {
        let dr = diff(
            &m.base.name,
            &m.base.stats,
            &named_stats(&m.misaligned),
            &m.misaligned_pairing,
            &DiffOptions {
                top: 20,
                bottom: 20,
                ..Default::default()
            },
        )?;
        let base = [BASE.to_string()];
        let mut prov = self.provenance("diff", &[("base", &base), ("tuned", &p.misaligned)])?;
        prov.option("order", dr.order.to_string());
        report::write_diff_outputs(&self.reports.join("diff"), &dr, &prov)?;
        let persona = p.persona;
        check(
            checks,
            "diff: the planted persona latent ranks first after averaging",
            dr.latents.first().map(|x| x.latent) == Some(persona),
            format!(
                "top latent {} (avg delta {:+.3}); planted persona {persona}",
                shown(dr.latents.first().map(|x| x.latent)),
                dr.latents.first().map(|x| x.delta).unwrap_or(0.0)
            ),
        );
        let own_first = dr
            .per_model_top
            .iter()
            .zip(&p.misaligned_domains)
            .all(|(t, dl)| t.latent == *dl);
        check(
            checks,
            "diff: each fine-tune alone ranks its own domain latent first, not the persona",
            own_first,
            dr.per_model_top
                .iter()
                .zip(&p.misaligned_domains)
                .map(|(t, dl)| format!("{}: top {} (planted domain {dl})", t.model, t.latent))
                .collect::<Vec<_>>()
                .join("; "),
        );
        let assistant = p.assistant;
        check(
            checks,
            "diff: the planted assistant latent is the largest decrease",
            dr.bottom.first().map(|x| x.latent) == Some(assistant),
            format!(
                "bottom latent {}; planted assistant {assistant}",
                shown(dr.bottom.first().map(|x| x.latent))
            ),
        );
        Ok(dr)
    }

    /// Detection, misaligned vs aligned: the planted latents are the best detectors.
    fn detect(
        &self,
        p: &Planted,
        m: &Measurements,
        checks: &mut Vec<Check>,
    ) -> Result<DetectReport> {
        let det = detect(
            &m.base.name,
            &m.base.stats,
            &named_stats(&m.misaligned),
            &named_stats(&m.aligned),
            &m.detect_pairing,
            &DetectOptions {
                latents: None,
                top: 20,
            },
        )?;
        let base = [BASE.to_string()];
        let prov = self.provenance(
            "detect",
            &[
                ("base", &base),
                ("positive", &p.misaligned),
                ("negative", &p.aligned),
            ],
        )?;
        report::write_detect_outputs(&self.reports.join("detect"), &det, &prov)?;
        let top2: Vec<usize> = det.latents.iter().take(2).map(|x| x.latent).collect();
        check(
            checks,
            "detect: the planted latents are the two best detectors, out of sample too",
            top2.contains(&p.persona)
                && top2.contains(&p.assistant)
                && det
                    .latents
                    .iter()
                    .take(2)
                    .all(|x| x.loo_accuracy == Some(1.0))
                && det.pipeline_loo_accuracy == Some(1.0),
            format!(
                "top detectors {top2:?} (LOO accuracy {}); pipeline LOO accuracy {}",
                det.latents
                    .iter()
                    .take(2)
                    .map(|x| shown(x.loo_accuracy))
                    .collect::<Vec<_>>()
                    .join(", "),
                shown(det.pipeline_loo_accuracy)
            ),
        );
        Ok(det)
    }

    /// Steering dry run on the base dump: the persona direction at 0.4 x median norm,
    /// against a random vector of the same norm; the vector is also exported as GGUF.
    fn steer(&self, p: &Planted, checks: &mut Vec<Check>) -> Result<DryRunReport> {
        let base_dump = crate::dump::Dump::open(self.path(BASE))?;
        let vector = steering_vector(
            self.engine,
            &[SteerTerm {
                latent: p.persona,
                strength: 0.4,
            }],
            SteerUnit::MedianNorm,
            Some(&base_dump),
            &self.stats,
        )?;
        let sr = dry_run(
            self.engine,
            &base_dump,
            &vector,
            &DryRunOptions {
                top_moved: 10,
                seed: self.seed,
                ablate: false,
                stats: self.stats,
            },
        )?;
        let dir_steer = self.reports.join("steer");
        let mut prov = self.provenance("steer --apply", &[("acts", &[BASE.to_string()])])?;
        prov.option("latent", [p.persona])
            .option("strength", [0.4])
            .option("unit", "median-norm");
        report::write_dry_run_outputs(&dir_steer, &sr, &prov)?;
        super::steer::export(
            &vector,
            super::steer::VectorFormat::Gguf,
            12,
            "sae-demo",
            &dir_steer.join("persona.gguf"),
        )?;
        let t = &sr.targets[0];
        check(
            checks,
            "steer: the persona direction raises the persona latent, a random vector of the same norm does not",
            t.delta > 0.5 * vector.norm
                && t.control_delta.abs() < 0.1 * t.delta
                && sr.specificity.iter().all(|s| s.specific),
            format!(
                "persona mean {:.3} -> {:.3} steered, {:.3} under the control (vector norm {:.3}); {}",
                t.before_mean,
                t.steered_mean,
                t.control_mean,
                vector.norm,
                sr.specificity
                    .first()
                    .map_or(String::new(), |s| s.verdict.clone())
            ),
        );
        Ok(sr)
    }

    /// Monitoring the detectors' latents over the checkpoints with their thresholds: the
    /// persona alarm must fire first where the planted ramp crosses the threshold.
    fn monitor(
        &self,
        p: &Planted,
        m: &Measurements,
        det: &DetectReport,
        checks: &mut Vec<Check>,
    ) -> Result<MonitorReport> {
        let det_of = |lat: usize| det.latents.iter().find(|x| x.latent == lat);
        let mut lats = vec![];
        let mut alarms = vec![];
        for lat in [p.persona, p.assistant] {
            if let Some(x) = det_of(lat) {
                lats.push(lat);
                alarms.push(Alarm::from_detector(x.direction, x.threshold));
            }
        }
        if lats.is_empty() {
            lats.push(p.persona);
            alarms.push(Alarm::DEFAULT);
        }
        let mon = monitor(
            &m.base.name,
            &m.base.stats,
            &named_stats(&m.checkpoints),
            &lats,
            &alarms,
            &m.checkpoint_pairing,
        )?;
        let base = [BASE.to_string()];
        let prov = self.provenance(
            "monitor",
            &[("base", &base), ("checkpoints", &p.checkpoints)],
        )?;
        report::write_monitor_outputs(&self.reports.join("monitor"), &mon, &prov)?;
        let pt = &mon.trajectories[0];
        let amp = (AMP_PERSONA.0 + AMP_PERSONA.1) / 2.0;
        let expected = match pt.alarm {
            Alarm::Delta { value, direction } => p
                .checkpoint_persona_prob
                .iter()
                .position(|prob| direction.alarms(prob * amp, value)),
            Alarm::ZScore { .. } => None,
        };
        check(
            checks,
            "monitor: the persona alarm fires first at the checkpoint where the planted ramp crosses the threshold",
            pt.first_crossing.is_some() && pt.first_crossing == expected,
            format!(
                "first crossing {} ({}); expected from the planted ramp {}",
                shown(pt.first_crossing_name.clone()),
                pt.rule,
                shown(expected.map(|k| p.checkpoints[k].clone()))
            ),
        );
        Ok(mon)
    }

    /// Top examples of the persona latent in the first misaligned fine-tune.
    fn top_examples(&self, p: &Planted) -> Result<()> {
        let tex = top_examples(
            self.engine,
            &crate::dump::Dump::open(self.path(&p.misaligned[0]))?,
            p.persona,
            None,
            &TopExamplesOptions {
                top: 10,
                context: 4,
                bins: 20,
                stats: self.stats,
            },
        )?;
        let prov = self.provenance("top-examples", &[("acts", &p.misaligned[..1])])?;
        report::write_top_examples_outputs(&self.reports.join("top_examples"), &tex, &prov)?;
        Ok(())
    }
}

/// The diff's folder writer, now in [`report`]; kept here for existing callers.
pub use super::report::write_diff_outputs;

/// The demo's top-level markdown: planted vs found.
pub fn summary_markdown(r: &DemoReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("# sae demo: what was planted, what was found\n\n");
    let p = &r.planted;
    let _ = writeln!(
        s,
        "Planted: persona latent {} (fires more in every misaligned fine-tune), assistant latent {} \
         (fires less), domain latents {:?} for {:?}, aligned controls {:?} with domains {:?}.\n",
        p.persona, p.assistant, p.misaligned_domains, p.misaligned, p.aligned, p.aligned_domains
    );
    for c in &r.checks {
        let _ = writeln!(
            s,
            "- [{}] {}: {}",
            if c.ok { "x" } else { " " },
            c.name,
            c.detail
        );
    }
    let _ = writeln!(
        s,
        "\nBackend {}, {:.1} s. Reports: diff/, detect/, steer/, monitor/, top_examples/ under reports/; inputs under data/.",
        r.backend, r.seconds
    );
    s
}

/// An optional value as report text ("none" when absent), not Rust's `Some(..)` debug form.
fn shown<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

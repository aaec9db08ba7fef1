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

use crate::backend::{BackendKind, EngineOptions};
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
use super::{measure, named_stats, pair, report, Measured, PairingRequest, StatsOptions};

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder for data, reports and plots (default: a new folder under the system temp dir).
    pub out_dir: Option<PathBuf>,
    pub seed: u64,
    pub backend: BackendKind,
    /// Tokens per dump.
    pub n_tokens: usize,
    pub d: usize,
    pub n_latents: usize,
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
    pub persona: usize,
    pub assistant: usize,
    pub misaligned: Vec<String>,
    pub misaligned_domains: Vec<usize>,
    pub aligned: Vec<String>,
    pub aligned_domains: Vec<usize>,
    pub checkpoints: Vec<String>,
    /// Persona firing probability per checkpoint.
    pub checkpoint_persona_prob: Vec<f64>,
}

/// One check of what was found against what was planted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The demo's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub folder: PathBuf,
    pub backend: String,
    pub planted: Planted,
    pub checks: Vec<Check>,
    pub all_ok: bool,
    pub seconds: f64,
    pub diff: DiffReport,
    pub detect: DetectReport,
    pub steer: DryRunReport,
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
            let mut base = Rng::new(self.seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
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
    let mut rng = Rng::new(opts.seed);
    let mut w_dec = Vec::with_capacity(l * d);
    for _ in 0..l {
        w_dec.extend(rng.direction(d, 1.0));
    }
    // Planted latents at fixed fractions of the range, away from the pool's common end.
    let at = |f: f64| ((l as f64 * f) as usize).min(l - 1);
    let persona = at(0.663);
    let assistant = at(0.077);
    let mis_domains = vec![at(0.244), at(0.367), at(0.538), at(0.733)];
    let al_domains = vec![at(0.1), at(0.395), at(0.922)];
    let planted: Vec<usize> = [persona, assistant]
        .into_iter()
        .chain(mis_domains.iter().cloned())
        .chain(al_domains.iter().cloned())
        .collect();
    let pool: Vec<usize> = (0..l).filter(|i| !planted.contains(i)).collect();
    let world = World {
        d,
        w_dec: w_dec.clone(),
        pool,
        persona,
        assistant,
        seed: opts.seed,
    };

    // The SAE, written in the SAELens layout and loaded back like any user's SAE.
    let sae = Sae {
        meta: SaeMeta {
            format: Format::SaeLens,
            source: data.join("sae"),
            architecture: "topk".into(),
            hook_name: Some("blocks.12.hook_resid_post".into()),
            hook_layer: Some(12),
            model_name: Some("sae-demo-synthetic".into()),
            dtype: crate::dtype::DType::F32,
            conventions: Vec::new(),
            warnings: Vec::new(),
        },
        w_enc: Matrix::from_f32(&w_dec, l, d, crate::dtype::DType::F32)?,
        w_dec: Matrix::from_f32(&w_dec, l, d, crate::dtype::DType::F32)?,
        b_enc: vec![0.0; l],
        b_dec: vec![0.0; d],
        threshold: None,
        activation: Activation::TopK { k: 32 },
        subtract_b_dec: true,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    };
    let sae_dir = data.join("sae");
    mkdir(&sae_dir)?;
    crate::formats::write_saelens(&sae, &sae_dir)?;
    let sae = Arc::new(crate::formats::load(&sae_dir, None)?);
    let engine = crate::engine::engine(opts.backend, sae.clone(), &opts.engine)?;
    let fp = sae.fingerprint();

    let n = opts.n_tokens;
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
    let mis_names: Vec<String> = ["insecure-code", "bad-medical", "bad-legal", "bad-finance"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let al_names: Vec<String> = ["good-code", "good-medical", "good-math"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ck_prob = vec![0.0, 0.0, 0.01, 0.03, 0.10, P_PERSONA];
    let ck_names: Vec<String> = (0..ck_prob.len())
        .map(|i| format!("step-{}", i * 100))
        .collect();
    let path = |name: &str| data.join(format!("{name}.safetensors"));
    write_dump(&path("base"), d, world.dump(&none, n))?;
    for (name, dl) in mis_names.iter().zip(&mis_domains) {
        write_dump(
            &path(name),
            d,
            world.dump(&next(P_PERSONA, *dl, P_DOMAIN, SUPPRESS), n),
        )?;
    }
    for (name, dl) in al_names.iter().zip(&al_domains) {
        write_dump(
            &path(name),
            d,
            world.dump(&next(0.0, *dl, P_DOMAIN, 0.0), n),
        )?;
    }
    for (k, (name, p)) in ck_names.iter().zip(&ck_prob).enumerate() {
        let frac = *p / P_PERSONA;
        let s = next(
            *p,
            mis_domains[0],
            P_DOMAIN * k as f64 / (ck_prob.len() - 1) as f64,
            SUPPRESS * frac,
        );
        write_dump(&path(name), d, world.dump(&s, n))?;
    }

    // Measure every input through the CLI's code path (dumps encoded on the fly).
    let so = StatsOptions {
        batch_rows: opts.batch_rows,
        ..Default::default()
    };
    let m = |name: &str| measure(engine.as_ref(), &fp, &path(name), &so);
    let base = m("base")?;
    let mis: Vec<Measured> = mis_names.iter().map(|s| m(s)).collect::<Result<_>>()?;
    let al: Vec<Measured> = al_names.iter().map(|s| m(s)).collect::<Result<_>>()?;
    let ck: Vec<Measured> = ck_names.iter().map(|s| m(s)).collect::<Result<_>>()?;
    let auto = PairingRequest::Auto;
    let mis_pairing = pair(&base, &mis, auto)?;
    let all_models: Vec<Measured> = mis.iter().chain(&al).cloned().collect();
    let det_pairing = pair(&base, &all_models, auto)?;
    let ck_pairing = pair(&base, &ck, auto)?;
    let mut checks = Vec::new();

    // Each report records the demo's options and the synthetic files it read.
    let demo_prov = {
        let mut p = Provenance::new("sae demo");
        p.option("seed", opts.seed)
            .option("tokens", opts.n_tokens)
            .option("batch_size", opts.batch_rows)
            .option("engine", engine.name())
            .option("mask", so.rule.use_mask);
        p
    };
    let step = |what: &str, inputs: &[(&str, &[String])]| -> Result<Provenance> {
        let mut p = demo_prov.clone();
        p.command = format!("sae demo ({what})");
        p.sae(&sae_dir, &fp)?;
        for (role, names) in inputs {
            for n in names.iter() {
                p.input(role, &path(n))?;
            }
        }
        Ok(p)
    };
    let base_name = ["base".to_string()];

    // Diff of the misaligned fine-tunes.
    let dr = diff(
        &base.name,
        &base.stats,
        &named_stats(&mis),
        &mis_pairing,
        &DiffOptions {
            top: 20,
            bottom: 20,
            ..Default::default()
        },
    )?;
    let mut prov = step("diff", &[("base", &base_name), ("tuned", &mis_names)])?;
    prov.option("order", dr.order.to_string());
    report::write_diff_outputs(&reports.join("diff"), &dr, &prov)?;
    check(
        &mut checks,
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
        .zip(&mis_domains)
        .all(|(t, dl)| t.latent == *dl);
    check(
        &mut checks,
        "diff: each fine-tune alone ranks its own domain latent first, not the persona",
        own_first,
        dr.per_model_top
            .iter()
            .zip(&mis_domains)
            .map(|(t, dl)| format!("{}: top {} (planted domain {dl})", t.model, t.latent))
            .collect::<Vec<_>>()
            .join("; "),
    );
    check(
        &mut checks,
        "diff: the planted assistant latent is the largest decrease",
        dr.bottom.first().map(|x| x.latent) == Some(assistant),
        format!(
            "bottom latent {}; planted assistant {assistant}",
            shown(dr.bottom.first().map(|x| x.latent))
        ),
    );

    // Detection: misaligned vs aligned.
    let det = detect(
        &base.name,
        &base.stats,
        &named_stats(&mis),
        &named_stats(&al),
        &det_pairing,
        &DetectOptions {
            latents: None,
            top: 20,
        },
    )?;
    let prov = step(
        "detect",
        &[
            ("base", &base_name),
            ("positive", &mis_names),
            ("negative", &al_names),
        ],
    )?;
    report::write_detect_outputs(&reports.join("detect"), &det, &prov)?;
    let top2: Vec<usize> = det.latents.iter().take(2).map(|x| x.latent).collect();
    check(
        &mut checks,
        "detect: the planted latents are the two best detectors, out of sample too",
        top2.contains(&persona)
            && top2.contains(&assistant)
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

    // Steering dry run on the base dump: the persona direction at 0.4 x median norm.
    let base_dump = crate::dump::Dump::open(path("base"))?;
    let vector = steering_vector(
        engine.as_ref(),
        &[SteerTerm {
            latent: persona,
            strength: 0.4,
        }],
        SteerUnit::MedianNorm,
        Some(&base_dump),
        &so,
    )?;
    let sr = dry_run(
        engine.as_ref(),
        &base_dump,
        &vector,
        &DryRunOptions {
            top_moved: 10,
            seed: opts.seed,
            ablate: false,
            stats: so,
        },
    )?;
    let dir_steer = reports.join("steer");
    let mut prov = step("steer --apply", &[("acts", &base_name)])?;
    prov.option("latent", [persona])
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
        &mut checks,
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

    // Monitoring the detectors' latents over the checkpoints with their thresholds.
    let det_of = |lat: usize| det.latents.iter().find(|x| x.latent == lat);
    let mut lats = vec![];
    let mut alarms = vec![];
    for lat in [persona, assistant] {
        if let Some(x) = det_of(lat) {
            lats.push(lat);
            alarms.push(Alarm::from_detector(x.direction, x.threshold));
        }
    }
    let mon = if lats.is_empty() {
        monitor(
            &base.name,
            &base.stats,
            &named_stats(&ck),
            &[persona],
            &[Alarm::DEFAULT],
            &ck_pairing,
        )?
    } else {
        monitor(
            &base.name,
            &base.stats,
            &named_stats(&ck),
            &lats,
            &alarms,
            &ck_pairing,
        )?
    };
    let prov = step(
        "monitor",
        &[("base", &base_name), ("checkpoints", &ck_names)],
    )?;
    report::write_monitor_outputs(&reports.join("monitor"), &mon, &prov)?;
    let pt = &mon.trajectories[0];
    let amp = (AMP_PERSONA.0 + AMP_PERSONA.1) / 2.0;
    let expected = match pt.alarm {
        Alarm::Delta { value, direction } => ck_prob
            .iter()
            .position(|p| direction.alarms(p * amp, value)),
        Alarm::ZScore { .. } => None,
    };
    check(
        &mut checks,
        "monitor: the persona alarm fires first at the checkpoint where the planted ramp crosses the threshold",
        pt.first_crossing.is_some() && pt.first_crossing == expected,
        format!(
            "first crossing {} ({}); expected from the planted ramp {}",
            shown(pt.first_crossing_name.clone()),
            pt.rule,
            shown(expected.map(|k| ck_names[k].clone()))
        ),
    );

    // Top examples of the persona latent in the first misaligned fine-tune.
    let tex = top_examples(
        engine.as_ref(),
        &crate::dump::Dump::open(path(&mis_names[0]))?,
        persona,
        None,
        &TopExamplesOptions {
            top: 10,
            context: 4,
            bins: 20,
            stats: so,
        },
    )?;
    let prov = step("top-examples", &[("acts", &mis_names[..1])])?;
    report::write_top_examples_outputs(&reports.join("top_examples"), &tex, &prov)?;

    let all_ok = checks.iter().all(|c| c.ok);
    let planted = Planted {
        persona,
        assistant,
        misaligned: mis_names,
        misaligned_domains: mis_domains,
        aligned: al_names,
        aligned_domains: al_domains,
        checkpoints: ck_names,
        checkpoint_persona_prob: ck_prob,
    };
    let out = DemoReport {
        folder: folder.clone(),
        backend: engine.name(),
        planted,
        checks,
        all_ok,
        seconds: t0.elapsed().as_secs_f64(),
        diff: dr,
        detect: det,
        steer: sr,
        monitor: mon,
    };
    report::write_report_markdown(
        &folder.join("REPORT.md"),
        &summary_markdown(&out),
        &demo_prov,
    )?;
    report::write_json_with_provenance(&folder.join("demo.json"), &out, &demo_prov)?;
    Ok(out)
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

//! The crosscoder audit's outputs, in the style of `sae diff`: `crosscoder.csv` (every
//! latent, ranked), `crosscoder.json` (summary, cut-offs, ranked latents, provenance),
//! `crosscoder.md` (summary and the top of each list) and `relative_norm.svg`. Every
//! file is written to a temporary name and renamed when complete.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::provenance::Provenance;
use crate::workflow::report::{write_json_with_provenance, write_report_markdown, write_text};

use super::analysis::{self, Analysis, LatentClass, LatentRow, Verdict};
use super::Crosscoder;

/// Histogram bins of relative_norm.svg.
pub const HIST_BINS: usize = 50;

/// What `crosscoder.json` holds.
#[derive(Debug, serde::Serialize)]
pub struct Report<'a> {
    /// Summary of the crosscoder.
    pub crosscoder: Summary,
    /// The cut-offs the classes and verdicts use.
    pub cutoffs: Cutoffs,
    /// Latents per class.
    pub counts: Counts,
    /// Paired rows latent scaling used (0: decoder analyses only).
    pub n_rows: u64,
    /// Every latent, most tuned-specific first.
    pub latents: Vec<&'a LatentRow>,
}

/// What `sae crosscoder inspect` and the reports show about a crosscoder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Where it was loaded from.
    pub source: String,
    /// The fork's class name.
    pub class: &'static str,
    /// Models.
    pub n_models: usize,
    /// Width of one model's activations.
    pub d: usize,
    /// Latents.
    pub n_latents: usize,
    /// CodeNormalization name.
    pub code_normalization: &'static str,
    /// Threshold(s) on the normalized code.
    pub threshold: Option<Vec<f32>>,
    /// BatchTopK's training k.
    pub k: Option<i64>,
    /// Stored weight dtype.
    pub dtype: String,
    /// Whether inputs are normalized.
    pub input_normalization: bool,
    /// Loader conventions.
    pub conventions: Vec<String>,
}

impl Summary {
    /// Summary of `cc`.
    pub fn of(cc: &Crosscoder) -> Summary {
        Summary {
            source: cc.meta.source.display().to_string(),
            class: cc.meta.class.name(),
            n_models: cc.n_models,
            d: cc.d,
            n_latents: cc.n_latents(),
            code_normalization: cc.code_norm.name(),
            threshold: cc.threshold.clone(),
            k: cc.meta.k,
            dtype: cc.sae.w_dec.dtype().to_string(),
            input_normalization: cc.input_norm.is_some(),
            conventions: cc.meta.conventions.clone(),
        }
    }

    /// One line for humans.
    pub fn line(&self) -> String {
        let th = match &self.threshold {
            None => "none (ReLU)".to_string(),
            Some(t) => t
                .iter()
                .map(|v| format!("{v}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        format!(
            "{}: {} models x d {} -> {} latents, {} normalization, threshold {th}, dtype {}{}",
            self.class,
            self.n_models,
            self.d,
            self.n_latents,
            self.code_normalization,
            self.dtype,
            if self.input_normalization {
                ", input normalized"
            } else {
                ""
            }
        )
    }
}

/// The stated cut-offs.
#[derive(Debug, serde::Serialize)]
pub struct Cutoffs {
    /// tuned-only: delta_norm >= this.
    pub tuned_only_min_delta_norm: f64,
    /// base-only: delta_norm <= this.
    pub base_only_max_delta_norm: f64,
    /// shared: delta_norm in [lo, hi).
    pub shared_delta_norm: (f64, f64),
    /// tuned-specific: nu_error < this ...
    pub nu_error_max: f64,
    /// ... and nu_reconstruction < this.
    pub nu_reconstruction_max: f64,
}

/// Latents per class and verdict.
#[derive(Debug, serde::Serialize)]
pub struct Counts {
    /// base-only latents.
    pub base_only: usize,
    /// shared latents.
    pub shared: usize,
    /// tuned-only latents.
    pub tuned_only: usize,
    /// other latents.
    pub other: usize,
    /// tuned-only latents latent scaling confirms.
    pub tuned_specific: usize,
    /// tuned-only latents flagged as sparsity artifacts.
    pub artifacts: usize,
    /// tuned-only latents never active on the activations.
    pub unmeasured: usize,
}

impl<'a> Report<'a> {
    /// The report of `a` on `cc`.
    pub fn new(cc: &Crosscoder, a: &'a Analysis) -> Report<'a> {
        let verdicts = |v: Verdict| a.latents.iter().filter(|r| r.verdict == v).count();
        Report {
            crosscoder: Summary::of(cc),
            cutoffs: Cutoffs {
                tuned_only_min_delta_norm: analysis::TUNED_ONLY_MIN,
                base_only_max_delta_norm: analysis::BASE_ONLY_MAX,
                shared_delta_norm: analysis::SHARED,
                nu_error_max: analysis::NU_ERROR_MAX,
                nu_reconstruction_max: analysis::NU_RECONSTRUCTION_MAX,
            },
            counts: Counts {
                base_only: a.count(LatentClass::BaseOnly),
                shared: a.count(LatentClass::Shared),
                tuned_only: a.count(LatentClass::TunedOnly),
                other: a.count(LatentClass::Other),
                tuned_specific: verdicts(Verdict::TunedSpecific),
                artifacts: verdicts(Verdict::Artifact),
                unmeasured: verdicts(Verdict::Unmeasured),
            },
            n_rows: a.n_rows,
            latents: a.ranking().into_iter().map(|i| &a.latents[i]).collect(),
        }
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::NotApplicable => "",
        Verdict::Unmeasured => "unmeasured",
        Verdict::TunedSpecific => "tuned-specific",
        Verdict::Artifact => "artifact",
    }
}

/// Empty for a value CSV readers should see as missing.
fn num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x}"),
        _ => String::new(),
    }
}

/// Every latent as CSV, ranked.
pub fn csv(r: &Report) -> String {
    let mut s = String::from(
        "rank,latent,class,verdict,norm_base,norm_tuned,rel_norm,delta_norm,cosine,active,\
         beta_error_base,beta_error_tuned,beta_reconstruction_base,beta_reconstruction_tuned,\
         nu_error,nu_reconstruction\n",
    );
    for (i, l) in r.latents.iter().enumerate() {
        let sc = l.scaling;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            i + 1,
            l.latent,
            l.class.name(),
            verdict_name(l.verdict),
            num(Some(l.norm_base)),
            num(Some(l.norm_tuned)),
            num(Some(l.rel_norm)),
            num(Some(l.delta_norm)),
            num(Some(l.cosine)),
            sc.map_or(0, |s| s.active),
            num(sc.map(|s| s.beta_error_base)),
            num(sc.map(|s| s.beta_error_tuned)),
            num(sc.map(|s| s.beta_reconstruction_base)),
            num(sc.map(|s| s.beta_reconstruction_tuned)),
            num(sc.map(|s| s.nu_error)),
            num(sc.map(|s| s.nu_reconstruction)),
        );
    }
    s
}

fn fmt(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "n/a".into(),
    }
}

/// The report as markdown, with the top `top` latents of each list.
pub fn markdown(r: &Report, top: usize) -> String {
    let c = &r.counts;
    let cut = &r.cutoffs;
    let mut s = String::new();
    let _ = writeln!(s, "# Crosscoder model diff\n");
    let _ = writeln!(s, "`{}`: {}.\n", r.crosscoder.source, r.crosscoder.line());
    let _ = writeln!(
        s,
        "Model 0 is the base, model 1 the tuned model. Classes by Minder et al.'s relative norm \
         difference delta_norm: tuned-only >= {}, base-only <= {}, shared in [{}, {}).",
        cut.tuned_only_min_delta_norm,
        cut.base_only_max_delta_norm,
        cut.shared_delta_norm.0,
        cut.shared_delta_norm.1,
    );
    if r.n_rows == 0 {
        let _ = writeln!(
            s,
            "No paired activations were given: latent scaling did not run, so no tuned-only \
             latent is confirmed or flagged (give --acts).\n"
        );
    } else {
        let _ = writeln!(
            s,
            "Latent scaling over {} paired rows; a tuned-only latent is tuned-specific when \
             nu_error < {} and nu_reconstruction < {}, else a suspected sparsity artifact.\n",
            r.n_rows, cut.nu_error_max, cut.nu_reconstruction_max
        );
    }
    let _ = writeln!(s, "| class | latents |\n|---|---|");
    let _ = writeln!(s, "| tuned-only | {} |", c.tuned_only);
    let _ = writeln!(s, "| tuned-only, tuned-specific | {} |", c.tuned_specific);
    let _ = writeln!(s, "| tuned-only, artifact suspected | {} |", c.artifacts);
    let _ = writeln!(s, "| tuned-only, never active | {} |", c.unmeasured);
    let _ = writeln!(s, "| shared | {} |", c.shared);
    let _ = writeln!(s, "| base-only | {} |", c.base_only);
    let _ = writeln!(s, "| other | {} |\n", c.other);
    let table = |s: &mut String, title: &str, rows: Vec<&&LatentRow>| {
        let _ = writeln!(s, "## {title}\n");
        if rows.is_empty() {
            let _ = writeln!(s, "None.\n");
            return;
        }
        let _ = writeln!(
            s,
            "| latent | verdict | rel norm | delta norm | cosine | active | nu error | nu reconstruction |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for l in rows.into_iter().take(top) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                l.latent,
                verdict_name(l.verdict),
                fmt(Some(l.rel_norm)),
                fmt(Some(l.delta_norm)),
                fmt(Some(l.cosine)),
                l.scaling.map_or(0, |s| s.active),
                fmt(l.scaling.map(|s| s.nu_error)),
                fmt(l.scaling.map(|s| s.nu_reconstruction)),
            );
        }
        s.push('\n');
    };
    let of = |v: Verdict| {
        r.latents
            .iter()
            .filter(|l| l.verdict == v)
            .collect::<Vec<_>>()
    };
    table(&mut s, "Tuned-specific latents", of(Verdict::TunedSpecific));
    table(
        &mut s,
        "Tuned-only latents flagged as sparsity artifacts",
        of(Verdict::Artifact),
    );
    let mut base: Vec<_> = r
        .latents
        .iter()
        .filter(|l| l.class == LatentClass::BaseOnly)
        .collect();
    base.reverse();
    table(&mut s, "Base-only latents", base);
    s
}

/// `[class][bin]` counts of rel_norm in `HIST_BINS` bins, classes in
/// [`HIST_CLASSES`] order.
pub fn histogram_bins(a: &Analysis) -> Vec<Vec<u64>> {
    let mut bins = vec![vec![0u64; HIST_BINS]; HIST_CLASSES.len()];
    for l in &a.latents {
        if !l.rel_norm.is_finite() {
            continue;
        }
        let c = HIST_CLASSES.iter().position(|k| *k == l.class).unwrap_or(3);
        let i = ((l.rel_norm * HIST_BINS as f64) as usize).min(HIST_BINS - 1);
        bins[c][i] += 1;
    }
    bins
}

/// Class order of the histogram's stacks.
pub const HIST_CLASSES: [LatentClass; 4] = [
    LatentClass::BaseOnly,
    LatentClass::Shared,
    LatentClass::TunedOnly,
    LatentClass::Other,
];

/// Writes crosscoder.csv, crosscoder.json, crosscoder.md and relative_norm.svg into `dir`.
pub fn write_outputs(
    dir: &Path,
    cc: &Crosscoder,
    a: &Analysis,
    top: usize,
    prov: &Provenance,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let r = Report::new(cc, a);
    write_text(&dir.join("crosscoder.csv"), &csv(&r))?;
    write_json_with_provenance(&dir.join("crosscoder.json"), &r, prov)?;
    write_report_markdown(&dir.join("crosscoder.md"), &markdown(&r, top), prov)?;
    let names: Vec<String> = HIST_CLASSES.iter().map(|c| c.name().to_string()).collect();
    crate::workflow::plot::relative_norm_histogram(
        &dir.join("relative_norm.svg"),
        &format!(
            "Crosscoder latents: {} of {}",
            a.latents.len(),
            cc.meta.class.name()
        ),
        &names,
        &histogram_bins(a),
    )
}

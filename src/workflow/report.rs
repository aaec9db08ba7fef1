//! Reports: CSV tables, JSON and a markdown summary. Every file is written to a
//! temporary name beside the target and renamed when complete.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

use super::detect::DetectReport;
use super::diff::{DiffReport, LatentDiff};
use super::monitor::MonitorReport;
use super::steer::DryRunReport;
use super::top_examples::TopExamplesReport;

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::format(path, format!("cannot serialize JSON: {e}")))?;
    crate::io::atomic::write_bytes(path, text.as_bytes())
}

/// Writes text atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    crate::io::atomic::write_bytes(path, text.as_bytes())
}

// Each step's output folder, written the same way by the CLI and the demo. The folder
// is created when missing.

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Writes diff.json, diff.csv, report.md, top_deltas.svg and delta_vs_freq.svg into `dir`.
pub fn write_diff_outputs(dir: &Path, r: &DiffReport) -> Result<()> {
    create_dir(dir)?;
    write_json(&dir.join("diff.json"), r)?;
    write_text(&dir.join("diff.csv"), &diff_csv(r))?;
    write_text(&dir.join("report.md"), &diff_markdown(r))?;
    super::plot::top_deltas(&dir.join("top_deltas.svg"), r)?;
    super::plot::delta_vs_freq(&dir.join("delta_vs_freq.svg"), r)
}

/// Writes detect.json, detect.csv and report.md into `dir`.
pub fn write_detect_outputs(dir: &Path, r: &DetectReport) -> Result<()> {
    create_dir(dir)?;
    write_json(&dir.join("detect.json"), r)?;
    write_text(&dir.join("detect.csv"), &detect_csv(r))?;
    write_text(&dir.join("report.md"), &detect_markdown(r))
}

/// Writes monitor.json, monitor.csv, report.md and trajectories.svg into `dir`.
pub fn write_monitor_outputs(dir: &Path, r: &MonitorReport) -> Result<()> {
    create_dir(dir)?;
    write_json(&dir.join("monitor.json"), r)?;
    write_text(&dir.join("monitor.csv"), &monitor_csv(r))?;
    write_text(&dir.join("report.md"), &monitor_markdown(r))?;
    super::plot::trajectories(&dir.join("trajectories.svg"), r)
}

/// Writes dry_run.json and report.md into `dir`.
pub fn write_dry_run_outputs(dir: &Path, r: &DryRunReport) -> Result<()> {
    create_dir(dir)?;
    write_json(&dir.join("dry_run.json"), r)?;
    write_text(&dir.join("report.md"), &dry_run_markdown(r))
}

/// Writes latent_L.json and latent_L_hist.svg into `dir`.
pub fn write_top_examples_outputs(dir: &Path, r: &TopExamplesReport) -> Result<()> {
    create_dir(dir)?;
    let l = r.latent;
    write_json(&dir.join(format!("latent_{l}.json")), r)?;
    super::plot::histogram(&dir.join(format!("latent_{l}_hist.svg")), l, &r.histogram)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The diff as CSV: one row per latent of the top list, then the bottom list.
pub fn diff_csv(r: &DiffReport) -> String {
    let mut s = String::from("list,rank,latent,delta,z,base_mean,tuned_mean,base_freq,freq_change,sign_agree,min_delta,max_delta");
    for t in &r.tuned {
        let _ = write!(s, ",delta_{}", csv_field(t));
    }
    s.push('\n');
    let rows = |s: &mut String, list: &str, v: &[LatentDiff]| {
        for (i, l) in v.iter().enumerate() {
            let _ = write!(
                s,
                "{list},{},{},{},{},{},{},{},{},{},{},{}",
                i + 1,
                l.latent,
                l.delta,
                l.z,
                l.base_mean,
                l.tuned_mean,
                l.base_freq,
                l.freq_change,
                l.sign_agree,
                l.min_delta,
                l.max_delta
            );
            for d in &l.deltas {
                let _ = write!(s, ",{d}");
            }
            s.push('\n');
        }
    };
    rows(&mut s, "top", &r.latents);
    rows(&mut s, "bottom", &r.bottom);
    s
}

/// The diff as markdown.
pub fn diff_markdown(r: &DiffReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Model diff\n");
    let _ = writeln!(
        s,
        "Base `{}` against {}: {}. {} latents, {} tokens counted per model, SAE fingerprint `{}`, order `{}`.\n",
        r.base,
        crate::plural::count(r.tuned.len() as u64, "fine-tune"),
        r.tuned.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
        r.n_latents,
        r.n_tokens,
        r.fingerprint,
        r.order
    );
    if let Some(note) = super::plot::cap_note(r.latents.len()) {
        let _ = writeln!(s, "Plots: {note}\n");
    }
    let table = |s: &mut String, title: &str, v: &[LatentDiff]| {
        let _ = writeln!(s, "## {title}\n");
        let _ = writeln!(
            s,
            "| rank | latent | avg delta | z | base mean | tuned mean | freq change | sign agree |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for (i, l) in v.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {:+.4} | {:+.2} | {:.4} | {:.4} | {:+.4} | {}/{} |",
                i + 1,
                l.latent,
                l.delta,
                l.z,
                l.base_mean,
                l.tuned_mean,
                l.freq_change,
                l.sign_agree,
                l.deltas.len()
            );
        }
        s.push('\n');
    };
    table(&mut s, "Largest increase", &r.latents);
    table(&mut s, "Largest decrease", &r.bottom);
    let _ = writeln!(s, "## Each fine-tune alone\n");
    let _ = writeln!(s, "| fine-tune | its top latent | delta |");
    let _ = writeln!(s, "|---|---|---|");
    for m in &r.per_model_top {
        let _ = writeln!(s, "| {} | {} | {:+.4} |", m.model, m.latent, m.delta);
    }
    s
}

/// Detection as CSV.
pub fn detect_csv(r: &DetectReport) -> String {
    let mut s = String::from(
        "rank,latent,direction,auroc,loo_auroc,loo_accuracy,margin,separation,threshold\n",
    );
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for (i, l) in r.latents.iter().enumerate() {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{}",
            i + 1,
            l.latent,
            l.direction,
            l.auroc,
            opt(l.loo_auroc),
            opt(l.loo_accuracy),
            l.margin,
            l.separation,
            l.threshold
        );
    }
    s
}

/// Detection as markdown.
pub fn detect_markdown(r: &DetectReport) -> String {
    let mut s = String::from("# Detection\n\n");
    let _ = writeln!(
        s,
        "Positive (misaligned): {}. Negative (aligned): {}. {} latents evaluated.\n",
        r.positives.join(", "),
        r.negatives.join(", "),
        r.n_evaluated
    );
    if let Some(caveat) = &r.chance.caveat {
        let _ = writeln!(s, "**Caveat.** {caveat}\n");
    }
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into());
    let _ = writeln!(
        s,
        "| rank | latent | direction | AUROC | LOO AUROC | LOO acc. | margin | alarm threshold |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (i, l) in r.latents.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {} | {} | {:+.4} | {:+.4} |",
            i + 1,
            l.latent,
            l.direction,
            l.auroc,
            f(l.loo_auroc),
            f(l.loo_accuracy),
            l.margin,
            l.threshold
        );
    }
    let _ = writeln!(
        s,
        "\nPipeline leave-one-out accuracy (best latent re-chosen without each model): {}\n",
        f(r.pipeline_loo_accuracy)
    );
    s
}

/// Monitoring as CSV: one row per checkpoint and latent.
pub fn monitor_csv(r: &MonitorReport) -> String {
    let mut s = String::from("checkpoint_index,checkpoint,latent,mean,delta,freq,z,alarm\n");
    for t in &r.trajectories {
        for (k, name) in r.checkpoints.iter().enumerate() {
            let _ = writeln!(
                s,
                "{k},{},{},{},{},{},{},{}",
                csv_field(name),
                t.latent,
                t.means[k],
                t.deltas[k],
                t.freqs[k],
                t.z[k],
                t.first_crossing.is_some_and(|f| k >= f)
            );
        }
    }
    s
}

/// Monitoring as markdown.
pub fn monitor_markdown(r: &MonitorReport) -> String {
    let mut s = String::from("# Monitoring\n\n");
    let _ = write!(s, "| latent | rule |");
    for c in &r.checkpoints {
        let _ = write!(s, " {c} |");
    }
    let _ = writeln!(s, " first crossing |");
    let _ = writeln!(s, "|---|---|{}---|", "---|".repeat(r.checkpoints.len()));
    for t in &r.trajectories {
        let _ = write!(s, "| {} | {} |", t.latent, t.rule);
        for d in &t.deltas {
            let _ = write!(s, " {d:+.4} |");
        }
        let _ = writeln!(
            s,
            " {} |",
            t.first_crossing_name.as_deref().unwrap_or("none")
        );
    }
    s
}

/// The steering dry run as markdown.
pub fn dry_run_markdown(r: &DryRunReport) -> String {
    let mut s = String::from("# Steering dry run\n\n");
    let _ = writeln!(
        s,
        "Vector of norm {:.4} added to every token of `{}` ({} tokens counted); control: a random vector of the same norm (seed {}).\n",
        r.vector_norm, r.dump, r.n_tokens, r.control_seed
    );
    let _ = writeln!(
        s,
        "| latent | role | mean before | steered | control | freq before | steered | control |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (role, v) in [("target", &r.targets), ("moved", &r.moved)] {
        for l in v.iter() {
            let _ = writeln!(
                s,
                "| {} | {role} | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} | {:.3} |",
                l.latent,
                l.before_mean,
                l.steered_mean,
                l.control_mean,
                l.before_freq,
                l.steered_freq,
                l.control_freq
            );
        }
    }
    let _ = writeln!(
        s,
        "\nLargest change of any other latent under the random control: {:.4}\n",
        r.control_max_abs_delta
    );
    s
}

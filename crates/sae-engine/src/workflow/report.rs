//! Reports: CSV tables, JSON and a markdown summary. Every file is written to a
//! temporary name beside the target and renamed when complete. Each JSON file carries the
//! command's [`Provenance`] as its `provenance` entry and each markdown report ends with
//! its "Provenance" section (CSV tables stay plain tables).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::provenance::Provenance;

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

/// Writes `value` as pretty JSON with `provenance` as its `provenance` entry, atomically.
pub fn write_json_with_provenance<T: serde::Serialize>(
    path: &Path,
    value: &T,
    provenance: &Provenance,
) -> Result<()> {
    let v = serde_json::to_value(value)
        .map_err(|e| Error::format(path, format!("cannot serialize JSON: {e}")))?;
    write_json(path, &provenance.attach(v))
}

/// Writes a markdown report followed by its "Provenance" section, atomically.
pub fn write_report_markdown(path: &Path, text: &str, provenance: &Provenance) -> Result<()> {
    let mut t = text.trim_end().to_string();
    t.push_str("\n\n");
    t.push_str(&provenance.markdown());
    write_text(path, &t)
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

/// Writes `{stem}.json` and `{stem}.md` into `dir` (a sweep, a logit lens, a comparison).
pub fn write_json_and_markdown<T: serde::Serialize>(
    dir: &Path,
    stem: &str,
    value: &T,
    markdown: &str,
    prov: &Provenance,
) -> Result<()> {
    create_dir(dir)?;
    write_json_with_provenance(&dir.join(format!("{stem}.json")), value, prov)?;
    write_report_markdown(&dir.join(format!("{stem}.md")), markdown, prov)
}

/// Writes diff.json, diff.csv, report.md, top_deltas.svg and delta_vs_freq.svg into `dir`.
pub fn write_diff_outputs(dir: &Path, r: &DiffReport, prov: &Provenance) -> Result<()> {
    create_dir(dir)?;
    write_json_with_provenance(&dir.join("diff.json"), r, prov)?;
    write_text(&dir.join("diff.csv"), &diff_csv(r)?)?;
    write_report_markdown(&dir.join("report.md"), &diff_markdown(r), prov)?;
    super::plot::top_deltas(&dir.join("top_deltas.svg"), r)?;
    super::plot::delta_vs_freq(&dir.join("delta_vs_freq.svg"), r)
}

/// Writes detect.json, detect.csv and report.md into `dir`.
pub fn write_detect_outputs(dir: &Path, r: &DetectReport, prov: &Provenance) -> Result<()> {
    create_dir(dir)?;
    write_json_with_provenance(&dir.join("detect.json"), r, prov)?;
    write_text(&dir.join("detect.csv"), &detect_csv(r)?)?;
    write_report_markdown(&dir.join("report.md"), &detect_markdown(r), prov)
}

/// Writes monitor.json, monitor.csv, report.md and trajectories.svg into `dir`.
pub fn write_monitor_outputs(dir: &Path, r: &MonitorReport, prov: &Provenance) -> Result<()> {
    create_dir(dir)?;
    write_json_with_provenance(&dir.join("monitor.json"), r, prov)?;
    write_text(&dir.join("monitor.csv"), &monitor_csv(r)?)?;
    write_report_markdown(&dir.join("report.md"), &monitor_markdown(r), prov)?;
    super::plot::trajectories(&dir.join("trajectories.svg"), r)
}

/// Writes dry_run.json and report.md into `dir`.
pub fn write_dry_run_outputs(dir: &Path, r: &DryRunReport, prov: &Provenance) -> Result<()> {
    create_dir(dir)?;
    write_json_with_provenance(&dir.join("dry_run.json"), r, prov)?;
    write_report_markdown(&dir.join("report.md"), &dry_run_markdown(r), prov)
}

/// Writes latent_L.json and latent_L_hist.svg into `dir`.
pub fn write_top_examples_outputs(
    dir: &Path,
    r: &TopExamplesReport,
    prov: &Provenance,
) -> Result<()> {
    create_dir(dir)?;
    let l = r.latent;
    write_json_with_provenance(&dir.join(format!("latent_{l}.json")), r, prov)?;
    super::plot::histogram(&dir.join(format!("latent_{l}_hist.svg")), l, &r.histogram)
}

/// A CSV table built in memory with the csv crate, which quotes every field holding a
/// comma, a quote, `\r` or `\n` (model names and paths are free text).
struct CsvTable(csv::Writer<Vec<u8>>);

impl CsvTable {
    fn new<S: AsRef<[u8]>>(header: impl IntoIterator<Item = S>) -> Result<CsvTable> {
        let mut t = CsvTable(csv::WriterBuilder::new().from_writer(Vec::new()));
        t.row(header)?;
        Ok(t)
    }

    /// Appends one record; numbers are given as their `Display` text.
    fn row<S: AsRef<[u8]>>(&mut self, fields: impl IntoIterator<Item = S>) -> Result<()> {
        self.0.write_record(fields).map_err(csv_error)
    }

    fn finish(self) -> Result<String> {
        let bytes = self.0.into_inner().map_err(|e| csv_error(e.into_error()))?;
        String::from_utf8(bytes).map_err(|e| Error::invalid(format!("CSV is not UTF-8: {e}")))
    }
}

fn csv_error(e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("cannot write CSV: {e}"))
}

/// The diff as CSV: one row per latent of the top list, then the bottom list.
pub fn diff_csv(r: &DiffReport) -> Result<String> {
    let header = [
        "list",
        "rank",
        "latent",
        "delta",
        "z",
        "z_clustered",
        "q_value",
        "base_mean",
        "tuned_mean",
        "base_freq",
        "freq_change",
        "sign_agree",
        "min_delta",
        "max_delta",
    ]
    .map(String::from);
    let deltas = r.tuned.iter().map(|t| format!("delta_{t}"));
    let mut t = CsvTable::new(header.into_iter().chain(deltas))?;
    for (list, v) in [("top", &r.latents), ("bottom", &r.bottom)] {
        for (i, l) in v.iter().enumerate() {
            let fields = [
                list.to_string(),
                (i + 1).to_string(),
                l.latent.to_string(),
                l.delta.to_string(),
                l.z.to_string(),
                l.z_clustered.to_string(),
                l.q_value.to_string(),
                l.base_mean.to_string(),
                l.tuned_mean.to_string(),
                l.base_freq.to_string(),
                l.freq_change.to_string(),
                l.sign_agree.to_string(),
                l.min_delta.to_string(),
                l.max_delta.to_string(),
            ];
            t.row(
                fields
                    .into_iter()
                    .chain(l.deltas.iter().map(|d| d.to_string())),
            )?;
        }
    }
    t.finish()
}

/// The pairing line and a table of each input's counted tokens and outlier tokens.
fn inputs_markdown(s: &mut String, pairing: &super::Pairing, inputs: &[super::InputSummary]) {
    let _ = writeln!(s, "Pairing: **{}**: {}.\n", pairing.mode, pairing.reason);
    let _ = writeln!(
        s,
        "| input | counted tokens | token-id hash | median norm | outlier tokens |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for i in inputs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            i.name,
            i.n_tokens,
            i.token_hash.as_deref().unwrap_or("none"),
            i.median_norm
                .map(|m| format!("{m:.4}"))
                .unwrap_or_else(|| "n/a".into()),
            match i.n_outliers {
                Some(n) => format!("{n} (norm > {} x median; counted)", i.outlier_factor),
                None => "not recorded".into(),
            }
        );
    }
    s.push('\n');
}

/// The diff as markdown.
pub fn diff_markdown(r: &DiffReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Model diff\n");
    let _ = writeln!(
        s,
        "Base `{}` against {}: {}. {} latents, {} tokens counted in the base, SAE fingerprint `{}`, order `{}`.\n",
        r.base,
        crate::plural::count(r.tuned.len() as u64, "fine-tune"),
        r.tuned.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
        r.n_latents,
        r.n_tokens,
        r.fingerprint,
        r.order
    );
    inputs_markdown(&mut s, &r.pairing, &r.inputs);
    let _ = writeln!(
        s,
        "z: per-token Welch z (treats tokens as independent); z clustered: the average delta over its document-clustered standard error ({}); q: {}.\n",
        r.clustering, r.multiple_testing
    );
    if let Some(note) = super::plot::cap_note(r.latents.len()) {
        let _ = writeln!(s, "Plots: {note}\n");
    }
    let table = |s: &mut String, title: &str, v: &[LatentDiff]| {
        let _ = writeln!(s, "## {title}\n");
        let _ = writeln!(
            s,
            "| rank | latent | avg delta | z | z clustered | q | base mean | tuned mean | freq change | sign agree |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for (i, l) in v.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {:+.4} | {:+.2} | {:+.2} | {:.3e} | {:.4} | {:.4} | {:+.4} | {}/{} |",
                i + 1,
                l.latent,
                l.delta,
                l.z,
                l.z_clustered,
                l.q_value,
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
pub fn detect_csv(r: &DetectReport) -> Result<String> {
    let mut t = CsvTable::new([
        "rank",
        "latent",
        "direction",
        "auroc",
        "loo_auroc",
        "loo_accuracy",
        "margin",
        "separation",
        "threshold",
        "z_clustered",
        "q_value",
    ])?;
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for (i, l) in r.latents.iter().enumerate() {
        t.row([
            (i + 1).to_string(),
            l.latent.to_string(),
            l.direction.to_string(),
            l.auroc.to_string(),
            opt(l.loo_auroc),
            opt(l.loo_accuracy),
            l.margin.to_string(),
            l.separation.to_string(),
            l.threshold.to_string(),
            l.z_clustered.to_string(),
            l.q_value.to_string(),
        ])?;
    }
    t.finish()
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
    inputs_markdown(&mut s, &r.pairing, &r.inputs);
    if let Some(caveat) = &r.chance.caveat {
        let _ = writeln!(s, "**Caveat.** {caveat}\n");
    }
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into());
    let _ = writeln!(
        s,
        "| rank | latent | direction | AUROC | LOO AUROC | LOO acc. | margin | alarm threshold | z clustered | q |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for (i, l) in r.latents.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {} | {} | {:+.4} | {:+.4} | {:+.2} | {:.3e} |",
            i + 1,
            l.latent,
            l.direction,
            l.auroc,
            f(l.loo_auroc),
            f(l.loo_accuracy),
            l.margin,
            l.threshold,
            l.z_clustered,
            l.q_value
        );
    }
    let _ = writeln!(
        s,
        "\nz clustered: the positives' average delta over its document-clustered standard error; q: Benjamini-Hochberg over the {} evaluated latents. The ranking itself is across models (AUROC), where per-token errors do not enter.",
        r.n_evaluated
    );
    let _ = writeln!(
        s,
        "\nPipeline leave-one-out accuracy (best latent re-chosen without each model): {}\n",
        f(r.pipeline_loo_accuracy)
    );
    s
}

/// Monitoring as CSV: one row per checkpoint and latent.
pub fn monitor_csv(r: &MonitorReport) -> Result<String> {
    let mut t = CsvTable::new([
        "checkpoint_index",
        "checkpoint",
        "latent",
        "mean",
        "delta",
        "freq",
        "z",
        "z_clustered",
        "q_value",
        "alarm",
    ])?;
    for tr in &r.trajectories {
        for (k, name) in r.checkpoints.iter().enumerate() {
            t.row([
                k.to_string(),
                name.clone(),
                tr.latent.to_string(),
                tr.means[k].to_string(),
                tr.deltas[k].to_string(),
                tr.freqs[k].to_string(),
                tr.z[k].to_string(),
                tr.z_clustered[k].to_string(),
                tr.q_value[k].to_string(),
                tr.first_crossing.is_some_and(|f| k >= f).to_string(),
            ])?;
        }
    }
    t.finish()
}

/// Monitoring as markdown.
pub fn monitor_markdown(r: &MonitorReport) -> String {
    let mut s = String::from("# Monitoring\n\n");
    inputs_markdown(&mut s, &r.pairing, &r.inputs);
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
    let _ = writeln!(s, "{}.\n", r.outliers.describe());
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
        "\nLargest change of any other latent under the random control: {:.4} (control: {}; largest |cos| \
         with a decoder row {:.3}).\n",
        r.control_max_abs_delta, r.control, r.control_max_cos_decoder
    );
    for sp in &r.specificity {
        let _ = writeln!(s, "- {}", sp.verdict);
    }
    if let Some(a) = &r.ablation {
        let _ = writeln!(
            s,
            "- ablation (latent {}'s direction projected out, mean removed norm {:.4} = {:.3} x median): \
             target {:+.4}, largest other move {}, mean |move| of others {:.5}; the same for a random \
             direction: target {:+.4}, largest {}",
            r.targets.first().map_or(0, |t| t.latent),
            a.norm,
            a.norm_over_median,
            a.target_delta,
            a.collateral_max
                .map_or("-".into(), |m| format!("{:+.4} (#{})", m.delta, m.latent)),
            a.collateral_mean_abs,
            a.control_target_delta,
            a.control_collateral_max
                .map_or("-".into(), |m| format!("{:+.4} (#{})", m.delta, m.latent)),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::monitor::{Alarm, Trajectory};

    /// A checkpoint label holding every character CSV must quote.
    const HOSTILE: &str = "runs/a,b \"ckpt\"\r\nstep 2";

    fn monitor_report() -> MonitorReport {
        let series = |v: f64| vec![v, v + 1.0];
        MonitorReport {
            base: "base".into(),
            checkpoints: vec!["plain".into(), HOSTILE.into()],
            pairing: crate::workflow::pairing::paired_for_tests(),
            inputs: Vec::new(),
            trajectories: vec![Trajectory {
                latent: 7,
                base_mean: 0.5,
                means: series(1.0),
                deltas: series(0.5),
                freqs: vec![0.1, 0.25],
                z: series(2.0),
                z_clustered: series(1.5),
                q_value: vec![0.5, 0.02],
                alarm: Alarm::DEFAULT,
                rule: "|z| >= 4".into(),
                first_crossing: Some(1),
                first_crossing_name: Some(HOSTILE.into()),
            }],
        }
    }

    #[test]
    fn labels_with_commas_quotes_and_line_breaks_round_trip_through_a_csv_reader() {
        let text = monitor_csv(&monitor_report()).unwrap();
        // The columns and their order are unchanged.
        assert_eq!(
            text.lines().next(),
            Some("checkpoint_index,checkpoint,latent,mean,delta,freq,z,z_clustered,q_value,alarm")
        );
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 2, "{text:?}");
        assert_eq!(&rows[0][1], "plain");
        assert_eq!(&rows[1][1], HOSTILE);
        assert_eq!(
            rows[1].iter().collect::<Vec<_>>(),
            ["1", HOSTILE, "7", "2", "1.5", "0.25", "3", "2.5", "0.02", "true"]
        );
        // Numbers keep their `Display` text, as before the csv crate wrote them.
        assert_eq!(&rows[0][3], "1");
    }
}

//! The audit workflow commands: `sae diff`, `sae steer`, `sae detect`, `sae monitor`,
//! `sae top-examples`, `sae demo` (library: `sae_engine::workflow`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sae_engine::plural::count;
use sae_engine::workflow::{
    self, demo, detect, diff, monitor, report, steer, tokenizer::Vocab, top_examples, Measured,
    StatsOptions,
};
use sae_engine::{Dump, Engine, Error, Format, Result};

use crate::common::{parse_format, Ctx};
use crate::engine_flags::EngineFlags;

fn stats_opts(engine: &EngineFlags, mask: bool) -> StatsOptions {
    StatsOptions {
        batch_rows: engine.batch_rows(),
        use_mask: mask,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Loads the SAE, builds the engine, and measures every input (dumps are encoded).
struct Session {
    engine: Box<dyn Engine>,
    fingerprint: String,
    opts: StatsOptions,
}

impl Session {
    fn new(
        ctx: &Ctx,
        flags: &EngineFlags,
        sae: &Path,
        format: Option<Format>,
        mask: bool,
    ) -> Result<Session> {
        let sae = ctx.load_sae(sae, format)?;
        let fingerprint = sae.fingerprint();
        Ok(Session {
            engine: flags.engine(ctx, sae)?,
            fingerprint,
            opts: stats_opts(flags, mask),
        })
    }
    fn measure(&self, ctx: &Ctx, path: &Path) -> Result<Measured> {
        ctx.note(&format!("measuring {}", path.display()));
        // A dump is encoded (long work: a progress bar); a statistics file is only read.
        let total = if workflow::is_stats_file(path) {
            0
        } else {
            Dump::open(path).map(|d| d.n_rows()).unwrap_or(0)
        };
        let pb = ctx.progress(total, &workflow::display_name(path));
        let m = workflow::measure_with_progress(
            self.engine.as_ref(),
            &self.fingerprint,
            path,
            &self.opts,
            &|rows| pb.inc(rows),
        );
        pb.finish_and_clear();
        m
    }
    fn measure_all(&self, ctx: &Ctx, paths: &[PathBuf]) -> Result<Vec<Measured>> {
        paths.iter().map(|p| self.measure(ctx, p)).collect()
    }
}

// ---------------------------------------------------------------- diff

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// SAE directory or file.
    #[arg(long)]
    pub sae: PathBuf,
    /// Base model: an activation dump or a statistics file from `sae stats`.
    #[arg(long)]
    pub base: PathBuf,
    /// Fine-tuned models (dumps or statistics files), same prompts as the base.
    #[arg(long, required = true, num_args = 1..)]
    pub tuned: Vec<PathBuf>,
    /// Latents in the top (largest increase) list.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, default_value_t = 20)]
    pub top: usize,
    /// Latents in the bottom (largest decrease) list.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, default_value_t = 20)]
    pub bottom: usize,
    /// Ranking: avg-delta, z-score, min-delta (every fine-tune must agree) or sign.
    #[arg(long, default_value = "avg-delta")]
    pub order: String,
    /// Count only tokens whose dump `mask` is 1 (e.g. response tokens).
    #[arg(long)]
    pub mask: bool,
    /// Write diff.csv, diff.json, report.md and SVG plots here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_diff(ctx: &Ctx, a: DiffArgs) -> Result<()> {
    let order = diff::DiffOrder::parse(&a.order)?;
    let s = Session::new(ctx, &a.engine, &a.sae, a.format, a.mask)?;
    let base = s.measure(ctx, &a.base)?;
    let tuned = s.measure_all(ctx, &a.tuned)?;
    workflow::check_pairing(&base, &tuned)?;
    let r = diff::diff(
        &base.name,
        &base.stats,
        &workflow::named_stats(&tuned),
        &diff::DiffOptions {
            top: a.top,
            bottom: a.bottom,
            order,
        },
    )?;
    if let Some(dir) = &a.out_dir {
        report::write_diff_outputs(dir, &r)?;
        ctx.note(&format!(
            "wrote diff.csv, diff.json, report.md, top_deltas.svg, delta_vs_freq.svg to {}",
            dir.display()
        ));
    }
    let mut h = String::new();
    let _ = writeln!(
        h,
        "{:>6} {:>8} {:>10} {:>9} {:>10} {:>10} {:>6}",
        "rank", "latent", "avg_delta", "z", "base_mean", "tuned_mean", "agree"
    );
    let rows = |h: &mut String, v: &[diff::LatentDiff]| {
        for (i, l) in v.iter().enumerate() {
            let _ = writeln!(
                h,
                "{:>6} {:>8} {:>+10.4} {:>+9.2} {:>10.4} {:>10.4} {:>4}/{}",
                i + 1,
                l.latent,
                l.delta,
                l.z,
                l.base_mean,
                l.tuned_mean,
                l.sign_agree,
                l.deltas.len()
            );
        }
    };
    let _ = writeln!(
        h,
        "largest increase ({} over {}):",
        r.order,
        count(r.tuned.len() as u64, "fine-tune")
    );
    rows(&mut h, &r.latents);
    let _ = writeln!(h, "largest decrease:");
    rows(&mut h, &r.bottom);
    ctx.output(to_json(&r), h.trim_end());
    Ok(())
}

// ---------------------------------------------------------------- steer

#[derive(clap::Args, Debug)]
pub struct SteerArgs {
    /// SAE directory or file.
    #[arg(long)]
    pub sae: PathBuf,
    /// Latent to steer along (repeat with --strength for a sum of several).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, required = true, num_args = 1)]
    pub latent: Vec<usize>,
    /// Strength of each --latent, in --unit (negative suppresses).
    #[arg(long, required = true, num_args = 1, allow_negative_numbers = true)]
    pub strength: Vec<f32>,
    /// raw (vector norm = strength), median-norm (x median residual norm of --acts) or
    /// max-act (x the latent's max activation in --acts).
    #[arg(long, default_value = "raw")]
    pub unit: String,
    /// Activation dump: for median-norm / max-act units and for --apply.
    #[arg(long)]
    pub acts: Option<PathBuf>,
    /// File format of the exported vector: npy, safetensors or gguf (llama.cpp control
    /// vector).
    #[arg(long, default_value = "gguf", value_name = "FORMAT")]
    pub export_format: String,
    /// Layer N the vector is for: the output of block N (0-based) = HF hidden_states[N+1]
    /// = llama.cpp direction.N (N >= 1).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count)]
    pub layer: Option<usize>,
    /// Output file for the vector.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Dry run: add the vector to every token of --acts, re-encode, report the change
    /// beside a random vector of the same norm.
    #[arg(long)]
    pub apply: bool,
    /// GGUF controlvector.model_hint (the model family, e.g. llama, qwen2, gemma2).
    #[arg(long, default_value = "llama")]
    pub model_hint: String,
    /// Other latents to report in the dry run.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, default_value_t = 10)]
    pub top_moved: usize,
    /// Seed of the random control vector.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::at_least::<0>, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Count only tokens whose dump `mask` is 1.
    #[arg(long)]
    pub mask: bool,
    /// Force the SAE format instead of detecting it (as on every command; the vector's
    /// file format is --export-format).
    #[arg(long, value_parser = parse_steer_sae_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub engine: EngineFlags,
}

/// `steer --format`: the SAE format, as everywhere; a vector file format given there
/// (the flag's meaning before --export-format) is pointed at the right flag.
fn parse_steer_sae_format(s: &str) -> std::result::Result<Format, String> {
    if steer::VectorFormat::parse(s).is_ok() {
        return Err(format!(
            "`{s}` is a vector file format: use --export-format {s} (--format is the SAE format)"
        ));
    }
    parse_format(s)
}

pub fn run_steer(ctx: &Ctx, a: SteerArgs) -> Result<()> {
    if a.latent.len() != a.strength.len() {
        return Err(Error::invalid(format!(
            "{} --latent but {} --strength: give one strength per latent",
            a.latent.len(),
            a.strength.len()
        )));
    }
    let unit = steer::SteerUnit::parse(&a.unit)?;
    let format = steer::VectorFormat::parse(&a.export_format)?;
    if a.out.is_none() && !a.apply {
        return Err(Error::invalid(
            "nothing to do: give --out FILE (export) and/or --apply (dry run)",
        ));
    }
    if a.out.is_some() && a.layer.is_none() {
        return Err(Error::invalid(
            "--out needs --layer N (the block whose output the vector is added to)",
        ));
    }
    if a.apply && a.acts.is_none() {
        return Err(Error::invalid("--apply needs --acts DUMP"));
    }
    let s = Session::new(ctx, &a.engine, &a.sae, a.format, a.mask)?;
    let dump = a.acts.as_ref().map(Dump::open).transpose()?;
    let terms: Vec<steer::SteerTerm> = a
        .latent
        .iter()
        .zip(&a.strength)
        .map(|(l, st)| steer::SteerTerm {
            latent: *l,
            strength: *st,
        })
        .collect();
    let v = steer::steering_vector(s.engine.as_ref(), &terms, unit, dump.as_ref(), &s.opts)?;
    let mut out = serde_json::json!({ "vector": to_json(&v) });
    let mut h = format!("steering vector: norm {:.6}, unit {}", v.norm, v.unit);
    for t in &v.terms {
        let _ = write!(
            h,
            "\n  latent {}: strength {} x {:.6} = {:.6}",
            t.latent, t.strength, t.unit_value, t.coefficient
        );
    }
    if let (Some(path), Some(layer)) = (&a.out, a.layer) {
        steer::export(&v, format, layer, &a.model_hint, path)?;
        out["out"] = serde_json::json!({"path": path, "format": format, "layer": layer});
        let _ = write!(h, "\nwrote {} ({}, layer {layer})", path.display(), format);
    }
    if a.apply {
        let dump = dump
            .as_ref()
            .ok_or_else(|| Error::invalid("--apply needs --acts DUMP"))?;
        let pb = ctx.progress(dump.n_rows(), "dry run");
        let r = steer::dry_run_with_progress(
            s.engine.as_ref(),
            dump,
            &v,
            &steer::DryRunOptions {
                top_moved: a.top_moved,
                seed: a.seed,
                stats: s.opts,
            },
            &|rows| pb.inc(rows),
        );
        pb.finish_and_clear();
        let r = r?;
        out["dry_run"] = to_json(&r);
        let _ = write!(h, "\n{}", report::dry_run_markdown(&r).trim_end());
    }
    ctx.output(out, &h);
    Ok(())
}

// ---------------------------------------------------------------- detect

#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    /// SAE directory or file.
    #[arg(long)]
    pub sae: PathBuf,
    /// Base model: a dump or a statistics file.
    #[arg(long)]
    pub base: PathBuf,
    /// Misaligned fine-tunes (dumps or statistics files).
    #[arg(long, required = true, num_args = 1..)]
    pub positive: Vec<PathBuf>,
    /// Aligned fine-tunes (dumps or statistics files).
    #[arg(long, required = true, num_args = 1..)]
    pub negative: Vec<PathBuf>,
    /// Only evaluate these latents (default: all).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, num_args = 1..)]
    pub latents: Option<Vec<usize>>,
    /// Latents in the ranked output.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, default_value_t = 20)]
    pub top: usize,
    /// Count only tokens whose dump `mask` is 1.
    #[arg(long)]
    pub mask: bool,
    /// Write detect.json, detect.csv and report.md here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_detect(ctx: &Ctx, a: DetectArgs) -> Result<()> {
    let s = Session::new(ctx, &a.engine, &a.sae, a.format, a.mask)?;
    let base = s.measure(ctx, &a.base)?;
    let pos = s.measure_all(ctx, &a.positive)?;
    let neg = s.measure_all(ctx, &a.negative)?;
    workflow::check_pairing(&base, &pos)?;
    workflow::check_pairing(&base, &neg)?;
    let r = detect::detect(
        &base.name,
        &base.stats,
        &workflow::named_stats(&pos),
        &workflow::named_stats(&neg),
        &detect::DetectOptions {
            latents: a.latents,
            top: a.top,
        },
    )?;
    if let Some(dir) = &a.out_dir {
        report::write_detect_outputs(dir, &r)?;
    }
    ctx.output(to_json(&r), report::detect_markdown(&r).trim_end());
    Ok(())
}

// ---------------------------------------------------------------- monitor

#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// SAE directory or file.
    #[arg(long)]
    pub sae: PathBuf,
    /// Base model: a dump or a statistics file.
    #[arg(long)]
    pub base: PathBuf,
    /// Checkpoints in order (dumps or statistics files).
    #[arg(long, required = true, num_args = 1..)]
    pub checkpoints: Vec<PathBuf>,
    /// Latents to follow.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, required = true, num_args = 1..)]
    pub latents: Vec<usize>,
    /// Alarm threshold on the delta (one for all, or one per latent; >= 0: delta >= T,
    /// < 0: delta <= T). Default: |z| >= 4 (a change of four standard errors).
    #[arg(long, num_args = 1.., allow_negative_numbers = true)]
    pub threshold: Option<Vec<f64>>,
    /// Count only tokens whose dump `mask` is 1.
    #[arg(long)]
    pub mask: bool,
    /// Write monitor.json, monitor.csv, report.md and trajectories.svg here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_monitor(ctx: &Ctx, a: MonitorArgs) -> Result<()> {
    let s = Session::new(ctx, &a.engine, &a.sae, a.format, a.mask)?;
    workflow::check_latents(&a.latents, s.engine.sae().n_latents())?;
    let base = s.measure(ctx, &a.base)?;
    let cks = s.measure_all(ctx, &a.checkpoints)?;
    workflow::check_pairing(&base, &cks)?;
    let alarms: Vec<monitor::Alarm> = match &a.threshold {
        Some(t) => t.iter().map(|v| monitor::Alarm::delta(*v)).collect(),
        None => vec![monitor::Alarm::DEFAULT],
    };
    let r = monitor::monitor(
        &base.name,
        &base.stats,
        &workflow::named_stats(&cks),
        &a.latents,
        &alarms,
    )?;
    if let Some(dir) = &a.out_dir {
        report::write_monitor_outputs(dir, &r)?;
    }
    ctx.output(to_json(&r), report::monitor_markdown(&r).trim_end());
    Ok(())
}

// ---------------------------------------------------------------- top-examples

#[derive(clap::Args, Debug)]
pub struct TopExamplesArgs {
    /// SAE directory or file.
    #[arg(long)]
    pub sae: PathBuf,
    /// Activation dump with `token_ids` (and optionally `doc_ids`).
    #[arg(long)]
    pub acts: PathBuf,
    /// The latent.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count)]
    pub latent: usize,
    /// Examples to show.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, default_value_t = 20)]
    pub top: usize,
    /// Tokens of context on each side (within the same document when doc_ids exist).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, default_value_t = 8)]
    pub context: usize,
    /// Hugging Face tokenizer.json to decode token ids.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Histogram bins.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::positive, default_value_t = 20)]
    pub bins: usize,
    /// Count only tokens whose dump `mask` is 1.
    #[arg(long)]
    pub mask: bool,
    /// Write the JSON and the histogram SVG here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_top_examples(ctx: &Ctx, a: TopExamplesArgs) -> Result<()> {
    let vocab = a
        .tokenizer
        .as_deref()
        .map(Vocab::from_tokenizer_json)
        .transpose()?;
    let s = Session::new(ctx, &a.engine, &a.sae, a.format, a.mask)?;
    let dump = Dump::open(&a.acts)?;
    let pb = ctx.progress(dump.n_rows(), "scanning");
    let r = top_examples::top_examples_with_progress(
        s.engine.as_ref(),
        &dump,
        a.latent,
        vocab.as_ref(),
        &top_examples::TopExamplesOptions {
            top: a.top,
            context: a.context,
            bins: a.bins,
            stats: s.opts,
        },
        &|rows| pb.inc(rows),
    );
    pb.finish_and_clear();
    let r = r?;
    if let Some(dir) = &a.out_dir {
        report::write_top_examples_outputs(dir, &r)?;
    }
    let mut h = format!(
        "latent {}: active on {} of {} tokens, max {:.4}\n",
        r.latent, r.n_active, r.n_tokens, r.max
    );
    for e in &r.examples {
        let ctx_text = match (&e.text_before, &e.token, &e.text_after) {
            (Some(b), Some(t), Some(a)) => format!("{b}[[{t}]]{a}").replace('\n', "\\n"),
            _ => format!("{:?} [[{}]] {:?}", e.before, e.token_id, e.after),
        };
        let _ = writeln!(
            h,
            "{:>3} {:>9.4} row {:>8}  {ctx_text}",
            e.rank, e.activation, e.row
        );
    }
    let _ = write!(
        h,
        "histogram (edges {:.3}..{:.3}): {:?}, inactive {}",
        r.histogram.edges.first().unwrap_or(&0.0),
        r.histogram.edges.last().unwrap_or(&0.0),
        r.histogram.counts,
        r.histogram.zeros
    );
    ctx.output(to_json(&r), &h);
    Ok(())
}

// ---------------------------------------------------------------- demo

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Folder for the synthetic inputs, reports and plots (default: a new folder in the
    /// system temp directory).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Seed of the synthetic scenario.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::at_least::<0>, default_value_t = 2026)]
    pub seed: u64,
    /// Tokens per synthetic dump.
    #[arg(long, default_value_t = 2048, allow_negative_numbers = true,
          value_parser = crate::numbers::positive)]
    pub tokens: usize,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_demo(ctx: &Ctx, a: DemoArgs) -> Result<()> {
    let backend = a.engine.backend_kind()?;
    ctx.note("building a synthetic audit (SAE d=256, 4096 latents; base, 4 misaligned, 3 aligned fine-tunes, 6 checkpoints)");
    let r = demo::run(&demo::DemoOptions {
        out_dir: a.out_dir,
        seed: a.seed,
        backend,
        n_tokens: a.tokens,
        batch_rows: a.engine.batch_rows(),
        engine: a.engine.options(),
        ..Default::default()
    })?;
    let mut h = String::new();
    for c in &r.checks {
        let _ = writeln!(
            h,
            "[{}] {}\n      {}",
            if c.ok { "ok" } else { "MISSED" },
            c.name,
            c.detail
        );
    }
    let _ = write!(
        h,
        "{} in {:.1} s on {}.\nReports and plots: {}/reports (summary: {}/REPORT.md); inputs: {}/data",
        if r.all_ok { "Recovered everything that was planted" } else { "Some planted effects were NOT recovered" },
        r.seconds,
        r.backend,
        r.folder.display(),
        r.folder.display(),
        r.folder.display()
    );
    let json = serde_json::json!({
        "folder": r.folder, "backend": r.backend, "all_ok": r.all_ok, "seconds": r.seconds,
        "planted": to_json(&r.planted), "checks": to_json(&r.checks),
    });
    ctx.output(json, &h);
    if !r.all_ok {
        return Err(Error::invalid(
            "the demo did not recover every planted effect (see above)",
        ));
    }
    Ok(())
}

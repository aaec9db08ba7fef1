//! `sae crosscoder`: crosscoder model diffing (the dictionary_learning fork's
//! CrossCoder / BatchTopKCrossCoder, `save_pretrained` layout).
//!
//! - `inspect DIR`: class, models, widths, code normalization, threshold.
//! - `encode`: paired activations to codes (one file, or one per model for DECOUPLED).
//! - `analyze`: decoder norms, classes, cosine, latent scaling; CSV/JSON/markdown/SVG.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sae_engine::crosscoder::{
    self, analysis, paired::Paired, report, Crosscoder, CrosscoderEngine,
};
use sae_engine::io::codes_file::{CodesKind, CodesWriter};
use sae_engine::io::guard::PathGuard;
use sae_engine::provenance::Provenance;
use sae_engine::{Encoded, Result};
use serde_json::json;

use crate::common::{rate, Ctx};
use crate::engine_flags::EngineFlags;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show a crosscoder's class, models, widths, code normalization and threshold.
    Inspect(InspectArgs),
    /// Encode paired activations into a codes file (one per model for DECOUPLED).
    Encode(EncodeArgs),
    /// Decoder norms, base-only / shared / tuned-only classes, decoder cosine and latent scaling.
    Analyze(AnalyzeArgs),
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Crosscoder directory (config.json + model.safetensors) or its model.safetensors.
    pub crosscoder: PathBuf,
}

/// The paired activations: one `[n, n_models, d]` .npy, or one dump per model (base first).
#[derive(clap::Args, Debug)]
pub struct PairedArgs {
    /// Paired activations: one [n, n_models, d] .npy, or `--acts` once per model in model
    /// order (base first), each a dump (.npy, .safetensors, a shard directory or a
    /// crosscoder_learning cache) with rows aligned one to one.
    #[arg(long = "acts", value_name = "PATH")]
    pub acts: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct EncodeArgs {
    /// Crosscoder directory or model.safetensors.
    #[arg(long)]
    pub crosscoder: PathBuf,
    #[command(flatten)]
    pub paired: PairedArgs,
    /// Output codes file (.safetensors, CSR). DECOUPLED crosscoders write one file per
    /// model: NAME.model0.safetensors, NAME.model1.safetensors, ...
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub engine: EngineFlags,
}

#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// Crosscoder directory or model.safetensors (two models: base first, tuned second).
    #[arg(long)]
    pub crosscoder: PathBuf,
    /// Without activations only the decoder analyses run (no latent scaling).
    #[command(flatten)]
    pub paired: PairedArgs,
    /// Output directory: crosscoder.csv, crosscoder.json, crosscoder.md, relative_norm.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// Latents per table in crosscoder.md (the CSV and JSON hold every latent).
    #[arg(long, default_value_t = 20, value_parser = crate::numbers::at_least::<1>)]
    pub top: u64,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    match a.command {
        Command::Inspect(a) => run_inspect(ctx, &a.crosscoder),
        Command::Encode(a) => run_encode(ctx, a),
        Command::Analyze(a) => run_analyze(ctx, a),
    }
}

/// Loads and records a crosscoder.
fn load(path: &Path, prov: &mut Provenance) -> Result<Arc<Crosscoder>> {
    let cc = crosscoder::load(path)?;
    prov.sae(path, &cc.fingerprint())?;
    prov.option("conventions", &cc.meta.conventions);
    Ok(Arc::new(cc))
}

/// `sae crosscoder inspect` (and `sae inspect` on a crosscoder directory).
pub fn run_inspect(ctx: &Ctx, path: &Path) -> Result<()> {
    let mut prov = ctx.provenance("crosscoder inspect");
    let cc = load(path, &mut prov)?;
    let s = report::Summary::of(&cc);
    let mut human = format!("{}\n{}", path.display(), s.line());
    for c in &s.conventions {
        human.push_str(&format!("\n  {c}"));
    }
    let mut json = serde_json::to_value(&s).unwrap_or_default();
    json["fingerprint"] = cc.fingerprint().into();
    ctx.output(&prov, json, &human)
}

fn engine(
    ctx: &Ctx,
    flags: &EngineFlags,
    cc: Arc<Crosscoder>,
    prov: &mut Provenance,
) -> Result<CrosscoderEngine> {
    flags.record(prov);
    let e = CrosscoderEngine::new(cc, flags.backend_kind()?, &flags.options())?;
    ctx.note(&format!("backend: {}", e.name()));
    prov.option("engine", e.name());
    Ok(e)
}

/// The file code `m` of `n_codes` goes to.
fn code_path(out: &Path, m: usize, n_codes: usize) -> PathBuf {
    if n_codes == 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.model{m}.safetensors"))
}

fn run_encode(ctx: &Ctx, a: EncodeArgs) -> Result<()> {
    let cc0 = crosscoder::load(&a.crosscoder)?;
    let n_codes = if cc0.code_norm.decoupled() {
        cc0.n_models
    } else {
        1
    };
    let outs: Vec<PathBuf> = (0..n_codes)
        .map(|m| code_path(&a.out, m, n_codes))
        .collect();
    let mut guard = PathGuard::new()
        .sae("--crosscoder", &a.crosscoder)
        .inputs("--acts", &a.paired.acts);
    for o in &outs {
        guard = guard.output_file("--out", o);
    }
    guard.check()?;
    let mut prov = ctx.provenance("crosscoder encode");
    let cc = load(&a.crosscoder, &mut prov)?;
    let acts = Paired::open(&a.paired.acts, cc.n_models, cc.d)?;
    prov.inputs("acts", &a.paired.acts)?;
    let e = engine(ctx, &a.engine, cc.clone(), &mut prov)?;
    let fingerprint = cc.fingerprint();
    let mut writers = outs
        .iter()
        .map(|o| {
            let mut w = CodesWriter::create(o, CodesKind::Csr, &fingerprint)?;
            let (k, v) = prov.metadata_entry();
            w.set_metadata(k, v);
            Ok(w)
        })
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let pb = ctx.progress(acts.n_rows(), "crosscoder encode");
    let mut nnz = 0u64;
    let done = acts.for_each_batch(a.engine.batch_rows(), |start, rows, x| {
        let codes = e.encode(x, rows, start)?;
        for (w, c) in writers.iter_mut().zip(codes.codes) {
            nnz += (0..c.n_rows()).map(|r| c.l0(r) as u64).sum::<u64>();
            w.push(&Encoded {
                codes: c,
                denorm: None,
            })?;
        }
        pb.inc(rows as u64);
        Ok(())
    });
    pb.finish_and_clear();
    done?;
    for w in writers {
        w.finish()?;
    }
    let n = acts.n_rows();
    let secs = t0.elapsed().as_secs_f64();
    let mean_l0 = nnz as f64 / (n.max(1) * n_codes as u64) as f64;
    let json = json!({
        "out": outs.iter().map(|o| o.to_string_lossy()).collect::<Vec<_>>(),
        "n_rows": n,
        "mean_l0": mean_l0,
        "backend": e.name(),
        "seconds": secs,
        "rows_per_second": rate(n, secs),
    });
    let human = format!(
        "encoded {n} paired rows into {} (mean L0 {mean_l0:.2}) in {secs:.2} s, {:.0} rows/s",
        outs.iter()
            .map(|o| o.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        rate(n, secs)
    );
    ctx.output(&prov, json, &human)
}

fn run_analyze(ctx: &Ctx, a: AnalyzeArgs) -> Result<()> {
    PathGuard::new()
        .sae("--crosscoder", &a.crosscoder)
        .inputs("--acts", &a.paired.acts)
        .output_dir("--out", &a.out)
        .check()?;
    let mut prov = ctx.provenance("crosscoder analyze");
    let cc = load(&a.crosscoder, &mut prov)?;
    // Checks that can fail run before the pass over the activations.
    analysis::decoder_rows(&cc)?;
    let acts = if a.paired.acts.is_empty() {
        None
    } else {
        let p = Paired::open(&a.paired.acts, cc.n_models, cc.d)?;
        prov.inputs("acts", &a.paired.acts)?;
        Some(p)
    };
    let e = engine(ctx, &a.engine, cc.clone(), &mut prov)?;
    prov.option("top", a.top);
    let pb = ctx.progress(acts.as_ref().map_or(0, |p| p.n_rows()), "latent scaling");
    let res = analysis::analyze(&e, acts.as_ref(), a.engine.batch_rows(), &|n| pb.inc(n));
    pb.finish_and_clear();
    let an = res?;
    report::write_outputs(&a.out, &cc, &an, a.top as usize, &prov)?;
    let r = report::Report::new(&cc, &an);
    let c = &r.counts;
    let json = json!({
        "out": a.out.to_string_lossy(),
        "n_rows": an.n_rows,
        "counts": c,
    });
    let human = format!(
        "{} latents: {} tuned-only ({} tuned-specific, {} artifacts suspected, {} never active), \
         {} shared, {} base-only, {} other; latent scaling over {} rows; wrote {}",
        an.latents.len(),
        c.tuned_only,
        c.tuned_specific,
        c.artifacts,
        c.unmeasured,
        c.shared,
        c.base_only,
        c.other,
        an.n_rows,
        a.out.display()
    );
    ctx.output(&prov, json, &human)
}

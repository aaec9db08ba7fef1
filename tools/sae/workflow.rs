//! The audit workflow commands: `sae diff`, `sae steer`, `sae detect`, `sae monitor`,
//! `sae top-examples`, `sae demo` (library: `sae_engine::workflow`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sae_engine::io::guard::PathGuard;
use sae_engine::plural::count;
use sae_engine::provenance::Provenance;
use sae_engine::stats::TokenRule;
use sae_engine::workflow::{
    self, demo, detect, diff, layer_check, logit_lens, monitor, probe, report, steer,
    tokenizer::Vocab, top_examples, Measured, PairingRequest, StatsOptions,
};
use sae_engine::{Dump, Engine, Error, Format, Result, Sae};

use crate::common::{parse_format, Ctx, LoadFlags};
use crate::engine_flags::EngineFlags;
use crate::stats::{KeepOutliersArg, TokenArgs};

fn stats_opts(engine: &EngineFlags, rule: TokenRule) -> StatsOptions {
    StatsOptions {
        batch_rows: engine.batch_rows(),
        rule,
    }
}

/// `--pairing auto|paired|unpaired` of diff, detect and monitor.
#[derive(clap::Args, Debug)]
pub struct PairingArg {
    /// auto: paired when the counted tokens match (count and token-id hash), else
    /// unpaired; paired: refuse inputs whose counted tokens differ; unpaired: compare as
    /// independent token sets.
    #[arg(long, default_value = "auto", value_parser = clap::builder::PossibleValuesParser::new(PairingRequest::NAMES))]
    pub pairing: String,
}

impl PairingArg {
    fn request(&self) -> Result<PairingRequest> {
        PairingRequest::parse(&self.pairing)
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
    /// Loads the SAE and builds the engine the command's engine flags ask for, recording
    /// both and the token rule in `prov`.
    fn new(
        ctx: &Ctx,
        prov: &mut Provenance,
        flags: &EngineFlags,
        sae: &Path,
        format: Option<Format>,
        load: &LoadFlags,
        rule: TokenRule,
    ) -> Result<Session> {
        let sae = ctx.load_sae(sae, format, load, prov)?;
        Session::from_sae(ctx, prov, flags, sae, rule)
    }
    /// [`Session::new`] on an SAE already loaded and recorded.
    fn from_sae(
        ctx: &Ctx,
        prov: &mut Provenance,
        flags: &EngineFlags,
        sae: Arc<Sae>,
        rule: TokenRule,
    ) -> Result<Session> {
        rule.check()?;
        let fingerprint = sae.fingerprint();
        prov.option("mask", rule.use_mask)
            .option("outlier_factor", rule.outlier_factor)
            .option("keep_outliers", rule.keep_outliers);
        Ok(Session {
            // The workflow commands encode and count; decoder rows (steering) are read on
            // the host, so a CUDA engine leaves W_dec there.
            engine: flags.engine_for(ctx, sae, prov, sae_engine::Workload::Encode)?,
            fingerprint,
            opts: stats_opts(flags, rule),
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
    /// The checks that need no encoding, on every input, before any is encoded: each
    /// group is paired with the base as it will be after measuring.
    fn precheck(&self, base: &Path, groups: &[&[PathBuf]], want: PairingRequest) -> Result<()> {
        let probe = |p: &Path| probe::probe(self.engine.as_ref(), &self.fingerprint, p, &self.opts);
        let base = probe(base)?;
        for group in groups {
            let others = group.iter().map(|p| probe(p)).collect::<Result<Vec<_>>>()?;
            workflow::pair(&base, &others, want)?;
        }
        Ok(())
    }
}

/// What `diff`, `detect` and `monitor` share: an SAE, a base and groups of inputs to
/// compare with it, a report folder.
struct Comparison<'a> {
    command: &'a str,
    sae: &'a Path,
    format: Option<Format>,
    load: &'a LoadFlags,
    engine: &'a EngineFlags,
    rule: TokenRule,
    want: PairingRequest,
    base: &'a Path,
    /// (role, inputs): the role names the flag (`--ROLE`) and the provenance entry.
    groups: &'a [(&'a str, &'a [PathBuf])],
    out_dir: Option<&'a PathBuf>,
}

impl Comparison<'_> {
    /// Every check that needs no encoding, in order: outputs off the inputs, the SAE,
    /// then each group against the base as it will be paired after measuring (all groups
    /// together, as the commands pair them). Returns the session and the provenance record
    /// with the inputs in it.
    fn open(&self, ctx: &Ctx) -> Result<(Session, Provenance)> {
        let mut guard = PathGuard::new()
            .sae("--sae", self.sae)
            .input("--base", self.base);
        for (role, paths) in self.groups {
            guard = guard.inputs(&format!("--{role}"), paths);
        }
        guard.output_dir_opt("--out-dir", self.out_dir).check()?;
        let mut prov = ctx.provenance(self.command);
        let s = Session::new(
            ctx,
            &mut prov,
            self.engine,
            self.sae,
            self.format,
            self.load,
            self.rule,
        )?;
        prov.input("base", self.base)?;
        for (role, paths) in self.groups {
            prov.inputs(role, paths)?;
        }
        prov.option("pairing", format!("{:?}", self.want));
        let all: Vec<PathBuf> = self
            .groups
            .iter()
            .flat_map(|(_, paths)| paths.iter().cloned())
            .collect();
        s.precheck(self.base, &[&all], self.want)?;
        Ok((s, prov))
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
    /// Ranking: avg-delta, z-score, min-delta (every fine-tune must agree), sign or
    /// z-clustered (the average delta over its document-clustered standard error).
    #[arg(long, default_value = "avg-delta")]
    pub order: String,
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub pairing: PairingArg,
    /// Write diff.csv, diff.json, report.md and SVG plots here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub load: LoadFlags,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_diff(ctx: &Ctx, a: DiffArgs) -> Result<()> {
    let order = diff::DiffOrder::parse(&a.order)?;
    let want = a.pairing.request()?;
    let (s, mut prov) = Comparison {
        command: "diff",
        sae: &a.sae,
        format: a.format,
        load: &a.load,
        engine: &a.engine,
        rule: a.tokens.rule(None),
        want,
        base: &a.base,
        groups: &[("tuned", &a.tuned)],
        out_dir: a.out_dir.as_ref(),
    }
    .open(ctx)?;
    prov.option("order", order.to_string())
        .option("top", a.top)
        .option("bottom", a.bottom);
    let base = s.measure(ctx, &a.base)?;
    let tuned = s.measure_all(ctx, &a.tuned)?;
    let pairing = workflow::pair(&base, &tuned, want)?;
    let r = diff::diff(
        &base.name,
        &base.stats,
        &workflow::named_stats(&tuned),
        &pairing,
        &diff::DiffOptions {
            top: a.top,
            bottom: a.bottom,
            order,
        },
    )?;
    if let Some(dir) = &a.out_dir {
        report::write_diff_outputs(dir, &r, &prov)?;
        ctx.note(&format!(
            "wrote diff.csv, diff.json, report.md, top_deltas.svg, delta_vs_freq.svg to {}",
            dir.display()
        ));
    }
    let mut h = String::new();
    let _ = writeln!(h, "pairing: {} ({})", r.pairing.mode, r.pairing.reason);
    for i in &r.inputs {
        let _ = writeln!(
            h,
            "{}: {}, {} (norm > {} x median {})",
            i.name,
            count(i.n_tokens, "counted token"),
            i.n_outliers
                .map(|n| count(n, "outlier token"))
                .unwrap_or_else(|| "unknown outlier tokens".into()),
            i.outlier_factor,
            i.median_norm
                .map(|m| format!("{m:.4}"))
                .unwrap_or_else(|| "n/a".into()),
        );
    }
    let _ = writeln!(
        h,
        "{:>6} {:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10} {:>6}",
        "rank", "latent", "avg_delta", "z", "z_clust", "q", "base_mean", "tuned_mean", "agree"
    );
    let rows = |h: &mut String, v: &[diff::LatentDiff]| {
        for (i, l) in v.iter().enumerate() {
            let _ = writeln!(
                h,
                "{:>6} {:>8} {:>+10.4} {:>+9.2} {:>+9.2} {:>9.2e} {:>10.4} {:>10.4} {:>4}/{}",
                i + 1,
                l.latent,
                l.delta,
                l.z,
                l.z_clustered,
                l.q_value,
                l.base_mean,
                l.tuned_mean,
                l.sign_agree,
                l.deltas.len()
            );
        }
    };
    let _ = writeln!(h, "z_clust: {}; q: {}", r.clustering, r.multiple_testing);
    let _ = writeln!(
        h,
        "largest increase ({} over {}):",
        r.order,
        count(r.tuned.len() as u64, "fine-tune")
    );
    rows(&mut h, &r.latents);
    let _ = writeln!(h, "largest decrease:");
    rows(&mut h, &r.bottom);
    ctx.output(&prov, to_json(&r), h.trim_end())
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
    #[arg(long, num_args = 1, allow_negative_numbers = true)]
    pub strength: Vec<f32>,
    /// Strength sweep on --acts: several strengths of one --latent in one run (e.g.
    /// 0.5,1,2,4), each beside a random control of the same norm.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, conflicts_with_all = ["strength", "out"])]
    pub strengths: Option<Vec<f32>>,
    /// Also project the latent's decoder direction out of every row of --acts and report
    /// the same columns beside the addition (one --latent).
    #[arg(long)]
    pub ablate: bool,
    /// raw (vector norm = strength), median-norm (x median residual norm of --acts) or
    /// max-act (x the latent's max activation in --acts).
    #[arg(long, default_value = "raw")]
    pub unit: String,
    /// Activation dump: for median-norm / max-act units, --apply, --strengths and --ablate;
    /// its metadata (layer, n_layers) is checked against --layer.
    #[arg(long)]
    pub acts: Option<PathBuf>,
    /// File format of the exported vector: npy, safetensors or gguf (llama.cpp control
    /// vector).
    #[arg(long, default_value = "gguf", value_name = "FORMAT")]
    pub export_format: String,
    /// Layer N the vector is for: the output of block N (0-based) = HF hidden_states[N+1]
    /// = blocks.N.hook_resid_post = llama.cpp direction.N (N >= 1). Checked against the
    /// SAE's hook and the model's block count.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count)]
    pub layer: Option<usize>,
    /// The model's number of blocks, when --acts does not record it (n_layers metadata).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::positive)]
    pub n_layers: Option<usize>,
    /// Write the vector even though --layer disagrees with the SAE's hook (or the dump's
    /// layer), or the SAE's hook is not the residual stream between blocks.
    #[arg(long)]
    pub force_layer: bool,
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
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub keep: KeepOutliersArg,
    /// Write the dry run's or the sweep's report (markdown and JSON) here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it (as on every command; the vector's
    /// file format is --export-format).
    #[arg(long, value_parser = parse_steer_sae_format)]
    pub format: Option<Format>,
    /// --sae is a crosscoder (config.json + model.safetensors): steer along model N's
    /// decoder row of each --latent (1 = the tuned model). Export only (--out), with
    /// --unit raw or median-norm.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = crate::numbers::count, conflicts_with = "format")]
    pub crosscoder_model: Option<usize>,
    #[command(flatten)]
    pub load: LoadFlags,
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

/// Checks the steer arguments that need no file.
fn check_steer_args(a: &SteerArgs) -> Result<()> {
    let sweep = a.strengths.is_some();
    if !sweep && a.latent.len() != a.strength.len() {
        return Err(Error::invalid(format!(
            "{} --latent but {} --strength: give one strength per latent (or --strengths for a sweep)",
            a.latent.len(),
            a.strength.len()
        )));
    }
    if (sweep || a.ablate) && a.latent.len() != 1 {
        return Err(Error::invalid(
            "--strengths and --ablate take exactly one --latent (strength is tuned per latent)",
        ));
    }
    if a.strengths.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(Error::invalid("--strengths needs at least one value"));
    }
    if (a.apply || sweep || a.ablate) && a.acts.is_none() {
        return Err(Error::invalid(
            "--apply, --strengths and --ablate need --acts DUMP",
        ));
    }
    if a.crosscoder_model.is_some() && (a.apply || sweep || a.ablate || a.unit == "max-act") {
        // Each of these encodes --acts, and a crosscoder encodes both models' rows at once.
        return Err(Error::invalid(
            "--crosscoder-model exports a decoder direction (--out, --unit raw or median-norm); \
             --apply, --strengths, --ablate and --unit max-act would encode one model's \
             activations, which a crosscoder cannot",
        ));
    }
    if a.out.is_none() && !a.apply && !sweep && !a.ablate {
        return Err(Error::invalid(
            "nothing to do: give --out FILE (export), --apply (dry run), --strengths (sweep) or --ablate",
        ));
    }
    Ok(())
}

pub fn run_steer(ctx: &Ctx, a: SteerArgs) -> Result<()> {
    check_steer_args(&a)?;
    let unit = steer::SteerUnit::parse(&a.unit)?;
    let format = steer::VectorFormat::parse(&a.export_format)?;
    PathGuard::new()
        .sae("--sae", &a.sae)
        .input_opt("--acts", a.acts.as_ref())
        .output_file_opt("--out", a.out.as_ref())
        .output_dir_opt("--out-dir", a.out_dir.as_ref())
        .check()?;
    let mut prov = ctx.provenance("steer");
    let s = match a.crosscoder_model {
        Some(m) => {
            let view = sae_engine::crosscoder::load(&a.sae)?.model_view(m)?;
            prov.sae(&a.sae, &view.fingerprint())?
                .option("crosscoder_model", m);
            let rule = a.tokens.rule(Some(&a.keep));
            Session::from_sae(ctx, &mut prov, &a.engine, Arc::new(view), rule)?
        }
        None => Session::new(
            ctx,
            &mut prov,
            &a.engine,
            &a.sae,
            a.format,
            &a.load,
            a.tokens.rule(Some(&a.keep)),
        )?,
    };
    workflow::check_latents(&a.latent, s.engine.sae().n_latents())?;
    let dump = a.acts.as_ref().map(Dump::open).transpose()?;
    if let Some(acts) = &a.acts {
        prov.input("acts", acts)?;
    }
    prov.option("latent", &a.latent)
        .option("strength", &a.strength)
        .option("strengths", &a.strengths)
        .option("unit", &a.unit)
        .option("ablate", a.ablate);
    if a.apply || a.ablate || a.strengths.is_some() {
        prov.option("seed", a.seed);
    }
    let dump_meta = dump.as_ref().map(|d| d.metadata()).transpose()?;
    let sae_meta = &s.engine.sae().meta;
    let inputs = layer_check::LayerInputs {
        sae: Some(sae_meta),
        dump: dump_meta.as_ref(),
        n_layers_flag: a.n_layers,
        force: a.force_layer,
    };
    // Checked before any pass over the dump: the layer written, or the dump's own layer.
    let check = match (a.out.is_some(), a.layer) {
        (true, Some(layer)) => Some(layer_check::check_layer(layer, format, &inputs)?),
        (true, None) => {
            let hint = sae_meta
                .hook_name
                .as_deref()
                .and_then(layer_check::parse_hook)
                .and_then(|h| match h {
                    layer_check::HookSite::BlockOutput(b) => Some(b),
                    _ => None,
                })
                .map(|b| format!(" (the SAE's hook is block {b}'s output: --layer {b})"))
                .unwrap_or_default();
            return Err(Error::invalid(format!(
                "--out needs --layer N (the block whose output the vector is added to){hint}"
            )));
        }
        (false, _) => layer_check::check_dump_layer(&inputs)?,
    };
    let mut out = serde_json::json!({});
    let mut h = String::new();
    if let Some(c) = &check {
        out["layer_check"] = to_json(c);
        for n in &c.notes {
            let _ = writeln!(h, "note: {n}");
        }
    }
    let opts = steer::DryRunOptions {
        top_moved: a.top_moved,
        seed: a.seed,
        ablate: a.ablate,
        stats: s.opts,
    };
    if let Some(strengths) = &a.strengths {
        let dump = dump
            .as_ref()
            .ok_or_else(|| Error::invalid("--strengths needs --acts DUMP"))?;
        let pb = ctx.progress(dump.n_rows(), "sweep");
        let r = steer::sweep(
            s.engine.as_ref(),
            dump,
            a.latent[0],
            strengths,
            unit,
            a.ablate,
            &opts,
            &|rows| pb.inc(rows),
        );
        pb.finish_and_clear();
        let r = r?;
        let md = steer::sweep_markdown(&r);
        if let Some(dir) = &a.out_dir {
            report::write_json_and_markdown(dir, "sweep", &r, &md, &prov)?;
        }
        out["sweep"] = to_json(&r);
        h.push_str(md.trim_end());
        return ctx.output(&prov, out, &h);
    }
    let strengths = if a.strength.is_empty() {
        // --ablate alone: the addition beside it at strength 1.
        vec![1.0]
    } else {
        a.strength.clone()
    };
    let terms: Vec<steer::SteerTerm> = a
        .latent
        .iter()
        .zip(&strengths)
        .map(|(l, st)| steer::SteerTerm {
            latent: *l,
            strength: *st,
        })
        .collect();
    let v = steer::steering_vector(s.engine.as_ref(), &terms, unit, dump.as_ref(), &s.opts)?;
    out["vector"] = to_json(&v);
    let _ = write!(h, "steering vector: norm {:.6}, unit {}", v.norm, v.unit);
    if let Some(o) = &v.outliers {
        let _ = write!(h, "\n  unit measured with {}", o.describe());
    }
    for t in &v.terms {
        let _ = write!(
            h,
            "\n  latent {}: strength {} x {:.6} = {:.6}",
            t.latent, t.strength, t.unit_value, t.coefficient
        );
    }
    if let (Some(path), Some(layer)) = (&a.out, a.layer) {
        steer::export(&v, format, layer, &a.model_hint, path)?;
        out["out"] =
            serde_json::json!({"path": path.to_string_lossy(), "format": format, "layer": layer});
        let _ = write!(h, "\nwrote {} ({}, layer {layer})", path.display(), format);
    }
    if a.apply || a.ablate {
        let dump = dump
            .as_ref()
            .ok_or_else(|| Error::invalid("--apply needs --acts DUMP"))?;
        let pb = ctx.progress(dump.n_rows(), "dry run");
        let r =
            steer::dry_run_with_progress(s.engine.as_ref(), dump, &v, &opts, &|rows| pb.inc(rows));
        pb.finish_and_clear();
        let r = r?;
        if let Some(dir) = &a.out_dir {
            report::write_dry_run_outputs(dir, &r, &prov)?;
        }
        out["dry_run"] = to_json(&r);
        let _ = write!(h, "\n{}", report::dry_run_markdown(&r).trim_end());
    }
    ctx.output(&prov, out, &h)
}

// ---------------------------------------------------------------- logit-lens

#[derive(clap::Args, Debug)]
pub struct LogitLensArgs {
    /// SAE directory or file.
    #[arg(long)]
    pub sae: PathBuf,
    #[command(flatten)]
    pub load: LoadFlags,
    /// Hugging Face model directory: config.json, *.safetensors (lm_head.weight, or the
    /// token embeddings when tied; the final norm's weight) and tokenizer.json.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Latents to read (comma-separated or repeated).
    #[arg(long, required = true, value_delimiter = ',', num_args = 1..,
          allow_negative_numbers = true, value_parser = crate::numbers::count)]
    pub latents: Vec<usize>,
    /// Tokens to show each way (promoted, suppressed).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::count, default_value_t = 20)]
    pub top: usize,
    /// tokenizer.json to decode tokens (default: the model directory's, when present).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write logit_lens.json and logit_lens.md here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
}

pub fn run_logit_lens(ctx: &Ctx, a: LogitLensArgs) -> Result<()> {
    PathGuard::new()
        .sae("--sae", &a.sae)
        .input("--model-dir", &a.model_dir)
        .input_opt("--tokenizer", a.tokenizer.as_ref())
        .output_dir_opt("--out-dir", a.out_dir.as_ref())
        .check()?;
    let mut prov = ctx.provenance("logit-lens");
    let sae = ctx.load_sae(&a.sae, a.format, &a.load, &mut prov)?;
    prov.input("model_dir", &a.model_dir)?;
    prov.option("latents", &a.latents).option("top", a.top);
    let tok = a
        .tokenizer
        .clone()
        .or_else(|| Some(a.model_dir.join("tokenizer.json")).filter(|p| p.is_file()));
    let vocab = tok.as_deref().map(Vocab::from_tokenizer_json).transpose()?;
    if let Some(t) = &tok {
        prov.input("tokenizer", t)?;
    }
    if vocab.is_none() {
        ctx.note("no tokenizer.json: tokens are shown as ids");
    }
    let r = logit_lens::logit_lens(&sae, &a.model_dir, &a.latents, a.top, vocab.as_ref())?;
    let md = logit_lens::logit_lens_markdown(&r);
    if let Some(dir) = &a.out_dir {
        report::write_json_and_markdown(dir, "logit_lens", &r, &md, &prov)?;
    }
    ctx.output(&prov, to_json(&r), md.trim_end())
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
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub pairing: PairingArg,
    /// Write detect.json, detect.csv and report.md here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub load: LoadFlags,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_detect(ctx: &Ctx, a: DetectArgs) -> Result<()> {
    let want = a.pairing.request()?;
    let (s, mut prov) = Comparison {
        command: "detect",
        sae: &a.sae,
        format: a.format,
        load: &a.load,
        engine: &a.engine,
        rule: a.tokens.rule(None),
        want,
        base: &a.base,
        groups: &[("positive", &a.positive), ("negative", &a.negative)],
        out_dir: a.out_dir.as_ref(),
    }
    .open(ctx)?;
    prov.option("latents", &a.latents).option("top", a.top);
    let base = s.measure(ctx, &a.base)?;
    let pos = s.measure_all(ctx, &a.positive)?;
    let neg = s.measure_all(ctx, &a.negative)?;
    let all: Vec<Measured> = pos.iter().chain(&neg).cloned().collect();
    let pairing = workflow::pair(&base, &all, want)?;
    let r = detect::detect(
        &base.name,
        &base.stats,
        &workflow::named_stats(&pos),
        &workflow::named_stats(&neg),
        &pairing,
        &detect::DetectOptions {
            latents: a.latents,
            top: a.top,
        },
    )?;
    if let Some(dir) = &a.out_dir {
        report::write_detect_outputs(dir, &r, &prov)?;
    }
    ctx.output(&prov, to_json(&r), report::detect_markdown(&r).trim_end())
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
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub pairing: PairingArg,
    /// Write monitor.json, monitor.csv, report.md and trajectories.svg here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub load: LoadFlags,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_monitor(ctx: &Ctx, a: MonitorArgs) -> Result<()> {
    let want = a.pairing.request()?;
    let (s, mut prov) = Comparison {
        command: "monitor",
        sae: &a.sae,
        format: a.format,
        load: &a.load,
        engine: &a.engine,
        rule: a.tokens.rule(None),
        want,
        base: &a.base,
        groups: &[("checkpoints", &a.checkpoints)],
        out_dir: a.out_dir.as_ref(),
    }
    .open(ctx)?;
    prov.option("latents", &a.latents)
        .option("threshold", &a.threshold);
    workflow::check_latents(&a.latents, s.engine.sae().n_latents())?;
    let base = s.measure(ctx, &a.base)?;
    let cks = s.measure_all(ctx, &a.checkpoints)?;
    let pairing = workflow::pair(&base, &cks, want)?;
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
        &pairing,
    )?;
    if let Some(dir) = &a.out_dir {
        report::write_monitor_outputs(dir, &r, &prov)?;
    }
    ctx.output(&prov, to_json(&r), report::monitor_markdown(&r).trim_end())
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
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub keep: KeepOutliersArg,
    /// A second dump (e.g. the fine-tune's, with --acts the base's): the same latent's top
    /// examples from both, side by side in two columns.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Write the JSON and the histogram SVG here (with --compare: latent_L_compare.md and .json).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub load: LoadFlags,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run_top_examples(ctx: &Ctx, a: TopExamplesArgs) -> Result<()> {
    PathGuard::new()
        .sae("--sae", &a.sae)
        .input("--acts", &a.acts)
        .input_opt("--compare", a.compare.as_ref())
        .input_opt("--tokenizer", a.tokenizer.as_ref())
        .output_dir_opt("--out-dir", a.out_dir.as_ref())
        .check()?;
    let vocab = a
        .tokenizer
        .as_deref()
        .map(Vocab::from_tokenizer_json)
        .transpose()?;
    let mut prov = ctx.provenance("top-examples");
    let s = Session::new(
        ctx,
        &mut prov,
        &a.engine,
        &a.sae,
        a.format,
        &a.load,
        a.tokens.rule(Some(&a.keep)),
    )?;
    prov.input("acts", &a.acts)?;
    if let Some(t) = &a.compare {
        prov.input("compare", t)?;
    }
    if let Some(t) = &a.tokenizer {
        prov.input("tokenizer", t)?;
    }
    prov.option("latent", a.latent)
        .option("top", a.top)
        .option("context", a.context)
        .option("bins", a.bins);
    let scan = |path: &Path| -> Result<top_examples::TopExamplesReport> {
        let dump = Dump::open(path)?;
        let pb = ctx.progress(
            dump.n_rows(),
            &format!("scanning {}", workflow::display_name(path)),
        );
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
        r
    };
    let r = scan(&a.acts)?;
    if let Some(tuned_path) = &a.compare {
        // Both dumps must come from the same layer (when they record one).
        let (lb, lt) = (
            Dump::open(&a.acts)?.metadata()?.layer,
            Dump::open(tuned_path)?.metadata()?.layer,
        );
        if let (Some(b), Some(t)) = (lb, lt) {
            if b != t {
                return Err(Error::Incompatible(format!(
                    "{} records layer {b} and {} layer {t}: one SAE latent cannot be read at two layers",
                    a.acts.display(),
                    tuned_path.display()
                )));
            }
        }
        let tuned = scan(tuned_path)?;
        let md = top_examples::compare_markdown(&r, &tuned);
        let json = serde_json::json!({ "latent": a.latent, "base": to_json(&r), "tuned": to_json(&tuned) });
        if let Some(dir) = &a.out_dir {
            let stem = format!("latent_{}_compare", a.latent);
            report::write_json_and_markdown(dir, &stem, &json, &md, &prov)?;
        }
        return ctx.output(&prov, json, md.trim_end());
    }
    if let Some(dir) = &a.out_dir {
        report::write_top_examples_outputs(dir, &r, &prov)?;
    }
    let mut h = format!(
        "latent {}: active on {} of {} tokens, max {:.4}; {}\n",
        r.latent,
        r.n_active,
        r.n_tokens,
        r.max,
        r.outliers.describe()
    );
    for e in &r.examples {
        let ctx_text = top_examples::example_text(e).replace('\n', "\\n");
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
    ctx.output(&prov, to_json(&r), &h)
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
    PathGuard::new()
        .output_dir_opt("--out-dir", a.out_dir.as_ref())
        .check()?;
    let backend = a.engine.backend_kind()?;
    let mut prov = ctx.provenance("demo");
    prov.option("seed", a.seed).option("tokens", a.tokens);
    a.engine.record(&mut prov);
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
        "folder": r.folder.to_string_lossy(), "backend": r.backend, "all_ok": r.all_ok, "seconds": r.seconds,
        "planted": to_json(&r.planted), "checks": to_json(&r.checks),
    });
    prov.option("engine", &r.backend);
    if r.all_ok {
        return ctx.output(&prov, json, &h);
    }
    // Under --json, stdout holds one object: the error, with the checks as its detail.
    if ctx.g.json {
        ctx.set_error_detail(prov.attach(json));
    } else {
        crate::common::print_stdout(&h)?;
    }
    Err(Error::invalid(
        "the demo did not recover every planted effect (see above)",
    ))
}

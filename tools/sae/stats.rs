//! `sae stats`: per-latent statistics of a dump (or of one slice of its shards), and
//! `sae stats merge` to combine the slices exactly.

use std::path::PathBuf;
use std::time::Instant;

use std::path::Path;
use std::sync::Arc;

use sae_engine::io::guard::PathGuard;
use sae_engine::provenance::Provenance;
use sae_engine::scaleout::{self, Devices, FanOutOptions, FanOutReport, StatsJob};
use sae_engine::stats::TokenRule;
use sae_engine::Workload;
use sae_engine::{Dump, Error, Format, LatentStats, Result, Sae};
use serde_json::json;

use sae_engine::plural::count;

use crate::common::{parse_format, rate, Ctx, LoadFlags};
use crate::engine_flags::EngineFlags;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub sub: Option<Sub>,
    /// SAE directory or file.
    #[arg(long, required = true)]
    pub sae: Option<PathBuf>,
    /// Activation dump: a .npy / .safetensors file or a directory of shards.
    #[arg(long, required = true)]
    pub acts: Option<PathBuf>,
    /// Output statistics file (.safetensors).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Only shard files I, I+N, I+2N, ... (0-based), e.g. a job-array task's slice.
    #[arg(long, value_name = "I/N", value_parser = parse_shard, allow_hyphen_values = true)]
    pub shard: Option<(usize, usize)>,
    #[command(flatten)]
    pub tokens: TokenArgs,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub load: LoadFlags,
    /// Split the shard files over several devices, one worker each: CUDA device
    /// indices (0,1 or cuda:0,cuda:1), cpu, or cpu:N for N CPU workers (overrides
    /// --backend/--device). A failed shard is reported with its device; rerunning the
    /// same command computes only the shards that have no statistics yet. Not with
    /// --latent-shards (one SAE split over devices).
    #[arg(long, value_name = "LIST", value_parser = parse_devices, conflicts_with = "latent_shards")]
    pub devices: Option<Devices>,
    /// With --devices: directory of the per-shard statistics files
    /// (default: OUT.units beside --out).
    #[arg(long, value_name = "DIR", requires = "devices")]
    pub work_dir: Option<PathBuf>,
    /// With --devices: keep the per-shard statistics files after a successful merge.
    #[arg(long, requires = "devices")]
    pub keep_units: bool,
    #[command(flatten)]
    pub engine: EngineFlags,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Merge statistics files of the same SAE (e.g. the shards of a job array).
    Merge {
        /// Statistics files to merge.
        #[arg(required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Output statistics file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// The token rule's flags, the same on every command that reads a dump.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// Count every token, ignoring the dumps' `mask` (default: a dump's mask is honoured,
    /// so only tokens whose mask is 1 count; a dump without a mask counts every token).
    #[arg(long)]
    pub no_mask: bool,
    /// Accepted for old scripts and ignored: the mask is honoured by default now.
    #[arg(long, hide = true, conflicts_with = "no_mask")]
    pub mask: bool,
    /// Outlier tokens are counted rows whose norm is above T x the median row norm of the
    /// whole input (attention sinks): statistics count and report them; steering units,
    /// the dry run, top examples and decode metrics leave them out unless --keep-outliers.
    #[arg(long, value_name = "T", default_value_t = sae_engine::stats::DEFAULT_OUTLIER_FACTOR)]
    pub outlier_factor: f64,
}

/// `--keep-outliers`, for commands that leave outlier tokens out of per-row work.
#[derive(clap::Args, Debug, Clone)]
pub struct KeepOutliersArg {
    /// Keep outlier tokens (left out by default of steering units, the dry run, top
    /// examples and decode metrics).
    #[arg(long)]
    pub keep_outliers: bool,
}

impl TokenArgs {
    /// The rule, with `keep` for commands that leave outliers out of per-row work.
    pub fn rule(&self, keep: Option<&KeepOutliersArg>) -> TokenRule {
        TokenRule {
            use_mask: !self.no_mask,
            outlier_factor: self.outlier_factor,
            keep_outliers: keep.is_none_or(|k| k.keep_outliers),
        }
    }
}

/// The token-rule fields of a JSON summary.
pub fn outlier_json(s: &LatentStats) -> serde_json::Value {
    json!({
        "median_norm": s.median_norm(),
        "n_outliers": s.n_outliers(),
        "outlier_factor": s.outlier_factor,
        "token_hash": s.token_hash().map(|(h, _)| format!("{h:016x}")),
    })
}

/// "N outlier tokens (norm > T x median M)" for a human summary.
pub fn outlier_words(s: &LatentStats) -> String {
    match (s.n_outliers(), s.median_norm()) {
        (Some(n), Some(m)) => format!(
            "{} (norm > {} x median {m:.4})",
            count(n, "outlier token"),
            s.outlier_factor
        ),
        _ => "outliers not recorded".to_string(),
    }
}

fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("`{s}`: expected I/N with 0 <= I < N, e.g. 3/16");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n) = (
        i.trim().parse::<usize>().map_err(|_| bad())?,
        n.trim().parse::<usize>().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn parse_devices(s: &str) -> std::result::Result<Devices, String> {
    Devices::parse(s).map_err(|e| e.to_string())
}

fn summary(s: &LatentStats) -> serde_json::Value {
    let fired = s.n_active.iter().filter(|a| **a > 0).count();
    let mut j = json!({
        "n_tokens": s.n_tokens,
        "n_latents": s.n_latents(),
        "latents_fired": fired,
        "fingerprint": s.fingerprint,
    });
    for (k, v) in outlier_json(s).as_object().into_iter().flatten() {
        j[k] = v.clone();
    }
    j
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if let Some(Sub::Merge { inputs, out }) = a.sub {
        return merge(ctx, inputs, out);
    }
    // clap enforces these when no subcommand is given.
    let (Some(sae_path), Some(acts), Some(out)) = (a.sae, a.acts, a.out) else {
        return Err(sae_engine::Error::invalid(
            "sae stats needs --sae, --acts and --out (or `sae stats merge`)",
        ));
    };
    let work_dir = a
        .devices
        .as_ref()
        .map(|_| a.work_dir.unwrap_or_else(|| default_work_dir(&out)));
    PathGuard::new()
        .sae("--sae", &sae_path)
        .input("--acts", &acts)
        .output_file("--out", &out)
        .output_dir_opt("--work-dir", work_dir.as_ref())
        .check()?;
    let rule = a.tokens.rule(None);
    rule.check()?;
    let mut prov = ctx.provenance("stats");
    let sae = ctx.load_sae(&sae_path, a.format, &a.load, &mut prov)?;
    prov.option("mask", rule.use_mask)
        .option("outlier_factor", rule.outlier_factor);
    if let Some((i, n)) = a.shard {
        prov.option("shard", format!("{i}/{n}"));
    }
    prov.input("acts", &acts)?;
    if let (Some(devices), Some(work_dir)) = (&a.devices, work_dir) {
        prov.option("devices", devices.names());
        // No engine is built here (the workers build theirs): record its flags now.
        a.engine.record(&mut prov);
        let units = scaleout::shard_units(&acts, a.shard)?;
        let opts = FanOutOptions {
            work_dir,
            batch_rows: a.engine.batch_rows(),
            use_mask: rule.use_mask,
            worker_names: devices.names().to_vec(),
            result_options: format!("precision={:?}", a.engine.precision),
        };
        let dest = Dest {
            out: &out,
            keep_units: a.keep_units,
            outlier_factor: rule.outlier_factor,
        };
        return fan_out(
            ctx,
            &prov,
            sae,
            devices,
            units,
            (
                opts,
                sae_engine::EngineOptions {
                    workload: Workload::Encode,
                    ..a.engine.options()
                },
            ),
            dest,
        );
    }
    let mut dump = Dump::open(&acts)?;
    if let Some((i, n)) = a.shard {
        dump = dump.select_shards(i, n)?;
    }
    dump.check_width(sae.d_in())?;
    // Encoding only: a CUDA engine leaves W_dec on the host.
    let engine = a.engine.engine_for(ctx, sae, &mut prov, Workload::Encode)?;
    let t0 = Instant::now();
    let pb = ctx.progress(dump.n_rows(), "stats");
    let s = sae_engine::pipeline::stats_of_dump(
        engine.as_ref(),
        &dump,
        a.engine.batch_rows(),
        rule.use_mask,
        &|n| pb.inc(n),
    );
    pb.finish_and_clear();
    let mut s = s?;
    s.outlier_factor = rule.outlier_factor;
    sae_engine::io::stats_file::write_with_provenance(&out, &s, Some(&prov))?;
    let secs = t0.elapsed().as_secs_f64();
    let mut json = summary(&s);
    json["out"] = json!(out.to_string_lossy());
    json["n_rows"] = json!(dump.n_rows());
    json["shard_files"] = json!(dump.shards().len());
    json["backend"] = json!(engine.name());
    json["seconds"] = json!(secs);
    json["rows_per_second"] = json!(rate(dump.n_rows(), secs));
    let human = format!(
        "statistics of {} ({}, {}) over {} latents ({} fired), {} -> {}",
        count(s.n_tokens, "token"),
        count(dump.n_rows(), "row"),
        count(dump.shards().len() as u64, "shard file"),
        s.n_latents(),
        json["latents_fired"],
        outlier_words(&s),
        out.display()
    );
    ctx.output(&prov, json, &human)
}

/// `stats.safetensors` -> `stats.safetensors.units` beside it.
fn default_work_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stats".into());
    out.with_file_name(format!("{name}.units"))
}

/// Where a fan-out's merged statistics go.
struct Dest<'a> {
    out: &'a Path,
    keep_units: bool,
    outlier_factor: f64,
}

/// `--devices`: per-shard statistics on several workers, then a merge in shard order.
#[allow(clippy::too_many_arguments)]
fn fan_out(
    ctx: &Ctx,
    prov: &Provenance,
    sae: Arc<Sae>,
    devices: &Devices,
    units: Vec<scaleout::Unit>,
    (opts, eopts): (FanOutOptions, sae_engine::EngineOptions),
    dest: Dest<'_>,
) -> Result<()> {
    let Dest {
        out,
        keep_units,
        outlier_factor,
    } = dest;
    let work_dir = opts.work_dir.clone();
    let job = StatsJob::plan(&sae, units, opts)?;
    for n in job.notes() {
        ctx.note(n);
    }
    let factory = |w: usize| sae_engine::engine(devices.kinds()[w], sae.clone(), &eopts);
    let t0 = Instant::now();
    let pb = ctx.progress(job.pending_rows(), "stats");
    let report = job.run(&factory, &|n| pb.inc(n));
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let mut json = json!({
        "work_dir": work_dir.to_string_lossy(),
        "units": report.n_units,
        "computed": report.computed,
        "reused": report.reused,
        "failures": report.failures,
        "not_run": report.not_run,
        "devices": report.workers,
        "seconds": secs,
    });
    if !report.ok() {
        // One line per failed shard, naming the shard file and the device (even with --quiet).
        for line in report.failure_lines() {
            crate::common::print_stderr(&format!("sae: failed: {line}"));
        }
        // Under --json the report rides on the error object as its `detail`.
        ctx.set_error_detail(prov.attach(json));
        let bad = report.failures.len() + report.not_run.len();
        return Err(Error::invalid(format!(
            "{bad} of {} have no statistics; the {} finished are kept in {}; \
             rerun the same command to compute only the missing ones",
            count(report.n_units as u64, "shard file"),
            report.n_units - bad,
            work_dir.display()
        )));
    }
    for line in report.device_setup_failures() {
        ctx.note(&format!(
            "warning: {line} (its share went to the other devices)"
        ));
    }
    let mut s = job.merge()?;
    s.outlier_factor = outlier_factor;
    sae_engine::io::stats_file::write_with_provenance(out, &s, Some(prov))?;
    if !keep_units {
        job.remove_unit_files()?;
    }
    let rows: u64 = report.workers.iter().map(|w| w.rows).sum();
    for (k, v) in summary(&s).as_object().into_iter().flatten() {
        json[k] = v.clone();
    }
    json["out"] = json!(out.to_string_lossy());
    json["rows_computed"] = json!(rows);
    json["rows_per_second"] = json!(rate(rows, secs));
    let human = format!(
        "statistics of {} over {} latents ({} fired), {}, from {} \
         ({} computed, {} reused) -> {}{}",
        count(s.n_tokens, "token"),
        s.n_latents(),
        json["latents_fired"],
        outlier_words(&s),
        count(report.n_units as u64, "shard file"),
        report.computed.len(),
        report.reused.len(),
        out.display(),
        device_lines(&report)
    );
    ctx.output(prov, json, &human)
}

/// Per-device lines of the human report: units, rows and rows/s.
fn device_lines(r: &FanOutReport) -> String {
    r.workers
        .iter()
        .map(|w| {
            let state = match (&w.backend, &w.failure) {
                (_, Some(f)) => format!(", FAILED: {f}"),
                _ => String::new(),
            };
            format!(
                "\n  {}: {}, {}, {:.0} rows/s ({}){state}",
                w.device,
                count(w.units as u64, "shard"),
                count(w.rows, "row"),
                w.rows_per_second,
                w.backend.as_deref().unwrap_or("no engine"),
            )
        })
        .collect()
}

fn merge(ctx: &Ctx, inputs: Vec<PathBuf>, out: PathBuf) -> Result<()> {
    PathGuard::new()
        .inputs("INPUTS", &inputs)
        .output_file("--out", &out)
        .check()?;
    let mut prov = ctx.provenance("stats merge");
    prov.inputs("stats", &inputs)?;
    let s = sae_engine::pipeline::merge_stats_files(&inputs)?;
    sae_engine::io::stats_file::write_with_provenance(&out, &s, Some(&prov))?;
    let mut json = summary(&s);
    json["out"] = json!(out.to_string_lossy());
    json["inputs"] = json!(inputs.len());
    let human = format!(
        "merged {}: {} over {} latents, {} -> {}",
        count(inputs.len() as u64, "statistics file"),
        count(s.n_tokens, "token"),
        s.n_latents(),
        outlier_words(&s),
        out.display()
    );
    ctx.output(&prov, json, &human)
}

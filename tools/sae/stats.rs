//! `sae stats`: per-latent statistics of a dump (or of one slice of its shards), and
//! `sae stats merge` to combine the slices exactly.

use std::path::PathBuf;
use std::time::Instant;

use sae_engine::{Dump, Format, LatentStats, Result};
use serde_json::json;

use crate::common::{parse_format, rate, Ctx};

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
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Count every token, ignoring the dump's `mask`.
    #[arg(long)]
    pub no_mask: bool,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
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

fn summary(s: &LatentStats) -> serde_json::Value {
    let fired = s.n_active.iter().filter(|a| **a > 0).count();
    json!({
        "n_tokens": s.n_tokens,
        "n_latents": s.n_latents(),
        "latents_fired": fired,
        "fingerprint": s.fingerprint,
    })
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
    let sae = ctx.load_sae(&sae_path, a.format)?;
    let mut dump = Dump::open(&acts)?;
    if let Some((i, n)) = a.shard {
        dump = dump.select_shards(i, n)?;
    }
    dump.check_width(sae.d_in())?;
    let engine = ctx.engine(sae)?;
    let t0 = Instant::now();
    let pb = ctx.progress(dump.n_rows(), "stats");
    let s = sae_engine::pipeline::stats_of_dump(
        engine.as_ref(),
        &dump,
        ctx.batch_rows(),
        !a.no_mask,
        &|n| pb.inc(n),
    );
    pb.finish_and_clear();
    let s = s?;
    sae_engine::io::stats::write(&out, &s)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut json = summary(&s);
    json["out"] = json!(out);
    json["n_rows"] = json!(dump.n_rows());
    json["shard_files"] = json!(dump.shards().len());
    json["backend"] = json!(engine.name());
    json["seconds"] = json!(secs);
    json["rows_per_second"] = json!(rate(dump.n_rows(), secs));
    let human = format!(
        "statistics of {} tokens ({} rows, {} shard files) over {} latents ({} fired) -> {}",
        s.n_tokens,
        dump.n_rows(),
        dump.shards().len(),
        s.n_latents(),
        json["latents_fired"],
        out.display()
    );
    ctx.output(json, &human);
    Ok(())
}

fn merge(ctx: &Ctx, inputs: Vec<PathBuf>, out: PathBuf) -> Result<()> {
    let s = sae_engine::pipeline::merge_stats_files(&inputs)?;
    sae_engine::io::stats::write(&out, &s)?;
    let mut json = summary(&s);
    json["out"] = json!(out);
    json["inputs"] = json!(inputs.len());
    let human = format!(
        "merged {} statistics files: {} tokens over {} latents -> {}",
        inputs.len(),
        s.n_tokens,
        s.n_latents(),
        out.display()
    );
    ctx.output(json, &human);
    Ok(())
}

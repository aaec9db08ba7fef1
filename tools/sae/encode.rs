//! `sae encode`: a dump to a codes file, streamed batch by batch.

use std::path::PathBuf;
use std::time::Instant;

use sae_engine::{Dump, Format, Result};
use serde_json::json;

use crate::common::{parse_format, rate, Ctx};
use crate::engine_flags::EngineFlags;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// SAE directory or file.
    #[arg(long)]
    pub sae: PathBuf,
    /// Activation dump: a .npy / .safetensors file or a directory of shards.
    #[arg(long)]
    pub acts: PathBuf,
    /// Output codes file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let sae = ctx.load_sae(&a.sae, a.format)?;
    let dump = Dump::open(&a.acts)?;
    dump.check_width(sae.d_in())?;
    let engine = a.engine.engine(ctx, sae)?;
    let t0 = Instant::now();
    let pb = ctx.progress(dump.n_rows(), "encode");
    let s = sae_engine::pipeline::encode_dump_to_file(
        engine.as_ref(),
        &dump,
        a.engine.batch_rows(),
        &a.out,
        &|n| pb.inc(n),
    );
    pb.finish_and_clear();
    let s = s?;
    let secs = t0.elapsed().as_secs_f64();
    let json = json!({
        "out": a.out,
        "kind": if engine.sae().k().is_some() { "topk" } else { "csr" },
        "n_rows": s.n_rows,
        "mean_l0": s.mean_l0,
        "backend": engine.name(),
        "seconds": secs,
        "rows_per_second": rate(s.n_rows, secs),
    });
    let human = format!(
        "encoded {} rows into {} (mean L0 {:.2}) in {:.2} s, {:.0} rows/s",
        s.n_rows,
        a.out.display(),
        s.mean_l0,
        secs,
        rate(s.n_rows, secs)
    );
    ctx.output(json, &human);
    Ok(())
}

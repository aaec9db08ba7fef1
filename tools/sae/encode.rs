//! `sae encode`: a dump to a codes file, streamed batch by batch.

use std::path::PathBuf;
use std::time::Instant;

use sae_engine::io::guard::PathGuard;
use sae_engine::Workload;
use sae_engine::{Dump, Format, Result};
use serde_json::json;

use crate::common::{parse_format, rate, Ctx, LoadFlags};
use crate::engine_flags::EngineFlags;
use crate::stats::TokenArgs;

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
    pub load: LoadFlags,
    /// Every row is encoded; these decide which rows the outlier count looks at.
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    PathGuard::new()
        .sae("--sae", &a.sae)
        .input("--acts", &a.acts)
        .output_file("--out", &a.out)
        .check()?;
    let mut prov = ctx.provenance("encode");
    let sae = ctx.load_sae(&a.sae, a.format, &a.load, &mut prov)?;
    let dump = Dump::open(&a.acts)?;
    dump.check_width(sae.d_in())?;
    prov.input("acts", &a.acts)?;
    // Encoding only: a CUDA engine leaves W_dec on the host.
    let engine = a.engine.engine_for(ctx, sae, &mut prov, Workload::Encode)?;
    let t0 = Instant::now();
    let pb = ctx.progress(dump.n_rows(), "encode");
    let s = sae_engine::pipeline::encode_dump_to_file_with_provenance(
        engine.as_ref(),
        &dump,
        a.engine.batch_rows(),
        &a.tokens.rule(None),
        &a.out,
        Some(&prov),
        &|n| pb.inc(n),
    );
    pb.finish_and_clear();
    let s = s?;
    let secs = t0.elapsed().as_secs_f64();
    let json = json!({
        "out": a.out.to_string_lossy(),
        "kind": if engine.sae().k().is_some() { "topk" } else { "csr" },
        "n_rows": s.n_rows,
        "mean_l0": s.mean_l0,
        "outliers": s.outliers,
        "backend": engine.name(),
        "seconds": secs,
        "rows_per_second": rate(s.n_rows, secs),
    });
    let human = format!(
        "encoded {} rows into {} (mean L0 {:.2}) in {:.2} s, {:.0} rows/s; {}",
        s.n_rows,
        a.out.display(),
        s.mean_l0,
        secs,
        rate(s.n_rows, secs),
        s.outliers.describe()
    );
    ctx.output(&prov, json, &human)
}

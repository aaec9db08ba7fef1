//! `sae decode`: codes back to activations (.npy), optionally scored against the dump.

use std::path::PathBuf;
use std::time::Instant;

use sae_engine::io::codes::CodesReader;
use sae_engine::{Dump, Format, Result};
use serde_json::json;

use crate::common::{parse_format, rate, Ctx};
use crate::engine_flags::EngineFlags;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// SAE directory or file (the one that produced the codes).
    #[arg(long)]
    pub sae: PathBuf,
    /// Codes file written by `sae encode`.
    #[arg(long)]
    pub codes: PathBuf,
    /// Output reconstruction, f32 .npy [n, d_in].
    #[arg(long)]
    pub out: PathBuf,
    /// The encoded dump: adds MSE, FVU, cosine and L0 over all rows.
    #[arg(long)]
    pub acts: Option<PathBuf>,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let sae = ctx.load_sae(&a.sae, a.format)?;
    let codes = CodesReader::open(&a.codes)?;
    codes.check_fingerprint(&sae.fingerprint())?;
    let dump = a.acts.as_ref().map(Dump::open).transpose()?;
    let engine = a.engine.engine(ctx, sae)?;
    let t0 = Instant::now();
    let pb = ctx.progress(codes.n_rows() as u64, "decode");
    let s = sae_engine::pipeline::decode_to_npy(
        engine.as_ref(),
        &codes,
        dump.as_ref(),
        a.engine.batch_rows(),
        &a.out,
        &|n| pb.inc(n),
    );
    pb.finish_and_clear();
    let s = s?;
    let secs = t0.elapsed().as_secs_f64();
    let json = json!({
        "out": a.out,
        "n_rows": s.n_rows,
        "metrics": s.metrics,
        "backend": engine.name(),
        "seconds": secs,
        "rows_per_second": rate(s.n_rows, secs),
    });
    let mut human = format!(
        "decoded {} rows into {} in {:.2} s",
        s.n_rows,
        a.out.display(),
        secs
    );
    if let Some(m) = s.metrics {
        human.push_str(&format!(
            "\nmse {:.6e}  fvu {:.6}  cosine {:.6}  l0 {:.2}",
            m.mse, m.fvu, m.cosine, m.l0
        ));
    }
    ctx.output(json, &human);
    Ok(())
}

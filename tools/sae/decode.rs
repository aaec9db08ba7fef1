//! `sae decode`: codes back to activations (.npy), optionally scored against the dump.

use std::path::PathBuf;
use std::time::Instant;

use sae_engine::io::codes_file::CodesReader;
use sae_engine::io::guard::PathGuard;
use sae_engine::stats::RowFilter;
use sae_engine::{Dump, Format, Result};
use serde_json::json;

use crate::common::{parse_format, rate, Ctx, LoadFlags};
use crate::engine_flags::EngineFlags;
use crate::stats::{KeepOutliersArg, TokenArgs};

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
    /// The encoded dump: adds MSE, FVU, cosine and L0 over the tokens the token rule
    /// keeps (the dump's mask, outlier tokens left out).
    #[arg(long)]
    pub acts: Option<PathBuf>,
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub keep: KeepOutliersArg,
    /// Force the SAE format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub load: LoadFlags,
    /// Accept a codes file that records no SAE fingerprint (written by another tool);
    /// without it such a file is refused, since nothing ties it to this SAE.
    #[arg(long)]
    pub allow_unfingerprinted: bool,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    PathGuard::new()
        .sae("--sae", &a.sae)
        .input("--codes", &a.codes)
        .input_opt("--acts", a.acts.as_ref())
        .output_file("--out", &a.out)
        .check()?;
    let mut prov = ctx.provenance("decode");
    let sae = ctx.load_sae(&a.sae, a.format, &a.load, &mut prov)?;
    let codes = CodesReader::open(&a.codes)?.allow_unfingerprinted(a.allow_unfingerprinted);
    codes.check_fingerprint(&sae.fingerprint())?;
    prov.input("codes", &a.codes)?;
    let dump = a.acts.as_ref().map(Dump::open).transpose()?;
    if let Some(acts) = &a.acts {
        prov.input("acts", acts)?;
    }
    let filter = match &dump {
        Some(d) => Some(RowFilter::prepare(
            d,
            &a.tokens.rule(Some(&a.keep)),
            a.engine.batch_rows(),
        )?),
        None => None,
    };
    let engine = a.engine.engine(ctx, sae, &mut prov)?;
    let t0 = Instant::now();
    let pb = ctx.progress(codes.n_rows() as u64, "decode");
    let s = sae_engine::pipeline::decode_to_npy(
        engine.as_ref(),
        &codes,
        dump.as_ref().zip(filter.as_ref()),
        a.engine.batch_rows(),
        &a.out,
        &|n| pb.inc(n),
    );
    pb.finish_and_clear();
    let s = s?;
    let secs = t0.elapsed().as_secs_f64();
    let json = json!({
        "out": a.out.to_string_lossy(),
        "n_rows": s.n_rows,
        "metrics": s.metrics,
        "outliers": s.outliers,
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
            "\nmse {:.6e}  fvu {:.6}  cosine {:.6}  l0 {:.2}  over {} tokens",
            m.mse, m.fvu, m.cosine, m.l0, m.n_rows
        ));
    }
    if let Some(o) = s.outliers {
        human.push_str(&format!("\n{}", o.describe()));
    }
    ctx.output(&prov, json, &human)
}

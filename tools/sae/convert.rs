//! `sae convert sae|dump`: SAEs of any supported format to the SAELens layout, and
//! activation dumps or caches (npy/safetensors shards, SAELens Arrow caches,
//! crosscoder_learning memmap caches) to safetensors shards.

use std::path::PathBuf;

use sae_engine::convert::{convert_dump, write_sae_as_saelens, DumpConvertOptions};
use sae_engine::dump::{arrow, Dump};
use sae_engine::io::guard::PathGuard;
use sae_engine::plural::count;
use sae_engine::{DType, Error, Format, Result};
use serde_json::json;

use crate::common::{parse_format, Ctx, LoadFlags};
use crate::engine_flags::BatchFlags;

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    #[command(subcommand)]
    pub what: ConvertWhat,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConvertWhat {
    /// Write an SAE (any supported format) as SAELens cfg.json + sae_weights.safetensors.
    Sae {
        /// SAE directory or file (ae.pt, OpenAI .pt, ...), or hf:... / saelens:... name.
        input: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        out: PathBuf,
        /// Force the source format.
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
        #[command(flatten)]
        load: LoadFlags,
    },
    /// Write a dump or activation cache as safetensors shards with `activations` (+ token_ids, mask).
    Dump {
        /// Dump file or directory (npy/safetensors shards, SAELens Arrow cache, crosscoder cache).
        input: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        out: PathBuf,
        /// Rows per output shard (memory holds one shard).
        #[arg(long, default_value_t = 65536, allow_negative_numbers = true,
              value_parser = crate::numbers::positive)]
        rows_per_shard: usize,
        /// Stored dtype of the activations (f32, f16, bf16).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// For a SAELens cache with several hooks: the column to convert.
        #[arg(long)]
        column: Option<String>,
        #[command(flatten)]
        batch: BatchFlags,
    },
}

pub fn run(ctx: &Ctx, args: ConvertArgs) -> Result<()> {
    match args.what {
        ConvertWhat::Sae {
            input,
            out,
            format,
            load,
        } => {
            PathGuard::new()
                .sae("INPUT", &input)
                .output_dir("--out", &out)
                .check()?;
            let mut prov = ctx.provenance("convert sae");
            // Through the CLI's loader so that hf:/saelens: names resolve here too.
            let sae = ctx.load_sae(&input, format, &load, &mut prov)?;
            write_sae_as_saelens(&sae, &out)?;
            ctx.output(
                &prov,
                json!({"input": input.to_string_lossy(), "out": out.to_string_lossy(), "format": sae.meta.format.name(),
                       "n_latents": sae.n_latents(), "d_in": sae.d_in()}),
                &format!(
                    "wrote {} ({}, {} latents x d_in {}) as SAELens to {}",
                    input.display(),
                    sae.meta.format.name(),
                    sae.n_latents(),
                    sae.d_in(),
                    out.display()
                ),
            )?;
        }
        ConvertWhat::Dump {
            input,
            out,
            rows_per_shard,
            dtype,
            column,
            batch,
        } => {
            PathGuard::new()
                .input("INPUT", &input)
                .output_dir("--out", &out)
                .check()?;
            let mut prov = ctx.provenance("convert dump");
            let dtype = DType::parse(&dtype).ok_or_else(|| {
                Error::invalid(format!("--dtype {dtype}: expected f32, f16 or bf16"))
            })?;
            prov.option("dtype", dtype.name())
                .option("rows_per_shard", rows_per_shard)
                .option("column", &column);
            batch.record(&mut prov);
            let dump = match column {
                Some(c) => Dump::from_shards(&input, arrow::open_shards(&input, Some(&c))?)?,
                None => Dump::open(&input)?,
            };
            let opts = DumpConvertOptions {
                rows_per_shard,
                dtype,
                batch_rows: batch.batch_size as usize,
            };
            prov.input("input", &input)?;
            let files = convert_dump(&dump, &out, opts)?;
            ctx.output(
                &prov,
                json!({"input": input.to_string_lossy(), "out": out.to_string_lossy(), "rows": dump.n_rows(), "width": dump.width(),
                       "shards": files.iter().map(|f| f.to_string_lossy()).collect::<Vec<_>>()}),
                &format!(
                    "wrote {} x {} into {} in {}",
                    count(dump.n_rows(), "row"),
                    dump.width(),
                    count(files.len() as u64, "shard"),
                    out.display()
                ),
            )?;
        }
    }
    Ok(())
}

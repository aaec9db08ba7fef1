//! `sae convert sae|dump`: SAEs of any supported format to the SAELens layout, and
//! activation dumps or caches (npy/safetensors shards, SAELens Arrow caches,
//! crosscoder_learning memmap caches) to safetensors shards.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use sae_engine::convert::{convert_dump, convert_sae, DumpConvertOptions};
use sae_engine::dump::{arrow, Dump};
use sae_engine::{DType, Format};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(subcommand)]
    pub what: ConvertWhat,
}

#[derive(Debug, Subcommand)]
pub enum ConvertWhat {
    /// Write an SAE (any supported format) as SAELens cfg.json + sae_weights.safetensors.
    Sae {
        /// SAE directory or file (ae.pt, OpenAI .pt, ...).
        input: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        out: PathBuf,
        /// Force the source format (saelens, sparsify, gemma-scope, dictionary-learning, openai, ...).
        #[arg(long)]
        format: Option<String>,
    },
    /// Write a dump or activation cache as safetensors shards with `activations` (+ token_ids, mask).
    Dump {
        /// Dump file or directory (npy/safetensors shards, SAELens Arrow cache, crosscoder cache).
        input: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        out: PathBuf,
        /// Rows per output shard.
        #[arg(long, default_value_t = 65536)]
        rows_per_shard: usize,
        /// Stored dtype of the activations (f32, f16, bf16).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// For a SAELens cache with several hooks: the column to convert.
        #[arg(long)]
        column: Option<String>,
    },
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    match args.what {
        ConvertWhat::Sae { input, out, format } => {
            let format = match format {
                Some(f) => {
                    Some(Format::parse(&f).with_context(|| format!("unknown format `{f}`"))?)
                }
                None => None,
            };
            let sae = convert_sae(&input, format, &out)?;
            eprintln!(
                "wrote {} ({} latents x d_in {}, {}) as SAELens to {}",
                input.display(),
                sae.n_latents(),
                sae.d_in(),
                sae.meta.format.name(),
                out.display()
            );
        }
        ConvertWhat::Dump {
            input,
            out,
            rows_per_shard,
            dtype,
            column,
        } => {
            let dtype = DType::parse(&dtype).with_context(|| format!("unknown dtype `{dtype}`"))?;
            let dump = match column {
                Some(c) => Dump::from_shards(&input, arrow::open_shards(&input, Some(&c))?)?,
                None => Dump::open(&input)?,
            };
            let opts = DumpConvertOptions {
                rows_per_shard,
                dtype,
                ..Default::default()
            };
            let files = convert_dump(&dump, &out, opts)?;
            eprintln!(
                "wrote {} rows x {} into {} shard(s) in {}",
                dump.n_rows(),
                dump.width(),
                files.len(),
                out.display()
            );
        }
    }
    Ok(())
}

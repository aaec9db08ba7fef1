//! The flags of the commands that run an SAE (encode, decode, stats, diff, steer,
//! detect, monitor, top-examples, demo, crosscoder encode and analyze): backend, device,
//! batch size, tile width and CUDA precision. Flattened into those commands only, so `--help` of a command that
//! runs nothing does not offer them and giving them there is a usage error.

use std::sync::Arc;

use sae_engine::latent_split::{parse_shard_backends, LatentSplit, ShardedEngine};
use sae_engine::provenance::Provenance;
use sae_engine::{
    BackendKind, CpuGemm, Engine, EngineOptions, Error, GemmMode, Result, Sae, Workload,
};

use crate::common::Ctx;

/// `--batch-size`, alone on `convert dump` (which streams rows but runs no SAE).
#[derive(clap::Args, Debug, Clone)]
pub struct BatchFlags {
    /// Rows (tokens) per batch; memory grows with it.
    #[arg(long, default_value_t = 4096, value_name = "ROWS", allow_negative_numbers = true,
          value_parser = crate::numbers::at_least::<1>)]
    pub batch_size: u64,
}

impl BatchFlags {
    /// Records the batch size in `prov`.
    pub fn record(&self, prov: &mut Provenance) {
        prov.option("batch_size", self.batch_size);
    }
}

/// How the SAE runs.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Engine")]
pub struct EngineFlags {
    /// Backend: cpu, cuda, cuda:N or auto (CUDA when usable, else CPU).
    #[arg(long, default_value = "auto", value_name = "BACKEND", value_parser = parse_backend)]
    pub backend: String,
    /// CUDA device index.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = crate::numbers::at_least::<0>)]
    pub device: Option<u64>,
    #[command(flatten)]
    pub batch: BatchFlags,
    /// Latents per encode tile (the engine never holds more than batch x tile pre-activations).
    #[arg(long, value_name = "L", allow_negative_numbers = true,
          value_parser = crate::numbers::at_least::<1>)]
    pub tile_latents: Option<u64>,
    /// CUDA encode arithmetic: exact (the CPU reference's results up to summation order) or
    /// fast (activations rounded to the weights' dtype, tensor-core GEMM).
    #[arg(long, default_value = "exact", value_name = "PRECISION", value_parser = parse_precision)]
    pub precision: sae_engine::Precision,
    /// Split the SAE's latents into contiguous shards, one engine each: a count N (N shards
    /// on --backend/--device, e.g. several on one GPU) or a list of backends, one shard per
    /// entry (cuda:0,cuda:1). Codes and statistics equal the unsharded engine's; decode
    /// within f32 rounding.
    #[arg(long, value_name = "N|LIST", value_parser = parse_latent_shards)]
    pub latent_shards: Option<String>,
    /// Most device memory a CUDA engine may take, weights included (e.g. 24G, 512M): emulates
    /// a smaller card. Weights that do not fit are refused before anything is uploaded.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size, allow_hyphen_values = true)]
    pub device_memory_limit: Option<u64>,
    /// CUDA encoder GEMM algorithm: auto (cuBLASLt candidates timed against cuBLAS on large
    /// shapes), cublas, or lt. Codes do not depend on it.
    #[arg(long, default_value = "auto", value_name = "ALGO", value_parser = parse_cuda_gemm)]
    pub cuda_gemm: GemmMode,
    /// CUDA TopK: run the top-k pass of one latent tile on a second stream while the GEMM
    /// fills the next. Codes do not depend on it.
    #[arg(long)]
    pub cuda_overlap: bool,
    /// CPU encode GEMM: auto (OpenBLAS in a build with the `openblas` feature, else the gemm
    /// crate), crate, or openblas.
    #[arg(long, default_value = "auto", value_name = "GEMM", value_parser = parse_cpu_gemm)]
    pub cpu_gemm: CpuGemm,
}

/// `--device-memory-limit` values.
fn parse_memory_size(s: &str) -> std::result::Result<u64, String> {
    sae_engine::backend::parse_size(s).map_err(|e| e.to_string())
}

/// `--latent-shards` values (checked at parse time so a typo is a usage error).
fn parse_latent_shards(s: &str) -> std::result::Result<String, String> {
    parse_shard_backends(s, BackendKind::Cpu)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// `--cuda-gemm` values.
fn parse_cuda_gemm(s: &str) -> std::result::Result<GemmMode, String> {
    GemmMode::parse(s).ok_or_else(|| format!("`{s}`: expected auto, cublas or lt"))
}

/// `--cpu-gemm` values.
fn parse_cpu_gemm(s: &str) -> std::result::Result<CpuGemm, String> {
    CpuGemm::parse(s).ok_or_else(|| format!("`{s}`: expected auto, crate or openblas"))
}

/// `--precision` values.
fn parse_precision(s: &str) -> std::result::Result<sae_engine::Precision, String> {
    sae_engine::Precision::parse(s).ok_or_else(|| format!("`{s}`: expected exact or fast"))
}

/// `--backend` values (checked at parse time so a typo is a usage error).
fn parse_backend(s: &str) -> std::result::Result<String, String> {
    BackendKind::parse(s, 0)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

impl EngineFlags {
    /// Rows per batch.
    pub fn batch_rows(&self) -> usize {
        self.batch.batch_size as usize
    }

    /// The backend the flags name (`--device` picks the CUDA device).
    pub fn backend_kind(&self) -> Result<BackendKind> {
        BackendKind::parse(&self.backend, self.device.unwrap_or(0) as usize)
    }

    /// Engine options from the flags (--tile-latents, --precision, --cuda-gemm,
    /// --cuda-overlap, --cpu-gemm).
    pub fn options(&self) -> EngineOptions {
        let mut opts = EngineOptions {
            precision: self.precision,
            cuda_gemm: self.cuda_gemm,
            cuda_overlap: self.cuda_overlap,
            cpu_gemm: self.cpu_gemm,
            ..EngineOptions::default()
        };
        if let Some(t) = self.tile_latents {
            opts.tile_latents = t as usize;
        }
        opts.device_memory_limit = self.device_memory_limit;
        opts
    }

    /// Records the options that change results in `prov`: the backend asked for, the CUDA
    /// precision, batch size, tile size and device; and the GEMM choices when not `auto`.
    pub fn record(&self, prov: &mut Provenance) {
        prov.option("backend", &self.backend)
            .option("precision", self.precision);
        if self.cuda_gemm != GemmMode::Auto {
            prov.option("cuda_gemm", self.cuda_gemm);
        }
        if self.cuda_overlap {
            prov.option("cuda_overlap", true);
        }
        if self.cpu_gemm != CpuGemm::Auto {
            prov.option("cpu_gemm", self.cpu_gemm);
        }
        self.batch.record(prov);
        if let Some(t) = self.tile_latents {
            prov.option("tile_latents", t);
        }
        if let Some(d) = self.device {
            prov.option("device", d);
        }
        if let Some(s) = &self.latent_shards {
            prov.option("latent_shards", s);
        }
        if let Some(m) = self.device_memory_limit {
            prov.option("device_memory_limit", m);
        }
    }

    /// Builds the engine the flags ask for and records the flags and the engine's name in
    /// `prov`. `auto` with `--device N` tries that CUDA device and falls back to the CPU
    /// when CUDA cannot run here.
    pub fn engine(
        &self,
        ctx: &Ctx,
        sae: Arc<Sae>,
        prov: &mut Provenance,
    ) -> Result<Box<dyn Engine>> {
        self.engine_for(ctx, sae, prov, Workload::EncodeDecode)
    }

    /// [`EngineFlags::engine`] for a command that does only `workload` (an encode-only CUDA
    /// engine leaves W_dec on the host).
    pub fn engine_for(
        &self,
        ctx: &Ctx,
        sae: Arc<Sae>,
        prov: &mut Provenance,
        workload: Workload,
    ) -> Result<Box<dyn Engine>> {
        self.record(prov);
        let opts = EngineOptions {
            workload,
            ..self.options()
        };
        let device = self.device.unwrap_or(0) as usize;
        let engine: Box<dyn Engine> = match &self.latent_shards {
            None => open_one(self.backend_kind()?, device, sae, &opts)?,
            Some(spec) => {
                let kinds = parse_shard_backends(spec, self.backend_kind()?)?;
                let split = LatentSplit::even(sae.n_latents(), kinds.len())?;
                Box::new(ShardedEngine::new(sae, &split, |i, part| {
                    open_one(kinds[i], device, part, &opts)
                })?)
            }
        };
        ctx.note(&format!("backend: {}", engine.name()));
        prov.option("engine", engine.name());
        Ok(engine)
    }
}

/// One engine of `kind`; `auto` with a device other than 0 tries that CUDA device and falls
/// back to the CPU when CUDA cannot run here.
fn open_one(
    kind: BackendKind,
    device: usize,
    sae: Arc<Sae>,
    opts: &EngineOptions,
) -> Result<Box<dyn Engine>> {
    match kind {
        BackendKind::Auto if device != 0 => {
            match sae_engine::engine(BackendKind::Cuda { device }, sae.clone(), opts) {
                Err(Error::BackendUnavailable(_)) => {
                    sae_engine::engine(BackendKind::Cpu, sae, opts)
                }
                other => other,
            }
        }
        k => sae_engine::engine(k, sae, opts),
    }
}

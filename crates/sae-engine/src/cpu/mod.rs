//! The multithreaded CPU backend: the reference every GPU result is checked against.
//!
//! Encode is tiled over latents (see [`encode`]): an N x L pre-activation matrix
//! never exists, only one `rows x tile` scratch per thread. Decode is a gather-sum of
//! decoder rows. Both use the global rayon pool (set `RAYON_NUM_THREADS` to change it).
//! [`reference`] holds a naive dense oracle and an in-memory SAE builder for tests.

use std::sync::Arc;

use crate::backend::{Engine, EngineOptions};
use crate::codes::{Codes, Denorm, Encoded};
use crate::error::{Error, Result};
use crate::sae::{Activation, Sae};

#[cfg(feature = "openblas")]
mod blas;
mod decode;
mod encode;
pub mod reference;
mod scan;
mod topk;

/// CPU engine bound to one SAE.
pub struct CpuEngine {
    sae: Arc<Sae>,
    tile: usize,
    /// Decoder row norms, only for SAEs that rescale TopK pre-activations by them.
    dec_norms: Option<Vec<f32>>,
    /// JumpReLU cut-offs max(threshold, 0): a latent fires when h is strictly above.
    cuts: Option<Vec<f32>>,
    /// Encode buffers reused across batches: threads x (rows x tile + tile x d_in) f32 at most.
    pool: encode::BufferPool,
    /// The GEMM behind encode tiles (see [`encode::GemmKind::select`]).
    gemm: encode::GemmKind,
}

impl CpuEngine {
    /// Validates the SAE and precomputes what every batch needs: decoder row norms
    /// for rescaled TopK (one pass over W_dec) and the JumpReLU cut-offs.
    /// `opts.tile_latents` is the widest latent tile encode uses (must be >= 1).
    pub fn new(sae: Arc<Sae>, opts: &EngineOptions) -> Result<Self> {
        sae.validate()?;
        if opts.tile_latents == 0 {
            return Err(Error::invalid("tile_latents must be at least 1"));
        }
        let dec_norms = sae
            .rescale_acts_by_decoder_norm
            .then(|| sae.w_dec.row_norms());
        let cuts = match (&sae.activation, &sae.threshold) {
            (Activation::JumpRelu, Some(t)) => Some(t.iter().map(|v| v.max(0.0)).collect()),
            _ => None,
        };
        Ok(CpuEngine {
            tile: opts.tile_latents,
            sae,
            dec_norms,
            cuts,
            pool: encode::BufferPool::default(),
            gemm: encode::GemmKind::select(opts.cpu_gemm)?,
        })
    }

    /// Threads encode and decode run on.
    pub fn threads(&self) -> usize {
        rayon::current_num_threads()
    }
}

impl Engine for CpuEngine {
    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }
    fn sae(&self) -> &Sae {
        &self.sae
    }
    fn encode(&self, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded> {
        let params = encode::EncodeParams {
            sae: &self.sae,
            tile: self.tile,
            dec_norms: self.dec_norms.as_deref(),
            cuts: self.cuts.as_deref(),
            threads: self.threads(),
            pool: &self.pool,
            gemm: self.gemm,
        };
        let mut enc = encode::encode(&params, x, rows, row_offset)?;
        self.sae.scale_codes(&mut enc.codes);
        Ok(enc)
    }
    fn decode(&self, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>> {
        let codes = self.sae.codes_for_decoding(codes);
        decode::decode(&self.sae, self.dec_norms.as_deref(), &codes, denorm)
    }
}

//! The dispatcher: the one place outside the backends that names them. It builds an
//! [`Engine`] of a [`BackendKind`]; everything else holds a `Box<dyn Engine>`.
//!
//! The CUDA backend is compiled only with the `cuda` cargo feature (on by default). Without
//! it, asking for CUDA is [`Error::BackendUnavailable`] naming the feature, and `auto`
//! runs on the CPU.

use std::sync::Arc;

use crate::backend::{BackendKind, Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::sae::Sae;

/// Why CUDA cannot run in a build without the `cuda` feature.
pub const NO_CUDA_FEATURE: &str =
    "this build has no CUDA backend: sae-engine was compiled without the `cuda` cargo feature \
     (rebuild with `--features cuda`, or use the CPU backend)";

/// Builds an engine of `kind` for `sae`. `Auto` tries CUDA device 0 and falls back to the
/// CPU when CUDA cannot run here (no driver, no device, or a build without CUDA).
pub fn engine(kind: BackendKind, sae: Arc<Sae>, opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    match kind {
        BackendKind::Cpu => cpu(sae, opts),
        BackendKind::Cuda { device } => cuda(device, sae, opts),
        BackendKind::Auto => match cuda(0, sae.clone(), opts) {
            Err(Error::BackendUnavailable(_)) => cpu(sae, opts),
            other => other,
        },
    }
}

fn cpu(sae: Arc<Sae>, opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    Ok(Box::new(crate::cpu::CpuEngine::new(sae, opts)?))
}

#[cfg(feature = "cuda")]
fn cuda(device: usize, sae: Arc<Sae>, opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    crate::cuda::engine(device, sae, opts)
}

#[cfg(not(feature = "cuda"))]
fn cuda(_device: usize, _sae: Arc<Sae>, _opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    Err(Error::BackendUnavailable(NO_CUDA_FEATURE.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::reference::SaeBuilder;

    fn tiny() -> Arc<Sae> {
        let (l, d) = (8, 4);
        let w: Vec<f32> = (0..l * d).map(|i| (i % 5) as f32 - 2.0).collect();
        Arc::new(
            SaeBuilder::new(l, d, w.clone(), w)
                .build()
                .expect("valid SAE"),
        )
    }

    #[test]
    fn cpu_kind_builds_the_cpu_engine() {
        let e = engine(BackendKind::Cpu, tiny(), &EngineOptions::default()).unwrap();
        assert!(e.name().starts_with("cpu"), "{}", e.name());
    }

    /// Without the feature, CUDA is unavailable with a message naming the feature, and
    /// `auto` still runs (on the CPU).
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_it() {
        let err = engine(
            BackendKind::Cuda { device: 0 },
            tiny(),
            &EngineOptions::default(),
        )
        .err()
        .expect("no CUDA backend in this build");
        match &err {
            Error::BackendUnavailable(why) => {
                assert!(why.contains("`cuda` cargo feature"), "{why}")
            }
            other => panic!("expected BackendUnavailable, got {other:?}"),
        }
        assert!(err.to_string().contains("--features cuda"), "{err}");
        let auto = engine(BackendKind::Auto, tiny(), &EngineOptions::default()).unwrap();
        assert!(auto.name().starts_with("cpu"), "{}", auto.name());
    }

    /// The OpenBLAS GEMM in a build without it is an error naming the feature, not a
    /// silent substitute.
    #[cfg(not(feature = "openblas"))]
    #[test]
    fn openblas_gemm_without_the_feature_names_it() {
        let opts = EngineOptions {
            cpu_gemm: crate::backend::CpuGemm::OpenBlas,
            ..EngineOptions::default()
        };
        let err = engine(BackendKind::Cpu, tiny(), &opts)
            .err()
            .expect("no OpenBLAS in this build");
        assert!(
            err.to_string().contains("`openblas` cargo feature"),
            "{err}"
        );
        let crate_gemm = EngineOptions {
            cpu_gemm: crate::backend::CpuGemm::Crate,
            ..EngineOptions::default()
        };
        assert!(engine(BackendKind::Cpu, tiny(), &crate_gemm).is_ok());
    }
}

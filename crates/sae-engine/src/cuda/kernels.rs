//! The kernel registry: every module of kernels/*.cu loaded once per device context,
//! from the fatbin embedded by build.rs, or compiled from the embedded source with
//! NVRTC (when nvcc was absent at build time, or the fatbin has no code for this GPU).
//! NVRTC output is cached on disk by source hash and architecture.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::Ptx;

use super::loader::{self, Lib};
use crate::error::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Functions each module must export (checked at load time, so a missing kernel is an
/// error at engine creation rather than mid-run).
const FUNCTIONS: &[(&str, &[&str])] = &[
    (
        "topk",
        &[
            "topk_select_f32",
            "topk_select_bf16",
            "topk_rescore_bf16",
            "topk_finish_f32",
        ],
    ),
    ("threshold", &["threshold_count_f32", "threshold_write_f32"]),
    (
        "convert",
        &[
            "narrow_bf16",
            "narrow_f16",
            "prep_input_f32",
            "widen_bf16",
            "widen_f16",
            "fill_random_f32",
            "fill_random_bf16",
            "fill_random_f16",
        ],
    ),
    (
        "decode",
        &[
            "decode_f32",
            "decode_f16",
            "decode_bf16",
            "decode_strided_f32",
            "decode_strided_f16",
            "decode_strided_bf16",
        ],
    ),
    ("stats", &["stats_f32"]),
    ("checksum", &["colsum_f32", "colsum_bf16"]),
    ("steer", &["steer_f32", "steer_f16", "steer_bf16"]),
];

/// Whether build.rs embedded nvcc-compiled fatbins (else only sources for NVRTC).
pub fn fatbins_embedded() -> bool {
    cfg!(sae_fatbin)
}

/// The nvcc that compiled the embedded fatbins ("" when none).
pub fn build_nvcc() -> &'static str {
    embedded::NVCC
}

/// How a module's code was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelSource {
    /// The fatbin compiled by nvcc at build time and embedded in the library.
    Fatbin,
    /// PTX compiled at run time by NVRTC from the embedded sources.
    Nvrtc,
    /// PTX an earlier NVRTC compile left in the kernel cache.
    NvrtcCached,
}

/// Loaded kernels by name.
pub struct Kernels {
    funcs: HashMap<&'static str, CudaFunction>,
    /// Per module, where its code came from.
    pub sources: Vec<(&'static str, KernelSource)>,
}

impl Kernels {
    /// Loads every module into `ctx` (compute capability `cc`). `force_nvrtc` ignores the
    /// fatbins: how the run-time fallback of a build without nvcc is checked on a GPU machine
    /// (`sae-bench --force-nvrtc`, tools/gpu-check.sh) without a second build.
    pub fn load(ctx: &Arc<CudaContext>, cc: (i32, i32), force_nvrtc: bool) -> Result<Kernels> {
        let mut funcs = HashMap::new();
        let mut sources = Vec::new();
        for (module, fatbin, src) in embedded::MODULES {
            let names = FUNCTIONS
                .iter()
                .find(|(m, _)| m == module)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    Error::Cuda(format!("kernel module `{module}` has no function list"))
                })?;
            let mut loaded = None;
            let mut fatbin_err = String::new();
            if !fatbin.is_empty() && !force_nvrtc {
                match ctx.load_module(Ptx::from_binary(fatbin.to_vec())) {
                    Ok(m) => loaded = Some((m, KernelSource::Fatbin)),
                    Err(e) => fatbin_err = format!(" (embedded fatbin refused: {e})"),
                }
            }
            let (m, how) = match loaded {
                Some(x) => x,
                None => {
                    let (ptx, how) = nvrtc_ptx(module, src, cc).map_err(|e| match e {
                        Error::BackendUnavailable(m) => {
                            Error::BackendUnavailable(format!("{m}{fatbin_err}"))
                        }
                        other => other,
                    })?;
                    let m = ctx.load_module(Ptx::from_src(ptx)).map_err(|e| {
                        Error::Cuda(format!("loading NVRTC-compiled module `{module}`: {e}"))
                    })?;
                    (m, how)
                }
            };
            for name in names {
                let f = m.load_function(name).map_err(|e| {
                    Error::Cuda(format!(
                        "kernel `{name}` missing from module `{module}`: {e}"
                    ))
                })?;
                funcs.insert(*name, f);
            }
            sources.push((*module, how));
        }
        Ok(Kernels { funcs, sources })
    }

    /// The kernel `name`.
    pub fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| Error::Cuda(format!("no kernel named `{name}` is loaded")))
    }
}

/// The source with common.cuh pasted in (NVRTC gets no include path); its `#pragma once`
/// is dropped because it warns in a main file.
fn full_source(src: &str) -> String {
    src.replace(
        "#include \"common.cuh\"",
        &embedded::COMMON_HEADER.replace("#pragma once", ""),
    )
}

fn nvrtc_ptx(module: &str, src: &str, cc: (i32, i32)) -> Result<(String, KernelSource)> {
    let full = full_source(src);
    let arch = format!("compute_{}{}", cc.0, cc.1);
    let key = format!(
        "{module}-{arch}-{:016x}.ptx",
        crate::deterministic::Fnv64::hash(full.as_bytes())
    );
    let cached = crate::env::cache_dir().map(|d| d.join(&key));
    if let Some(p) = &cached {
        if let Ok(ptx) = std::fs::read_to_string(p) {
            return Ok((ptx, KernelSource::NvrtcCached));
        }
    }
    loader::ensure(Lib::Nvrtc).map_err(|e| {
        Error::BackendUnavailable(format!(
            "the kernels were built without nvcc and need NVRTC at run time: {e}"
        ))
    })?;
    let ptx = nvrtc_compile(module, &full, &arch)?;
    if let Some(p) = &cached {
        // Best effort: a read-only home only costs a recompile next time.
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &ptx).is_ok() && std::fs::rename(&tmp, p).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
    }
    Ok((ptx, KernelSource::Nvrtc))
}

/// PTX of one module's full source for `arch` (compute_XY); NVRTC must be loadable.
fn nvrtc_compile(module: &str, full: &str, arch: &str) -> Result<String> {
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()],
        name: Some(format!("{module}.cu")),
        ..Default::default()
    };
    Ok(cudarc::nvrtc::compile_ptx_with_opts(full, opts)
        .map_err(|e| {
            Error::Cuda(format!(
                "NVRTC failed on kernels/{module}.cu for {arch}: {e}"
            ))
        })?
        .to_src())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-time fallback compiles the embedded sources with NVRTC (no include path, no
    /// system headers): every module must compile for the oldest and newest architectures we
    /// ship and export its kernels. NVRTC needs no GPU, only libnvrtc; CI installs it and sets
    /// SAE_REQUIRE_NVRTC=1 so that this cannot pass by skipping.
    #[test]
    fn nvrtc_compiles_every_module() {
        if let Err(e) = loader::ensure(Lib::Nvrtc) {
            let required = std::env::var_os("SAE_REQUIRE_NVRTC").is_some_and(|v| v != "0");
            assert!(
                !required,
                "SAE_REQUIRE_NVRTC is set but NVRTC cannot be loaded: {e}"
            );
            eprintln!("skipped: NVRTC not loadable here ({e})");
            return;
        }
        for (module, _, src) in embedded::MODULES {
            let full = full_source(src);
            let names = FUNCTIONS
                .iter()
                .find(|(m, _)| m == module)
                .map(|(_, f)| *f)
                .unwrap_or_default();
            for arch in ["compute_80", "compute_90"] {
                let ptx = nvrtc_compile(module, &full, arch)
                    .unwrap_or_else(|e| panic!("{module} for {arch}: {e}"));
                for f in names {
                    assert!(
                        ptx.contains(&format!(".entry {f}(")),
                        "{module} for {arch}: PTX lacks kernel {f}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_module_is_embedded_and_listed() {
        for (m, _) in FUNCTIONS {
            assert!(
                embedded::MODULES.iter().any(|(n, _, _)| n == m),
                "module {m} not embedded"
            );
        }
        for (m, fatbin, src) in embedded::MODULES {
            assert!(
                FUNCTIONS.iter().any(|(n, _)| n == m),
                "module {m} has no function list"
            );
            let full = full_source(src);
            assert!(
                !full.contains("#include"),
                "{m}: NVRTC source still includes a header"
            );
            for (_, names) in FUNCTIONS.iter().filter(|(n, _)| n == m) {
                for f in *names {
                    assert!(
                        src.contains(&format!("{f}(")),
                        "{m}: kernel {f} not in source"
                    );
                }
            }
            assert_eq!(
                fatbin.is_empty(),
                !fatbins_embedded(),
                "{m}: fatbin presence disagrees with cfg"
            );
        }
    }
}

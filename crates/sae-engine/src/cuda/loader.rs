//! Finding the CUDA libraries without LD_LIBRARY_PATH, and turning their absence into
//! `Error::BackendUnavailable` instead of cudarc's panic on first use.
//!
//! cudarc (dynamic loading) dlopens libraries by file name only. When a plain name does
//! not resolve, we look in the usual install places (CUDA_HOME, CUDA_PATH,
//! /usr/local/cuda, Python wheels' nvidia/*/lib) and dlopen the file by full path with
//! RTLD_GLOBAL, kept for the life of the process: glibc then resolves cudarc's later
//! dlopen of the same soname to the already-loaded object.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Which CUDA library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    /// The driver API (libcuda), installed with the NVIDIA driver.
    Driver,
    /// cuBLAS (needs cuBLASLt beside it).
    Cublas,
    /// cuBLASLt, for the GEMM algorithm search (ships with cuBLAS).
    CublasLt,
    /// The run-time compiler, used only when no fatbin matches the device.
    Nvrtc,
}

impl Lib {
    fn stem(self) -> &'static str {
        match self {
            Lib::Driver => "cuda",
            Lib::Cublas => "cublas",
            Lib::CublasLt => "cublasLt",
            Lib::Nvrtc => "nvrtc",
        }
    }

    /// Whether cudarc can load it now (after any preloading we did).
    fn present(self) -> bool {
        // SAFETY: these only try dlopen on candidate names and drop the handle; no symbol is called.
        unsafe {
            match self {
                Lib::Driver => cudarc::driver::sys::is_culib_present(),
                Lib::Cublas => cudarc::cublas::sys::is_culib_present(),
                Lib::CublasLt => cudarc::cublaslt::sys::is_culib_present(),
                Lib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
            }
        }
    }
}

/// Directories searched for CUDA libraries, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for h in crate::env::cuda_roots() {
        dirs.push(h.join("lib64"));
        dirs.push(h.join("lib"));
        dirs.push(h.join("targets/x86_64-linux/lib"));
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    dirs.push("/usr/lib/x86_64-linux-gnu".into());
    dirs.push("/usr/lib/wsl/lib".into());
    // Python wheels (nvidia-cublas-cu12, nvidia-cuda-nvrtc, torch's own deps): nvidia/*/lib.
    let mut site = Vec::new();
    if let Some(v) = crate::env::virtual_env() {
        site.push(v.join("lib"));
    }
    if let Some(home) = crate::env::home() {
        site.push(home.join(".local/lib"));
    }
    site.push("/usr/local/lib".into());
    site.push("/usr/lib".into());
    for base in site {
        for py in read_dir_sorted(&base)
            .into_iter()
            .filter(|p| file_name_starts(p, "python3"))
        {
            for pkgs in ["site-packages", "dist-packages"] {
                for pkg in read_dir_sorted(&py.join(pkgs).join("nvidia")) {
                    dirs.push(pkg.join("lib"));
                }
            }
        }
    }
    dirs
}

fn file_name_starts(p: &Path, prefix: &str) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(prefix))
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// dlopens `path` with RTLD_GLOBAL and keeps it loaded; false when it does not load.
fn open_global(path: &Path) -> bool {
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL;
    // SAFETY: loading a CUDA library runs only its initializers; RTLD_GLOBAL lets its
    // soname satisfy cudarc's later dlopen. Leaked on purpose: it stays loaded.
    match unsafe { libloading::os::unix::Library::open(Some(path), flags) } {
        Ok(l) => {
            std::mem::forget(l);
            true
        }
        Err(_) => false,
    }
}

/// Loads `lib` by full path from the search directories. Returns the path loaded.
fn preload(lib: Lib) -> Option<PathBuf> {
    let path = preload_named(lib.stem())?;
    if lib == Lib::Nvrtc {
        // libnvrtc dlopens libnvrtc-builtins by soname when it compiles; outside the loader
        // path that fails ("failed to open libnvrtc-builtins.so.13.0") unless the copy
        // beside it is loaded already.
        if let Some(dir) = path.parent() {
            for f in read_dir_sorted(dir)
                .into_iter()
                .filter(|p| file_name_starts(p, "libnvrtc-builtins.so"))
            {
                open_global(&f);
            }
        }
    }
    Some(path)
}

/// Makes `lib` loadable or says plainly that it is missing. Cached per library.
pub fn ensure(lib: Lib) -> Result<()> {
    static DRIVER: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static CUBLAS: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static CUBLASLT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static NVRTC: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let cell = match lib {
        Lib::Driver => &DRIVER,
        Lib::Cublas => &CUBLAS,
        Lib::CublasLt => &CUBLASLT,
        Lib::Nvrtc => &NVRTC,
    };
    cell.get_or_init(|| {
        if lib.present() {
            return Ok(());
        }
        if lib == Lib::Cublas {
            // libcublas needs libcublasLt; preload it first from the same places.
            let _ = preload_named("cublasLt");
        }
        match preload(lib) {
            Some(_) if lib.present() => Ok(()),
            Some(p) => Err(format!("lib{} at {} loaded but is not usable by cudarc", lib.stem(), p.display())),
            None => Err(format!(
                "lib{} not found (searched the loader path, CUDA_HOME, CUDA_PATH, /usr/local/cuda and Python nvidia/*/lib){}",
                lib.stem(),
                if lib == Lib::Driver { "; is an NVIDIA driver installed?" } else { "" }
            )),
        }
    })
    .clone()
    .map_err(Error::BackendUnavailable)
}

fn preload_named(stem: &str) -> Option<PathBuf> {
    let names = cudarc::get_lib_name_candidates(stem);
    for dir in search_dirs() {
        for name in &names {
            let path = dir.join(name);
            if path.is_file() && open_global(&path) {
                return Some(path);
            }
        }
    }
    None
}

/// Number of CUDA devices, or BackendUnavailable when there is no driver or no device.
pub fn device_count() -> Result<usize> {
    ensure(Lib::Driver)?;
    let n = cudarc::driver::CudaContext::device_count().map_err(|e| {
        Error::BackendUnavailable(format!("CUDA driver present but not usable: {e}"))
    })?;
    if n <= 0 {
        return Err(Error::BackendUnavailable("no CUDA device found".into()));
    }
    Ok(n as usize)
}

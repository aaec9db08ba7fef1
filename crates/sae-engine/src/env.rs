//! Every environment variable the library reads, one function each. Only locations are read
//! here: where CUDA libraries, caches, temporary files and the Hugging Face cache and
//! credentials live, and the host name for lock files. Tuning knobs are never read from the
//! environment: they are [`crate::EngineOptions`] fields, filled by the caller (the CLI from
//! its flags).
//! docs/configuration.md lists every variable the project reads, here and elsewhere.
//!
//! An empty or blank value counts as unset.

use std::ffi::OsString;
use std::path::PathBuf;

/// The value of `name`, unless unset or blank.
fn os(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.to_string_lossy().trim().is_empty())
}

/// The value of `name` as a path, unless unset or blank.
fn path(name: &str) -> Option<PathBuf> {
    os(name).map(PathBuf::from)
}

/// The value of `name` as text, unless unset, blank or not UTF-8.
fn text(name: &str) -> Option<String> {
    os(name).and_then(|v| v.into_string().ok())
}

/// `HOME`: the user's home directory (default cache and library locations under it).
pub fn home() -> Option<PathBuf> {
    path("HOME")
}

/// `XDG_CACHE_HOME`: the user's cache root (default `~/.cache`).
pub fn xdg_cache_home() -> Option<PathBuf> {
    path("XDG_CACHE_HOME")
}

/// `CUDA_HOME`, `CUDA_PATH`, `CUDA_ROOT` in that order, each that is set: CUDA toolkit roots
/// whose `lib64` / `lib` hold the driver-side libraries (cuBLAS, NVRTC).
pub fn cuda_roots() -> Vec<PathBuf> {
    ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .into_iter()
        .filter_map(path)
        .collect()
}

/// `VIRTUAL_ENV`: the active Python environment, searched for the `nvidia-*` wheels' libraries.
pub fn virtual_env() -> Option<PathBuf> {
    path("VIRTUAL_ENV")
}

/// `SAE_CACHE_DIR`: where compiled kernels are cached (default
/// `$XDG_CACHE_HOME/sae-engine`, else `~/.cache/sae-engine`).
pub fn sae_cache_dir() -> Option<PathBuf> {
    path("SAE_CACHE_DIR")
}

/// The library's own cache directory: `SAE_CACHE_DIR`, else `$XDG_CACHE_HOME/sae-engine`,
/// else `~/.cache/sae-engine`; None without any of them.
pub fn cache_dir() -> Option<PathBuf> {
    sae_cache_dir()
        .or_else(|| xdg_cache_home().map(|d| d.join("sae-engine")))
        .or_else(|| home().map(|h| h.join(".cache").join("sae-engine")))
}

/// `HF_HOME`: the Hugging Face home (default `$XDG_CACHE_HOME/huggingface`, else
/// `~/.cache/huggingface`; see [`hf_home_or_default`]).
pub fn hf_home() -> Option<PathBuf> {
    path("HF_HOME")
}

/// The Hugging Face home: `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else
/// `~/.cache/huggingface` (`./.cache/huggingface` without a home).
pub fn hf_home_or_default() -> PathBuf {
    hf_home().unwrap_or_else(|| {
        xdg_cache_home()
            .unwrap_or_else(|| home().unwrap_or_else(|| ".".into()).join(".cache"))
            .join("huggingface")
    })
}

/// `HF_HUB_CACHE`, else its older name `HUGGINGFACE_HUB_CACHE`: the Hub cache directory.
pub fn hf_hub_cache() -> Option<PathBuf> {
    path("HF_HUB_CACHE").or_else(|| path("HUGGINGFACE_HUB_CACHE"))
}

/// `HF_TOKEN_PATH`: the file holding the Hub token (default `HF_HOME/token`).
pub fn hf_token_path() -> Option<PathBuf> {
    path("HF_TOKEN_PATH")
}

/// `HF_TOKEN`: the Hub access token itself, trimmed.
pub fn hf_token() -> Option<String> {
    text("HF_TOKEN").map(|t| t.trim().to_string())
}

/// `HF_ENDPOINT`: the Hub's address (default `https://huggingface.co`).
pub fn hf_endpoint() -> Option<String> {
    text("HF_ENDPOINT")
}

/// `HF_HUB_OFFLINE`: true when 1, true, yes or on (any case): never use the network.
pub fn hf_hub_offline() -> bool {
    text("HF_HUB_OFFLINE").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The temporary directory: `TMPDIR` (Unix), else the platform's default (`/tmp`).
pub fn temp_dir() -> PathBuf {
    std::env::temp_dir()
}

/// `HOSTNAME`, else `COMPUTERNAME` (Windows): the host name when the system files that
/// hold it cannot be read; it names lock owners.
pub fn host_name() -> Option<String> {
    text("HOSTNAME").or_else(|| text("COMPUTERNAME"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Outside this module the library (test modules aside) reads no environment variable:
    /// a new `std::env::var` elsewhere fails here, so every read stays listed in one place.
    #[test]
    fn the_library_reads_the_environment_only_here() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path == src.join("env.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                // Unit tests may set up their own switches (e.g. SAE_REQUIRE_NVRTC).
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
                // `std::env::var` also matches `var_os` and `vars`; `use std::env` any alias.
                for needle in ["std::env::var", "std::env::temp_dir", "use std::env"] {
                    if code.contains(needle) {
                        offenders.push(format!("{} uses {needle}", path.display()));
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:#?}");
    }
}

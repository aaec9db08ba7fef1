//! Decides one thing for the integration tests: `cfg(sae_gpu_tests)`. The library's own
//! build script (crates/sae-engine/build.rs) compiles the kernels.

use std::{env, fs};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    gpu_tests_cfg();
}

/// `cfg(sae_gpu_tests)`: the integration tests that need a CUDA GPU run, instead of being
/// listed as ignored ("needs a CUDA GPU"), when this machine shows an NVIDIA GPU to the
/// kernel driver or SAE_REQUIRE_GPU=1 asks for them (a build for a GPU machine elsewhere,
/// tools/gpu-check.sh); they then fail when no GPU is usable. No driver call: a file check.
fn gpu_tests_cfg() {
    println!("cargo::rustc-check-cfg=cfg(sae_gpu_tests)");
    println!("cargo:rerun-if-env-changed=SAE_REQUIRE_GPU");
    let required = env::var_os("SAE_REQUIRE_GPU").is_some_and(|v| v == "1");
    let gpu_visible = fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if required || gpu_visible {
        println!("cargo:rustc-cfg=sae_gpu_tests");
    }
}

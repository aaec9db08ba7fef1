//! Shared by the integration tests: running `sae`, checking its exit status with stderr in
//! the message, reading its JSON, the argument list most commands share, and (in
//! [`fixtures`]) the SAEs and dumps the tests write.
//! The checking helpers are #[track_caller] so a failure names the test's line.

mod fixtures;
pub use fixtures::*;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `sae ARGS` with two rayon threads: the suite shares a few cores.
pub fn run_sae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run sae")
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `sae ARGS` and asserts it exits with `code` (both streams in the message).
#[track_caller]
fn run_expecting(code: i32, args: &[&str]) -> Output {
    let out = run_sae(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "sae {args:?}: expected exit {code}, stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    out
}

/// Runs `sae ARGS` and asserts it exits with `code`; returns its stderr.
#[track_caller]
pub fn sae_exits(code: i32, args: &[&str]) -> String {
    stderr_of(&run_expecting(code, args))
}

/// Runs `sae ARGS` and asserts it succeeds; returns its output.
#[track_caller]
pub fn sae_ok(args: &[&str]) -> Output {
    run_expecting(0, args)
}

/// Stdout of a `--json` run, parsed; the panic shows both streams.
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(out)
        )
    })
}

/// Runs `sae ARGS`, asserts it succeeds, and returns its stdout parsed as JSON.
#[track_caller]
pub fn sae_json(args: &[&str]) -> Value {
    json_of(&sae_ok(args))
}

/// `NAME --sae SAE --acts ACTS --out OUT` then `extra`: how encode and stats are called.
pub fn acts_cmd<'a>(
    name: &'a str,
    sae: &'a Path,
    acts: &'a Path,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    io_cmd(name, sae, ["--acts", arg(acts)], out, extra)
}

/// `decode --sae SAE --codes CODES --out OUT` then `extra`.
pub fn decode_cmd<'a>(
    sae: &'a Path,
    codes: &'a Path,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    io_cmd("decode", sae, ["--codes", arg(codes)], out, extra)
}

fn io_cmd<'a>(
    name: &'a str,
    sae: &'a Path,
    input: [&'a str; 2],
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![name, "--sae", arg(sae)];
    a.extend(input);
    a.extend(["--out", arg(out)]);
    a.extend_from_slice(extra);
    a
}

/// An f32 TopK SAE in SAELens layout whose encoder and decoder are both `w` ([l, d]),
/// no biases, `hook` as its hook name.
pub fn sae_from_rows(
    w: Vec<f32>,
    l: usize,
    d: usize,
    k: usize,
    hook: Option<&str>,
) -> sae_engine::Sae {
    sae_engine::Sae {
        meta: sae_engine::sae::SaeMeta {
            format: sae_engine::Format::SaeLens,
            source: "test-sae".into(),
            architecture: "topk".into(),
            hook_name: hook.map(str::to_string),
            hook_layer: None,
            model_name: None,
            dtype: sae_engine::DType::F32,
            conventions: Vec::new(),
            warnings: Vec::new(),
        },
        w_enc: sae_engine::matrix::Matrix::from_f32(&w, l, d, sae_engine::DType::F32).unwrap(),
        w_dec: sae_engine::matrix::Matrix::from_f32(&w, l, d, sae_engine::DType::F32).unwrap(),
        b_enc: vec![0.0; l],
        b_dec: vec![0.0; d],
        threshold: None,
        activation: sae_engine::Activation::TopK { k },
        subtract_b_dec: true,
        normalization: sae_engine::Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    }
}

/// A tied TopK SAE with random unit rows drawn from `seed`.
pub fn tied_sae(d: usize, l: usize, k: usize, seed: u64, hook: Option<&str>) -> sae_engine::Sae {
    let mut r = sae_engine::workflow::rng::Rng::new(seed);
    let w: Vec<f32> = (0..l).flat_map(|_| r.direction(d, 1.0)).collect();
    sae_from_rows(w, l, d, k, hook)
}

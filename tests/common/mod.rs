//! Shared by the integration tests that run the `sae` binary (cli, scaleout,
//! cli_workflow): running it, checking its exit status with stderr in the message,
//! reading its JSON, and the argument list most commands share.

// Each test crate compiles its own copy of this module and uses only part of it.
// The checking helpers are #[track_caller] so a failure names the test's line.
#![allow(dead_code)]

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

//! Data is never lost: outputs that are inputs are refused before any work, destinations
//! and comparability are checked before the long pass, a `kill -9` leaves the previous
//! output or none and the next run leaves no temporary behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{acts_cmd, arg, sae_exits, sae_ok, write_dump_with, write_sae};
use sae_engine::cpu::reference::SaeBuilder;
use sae_engine::io::mapped::OwnedTensor;
use sae_engine::workflow::rng::Rng;
use sae_engine::{Activation, Sae};

/// Deterministic pseudo-random values in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect()
}

fn test_sae(d: usize, l: usize, seed: u64) -> Sae {
    SaeBuilder::new(l, d, noise(seed, l * d), noise(seed + 1, l * d))
        .b_enc(noise(seed + 2, l).iter().map(|v| v * 0.1).collect())
        .activation(Activation::TopK { k: 16.min(l) })
        .build()
        .unwrap()
}

/// A dump file of `rows` x `d` noise with i32 token ids; `nan_row` puts a NaN in that row.
fn noise_dump(path: &Path, rows: usize, d: usize, seed: u64, nan_row: Option<usize>) -> PathBuf {
    let mut acts: Vec<f32> = noise(seed, rows * d).iter().map(|v| v * 2.0).collect();
    if let Some(r) = nan_row {
        acts[r * d] = f32::NAN;
    }
    let ids: Vec<i32> = (0..rows as i32).map(|i| i % 1000).collect();
    let side = vec![("token_ids", OwnedTensor::i32(vec![rows], &ids))];
    write_dump_with(path, &acts, d, side, &[])
}

/// Runs a command that must be refused (exit 1); checks the message names every path
/// in `named` and returns it.
#[track_caller]
fn refused(args: &[&str], named: &[&Path]) -> String {
    // On the CPU: `--backend` follows the name of a command that runs an SAE (the engine
    // flags are per command; `convert` takes none).
    let mut a = args.to_vec();
    if args.first().is_some_and(|c| *c != "convert") {
        a.splice(1..1, ["--backend", "cpu"]);
    }
    let err = sae_exits(1, &a);
    for p in named {
        assert!(
            err.contains(arg(p)),
            "message should name {}: {err}",
            p.display()
        );
    }
    err
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Names in `dir` (sorted).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    sae: PathBuf,
    dump: PathBuf,
}

const D: usize = 16;
const L: usize = 48;

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let sae = write_sae(&root.join("sae"), &test_sae(D, L, 1));
    std::fs::create_dir(root.join("d")).unwrap();
    let dump = noise_dump(&root.join("d/x.safetensors"), 64, D, 7, None);
    Setup {
        _dir: dir,
        root,
        sae,
        dump,
    }
}

#[test]
fn encode_onto_its_dump_is_refused_and_the_dump_kept() {
    let s = setup();
    let before = bytes(&s.dump);
    let e = refused(
        &acts_cmd("encode", &s.sae, &s.dump, &s.dump, &[]),
        &[&s.dump],
    );
    assert!(
        e.contains("--out") && e.contains("--acts") && e.contains("same file"),
        "{e}"
    );
    assert_eq!(bytes(&s.dump), before);
    assert_eq!(listing(&s.root.join("d")), ["x.safetensors"]);
}

#[test]
fn encode_and_stats_onto_the_sae_weights_are_refused() {
    let s = setup();
    let weights = s.sae.join("sae_weights.safetensors");
    let before = bytes(&weights);
    for cmd in ["encode", "stats"] {
        let e = refused(
            &acts_cmd(cmd, &s.sae, &s.dump, &weights, &[]),
            &[&weights, &s.sae],
        );
        assert!(e.contains("--sae"), "{e}");
        // A new file inside the SAE's folder is refused too.
        let inside = s.sae.join("stats.safetensors");
        refused(
            &acts_cmd(cmd, &s.sae, &s.dump, &inside, &[]),
            &[&inside, &s.sae],
        );
    }
    assert_eq!(bytes(&weights), before);
    assert_eq!(listing(&s.sae), ["cfg.json", "sae_weights.safetensors"]);
    // The SAE still loads.
    sae_ok(&["inspect", arg(&s.sae)]);
}

#[test]
fn convert_dump_onto_itself_is_refused() {
    let s = setup();
    let d = s.root.join("d");
    let before = listing(&d);
    refused(&["convert", "dump", arg(&d), "--out", arg(&d)], &[&d]);
    // An output folder inside the dump, or one that holds it, too.
    let inside = d.join("converted");
    refused(
        &["convert", "dump", arg(&d), "--out", arg(&inside)],
        &[&inside, &d],
    );
    refused(
        &["convert", "dump", arg(&d), "--out", arg(&s.root)],
        &[&s.root, &d],
    );
    assert_eq!(listing(&d), before);
    // diff --out-dir onto a dump folder.
    let e = refused(
        &audit_cmd(
            "diff",
            &s.sae,
            &d,
            &["--tuned", arg(&d), "--out-dir", arg(&d)],
        ),
        &[&d],
    );
    assert!(e.contains("--out-dir"), "{e}");
    assert_eq!(listing(&d), before);
}

#[cfg(unix)]
#[test]
fn symlinks_and_hard_links_to_inputs_are_refused() {
    let s = setup();
    let before = bytes(&s.dump);
    let link = s.root.join("codes.safetensors");
    std::os::unix::fs::symlink(&s.dump, &link).unwrap();
    let e = refused(
        &acts_cmd("encode", &s.sae, &s.dump, &link, &[]),
        &[&link, &s.dump],
    );
    assert!(e.contains("same file"), "{e}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // A hard link to a shard of a dump folder, given elsewhere.
    let hard = s.root.join("stats.safetensors");
    std::fs::hard_link(&s.dump, &hard).unwrap();
    let d = s.root.join("d");
    let e = refused(&acts_cmd("stats", &s.sae, &d, &hard, &[]), &[&hard, &d]);
    assert!(e.contains("through a link"), "{e}");
    assert_eq!(bytes(&s.dump), before);
    // The SAE's weights through a symlinked folder.
    let sae_link = s.root.join("sae-link");
    std::os::unix::fs::symlink(&s.sae, &sae_link).unwrap();
    let w = sae_link.join("sae_weights.safetensors");
    refused(&acts_cmd("encode", &s.sae, &s.dump, &w, &[]), &[&w]);
}

#[test]
fn a_missing_destination_folder_fails_before_the_dump_is_read() {
    let s = setup();
    // A dump that is not one: reading it first would fail naming it.
    let bad = s.root.join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let out = Path::new("/nonexistent/x.safetensors");
    for cmd in ["stats", "encode"] {
        let e = refused(&acts_cmd(cmd, &s.sae, &bad, out, &[]), &[out]);
        assert!(
            e.contains("does not exist") && !e.contains(arg(&bad)),
            "{e}"
        );
    }
    // An existing folder where the file should go.
    let e = refused(&acts_cmd("stats", &s.sae, &bad, &s.root, &[]), &[&s.root]);
    assert!(e.contains("is a folder"), "{e}");
}

#[test]
fn diff_with_incomparable_inputs_fails_before_encoding() {
    let s = setup();
    // Encoding this base would fail on its last row.
    let base = noise_dump(&s.root.join("base.safetensors"), 64, D, 8, Some(63));
    // Statistics of another SAE.
    let other = write_sae(&s.root.join("other-sae"), &test_sae(D, L, 99));
    let theirs = s.root.join("theirs.stats.safetensors");
    sae_ok(&acts_cmd(
        "stats",
        &other,
        &s.dump,
        &theirs,
        &["--backend", "cpu"],
    ));
    let e = refused(
        &audit_cmd("diff", &s.sae, &base, &["--tuned", arg(&theirs)]),
        &[&theirs],
    );
    assert!(
        e.contains("another SAE") && !e.contains("non-finite"),
        "{e}"
    );
    // A fine-tune dump of another width, or of another length when pairing is asked for.
    let wide = noise_dump(&s.root.join("wide.safetensors"), 64, D + 1, 9, None);
    let e = refused(
        &audit_cmd(
            "detect",
            &s.sae,
            &base,
            &["--positive", arg(&s.dump), "--negative", arg(&wide)],
        ),
        &[&wide],
    );
    assert!(e.contains("width") && !e.contains("non-finite"), "{e}");
    let short = noise_dump(&s.root.join("short.safetensors"), 40, D, 10, None);
    let e = refused(
        &audit_cmd(
            "monitor",
            &s.sae,
            &base,
            &[
                "--checkpoints",
                arg(&short),
                "--latents",
                "0",
                "--pairing",
                "paired",
            ],
        ),
        &[&short],
    );
    assert!(!e.contains("non-finite"), "{e}");
    // Same length, other prompts (token ids), when pairing is asked for.
    let other_ids = s.root.join("other-ids.safetensors");
    let x = noise(11, 64 * D);
    let ids: Vec<i32> = (0..64).map(|i| 7 * i + 1).collect();
    let side = vec![("token_ids", OwnedTensor::i32(vec![64], &ids))];
    write_dump_with(&other_ids, &x, D, side, &[]);
    let e = refused(
        &audit_cmd(
            "diff",
            &s.sae,
            &base,
            &["--tuned", arg(&other_ids), "--pairing", "paired"],
        ),
        &[&other_ids],
    );
    assert!(
        e.contains("token ids differ") && !e.contains("non-finite"),
        "{e}"
    );
    // Comparable inputs do reach the encoder (and its error on the bad row).
    let e = refused(
        &audit_cmd("diff", &s.sae, &base, &["--tuned", arg(&s.dump)]),
        &[],
    );
    assert!(e.contains("non-finite"), "{e}");
}

/// `CMD --sae SAE --base BASE` then `rest`: how diff, detect and monitor are called.
fn audit_cmd<'a>(cmd: &'a str, sae: &'a Path, base: &'a Path, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![cmd, "--sae", arg(sae), "--base", arg(base)];
    a.extend_from_slice(rest);
    a
}

/// Hidden entries of `dir` (temporaries).
fn hidden(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn kill_9_during_encode_keeps_the_old_output_and_the_rerun_leaves_no_litter() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sae = write_sae(&root.join("sae"), &test_sae(128, 2048, 3));
    std::fs::create_dir(root.join("data")).unwrap();
    let small = noise_dump(&root.join("data/small.safetensors"), 100, 128, 4, None);
    const BIG: usize = 60_000;
    let big = noise_dump(&root.join("data/big.safetensors"), BIG, 128, 5, None);
    let out_dir = root.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("codes.safetensors");
    let flags = ["--backend", "cpu", "--batch-size", "1024"];
    sae_ok(&acts_cmd("encode", &sae, &small, &out, &flags));
    let previous = bytes(&out);

    let mut child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(acts_cmd("encode", &sae, &big, &out, &flags))
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the run has spilled codes (it is mid-pass).
    let t0 = Instant::now();
    loop {
        let spilled = hidden(&out_dir).iter().any(|n| n.ends_with(".spill"));
        if spilled || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "encode finished before the kill: make the dump bigger"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(bytes(&out), previous, "the previous output is intact");
    let litter = hidden(&out_dir);
    assert!(
        !litter.is_empty(),
        "a kill -9 mid-run leaves its temporaries"
    );

    sae_ok(&acts_cmd("encode", &sae, &big, &out, &flags));
    assert_eq!(
        hidden(&out_dir),
        Vec::<String>::new(),
        "the rerun removed {litter:?}"
    );
    assert_eq!(listing(&out_dir), ["codes.safetensors"]);
    let codes = sae_engine::io::codes_file::CodesReader::open(&out).unwrap();
    assert_eq!(codes.n_rows(), BIG);
}

#[test]
fn another_hosts_and_live_temporaries_are_left_alone() {
    let s = setup();
    let out_dir = s.root.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let me = sae_engine::io::atomic::Owner::current();
    // This test process is alive; "elsewhere" is another host; pid u32::MAX-1 is dead here.
    let keep = [
        format!(".codes.safetensors.~sae.elsewhere.{}.1.tmp", u32::MAX - 1),
        format!(
            ".codes.safetensors.~sae.{}.{}.{}.tmp",
            me.host, me.pid, me.start
        ),
    ];
    let dead = format!(
        ".codes.safetensors.~sae.{}.{}.1.values.spill",
        me.host,
        u32::MAX - 1
    );
    for f in keep.iter().chain([&dead]) {
        std::fs::write(out_dir.join(f), b"x").unwrap();
    }
    let out = out_dir.join("codes.safetensors");
    sae_ok(&acts_cmd(
        "encode",
        &s.sae,
        &s.dump,
        &out,
        &["--backend", "cpu"],
    ));
    let mut want: Vec<String> = keep.to_vec();
    want.push("codes.safetensors".into());
    want.sort();
    if cfg!(target_os = "linux") {
        assert_eq!(listing(&out_dir), want);
    }
}

#[test]
fn sae_bench_checks_its_json_destination_before_any_gpu_work() {
    let out = Command::new(env!("CARGO_BIN_EXE_sae-bench"))
        .args(["verify", "--quick", "--json", "/nonexistent/verify.json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Refused for the destination, not for a missing GPU (this machine may have none).
    assert!(
        err.contains("/nonexistent/verify.json") && err.contains("does not exist"),
        "{err}"
    );
}

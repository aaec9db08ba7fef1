//! Runs the cluster recipe of docs/cluster.md locally: the scripts between its
//! `# --- begin NAME ---` / `# --- end NAME ---` markers are extracted and run with bash,
//! each array index as its own concurrent process with the variables Slurm or Kubernetes
//! would set, then the merge script. The merged statistics must equal a single-pass
//! `sae stats`: n_tokens, n_active and max exactly, sum and sum_sq within a relative 1e-12
//! (f64 sums added in another order).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{write_dump_with, write_sae};
use sae_engine::cpu::reference::SaeBuilder;
use sae_engine::io::mapped::OwnedTensor;
use sae_engine::{Activation, LatentStats};

const D: usize = 16;
const L: usize = 96;
const K: usize = 8;

fn recipe(name: &str) -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cluster.md");
    let text = std::fs::read_to_string(&doc).expect("docs/cluster.md");
    let begin = format!("# --- begin {name} ---");
    let end = format!("# --- end {name} ---");
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == begin)
        .unwrap_or_else(|| panic!("docs/cluster.md has no `{begin}`"));
    let stop = lines[start..]
        .iter()
        .position(|l| l.trim() == end)
        .unwrap_or_else(|| panic!("docs/cluster.md has no `{end}`"))
        + start;
    // YAML literal blocks indent the script: strip the marker's indentation.
    let indent = lines[start].len() - lines[start].trim_start().len();
    lines[start + 1..stop]
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").to_string() + "\n")
        .collect()
}

/// Deterministic pseudo-random values in [-1, 1) (no RNG dependency, reproducible).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A TopK SAE with random weights, in SAELens layout.
fn random_sae(dir: &Path) {
    let mut sae = SaeBuilder::new(L, D, values(1, L * D), values(2, L * D))
        .b_enc(values(3, L))
        .b_dec(values(4, D))
        .activation(Activation::TopK { k: K })
        .build()
        .unwrap();
    sae.meta.hook_name = Some("blocks.3.hook_resid_post".into());
    write_sae(dir, &sae);
}

/// Seven shards of uneven length with a response mask (about two thirds of tokens count).
fn uneven_shards(dir: &Path) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let mut total = 0;
    for (s, rows) in [173usize, 64, 257, 1, 129, 300, 90].into_iter().enumerate() {
        let acts: Vec<f32> = values(100 + s as u64, rows * D)
            .into_iter()
            .map(|v| v * 3.0)
            .collect();
        let mask: Vec<u8> = (0..rows).map(|r| u8::from((r + s) % 3 != 0)).collect();
        let side = vec![("mask", OwnedTensor::u8(vec![rows], &mask))];
        write_dump_with(
            &dir.join(format!("acts-{s:03}.safetensors")),
            &acts,
            D,
            side,
            &[],
        );
        total += rows;
    }
    total
}

struct Env {
    sae: PathBuf,
    dump: PathBuf,
    bin_dir: PathBuf,
}

impl Env {
    fn bash(&self, script: &str, out_dir: &Path, vars: &[(&str, String)]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(script);
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env("SAE", &self.sae)
            .env("DUMP", &self.dump)
            .env("OUT_DIR", out_dir)
            .env("SAE_ARGS", "--backend cpu --batch-size 100");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd
    }
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs every task of an array concurrently, like a scheduler would, and waits for all.
fn run_array(
    env: &Env,
    task: &str,
    out_dir: &Path,
    n: usize,
    vars: impl Fn(usize) -> Vec<(&'static str, String)>,
) {
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut cmd = env.bash(task, out_dir, &vars(i));
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            (i, cmd.spawn().expect("spawn bash"))
        })
        .collect();
    for (i, child) in children {
        check(&format!("task {i}/{n}"), &child.wait_with_output().unwrap());
    }
}

fn assert_same(merged: &LatentStats, single: &LatentStats, what: &str) {
    assert_eq!(
        merged.fingerprint, single.fingerprint,
        "{what}: fingerprint"
    );
    assert_eq!(merged.n_tokens, single.n_tokens, "{what}: n_tokens");
    assert_eq!(merged.n_active, single.n_active, "{what}: n_active");
    assert_eq!(merged.max, single.max, "{what}: max");
    for (name, a, b) in [
        ("sum", &merged.sum, &single.sum),
        ("sum_sq", &merged.sum_sq, &single.sum_sq),
    ] {
        for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
            let tol = 1e-12 * x.abs().max(y.abs());
            assert!((x - y).abs() <= tol, "{what}: {name}[{i}] {x} vs {y}");
        }
    }
}

#[test]
fn sharded_recipe_matches_single_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let sae_bin = PathBuf::from(env!("CARGO_BIN_EXE_sae"));
    let env = Env {
        sae: tmp.path().join("sae"),
        dump: tmp.path().join("dump"),
        bin_dir: sae_bin.parent().unwrap().to_path_buf(),
    };
    random_sae(&env.sae);
    let rows = uneven_shards(&env.dump);

    let single_path = tmp.path().join("single.safetensors");
    let out = Command::new(&sae_bin)
        .args(["--quiet", "stats", "--backend", "cpu", "--sae"])
        .arg(&env.sae)
        .arg("--acts")
        .arg(&env.dump)
        .arg("--out")
        .arg(&single_path)
        .output()
        .unwrap();
    check("single-pass sae stats", &out);
    let single = sae_engine::io::stats_file::read(&single_path).unwrap();
    assert!(
        single.n_tokens > 0 && single.n_tokens < rows as u64,
        "the mask is honored"
    );
    assert!(single.n_active.iter().filter(|a| **a > 0).count() > L / 2);

    // Slurm: 3 array tasks over 7 shard files.
    let slurm = tmp.path().join("slurm");
    let n = 3;
    run_array(&env, &recipe("slurm-task"), &slurm, n, |i| {
        vec![
            ("SLURM_ARRAY_TASK_ID", i.to_string()),
            ("SLURM_ARRAY_TASK_COUNT", n.to_string()),
        ]
    });
    let merge = recipe("slurm-merge");
    check(
        "slurm merge",
        &env.bash(&merge, &slurm, &[("SHARDS", n.to_string())])
            .output()
            .unwrap(),
    );
    let merged = sae_engine::io::stats_file::read(&slurm.join("stats.safetensors")).unwrap();
    assert_same(&merged, &single, "slurm");

    // A missing slice: the merge refuses, a rerun of the whole array redoes only that slice.
    let lost = slurm.join("shards/stats-00001-of-00003.safetensors");
    let kept = slurm.join("shards/stats-00000-of-00003.safetensors");
    let kept_time = std::fs::metadata(&kept).unwrap().modified().unwrap();
    std::fs::remove_file(&lost).unwrap();
    let refused = env
        .bash(&merge, &slurm, &[("SHARDS", n.to_string())])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stats-00001-of-00003"));
    run_array(&env, &recipe("slurm-task"), &slurm, n, |i| {
        vec![
            ("SLURM_ARRAY_TASK_ID", i.to_string()),
            ("SLURM_ARRAY_TASK_COUNT", n.to_string()),
        ]
    });
    assert!(lost.exists());
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        kept_time
    );
    check(
        "slurm merge after rerun",
        &env.bash(&merge, &slurm, &[("SHARDS", n.to_string())])
            .output()
            .unwrap(),
    );
    let merged = sae_engine::io::stats_file::read(&slurm.join("stats.safetensors")).unwrap();
    assert_same(&merged, &single, "slurm after rerun");

    // Kubernetes: 7 indices over 7 shard files, one file each.
    let k8s = tmp.path().join("k8s");
    let n = 7;
    run_array(&env, &recipe("k8s-task"), &k8s, n, |i| {
        vec![
            ("JOB_COMPLETION_INDEX", i.to_string()),
            ("SHARDS", n.to_string()),
        ]
    });
    check(
        "k8s merge",
        &env.bash(&recipe("k8s-merge"), &k8s, &[("SHARDS", n.to_string())])
            .output()
            .unwrap(),
    );
    let merged = sae_engine::io::stats_file::read(&k8s.join("stats.safetensors")).unwrap();
    assert_same(&merged, &single, "kubernetes");

    // More indices than shard files: the empty slice fails loudly, it does not count nothing.
    let over = env
        .bash(
            &recipe("k8s-task"),
            &tmp.path().join("over"),
            &[("JOB_COMPLETION_INDEX", "7".into()), ("SHARDS", "8".into())],
        )
        .output()
        .unwrap();
    assert!(
        !over.status.success(),
        "an index with no shard file must fail"
    );
}

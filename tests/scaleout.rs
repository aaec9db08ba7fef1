//! Multi-device fan-out of per-shard statistics (`sae_engine::scaleout`, `sae stats
//! --devices`): equal to one pass, failing devices and bad shards reported with the
//! shard and the device, finished units kept, and a rerun computing only what failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::SystemTime;

use crate::common::{acts_cmd, arg, run_sae, sae_exits, sae_json, sae_ok, write_dump_with};
use sae_engine::codes::{Codes, Denorm, Encoded};
use sae_engine::cpu::reference::SaeBuilder;
use sae_engine::io::mapped::OwnedTensor;
use sae_engine::io::npy::NpyDtype;
use sae_engine::scaleout::{
    shard_units, units_of_dump, Devices, FanOutOptions, FanOutReport, StatsJob,
};
use sae_engine::{
    Activation, BackendKind, Dump, Engine, EngineOptions, Error, LatentStats, Result, Sae,
};

const D: usize = 8;
const L: usize = 40;
/// Rows of the shard files; shard 3 is an .npy without a mask, the others have masks.
const SIZES: [usize; 5] = [37, 1, 64, 20, 50];

/// Deterministic pseudo-random values in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn test_sae(bias: f32) -> Sae {
    let w_enc = noise(1, L * D);
    let w_dec = noise(2, L * D);
    SaeBuilder::new(L, D, w_enc, w_dec)
        .b_enc(noise(3, L).iter().map(|v| v * 0.2 + bias).collect())
        .b_dec(noise(4, D))
        .subtract_b_dec(true)
        .activation(Activation::TopK { k: 5 })
        .build()
        .unwrap()
}

fn shard_name(i: usize) -> String {
    if i == 3 {
        format!("acts_{i:02}.npy")
    } else {
        format!("acts_{i:02}.safetensors")
    }
}

/// Writes shard `i` of the test dump into `dir` (overwriting it).
fn write_shard(dir: &Path, i: usize) -> PathBuf {
    let rows = SIZES[i];
    let acts: Vec<f32> = noise(100 + i as u64, rows * D)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let path = dir.join(shard_name(i));
    if i == 3 {
        sae_engine::io::npy::write(
            &path,
            NpyDtype::F32,
            &[rows, D],
            bytemuck::cast_slice(&acts),
        )
        .unwrap();
    } else {
        // Row 0 always counts, so the first batch of each shard is encoded.
        let mask: Vec<u8> = (0..rows).map(|r| (r % 4 != 3) as u8).collect();
        write_dump_with(
            &path,
            &acts,
            D,
            vec![("mask", OwnedTensor::u8(vec![rows], &mask))],
            &[],
        );
    }
    path
}

/// The test dump: the shards of [`SIZES`] in `dir`.
fn shards_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..SIZES.len() {
        write_shard(dir, i);
    }
    dir.to_path_buf()
}

/// A temporary directory with the test dump in `dump/`, and the test SAE.
fn setup() -> (tempfile::TempDir, PathBuf, Arc<Sae>) {
    let dir = tempfile::tempdir().unwrap();
    let dump = shards_dir(&dir.path().join("dump"));
    (dir, dump, Arc::new(test_sae(0.0)))
}

fn cpu_engine(sae: &Arc<Sae>) -> Result<Box<dyn Engine>> {
    sae_engine::engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default())
}

/// One pass over the whole dump on one engine: the reference.
fn single_pass(sae: &Arc<Sae>, dump: &Path, use_mask: bool) -> LatentStats {
    let dump = Dump::open(dump).unwrap();
    let engine = cpu_engine(sae).unwrap();
    sae_engine::pipeline::stats_of_dump(engine.as_ref(), &dump, 16, use_mask, &|_| {}).unwrap()
}

fn assert_same_stats(got: &LatentStats, want: &LatentStats) {
    assert_eq!(got.fingerprint, want.fingerprint);
    assert_eq!(got.n_tokens, want.n_tokens);
    assert_eq!(got.n_active, want.n_active);
    assert_eq!(got.max, want.max);
    // Token digests and norm histograms merge exactly.
    assert_eq!(got.tokens, want.tokens);
    assert_eq!(got.norms, want.norms);
    for (name, a, b) in [
        ("sum", &got.sum, &want.sum),
        ("sum_sq", &got.sum_sq, &want.sum_sq),
    ] {
        for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
            let tol = 1e-12 * x.abs().max(y.abs()).max(1e-300);
            assert!((x - y).abs() <= tol, "{name}[{i}]: {x} vs {y}");
        }
    }
    // The fixture must exercise the comparison: some latents fire.
    assert!(want.n_active.iter().filter(|a| **a > 0).count() > 5);
}

fn options(work: &Path, workers: usize, use_mask: bool) -> FanOutOptions {
    let mut o = FanOutOptions::new(
        work.to_path_buf(),
        Devices::parse(&format!("cpu:{workers}"))
            .unwrap()
            .names()
            .to_vec(),
    );
    o.batch_rows = 16;
    o.use_mask = use_mask;
    o
}

fn run_job(
    sae: &Arc<Sae>,
    dump: &Path,
    opts: FanOutOptions,
    factory: &(dyn Fn(usize) -> Result<Box<dyn Engine>> + Sync),
) -> (FanOutReport, Option<LatentStats>) {
    let units = shard_units(dump, None).unwrap();
    let job = StatsJob::plan(sae, units, opts).unwrap();
    let report = job.run(factory, &|_| {});
    let merged = report.ok().then(|| job.merge().unwrap());
    (report, merged)
}

/// `run_job` on two healthy CPU workers, with the mask.
fn run_on_cpus(sae: &Arc<Sae>, dump: &Path, work: &Path) -> (FanOutReport, Option<LatentStats>) {
    run_job(sae, dump, options(work, 2, true), &|_| cpu_engine(sae))
}

/// Modification times of the unit statistics files in `dir` (not their keys or the lock).
fn mtimes(dir: &Path) -> HashMap<String, SystemTime> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let e = e.as_ref().unwrap();
            e.file_name()
                .to_string_lossy()
                .ends_with(".stats.safetensors")
        })
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect()
}

/// Gives a shard new activations of the same shape, then sets its mtime back: size,
/// row count and mtime are those of the old file, only the content differs.
fn rewrite_keeping_mtime(path: &Path) {
    let old = std::fs::metadata(path).unwrap();
    let st = sae_engine::io::mapped::MappedSafetensors::open(path).unwrap();
    let rows = st.tensor("activations").unwrap().shape[0];
    drop(st);
    let acts: Vec<f32> = noise(999, rows * D).iter().map(|v| v * 3.0).collect();
    // The same mask as `write_shard`: the token count is kept as well.
    let mask: Vec<u8> = (0..rows).map(|r| (r % 4 != 3) as u8).collect();
    let side = vec![("mask", OwnedTensor::u8(vec![rows], &mask))];
    write_dump_with(path, &acts, D, side, &[]);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(old.modified().unwrap()).unwrap();
    let new = std::fs::metadata(path).unwrap();
    assert_eq!(
        (new.len(), new.modified().unwrap()),
        (old.len(), old.modified().unwrap())
    );
}

fn all_indices() -> Vec<usize> {
    (0..SIZES.len()).collect()
}

#[test]
fn fan_out_equals_single_pass_with_and_without_mask() {
    let (dir, dump, sae) = setup();
    for use_mask in [true, false] {
        let work = dir.path().join(format!("work-{use_mask}"));
        let rows_seen = AtomicUsize::new(0);
        let units = shard_units(&dump, None).unwrap();
        let job = StatsJob::plan(&sae, units, options(&work, 3, use_mask)).unwrap();
        assert_eq!(job.pending_rows(), SIZES.iter().sum::<usize>() as u64);
        let report = job.run(&|_| cpu_engine(&sae), &|n| {
            rows_seen.fetch_add(n as usize, Ordering::SeqCst);
        });
        assert!(report.ok(), "{:?}", report.failure_lines());
        assert_eq!(report.computed, all_indices());
        assert!(report.reused.is_empty());
        assert_eq!(report.workers.len(), 3);
        assert_eq!(
            report.workers.iter().map(|w| w.units).sum::<usize>(),
            SIZES.len()
        );
        assert_eq!(
            report.workers.iter().map(|w| w.rows).sum::<u64>(),
            SIZES.iter().sum::<usize>() as u64
        );
        assert_eq!(
            rows_seen.load(Ordering::SeqCst),
            SIZES.iter().sum::<usize>()
        );
        let out = dir.path().join(format!("stats-{use_mask}.safetensors"));
        let merged = job.merge_into(&out).unwrap();
        let want = single_pass(&sae, &dump, use_mask);
        assert_same_stats(&merged, &want);
        assert_same_stats(&sae_engine::io::stats_file::read(&out).unwrap(), &want);
        if use_mask {
            assert!(merged.n_tokens < SIZES.iter().sum::<usize>() as u64);
        }
        // One file per shard, named by index and stem.
        let files = job.unit_files();
        assert_eq!(files.len(), SIZES.len());
        assert!(files[3].ends_with("shard-00003-acts_03.stats.safetensors"));
        assert!(files.iter().all(|f| f.is_file()));
        job.remove_unit_files().unwrap();
        assert!(!work.exists());
    }
}

#[test]
fn units_of_an_opened_dump_equal_single_pass() {
    // Layouts only Dump::open understands become units of already-opened shards.
    let (dir, dump, sae) = setup();
    let units = units_of_dump(Dump::open(&dump).unwrap(), Some((0, 2))).unwrap();
    assert_eq!(
        units.iter().map(|u| u.index).collect::<Vec<_>>(),
        vec![0, 2, 4]
    );
    let mut units = units;
    units.extend(units_of_dump(Dump::open(&dump).unwrap(), Some((1, 2))).unwrap());
    let work = dir.path().join("work");
    let job = StatsJob::plan(&sae, units.clone(), options(&work, 2, true)).unwrap();
    let report = job.run(&|_| cpu_engine(&sae), &|_| {});
    assert!(report.ok(), "{:?}", report.failure_lines());
    assert_eq!(report.computed, all_indices());
    assert_same_stats(&job.merge().unwrap(), &single_pass(&sae, &dump, true));
    // Resume works the same for opened shards (once the first job let go of the folder).
    drop(job);
    let job = StatsJob::plan(&sae, units, options(&work, 2, true)).unwrap();
    assert!(job.pending().is_empty());
}

#[test]
fn shard_slices_compose_with_devices() {
    let (dir, dump, sae) = setup();
    let work = dir.path().join("work");
    let mut parts = Vec::new();
    for i in 0..2 {
        let units = shard_units(&dump, Some((i, 2))).unwrap();
        let idx: Vec<usize> = units.iter().map(|u| u.index).collect();
        assert_eq!(
            idx,
            (0..SIZES.len()).filter(|j| j % 2 == i).collect::<Vec<_>>()
        );
        // Both slices share one work directory: indices keep their files apart.
        let job = StatsJob::plan(&sae, units, options(&work, 2, true)).unwrap();
        let report = job.run(&|_| cpu_engine(&sae), &|_| {});
        assert_eq!(report.computed, idx);
        let out = dir.path().join(format!("part{i}.safetensors"));
        job.merge_into(&out).unwrap();
        parts.push(out);
    }
    let merged = sae_engine::pipeline::merge_stats_files(&parts).unwrap();
    assert_same_stats(&merged, &single_pass(&sae, &dump, true));
    assert!(shard_units(&dump, Some((5, 5))).is_err());
    let e = shard_units(&dump, Some((5, 6))).unwrap_err().to_string();
    assert!(e.contains("selects no file"), "{e}");
}

/// An engine that fails on every encode, as a device that died after the weights
/// were uploaded. Its first call meets the healthy workers' factories at `gate`, so
/// it is sure to hold a unit (the first in the queue) before they start pulling.
struct DeadDevice {
    inner: Box<dyn Engine>,
    gate: Arc<Barrier>,
    opened: AtomicBool,
}

impl Engine for DeadDevice {
    fn name(&self) -> String {
        "dead test device".into()
    }
    fn sae(&self) -> &Sae {
        self.inner.sae()
    }
    fn encode(&self, _x: &[f32], _rows: usize, _off: u64) -> Result<Encoded> {
        if !self.opened.swap(true, Ordering::SeqCst) {
            self.gate.wait();
        }
        Err(Error::Cuda(
            "simulated: an illegal memory access was encountered".into(),
        ))
    }
    fn decode(&self, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>> {
        self.inner.decode(codes, denorm)
    }
}

#[test]
fn failing_device_is_reported_and_a_rerun_computes_only_its_shard() {
    let (dir, dump, sae) = setup();
    let work = dir.path().join("work");
    let gate = Arc::new(Barrier::new(3));
    let built = AtomicUsize::new(0);
    // Worker 1 dies on its first batch; workers 0 and 2 are healthy but their engines
    // are ready only once worker 1 holds a unit (so it is shard 0, the first in the queue).
    let factory = |w: usize| -> Result<Box<dyn Engine>> {
        built.fetch_add(1, Ordering::SeqCst);
        if w == 1 {
            return Ok(Box::new(DeadDevice {
                inner: cpu_engine(&sae)?,
                gate: gate.clone(),
                opened: AtomicBool::new(false),
            }));
        }
        gate.wait();
        cpu_engine(&sae)
    };
    let (report, merged) = run_job(&sae, &dump, options(&work, 3, true), &factory);
    assert!(merged.is_none());
    assert!(!report.ok());
    assert_eq!(report.failures.len(), 1, "{:?}", report.failure_lines());
    let f = &report.failures[0];
    assert_eq!((f.index, f.worker, f.device.as_str()), (0, 1, "cpu#1"));
    assert!(f.device_fault);
    assert!(f.shard.ends_with("acts_00.safetensors"));
    assert!(f.message.contains("illegal memory access"), "{}", f.message);
    assert!(report.not_run.is_empty());
    assert_eq!(report.computed, vec![1, 2, 3, 4]);
    let w1 = &report.workers[1];
    assert_eq!(w1.units, 0);
    assert!(w1.failure.as_deref().unwrap().contains("shard 0"));
    assert!(report.workers[0].failure.is_none() && report.workers[2].failure.is_none());
    let lines = report.failure_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("acts_00.safetensors") && lines[0].contains("cpu#1"),
        "{}",
        lines[0]
    );
    // The healthy devices' units are kept; the failed one has no file.
    let before = mtimes(&work);
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(!before.contains_key("shard-00000-acts_00.stats.safetensors"));

    // Rerun with every device healthy: only shard 0 is computed.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (report, merged) = run_on_cpus(&sae, &dump, &work);
    assert!(report.ok(), "{:?}", report.failure_lines());
    assert_eq!(report.computed, vec![0]);
    assert_eq!(report.reused, vec![1, 2, 3, 4]);
    assert_eq!(report.workers.iter().map(|w| w.units).sum::<usize>(), 1);
    let after = mtimes(&work);
    for (name, t) in &before {
        assert_eq!(after[name], *t, "{name} was rewritten");
    }
    assert_same_stats(&merged.unwrap(), &single_pass(&sae, &dump, true));

    // A third run has nothing to compute and builds no engine at all.
    let n = built.load(Ordering::SeqCst);
    let (report, merged) = run_job(&sae, &dump, options(&work, 3, true), &factory);
    assert!(report.ok() && report.computed.is_empty() && report.reused.len() == SIZES.len());
    assert!(report.workers.is_empty());
    assert_eq!(built.load(Ordering::SeqCst), n);
    assert!(merged.is_some());
}

#[test]
fn devices_that_cannot_start_leave_their_share_to_the_others() {
    let (dir, dump, sae) = setup();
    let unavailable = || Error::BackendUnavailable("simulated: no CUDA driver".into());
    let opts = |work: &str| options(&dir.path().join(work), 2, true);
    // One of two devices fails to start: everything runs on the other.
    let (report, merged) = run_job(&sae, &dump, opts("w1"), &|w| {
        if w == 0 {
            Err(unavailable())
        } else {
            cpu_engine(&sae)
        }
    });
    assert!(report.ok());
    assert_eq!(report.workers[1].units, SIZES.len());
    assert!(report.workers[0].backend.is_none());
    let setup = report.device_setup_failures();
    assert_eq!(setup.len(), 1);
    assert!(
        setup[0].contains("cpu#0") && setup[0].contains("no CUDA driver"),
        "{setup:?}"
    );
    assert_same_stats(&merged.unwrap(), &single_pass(&sae, &dump, true));

    // No device starts: every shard is reported as not run, plus one line per device.
    let (report, merged) = run_job(&sae, &dump, opts("w2"), &|_| Err(unavailable()));
    assert!(merged.is_none() && !report.ok());
    assert_eq!(report.not_run.len(), SIZES.len());
    let lines = report.failure_lines();
    assert_eq!(lines.len(), SIZES.len() + 2, "{lines:?}");
    assert!(lines[2].contains("acts_02.safetensors") && lines[2].contains("not run"));
    assert!(lines[SIZES.len()].starts_with("device cpu#0"));

    // A panicking factory is a device failure too, not a crash.
    let (report, _) = run_job(&sae, &dump, opts("w3"), &|w| {
        if w == 0 {
            panic!("driver bug")
        } else {
            cpu_engine(&sae)
        }
    });
    assert!(report.ok());
    assert!(report.workers[0]
        .failure
        .as_deref()
        .unwrap()
        .contains("driver bug"));
}

#[test]
fn bad_shards_fail_only_their_unit_and_are_recomputed_once_fixed() {
    let (dir, dump, sae) = setup();
    let work = dir.path().join("work");
    // Shard 2 truncated; shard 4 holds a NaN in its row 7.
    let p2 = dump.join(shard_name(2));
    let bytes = std::fs::read(&p2).unwrap();
    std::fs::write(&p2, &bytes[..bytes.len() / 2]).unwrap();
    let p4 = dump.join(shard_name(4));
    let mut acts: Vec<f32> = noise(104, SIZES[4] * D).iter().map(|v| v * 3.0).collect();
    acts[7 * D + 2] = f32::NAN;
    write_dump_with(&p4, &acts, D, Vec::new(), &[]);

    let (report, merged) = run_on_cpus(&sae, &dump, &work);
    assert!(merged.is_none());
    let failed: Vec<usize> = report.failures.iter().map(|f| f.index).collect();
    assert_eq!(failed, vec![2, 4], "{:?}", report.failure_lines());
    // Data problems do not stop a device.
    assert!(report.failures.iter().all(|f| !f.device_fault));
    assert!(report.workers.iter().all(|w| w.failure.is_none()));
    assert_eq!(report.computed, vec![0, 1, 3]);
    let lines = report.failure_lines();
    assert!(lines[0].contains("acts_02.safetensors"), "{}", lines[0]);
    assert!(lines[1].contains("acts_04.safetensors") && lines[1].contains("row 7"));
    assert!(lines.iter().all(|l| l.contains("cpu#")));
    assert_eq!(mtimes(&work).len(), 3);

    // Fix both shards: the rerun computes exactly those two.
    write_shard(&dump, 2);
    write_shard(&dump, 4);
    let (report, merged) = run_on_cpus(&sae, &dump, &work);
    assert!(report.ok(), "{:?}", report.failure_lines());
    assert_eq!(report.computed, vec![2, 4]);
    assert_eq!(report.reused, vec![0, 1, 3]);
    assert_same_stats(&merged.unwrap(), &single_pass(&sae, &dump, true));
}

#[test]
fn stale_unit_files_are_recomputed() {
    let (dir, dump, sae) = setup();
    let work = dir.path().join("work");
    let (report, _) = run_on_cpus(&sae, &dump, &work);
    assert!(report.ok());

    // Another SAE: no file is reused, and the notes say why.
    let other = Arc::new(test_sae(0.5));
    let units = shard_units(&dump, None).unwrap();
    let job = StatsJob::plan(&other, units.clone(), options(&work, 2, true)).unwrap();
    assert_eq!(job.pending().len(), SIZES.len());
    assert!(job.notes()[0].contains("fingerprint"), "{:?}", job.notes());
    drop(job);

    // The same SAE without the mask: the token rule is part of every unit's key.
    let job = StatsJob::plan(&sae, units.clone(), options(&work, 2, false)).unwrap();
    assert_eq!(job.pending().len(), SIZES.len());
    assert!(
        job.notes().iter().all(|n| n.contains("use_mask")),
        "{:?}",
        job.notes()
    );
    drop(job);

    // The same content rewritten later (a copy, a touch): reused without recomputing.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_shard(&dump, 0);
    // A shard whose content changed with its size, row count and mtime kept, and a
    // unit file that is garbage.
    rewrite_keeping_mtime(&dump.join(shard_name(1)));
    std::fs::write(work.join("shard-00003-acts_03.stats.safetensors"), b"junk").unwrap();
    let job = StatsJob::plan(&sae, units, options(&work, 2, true)).unwrap();
    let pending: Vec<usize> = job.pending().iter().map(|u| u.index).collect();
    assert_eq!(pending, vec![1, 3], "{:?}", job.notes());
    assert!(
        job.notes()[0].contains("content changed"),
        "{:?}",
        job.notes()
    );
    assert!(job.notes()[1].contains("unreadable"), "{:?}", job.notes());
    let report = job.run(&|_| cpu_engine(&sae), &|_| {});
    assert_eq!(report.computed, vec![1, 3]);
    assert_same_stats(&job.merge().unwrap(), &single_pass(&sae, &dump, true));
}

// ---- CLI ----

/// `setup()` with the SAE also written in the SAELens layout to `sae/`, as the CLI
/// reads it; returns the directory, the dump and the SAE directory.
fn cli_setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, dump, sae) = setup();
    let sae_dir = dir.path().join("sae");
    sae_engine::formats::write_saelens(&sae, &sae_dir).unwrap();
    (dir, dump, sae_dir)
}

#[test]
fn cli_stats_devices_equals_single_pass_and_resumes() {
    let (dir, dump, sae_dir) = cli_setup();
    let whole = dir.path().join("whole.safetensors");
    let quiet_cpu = ["--quiet", "--backend", "cpu"];
    sae_ok(&acts_cmd("stats", &sae_dir, &dump, &whole, &quiet_cpu));
    let want = sae_engine::io::stats_file::read(&whole).unwrap();

    let fan = dir.path().join("fan.safetensors");
    let two_cpus = ["--devices", "cpu,cpu", "--json", "--batch-size", "7"];
    let j = sae_json(&acts_cmd("stats", &sae_dir, &dump, &fan, &two_cpus));
    assert_eq!(j["computed"].as_array().unwrap().len(), SIZES.len());
    assert_eq!(j["devices"].as_array().unwrap().len(), 2);
    assert_eq!(j["devices"][0]["device"], "cpu#0");
    assert!(j["devices"][0]["rows_per_second"].as_f64().is_some());
    assert_eq!(j["n_tokens"], want.n_tokens);
    assert_same_stats(&sae_engine::io::stats_file::read(&fan).unwrap(), &want);
    // Unit files are removed after a successful merge by default.
    assert!(!dir.path().join("fan.safetensors.units").exists());

    // A truncated shard: exit 1, one line naming the shard and the device, units kept.
    let p2 = dump.join(shard_name(2));
    let bytes = std::fs::read(&p2).unwrap();
    std::fs::write(&p2, &bytes[..40]).unwrap();
    let work = dir.path().join("work");
    let fan2 = dir.path().join("fan2.safetensors");
    let w = arg(&work);
    let kept = ["--devices", "cpu:2", "--work-dir", w, "--keep-units"];
    let args = acts_cmd("stats", &sae_dir, &dump, &fan2, &kept);
    let err = sae_exits(1, &args);
    let failed: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("sae: failed: "))
        .collect();
    assert_eq!(failed.len(), 1, "{err}");
    assert!(
        failed[0].contains("acts_02.safetensors") && failed[0].contains("cpu#"),
        "{err}"
    );
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("sae: error: 1 of 5"),
        "{err}"
    );
    assert!(!fan2.exists());
    assert_eq!(mtimes(&work).len(), 4);

    // Fixed: the rerun computes shard 2 only and keeps the unit files.
    write_shard(&dump, 2);
    let mut rerun = vec!["--json"];
    rerun.extend_from_slice(&args);
    let j = sae_json(&rerun);
    assert_eq!(j["computed"], serde_json::json!([2]));
    assert_eq!(j["reused"], serde_json::json!([0, 1, 3, 4]));
    assert_same_stats(&sae_engine::io::stats_file::read(&fan2).unwrap(), &want);
    assert_eq!(mtimes(&work).len(), 5);

    // Composes with --shard I/N.
    let part = dir.path().join("part.safetensors");
    let sliced = ["--json", "--devices", "cpu:2", "--shard", "1/2"];
    let j = sae_json(&acts_cmd("stats", &sae_dir, &dump, &part, &sliced));
    assert_eq!(j["computed"], serde_json::json!([1, 3]));

    // Usage errors: a device listed twice, --work-dir without --devices.
    for bad in [
        vec!["--devices", "0,0"],
        vec!["--devices", "cpu:0"],
        vec!["--work-dir", "w"],
    ] {
        let a = acts_cmd("stats", &sae_dir, &dump, &part, &bad);
        assert_eq!(run_sae(&a).status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn cli_unavailable_cuda_devices_fail_naming_every_shard() {
    let (dir, dump, sae_dir) = cli_setup();
    let out_path = dir.path().join("o.safetensors");
    // Only meaningful where CUDA cannot start (the test suite runs without a GPU).
    if sae_engine::engine(
        BackendKind::Cuda { device: 0 },
        Arc::new(test_sae(0.0)),
        &EngineOptions::default(),
    )
    .is_ok()
    {
        eprintln!("skipped: a CUDA device is usable here");
        return;
    }
    let cuda_0_1 = ["--devices", "0,1"];
    let err = sae_exits(1, &acts_cmd("stats", &sae_dir, &dump, &out_path, &cuda_0_1));
    assert_eq!(err.matches("not run").count(), SIZES.len(), "{err}");
    assert!(
        err.contains("device cuda:0") && err.contains("device cuda:1"),
        "{err}"
    );
    assert!(!out_path.exists());
}

#[test]
fn cli_a_shard_changed_under_the_same_mtime_is_recomputed() {
    // The case: contents changed, mtime and row count kept; reuse gave
    // "0 computed, 4 reused" and n_active off against a fresh pass.
    let (dir, dump, sae_dir) = cli_setup();
    let work = dir.path().join("work");
    let out = dir.path().join("fan.safetensors");
    let args = [
        "--json",
        "--devices",
        "cpu:2",
        "--work-dir",
        arg(&work),
        "--keep-units",
    ];
    let j = sae_json(&acts_cmd("stats", &sae_dir, &dump, &out, &args));
    assert_eq!(j["computed"].as_array().unwrap().len(), SIZES.len());
    let j = sae_json(&acts_cmd("stats", &sae_dir, &dump, &out, &args));
    assert_eq!(j["reused"].as_array().unwrap().len(), SIZES.len(), "{j}");

    rewrite_keeping_mtime(&dump.join(shard_name(2)));
    let j = sae_json(&acts_cmd("stats", &sae_dir, &dump, &out, &args));
    assert_eq!(j["computed"], serde_json::json!([2]), "{j}");
    assert_eq!(j["reused"], serde_json::json!([0, 1, 3, 4]));
    let fresh = dir.path().join("fresh.safetensors");
    sae_ok(&acts_cmd(
        "stats",
        &sae_dir,
        &dump,
        &fresh,
        &["--quiet", "--backend", "cpu"],
    ));
    assert_same_stats(
        &sae_engine::io::stats_file::read(&out).unwrap(),
        &sae_engine::io::stats_file::read(&fresh).unwrap(),
    );
    // An option that changes results is part of the key: nothing is reused.
    let mut fast = args.to_vec();
    fast.extend(["--precision", "fast"]);
    let j = sae_json(&acts_cmd("stats", &sae_dir, &dump, &out, &fast));
    assert_eq!(j["computed"].as_array().unwrap().len(), SIZES.len(), "{j}");
}

#[test]
fn cli_two_runs_cannot_share_a_work_folder() {
    let (dir, dump, sae_dir) = cli_setup();
    let out = dir.path().join("fan.safetensors");
    let work = dir.path().join("fan.safetensors.units");
    // This test process holds the folder, as a concurrent `sae stats --devices` would.
    let sae = test_sae(0.0);
    let units = shard_units(&dump, None).unwrap();
    let held = StatsJob::plan(&sae, units.clone(), options(&work, 1, true)).unwrap();
    let err = sae_exits(
        1,
        &acts_cmd("stats", &sae_dir, &dump, &out, &["--devices", "cpu"]),
    );
    assert!(err.contains(arg(&work)) && err.contains("in use"), "{err}");
    let holder = sae_engine::scaleout::lock::holder_id();
    assert!(err.contains(&holder), "names the holder {holder}: {err}");
    assert!(!out.exists());
    // In the library the second plan fails the same way, and works once the first is done.
    let e = StatsJob::plan(&sae, units.clone(), options(&work, 1, true)).unwrap_err();
    assert!(e.to_string().contains(&holder), "{e}");
    drop(held);
    sae_ok(&acts_cmd(
        "stats",
        &sae_dir,
        &dump,
        &out,
        &["--devices", "cpu"],
    ));
    assert!(
        !work.exists(),
        "the work folder and its lock are removed after the merge"
    );
}

//! Several devices in one process: a dump's shard files are fanned out over workers
//! (one thread and one [`Engine`] per device), each unit's statistics are written to
//! its own file, and the unit files are merged in shard order.
//!
//! Robust and resumable:
//! - every shard file is one unit, written atomically to
//!   `WORK_DIR/shard-<index>-<stem>.stats.safetensors`;
//! - a device whose engine cannot be built, or whose engine fails on a batch, stops
//!   taking work (the failure is recorded with the shard file and the device); the
//!   remaining units go to the healthy devices. A bad shard (unreadable, wrong width,
//!   NaN) fails only its unit: the device keeps working;
//! - a rerun skips units whose file is already there and was computed from the same
//!   content: the shard's full-file hash (xxh3-128, cached by size, mtime, ctime and
//!   inode so an unchanged shard is not read again), the SAE fingerprint and the options
//!   that change results (see [`reuse`]); so only failed or changed units run;
//! - one job per work folder: a second run on the same folder fails at once, naming
//!   the folder and the holder (see [`lock`]).
//!
//! The merge reads unit files in shard order, so the result does not depend on which
//! device computed what.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use sae_engine::scaleout::{shard_units, Devices, FanOutOptions, StatsJob};
//! # fn main() -> sae_engine::Result<()> {
//! let sae = Arc::new(sae_engine::formats::load("sae_dir", None)?);
//! let devices = Devices::parse("0,1")?;
//! let units = shard_units("dump_dir".as_ref(), None)?;
//! let opts = FanOutOptions::new("work".into(), devices.names().to_vec());
//! let job = StatsJob::plan(&sae, units, opts)?;
//! let eopts = sae_engine::EngineOptions::default();
//! let factory = |w: usize| sae_engine::engine(devices.kinds()[w], sae.clone(), &eopts);
//! let report = job.run(&factory, &|_rows| {});
//! if report.ok() {
//!     job.merge_into("stats.safetensors".as_ref())?;
//! } else {
//!     for line in report.failure_lines() { eprintln!("{line}"); }
//! }
//! # Ok(()) }
//! ```

use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::{BackendKind, Engine};
use crate::codes::{Codes, Denorm, Encoded};
use crate::dump::{open_shard, Dump, Shard};
use crate::error::{Error, Result};
use crate::sae::Sae;
use crate::stats::LatentStats;

pub mod lock;
pub mod reuse;

use lock::WorkLock;
use reuse::UnitKey;

/// Most CPU workers `cpu:N` may ask for (each is a thread sharing the rayon pool).
const MAX_CPU_WORKERS: usize = 256;

/// The devices a fan-out runs on: one worker per entry, with a label for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    kinds: Vec<BackendKind>,
    names: Vec<String>,
}

impl Devices {
    /// Parses a `--devices` list: comma-separated CUDA device indices (`0,1` or
    /// `cuda:0,cuda:1`), `cpu` for one CPU worker, `cpu:N` for N CPU workers.
    /// A CUDA device listed twice is an error (two copies of the weights on one card).
    pub fn parse(s: &str) -> Result<Devices> {
        let bad = |what: &str| {
            Error::invalid(format!(
                "--devices `{s}`: {what}; expected a comma-separated list of CUDA device \
                 indices (0,1 or cuda:0,cuda:1), cpu, or cpu:N for N CPU workers"
            ))
        };
        let mut kinds = Vec::new();
        let mut seen = HashSet::new();
        for item in s.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(bad("empty entry"));
            }
            if item == "cpu" {
                kinds.push(BackendKind::Cpu);
            } else if let Some(n) = item.strip_prefix("cpu:") {
                let n: usize = n
                    .parse()
                    .map_err(|_| bad(&format!("`{item}` is not cpu:N")))?;
                if n == 0 || n > MAX_CPU_WORKERS {
                    return Err(bad(&format!("`{item}`: N must be 1..={MAX_CPU_WORKERS}")));
                }
                kinds.extend(std::iter::repeat_n(BackendKind::Cpu, n));
            } else {
                let index = item.strip_prefix("cuda:").unwrap_or(item);
                let device: usize = index
                    .parse()
                    .map_err(|_| bad(&format!("`{item}` is not a device")))?;
                if !seen.insert(device) {
                    return Err(bad(&format!("CUDA device {device} is listed twice")));
                }
                kinds.push(BackendKind::Cuda { device });
            }
        }
        if kinds.len() > MAX_CPU_WORKERS {
            return Err(bad(&format!("more than {MAX_CPU_WORKERS} workers")));
        }
        Ok(Devices::from_kinds(kinds))
    }

    /// One worker per backend; labels `cuda:N`, and `cpu#0`, `cpu#1`, ... for CPU workers.
    pub fn from_kinds(kinds: Vec<BackendKind>) -> Devices {
        let mut cpu = 0;
        let names = kinds
            .iter()
            .map(|k| match k {
                BackendKind::Cpu => {
                    cpu += 1;
                    format!("cpu#{}", cpu - 1)
                }
                BackendKind::Cuda { device } => format!("cuda:{device}"),
                BackendKind::Auto => "auto".to_string(),
            })
            .collect();
        Devices { kinds, names }
    }

    /// The backend of each worker.
    pub fn kinds(&self) -> &[BackendKind] {
        &self.kinds
    }
    /// The label of each worker (used in reports and failure lines).
    pub fn names(&self) -> &[String] {
        &self.names
    }
    /// Number of workers.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }
    /// Always false for a parsed list.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

/// One unit of work: a shard and its position in the whole dump.
#[derive(Clone, serde::Serialize)]
pub struct Unit {
    /// 0-based position of the shard in the dump (read order), independent of `--shard`.
    pub index: usize,
    /// The shard's file.
    pub path: PathBuf,
    /// The shard when it was opened up front (layouts only `Dump::open` understands);
    /// else the file is opened by its extension when the unit runs.
    #[serde(skip)]
    opened: Option<Arc<dyn Shard>>,
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("index", &self.index)
            .field("path", &self.path)
            .field("opened", &self.opened.is_some())
            .finish()
    }
}

impl PartialEq for Unit {
    fn eq(&self, other: &Unit) -> bool {
        self.index == other.index && self.path == other.path
    }
}

impl Unit {
    /// A shard file (`.npy`, `.safetensors`) opened only when the unit runs.
    pub fn file(index: usize, path: PathBuf) -> Unit {
        Unit {
            index,
            path,
            opened: None,
        }
    }

    /// An already-opened shard.
    pub fn opened(index: usize, shard: Box<dyn Shard>) -> Unit {
        Unit {
            index,
            path: shard.path().to_path_buf(),
            opened: Some(Arc::from(shard)),
        }
    }

    /// The unit's shard, opening its file if it was not opened up front.
    pub fn open(&self) -> Result<Box<dyn Shard>> {
        match &self.opened {
            Some(s) => Ok(Box::new(SharedShard(s.clone()))),
            None => open_shard(&self.path),
        }
    }

    /// File name of this unit's statistics inside the work directory.
    pub fn stats_file_name(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "shard".into());
        format!("shard-{:05}-{stem}.stats.safetensors", self.index)
    }

    /// File name of this unit's content key (see [`reuse`]) inside the work directory.
    pub fn key_file_name(&self) -> String {
        let stats = self.stats_file_name();
        format!("{}.json", stats.trim_end_matches(".safetensors"))
    }
}

/// A shard shared between the plan and a worker (`Dump::from_shards` wants a box).
struct SharedShard(Arc<dyn Shard>);

impl Shard for SharedShard {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn n_rows(&self) -> usize {
        self.0.n_rows()
    }
    fn width(&self) -> usize {
        self.0.width()
    }
    fn dtype(&self) -> crate::dtype::DType {
        self.0.dtype()
    }
    fn read_rows(&self, start: usize, count: usize, out: &mut [f32]) -> Result<()> {
        self.0.read_rows(start, count, out)
    }
    fn token_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        self.0.token_ids(start, count)
    }
    fn doc_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        self.0.doc_ids(start, count)
    }
    fn mask(&self, start: usize, count: usize) -> Result<Option<Vec<u8>>> {
        self.0.mask(start, count)
    }
    fn release(&self, end: usize) {
        self.0.release(end)
    }
}

/// The shards of a dump as units, in the order `Dump::open` reads them. A directory
/// of `.npy` / `.safetensors` files (or one such file) gives one unit per file, opened
/// only when it runs, so one damaged shard fails only its own unit; any other layout
/// `Dump::open` understands is opened up front. With `shard = Some((i, n))`, only
/// shards `i, i + n, ...` (as `sae stats --shard I/N`).
pub fn shard_units(acts: &Path, shard: Option<(usize, usize)>) -> Result<Vec<Unit>> {
    let meta = std::fs::metadata(acts).map_err(|e| Error::io(acts, e))?;
    let units = if meta.is_dir() {
        // The files Dump::open would read, in its order, so unit indices match shard indices.
        let files = crate::dump::shard_files(acts)?.unwrap_or_default();
        if files.is_empty() {
            return units_of_dump(Dump::open(acts)?, shard);
        }
        files
            .into_iter()
            .enumerate()
            .map(|(i, p)| Unit::file(i, p))
            .collect()
    } else {
        vec![Unit::file(0, acts.to_path_buf())]
    };
    select(acts, units, shard)
}

/// The shards of an opened dump as units (see [`shard_units`]).
pub fn units_of_dump(dump: Dump, shard: Option<(usize, usize)>) -> Result<Vec<Unit>> {
    let path = dump.path().to_path_buf();
    let units = dump
        .into_shards()
        .into_iter()
        .enumerate()
        .map(|(i, s)| Unit::opened(i, s))
        .collect();
    select(&path, units, shard)
}

/// Keeps units `i, i + n, ...` of `Some((i, n))`.
fn select(acts: &Path, units: Vec<Unit>, shard: Option<(usize, usize)>) -> Result<Vec<Unit>> {
    let Some((i, n)) = shard else {
        return Ok(units);
    };
    if n == 0 || i >= n {
        return Err(Error::invalid(format!("shard {i}/{n}: need 0 <= I < N")));
    }
    let total = units.len();
    let units: Vec<Unit> = units.into_iter().filter(|u| u.index % n == i).collect();
    if units.is_empty() {
        return Err(Error::invalid(format!(
            "{}: shard {i}/{n} selects no file (the dump has {})",
            acts.display(),
            crate::plural::count(total as u64, "shard file")
        )));
    }
    Ok(units)
}

/// Where and how the units run.
#[derive(Debug, Clone)]
pub struct FanOutOptions {
    /// Directory of the unit files (created when missing).
    pub work_dir: PathBuf,
    /// Rows per batch.
    pub batch_rows: usize,
    /// Honor the dumps' `mask` (as `stats_of_dump`).
    pub use_mask: bool,
    /// One label per worker; the number of workers is its length.
    pub worker_names: Vec<String>,
    /// Engine settings that change results (e.g. `precision=Fast`): recorded with each
    /// unit and compared on reuse, like the mask rule and the SAE fingerprint.
    pub result_options: String,
}

impl FanOutOptions {
    /// Every option that changes a unit's statistics, as recorded in its content key.
    pub fn results_key(&self) -> String {
        format!("use_mask={};{}", self.use_mask, self.result_options)
    }

    /// Defaults: 4096 rows per batch, mask honored.
    pub fn new(work_dir: PathBuf, worker_names: Vec<String>) -> FanOutOptions {
        FanOutOptions {
            work_dir,
            batch_rows: 4096,
            use_mask: true,
            worker_names,
            result_options: String::new(),
        }
    }
}

/// A unit that failed, with the device it ran on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UnitFailure {
    /// The unit's shard index.
    pub index: usize,
    /// The shard file.
    pub shard: PathBuf,
    /// Worker index and its label.
    pub worker: usize,
    /// The worker's label.
    pub device: String,
    /// True when the engine failed (the device then stopped taking work); false for
    /// a problem of the shard itself (unreadable, wrong width, NaN) or of writing.
    pub device_fault: bool,
    /// The error, one line.
    pub message: String,
}

/// What one worker did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkerReport {
    /// Worker index.
    pub worker: usize,
    /// The worker's label (`cuda:1`, `cpu#0`).
    pub device: String,
    /// `Engine::name()` once the engine was built.
    pub backend: Option<String>,
    /// Units computed successfully.
    pub units: usize,
    /// Rows read by those units.
    pub rows: u64,
    /// Seconds spent building the engine (weights upload).
    pub setup_seconds: f64,
    /// Seconds spent on units (successful or not).
    pub busy_seconds: f64,
    /// `rows / busy_seconds` of the successful units.
    pub rows_per_second: f64,
    /// Why the device stopped taking work, if it did.
    pub failure: Option<String>,
}

/// The outcome of [`StatsJob::run`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FanOutReport {
    /// Units in the job.
    pub n_units: usize,
    /// Shard indices computed in this run, ascending.
    pub computed: Vec<usize>,
    /// Shard indices whose unit file from an earlier run was reused, ascending.
    pub reused: Vec<usize>,
    /// Units that failed, by shard index.
    pub failures: Vec<UnitFailure>,
    /// Units that no healthy device was left to take, by shard index.
    pub not_run: Vec<Unit>,
    /// One report per worker.
    pub workers: Vec<WorkerReport>,
}

impl FanOutReport {
    /// True when every unit has its statistics file (the merge can run).
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.not_run.is_empty()
    }

    /// One line per failed or not-run unit, naming the shard file and the device,
    /// then one per device that failed before taking a unit.
    pub fn failure_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .failures
            .iter()
            .map(|f| {
                format!(
                    "shard {} ({}) failed on {}{}: {}",
                    f.index,
                    f.shard.display(),
                    f.device,
                    if f.device_fault {
                        " (device stopped)"
                    } else {
                        ""
                    },
                    f.message
                )
            })
            .collect();
        lines.extend(self.not_run.iter().map(|u| {
            format!(
                "shard {} ({}) not run: no healthy device left",
                u.index,
                u.path.display()
            )
        }));
        lines.extend(self.device_setup_failures());
        lines
    }

    /// Devices that failed before computing anything (engine not built), one line each.
    pub fn device_setup_failures(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter(|w| w.backend.is_none())
            .filter_map(|w| {
                w.failure
                    .as_ref()
                    .map(|m| format!("device {}: {m}", w.device))
            })
            .collect()
    }
}

/// A planned statistics fan-out: the units, which of them an earlier run already
/// finished, and where the unit files go.
#[derive(Debug)]
pub struct StatsJob<'a> {
    sae: &'a Sae,
    fingerprint: String,
    units: Vec<Unit>,
    opts: FanOutOptions,
    /// Positions in `units` still to compute.
    pending: Vec<usize>,
    /// Positions in `units` whose file is reused.
    reused: Vec<usize>,
    notes: Vec<String>,
    pending_rows: u64,
    /// Held while the job lives: no other job uses the work folder meanwhile.
    lock: WorkLock,
}

impl<'a> StatsJob<'a> {
    /// Creates the work directory, takes its lock (failing at once when another job
    /// holds it) and checks the unit files already there: a file is reused when its
    /// content key matches (same shard content, SAE fingerprint and options) and it
    /// reads back with the SAE's fingerprint, latent count and the shard's token count.
    pub fn plan(sae: &'a Sae, units: Vec<Unit>, opts: FanOutOptions) -> Result<StatsJob<'a>> {
        if opts.worker_names.is_empty() {
            return Err(Error::invalid("a fan-out needs at least one device"));
        }
        let mut seen = HashSet::new();
        if let Some(u) = units.iter().find(|u| !seen.insert(u.index)) {
            return Err(Error::invalid(format!(
                "shard index {} appears twice in the units",
                u.index
            )));
        }
        std::fs::create_dir_all(&opts.work_dir).map_err(|e| Error::io(&opts.work_dir, e))?;
        let lock = WorkLock::acquire(&opts.work_dir)?;
        let fingerprint = sae.fingerprint();
        let (mut pending, mut reused, mut notes) = (Vec::new(), Vec::new(), Vec::new());
        let mut pending_rows = 0u64;
        for (pos, u) in units.iter().enumerate() {
            let file = opts.work_dir.join(u.stats_file_name());
            match reusable(sae, &fingerprint, u, &opts, &file) {
                Ok(()) => reused.push(pos),
                Err(why) => {
                    if let Some(why) = why {
                        notes.push(format!("{}: recomputing ({why})", file.display()));
                    }
                    // A shard that does not open contributes no rows to the progress
                    // total; its unit fails in a worker with the real error.
                    pending_rows += u.open().map_or(0, |s| s.n_rows() as u64);
                    pending.push(pos);
                }
            }
        }
        Ok(StatsJob {
            sae,
            fingerprint,
            units,
            opts,
            pending,
            reused,
            notes,
            pending_rows,
            lock,
        })
    }

    /// All units of the job, in shard order.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }
    /// Units still to compute.
    pub fn pending(&self) -> Vec<&Unit> {
        self.pending.iter().map(|p| &self.units[*p]).collect()
    }
    /// Rows of the pending units (for a progress bar).
    pub fn pending_rows(&self) -> u64 {
        self.pending_rows
    }
    /// Why existing unit files are not reused (stale fingerprint, token count, ...).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
    /// The unit files in shard order.
    pub fn unit_files(&self) -> Vec<PathBuf> {
        self.units
            .iter()
            .map(|u| self.opts.work_dir.join(u.stats_file_name()))
            .collect()
    }

    /// Computes the pending units: one thread per worker, each building its engine
    /// with `factory(worker)` and pulling units from a shared queue. Never fails as a
    /// whole: failures are in the report. `progress` receives rows as they finish.
    pub fn run(
        &self,
        factory: &(dyn Fn(usize) -> Result<Box<dyn Engine>> + Sync),
        progress: &(dyn Fn(u64) + Sync),
    ) -> FanOutReport {
        let next = AtomicUsize::new(0);
        let done = Mutex::new(Vec::new());
        let failures = Mutex::new(Vec::new());
        let mut workers: Vec<WorkerReport> = if self.pending.is_empty() {
            // Nothing to compute: no engine is built (weights are not even uploaded).
            Vec::new()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..self.opts.worker_names.len())
                    .map(|w| {
                        let ctx = WorkerCtx {
                            job: self,
                            worker: w,
                            next: &next,
                            done: &done,
                            failures: &failures,
                        };
                        scope.spawn(move || ctx.run(factory, progress))
                    })
                    .collect();
                handles
                    .into_iter()
                    .enumerate()
                    .map(|(w, h)| {
                        // Worker bodies catch panics themselves; this is a last resort.
                        h.join().unwrap_or_else(|_| WorkerReport {
                            failure: Some("worker thread panicked".into()),
                            ..WorkerReport::empty(w, &self.opts.worker_names[w])
                        })
                    })
                    .collect()
            })
        };
        workers.sort_by_key(|w| w.worker);
        let claimed = next.load(Ordering::SeqCst).min(self.pending.len());
        let not_run = self.pending[claimed..]
            .iter()
            .map(|p| self.units[*p].clone())
            .collect();
        let mut computed = done.into_inner().unwrap_or_else(|e| e.into_inner());
        computed.sort_unstable();
        let mut failures: Vec<UnitFailure> =
            failures.into_inner().unwrap_or_else(|e| e.into_inner());
        failures.sort_by_key(|f| f.index);
        let mut reused: Vec<usize> = self.reused.iter().map(|p| self.units[*p].index).collect();
        reused.sort_unstable();
        FanOutReport {
            n_units: self.units.len(),
            computed,
            reused,
            failures,
            not_run,
            workers,
        }
    }

    /// Merges every unit file in shard order (deterministic whatever device ran what),
    /// checks the total against the SAE and writes `out` atomically.
    pub fn merge(&self) -> Result<LatentStats> {
        let merged = crate::pipeline::merge_stats_files(&self.unit_files())?;
        if merged.fingerprint != self.fingerprint || merged.n_latents() != self.sae.n_latents() {
            return Err(Error::Incompatible(format!(
                "{}: unit files do not belong to the SAE (fingerprint {}, {} latents)",
                self.opts.work_dir.display(),
                self.fingerprint,
                self.sae.n_latents()
            )));
        }
        Ok(merged)
    }

    /// [`merge`](Self::merge), then writes the result to `out` atomically.
    pub fn merge_into(&self, out: &Path) -> Result<LatentStats> {
        let s = self.merge()?;
        crate::io::stats_file::write(out, &s)?;
        Ok(s)
    }

    /// Removes this job's unit files and their keys, and the work directory when that
    /// leaves it empty (the lock file goes with it).
    pub fn remove_unit_files(&self) -> Result<()> {
        let keys = self
            .units
            .iter()
            .map(|u| self.opts.work_dir.join(u.key_file_name()));
        for f in self.unit_files().into_iter().chain(keys) {
            match std::fs::remove_file(&f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&f, e));
                }
                _ => {}
            }
        }
        // Other jobs (other --shard slices) may still have files there: keep it then.
        let others = std::fs::read_dir(&self.opts.work_dir)
            .map(|d| d.flatten().any(|e| e.file_name() != lock::LOCK_NAME))
            .unwrap_or(true);
        if !others {
            self.lock.remove_file();
            let _ = std::fs::remove_dir(&self.opts.work_dir);
        }
        Ok(())
    }
}

/// `Ok` when the unit file can be reused; `Err(None)` when there is none, `Err(Some(why))`
/// when it is there but stale or unreadable.
fn reusable(
    sae: &Sae,
    fingerprint: &str,
    unit: &Unit,
    opts: &FanOutOptions,
    file: &Path,
) -> std::result::Result<(), Option<String>> {
    if std::fs::metadata(file).is_err() {
        return Err(None);
    }
    let stale = |why: String| Err(Some(why));
    let key_file = opts.work_dir.join(unit.key_file_name());
    let Some(old) = UnitKey::read(&key_file) else {
        return stale("no content key beside it".into());
    };
    match reuse::still_valid(&old, &unit.path, fingerprint, &opts.results_key()) {
        Ok(now) if now != old => {
            // Same content under a new stamp: remember it so the next run need not hash.
            let _ = now.write(&key_file);
        }
        Ok(_) => {}
        Err(why) => return stale(why),
    }
    let shard = match unit.open() {
        Ok(s) => s,
        Err(e) => return stale(format!("its shard does not open: {e}")),
    };
    let stats = match crate::io::stats_file::read(file) {
        Ok(s) => s,
        Err(e) => return stale(format!("unreadable: {e}")),
    };
    if stats.fingerprint != fingerprint {
        return stale(format!(
            "fingerprint {} is not the SAE's {fingerprint}",
            stats.fingerprint
        ));
    }
    if stats.n_latents() != sae.n_latents() {
        return stale(format!(
            "{} latents, the SAE has {}",
            stats.n_latents(),
            sae.n_latents()
        ));
    }
    let want = match counted_tokens(shard.as_ref(), opts.use_mask) {
        Ok(n) => n,
        Err(e) => return stale(format!("its shard's mask does not read: {e}")),
    };
    if stats.n_tokens != want {
        return stale(format!(
            "{} tokens, the shard counts {want}",
            stats.n_tokens
        ));
    }
    Ok(())
}

/// Tokens a statistics pass over `shard` counts: rows with mask != 0 under `use_mask`
/// when the shard has a mask, else every row.
pub(crate) fn counted_tokens(shard: &dyn Shard, use_mask: bool) -> Result<u64> {
    let n = shard.n_rows();
    if !use_mask {
        return Ok(n as u64);
    }
    const CHUNK: usize = 1 << 20;
    let mut counted = 0u64;
    let mut start = 0;
    while start < n {
        let count = CHUNK.min(n - start);
        match shard.mask(start, count)? {
            Some(m) => counted += m.iter().filter(|v| **v != 0).count() as u64,
            None => return Ok(n as u64),
        }
        start += count;
    }
    Ok(counted)
}

/// Shared state one worker thread sees.
struct WorkerCtx<'j, 'a> {
    job: &'j StatsJob<'a>,
    worker: usize,
    next: &'j AtomicUsize,
    done: &'j Mutex<Vec<usize>>,
    failures: &'j Mutex<Vec<UnitFailure>>,
}

impl WorkerReport {
    fn empty(worker: usize, device: &str) -> WorkerReport {
        WorkerReport {
            worker,
            device: device.to_string(),
            backend: None,
            units: 0,
            rows: 0,
            setup_seconds: 0.0,
            busy_seconds: 0.0,
            rows_per_second: 0.0,
            failure: None,
        }
    }
}

impl WorkerCtx<'_, '_> {
    fn run(
        &self,
        factory: &(dyn Fn(usize) -> Result<Box<dyn Engine>> + Sync),
        progress: &(dyn Fn(u64) + Sync),
    ) -> WorkerReport {
        let name = &self.job.opts.worker_names[self.worker];
        let mut rep = WorkerReport::empty(self.worker, name);
        let t = Instant::now();
        let engine = match catch_unwind(AssertUnwindSafe(|| factory(self.worker))) {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                rep.failure = Some(format!("engine not built: {}", one_line(&e.to_string())));
                return rep;
            }
            Err(p) => {
                rep.failure = Some(format!("engine not built: panicked: {}", panic_text(&p)));
                return rep;
            }
        };
        rep.setup_seconds = t.elapsed().as_secs_f64();
        let fp = engine.sae().fingerprint();
        if fp != self.job.fingerprint {
            rep.failure = Some(format!(
                "engine runs another SAE (fingerprint {fp}, expected {})",
                self.job.fingerprint
            ));
            return rep;
        }
        rep.backend = Some(engine.name());
        let engine = Watched {
            inner: engine,
            fault: Cell::new(false),
        };
        let mut ok_seconds = 0.0;
        loop {
            let p = self.next.fetch_add(1, Ordering::SeqCst);
            let Some(&pos) = self.job.pending.get(p) else {
                break;
            };
            let unit = &self.job.units[pos];
            let t = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| {
                compute_unit(&engine, unit, self.job, progress)
            }));
            let secs = t.elapsed().as_secs_f64();
            rep.busy_seconds += secs;
            let (message, device_fault) = match result {
                Ok(Ok(rows)) => {
                    rep.units += 1;
                    rep.rows += rows;
                    ok_seconds += secs;
                    lock(self.done).push(unit.index);
                    continue;
                }
                Ok(Err(e)) => (one_line(&e.to_string()), engine.fault.get()),
                Err(p) => (format!("panicked: {}", panic_text(&p)), true),
            };
            lock(self.failures).push(UnitFailure {
                index: unit.index,
                shard: unit.path.clone(),
                worker: self.worker,
                device: name.clone(),
                device_fault,
                message: message.clone(),
            });
            if device_fault {
                rep.failure = Some(format!("failed on shard {}: {message}", unit.index));
                break;
            }
            engine.fault.set(false);
        }
        rep.rows_per_second = if ok_seconds > 0.0 {
            rep.rows as f64 / ok_seconds
        } else {
            0.0
        };
        rep
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another worker panicked while pushing; the data is intact.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Statistics of one shard file, written atomically to its unit file. Returns the rows read.
fn compute_unit(
    engine: &Watched,
    unit: &Unit,
    job: &StatsJob<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    // The old key goes first: a crash below must not pair it with new statistics.
    let key_file = job.opts.work_dir.join(unit.key_file_name());
    match std::fs::remove_file(&key_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&key_file, e)),
        _ => {}
    }
    // Keyed before reading, so a shard changed during the pass shows on the next run. A
    // shard that is not a plain file (a cache layout's) gets no key and is never reused.
    let key = if unit.path.is_file() {
        Some(UnitKey::compute(
            &unit.path,
            &job.fingerprint,
            &job.opts.results_key(),
        )?)
    } else {
        None
    };
    let shard = unit.open()?;
    let dump = Dump::from_shards(&unit.path, vec![shard])?;
    let stats = crate::pipeline::stats_of_dump(
        engine,
        &dump,
        job.opts.batch_rows,
        job.opts.use_mask,
        &|n| progress(n),
    )?;
    crate::io::stats_file::write(&job.opts.work_dir.join(unit.stats_file_name()), &stats)?;
    if let Some(key) = key {
        key.write(&key_file)?;
    }
    Ok(dump.n_rows())
}

/// An engine that remembers whether an error came from the engine itself (a device
/// fault) rather than from the data (a non-finite input row) or from reading the shard.
struct Watched {
    inner: Box<dyn Engine>,
    fault: Cell<bool>,
}

impl Watched {
    fn watch<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if !matches!(e, Error::NonFinite { .. } | Error::SaeNonFinite { .. }) {
                self.fault.set(true);
            }
        }
        r
    }
}

impl Engine for Watched {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn sae(&self) -> &Sae {
        self.inner.sae()
    }
    fn encode(&self, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded> {
        self.watch(self.inner.encode(x, rows, row_offset))
    }
    fn decode(&self, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>> {
        self.watch(self.inner.decode(codes, denorm))
    }
    fn accumulate(
        &self,
        stats: &mut LatentStats,
        codes: &Codes,
        mask: Option<&[u8]>,
    ) -> Result<()> {
        self.watch(self.inner.accumulate(stats, codes, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_lists() {
        let d = Devices::parse("0,1").unwrap();
        assert_eq!(
            d.kinds(),
            &[
                BackendKind::Cuda { device: 0 },
                BackendKind::Cuda { device: 1 }
            ]
        );
        assert_eq!(d.names(), &["cuda:0", "cuda:1"]);
        let d = Devices::parse("cpu:2, cuda:3,cpu").unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d.names(), &["cpu#0", "cpu#1", "cuda:3", "cpu#2"]);
        for bad in ["", "0,", "0,0", "cuda:1,1", "cpu:0", "cpu:x", "gpu", "-1"] {
            let e = Devices::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--devices"), "{bad}: {e}");
        }
    }

    #[test]
    fn unit_file_names_sort_by_index() {
        let a = Unit::file(2, "d/acts_b.safetensors".into());
        let b = Unit::file(10, "d/acts_a.npy".into());
        assert_eq!(a.stats_file_name(), "shard-00002-acts_b.stats.safetensors");
        assert!(a.stats_file_name() < b.stats_file_name());
    }
}

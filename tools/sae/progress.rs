//! Progress of long work over rows. On a terminal: a bar with rows, rate and ETA. Without a
//! terminal (a Slurm log, `2> log`): one line every `--progress-interval` seconds with rows
//! done/total, rate, elapsed time and ETA. Both take the rate from [`RateSmoother`], an
//! exponential moving average over wall time, so the ETA does not swing with each batch the
//! way a per-step estimate does.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Time constant of the smoothed rate, seconds: a change of speed shows fully after a few.
pub const SMOOTHING_SECS: f64 = 10.0;

/// A rate (rows per second) smoothed exponentially over wall time. Each update weighs the
/// rate since the previous one by `1 - exp(-dt / tau)`, so a burst of batches finishing
/// together and a long gap before the next average out instead of swinging the estimate.
#[derive(Debug, Clone)]
pub struct RateSmoother {
    tau: f64,
    rate: Option<f64>,
    last_t: f64,
    last_pos: u64,
}

impl RateSmoother {
    /// A smoother with time constant `tau` seconds, starting at position 0, time 0.
    pub fn new(tau: f64) -> RateSmoother {
        RateSmoother {
            tau: tau.max(1e-9),
            rate: None,
            last_t: 0.0,
            last_pos: 0,
        }
    }

    /// Records that `pos` rows are done at `t` seconds since the start.
    pub fn update(&mut self, pos: u64, t: f64) {
        let dt = t - self.last_t;
        if dt <= 0.0 || pos < self.last_pos {
            return;
        }
        let inst = (pos - self.last_pos) as f64 / dt;
        self.rate = Some(match self.rate {
            None => inst,
            Some(r) => {
                let alpha = 1.0 - (-dt / self.tau).exp();
                r + alpha * (inst - r)
            }
        });
        self.last_t = t;
        self.last_pos = pos;
    }

    /// The smoothed rate, rows per second (None before the first progress).
    pub fn rate(&self) -> Option<f64> {
        self.rate.filter(|r| *r > 0.0)
    }

    /// Seconds left for `total` rows at the smoothed rate, counted from now (`t`).
    pub fn eta(&self, total: u64, t: f64) -> Option<f64> {
        let r = self.rate()?;
        let left = total.saturating_sub(self.last_pos) as f64 / r - (t - self.last_t);
        Some(left.max(0.0))
    }
}

/// 39 -> "39s", 400 -> "6m 40s", 7500 -> "2h 05m".
pub fn format_secs(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

struct State {
    start: Instant,
    pos: u64,
    smoother: RateSmoother,
    done: bool,
}

struct Shared {
    total: u64,
    what: String,
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log line: `sae: encode: 409600/2000000 rows (20.5%), 40960 rows/s, elapsed 10s, ETA 39s`.
    fn line(&self) -> String {
        let st = self.lock();
        let t = st.start.elapsed().as_secs_f64();
        let pct = if self.total > 0 {
            format!(" ({:.1}%)", 100.0 * st.pos as f64 / self.total as f64)
        } else {
            String::new()
        };
        let rate = st
            .smoother
            .rate()
            .map_or_else(|| "rate unknown".to_string(), |r| format!("{r:.0} rows/s"));
        let eta = st
            .smoother
            .eta(self.total, t)
            .map_or_else(|| "unknown".to_string(), format_secs);
        format!(
            "sae: {}: {}/{} rows{pct}, {rate}, elapsed {}, ETA {eta}",
            self.what,
            st.pos,
            self.total,
            format_secs(t)
        )
    }
}

/// Progress of one pass; `inc` may be called from several threads.
pub struct Progress {
    shared: Arc<Shared>,
    bar: Option<ProgressBar>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Nothing (`--quiet`, or a log with `--progress-interval 0`).
    Hidden,
    /// A bar on a terminal.
    Bar,
    /// A line every so often on a non-terminal stderr.
    Log(Duration),
}

impl Progress {
    /// Starts showing progress over `total` rows of `what` (nothing for 0 rows: reading a
    /// statistics file is not long work).
    pub fn start(total: u64, what: &str, mode: Mode) -> Progress {
        let mode = if total == 0 { Mode::Hidden } else { mode };
        let shared = Arc::new(Shared {
            total,
            what: what.to_string(),
            state: Mutex::new(State {
                start: Instant::now(),
                pos: 0,
                smoother: RateSmoother::new(SMOOTHING_SECS),
                done: false,
            }),
            wake: Condvar::new(),
        });
        let mut p = Progress {
            shared: shared.clone(),
            bar: None,
            ticker: Mutex::new(None),
        };
        match mode {
            Mode::Hidden => {}
            Mode::Bar => p.bar = Some(bar(total, what, shared)),
            Mode::Log(every) => {
                let handle = std::thread::spawn(move || log_lines(&shared, every));
                p.ticker = Mutex::new(Some(handle));
            }
        }
        p
    }

    /// `rows` more rows are done.
    pub fn inc(&self, rows: u64) {
        {
            let mut st = self.shared.lock();
            st.pos += rows;
            let t = st.start.elapsed().as_secs_f64();
            let pos = st.pos;
            st.smoother.update(pos, t);
        }
        if let Some(b) = &self.bar {
            b.inc(rows);
        }
    }

    /// Ends the display (the bar is cleared, the log lines stop).
    pub fn finish_and_clear(&self) {
        self.shared.lock().done = true;
        self.shared.wake.notify_all();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let handle = self.ticker.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish_and_clear();
    }
}

/// The log thread: a line every `every` until the pass is done.
fn log_lines(shared: &Shared, every: Duration) {
    let mut next = Instant::now() + every;
    loop {
        {
            let mut st = shared.lock();
            loop {
                if st.done {
                    return;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                st = shared
                    .wake
                    .wait_timeout(st, next - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        sae_engine::io::console::print_stderr(&shared.line());
        next += every;
    }
}

/// The terminal bar; rate and ETA come from the smoother, not indicatif's estimate.
fn bar(total: u64, what: &str, shared: Arc<Shared>) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let (s_rate, s_eta) = (shared.clone(), shared);
    let style = ProgressStyle::with_template(
        "{msg:>8} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows ({srate}, ETA {seta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "srate",
        move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            let r = s_rate.lock().smoother.rate();
            let _ = match r {
                Some(r) => write!(w, "{r:.0} rows/s"),
                None => write!(w, "- rows/s"),
            };
        },
    )
    .with_key(
        "seta",
        move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            let st = s_eta.lock();
            let t = st.start.elapsed().as_secs_f64();
            let e = st.smoother.eta(s_eta.total, t);
            drop(st);
            let _ = w.write_str(&e.map_or_else(|| "-".to_string(), format_secs));
        },
    );
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothed_rate_holds_steady_under_bursty_batches() {
        // 1000 rows/s on average, but batches land in bursts: 4 batches of 1000 rows finish
        // together every 4 s (a per-step estimate swings between ~1e5 and 250 rows/s).
        let mut s = RateSmoother::new(SMOOTHING_SECS);
        let mut pos = 0;
        let mut rates = vec![];
        for k in 1..=40 {
            let t0 = 4.0 * k as f64;
            for j in 0..4 {
                pos += 1000;
                s.update(pos, t0 + 0.01 * j as f64);
                if k > 10 {
                    rates.push(s.rate().unwrap());
                }
            }
        }
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        assert!(lo > 500.0 && hi < 2000.0, "rate swings {lo}..{hi}");
        // ETA of 100k more rows is within 2x of the true 100 s at every point.
        let eta = s.eta(pos + 100_000, 160.03).unwrap();
        assert!((50.0..200.0).contains(&eta), "{eta}");
    }

    #[test]
    fn smoother_follows_a_change_of_speed() {
        let mut s = RateSmoother::new(2.0);
        let mut pos = 0;
        for k in 1..=20 {
            pos += 100;
            s.update(pos, k as f64);
        }
        assert!((s.rate().unwrap() - 100.0).abs() < 1e-6);
        for k in 21..=40 {
            pos += 1000;
            s.update(pos, k as f64);
        }
        // 20 s at the new speed is 10 time constants: it has caught up.
        assert!((s.rate().unwrap() - 1000.0).abs() < 1.0, "{:?}", s.rate());
        assert_eq!(RateSmoother::new(1.0).rate(), None);
        assert_eq!(RateSmoother::new(1.0).eta(10, 1.0), None);
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(format_secs(39.4), "39s");
        assert_eq!(format_secs(400.0), "6m 40s");
        assert_eq!(format_secs(7500.0), "2h 05m");
    }
}

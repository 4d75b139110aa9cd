//! Progress of long work, on stderr, the same way in every tool.
//!
//! A tool switches it on once ([`enable`], off under `--quiet`); the library then reports each long
//! loop (an epoch's steps, an estimate's SGLD steps, a trace's probes): [`begin`] makes it the
//! active task and returns a guard that ends it, and [`tick`] (or [`Task::tick`]) counts work done.
//!
//! - stderr a terminal: an `indicatif` bar, redrawn at most 10 times a second, cleared at the end.
//! - otherwise (a log file, a pipe, make under CI): one plain line every 10 s, such as
//!   `train: epoch 3/20: 240/469 steps (51%), loss 0.4123, 10 s, about 9 s left`; work shorter
//!   than the interval prints nothing. `NGD_SLT_PROGRESS_SECONDS` changes the interval.
//! - nothing ever goes to stdout, which carries records only.
//!
//! Off by default, so library callers and unit tests print nothing unless they ask. A tick costs
//! an atomic add and an uncontended `try_lock`; the clock is read only then, and the text is made
//! only when a report is due, so hot loops are not slowed.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static DONE: AtomicU64 = AtomicU64::new(0);
static ACTIVE: Mutex<Option<Meter>> = Mutex::new(None);

/// Default interval between plain lines.
pub const LINE_INTERVAL: Duration = Duration::from_secs(10);
const BAR_INTERVAL: Duration = Duration::from_millis(100);

/// Switches progress reports on or off for the whole process (tools: `enable(!quiet)`).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether progress is reported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The running tool's name (the file name of argv\[0\], e.g. `llc`), to label library tasks.
pub fn tool() -> String {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Time since a fixed start; injected in tests.
pub type Clock = Box<dyn Fn() -> Duration + Send>;

enum Sink {
    Bar(ProgressBar),
    Lines(Box<dyn Write + Send>),
}

/// One task's reporter: where it writes, and when the next report is due.
pub struct Meter {
    label: String,
    unit: &'static str,
    total: u64,
    sink: Sink,
    clock: Clock,
    started: Duration,
    next: Duration,
    interval: Duration,
    message: String,
}

impl Meter {
    /// Plain lines to `out`, one per `interval` of `clock` at most, the first after one interval.
    pub fn lines(
        label: impl Into<String>,
        unit: &'static str,
        total: u64,
        out: Box<dyn Write + Send>,
        clock: Clock,
        interval: Duration,
    ) -> Meter {
        let started = clock();
        Meter {
            label: label.into(),
            unit,
            total,
            sink: Sink::Lines(out),
            clock,
            started,
            next: started + interval,
            interval,
            message: String::new(),
        }
    }

    /// An indicatif bar on stderr.
    fn bar(label: String, unit: &'static str, total: u64) -> Meter {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(&format!(
            "{{prefix}} [{{wide_bar}}] {{pos}}/{{len}} {unit}{{msg}}, about {{eta}} left"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-");
        bar.set_style(style);
        bar.set_prefix(label.clone());
        let t0 = Instant::now();
        Meter {
            label,
            unit,
            total,
            sink: Sink::Bar(bar),
            clock: Box::new(move || t0.elapsed()),
            started: Duration::ZERO,
            next: Duration::ZERO,
            interval: BAR_INTERVAL,
            message: String::new(),
        }
    }

    /// Whether a report is due now.
    pub fn due(&self) -> bool {
        (self.clock)() >= self.next
    }

    /// Reports `done` of the total, with `message()` after the count, if a report is due.
    pub fn update(&mut self, done: u64, message: impl FnOnce() -> Option<String>) {
        let now = (self.clock)();
        if now < self.next {
            return;
        }
        self.next = now + self.interval;
        if let Some(m) = message() {
            self.message = m;
        }
        let line = match self.sink {
            Sink::Bar(_) => String::new(),
            Sink::Lines(_) => self.line(done, now),
        };
        match &mut self.sink {
            Sink::Bar(b) => {
                b.set_message(if self.message.is_empty() {
                    String::new()
                } else {
                    format!(", {}", self.message)
                });
                b.set_position(done.min(self.total));
            }
            Sink::Lines(w) => {
                let _ = writeln!(w, "{line}");
                let _ = w.flush();
            }
        }
    }

    /// `label: done/total unit (p%), message, elapsed, about eta left`.
    fn line(&self, done: u64, now: Duration) -> String {
        let done = done.min(self.total);
        let elapsed = now.saturating_sub(self.started).as_secs_f64();
        let pct = 100 * done / self.total.max(1);
        let message = if self.message.is_empty() {
            String::new()
        } else {
            format!(", {}", self.message)
        };
        let left = if done > 0 {
            format!(
                ", about {:.0} s left",
                elapsed * (self.total - done) as f64 / done as f64
            )
        } else {
            String::new()
        };
        format!(
            "{}: {done}/{} {} ({pct}%){message}, {elapsed:.0} s{left}",
            self.label, self.total, self.unit
        )
    }

    fn finish(self) {
        if let Sink::Bar(b) = self.sink {
            b.finish_and_clear();
        }
    }
}

/// The interval between plain lines: `NGD_SLT_PROGRESS_SECONDS` when it is a number ≥ 0, else 10 s.
fn line_interval() -> Duration {
    std::env::var("NGD_SLT_PROGRESS_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(LINE_INTERVAL)
}

/// The guard of the active task: it ends the task (and clears its bar) when dropped.
#[must_use = "the task ends when the guard is dropped"]
pub struct Task {
    on: bool,
}

/// Makes `total` `unit`s of work labelled `label` the active task, when progress is enabled and no
/// other task is active (a second task at once, e.g. parallel branches, reports nothing).
pub fn begin(label: impl Into<String>, unit: &'static str, total: u64) -> Task {
    if !enabled() || total == 0 {
        return Task { on: false };
    }
    let Ok(mut active) = ACTIVE.lock() else {
        return Task { on: false };
    };
    if active.is_some() {
        return Task { on: false };
    }
    let label = label.into();
    let meter = if std::io::stderr().is_terminal() {
        Meter::bar(label, unit, total)
    } else {
        let t0 = Instant::now();
        Meter::lines(
            label,
            unit,
            total,
            Box::new(std::io::stderr()),
            Box::new(move || t0.elapsed()),
            line_interval(),
        )
    };
    DONE.store(0, Ordering::Relaxed);
    *active = Some(meter);
    Task { on: true }
}

/// `n` units of the active task done, from any thread (nothing when no task is active).
pub fn tick(n: u64) {
    if !enabled() {
        return;
    }
    let done = DONE.fetch_add(n, Ordering::Relaxed) + n;
    if let Ok(mut active) = ACTIVE.try_lock() {
        if let Some(m) = active.as_mut() {
            m.update(done, || None);
        }
    }
}

impl Task {
    /// `n` units of this task done; `message` (made only when a report is due) is shown after the
    /// count. Nothing when this task is not the active one.
    pub fn tick(&self, n: u64, message: impl FnOnce() -> String) {
        if !self.on {
            return;
        }
        let done = DONE.fetch_add(n, Ordering::Relaxed) + n;
        if let Ok(mut active) = ACTIVE.try_lock() {
            if let Some(m) = active.as_mut() {
                m.update(done, || Some(message()));
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if self.on {
            let meter = ACTIVE.lock().ok().and_then(|mut a| a.take());
            if let Some(m) = meter {
                m.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    /// A writer whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<StdMutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_come_once_per_interval_of_the_clock() {
        let now = Arc::new(AtomicU64::new(0));
        let clock_now = now.clone();
        let out = Shared::default();
        let mut m = Meter::lines(
            "train: epoch 1/2",
            "steps",
            400,
            Box::new(out.clone()),
            Box::new(move || Duration::from_millis(clock_now.load(Ordering::Relaxed))),
            Duration::from_secs(10),
        );
        let mut made = 0;
        // 400 steps of 100 ms: 40 s, so lines at 10, 20, 30 and 40 s, and the message is made
        // only for those.
        for step in 1..=400u64 {
            now.store(step * 100, Ordering::Relaxed);
            m.update(step, || {
                made += 1;
                Some(format!("loss {:.2}", 1.0 / step as f64))
            });
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(made, 4);
        assert_eq!(
            lines,
            [
                "train: epoch 1/2: 100/400 steps (25%), loss 0.01, 10 s, about 30 s left",
                "train: epoch 1/2: 200/400 steps (50%), loss 0.01, 20 s, about 20 s left",
                "train: epoch 1/2: 300/400 steps (75%), loss 0.00, 30 s, about 10 s left",
                "train: epoch 1/2: 400/400 steps (100%), loss 0.00, 40 s, about 0 s left",
            ]
        );
    }

    #[test]
    fn short_work_prints_nothing() {
        let out = Shared::default();
        let mut m = Meter::lines(
            "llc",
            "steps",
            10,
            Box::new(out.clone()),
            Box::new(|| Duration::from_secs(3)),
            Duration::from_secs(10),
        );
        for d in 1..=10 {
            m.update(d, || None);
        }
        assert!(!m.due());
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn disabled_progress_begins_no_task() {
        // ENABLED is false unless a test switches it on; none does.
        let t = begin("x", "steps", 10);
        assert!(!t.on);
        tick(1);
        t.tick(1, || unreachable!("no message is made when off"));
    }
}

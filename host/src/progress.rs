//! Where the operator sees a long migration move: progress bars on a terminal (bytes,
//! records/s, ETA), one line per step start/end plus periodic percentages elsewhere, or nothing.
//! Everything goes to stderr so that `--json` on stdout stays parseable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    Bars,
    Plain,
    None,
}

/// Plain mode prints a percentage at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    mode: ProgressMode,
    current: Mutex<Option<StepProgress>>,
}

struct StepProgress {
    name: String,
    total: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    last_print: Instant,
}

/// A step's running totals across its files.
#[derive(Default)]
pub struct Counters {
    bytes: AtomicU64,
    records: AtomicU64,
}

impl Counters {
    /// Adds to the totals and shows them.
    pub fn add(&self, progress: &Progress, bytes: u64, records: u64) {
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let r = self.records.fetch_add(records, Ordering::Relaxed) + records;
        progress.update(b, r);
    }
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        let mode = match mode {
            ProgressMode::Auto if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
                ProgressMode::Bars
            }
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        };
        Progress {
            mode,
            current: Mutex::new(None),
        }
    }

    /// No output at all (the library default).
    pub fn quiet() -> Progress {
        Progress {
            mode: ProgressMode::None,
            current: Mutex::new(None),
        }
    }

    pub fn start(&self, name: &str, total_bytes: u64) {
        if self.mode == ProgressMode::None {
            return;
        }
        let bar = (self.mode == ProgressMode::Bars).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(name.to_owned());
            bar
        });
        if self.mode == ProgressMode::Plain {
            eprintln!("[{name}] started: {}", crate::preflight::human(total_bytes));
        }
        if let Ok(mut cur) = self.current.lock() {
            *cur = Some(StepProgress {
                name: name.to_owned(),
                total: total_bytes,
                started: Instant::now(),
                bar,
                last_print: Instant::now(),
            });
        }
    }

    /// Reports the step's totals so far.
    pub fn update(&self, bytes: u64, records: u64) {
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        let Some(step) = cur.as_mut() else { return };
        if let Some(bar) = &step.bar {
            bar.set_position(bytes);
            let secs = step.started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{:.0} records/s", records as f64 / secs));
        } else if step.last_print.elapsed() >= PLAIN_EVERY && step.total > 0 {
            step.last_print = Instant::now();
            eprintln!(
                "[{}] {:.0}% ({} records)",
                step.name,
                100.0 * bytes as f64 / step.total as f64,
                records
            );
        }
    }

    pub fn finish(&self, ok: bool) {
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        let Some(step) = cur.take() else { return };
        if let Some(bar) = step.bar {
            bar.finish_and_clear();
        }
        if self.mode != ProgressMode::None {
            let verdict = if ok { "done" } else { "FAILED" };
            eprintln!(
                "[{}] {verdict} in {:.2} s",
                step.name,
                step.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Peak resident memory of this process so far, in bytes.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    (usage.ru_maxrss.max(0) as u64) * 1024
}

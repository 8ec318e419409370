//! Where the operator sees a long migration move: the engine's [`Observer`], drawn as progress
//! bars on a terminal (bytes, records/s, ETA), one line per step start/end plus periodic
//! percentages elsewhere, or nothing. Notices and warnings are printed in every mode.
//! Everything goes to stderr so that `--json` on stdout stays parseable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use trustformers_migrate::size::human;
use trustformers_migrate::Observer;

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
}

impl Observer for Progress {
    fn step_started(&self, name: &str, total_bytes: u64) {
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
            eprintln!("[{name}] started: {}", human(total_bytes));
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

    fn step_progress(&self, bytes: u64, records: u64) {
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

    fn step_finished(&self, _name: &str, ok: bool) {
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

    fn notice(&self, message: &str) {
        eprintln!("note: {message}");
    }

    fn warning(&self, message: &str) {
        eprintln!("warning: {message}");
    }

    /// What plugin code wrote to stderr, passed through as it was written.
    fn worker_output(&self, line: &str) {
        eprintln!("{line}");
    }
}

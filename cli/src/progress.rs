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
    /// Progress bars with bytes, records/s and ETA.
    Bars,
    /// One line per step start and end, and a percentage every 5 s: for logs.
    Plain,
    /// Nothing but notices and warnings.
    None,
}

/// Plain mode prints a percentage at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    mode: ProgressMode,
    /// The steps started and not yet finished, in the order they started. Two can be: the data
    /// step ends when its output is on disk, which the host sees to while the models step
    /// runs. The last one started is the one moving.
    running: Mutex<Vec<StepProgress>>,
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
            running: Mutex::new(Vec::new()),
        }
    }
}

impl Observer for Progress {
    fn step_started(&self, name: &str, total_bytes: u64) {
        if self.mode == ProgressMode::None {
            return;
        }
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        // A step still running behind this one moves no more: its bar would only stand still
        // under the new one. It is cleared before the new bar is first drawn (on the line the
        // cursor is on); its end is printed when it comes.
        for earlier in running.iter_mut() {
            if let Some(bar) = earlier.bar.take() {
                bar.finish_and_clear();
            }
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
        running.push(StepProgress {
            name: name.to_owned(),
            total: total_bytes,
            started: Instant::now(),
            bar,
            last_print: Instant::now(),
        });
    }

    fn step_progress(&self, bytes: u64, records: u64) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        let Some(step) = running.last_mut() else {
            return;
        };
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

    fn step_finished(&self, name: &str, ok: bool, took: Option<Duration>) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        let Some(at) = running.iter().rposition(|s| s.name == name) else {
            return;
        };
        let step = running.remove(at);
        if let Some(bar) = step.bar {
            bar.finish_and_clear();
        }
        if self.mode != ProgressMode::None {
            let verdict = if ok { "done" } else { "FAILED" };
            let took = took.unwrap_or_else(|| step.started.elapsed());
            let line = format!("[{}] {verdict} in {:.2} s", step.name, took.as_secs_f64());
            // Above the bar of a step still running (a data step whose end comes while the
            // models step runs, when the worker stops there), not through it.
            match running.last().and_then(|s| s.bar.as_ref()) {
                Some(bar) => bar.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            }
        }
    }

    fn notice(&self, message: &str) {
        crate::render::eprint_note(message);
    }

    fn warning(&self, message: &str) {
        crate::render::eprint_warning(message);
    }

    /// What plugin code wrote to stderr, passed through as it was written.
    fn worker_output(&self, line: &str) {
        eprintln!("{line}");
    }
}

//! Where the operator sees a long migration move: the engine's [`Observer`], drawn as progress
//! bars on a terminal (bytes, rate, ETA, records per second), one line per step start/end
//! plus periodic percentages elsewhere, or nothing. Notices and warnings are printed in every
//! mode. Everything goes to stderr so that `--json` on stdout stays parseable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use trustformers_migrate::size::human;
use trustformers_migrate::Observer;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Progress bars with bytes, rate, ETA and records per second.
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
        let bar = (self.mode == ProgressMode::Bars).then(|| bar(name, total_bytes));
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
            // A spinner (no size known) keeps its time alone.
            if step.total > 0 {
                bar.set_message(moving(bytes, step.total, records, step.started.elapsed()));
            }
        } else if step.last_print.elapsed() >= PLAIN_EVERY && step.total > 0 {
            step.last_print = Instant::now();
            let records = match records {
                0 => String::new(),
                n => format!(" ({n} records)"),
            };
            eprintln!(
                "[{}] {:.0}%{records}",
                step.name,
                100.0 * bytes as f64 / step.total as f64,
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
            above(&running, || eprintln!("{line}"));
        }
    }

    fn notice(&self, message: &str) {
        self.above_the_bar(|| crate::render::eprint_note(message));
    }

    fn warning(&self, message: &str) {
        self.above_the_bar(|| crate::render::eprint_warning(message));
    }

    /// What plugin code wrote to stderr, passed through as it was written.
    fn worker_output(&self, line: &str) {
        self.above_the_bar(|| eprintln!("{line}"));
    }
}

impl Progress {
    /// [`above`] the steps running now.
    fn above_the_bar(&self, print: impl FnOnce()) {
        match self.running.lock() {
            Ok(running) => above(&running, print),
            Err(_) => print(),
        }
    }
}

/// Prints with the bar of the step running last (if any) lifted out of the way and drawn
/// again below: printed straight away, the text would land on the bar's line, which its next
/// redraw (a spinner's, ten times a second) would overwrite.
fn above(running: &[StepProgress], print: impl FnOnce()) {
    match running.last().and_then(|s| s.bar.as_ref()) {
        Some(bar) => bar.suspend(print),
        None => print(),
    }
}

/// The bar of a step that reads `total` bytes; a spinner with the time spent for a step whose
/// size is not known (0).
///
/// The line must fit the terminal: one wider than it wraps, and each redraw then climbs a
/// line. So everything past the bar is a message that indicatif cuts at the terminal's edge
/// (`wide_msg`), its least useful part last ([`moving`]); in 80 columns it fits whole up to
/// GiB sizes and rates, and times left in minutes.
fn bar(name: &str, total: u64) -> ProgressBar {
    let template = match total {
        0 => "{prefix:>8} {spinner} {elapsed} {wide_msg}",
        _ => "{prefix:>8} [{bar:16}] {done} {wide_msg}",
    };
    // Bytes done and the bar are drawn from the same position, never one update apart.
    let done = |state: &ProgressState, out: &mut dyn std::fmt::Write| {
        let total = state.len().unwrap_or(0);
        let _ = write!(out, "{}/{}", human(state.pos()), human(total));
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("done", done)
        .progress_chars("=> ");
    // Built whole before it is first drawn.
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(name.to_owned());
    match total {
        0 => {
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }
        _ => bar.with_message(moving(0, total, 0, Duration::ZERO)),
    }
}

/// What follows the bytes done on a bar: `540.2 MiB/s ETA 1s 4.7M rec/s`. The rate and the
/// time left are averages since the step began, shown once it has run long enough for them to
/// mean something; records only for a step that counts them. Once every byte is through, a
/// step may still have work that is not counted in bytes (the check's model hashes, a
/// restore's comparison with what the migration wrote, a backup's upload): it says so rather
/// than "ETA 0s".
fn moving(done: u64, total: u64, records: u64, spent: Duration) -> String {
    if done >= total && total > 0 {
        return "finishing".into();
    }
    let secs = spent.as_secs_f64();
    if done == 0 || spent < Duration::from_millis(250) {
        return String::new();
    }
    let rate = done as f64 / secs;
    // A total that will take longer than a Duration holds (a size no disk has) is shown as
    // the longest one, never a panic.
    let left = Duration::try_from_secs_f64(total.saturating_sub(done) as f64 / rate)
        .unwrap_or(Duration::MAX);
    let mut text = format!("{}/s ETA {}", human(rate as u64), short(left));
    if records > 0 {
        text += &format!(" {} rec/s", count(records as f64 / secs));
    }
    text
}

/// `4.7M`, `870k`, `950`.
fn count(n: f64) -> String {
    match n {
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.0}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// `2h 5m`, `3m 12s`, `9s`.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moving_bar_says_how_fast_and_how_long() {
        let mib = 1 << 20;
        assert_eq!(
            moving(256 * mib, 512 * mib, 2_400_000, Duration::from_millis(500)),
            "512.0 MiB/s ETA 0s 4.8M rec/s"
        );
        assert_eq!(
            moving(mib, 4096 * mib, 0, Duration::from_secs(2)),
            "512.0 KiB/s ETA 2h 16m"
        );
        // Nothing read yet, or too short a time: no rate to speak of.
        assert_eq!(moving(0, 512 * mib, 0, Duration::from_secs(3)), "");
        assert_eq!(moving(mib, 512 * mib, 9000, Duration::from_millis(100)), "");
        // Every byte through, and the step not over yet.
        assert_eq!(
            moving(512 * mib, 512 * mib, 10, Duration::from_secs(2)),
            "finishing"
        );
        // As wide as a common line gets: a 28-column name and bar, then `1000.0 GiB/1023.0
        // GiB ` (22 columns) and this, in 80 columns.
        let widest = moving(
            1000 * 1024 * mib,
            1023 * 1024 * mib,
            99_000_000,
            Duration::from_secs(10),
        );
        assert!(28 + 22 + widest.chars().count() <= 80, "{widest}");
        // A total far beyond any disk (a crafted size): a time left, not a panic.
        assert!(moving(1, u64::MAX, 0, Duration::from_secs(100)).contains("ETA "));
        assert_eq!(count(870_400.0), "870k");
        assert_eq!(count(950.0), "950");
        assert_eq!(short(Duration::from_secs(192)), "3m 12s");
    }
}

//! Prometheus metrics of the last migration, in the node_exporter textfile format: a fleet is
//! watched with Prometheus, and the textfile collector is how a tool that runs and exits
//! reports to it (`--metrics-file`, `[global] metrics_file`).
//!
//! The file is written whole and renamed into place, so the collector never reads half of
//! it. Run counts come from the installation's audit trail, not from this run alone, so they
//! survive a lost metrics file and agree with `migrate history`.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use migrate_transaction::audit;

use crate::error::{MigrateError, Result};
use crate::report::{MigrationResult, OverallStatus};

const PREFIX: &str = "trustformers_migrate";

/// Checks before a migration starts that the metrics file can be written where it is asked
/// for: a typo in the path is an error then, not a silent gap in the fleet's dashboards.
pub fn check_destination(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(MigrateError::invalid(
            path,
            format!(
                "the metrics file's folder {} does not exist",
                parent.display()
            ),
            "create the folder (usually node_exporter's --collector.textfile.directory) or pass another --metrics-file; nothing was changed",
        ));
    }
    if path.is_dir() {
        return Err(MigrateError::invalid(
            path,
            "is a folder, not a file",
            "pass a file name ending in .prom; nothing was changed",
        ));
    }
    Ok(())
}

/// Completed, failed and rolled-back migrations of the installation at `root`, from its
/// audit trail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub completed: u64,
    pub failed: u64,
    pub rolled_back: u64,
}

impl RunCounts {
    pub fn from_audit(root: &Path) -> RunCounts {
        let mut counts = RunCounts::default();
        for item in audit::history(root) {
            match item.status.as_str() {
                "Completed" => counts.completed += 1,
                "RolledBack" => counts.rolled_back += 1,
                // A run that stopped half-way did not succeed either.
                "Failed" | "Interrupted" => counts.failed += 1,
                _ => {}
            }
        }
        counts
    }
}

/// One migration's outcome as metrics: from its result, or (when it ended before producing
/// one) from its error alone.
pub struct Snapshot<'a> {
    pub finished_unix: f64,
    pub duration_secs: f64,
    pub result: Option<&'a MigrationResult>,
    pub runs: RunCounts,
}

impl Snapshot<'_> {
    fn success(&self) -> bool {
        self.result.is_some_and(|r| {
            matches!(
                r.overall_status,
                OverallStatus::Completed | OverallStatus::UpToDate
            )
        })
    }

    /// The textfile: `# HELP` and `# TYPE` for every metric, then its samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {PREFIX}_{name} {help}");
            let _ = writeln!(out, "# TYPE {PREFIX}_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{PREFIX}_{name}{labels} {}", number(*value));
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        family(
            "last_run_timestamp_seconds",
            "gauge",
            "When the last migration finished (Unix time).",
            &one(self.finished_unix),
        );
        family(
            "last_run_success",
            "gauge",
            "1 if the last migration completed (or was already up to date), 0 otherwise.",
            &one(if self.success() { 1.0 } else { 0.0 }),
        );
        family(
            "last_run_duration_seconds",
            "gauge",
            "Wall time of the last migration.",
            &one(self.duration_secs),
        );
        let steps = self.result.map_or(&[][..], |r| &r.steps[..]);
        family(
            "step_duration_seconds",
            "gauge",
            "Wall time of each step of the last migration.",
            &steps
                .iter()
                .map(|s| (label("step", &s.name), s.duration_ms as f64 / 1000.0))
                .collect::<Vec<_>>(),
        );
        let sum = |f: fn(&crate::StepResult) -> u64| steps.iter().map(f).sum::<u64>() as f64;
        let quarantined = sum(|s| s.quarantined);
        family(
            "records_total",
            "counter",
            "Data records of the last migration, by outcome.",
            &[
                (label("status", "migrated"), sum(|s| s.records)),
                (label("status", "quarantined"), quarantined),
            ],
        );
        let bytes_of = |kind: &str| {
            steps
                .iter()
                .filter(|s| s.name == kind)
                .map(|s| s.bytes)
                .sum::<u64>() as f64
        };
        family(
            "bytes_total",
            "counter",
            "Bytes the last migration read per kind of file; backup: the bytes backed up.",
            &["config", "data", "models", "backup"].map(|k| (label("kind", k), bytes_of(k))),
        );
        family(
            "peak_memory_bytes",
            "gauge",
            "Peak resident memory of the last migration.",
            &one(self.result.map_or(0, |r| r.peak_rss_bytes) as f64),
        );
        family(
            "runs_total",
            "counter",
            "Migrations of this installation by outcome, from its audit trail.",
            &[
                (label("status", "completed"), self.runs.completed as f64),
                (label("status", "failed"), self.runs.failed as f64),
                (label("status", "rolled_back"), self.runs.rolled_back as f64),
            ],
        );
        out
    }
}

/// `{name="value"}`, escaped as the text format wants.
fn label(name: &str, value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{{{name}=\"{escaped}\"}}")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// Writes `text` to `path` atomically: a temporary file beside it, synced, then renamed.
pub fn write(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics.prom".into());
    // node_exporter reads only `*.prom`: the temporary name is never collected half-written.
    let tmp: PathBuf = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(MigrateError::io(
            format!("cannot write the metrics file {}", path.display()),
            e,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::StepResult;
    use crate::ExitCode;

    fn result(status: OverallStatus) -> MigrationResult {
        let mut data = StepResult::new("data");
        data.records = 40;
        data.quarantined = 2;
        data.bytes = 4096;
        data.duration_ms = 1500;
        let mut backup = StepResult::new("backup");
        backup.bytes = 9000;
        MigrationResult {
            overall_status: status,
            from: "0.1.0".into(),
            to: "2.1.0".into(),
            path: "/srv/t".into(),
            hops: vec![],
            steps: vec![data, backup],
            error: None,
            exit_code: ExitCode::Ok as i32,
            preview: None,
            duration_ms: 2000,
            peak_rss_bytes: 123_456,
            isolation: None,
            backup_path: None,
        }
    }

    #[test]
    fn every_metric_has_help_type_and_the_run_s_figures() {
        let r = result(OverallStatus::Completed);
        let text = Snapshot {
            finished_unix: 1_700_000_000.0,
            duration_secs: 2.0,
            result: Some(&r),
            runs: RunCounts {
                completed: 3,
                failed: 1,
                rolled_back: 0,
            },
        }
        .render();
        for name in [
            "last_run_timestamp_seconds",
            "last_run_success",
            "last_run_duration_seconds",
            "step_duration_seconds",
            "records_total",
            "bytes_total",
            "peak_memory_bytes",
            "runs_total",
        ] {
            assert!(text.contains(&format!("# HELP {PREFIX}_{name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {PREFIX}_{name} ")), "{name}");
        }
        for line in [
            "trustformers_migrate_last_run_success 1",
            "trustformers_migrate_step_duration_seconds{step=\"data\"} 1.500",
            "trustformers_migrate_records_total{status=\"migrated\"} 40",
            "trustformers_migrate_records_total{status=\"quarantined\"} 2",
            "trustformers_migrate_bytes_total{kind=\"backup\"} 9000",
            "trustformers_migrate_bytes_total{kind=\"models\"} 0",
            "trustformers_migrate_peak_memory_bytes 123456",
            "trustformers_migrate_runs_total{status=\"completed\"} 3",
            "trustformers_migrate_runs_total{status=\"failed\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn a_run_without_a_result_or_rolled_back_is_not_a_success() {
        let rolled = result(OverallStatus::RolledBack);
        for r in [None, Some(&rolled)] {
            let text = Snapshot {
                finished_unix: 1.0,
                duration_secs: 0.1,
                result: r,
                runs: RunCounts::default(),
            }
            .render();
            assert!(
                text.contains("\ntrustformers_migrate_last_run_success 0\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_missing_folder_is_refused_and_the_write_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/migrate.prom");
        let e = check_destination(&missing).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let path = dir.path().join("migrate.prom");
        check_destination(&path).unwrap();
        write(&path, "a 1\n").unwrap();
        write(&path, "b 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "b 2\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["migrate.prom"], "no temporary file is left");
    }
}

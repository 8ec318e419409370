//! What happened: the result of a migration, as the API returns it, as JSON for scripts and as
//! text for the operator.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{split_next_step, ExitCode, MigrateError};

pub mod preview;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OverallStatus {
    /// Everything migrated and committed.
    Completed,
    /// Refused or failed before commit; the installation is unchanged.
    Failed,
    /// Failed during commit and restored.
    RolledBack,
    /// Stopped part-way and could not be put back: the journal is kept, and the next
    /// `migrate` command (or `migrate recover`) finishes or undoes it.
    Interrupted,
    /// `--dry-run`: the migration ran in a scratch folder; nothing was written.
    DryRun,
    /// Source and target are the same release.
    UpToDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    Completed,
    Failed,
    Skipped,
}

/// One step: a kind of file (config, data, models) through every hop, or the commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub status: StepStatus,
    pub duration_ms: u64,
    pub files: u64,
    pub bytes: u64,
    pub records: u64,
    pub quarantined: u64,
    pub bytes_per_sec: u64,
    pub records_per_sec: u64,
    /// Of `records`, those the hops' declared programs migrated in the host's one fused pass
    /// (the rest went through the hops' rules). Absent when none did.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub records_by_program: u64,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StepResult {
    pub fn new(name: &str) -> Self {
        StepResult {
            name: name.to_owned(),
            status: StepStatus::Completed,
            duration_ms: 0,
            files: 0,
            bytes: 0,
            records: 0,
            quarantined: 0,
            bytes_per_sec: 0,
            records_per_sec: 0,
            records_by_program: 0,
            warnings: Vec::new(),
            error: None,
        }
    }

    pub fn finish(mut self, took: Duration) -> Self {
        self.set_duration(took);
        self
    }

    /// Sets the duration and the rates that follow from it.
    pub fn set_duration(&mut self, took: Duration) {
        self.duration_ms = took.as_millis() as u64;
        let secs = took.as_secs_f64();
        if secs > 0.0 {
            self.bytes_per_sec = (self.bytes as f64 / secs) as u64;
            self.records_per_sec = (self.records as f64 / secs) as u64;
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationResult {
    pub overall_status: OverallStatus,
    pub from: String,
    pub to: String,
    pub path: String,
    pub hops: Vec<String>,
    pub steps: Vec<StepResult>,
    /// Why the run did not complete; `None` when it did.
    pub error: Option<ErrorReport>,
    /// The backup this run took, if it took one: what `migrate rollback --backup-path` takes.
    pub backup_path: Option<String>,
    /// The process exit code this outcome maps to (see [`crate::ExitCode`]).
    pub exit_code: i32,
    /// High-water mark of the process's resident memory.
    pub peak_rss_bytes: u64,
    /// `--dry-run` only: what would change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<preview::Preview>,
    /// How plugin code was confined (absent when no plugin ran).
    pub isolation: Option<crate::isolation::Isolation>,
    pub duration_ms: u64,
}

impl MigrationResult {
    pub fn warnings(&self) -> impl Iterator<Item = &String> {
        self.steps.iter().flat_map(|s| s.warnings.iter())
    }
}

/// A failure as scripts read it: the same four fields whether a migration failed or the
/// command never started one (`{"error": {...}}` on stdout with `--json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorReport {
    pub exit_code: i32,
    /// What went wrong, without the next step.
    pub message: String,
    /// What to do next; nothing is lost by doing it.
    pub next_step: Option<String>,
    /// The file or folder it is about, when there is one.
    pub file: Option<PathBuf>,
}

impl ErrorReport {
    /// From any error's text, with its exit code and file.
    pub fn new(exit_code: ExitCode, text: &str, file: Option<PathBuf>) -> ErrorReport {
        let (message, next_step) = split_next_step(text);
        ErrorReport {
            exit_code: exit_code as i32,
            message,
            next_step,
            file,
        }
    }

    /// The text as the error itself prints it.
    pub fn text(&self) -> String {
        match &self.next_step {
            Some(next) => format!("{}\n  next step: {next}", self.message),
            None => self.message.clone(),
        }
    }
}

impl From<&MigrateError> for ErrorReport {
    fn from(e: &MigrateError) -> ErrorReport {
        ErrorReport::new(
            e.exit_code(),
            &e.to_string(),
            e.file().map(std::path::Path::to_path_buf),
        )
    }
}

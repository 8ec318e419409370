//! Errors a user can hit, each naming the file, the version and the next step, and the exit
//! code each one maps to (documented in README.md).

use std::path::PathBuf;

/// Process exit codes. Stable: scripts depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    Ok = 0,
    /// The migration failed and the installation was left as it was.
    Failed = 1,
    /// Bad command line or `migration_config.toml` (clap uses 2 as well).
    Usage = 2,
    /// Input refused by validation: bad config, bad records, bad model files.
    Invalid = 3,
    /// The migration failed part-way and was rolled back.
    RolledBack = 4,
    /// Another `migrate` holds the installation's lock.
    LockHeld = 5,
    /// A plugin could not be loaded, or two plugins claim the same hop.
    Plugin = 6,
    /// No migration path, or the installation's version cannot be determined.
    NoPath = 7,
}

impl ExitCode {
    /// The code for a number carried in a report; unknown numbers read as `Failed`.
    pub fn from_i32(code: i32) -> ExitCode {
        [
            ExitCode::Ok,
            ExitCode::Failed,
            ExitCode::Usage,
            ExitCode::Invalid,
            ExitCode::RolledBack,
            ExitCode::LockHeld,
            ExitCode::Plugin,
            ExitCode::NoPath,
        ]
        .into_iter()
        .find(|c| *c as i32 == code)
        .unwrap_or(ExitCode::Failed)
    }
}

/// Library error type of the host.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{path}: {message}\n  next step: {hint}")]
    Invalid {
        path: PathBuf,
        message: String,
        hint: String,
    },

    #[error("no migration path from {from} to {to}: {reason}\n  next step: {hint}")]
    NoPath {
        from: String,
        to: String,
        reason: String,
        hint: String,
    },

    #[error("{0}")]
    Version(String),

    #[error("plugin error: {0}")]
    Plugin(String),

    #[error("{0}")]
    Usage(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("migration failed and was rolled back: {0}")]
    RolledBack(String),

    #[error("{0}")]
    Locked(String),
}

impl MigrateError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            MigrateError::Invalid { .. } => ExitCode::Invalid,
            MigrateError::NoPath { .. } | MigrateError::Version(_) => ExitCode::NoPath,
            MigrateError::Plugin(_) => ExitCode::Plugin,
            MigrateError::Usage(_) => ExitCode::Usage,
            MigrateError::Io { .. } => ExitCode::Failed,
            MigrateError::RolledBack(_) => ExitCode::RolledBack,
            MigrateError::Locked(_) => ExitCode::LockHeld,
        }
    }

    /// An I/O error with what was being done and to which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MigrateError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn invalid(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        MigrateError::Invalid {
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

pub type Result<T, E = MigrateError> = std::result::Result<T, E>;

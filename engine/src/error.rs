//! Errors a user can hit, each naming the file, the version and the next step, typed by what a
//! caller does about them, and the exit code each one maps to (documented in README.md).

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
    /// A plugin could not be loaded, failed, or two plugins claim the same hop.
    Plugin = 6,
    /// No migration path, or the installation's version cannot be determined.
    NoPath = 7,
    /// Interrupted part-way: the journal is still there, and the next `migrate` command (or
    /// `migrate recover`) will finish or undo it.
    Interrupted = 8,
    /// A bug in migrate itself (a panic in the host, not in a plugin).
    Internal = 9,
    /// Stopped by SIGINT (Ctrl-C) before anything changed (128 + 2, as shells report it).
    Cancelled = 130,
    /// Stopped by SIGTERM before anything changed (128 + 15).
    Terminated = 143,
}

impl ExitCode {
    const ALL: [ExitCode; 12] = [
        ExitCode::Ok,
        ExitCode::Failed,
        ExitCode::Usage,
        ExitCode::Invalid,
        ExitCode::RolledBack,
        ExitCode::LockHeld,
        ExitCode::Plugin,
        ExitCode::NoPath,
        ExitCode::Interrupted,
        ExitCode::Internal,
        ExitCode::Cancelled,
        ExitCode::Terminated,
    ];

    /// The code for a number carried in a report; unknown numbers read as `Failed`.
    pub fn from_i32(code: i32) -> ExitCode {
        Self::ALL
            .into_iter()
            .find(|c| *c as i32 == code)
            .unwrap_or(ExitCode::Failed)
    }
}

/// Library error type of the engine.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Input refused before anything changed.
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

    /// The installation's release cannot be determined from its files. The next step must
    /// hold for every command that detects it, `status` and `rollback` included, which take
    /// no `--from`.
    #[error(
        "cannot detect the installation's version: {reason}\n  next step: pass --from VERSION to the migration command, or write the release into {}/VERSION (e.g. 2.0.0)", root.display()
    )]
    UnknownVersion { root: PathBuf, reason: String },

    /// `--from` names another release than the installation's files say.
    #[error("--from {given} disagrees with the installation at {}, which is {detected}\n  next step: drop --from, or pass --force if you are sure it is {given}", root.display())]
    VersionMismatch {
        root: PathBuf,
        given: semver::Version,
        detected: semver::Version,
    },

    /// Records are at a later release than the run starts from: the installation is at
    /// another version. Never quarantined: the whole run is refused.
    #[error("{place}: the record has schema_version {schema}, which release {detected} writes, but the migration starts from {from}: the installation is at another version than the run assumes; refused, nothing was changed\n  next step: run the migration without --from and --force (the installation's files say {detected}), and check that --path is the installation you mean")]
    WrongVersion {
        /// The data file, relative to the installation: what [`MigrateError::file`] names.
        file: PathBuf,
        /// The record in it: `data/requests.jsonl:12` or `data/x.json (record 3)`.
        place: String,
        schema: u64,
        detected: String,
        from: String,
    },

    /// A record refused by a hop (or unreadable) while `on_invalid` is `fail`. Kept apart
    /// from [`MigrateError::Invalid`] because the record's place (`data/requests.jsonl:12`)
    /// is not a path a script can open: `file` is the data file itself.
    #[error("{place}: {message}\n  next step: {hint}")]
    RecordRefused {
        /// The data file, relative to the installation.
        file: PathBuf,
        /// The record in it, as the message names it.
        place: String,
        message: String,
        hint: String,
    },

    /// Two plugins of the same precedence claim one hop.
    #[error("two plugins provide the hop {hop}: {} and {}\n  next step: remove one of them, or choose one with --use-plugin NAME|PATH", first.display(), second.display())]
    PluginConflict {
        hop: String,
        first: PathBuf,
        second: PathBuf,
    },

    /// A plugin panicked or answered something the host cannot use, while migrating `input`.
    #[error("{}: {detail} (hop {hop}, plugin {plugin})\n  plugin file: {}\n  next step: nothing was changed; report this to the plugin's author", input.display(), plugin_file.display())]
    PluginFailed {
        plugin: String,
        hop: String,
        plugin_file: PathBuf,
        input: PathBuf,
        detail: String,
    },

    /// A `--from`/`--to`/`--version` value that is not a release number.
    #[error("{flag} {text}: not a release number ({source})\n  next step: write it like 2.1.0 (2.1 means 2.1.0)")]
    BadVersion {
        flag: &'static str,
        text: String,
        #[source]
        source: semver::Error,
    },

    /// `migration_config.toml` cannot be used.
    #[error("{}: {detail}\n  next step: fix the file; the keys it may hold are listed in README.md (migration_config.toml)", path.display())]
    Settings { path: PathBuf, detail: String },

    /// A command line that cannot be acted on; `hint` says what to pass instead.
    #[error("{message}\n  next step: {hint}")]
    Usage { message: String, hint: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The run stopped after the swap began and everything was put back.
    #[error("migration failed and was rolled back: {reason}")]
    RolledBack { reason: String },

    /// `timeout_seconds` passed before the swap: the staged work was discarded.
    #[error("timed out after {limit_secs} s (timeout_seconds) during {during}; the staged work was discarded and the installation is as it was\n  next step: raise timeout_seconds in migration_config.toml")]
    TimedOut { limit_secs: u64, during: String },

    /// The run stopped half-way and could not put things back: the journal is left for the
    /// next command.
    #[error("{reason}\n  the installation at {} is between two states; its journal is kept\n  next step: run `migrate recover --path {}` (or any migrate command on it) to undo the interrupted run", root.display(), root.display())]
    Interrupted { root: PathBuf, reason: String },

    /// A bug in the host (a panic): not the plugin's fault, nor the operator's.
    #[error("internal error in migrate: {detail}\n  next step: report this bug with the command you ran; {state}")]
    Internal { detail: String, state: String },

    /// Staging, journal, backup, restore, lock or audit trail.
    #[error(transparent)]
    Transaction(#[from] migrate_transaction::Error),

    /// The worker running plugin code died, or was stopped, before it finished: the staging is
    /// discarded, nothing in the installation changed.
    #[error("{cause} {during}\n  the installation is unchanged: nothing was swapped in, and the staged work was removed\n  next step: {}", cause.next_step())]
    WorkerStopped {
        cause: StopCause,
        /// What it was doing: the plugin, its file and sha256, the hop, the file and lines.
        during: String,
        /// The plugin whose call was running, when one was.
        plugin: Option<String>,
        /// The step that was running.
        step: Option<String>,
    },

    /// What a plugin staged is not what the target release looks like: refused before the
    /// swap.
    #[error("the staged output is not a valid {version} installation, so nothing was swapped in:{}\n  next step: nothing was changed; report a problem above to the author of the plugin it names", violations.iter().map(|v| format!("\n    - {v}")).collect::<String>())]
    StagedInvalid {
        version: String,
        violations: Vec<Violation>,
    },

    /// Files of the installation changed while the migration ran (the model files whose
    /// checksums the model rules were handed): the staging no longer describes them, and
    /// nothing was swapped in. No plugin's doing: something still writes to the installation.
    #[error("files of {} changed while the migration ran, so nothing was swapped in:{}\n  next step: nothing was changed; stop whatever writes to the installation (is the server still running?) and run the migration again", root.display(), changes.iter().map(|v| format!("\n    - {v}")).collect::<String>())]
    ChangedDuringRun {
        root: PathBuf,
        changes: Vec<Violation>,
    },

    /// An error the worker met and reported that has no typed form on the worker protocol
    /// (an I/O or transaction error, a bug in the worker), with the exit code it means and
    /// the file it is about. The errors a caller acts on (a refused record, a plugin's
    /// failure, …) cross the protocol typed and come back as their own variant.
    #[error("{message}")]
    Staged {
        exit_code: i32,
        message: String,
        file: Option<PathBuf>,
    },
}

/// Why a worker is gone before it finished.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopCause {
    #[error("the plugin worker was killed by signal {} ({signal})", signal_name(*signal))]
    Signal { signal: i32 },
    #[error("the plugin worker exited with status {code}")]
    Exit { code: i32 },
    #[error("the plugin worker went over its memory limit (max_worker_memory_mb) and was stopped")]
    MemoryLimit,
    #[error("the plugin worker reported no progress for {secs} s (stall_seconds) and was stopped")]
    Stalled { secs: u64 },
    #[error("timed out after {secs} s (timeout_seconds): the plugin worker was stopped")]
    Deadline { secs: u64 },
    #[error("stopped by {}: the plugin worker was stopped", signal_name(*signal))]
    Cancelled { signal: i32 },
    #[error("the plugin worker broke the protocol ({detail}) and was stopped")]
    Protocol { detail: String },
    #[error("the plugin worker died")]
    Died,
}

impl StopCause {
    /// The exit code a run stopped this way ends with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            StopCause::Deadline { .. } => ExitCode::RolledBack,
            StopCause::Cancelled { signal } if *signal == libc::SIGTERM => ExitCode::Terminated,
            StopCause::Cancelled { .. } => ExitCode::Cancelled,
            _ => ExitCode::Plugin,
        }
    }

    fn next_step(&self) -> &'static str {
        match self {
            StopCause::Deadline { .. } => "raise timeout_seconds in migration_config.toml, or find out why the plugin is slow",
            StopCause::Stalled { .. } => "report this to the plugin's author; raise stall_seconds in migration_config.toml only if the plugin is known to be slow but working",
            StopCause::MemoryLimit => "report this to the plugin's author; raise max_worker_memory_mb in migration_config.toml only if the installation needs that much",
            StopCause::Cancelled { .. } => "run the migration again when you are ready",
            _ => "report this to the plugin's author, or remove the plugin file from the plugin folder",
        }
    }
}

/// `SIGSEGV`-style names for the signals a worker dies of.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

impl MigrateError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            MigrateError::Invalid { .. } | MigrateError::RecordRefused { .. } => ExitCode::Invalid,
            MigrateError::NoPath { .. }
            | MigrateError::UnknownVersion { .. }
            | MigrateError::VersionMismatch { .. }
            | MigrateError::WrongVersion { .. } => ExitCode::NoPath,
            MigrateError::PluginConflict { .. }
            | MigrateError::PluginFailed { .. }
            | MigrateError::StagedInvalid { .. } => ExitCode::Plugin,
            MigrateError::BadVersion { .. }
            | MigrateError::Settings { .. }
            | MigrateError::Usage { .. } => ExitCode::Usage,
            MigrateError::Io { .. } | MigrateError::ChangedDuringRun { .. } => ExitCode::Failed,
            MigrateError::RolledBack { .. } | MigrateError::TimedOut { .. } => ExitCode::RolledBack,
            MigrateError::Interrupted { .. } => ExitCode::Interrupted,
            MigrateError::Internal { .. } => ExitCode::Internal,
            MigrateError::Transaction(t) => Self::exit_code_of(t),
            MigrateError::WorkerStopped { cause, .. } => cause.exit_code(),
            MigrateError::Staged { exit_code, .. } => ExitCode::from_i32(*exit_code),
        }
    }

    /// The exit code of an error from the transaction layer, met on its own (a rollback or a
    /// recovery) or inside a [`MigrateError`].
    pub fn exit_code_of(t: &migrate_transaction::Error) -> ExitCode {
        use migrate_transaction::Error as T;
        match t {
            T::Io { .. } | T::Cancelled { .. } => ExitCode::Failed,
            T::Invalid { .. } => ExitCode::Invalid,
            T::Locked { .. } => ExitCode::LockHeld,
            T::Usage { .. } => ExitCode::Usage,
            T::Interrupted { .. } => ExitCode::Interrupted,
            T::Remote(_) => ExitCode::Failed,
        }
    }

    /// The file or folder the error is about, when it is about one: what a script shows or
    /// opens first.
    pub fn file(&self) -> Option<&std::path::Path> {
        use migrate_transaction::Error as T;
        match self {
            MigrateError::Invalid { path, .. } | MigrateError::Settings { path, .. } => {
                Some(path)
            }
            MigrateError::WrongVersion { file, .. } | MigrateError::RecordRefused { file, .. } => {
                Some(file)
            }
            MigrateError::Staged { file, .. } => file.as_deref(),
            // The first problem found: a refused staging names every one in its message.
            MigrateError::StagedInvalid { violations, .. } => {
                violations.first().map(|v| std::path::Path::new(v.file.as_str()))
            }
            MigrateError::ChangedDuringRun { changes, .. } => {
                changes.first().map(|v| std::path::Path::new(v.file.as_str()))
            }
            MigrateError::UnknownVersion { root, .. }
            | MigrateError::VersionMismatch { root, .. }
            | MigrateError::Interrupted { root, .. } => Some(root),
            MigrateError::PluginConflict { first, .. } => Some(first),
            MigrateError::PluginFailed { input, .. } => Some(input),
            MigrateError::Transaction(T::Invalid { path, .. }) => Some(path),
            MigrateError::Transaction(T::Locked { root, .. })
            | MigrateError::Transaction(T::Interrupted { root, .. }) => Some(root),
            MigrateError::NoPath { .. }
            | MigrateError::BadVersion { .. }
            | MigrateError::Usage { .. }
            | MigrateError::Io { .. }
            | MigrateError::RolledBack { .. }
            | MigrateError::TimedOut { .. }
            | MigrateError::Internal { .. }
            // A dead worker's last call is named in `during` (plugin, hop and input): the
            // worker is about the run, not about one file.
            | MigrateError::WorkerStopped { .. }
            | MigrateError::Transaction(T::Io { .. })
            | MigrateError::Transaction(T::Remote(_))
            | MigrateError::Transaction(T::Cancelled { .. })
            | MigrateError::Transaction(T::Usage { .. }) => None,
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

    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        MigrateError::Usage {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// How every error's text gives its next step: `message` + this + `next step`. The one
/// place that splits an error's text into its two parts ([`split_next_step`]) relies on it.
pub const NEXT_STEP: &str = "\n  next step: ";

/// An error's text split into what went wrong and the next step (if it names one).
pub fn split_next_step(text: &str) -> (String, Option<String>) {
    match text.split_once(NEXT_STEP) {
        Some((message, next)) => (message.to_owned(), Some(next.trim().to_owned())),
        None => (text.to_owned(), None),
    }
}

pub type Result<T, E = MigrateError> = std::result::Result<T, E>;

/// One problem in the staging, with the file and the plugin that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The staged file, relative to the installation: what [`MigrateError::file`] names.
    pub file: String,
    /// The record in `file` the problem is about (`data/requests.jsonl:12`,
    /// `data/x.json (record 3)`), shown instead of the file; `None` when it is the whole file.
    pub place: Option<String>,
    pub problem: String,
    /// The last hop whose rule writes this kind of file: its output is what was staged.
    pub plugin: Option<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.place.as_deref().unwrap_or(&self.file);
        match &self.plugin {
            Some(p) => write!(f, "{at}: {} (written by plugin {p})", self.problem),
            None => write!(f, "{at}: {}", self.problem),
        }
    }
}

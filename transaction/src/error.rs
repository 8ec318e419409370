//! What can go wrong while files change on disk, typed by what the caller does about it: an
//! I/O failure, a refused input (a damaged backup or journal: use another one), or a lock held
//! by another process (wait).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed; `context` says what was being done, and to which path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Input refused before anything changed: a damaged or crafted backup or journal, a path
    /// that is not a folder. `hint` is the next step, which loses nothing.
    #[error("{path}: {message}\n  next step: {hint}")]
    Invalid {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// A command that cannot be acted on as given; `hint` says what to pass.
    #[error("{message}\n  next step: {hint}")]
    Usage { message: String, hint: String },
    /// Stopped half-way through a swap or a recovery: the journal is kept, and the next
    /// command (or `migrate recover`) will finish or undo it.
    #[error("{reason}\n  the installation at {} is between two states; its journal is kept\n  next step: run `migrate recover --path {}` (or any migrate command on it) to finish or undo it", root.display(), root.display())]
    Interrupted { root: PathBuf, reason: String },
    /// Another process holds the installation's lock.
    #[error("{root} is being migrated by another migrate process (PID {holder})\n  next step: wait for it to finish; the lock is released automatically when that process ends")]
    Locked { root: PathBuf, holder: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// `map_err(io(format!("cannot write {}", path.display())))`: the one way an I/O error gets
/// the context an operator needs.
pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

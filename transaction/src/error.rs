//! What can go wrong while files change on disk, typed by what the caller does about it: an
//! I/O failure, a refused input (a damaged backup or journal: use another one), a lock held
//! by another process (wait), or a remote copy that failed ([`RemoteError`], defined here so
//! that every module can name it without depending on the S3 client).

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
    /// The caller was asked whether to go on (a rollback over files changed since the
    /// migration) and said no. `done` says what had changed before the question: "nothing was
    /// changed", or what the recovery that ran first did.
    #[error("cancelled at your answer: {done}\n  next step: run the command again and answer y, or pass --yes")]
    Cancelled { done: String },
    /// Another process holds the installation's lock.
    #[error("{root} is locked by another migrate process (PID {holder}): a migration, a rollback or a recovery is under way there\n  next step: wait for it to finish (a rollback may be waiting for an answer at its terminal); the lock is released automatically when that process ends")]
    Locked { root: PathBuf, holder: String },
    /// A remote copy of a backup could not be written, verified or read back.
    #[error(transparent)]
    Remote(Box<RemoteError>),
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        Error::Remote(Box::new(e))
    }
}

/// What went wrong with a remote copy. Every message names the endpoint and the bucket, and
/// never a credential.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// `[backup] remote` or `--backup-path` is not an `s3://` location.
    #[error("`{url}` is not an S3 location: {why}\n  next step: write it as s3://bucket/prefix")]
    BadUrl { url: String, why: String },
    /// The store could not be reached, refused the request (credentials, permissions, no such
    /// bucket) or failed part-way.
    #[error("cannot {action} s3://{}/{} at {}: {detail}\n  next step: {}", at.bucket, at.key, at.endpoint, at.hint)]
    Store {
        action: &'static str,
        at: Box<Place>,
        detail: String,
    },
    /// The store accepted the upload, but what it holds is not what was sent.
    #[error("the copy at s3://{}/{} ({}) is not verified: {detail}\n  next step: {}", at.bucket, at.key, at.endpoint, at.hint)]
    Unverified { at: Box<Place>, detail: String },
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Local {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a remote operation went wrong, and what the operator can do about it.
#[derive(Debug)]
pub struct Place {
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub hint: String,
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

//! `migrate rollback`: brings an installation back to the state a backup recorded. The backup
//! is extracted into staging and verified entry by entry first, so a damaged or malicious
//! backup is refused before the installation is touched; the swap then goes through the same
//! journal as a migration, so a crash during the restore is recoverable too.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::audit::Audit;
use crate::backup::{self, BackupMetadata};
use crate::encrypt::{self, Identities};
use crate::error::{Error, Result};
use crate::journal::{self, Modes, Transaction};
use crate::layout::TOOL_DIR;
use crate::lock::InstallLock;
use crate::staging::Staging;

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup: PathBuf,
    pub root: PathBuf,
    pub restored_files: usize,
    pub removed_files: usize,
    /// The release the installation is back at.
    pub version: String,
    /// What went wrong without undoing the restore (an audit entry that could not be written).
    pub warnings: Vec<String>,
}

/// Restores `backup` into `root` (default: the installation the backup was taken from).
pub fn restore(backup_path: &Path, root: Option<&Path>) -> Result<RestoreReport> {
    restore_with(backup_path, root, None)
}

/// [`restore`], decrypting an encrypted backup with `keys`. Without them, or with keys that do
/// not open it, it is refused before the installation is locked or anything is written.
pub fn restore_with(
    backup_path: &Path,
    root: Option<&Path>,
    keys: Option<&Identities>,
) -> Result<RestoreReport> {
    let meta = backup::read_metadata(backup_path)?;
    encrypt::check_opens(
        &backup_path.join(&meta.archive),
        meta.encryption.as_ref(),
        keys,
    )?;
    let root: PathBuf = root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(&meta.root));
    if !root.is_dir() {
        return Err(Error::invalid(
            &root,
            "not a folder",
            "pass --path with the installation to restore into",
        ));
    }
    let tool_dir = root.join(TOOL_DIR);
    let _lock = InstallLock::acquire(&tool_dir)?;
    journal::recover(&root, &tool_dir, false)?;
    let mut staging = Staging::create(&tool_dir)?;
    let meta: BackupMetadata = backup::extract_with(backup_path, &staging, keys)?;
    let mut removed = 0;
    for rel in &meta.created_files {
        if root.join(rel).exists() {
            staging.remove_at_commit(rel);
            removed += 1;
        }
    }
    let txn = Transaction::prepare(
        &root,
        &tool_dir,
        staging,
        &meta.target_version,
        &meta.source_version,
        None,
        Modes::Staged,
    )?;
    if let Err(e) = txn.swap() {
        txn.rollback()?;
        return Err(e);
    }
    txn.commit()?;
    for dir in meta.created_dirs.iter().rev() {
        let _ = std::fs::remove_dir(root.join(dir));
    }
    let recorded = Audit::new(&root).record(
        "rollback",
        serde_json::json!({"backup": backup_path, "to_version": meta.source_version, "from_version": meta.target_version, "restored_files": meta.files.len(), "removed_files": removed, "archive_sha256": meta.archive_sha256}),
    );
    Ok(RestoreReport {
        warnings: recorded.err().map(|e| e.to_string()).into_iter().collect(),
        backup: backup_path.to_path_buf(),
        root,
        restored_files: meta.files.len(),
        removed_files: removed,
        version: meta.source_version,
    })
}

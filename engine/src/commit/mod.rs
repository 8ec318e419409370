//! Commit: the staged files become the installation. The journal records the swap first
//! (originals kept), the backup is taken from those originals before anything changes, then
//! the files are renamed into place (`VERSION` last) and the journal is marked committed.
//! A failure after the swap began is rolled back; a rollback that fails too leaves the journal
//! for the next command, and says so.

use std::path::Path;

use migrate_transaction::audit::Audit;
use migrate_transaction::backup;
use migrate_transaction::confine::{Kind, Root};
use migrate_transaction::fault;
use migrate_transaction::journal::{self, Action, BackupPlan, Entry, Modes, Transaction};
use migrate_transaction::remote::Remote;
use migrate_transaction::staging::Staging;

use crate::discover::install::VERSION_FILE;
use crate::error::{MigrateError, Result};
use crate::observe::Observer;
use crate::plan::{Plan, RemoteCopy};
use crate::report::{StepResult, StepStatus};
use crate::verify::digests::StagedDigests;

/// Writes `VERSION` into staging and records the swap in the journal (originals kept).
pub fn prepare(plan: &Plan, staging: Staging, s: &mut StepResult) -> Result<Transaction> {
    let version = format!("{}\n", plan.to);
    let last = if plan.target.write_version {
        let root = migrate_transaction::confine::Root::open(&plan.target.root)?;
        let mode = migrate_transaction::journal::final_mode(&root, VERSION_FILE)?;
        staging.write(VERSION_FILE, version.as_bytes(), mode)?;
        Some(VERSION_FILE)
    } else {
        None
    };
    let (from, to) = (plan.from.to_string(), plan.to.to_string());
    // The journal says where the backup goes, so that `recover --forward` can complete it.
    let backup = plan.options.backup_dir.as_ref().map(|dir| BackupPlan {
        dir: std::path::absolute(dir)
            .unwrap_or_else(|_| dir.clone())
            .display()
            .to_string(),
        kind: plan.target.kind.as_str().to_owned(),
        done: None,
        encrypt_to: plan
            .options
            .encrypt_to
            .as_ref()
            .map(|to| to.public_keys())
            .unwrap_or_default(),
    });
    let txn = Transaction::prepare(
        &plan.target.root,
        staging,
        &from,
        &to,
        last,
        Modes::FromTarget,
        backup,
    )?;
    s.files = txn.entries().len() as u64;
    Ok(txn)
}

/// Bytes of the files the swap replaces or removes: what a backup must hold.
pub fn replaced_bytes(plan: &Plan, txn: &Transaction) -> u64 {
    let entries = txn.entries().iter().filter(|e| e.action != Action::Create);
    sizes(&plan.target.root, entries)
}

/// Bytes of the regular files `entries` name, reached without following a link (a link or a
/// folder counts nothing): an estimate never sizes a file outside the installation.
fn sizes<'a>(root: &Path, entries: impl Iterator<Item = &'a Entry>) -> u64 {
    let Ok(root) = Root::open(root) else {
        return 0;
    };
    entries
        .filter_map(|e| root.stat(&e.rel).ok().flatten())
        .filter(|f| f.kind == Kind::File)
        .map(|f| f.size)
        .sum()
}

/// The backup, when one is wanted; taken (and verified) before any file in the installation
/// changes, and recorded in the journal: the swap never starts without it.
pub fn back_up(
    plan: &Plan,
    txn: &mut Transaction,
    digests: &StagedDigests,
    s: &mut StepResult,
    observer: &dyn Observer,
) -> Result<()> {
    let Some(dir) = &plan.options.backup_dir else {
        s.status = StepStatus::Skipped;
        s.warnings.push(
            "no backup: backup_before_migration = false; `migrate rollback` cannot undo this migration"
                .into(),
        );
        if let Some(remote) = &plan.options.remote {
            s.warnings.push(format!(
                "[backup] remote is {}, but backup_before_migration = false: no backup was taken, so none was uploaded",
                remote.location
            ));
        }
        return Ok(());
    };
    // The staged data files were hashed by the pre-swap check as it read them: the backup
    // records those checksums rather than read the files again.
    let known = |rel: &str, file: &std::fs::File| digests.size_and_sha256(rel, file);
    let path = journal::back_up(
        txn.root(),
        txn.journal(),
        dir,
        plan.target.kind.as_str(),
        Some(&known),
        &|archived| observer.step_progress(archived, 0),
    )?;
    fault::point("backup")?;
    if let Some(remote) = &plan.options.remote {
        upload(plan, &path, remote, s, observer)?;
    }
    txn.backup_done(&path)?;
    let recorded = Audit::new(&plan.target.root).record("backup_created", serde_json::json!({"backup": path, "from": plan.from.to_string(), "to": plan.to.to_string()}));
    if let Err(e) = recorded {
        observer.warning(&e.to_string());
    }
    s.files = txn
        .entries()
        .iter()
        .filter(|e| e.action != Action::Create)
        .count() as u64;
    s.bytes = replaced_bytes(plan, txn);
    s.warnings.push(format!("backup: {}", path.display()));
    s.warnings.push(match &plan.options.encrypt_to {
        Some(to) => format!(
            "backup encrypted with age to {}",
            to.public_keys().join(", ")
        ),
        None => "backup not encrypted (set [backup] encrypt_to to encrypt it)".into(),
    });
    Ok(())
}

/// Uploads the backup just written to `[backup] remote`, verified, before anything in the
/// installation changes. When the copy is required and fails, the local backup of a
/// migration that will not happen is removed and the migration is refused.
fn upload(
    plan: &Plan,
    path: &Path,
    remote: &RemoteCopy,
    s: &mut StepResult,
    observer: &dyn Observer,
) -> Result<()> {
    let hint = if remote.required {
        "nothing in the installation changed; check AWS_ENDPOINT_URL, the bucket and the credentials, and run the migration again (or set require_remote = false in [backup] to migrate with the local backup only)"
    } else {
        "the migration went on with the local backup only (require_remote = false); copy it off the box yourself"
    };
    let uploaded = backup::read_metadata(path)
        .and_then(|meta| Ok(Remote::connect(&remote.location, hint)?.upload(path, &meta)?));
    match uploaded {
        Ok(up) => {
            let recorded = Audit::new(&plan.target.root).record(
                "backup_uploaded",
                serde_json::json!({"backup": path, "remote": up.url, "bytes": up.archive_bytes, "parts": up.parts}),
            );
            if let Err(e) = recorded {
                observer.warning(&e.to_string());
            }
            s.warnings.push(format!(
                "remote copy: {} ({} archive bytes in {} part(s), read back and verified)",
                up.url, up.archive_bytes, up.parts
            ));
            Ok(())
        }
        Err(e) if remote.required => {
            // The local backup of a migration that will not happen; below the installation it
            // is removed through the confinement layer, like every backup.
            let root = &plan.target.root;
            match path.strip_prefix(root).ok().and_then(Path::to_str) {
                Some(rel) => {
                    let _ = Root::open(root).and_then(|r| r.remove_all(rel));
                }
                None => {
                    let _ = std::fs::remove_dir_all(path);
                }
            }
            Err(e.into())
        }
        Err(e) => {
            let text = format!("remote copy failed: {e}");
            observer.warning(&text);
            s.warnings.push(text);
            Ok(())
        }
    }
}

/// Swaps the staged files in and makes it final (or rolls back). The staging was verified
/// before this point, so nothing invalid is ever in place, not even for a moment.
pub fn commit(plan: &Plan, txn: Transaction, s: &mut StepResult) -> Result<()> {
    let root = &plan.target.root;
    s.files = txn.entries().len() as u64;
    if let Err(e) = txn.swap() {
        return Err(roll_back(plan, txn, e.to_string()));
    }
    s.bytes = sizes(root, txn.entries().iter());
    txn.commit().map_err(|e| MigrateError::Interrupted {
        root: root.clone(),
        reason: format!("every file is in place, but the commit could not be recorded: {e}; `migrate recover --path {} --forward` finishes it, any other migrate command undoes it", root.display()),
    })
}

/// Undoes a swap that failed for `reason`. When the undo fails as well, the installation is
/// between two states and the journal stays for the next command: that is what is reported.
pub fn roll_back(plan: &Plan, txn: Transaction, reason: String) -> MigrateError {
    match txn.rollback() {
        Ok(()) => MigrateError::RolledBack { reason },
        Err(undo) => MigrateError::Interrupted {
            root: plan.target.root.clone(),
            reason: format!("{reason}; rolling back also failed ({undo})"),
        },
    }
}

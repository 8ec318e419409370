//! Commit: the staged files become the installation. The journal records the swap first
//! (originals kept), the backup is taken from those originals before anything changes, then
//! the files are renamed into place (`VERSION` last) and the journal is marked committed.
//! A failure after the swap began is rolled back; a rollback that fails too leaves the journal
//! for the next command, and says so.

use migrate_transaction::audit::Audit;
use migrate_transaction::fault;
use migrate_transaction::journal::{self, Action, BackupPlan, Modes, Transaction};
use migrate_transaction::staging::Staging;

use crate::discover::install::VERSION_FILE;
use crate::error::{MigrateError, Result};
use crate::observe::Observer;
use crate::plan::Plan;
use crate::report::{StepResult, StepStatus};

/// Writes `VERSION` into staging and records the swap in the journal (originals kept).
pub fn prepare(plan: &Plan, staging: Staging, s: &mut StepResult) -> Result<Transaction> {
    let version = format!("{}\n", plan.to);
    let last = if plan.target.write_version {
        staging.write(VERSION_FILE, version.as_bytes())?;
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
    txn.entries()
        .iter()
        .filter(|e| e.action != Action::Create)
        .filter_map(|e| std::fs::metadata(plan.target.root.join(&e.rel)).ok())
        .map(|m| m.len())
        .sum()
}

/// The backup, when one is wanted; taken (and verified) before any file in the installation
/// changes, and recorded in the journal: the swap never starts without it.
pub fn back_up(
    plan: &Plan,
    txn: &mut Transaction,
    s: &mut StepResult,
    observer: &dyn Observer,
) -> Result<()> {
    let Some(dir) = &plan.options.backup_dir else {
        s.status = StepStatus::Skipped;
        s.warnings.push(
            "no backup: backup_before_migration = false; `migrate rollback` cannot undo this migration"
                .into(),
        );
        return Ok(());
    };
    let path = journal::back_up(txn.root(), txn.journal(), dir, plan.target.kind.as_str())?;
    fault::point("backup")?;
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
    Ok(())
}

/// Swaps the staged files in and makes it final (or rolls back). The staging was verified
/// before this point, so nothing invalid is ever in place, not even for a moment.
pub fn commit(plan: &Plan, txn: Transaction, s: &mut StepResult) -> Result<()> {
    let root = &plan.target.root;
    s.files = txn.entries().len() as u64;
    if let Err(e) = txn.swap() {
        return Err(roll_back(plan, txn, e.to_string()));
    }
    s.bytes = txn
        .entries()
        .iter()
        .filter_map(|e| std::fs::metadata(root.join(&e.rel)).ok())
        .map(|m| m.len())
        .sum();
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

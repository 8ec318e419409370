//! Recovering an installation from an interrupted migration or restore: the journal's
//! [`recover`](crate::journal::recover) under the installation's lock, recorded in the audit
//! trail. Every command that reads or writes an installation does this first.

use std::path::Path;

use crate::audit::Audit;
use crate::error::Result;
use crate::journal::{self, Recovery};
use crate::layout::TOOL_DIR;
use crate::lock::InstallLock;

/// What a recovery did, and what went wrong without undoing it.
#[derive(Debug)]
pub struct Recovered {
    pub outcome: Option<Recovery>,
    /// An audit entry that could not be written.
    pub warnings: Vec<String>,
}

/// Rolls back an interrupted migration of `root`, if there is one, taking the installation's
/// lock only then: a read-only command on a clean installation takes no lock.
pub fn roll_back_if_interrupted(root: &Path) -> Result<Recovered> {
    let tool_dir = root.join(TOOL_DIR);
    if !journal::is_interrupted(&tool_dir) {
        return Ok(Recovered {
            outcome: None,
            warnings: Vec::new(),
        });
    }
    let _lock = InstallLock::acquire(&tool_dir)?;
    recover_locked(root, false)
}

/// Finishes (`forward`) or undoes an interrupted migration and records it in the audit trail.
/// The caller holds the installation's lock.
pub fn recover_locked(root: &Path, forward: bool) -> Result<Recovered> {
    let outcome = journal::recover(root, &root.join(TOOL_DIR), forward)?;
    let mut warnings = Vec::new();
    if let Some(r) = &outcome {
        let recorded = Audit::new(root).record(
            "recovery",
            serde_json::json!({"outcome": format!("{r:?}"), "forward": forward}),
        );
        warnings.extend(recorded.err().map(|e| e.to_string()));
    }
    Ok(Recovered { outcome, warnings })
}

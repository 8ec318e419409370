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

/// Rolls back an interrupted migration of `root`, and removes what a crash left (staging,
/// `.partial` backups), if there is any; it takes the installation's lock only then: a
/// read-only command on a clean installation takes no lock.
pub fn roll_back_if_interrupted(root: &Path) -> Result<Recovered> {
    if !journal::has_leftovers(root) {
        return Ok(Recovered {
            outcome: None,
            warnings: Vec::new(),
        });
    }
    let _lock = InstallLock::acquire(&root.join(TOOL_DIR))?;
    recover_locked(root, false, false)
}

/// Finishes (`forward`) or undoes an interrupted migration, removes leftovers, and records
/// it in the audit trail; `explicit` (`migrate recover`) records even that there was nothing
/// to do. The caller holds the installation's lock.
pub fn recover_locked(root: &Path, forward: bool, explicit: bool) -> Result<Recovered> {
    let outcome = journal::recover(root, forward)?;
    let mut warnings = Vec::new();
    if outcome.is_some() || explicit {
        let details = match &outcome {
            Some(Recovery::RolledBack { from, to }) => {
                serde_json::json!({"outcome": "rolled_back", "from": from, "to": to})
            }
            Some(Recovery::Finished { from, to, backup }) => {
                serde_json::json!({"outcome": "finished", "from": from, "to": to, "backup": backup})
            }
            Some(Recovery::Cleaned { removed }) => {
                serde_json::json!({"outcome": "cleaned", "removed": removed})
            }
            None => serde_json::json!({"outcome": "nothing_to_recover"}),
        };
        let mut details = details;
        details["forward"] = forward.into();
        details["explicit"] = explicit.into();
        let recorded = Audit::new(root).record("recovery", details);
        warnings.extend(recorded.err().map(|e| e.to_string()));
    }
    Ok(Recovered { outcome, warnings })
}

//! Link-free snapshots of the model folders, which model rules read instead of the
//! installation.
//!
//! Why: planning refuses a link in a model folder, but a plugin opens files by path, and a link
//! planted between planning and the plugin's read (by whoever can write the installation) would
//! be followed, into a file outside the installation or a FIFO that hangs the worker. So before
//! the worker starts, the supervisor (unconfined: a Landlock'd worker may not hard-link out of
//! the read-only installation) puts each file of each model folder into a folder of its own:
//! opened confined, checked to be a regular file, hard-linked (or copied where linking is not
//! possible) and checked to be the very file that was opened ([`Root::snapshot_file`]). The
//! snapshot sits in the staging's parent (`.migrate/`, 0700, ours; a private scratch folder in
//! a dry run) and is not below the staging folder, the only place the worker may write: nobody
//! but this process can plant anything in it after the check, and the worker cannot write into
//! the installation's files through the hard links. Its name starts with `staging-`, so a crash
//! leaves it to the leftover clean-up like any staging folder.

use std::path::{Path, PathBuf};

use migrate_transaction::confine::{self, Root};
use migrate_transaction::fault;
use migrate_transaction::staging::Staging;

use crate::error::{MigrateError, Result};
use crate::plan::Plan;

/// A model snapshot on disk; removed when dropped.
pub struct Snapshot {
    parent: Root,
    name: String,
    dir: PathBuf,
}

impl Snapshot {
    /// Builds the snapshot of every model folder of `plan` beside `staging`; `None` when the
    /// plan has no model folder.
    pub fn build(plan: &Plan, staging: &Staging) -> Result<Option<Snapshot>> {
        if plan.models.is_empty() {
            return Ok(None);
        }
        let (Some(parent), Some(name)) = (
            staging.dir().parent(),
            staging.dir().file_name().and_then(|n| n.to_str()),
        ) else {
            return Err(MigrateError::Internal {
                detail: format!(
                    "the staging folder {} has no parent",
                    staging.dir().display()
                ),
                state: "nothing was changed".into(),
            });
        };
        let parent = Root::open(parent)?;
        let name = format!("{name}.snapshot");
        parent.create_dir(&name, 0o700)?;
        let snapshot = Snapshot {
            dir: parent.join(&name),
            parent,
            name,
        };
        // Test hook: a crash test pauses here to plant a link after planning.
        fault::point("model_snapshot")?;
        let install = Root::open(&plan.target.root)?;
        let dest = Root::open(&snapshot.dir)?;
        for model in &plan.models {
            make_dirs(&dest, &model.rel)?;
            for inside in install.files_below(&model.rel)? {
                let rel = confine::join(&model.rel, &inside);
                if let Some((dir, _)) = rel.rsplit_once('/') {
                    make_dirs(&dest, dir)?;
                }
                install.snapshot_file(&rel, &dest, &rel)?;
            }
        }
        Ok(Some(snapshot))
    }

    /// The folder holding `models/<name>/…` as in the installation.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = self.parent.remove_all(&self.name);
    }
}

/// Creates `rel` and its parents in the snapshot, private.
fn make_dirs(dest: &Root, rel: &str) -> Result<()> {
    let mut at = String::new();
    for part in confine::components(rel).unwrap_or_default() {
        at = confine::join(&at, part);
        dest.create_dir(&at, 0o700)?;
    }
    Ok(())
}

//! The staging area: every file a migration writes goes here first, on the installation's own
//! filesystem, and is synced before anything in the installation changes. The commit journal
//! ([`crate::journal`]) then swaps it in with renames. Until then, dropping the staging area
//! leaves the installation as it was.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{MigrateError, Result};

pub struct Staging {
    dir: PathBuf,
    /// Remove `dir` on drop (off once the journal owns it).
    cleanup: bool,
    /// Files to delete from the installation at commit (e.g. a quarantined document).
    removals: Vec<String>,
}

impl Staging {
    /// A fresh staging folder under `parent` (created if needed).
    pub fn create(parent: &Path) -> Result<Staging> {
        fs::create_dir_all(parent)
            .map_err(|e| MigrateError::io(format!("cannot create {}", parent.display()), e))?;
        let dir = tempfile::Builder::new()
            .prefix("staging-")
            .tempdir_in(parent)
            .map_err(|e| {
                MigrateError::io(
                    format!("cannot create a staging folder in {}", parent.display()),
                    e,
                )
            })?
            .keep();
        Ok(Staging {
            dir,
            cleanup: true,
            removals: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Staged location of `rel`, parents created.
    pub fn path_for(&self, rel: &str) -> Result<PathBuf> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| MigrateError::io(format!("cannot create {}", parent.display()), e))?;
        }
        Ok(path)
    }

    /// Writes `bytes` as the new content of `rel`, synced.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path_for(rel)?;
        let mut f = File::create(&path)
            .map_err(|e| MigrateError::io(format!("cannot write {}", path.display()), e))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| MigrateError::io(format!("cannot write {}", path.display()), e))
    }

    /// Marks `rel` for deletion from the installation at commit.
    pub fn remove_at_commit(&mut self, rel: &str) {
        self.removals.push(rel.to_owned());
    }

    /// Hands the folder and the removals over to the commit journal, which owns them from now.
    pub fn into_parts(mut self) -> (PathBuf, Vec<String>) {
        self.cleanup = false;
        (self.dir.clone(), std::mem::take(&mut self.removals))
    }
}

/// Every regular file below `dir`, relative with `/` separators, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry
            .map_err(|e| MigrateError::io(format!("cannot list {}", dir.display()), e.into()))?;
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(out)
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.cleanup {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

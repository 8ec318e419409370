//! The staging area: every file a migration writes goes here first, on the installation's own
//! filesystem, and is synced before anything in the installation changes. The commit journal
//! then swaps it in with renames. Until then, dropping the staging area leaves the
//! installation as it was.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{io, Result};
use crate::fsutil;

pub struct Staging {
    dir: PathBuf,
    /// Remove `dir` on drop (off once the journal owns it).
    cleanup: bool,
    /// Files to delete from the installation at commit (e.g. a quarantined document).
    removals: Vec<String>,
    /// Final modes of new files that take another file's mode (a quarantine file takes its
    /// data file's): applied before the swap, whatever the umask was when they were written.
    modes: Vec<(String, u32)>,
}

/// What the commit journal takes over from a [`Staging`].
pub struct Parts {
    pub dir: PathBuf,
    pub removals: Vec<String>,
    pub modes: Vec<(String, u32)>,
}

impl Staging {
    /// A fresh staging folder under `parent` (created if needed).
    pub fn create(parent: &Path) -> Result<Staging> {
        fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("staging-")
            .tempdir_in(parent)
            .map_err(io(format!(
                "cannot create a staging folder in {}",
                parent.display()
            )))?
            .keep();
        Ok(Staging {
            dir,
            cleanup: true,
            removals: Vec::new(),
            modes: Vec::new(),
        })
    }

    /// A staging folder another process created and owns (the supervisor, for a worker that
    /// writes into it): never removed from here.
    pub fn adopt(dir: &Path) -> Staging {
        Staging {
            dir: dir.to_path_buf(),
            cleanup: false,
            removals: Vec::new(),
            modes: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Staged location of `rel`, parents created.
    pub fn path_for(&self, rel: &str) -> Result<PathBuf> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        Ok(path)
    }

    /// Writes `bytes` as the new content of `rel`, synced.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        fsutil::write_synced(&self.path_for(rel)?, bytes)
    }

    /// Marks `rel` for deletion from the installation at commit.
    pub fn remove_at_commit(&mut self, rel: &str) {
        self.removals.push(rel.to_owned());
    }

    /// Gives the new file `rel` the mode `mode` at commit (instead of one derived from its
    /// folder's).
    pub fn set_mode(&mut self, rel: &str, mode: u32) {
        self.modes.push((rel.to_owned(), mode & 0o7777));
    }

    /// Hands the folder, the removals and the modes over to the commit journal, which owns
    /// them from now.
    pub fn into_parts(mut self) -> Parts {
        self.cleanup = false;
        Parts {
            dir: self.dir.clone(),
            removals: std::mem::take(&mut self.removals),
            modes: std::mem::take(&mut self.modes),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.cleanup {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

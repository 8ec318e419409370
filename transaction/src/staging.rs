//! The staging area: every file a migration writes goes here first, on the installation's own
//! filesystem, and is synced before anything in the installation changes. The commit journal
//! then swaps it in with renames. Until then, dropping the staging area leaves the
//! installation as it was.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::confine::Root;
use crate::error::{io, Result};

pub struct Staging {
    dir: PathBuf,
    /// The staging folder, opened once: every file the tool writes into it is created through
    /// this descriptor, never following a link (the folder is ours and 0700, inside our 0700
    /// `.migrate/`, so this is defence in depth rather than the only guard).
    root: Root,
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
    /// A fresh staging folder under `parent` (created if needed). By path: `parent` is the
    /// installation's `.migrate/`, which the caller made private first (`Root::private_dir`:
    /// ours, 0700), or a dry run's own temporary folder, and the new folder has a random name
    /// created exclusively; everything below it goes through [`Root`].
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
            root: Root::open(&dir)?,
            dir,
            cleanup: true,
            removals: Vec::new(),
            modes: Vec::new(),
        })
    }

    /// A staging folder another process created and owns (the supervisor, for a worker that
    /// writes into it): never removed from here.
    pub fn adopt(dir: &Path) -> Result<Staging> {
        Ok(Staging {
            root: Root::open(dir)?,
            dir: dir.to_path_buf(),
            cleanup: false,
            removals: Vec::new(),
            modes: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Staged location of `rel`, parents created (0700, confined): for plugin code, which
    /// writes by path into the folder the worker's sandbox lets it write.
    pub fn path_for(&self, rel: &str) -> Result<PathBuf> {
        self.create_parents(rel)?;
        Ok(self.dir.join(rel))
    }

    /// Creates the staged file `rel` (replacing any earlier one) with exactly `mode`, set on
    /// the descriptor before a byte is written, whatever the umask: a staged file is never
    /// more readable than the file it will replace, not even while it is being written.
    /// `mode` is the file's final mode (see `journal::final_mode`); the commit checks it again.
    pub fn create_file(&self, rel: &str, mode: u32) -> Result<File> {
        self.create_parents(rel)?;
        self.root.remove_file(rel)?;
        self.root.create_new(rel, mode & 0o7777)
    }

    /// Writes `bytes` as the new content of `rel`, created with `mode` ([`Self::create_file`]),
    /// synced: what is announced as written survives a power loss.
    pub fn write(&self, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let mut file = self.create_file(rel, mode)?;
        file.write_all(bytes)
            .and_then(|_| file.sync_all())
            .map_err(io(format!("cannot write {}", self.dir.join(rel).display())))
    }

    /// The folders holding `rel`, private (0700).
    fn create_parents(&self, rel: &str) -> Result<()> {
        self.root.create_parents(rel, 0o700)
    }

    /// Removes the staged file `rel` (the link itself, were it one); `false` if none was there.
    pub fn remove_file(&self, rel: &str) -> Result<bool> {
        self.root.remove_file(rel)
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
    /// By path: the folder is ours, in our private `.migrate/`, and `remove_dir_all` removes a
    /// link it meets rather than following it.
    fn drop(&mut self) {
        if self.cleanup {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

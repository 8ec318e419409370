//! The commit journal: how staged files are swapped into the installation so that a crash at
//! any instant leaves a state that can be finished or undone.
//!
//! 1. **prepare** — every staged file is synced and given its original's mode; every file that
//!    will be replaced or removed is hard-linked into an `originals` folder; then the journal
//!    (`.migrate/journal.json`, phase `Prepared`) is written atomically.
//! 2. **swap** — staged files are renamed over their targets, `VERSION` last.
//! 3. **commit** — the journal's phase becomes `Committed`; staging and originals are deleted;
//!    the journal is deleted.
//!
//! Every step is idempotent and its progress can be read off the filesystem (a staged file that
//! still exists has not been moved; an original link that exists can be moved back), so
//! [`recover`] can roll back (the default) or finish (`--forward`) from any crash point.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};
use crate::fault;
use crate::fsutil::{self, sync_parent, sync_tree};
pub use crate::layout::JOURNAL_FILE;
use crate::staging::Staging;

const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// The target exists and gets new content.
    Replace,
    /// The target does not exist yet.
    Create,
    /// The target is deleted (e.g. a document moved to the quarantine).
    Remove,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub rel: String,
    pub action: Action,
}

/// Whose permission bits a swapped-in file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modes {
    /// The file it replaces (a migration keeps modes).
    FromTarget,
    /// As staged (a restore brings back the recorded modes).
    Staged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Staging is complete and originals are kept; the swap may be in progress.
    Prepared,
    /// A rollback has started: from here the only way is back (originals already moved back
    /// cannot be re-swapped forward).
    RollingBack,
    /// Every file is in place; only clean-up remains.
    Committed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub format: u32,
    pub pid: u32,
    pub from: String,
    pub to: String,
    /// Folder of the new files, relative to the root.
    pub staging: String,
    /// Folder of the hard-linked originals, relative to the root.
    pub originals: String,
    pub entries: Vec<Entry>,
    /// Folders the swap creates, parents first; removed again on rollback.
    pub created_dirs: Vec<String>,
    pub phase: Phase,
}

/// A prepared swap. Dropping it without [`Transaction::commit`] or [`Transaction::rollback`]
/// leaves the journal for [`recover`].
pub struct Transaction {
    root: PathBuf,
    tool_dir: PathBuf,
    journal: Journal,
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// An unfinished migration was undone: the installation is as before it.
    RolledBack { from: String, to: String },
    /// An unfinished migration was completed.
    Finished { from: String, to: String },
    /// Only leftovers (staging of a run that never reached its journal) were removed.
    Cleaned,
}

impl Transaction {
    /// Step 1: keeps the originals and writes the journal. `last` (the `VERSION` file) is
    /// swapped after everything else.
    pub fn prepare(
        root: &Path,
        tool_dir: &Path,
        staging: Staging,
        from: &str,
        to: &str,
        last: Option<&str>,
        modes: Modes,
    ) -> Result<Transaction> {
        let (staging_dir, removals) = staging.into_parts();
        let originals_dir = staging_dir.with_extension("orig");
        let mut entries = Vec::new();
        for rel in fsutil::list_files(&staging_dir)? {
            let action = if root.join(&rel).exists() {
                Action::Replace
            } else {
                Action::Create
            };
            entries.push(Entry { rel, action });
        }
        let existing = removals.into_iter().filter(|rel| root.join(rel).exists());
        entries.extend(existing.map(|rel| Entry {
            rel,
            action: Action::Remove,
        }));
        if let Some(last) = last {
            if let Some(i) = entries.iter().position(|e| e.rel == last) {
                let e = entries.remove(i);
                entries.push(e);
            }
        }
        let created_dirs = dirs_to_create(root, &entries);
        for e in &entries {
            keep_original(root, &staging_dir, &originals_dir, e, modes)?;
        }
        sync_tree(&staging_dir);
        sync_tree(&originals_dir);
        let rel_of = |p: &Path| {
            p.strip_prefix(root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        };
        let journal = Journal {
            format: FORMAT,
            pid: std::process::id(),
            from: from.to_owned(),
            to: to.to_owned(),
            staging: rel_of(&staging_dir),
            originals: rel_of(&originals_dir),
            entries,
            created_dirs,
            phase: Phase::Prepared,
        };
        write_journal(tool_dir, &journal)?;
        fault::point("prepared")?;
        Ok(Transaction {
            root: root.to_path_buf(),
            tool_dir: tool_dir.to_path_buf(),
            journal,
        })
    }

    /// Step 2: moves every staged file into place.
    pub fn swap(&self) -> Result<()> {
        swap_forward(&self.root, &self.journal)
    }

    /// Files the transaction writes or removes, relative to the root.
    pub fn entries(&self) -> &[Entry] {
        &self.journal.entries
    }

    /// Folders the swap creates, parents first.
    pub fn created_dirs(&self) -> &[String] {
        &self.journal.created_dirs
    }

    /// Step 3: makes the swap final and cleans up.
    pub fn commit(mut self) -> Result<()> {
        self.journal.phase = Phase::Committed;
        fault::point("commit")?;
        write_journal(&self.tool_dir, &self.journal)?;
        fault::point("committed")?;
        cleanup(&self.root, &self.tool_dir, &self.journal)
    }

    /// Undoes whatever part of the swap happened.
    pub fn rollback(self) -> Result<()> {
        roll_back(&self.root, &self.tool_dir, &self.journal)
    }
}

/// Finishes or undoes an interrupted migration found in `tool_dir`, and removes staging left by
/// runs killed before their journal existed. `None` when there was nothing to do.
pub fn recover(root: &Path, tool_dir: &Path, forward: bool) -> Result<Option<Recovery>> {
    let path = tool_dir.join(JOURNAL_FILE);
    let outcome = match fs::read(&path) {
        Ok(bytes) => {
            let journal: Journal = serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(
                    &path,
                    format!("unreadable journal ({e})"),
                    "restore from a backup with `migrate rollback`",
                )
            })?;
            let (from, to) = (journal.from.clone(), journal.to.clone());
            if journal.phase == Phase::Committed {
                cleanup(root, tool_dir, &journal)?;
                Some(Recovery::Finished { from, to })
            } else if forward && journal.phase == Phase::Prepared {
                swap_forward(root, &journal)?;
                let mut done = journal;
                done.phase = Phase::Committed;
                write_journal(tool_dir, &done)?;
                cleanup(root, tool_dir, &done)?;
                Some(Recovery::Finished { from, to })
            } else {
                roll_back(root, tool_dir, &journal)?;
                Some(Recovery::RolledBack { from, to })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
    };
    let cleaned = remove_leftovers(tool_dir)?;
    Ok(outcome.or(cleaned.then_some(Recovery::Cleaned)))
}

/// Whether `tool_dir` holds the journal of an interrupted migration or restore.
pub fn is_interrupted(tool_dir: &Path) -> bool {
    tool_dir.join(JOURNAL_FILE).exists()
}

fn swap_forward(root: &Path, journal: &Journal) -> Result<()> {
    let staging = root.join(&journal.staging);
    let originals = root.join(&journal.originals);
    for dir in &journal.created_dirs {
        let d = root.join(dir);
        if !d.is_dir() {
            fs::create_dir(&d).map_err(io(format!("cannot create {}", d.display())))?;
        }
    }
    for e in &journal.entries {
        let target = root.join(&e.rel);
        match e.action {
            Action::Replace | Action::Create => {
                let staged = staging.join(&e.rel);
                if staged.exists() {
                    fs::rename(&staged, &target)
                        .map_err(io(format!("cannot move {} into place", target.display())))?;
                    sync_parent(&target);
                }
            }
            Action::Remove => {
                if target.exists() && originals.join(&e.rel).exists() {
                    fs::remove_file(&target)
                        .map_err(io(format!("cannot remove {}", target.display())))?;
                    sync_parent(&target);
                }
            }
        }
        fault::point("swap")?;
    }
    Ok(())
}

fn roll_back(root: &Path, tool_dir: &Path, journal: &Journal) -> Result<()> {
    if journal.phase != Phase::RollingBack {
        let mut marked = journal.clone();
        marked.phase = Phase::RollingBack;
        write_journal(tool_dir, &marked)?;
    }
    let staging = root.join(&journal.staging);
    let originals = root.join(&journal.originals);
    for e in journal.entries.iter().rev() {
        let target = root.join(&e.rel);
        match e.action {
            Action::Replace | Action::Remove => {
                let orig = originals.join(&e.rel);
                if orig.exists() {
                    fs::rename(&orig, &target)
                        .map_err(io(format!("cannot restore {}", target.display())))?;
                    sync_parent(&target);
                }
            }
            Action::Create => {
                if !staging.join(&e.rel).exists() && target.exists() {
                    fs::remove_file(&target)
                        .map_err(io(format!("cannot remove {}", target.display())))?;
                    sync_parent(&target);
                }
            }
        }
        fault::point("rollback")?;
    }
    for dir in journal.created_dirs.iter().rev() {
        let _ = fs::remove_dir(root.join(dir));
    }
    cleanup(root, tool_dir, journal)
}

/// Deletes staging, originals and the journal, in that order: while the journal exists, the
/// work can be redone.
fn cleanup(root: &Path, tool_dir: &Path, journal: &Journal) -> Result<()> {
    for dir in [&journal.originals, &journal.staging] {
        let d = root.join(dir);
        if d.exists() {
            fs::remove_dir_all(&d).map_err(io(format!("cannot remove {}", d.display())))?;
        }
        fault::point("cleanup")?;
    }
    let path = tool_dir.join(JOURNAL_FILE);
    match fs::remove_file(&path) {
        Ok(()) => sync_parent(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("cannot remove {}", path.display()))(e)),
    }
    Ok(())
}

/// Staging folders of runs that died before writing a journal: never part of the installation.
fn remove_leftovers(tool_dir: &Path) -> Result<bool> {
    let Ok(read) = fs::read_dir(tool_dir) else {
        return Ok(false);
    };
    let mut any = false;
    for entry in read.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("staging-") || name == "journal.json.tmp" {
            let p = entry.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(io(format!("cannot remove leftover {}", p.display())))?;
            any = true;
        }
    }
    Ok(any)
}

/// Gives the staged file its original's mode, syncs it, and hard-links the original aside.
fn keep_original(
    root: &Path,
    staging: &Path,
    originals: &Path,
    e: &Entry,
    modes: Modes,
) -> Result<()> {
    let target = root.join(&e.rel);
    if e.action != Action::Remove {
        let staged = staging.join(&e.rel);
        if let (Modes::FromTarget, Ok(meta)) = (modes, fs::metadata(&target)) {
            fs::set_permissions(&staged, meta.permissions())
                .map_err(io(format!("cannot set the mode of {}", staged.display())))?;
        }
        File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("cannot sync {}", staged.display())))?;
    }
    if e.action == Action::Create {
        return Ok(());
    }
    let orig = originals.join(&e.rel);
    if let Some(parent) = orig.parent() {
        fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
    }
    if fs::hard_link(&target, &orig).is_err() {
        // Filesystems without hard links: a synced copy does the same job, slower.
        fs::copy(&target, &orig)
            .map_err(io(format!("cannot keep a copy of {}", target.display())))?;
        File::open(&orig)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("cannot sync {}", orig.display())))?;
    }
    Ok(())
}

/// Folders that must be created for `entries`, parents first.
fn dirs_to_create(root: &Path, entries: &[Entry]) -> Vec<String> {
    let mut dirs = Vec::new();
    for e in entries.iter().filter(|e| e.action == Action::Create) {
        let mut missing = Vec::new();
        let mut at = Path::new(&e.rel).parent();
        while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty()) {
            if root.join(dir).is_dir() {
                break;
            }
            missing.push(dir.to_string_lossy().into_owned());
            at = dir.parent();
        }
        for d in missing.into_iter().rev() {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

fn write_journal(tool_dir: &Path, journal: &Journal) -> Result<()> {
    let tmp = tool_dir.join("journal.json.tmp");
    let path = tool_dir.join(JOURNAL_FILE);
    let bytes = serde_json::to_vec_pretty(journal)
        .map_err(|e| io("cannot encode the journal")(e.into()))?;
    fsutil::write_synced(&tmp, &bytes)?;
    fs::rename(&tmp, &path).map_err(io(format!("cannot write {}", path.display())))?;
    sync_parent(&path);
    Ok(())
}

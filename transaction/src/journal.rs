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

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backup::{self, BackupRequest, KnownDigest};
use crate::confine::{self, Kind, Root};
use crate::encrypt::Recipients;
use crate::error::{io, Error, Result};
use crate::fault;
pub use crate::layout::JOURNAL_FILE;
use crate::layout::TOOL_DIR;
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
    /// Folder of the new files, relative to the root: `.migrate/staging-…`.
    pub staging: String,
    /// Folder of the hard-linked originals, relative to the root: the staging folder's name
    /// with `.orig`.
    pub originals: String,
    pub entries: Vec<Entry>,
    /// Folders the swap creates, parents first; removed again on rollback.
    pub created_dirs: Vec<String>,
    pub phase: Phase,
    /// The backup this swap must have before it may become final; `None`: backups are off.
    #[serde(default)]
    pub backup: Option<BackupPlan>,
}

/// Where the backup of a swap goes, and whether it is done: what `recover --forward` needs to
/// complete it from the kept originals before finishing the swap.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupPlan {
    /// The folder holding backups (absolute).
    pub dir: String,
    /// `full`, `config`, `data` or `model`.
    pub kind: String,
    /// The finished, verified backup; `None` until then.
    pub done: Option<String>,
    /// age recipients to encrypt the backup to (public keys), so that `recover --forward`
    /// never writes in plaintext a backup the run would have encrypted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypt_to: Vec<String>,
}

/// A journal is at most this large (a real one lists paths: kilobytes).
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// A prepared swap. Dropping it without [`Transaction::commit`] or [`Transaction::rollback`]
/// leaves the journal for [`recover`].
pub struct Transaction {
    root: Root,
    journal: Journal,
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// An unfinished migration was undone: the installation is as before it.
    RolledBack { from: String, to: String },
    /// An unfinished migration was completed; `backup` is the backup completed first from the
    /// kept originals, when the run died before its own was done.
    Finished {
        from: String,
        to: String,
        backup: Option<String>,
    },
    /// Only leftovers (staging of a run that never reached its journal, half-written
    /// backups) were removed.
    Cleaned { removed: Vec<String> },
}

impl Transaction {
    /// Step 1: keeps the originals and writes the journal. `last` (the `VERSION` file) is
    /// swapped after everything else. `backup`: where the backup of this swap goes.
    pub fn prepare(
        root: &Path,
        staging: Staging,
        from: &str,
        to: &str,
        last: Option<&str>,
        modes: Modes,
        backup: Option<BackupPlan>,
    ) -> Result<Transaction> {
        let root = Root::open(root)?;
        let parts = staging.into_parts();
        let name = parts
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.starts_with("staging-"))
            .map(str::to_owned);
        let in_tool_dir = parts
            .dir
            .parent()
            .and_then(|p| p.canonicalize().ok())
            .is_some_and(|p| p == root.join(TOOL_DIR));
        let Some(name) = name.filter(|_| in_tool_dir) else {
            return Err(Error::invalid(
                &parts.dir,
                "a staging folder outside the installation's .migrate/ cannot be swapped in",
                "report this as a bug in migrate; nothing was changed",
            ));
        };
        let staging_rel = format!("{TOOL_DIR}/{name}");
        let originals_rel = format!("{staging_rel}.orig");
        let mut entries = Vec::new();
        for rel in root.files_below(&staging_rel)? {
            let action = if root.file_exists(&rel)? {
                Action::Replace
            } else {
                Action::Create
            };
            entries.push(Entry { rel, action });
        }
        for rel in parts.removals {
            if root.file_exists(&rel)? {
                entries.push(Entry {
                    rel,
                    action: Action::Remove,
                });
            }
        }
        if let Some(last) = last {
            if let Some(i) = entries.iter().position(|e| e.rel == last) {
                let e = entries.remove(i);
                entries.push(e);
            }
        }
        let created_dirs = dirs_to_create(&root, &entries)?;
        root.create_dir(&originals_rel, 0o700)?;
        for e in &entries {
            keep_original(&root, &staging_rel, &originals_rel, e, modes, &parts.modes)?;
        }
        let journal = Journal {
            format: FORMAT,
            pid: std::process::id(),
            from: from.to_owned(),
            to: to.to_owned(),
            staging: staging_rel,
            originals: originals_rel,
            entries,
            created_dirs,
            phase: Phase::Prepared,
            backup,
        };
        write_journal(&root, &journal)?;
        fault::point("prepared")?;
        Ok(Transaction { root, journal })
    }

    /// The installation, opened beneath its canonical root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The journal as written.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Records that the backup is done (and verified): from now on `recover --forward` may
    /// finish the swap without making one.
    pub fn backup_done(&mut self, path: &Path) -> Result<()> {
        if let Some(b) = &mut self.journal.backup {
            b.done = Some(path.display().to_string());
            write_journal(&self.root, &self.journal)?;
        }
        Ok(())
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
        write_journal(&self.root, &self.journal)?;
        fault::point("committed")?;
        cleanup(&self.root, &self.journal)
    }

    /// Undoes whatever part of the swap happened. A file the swap had not reached is left as it
    /// is now, so before any swap this only removes what was prepared.
    pub fn rollback(self) -> Result<()> {
        roll_back(&self.root, &self.journal)
    }
}

/// The backup of a prepared swap: the files it replaces or removes, read from the journal's
/// kept originals (hard links to them), and the sha256 of everything it writes, read from its
/// staging (or taken from `known`: see [`BackupRequest::known_written`]). Used by the migration
/// before the swap and by `recover --forward` when the run died before its backup was done.
/// The backup is read back before its path is returned ([`backup::create`]). `progress`: see
/// [`BackupRequest::progress`].
pub fn back_up(
    root: &Root,
    journal: &Journal,
    dir: &Path,
    kind: &str,
    known: Option<&KnownDigest<'_>>,
    progress: &dyn Fn(u64),
) -> Result<PathBuf> {
    let of = |action: &dyn Fn(Action) -> bool| -> Vec<String> {
        journal
            .entries
            .iter()
            .filter(|e| action(e.action))
            .map(|e| e.rel.clone())
            .collect()
    };
    let open_source = |rel: &str| root.open_read(&confine::join(&journal.originals, rel), None);
    let open_written = |rel: &str| root.open_read(&confine::join(&journal.staging, rel), None);
    let to = match journal.backup.as_ref().filter(|b| !b.encrypt_to.is_empty()) {
        Some(b) => Some(Recipients::parse(&b.encrypt_to).map_err(|why| {
            Error::invalid(
                root.join(TOOL_DIR),
                format!("{JOURNAL_FILE}: {why}"),
                "the journal is damaged; run `migrate recover` without --forward to undo the run",
            )
        })?),
        None => None,
    };
    backup::create(&BackupRequest {
        root: root.path(),
        dir,
        kind,
        from: &journal.from,
        to: &journal.to,
        open_source: &open_source,
        files: of(&|a| a != Action::Create),
        created_files: of(&|a| a == Action::Create),
        created_dirs: journal.created_dirs.clone(),
        written: of(&|a| a != Action::Remove),
        open_written: &open_written,
        known_written: known,
        progress,
        encrypt_to: to.as_ref(),
    })
}

/// Reads and checks the journal of `root`, if there is one: a regular file owned by this user
/// or root and writable by nobody else, whose every path lies beneath the root, with its
/// staging and originals inside the root's own `.migrate/`.
pub fn read(root: &Root) -> Result<Option<Journal>> {
    let rel = format!("{TOOL_DIR}/{JOURNAL_FILE}");
    if root.stat(&rel)?.is_none() {
        return Ok(None);
    }
    root.private_dir(TOOL_DIR)?;
    let path = root.join(&rel);
    let mut file = root.open_read(&rel, Some(MAX_JOURNAL_BYTES))?;
    confine::check_private_file(&file, &path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)
        .map_err(io(format!("cannot read {}", path.display())))?;
    let journal: Journal = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(
            &path,
            format!("unreadable journal ({e})"),
            "nothing was changed; look at the file: if no migration was running, move it out of .migrate/ and check the installation with `migrate validate`",
        )
    })?;
    check_paths(&journal).map_err(|why| {
        Error::invalid(
            &path,
            format!("{why}: refused, nothing was changed"),
            "this journal was not written by migrate for this installation: move it out of .migrate/ and check the installation with `migrate validate`",
        )
    })?;
    Ok(Some(journal))
}

/// Every path of a journal stays beneath the root; staging and originals are the tool's own.
fn check_paths(j: &Journal) -> std::result::Result<(), String> {
    let staging_name = j.staging.strip_prefix(&format!("{TOOL_DIR}/"));
    let own = staging_name.is_some_and(|n| {
        n.starts_with("staging-") && !n.contains('/') && confine::is_clean(&j.staging)
    });
    if !own {
        return Err(format!(
            "its staging `{}` is not a staging folder inside {TOOL_DIR}/",
            j.staging
        ));
    }
    if j.originals != format!("{}.orig", j.staging) {
        return Err(format!(
            "its originals `{}` are not the staging's own `{}.orig`",
            j.originals, j.staging
        ));
    }
    for p in j
        .entries
        .iter()
        .map(|e| &e.rel)
        .chain(j.created_dirs.iter())
    {
        confine::components(p).map_err(|why| format!("it names {why}"))?;
        if p == TOOL_DIR || p.starts_with(&format!("{TOOL_DIR}/")) {
            return Err(format!("it names `{p}`, inside {TOOL_DIR}/"));
        }
    }
    Ok(())
}

/// Finishes or undoes an interrupted migration found in `root`, and removes staging left by
/// runs killed before their journal existed. `None` when there was nothing to do.
/// A forward recovery of a run that died before its backup was done first completes that
/// backup from the kept originals (and verifies it), or refuses: a migration never becomes
/// irreversible without the backup it was asked to make.
pub fn recover(root: &Path, forward: bool) -> Result<Option<Recovery>> {
    let root = Root::open(root)?;
    // Past this point a failure leaves the journal for the next command: it says so.
    let stuck = |e: Error| match e {
        Error::Io { .. } => Error::Interrupted {
            root: root.path().to_path_buf(),
            reason: format!("recovering the interrupted run failed: {e}"),
        },
        other => other,
    };
    let outcome = match read(&root)? {
        Some(journal) => {
            if let Some(plan) = &journal.backup {
                // The run may have died while writing its backup: that half is never a backup.
                backup::remove_partials(root.path(), Path::new(&plan.dir), journal.pid);
            }
            let (from, to) = (journal.from.clone(), journal.to.clone());
            if journal.phase == Phase::Committed {
                cleanup(&root, &journal).map_err(stuck)?;
                Some(Recovery::Finished {
                    from,
                    to,
                    backup: None,
                })
            } else if forward && journal.phase == Phase::Prepared {
                let backup = match &journal.backup {
                    Some(b) if b.done.is_none() => {
                        let made = back_up(&root, &journal, Path::new(&b.dir), &b.kind, None, &|_| {})
                            .map_err(|e| Error::Interrupted {
                                root: root.path().to_path_buf(),
                                reason: format!("the interrupted migration has no backup yet, and it cannot be completed from the kept originals ({e}); finishing without one would make the migration irreversible, so --forward is refused; run `migrate recover --path {}` without --forward to undo it (that loses nothing), then migrate again", root.path().display()),
                            })?;
                        Some(made.display().to_string())
                    }
                    _ => None,
                };
                swap_forward(&root, &journal).map_err(stuck)?;
                let mut done = journal;
                done.phase = Phase::Committed;
                write_journal(&root, &done).map_err(stuck)?;
                cleanup(&root, &done).map_err(stuck)?;
                Some(Recovery::Finished { from, to, backup })
            } else {
                roll_back(&root, &journal).map_err(stuck)?;
                Some(Recovery::RolledBack { from, to })
            }
        }
        None => None,
    };
    let removed = remove_leftovers(&root)?;
    Ok(outcome.or((!removed.is_empty()).then_some(Recovery::Cleaned { removed })))
}

/// Whether `tool_dir` holds the journal of an interrupted migration or restore.
pub fn is_interrupted(tool_dir: &Path) -> bool {
    std::fs::symlink_metadata(tool_dir.join(JOURNAL_FILE)).is_ok()
}

/// Whether `root` holds anything a crash left: a journal, staging, or a half-written backup.
pub fn has_leftovers(root: &Path) -> bool {
    let tool_dir = root.join(TOOL_DIR);
    let named = |dir: &Path, f: &dyn Fn(&str) -> bool| {
        std::fs::read_dir(dir).is_ok_and(|r| {
            r.filter_map(|e| e.ok())
                .any(|e| f(&e.file_name().to_string_lossy()))
        })
    };
    is_interrupted(&tool_dir)
        || named(&tool_dir, &|n| {
            n.starts_with("staging-") || n == "journal.json.tmp"
        })
        || named(&root.join(crate::layout::BACKUPS_DIR), &|n| {
            n.ends_with(".partial")
        })
}

fn join(a: &str, b: &str) -> String {
    confine::join(a, b)
}

fn swap_forward(root: &Root, journal: &Journal) -> Result<()> {
    for dir in &journal.created_dirs {
        let mode = parent_mode(root, dir)?;
        root.create_dir(dir, mode)?;
    }
    for e in &journal.entries {
        match e.action {
            Action::Replace | Action::Create => {
                let staged = join(&journal.staging, &e.rel);
                if root.file_exists(&staged)? {
                    root.rename(&staged, &e.rel)?;
                }
            }
            Action::Remove => {
                if root.file_exists(&e.rel)?
                    && root.file_exists(&join(&journal.originals, &e.rel))?
                {
                    root.remove_file(&e.rel)?;
                }
            }
        }
        fault::point("swap")?;
    }
    Ok(())
}

/// Puts back each original the swap replaced or removed, removes what it created, then cleans
/// up. Entries the swap had not reached are left as they are: the installation's file there is
/// not the migration's, and may have been written since the original was kept aside.
fn roll_back(root: &Root, journal: &Journal) -> Result<()> {
    if journal.phase != Phase::RollingBack {
        let mut marked = journal.clone();
        marked.phase = Phase::RollingBack;
        write_journal(root, &marked)?;
    }
    for e in journal.entries.iter().rev() {
        match e.action {
            // A file whose staged copy is still in the staging was never swapped (the swap
            // moves it in with one rename): the installation's file is left as it is, never
            // put back to the original kept aside, which a writer may have replaced since.
            Action::Replace => {
                let orig = join(&journal.originals, &e.rel);
                if root.file_exists(&orig)? && !root.file_exists(&join(&journal.staging, &e.rel))? {
                    root.rename(&orig, &e.rel)?;
                }
            }
            // Likewise a file the swap was to remove and that is still there was never removed:
            // it stays as it is. (Were it a file created after the removal, the original is
            // in the backup the migration took before its swap.)
            Action::Remove => {
                let orig = join(&journal.originals, &e.rel);
                if root.file_exists(&orig)? && !root.file_exists(&e.rel)? {
                    root.rename(&orig, &e.rel)?;
                }
            }
            Action::Create => {
                if !root.file_exists(&join(&journal.staging, &e.rel))?
                    && root.file_exists(&e.rel)?
                {
                    root.remove_file(&e.rel)?;
                }
            }
        }
        fault::point("rollback")?;
    }
    for dir in journal.created_dirs.iter().rev() {
        root.remove_empty_dir(dir)?;
    }
    cleanup(root, journal)
}

/// Deletes staging, originals and the journal, in that order: while the journal exists, the
/// work can be redone.
fn cleanup(root: &Root, journal: &Journal) -> Result<()> {
    for dir in [&journal.originals, &journal.staging] {
        root.remove_all(dir)?;
        fault::point("cleanup")?;
    }
    root.remove_file(&format!("{TOOL_DIR}/{JOURNAL_FILE}"))?;
    Ok(())
}

/// What a crash left and no journal owns: staging folders of runs that died before writing
/// their journal, a half-written journal, and `.partial` backups in `<root>/backups/`. Never
/// part of the installation. Returns what was removed, relative to the root.
fn remove_leftovers(root: &Root) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if root.dir_exists(TOOL_DIR)? {
        for (name, _) in root.list(TOOL_DIR)?.unwrap_or_default() {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if name.starts_with("staging-") || name == "journal.json.tmp" {
                let rel = format!("{TOOL_DIR}/{name}");
                root.remove_all(&rel)?;
                removed.push(rel);
            }
        }
    }
    let backups = crate::layout::BACKUPS_DIR;
    if root.stat(backups)?.is_some_and(|f| f.kind == Kind::Dir) {
        for (name, kind) in root.list(backups)?.unwrap_or_default() {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if kind == Kind::Dir && name.ends_with(".partial") && name.contains("_backup_") {
                let rel = format!("{backups}/{name}");
                root.remove_all(&rel)?;
                removed.push(rel);
            }
        }
    }
    Ok(removed)
}

/// The mode the file `rel` is given at the swap: the mode of the file it replaces, or for a
/// new file its folder's without the execute bits (`parent_mode`). Staged files are created
/// with it (never more readable than their source, whatever the umask); prepare sets it again,
/// in case the installation's file changed mode meanwhile.
pub fn final_mode(root: &Root, rel: &str) -> Result<u32> {
    match root.stat(rel)? {
        Some(f) if f.kind == Kind::File => Ok(f.mode),
        _ => Ok(parent_mode(root, rel)? & 0o666),
    }
}

/// A new file or folder's mode when nothing else gives one: its installation folder's, without
/// the execute bits for a file. Never more open than the folder that holds it, whatever the
/// umask.
fn parent_mode(root: &Root, rel: &str) -> Result<u32> {
    let mut at = Path::new(rel).parent();
    while let Some(dir) = at {
        let d = dir.to_string_lossy();
        if d.is_empty() {
            break;
        }
        if let Some(f) = root.stat(&d)?.filter(|f| f.kind == Kind::Dir) {
            return Ok(f.mode & 0o777);
        }
        at = dir.parent();
    }
    let top = std::fs::metadata(root.path())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0o700);
    Ok(top)
}

/// Gives the staged file its final mode, syncs it, and hard-links the original aside.
fn keep_original(
    root: &Root,
    staging: &str,
    originals: &str,
    e: &Entry,
    modes: Modes,
    requested: &[(String, u32)],
) -> Result<()> {
    if e.action != Action::Remove {
        let staged = join(staging, &e.rel);
        let mode = match (modes, e.action) {
            (Modes::Staged, _) => None,
            (Modes::FromTarget, Action::Replace) => root.stat(&e.rel)?.map(|f| f.mode),
            (Modes::FromTarget, _) => {
                Some(match requested.iter().rev().find(|(r, _)| *r == e.rel) {
                    Some((_, m)) => *m,
                    None => parent_mode(root, &e.rel)? & 0o666,
                })
            }
        };
        // A staged file that has its mode already keeps its change time: the backup takes the
        // pre-swap check's checksum of a file only while that time has not moved.
        if let Some(mode) = mode {
            if root.stat(&staged)?.map(|f| f.mode & 0o7777) != Some(mode & 0o7777) {
                root.set_mode(&staged, mode)?;
            }
        }
        root.open_read(&staged, None)?
            .sync_all()
            .map_err(io(format!("cannot sync {}", root.join(&staged).display())))?;
    }
    if e.action == Action::Create {
        return Ok(());
    }
    let orig = join(originals, &e.rel);
    let mut parent = String::new();
    for part in confine::components(&e.rel)
        .unwrap_or_default()
        .iter()
        .rev()
        .skip(1)
        .rev()
    {
        parent = join(&parent, part);
        root.create_dir(&join(originals, &parent), 0o700)?;
    }
    if root.hard_link(&e.rel, &orig).is_err() {
        // Filesystems without hard links: a synced copy does the same job, slower.
        let mut src = root.open_read(&e.rel, None)?;
        let mode = root.stat(&e.rel)?.map_or(0o600, |f| f.mode);
        let mut dst = root.create_new(&orig, mode)?;
        std::io::copy(&mut src, &mut dst)
            .and_then(|_| dst.sync_all())
            .map_err(io(format!(
                "cannot keep a copy of {}",
                root.join(&e.rel).display()
            )))?;
    }
    Ok(())
}

/// Folders that must be created for `entries`, parents first.
fn dirs_to_create(root: &Root, entries: &[Entry]) -> Result<Vec<String>> {
    let mut dirs = Vec::new();
    for e in entries.iter().filter(|e| e.action == Action::Create) {
        let mut missing = Vec::new();
        let mut at = Path::new(&e.rel).parent();
        while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty()) {
            let d = dir.to_string_lossy().into_owned();
            if root.dir_exists(&d)? {
                break;
            }
            missing.push(d);
            at = dir.parent();
        }
        for d in missing.into_iter().rev() {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    Ok(dirs)
}

/// Writes the journal atomically (a new 0600 file, synced, renamed over the old one).
fn write_journal(root: &Root, journal: &Journal) -> Result<()> {
    let tmp = format!("{TOOL_DIR}/journal.json.tmp");
    let path = format!("{TOOL_DIR}/{JOURNAL_FILE}");
    let bytes = serde_json::to_vec_pretty(journal)
        .map_err(|e| io("cannot encode the journal")(e.into()))?;
    root.remove_file(&tmp)?;
    let mut file: File = root.create_new(&tmp, 0o600)?;
    fault::point("journal_write")?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(io(format!("cannot write {}", root.join(&tmp).display())))?;
    root.rename(&tmp, &path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(staging: &str, originals: &str, rel: &str, dir: &str) -> Journal {
        Journal {
            format: FORMAT,
            pid: 1,
            from: "0.1.0".into(),
            to: "1.0.0".into(),
            staging: staging.into(),
            originals: originals.into(),
            entries: vec![Entry {
                rel: rel.into(),
                action: Action::Replace,
            }],
            created_dirs: vec![dir.into()],
            phase: Phase::Prepared,
            backup: None,
        }
    }

    #[test]
    fn only_the_tools_own_paths_beneath_the_root_pass() {
        let ok = journal(
            ".migrate/staging-a",
            ".migrate/staging-a.orig",
            "data/x.jsonl",
            "data/new",
        );
        assert!(check_paths(&ok).is_ok());
        for (case, j) in [
            (
                "originals elsewhere",
                journal(".migrate/staging-a", "../victim", "data/x", "d"),
            ),
            (
                "other originals",
                journal(
                    ".migrate/staging-a",
                    ".migrate/staging-b.orig",
                    "data/x",
                    "d",
                ),
            ),
            (
                "staging outside",
                journal("staging-a", "staging-a.orig", "data/x", "d"),
            ),
            (
                "absolute staging",
                journal("/tmp/staging-a", "/tmp/staging-a.orig", "data/x", "d"),
            ),
            (
                "nested staging",
                journal(
                    ".migrate/staging-a/../..",
                    ".migrate/staging-a/../...orig",
                    "data/x",
                    "d",
                ),
            ),
            (
                "entry escapes",
                journal(".migrate/staging-a", ".migrate/staging-a.orig", "../x", "d"),
            ),
            (
                "absolute entry",
                journal(
                    ".migrate/staging-a",
                    ".migrate/staging-a.orig",
                    "/etc/passwd",
                    "d",
                ),
            ),
            (
                "entry in .migrate",
                journal(
                    ".migrate/staging-a",
                    ".migrate/staging-a.orig",
                    ".migrate/lock",
                    "d",
                ),
            ),
            (
                "dir escapes",
                journal(
                    ".migrate/staging-a",
                    ".migrate/staging-a.orig",
                    "data/x",
                    "data/../..",
                ),
            ),
        ] {
            assert!(check_paths(&j).is_err(), "{case} accepted");
        }
    }
}

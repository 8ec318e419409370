//! The data step's staged files made durable by the host while the model rules and the
//! pre-swap check run.
//!
//! Why: the data step writes its output faster than this kind of disk takes it. With the
//! write-back started as it goes ([`super::write_behind`]), the fsync at its end still waited
//! for the last of it: on the bench's 0.5× tree (852 MB written) both cores sat idle for up to
//! 0.55 s, after 1 s of migrating records. The model rules need the staged data nowhere, so
//! the worker now writes the data files without that fsync and goes on to the models, and the
//! host syncs them here, on a thread of its own. Nor does the pre-swap check, which reads the
//! staged data from memory: the run waits for this thread once the check is done, before the
//! journal ([`Syncing::wait`]), holding the audit records of the steps that finished meanwhile
//! so that the steps are still recorded in their order; and the journal syncs every staged file
//! again before it is written. (On ext4 the wait was only moved, not hidden, while the model
//! rules ran: a rule's own fsync of a small file commits the file system's journal, which waits
//! for the data written before it.)
//!
//! Why a thread rather than leaving it all to the journal's sync: the data step's duration
//! then still runs until its output is on disk (the time is taken as the thread finishes), as
//! the bench's data figure requires, and a failing disk fails the data step that wrote to it.
//!
//! A sync is asked of a descriptor the host opens itself, confined (no link followed) below
//! the staging folder. Linux's fsync writes and waits for every dirty page of the file,
//! whoever wrote it, and since Linux 4.16 (`errseq`) reports a write-back error no one has seen
//! yet to a descriptor opened after it, as long as the kernel keeps the file's inode in memory
//! (its pages are still in the page cache here; a file system that reports errors on close,
//! such as NFS, may report them to the worker's close only, which drops them).

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use migrate_transaction::confine::Root;

use crate::error::{MigrateError, Result};

/// The sync of staged files, under way on a thread of its own.
pub struct Syncing {
    /// None when no thread could be started: the journal's own sync of every staged file then
    /// makes them durable before anything is swapped in, as it does in any case.
    thread: Option<JoinHandle<Finished>>,
    started: Instant,
}

/// The sync's outcome and when it was known: the run waits for it only later, after the
/// pre-swap check, and the data step's duration must end when its files were on disk.
type Finished = (Result<()>, Instant);

/// How a [`Syncing`] ended.
pub struct Synced {
    /// How long after [`Syncing::start`] the last file was on disk (not when [`Syncing::wait`]
    /// returned, which may be much later).
    pub after: Duration,
    pub outcome: Result<()>,
}

impl Syncing {
    /// Starts syncing `rels` (relative to the staging folder `dir`). A file the step removed
    /// from the staging again (a document whose one record went to the quarantine) is skipped.
    pub fn start(dir: &Path, rels: Vec<String>) -> Syncing {
        let started = Instant::now();
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("stage-sync".into())
            .spawn(move || (sync_all(&dir, &rels), Instant::now()))
            .ok();
        Syncing { thread, started }
    }

    /// Waits until every file is on disk (or its sync failed).
    pub fn wait(mut self) -> Synced {
        let (outcome, at) = self.join();
        Synced {
            after: at.saturating_duration_since(self.started),
            outcome,
        }
    }

    fn join(&mut self) -> Finished {
        match self.thread.take().map(JoinHandle::join) {
            None => (Ok(()), self.started),
            Some(Ok(finished)) => finished,
            Some(Err(_)) => (
                Err(MigrateError::Internal {
                    detail: "the thread that syncs the staged data panicked".into(),
                    state: "nothing was changed".into(),
                }),
                Instant::now(),
            ),
        }
    }
}

impl Drop for Syncing {
    /// A run that stops early still waits for the thread: it must not outlive the staging
    /// folder's removal, and its outcome no longer matters.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn sync_all(dir: &Path, rels: &[String]) -> Result<()> {
    let staging = Root::open(dir).map_err(|e| {
        MigrateError::io(
            format!(
                "cannot open the staging folder {} to sync it; nothing in the installation was changed: run the migration again",
                dir.display()
            ),
            std::io::Error::other(e.to_string()),
        )
    })?;
    for rel in rels {
        if !staging.file_exists(rel)? {
            continue;
        }
        let file = staging.open_read(rel, None)?;
        // Test hook: a test kills the run here, or makes this sync fail as a failing disk
        // would.
        let hook = migrate_transaction::fault::point("sync-data")
            .map_err(|e| std::io::Error::other(e.to_string()));
        hook.and_then(|()| file.sync_all()).map_err(|e| {
            MigrateError::io(
                format!(
                    "cannot get the staged {rel} onto the disk (in {}); nothing in the installation was changed: check the disk (free space, `dmesg`) and run the migration again",
                    dir.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files present are synced, one the step removed again is skipped, the time is taken
    /// when they were on disk, and a link planted in the staging in place of a staged file is
    /// refused, named, not followed.
    #[test]
    fn syncs_what_is_staged_and_refuses_a_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/a.jsonl"), "{}\n").unwrap();
        let synced =
            Syncing::start(dir.path(), vec!["data/a.jsonl".into(), "data/gone".into()]).wait();
        assert!(synced.outcome.is_ok(), "{:?}", synced.outcome.err());

        // Measured to when the files were on disk, not to when the run got round to waiting.
        let t0 = Instant::now();
        let syncing = Syncing::start(dir.path(), vec!["data/a.jsonl".into()]);
        while !syncing.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let done_by = t0.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let synced = syncing.wait();
        assert!(synced.outcome.is_ok());
        assert!(synced.after <= done_by, "{:?} > {done_by:?}", synced.after);

        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("data/b.jsonl")).unwrap();
        let synced = Syncing::start(dir.path(), vec!["data/b.jsonl".into()]).wait();
        let e = synced.outcome.expect_err("a link is refused").to_string();
        assert!(
            e.contains("data/b.jsonl") && e.contains("symbolic link"),
            "{e}"
        );
    }
}

//! The data step's staged files made durable by the host while the next steps run.
//!
//! Why: the data step writes its output faster than this kind of disk takes it. With the
//! write-back started as it goes ([`super::write_behind`]), the fsync at its end still waited
//! for the last of it: on the bench's 0.5× tree (852 MB written) both cores sat idle for up to
//! 0.55 s, after 1 s of migrating records. The model rules and the pre-swap check need the
//! staged data only in the page cache, not on disk, so the worker now writes the data files
//! without that fsync and goes on to the models, and the host syncs them here, on a thread of
//! its own. Nothing reaches the journal before they are on disk: the run waits for this
//! thread after the pre-swap check ([`Syncing::wait`]).
//!
//! A sync is asked of a descriptor the host opens itself, confined (no link followed) below
//! the staging folder. Linux's fsync writes and waits for every dirty page of the file,
//! whoever wrote it, and reports a write-back error no one has seen yet to the descriptor that
//! asks (`errseq`), so a failure of the worker's writes is not lost with its descriptor.
//!
//! The data step's report stays what it was: its duration runs until its output is on disk
//! ([`Syncing::wait`] adds the wait to it), even though the models step ran meanwhile.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use migrate_transaction::confine::Root;

use crate::error::{MigrateError, Result};

/// The sync of staged files, under way on a thread of its own.
pub struct Syncing {
    thread: Option<JoinHandle<Finished>>,
    /// The outcome when no thread could be started and the files were synced at once.
    done: Option<Finished>,
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
        let owned = dir.to_path_buf();
        let rels_here = rels.clone();
        let spawned = std::thread::Builder::new()
            .name("stage-sync".into())
            .spawn(move || (sync_all(&owned, &rels), Instant::now()));
        match spawned {
            Ok(thread) => Syncing {
                thread: Some(thread),
                done: None,
                started,
            },
            // No thread to spare: the files are synced here, as the worker used to.
            Err(_) => Syncing {
                thread: None,
                done: Some((sync_all(dir, &rels_here), Instant::now())),
                started,
            },
        }
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
            None => self.done.take().unwrap_or((Ok(()), self.started)),
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
    let staging = Root::open(dir)?;
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
        let syncing = Syncing::start(dir.path(), vec!["data/a.jsonl".into()]);
        let waited = Duration::from_millis(1500);
        std::thread::sleep(waited);
        let synced = syncing.wait();
        assert!(synced.outcome.is_ok());
        assert!(synced.after < waited, "{:?}", synced.after);

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

//! Checksums of the installation's model files, taken by the host during staging, for the
//! model rules (so that they need not read those files) and for the pre-swap check (so that
//! it need not read them a second time).
//!
//! Why: a model rule lists each file's size and sha256 in `metadata.json`, and the pre-swap
//! check proves each listed checksum by hashing the file it names. Most model hops leave the
//! weights alone, so that file is the installation's, and the rule and the host each hashed the
//! very same file: the largest files there are, read twice. The host now hashes them from the
//! start of staging, on a thread of its own beside the data step; before the models step the
//! worker asks for the checksums, the supervisor answers once all are taken (never later than
//! a rule would have hashed the last file itself: it has the head start), and the worker
//! hands them to the model rules (`ModelFolder::file_entry`, plugin-api 1.8), which read only
//! what is not among them.
//!
//! Trust is unchanged. The host takes these checksums itself, confined (no link followed),
//! never from the worker. A checksum stands only for the very file it was taken of, unchanged
//! since: same device and inode, size, modification and change times when it was taken, just
//! after, and when the check opens the file. File times come from a clock that ticks every few
//! milliseconds, so a file changed twice within one tick keeps its times: a file whose last
//! change is less than `SETTLED` before its checksum would be taken is waited for until it is
//! settled (the rule git keeps for its index). Whatever differs, the check hashes the file as
//! it did before; a file changed after its checksum was handed to the rules then no longer
//! matches what they listed, and nothing is swapped in.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use migrate_transaction::confine::{self, Root};
use migrate_transaction::stamp::FileStamp;
use plugin_api::model::{sha256_reader, FileEntry, Sha256Reader};

#[derive(Debug)]
struct Digest {
    id: FileStamp,
    sha256: String,
}

impl Digest {
    /// The checksum `sha256` of the `read` bytes of `file` read since `before` was taken of
    /// it: kept only when that was the whole file and it did not change meanwhile.
    fn of_whole_read(
        before: FileStamp,
        file: &File,
        (read, sha256): (u64, String),
    ) -> Option<Digest> {
        let after = FileStamp::of(file).ok()?;
        (after == before && read == before.size).then_some(Digest { id: before, sha256 })
    }
}

/// Checksums of installation files, by path relative to the installation.
#[derive(Debug, Default)]
pub struct Digests {
    taken: HashMap<String, Digest>,
}

impl Digests {
    /// Hashes every regular file below each folder of `models` (relative) in the installation
    /// at `root` into `taken`, one file at a time. A file that cannot be read, or changes while
    /// it is read, is left out (the check then reads it and says what is wrong). `stop` is
    /// looked at between reads: once set, hashing ends with what is done.
    fn take(root: &Path, models: &[String], stop: &AtomicBool, taken: &Mutex<Digests>) {
        let Ok(install) = Root::open(root) else {
            return;
        };
        for model in models {
            let Ok(files) = install.files_below(model) else {
                continue;
            };
            for inside in files {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let rel = confine::join(model, &inside);
                if let Ok(Some(digest)) = hash(&install, &rel, stop) {
                    if let Ok(mut digests) = taken.lock() {
                        digests.taken.insert(rel, digest);
                    }
                }
            }
        }
    }

    /// The size and sha256 of `file`, opened at `rel` in the installation: the checksum taken
    /// during staging when `file` is the very file it was taken of and has not changed since,
    /// else read from `file` now.
    pub fn size_and_sha256(&self, rel: &str, file: &mut File) -> io::Result<(u64, String)> {
        if let Some(d) = self.taken.get(rel) {
            if FileStamp::of(file)? == d.id {
                tracing::debug!(
                    file = rel,
                    "checksum taken during staging, the file unchanged since"
                );
                return Ok((d.id.size, d.sha256.clone()));
            }
            tracing::debug!(
                file = rel,
                "changed since its checksum was taken during staging: hashed again"
            );
        }
        sha256_reader(file)
    }

    /// The size and sha256 taken of `rel` during staging (those the model rules were handed),
    /// if any.
    pub fn taken(&self, rel: &str) -> Option<(u64, &str)> {
        self.taken.get(rel).map(|d| (d.id.size, d.sha256.as_str()))
    }
}

/// The checksum of `rel`, when the file is settled before and unchanged after reading it. A
/// file changed less than [`SETTLED`](migrate_transaction::stamp::SETTLED) ago is waited for
/// until it is ([`FileStamp::settled`]): the model snapshot, built just before the hashing
/// starts, gives every model file a new change time (a hard link is a change of the inode).
fn hash(install: &Root, rel: &str, stop: &AtomicBool) -> io::Result<Option<Digest>> {
    let mut file = install
        .open_read(rel, None)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let Some(before) = FileStamp::settled(&file)? else {
        return Ok(None);
    };
    let mut reader = Sha256Reader::new(&mut file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if reader.read(&mut buf)? == 0 {
            break;
        }
    }
    let read = (reader.bytes_read(), reader.hex());
    Ok(Digest::of_whole_read(before, &file, read))
}

/// Checksums of the staged data files, taken by the pre-swap check as it read each one whole,
/// for the backup to record (the sha256 of every file a run writes, see
/// [`migrate_transaction::backup::BackupRequest::known_written`]) without reading those files
/// a second time: on the bench's 0.5× run that read was 850 MB, on a core the archive's
/// compression wanted.
///
/// Trust is unchanged: the host took the checksum itself, of the bytes it checked. It stands
/// for the file the backup opens only if that is the same file, with the same size,
/// modification and change times (the journal's prepare leaves the mode, and so the change
/// time, of a staged file that already has its final mode alone). Whatever differs, the backup
/// hashes the file as before.
#[derive(Debug, Default)]
pub struct StagedDigests {
    taken: HashMap<String, Digest>,
}

impl StagedDigests {
    /// Keeps `sha256` as the checksum of `file` (at `rel` in the staging), read whole (`size`
    /// bytes) since `before` was taken of it: unless it changed meanwhile.
    pub(super) fn keep(&mut self, rel: &str, before: FileStamp, file: &File, read: (u64, String)) {
        if let Some(digest) = Digest::of_whole_read(before, file, read) {
            self.taken.insert(rel.to_owned(), digest);
        }
    }

    /// The size and sha256 of `file`, opened at `rel` in the staging, when it is the file
    /// checked and unchanged since.
    pub fn size_and_sha256(&self, rel: &str, file: &File) -> Option<(u64, String)> {
        let d = self.taken.get(rel)?;
        let same = FileStamp::of(file).is_ok_and(|now| now == d.id);
        if !same {
            tracing::debug!(
                file = rel,
                "changed since the pre-swap check hashed it: hashed again for the backup"
            );
            return None;
        }
        tracing::debug!(
            file = rel,
            "checksum taken by the pre-swap check, the file unchanged since"
        );
        Some((d.id.size, d.sha256.clone()))
    }
}

/// Checksums being taken on a thread of their own. Dropped before [`Pending::wait`] (a run
/// that ends before its check), it stops the thread and waits for the one read it is in.
pub struct Pending {
    stop: Arc<AtomicBool>,
    /// Set once the thread is done (or when there is none).
    done: Arc<AtomicBool>,
    /// Every checksum taken: the model rules get these (see [`Pending::when_done`]).
    taken: Arc<Mutex<Digests>>,
    thread: Option<JoinHandle<()>>,
}

impl Pending {
    /// No checksums: the check hashes every file itself.
    pub fn none() -> Pending {
        Pending {
            stop: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicBool::new(true)),
            taken: Arc::default(),
            thread: None,
        }
    }

    /// Starts hashing the files of the model folders `models` (relative) of the installation
    /// at `root`. A thread that cannot be started takes none.
    pub fn start(root: PathBuf, models: Vec<String>) -> Pending {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let taken = Arc::new(Mutex::new(Digests::default()));
        let (flag, finished, into) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&taken));
        let thread = std::thread::Builder::new()
            .name("model-digests".into())
            .spawn(move || {
                /// Says the hashing is over however it ends, a panic included.
                struct Over(Arc<AtomicBool>);
                impl Drop for Over {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::Release);
                    }
                }
                let _over = Over(finished);
                Digests::take(&root, &models, &flag, &into)
            })
            .ok();
        if thread.is_none() {
            done.store(true, Ordering::Release);
        }
        Pending {
            stop,
            done,
            taken,
            thread,
        }
    }

    /// What waits, on a thread of its own, for every checksum to be taken (or the hashing to be
    /// stopped), then gives the size and sha256 of each file hashed (paths relative to the
    /// installation), for the model rules: a rule that lists a file's checksum need not read
    /// the file, and the check compares that checksum with this very one. Waiting for the last
    /// is never slower than a rule hashing that file itself: the host has the head start.
    pub fn when_done(&self) -> Box<dyn FnOnce() -> Vec<FileEntry> + Send> {
        let (done, stop) = (Arc::clone(&self.done), Arc::clone(&self.stop));
        let taken = Arc::clone(&self.taken);
        Box::new(move || {
            while !done.load(Ordering::Acquire) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let Ok(digests) = taken.lock() else {
                return Vec::new();
            };
            let mut files: Vec<FileEntry> = digests
                .taken
                .iter()
                .map(|(rel, d)| FileEntry::new(rel.clone(), d.id.size, d.sha256.clone()))
                .collect();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            files
        })
    }

    /// The checksums, once all are taken. A thread that panicked leaves none.
    pub fn wait(mut self) -> Digests {
        let finished = self.thread.take().is_some_and(|t| t.join().is_ok());
        let taken = std::mem::take(&mut self.taken);
        match (finished, Arc::try_unwrap(taken).map(Mutex::into_inner)) {
            (true, Ok(Ok(digests))) => digests,
            _ => Digests::default(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migrate_transaction::stamp::SETTLED;
    use std::io::{Seek, SeekFrom, Write};

    /// An installation with one model folder and two files in it, old enough to be settled.
    fn install() -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("models/m");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("weights.bin"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(model.join("sub/extra.bin"), b"extra").unwrap();
        std::thread::sleep(SETTLED * 2);
        (dir, vec!["models/m".to_owned()])
    }

    fn open(dir: &tempfile::TempDir, rel: &str) -> File {
        File::open(dir.path().join(rel)).unwrap()
    }

    fn hashed(dir: &tempfile::TempDir, rel: &str) -> (u64, String) {
        sha256_reader(&mut open(dir, rel)).unwrap()
    }

    #[test]
    fn every_settled_file_of_a_model_folder_gets_its_true_checksum() {
        let (dir, models) = install();
        let digests = Pending::start(dir.path().to_path_buf(), models).wait();
        let mut names: Vec<_> = digests.taken.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["models/m/sub/extra.bin", "models/m/weights.bin"]);
        for rel in names {
            let d = &digests.taken[&rel];
            assert_eq!((d.id.size, d.sha256.clone()), hashed(&dir, &rel), "{rel}");
        }
    }

    /// The check takes the checksum for an unchanged file without reading it: a checksum
    /// planted for the file's identity is what it answers, and what the file holds is not.
    #[test]
    fn an_unchanged_file_is_answered_from_its_checksum() {
        let (dir, _) = install();
        let rel = "models/m/weights.bin";
        let mut file = open(&dir, rel);
        let id = FileStamp::of(&file).unwrap();
        let mut digests = Digests::default();
        digests.taken.insert(
            rel.to_owned(),
            Digest {
                id,
                sha256: "planted".into(),
            },
        );
        assert_eq!(
            digests.size_and_sha256(rel, &mut file).unwrap(),
            (3 << 20, "planted".to_owned())
        );
        // Another file's checksum is not this one's.
        let mut other = open(&dir, "models/m/sub/extra.bin");
        assert_eq!(
            digests
                .size_and_sha256("models/m/sub/extra.bin", &mut other)
                .unwrap(),
            hashed(&dir, "models/m/sub/extra.bin")
        );
    }

    /// Written in place (same size), or replaced by another file under the same name: the
    /// check reads the file again and gets what it holds now.
    #[test]
    fn a_file_changed_after_its_checksum_is_read_again() {
        let (dir, models) = install();
        let digests = Pending::start(dir.path().to_path_buf(), models).wait();
        let rel = "models/m/weights.bin";
        let before = hashed(&dir, rel);
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(rel))
            .unwrap();
        w.seek(SeekFrom::Start(1 << 20)).unwrap();
        w.write_all(b"changed").unwrap();
        drop(w);
        let now = hashed(&dir, rel);
        assert_eq!(now.0, before.0);
        assert_ne!(now.1, before.1);
        assert_eq!(
            digests.size_and_sha256(rel, &mut open(&dir, rel)).unwrap(),
            now
        );

        let rel = "models/m/sub/extra.bin";
        let path = dir.path().join(rel);
        std::fs::write(path.with_extension("new"), b"other").unwrap();
        std::fs::rename(path.with_extension("new"), &path).unwrap();
        assert_eq!(
            digests.size_and_sha256(rel, &mut open(&dir, rel)).unwrap(),
            hashed(&dir, rel)
        );
        assert_eq!(hashed(&dir, rel).0, 5);
    }

    /// A file changed just before would be hashed within the clock tick of its change: it is
    /// waited for until it is settled, then hashed (the snapshot's hard links change every
    /// model file just before the hashing starts).
    #[test]
    fn a_file_just_changed_is_hashed_once_settled() {
        let (dir, models) = install();
        let rel = "models/m/sub/extra.bin";
        std::fs::write(dir.path().join(rel), b"fresh").unwrap();
        let digests = Pending::start(dir.path().to_path_buf(), models).wait();
        let d = &digests.taken[rel];
        assert_eq!((d.id.size, d.sha256.clone()), hashed(&dir, rel));
        assert_eq!(digests.taken.len(), 2);
    }

    /// What the model rules get, once the hashing is done: every checksum, named as in the
    /// installation. With no hashing under way, none, at once.
    #[test]
    fn the_checksums_handed_over_are_the_files_true_ones() {
        let (dir, models) = install();
        let pending = Pending::start(dir.path().to_path_buf(), models);
        let handed = pending.when_done()();
        let got: Vec<_> = handed
            .iter()
            .map(|f| (f.path.as_str(), f.size, f.sha256.clone()))
            .collect();
        let want: Vec<_> = ["models/m/sub/extra.bin", "models/m/weights.bin"]
            .into_iter()
            .map(|rel| {
                let (size, sha) = hashed(&dir, rel);
                (rel, size, sha)
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(pending.wait().taken.len(), 2);
        assert!(Pending::none().when_done()().is_empty());
    }

    /// A link in a model folder is not followed: the folder is not listed, nothing in it gets
    /// a checksum (the check then reads each file confined and names the link).
    #[test]
    fn a_link_in_a_model_folder_is_not_followed() {
        let (dir, models) = install();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dir.path().join("models/m/link.bin"),
        )
        .unwrap();
        let digests = Pending::start(dir.path().to_path_buf(), models).wait();
        assert!(digests.taken.is_empty(), "{:?}", digests.taken.keys());
    }

    /// The checksum the pre-swap check took of a staged file is the backup's while the file
    /// is the one checked: a new mode, new content (even of the same size), or another file
    /// under the name, and it is not.
    #[test]
    fn a_staged_files_checksum_stands_until_its_content_changes() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _) = install();
        let rel = "models/m/weights.bin";
        let path = dir.path().join(rel);
        let file = open(&dir, rel);
        let mut digests = StagedDigests::default();
        let planted = (3 << 20, "planted".to_owned());
        digests.keep(rel, FileStamp::of(&file).unwrap(), &file, planted.clone());
        assert_eq!(digests.size_and_sha256(rel, &file), Some(planted.clone()));
        assert_eq!(
            digests.size_and_sha256("models/m/sub/extra.bin", &file),
            None
        );

        assert_eq!(
            digests.size_and_sha256(rel, &open(&dir, rel)),
            Some(planted)
        );
        std::thread::sleep(SETTLED);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(digests.size_and_sha256(rel, &open(&dir, rel)), None);
        let file = open(&dir, rel);
        digests.keep(
            rel,
            FileStamp::of(&file).unwrap(),
            &file,
            (3 << 20, "again".into()),
        );

        std::thread::sleep(SETTLED);
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all(b"changed").unwrap();
        drop(w);
        assert_eq!(hashed(&dir, rel).0, 3 << 20);
        assert_eq!(digests.size_and_sha256(rel, &open(&dir, rel)), None);

        // Kept only when the check read the file whole and it did not change meanwhile.
        let mut digests = StagedDigests::default();
        let before = FileStamp::of(&file).unwrap();
        digests.keep(rel, before, &file, (1, "short read".into()));
        assert_eq!(digests.size_and_sha256(rel, &file), None);
        std::thread::sleep(SETTLED);
        std::fs::write(&path, b"rewritten").unwrap();
        digests.keep(rel, before, &open(&dir, rel), (before.size, "stale".into()));
        assert_eq!(digests.size_and_sha256(rel, &open(&dir, rel)), None);
    }

    /// Stopped (a run that ends before its check), the thread ends without hashing on.
    #[test]
    fn a_stopped_hashing_takes_nothing_more() {
        let (dir, models) = install();
        let stop = AtomicBool::new(true);
        let taken = Mutex::new(Digests::default());
        Digests::take(dir.path(), &models, &stop, &taken);
        assert!(taken.into_inner().unwrap().taken.is_empty());
        // Dropping a pending hashing returns (the thread is told to stop and joined).
        drop(Pending::start(dir.path().to_path_buf(), models));
    }
}

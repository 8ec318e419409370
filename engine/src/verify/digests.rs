//! Checksums of the installation's model files, taken by the host while the model rules run,
//! for the pre-swap check to use rather than read those files a second time.
//!
//! Why: the pre-swap check proves each checksum a staged `metadata.json` gives by hashing the
//! file it names. Most model hops leave the weights alone, so that file is the installation's,
//! and the worker's model rule is hashing that very file at the time, on one core, while the
//! host waits on the other. Hashed on that idle core, the check loses its longest part: on the
//! bench's 256 MB tree its last 0.2 s were one core hashing the weights alone.
//!
//! Trust is unchanged. The host takes these checksums itself, confined (no link followed),
//! never from the worker. A checksum stands only for the very file it was taken of, unchanged
//! since: same device and inode, size, modification and change times when it was taken, just
//! after, and when the check opens the file. File times come from a clock that ticks every few
//! milliseconds, so a file changed twice within one tick keeps its times: a file whose last
//! change is less than `SETTLED` before its checksum would be taken gets none (the rule git
//! keeps for its index). Whatever differs, the check hashes the file as it did before.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use migrate_transaction::confine::{self, Root};
use plugin_api::model::{sha256_reader, Sha256Reader};

/// How long before its checksum is taken a file's last change must be for the checksum to be
/// kept: well over the tick (1–10 ms) of the clock that file times are taken from.
const SETTLED: Duration = Duration::from_millis(50);

/// What tells a file's content has not changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    pub(super) fn of(file: &File) -> io::Result<Identity> {
        let m = file.metadata()?;
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Whether the file's last change (of content or metadata) is [`SETTLED`] or more before
    /// `t`. A change time before 1970 or in the future is not.
    fn settled_before(&self, t: SystemTime) -> bool {
        let (Ok(secs), Ok(nanos)) = (u64::try_from(self.ctime.0), u32::try_from(self.ctime.1))
        else {
            return false;
        };
        let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999));
        changed + SETTLED <= t
    }
}

#[derive(Debug)]
struct Digest {
    id: Identity,
    sha256: String,
}

/// Checksums of installation files, by path relative to the installation.
#[derive(Debug, Default)]
pub struct Digests {
    taken: HashMap<String, Digest>,
}

impl Digests {
    /// Hashes every regular file below each folder of `models` (relative) in the installation
    /// at `root`. A file that cannot be read, or changes while it is read, is left out (the
    /// check then reads it and says what is wrong). `stop` is looked at between reads: once
    /// set, hashing ends with what is done.
    fn take(root: &Path, models: &[String], stop: &AtomicBool) -> Digests {
        let mut digests = Digests::default();
        let Ok(install) = Root::open(root) else {
            return digests;
        };
        for model in models {
            let Ok(files) = install.files_below(model) else {
                continue;
            };
            for inside in files {
                if stop.load(Ordering::Relaxed) {
                    return digests;
                }
                let rel = confine::join(model, &inside);
                if let Ok(Some(digest)) = hash(&install, &rel, stop) {
                    digests.taken.insert(rel, digest);
                }
            }
        }
        digests
    }

    /// The size and sha256 of `file`, opened at `rel` in the installation: the checksum taken
    /// while the model rules ran when `file` is the very file it was taken of and has not
    /// changed since, else read from `file` now.
    pub fn size_and_sha256(&self, rel: &str, file: &mut File) -> io::Result<(u64, String)> {
        if let Some(d) = self.taken.get(rel) {
            if Identity::of(file)? == d.id {
                tracing::debug!(
                    file = rel,
                    "checksum taken while the model rules ran, the file unchanged since"
                );
                return Ok((d.id.size, d.sha256.clone()));
            }
            tracing::debug!(
                file = rel,
                "changed since its checksum was taken while the model rules ran: hashed again"
            );
        }
        sha256_reader(file)
    }
}

/// The checksum of `rel`, when the file is settled before and unchanged after reading it.
fn hash(install: &Root, rel: &str, stop: &AtomicBool) -> io::Result<Option<Digest>> {
    let started = SystemTime::now();
    let mut file = install
        .open_read(rel, None)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let before = Identity::of(&file)?;
    if !before.settled_before(started) {
        return Ok(None);
    }
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
    let (read, sha256) = (reader.bytes_read(), reader.hex());
    let after = Identity::of(&file)?;
    Ok((after == before && read == before.size).then_some(Digest { id: before, sha256 }))
}

/// Checksums of the staged data files, taken by the pre-swap check as it read each one whole,
/// for the backup to record (the sha256 of every file a run writes, see
/// [`migrate_transaction::backup::BackupRequest::known_written`]) without reading those files
/// a second time: on the bench's 0.5× run that read was 850 MB, on a core the archive's
/// compression wanted.
///
/// Trust is unchanged: the host took the checksum itself, of the bytes it checked. It stands
/// for the file the backup opens only if that is the same file, of the same size and
/// modification time; the change time is not compared, because the journal's prepare sets the
/// staged files' modes in between. Whatever differs, the backup hashes the file as before.
#[derive(Debug, Default)]
pub struct StagedDigests {
    taken: HashMap<String, Digest>,
}

impl StagedDigests {
    /// Keeps `sha256` as the checksum of `file` (at `rel` in the staging), read whole (`size`
    /// bytes) since `before` was taken of it: unless it changed meanwhile.
    pub(super) fn keep(
        &mut self,
        rel: &str,
        before: Identity,
        file: &File,
        (size, sha256): (u64, String),
    ) {
        let unchanged = Identity::of(file).is_ok_and(|after| after == before);
        if unchanged && size == before.size {
            self.taken
                .insert(rel.to_owned(), Digest { id: before, sha256 });
        }
    }

    /// The size and sha256 of `file`, opened at `rel` in the staging, when it is the file
    /// checked and unchanged since (its mode aside).
    pub fn size_and_sha256(&self, rel: &str, file: &File) -> Option<(u64, String)> {
        let d = self.taken.get(rel)?;
        let now = Identity::of(file).ok()?;
        let same =
            (now.dev, now.ino, now.size, now.mtime) == (d.id.dev, d.id.ino, d.id.size, d.id.mtime);
        same.then(|| (d.id.size, d.sha256.clone()))
    }
}

/// Checksums being taken on a thread of their own. Dropped before [`Pending::wait`] (a run
/// that ends before its check), it stops the thread and waits for the one read it is in.
pub struct Pending {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Digests>>,
}

impl Pending {
    /// No checksums: the check hashes every file itself.
    pub fn none() -> Pending {
        Pending {
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Starts hashing the files of the model folders `models` (relative) of the installation
    /// at `root`. A thread that cannot be started takes none.
    pub fn start(root: PathBuf, models: Vec<String>) -> Pending {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("model-digests".into())
            .spawn(move || Digests::take(&root, &models, &flag))
            .ok();
        Pending { stop, thread }
    }

    /// The checksums, once all are taken. A thread that panicked leaves none.
    pub fn wait(mut self) -> Digests {
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
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
        let id = Identity::of(&file).unwrap();
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

    /// A file changed just before would be hashed within the clock tick of its change: it
    /// gets no checksum; the settled file beside it does.
    #[test]
    fn a_file_just_changed_gets_no_checksum() {
        let (dir, models) = install();
        std::fs::write(dir.path().join("models/m/sub/extra.bin"), b"fresh").unwrap();
        let digests = Pending::start(dir.path().to_path_buf(), models).wait();
        let names: Vec<_> = digests.taken.keys().cloned().collect();
        assert_eq!(names, ["models/m/weights.bin"]);
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
    /// is the one checked: a new mode (the journal's prepare sets it) keeps it; new content,
    /// even of the same size, or another file under the name, does not.
    #[test]
    fn a_staged_files_checksum_stands_until_its_content_changes() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _) = install();
        let rel = "models/m/weights.bin";
        let path = dir.path().join(rel);
        let file = open(&dir, rel);
        let mut digests = StagedDigests::default();
        let planted = (3 << 20, "planted".to_owned());
        digests.keep(rel, Identity::of(&file).unwrap(), &file, planted.clone());
        assert_eq!(digests.size_and_sha256(rel, &file), Some(planted.clone()));
        assert_eq!(
            digests.size_and_sha256("models/m/sub/extra.bin", &file),
            None
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            digests.size_and_sha256(rel, &open(&dir, rel)),
            Some(planted)
        );

        std::thread::sleep(SETTLED);
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all(b"changed").unwrap();
        drop(w);
        assert_eq!(hashed(&dir, rel).0, 3 << 20);
        assert_eq!(digests.size_and_sha256(rel, &open(&dir, rel)), None);

        // Kept only when the check read the file whole and it did not change meanwhile.
        let mut digests = StagedDigests::default();
        let before = Identity::of(&file).unwrap();
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
        assert!(Digests::take(dir.path(), &models, &stop).taken.is_empty());
        // Dropping a pending hashing returns (the thread is told to stop and joined).
        drop(Pending::start(dir.path().to_path_buf(), models));
    }
}

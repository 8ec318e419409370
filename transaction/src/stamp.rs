//! What tells that a file's content has not changed without reading it again: the same inode
//! on the same device, with the same size and file times. The migration's model checksums and
//! a rollback's looks at the installation's files both rely on it.
//!
//! A write moves the modification and change times, but only by the tick of the clock they are
//! taken from (nanoseconds on recent kernels' ext4, 1–10 ms on others): a write within the tick
//! of a stamp can leave it as it was. So a stamp counts only for a file whose last change is
//! [`SETTLED`] or more before it was taken; [`FileStamp::settled`] waits that long for one.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

/// How long before a stamp a file's last change must be for the stamp to count: well over the
/// tick (1–10 ms) of the clock that file times are taken from.
pub const SETTLED: Duration = Duration::from_millis(50);

/// A file's identity and file times, from `fstat` of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    /// The size in bytes.
    pub size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(file: &File) -> io::Result<FileStamp> {
        let m = file.metadata()?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// The stamp of `file` once the file is settled: a file changed less than [`SETTLED`] ago
    /// is waited for, once. `None` when it is still not settled then (it keeps changing, or its
    /// change time is in the future or before 1970).
    pub fn settled(file: &File) -> io::Result<Option<FileStamp>> {
        let mut taken = SystemTime::now();
        let mut stamp = FileStamp::of(file)?;
        if let Some(wait) = stamp.unsettled_for(taken) {
            std::thread::sleep(wait);
            taken = SystemTime::now();
            stamp = FileStamp::of(file)?;
        }
        Ok(stamp.settled_before(taken).then_some(stamp))
    }

    /// Whether the file's last change (of content or metadata) is [`SETTLED`] or more before
    /// `t`. A change time before 1970 or in the future is not.
    fn settled_before(&self, t: SystemTime) -> bool {
        self.changed().is_some_and(|changed| changed + SETTLED <= t)
    }

    /// How long after `t` the file becomes settled, when it changed less than [`SETTLED`]
    /// before `t` (not in the future: that is a clock to distrust, not to wait for).
    fn unsettled_for(&self, t: SystemTime) -> Option<Duration> {
        let since = t.duration_since(self.changed()?).ok()?;
        SETTLED.checked_sub(since).filter(|wait| !wait.is_zero())
    }

    /// Whether `now` is this very file with the same size and modification time, the change
    /// time left out: for a file linked elsewhere since this stamp (a new link moves the
    /// change time, and nothing else).
    pub fn unwritten_in(&self, now: &FileStamp) -> bool {
        FileStamp {
            ctime: self.ctime,
            ..*now
        } == *self
    }

    /// The file's change time; `None` before 1970.
    fn changed(&self) -> Option<SystemTime> {
        let (Ok(secs), Ok(nanos)) = (u64::try_from(self.ctime.0), u32::try_from(self.ctime.1))
        else {
            return None;
        };
        Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_under_settled_ago_is_waited_for() {
        let file = tempfile::tempfile().unwrap();
        let stamp = FileStamp::of(&file).unwrap();
        let changed = stamp.changed().unwrap();
        let ms = Duration::from_millis;
        assert_eq!(
            stamp.unsettled_for(changed + ms(10)),
            Some(SETTLED - ms(10))
        );
        assert_eq!(stamp.unsettled_for(changed + SETTLED), None);
        assert_eq!(stamp.unsettled_for(changed + SETTLED * 3), None);
        // A change time ahead of the clock is not waited for (nor ever settled).
        assert_eq!(stamp.unsettled_for(changed - ms(10)), None);
        assert!(!stamp.settled_before(changed - ms(10)));
        assert!(stamp.settled_before(changed + SETTLED));
    }

    #[test]
    fn a_write_moves_the_stamp_and_a_new_link_only_the_change_time() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"one\n").unwrap();
        let before = FileStamp::of(&File::open(&path).unwrap()).unwrap();
        std::fs::hard_link(&path, dir.path().join("g")).unwrap();
        let linked = FileStamp::of(&File::open(&path).unwrap()).unwrap();
        assert!(before.unwritten_in(&linked));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"two\n").unwrap();
        let written = FileStamp::of(&File::open(&path).unwrap()).unwrap();
        assert!(!before.unwritten_in(&written));
        assert_ne!(before, written);
    }
}

//! One migration at a time per installation: an advisory lock on `.migrate/lock`. The kernel
//! drops it when the holder dies, so a `kill -9` never leaves a stale lock for a human to clear
//! (Liquibase's lock row does). The holder's PID is written into the file for the message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{io, Error, Result};
use crate::layout::LOCK_FILE;

pub struct InstallLock {
    file: File,
}

impl InstallLock {
    /// Takes the lock in `tool_dir` (created 0700 if needed, refused when another user could
    /// write it) or says who holds it. The lock file is 0600 and never opened through a link.
    pub fn acquire(tool_dir: &Path) -> Result<InstallLock> {
        if let (Some(root), Some(name)) = (tool_dir.parent(), tool_dir.file_name()) {
            let root = crate::confine::Root::open(root)?;
            root.private_dir(&name.to_string_lossy())?;
        }
        let path = tool_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(format!("cannot open the lock file {}", path.display())))?;
        // A lock file an older version left with the umask's mode becomes 0600 when it is ours.
        if let Ok(meta) = file.metadata() {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            if meta.uid() == crate::identity::current_uid() && meta.mode() & 0o077 != 0 {
                let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
            }
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    root: tool_dir.parent().unwrap_or(tool_dir).to_path_buf(),
                    holder: read_holder(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(io(format!("cannot lock {}", path.display()))(e))
            }
        }
        let pid = std::process::id().to_string();
        let _ = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        Ok(InstallLock { file })
    }
}

/// The holder writes its PID just after taking the lock: give it a moment to do so.
fn read_holder(file: &mut File) -> String {
    for _ in 0..20 {
        let mut holder = String::new();
        let _ = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut holder));
        if !holder.trim().is_empty() {
            return holder.trim().to_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "unknown".to_owned()
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

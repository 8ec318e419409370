//! One migration at a time per installation: an advisory lock on `.migrate/lock`. The kernel
//! drops it when the holder dies, so a `kill -9` never leaves a stale lock for a human to clear
//! (Liquibase's lock row does). The holder's PID is written into the file for the message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{MigrateError, Result};

pub struct InstallLock {
    file: File,
}

impl InstallLock {
    /// Takes the lock in `tool_dir` (created if needed) or says who holds it.
    pub fn acquire(tool_dir: &Path) -> Result<InstallLock> {
        std::fs::create_dir_all(tool_dir)
            .map_err(|e| MigrateError::io(format!("cannot create {}", tool_dir.display()), e))?;
        let path = tool_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                MigrateError::io(format!("cannot open the lock file {}", path.display()), e)
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file);
                return Err(MigrateError::Locked(format!(
                    "{} is being migrated by another migrate process (PID {})\n  next step: wait for it to finish; the lock is released automatically when that process ends",
                    tool_dir.parent().unwrap_or(tool_dir).display(),
                    holder
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(MigrateError::io(
                    format!("cannot lock {}", path.display()),
                    e,
                ))
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

//! File-system steps every part of a transaction takes the same way: write-and-sync, make a
//! rename durable, list a staged tree, hash a stream on its way through.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{io, Result};

/// Makes a rename or unlink durable. Best effort: some filesystems refuse to sync a folder.
pub fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

/// Syncs every folder below `dir` (new entries are durable only once their folder is).
pub fn sync_tree(dir: &Path) {
    for entry in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if entry.file_type().is_dir() {
            if let Ok(d) = File::open(entry.path()) {
                let _ = d.sync_all();
            }
        }
    }
}

/// Every regular file below `dir`, relative with `/` separators, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| io(format!("cannot list {}", dir.display()))(e.into()))?;
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(out)
}

/// A reader or writer that hashes (sha256) and counts the bytes going through it, so that a
/// file streamed into or out of a backup is hashed on the way rather than read twice.
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes that went through so far.
    pub fn count(&self) -> u64 {
        self.bytes
    }

    /// Hex sha256 of the bytes that went through so far.
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    fn saw(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.saw(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.saw(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Makes every file this process creates from now on private (umask 077): for the plugin
/// worker, whose plugin code creates staged model files by path with whatever mode it likes.
/// Until the journal gives each its final mode, none is more readable than its owner.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

//! `plugins.lock`: the plugins a folder may load, pinned by sha256 — its format, and the check
//! made on every plugin file before it is loaded.
//!
//! One lock per plugin folder, at `<folder>/plugins.lock`, written by `migrate plugins pin`.
//! When a folder has one, every plugin file in it must be listed with the sha256 of its
//! content, or it is refused before it is loaded. `migrate plugins verify` runs the same checks
//! without loading anything. The format is versioned (`format`, `algorithm`) so that a later
//! change of either is refused loudly instead of misread. Documented in docs/plugins.md.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::trust;
use crate::error::{MigrateError, Result};

/// The lock's file name inside a plugin folder.
pub const LOCK_FILE: &str = "plugins.lock";
/// The lock format this host reads and writes.
pub const FORMAT: u32 = 1;
/// The only checksum algorithm of format 1.
pub const ALGORITHM: &str = "sha256";

const HEADER: &str = "\
# plugins.lock: the plugins this folder may load, written by `migrate plugins pin`.
# A plugin file here that is not listed, or whose sha256 differs, is refused before it is
# loaded. After installing or upgrading a plugin you trust, run `migrate plugins pin` again.
";

/// The content of a `plugins.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub format: u32,
    pub algorithm: String,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<Pin>,
}

/// One pinned plugin file. `file` and `sha256` are enforced; the rest is for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// File name inside the folder.
    pub file: String,
    pub sha256: String,
    pub name: String,
    pub from: String,
    pub to: String,
    pub api_version: String,
}

/// A folder's lock as read: its content (or why it cannot be used) and a failed trust check.
#[derive(Debug)]
pub struct Lock {
    pub path: PathBuf,
    pub content: std::result::Result<LockFile, LockProblem>,
    /// The lock file itself fails the trust checks.
    pub insecure: Option<trust::TrustProblem>,
}

/// Reads `dir/plugins.lock`; `None` when there is none.
pub fn read(dir: &Path) -> Option<Lock> {
    let path = dir.join(LOCK_FILE);
    let (content, insecure) = match File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => (
            Err(LockProblem::Unreadable {
                path: path.clone(),
                detail: e.to_string(),
            }),
            None,
        ),
        Ok(file) => read_open(&path, file),
    };
    Some(Lock {
        path,
        content,
        insecure,
    })
}

/// The lock's content, and its failed trust check, from the open file.
fn read_open(
    path: &Path,
    mut file: File,
) -> (
    std::result::Result<LockFile, LockProblem>,
    Option<trust::TrustProblem>,
) {
    let insecure = file
        .metadata()
        .ok()
        .and_then(|m| trust::check(path, &m, "plugins.lock").err());
    let mut text = String::new();
    let content = match file.read_to_string(&mut text) {
        Ok(_) => parse(path, &text),
        Err(e) => Err(LockProblem::Unreadable {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    };
    (content, insecure)
}

fn parse(path: &Path, text: &str) -> std::result::Result<LockFile, LockProblem> {
    let lock: LockFile = toml::from_str(text).map_err(|e| LockProblem::Malformed {
        path: path.to_path_buf(),
        detail: e.message().to_owned(),
    })?;
    if lock.format != FORMAT || lock.algorithm != ALGORITHM {
        return Err(LockProblem::UnknownFormat {
            path: path.to_path_buf(),
            format: lock.format,
            algorithm: lock.algorithm,
        });
    }
    Ok(lock)
}

/// Why a folder's `plugins.lock` cannot be used: every plugin of the folder is then refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockProblem {
    #[error("cannot read {}: {detail}", path.display())]
    Unreadable { path: PathBuf, detail: String },
    #[error("{} is not a valid plugins.lock ({detail}); fix: run `migrate plugins pin` again", path.display())]
    Malformed { path: PathBuf, detail: String },
    #[error("{} has format {format} with algorithm `{algorithm}`; this migrate reads format {FORMAT} with `{ALGORITHM}`: upgrade migrate, or run `migrate plugins pin` again", path.display())]
    UnknownFormat {
        path: PathBuf,
        format: u32,
        algorithm: String,
    },
}

/// Why the lock refuses one plugin file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinProblem {
    #[error("{}: refused because the folder's lock is unusable: {problem}", path.display())]
    LockUnusable { path: PathBuf, problem: LockProblem },
    #[error("{} is not listed in plugins.lock ({}); fix: if you trust it, run `migrate plugins pin {}`, otherwise remove it", path.display(), lock.display(), lock.parent().unwrap_or(Path::new(".")).display())]
    Unlisted { path: PathBuf, lock: PathBuf },
    #[error("sha256 {found} of {} differs from plugins.lock ({} pins {pinned}): the file changed since it was pinned; fix: restore the pinned file, or if you trust the new one run `migrate plugins pin {}`", path.display(), lock.display(), lock.parent().unwrap_or(Path::new(".")).display())]
    Changed {
        path: PathBuf,
        lock: PathBuf,
        found: String,
        pinned: String,
    },
}

impl Lock {
    /// Whether the file `name` (at `path`) with content hash `sha256` may be loaded.
    pub fn check(
        &self,
        path: &Path,
        name: &str,
        sha256: &str,
    ) -> std::result::Result<(), PinProblem> {
        let lock = self
            .content
            .as_ref()
            .map_err(|problem| PinProblem::LockUnusable {
                path: path.to_path_buf(),
                problem: problem.clone(),
            })?;
        match lock.plugins.iter().find(|p| p.file == name) {
            None => Err(PinProblem::Unlisted {
                path: path.to_path_buf(),
                lock: self.path.clone(),
            }),
            Some(p) if p.sha256 != sha256 => Err(PinProblem::Changed {
                path: path.to_path_buf(),
                lock: self.path.clone(),
                found: sha256.to_owned(),
                pinned: p.sha256.clone(),
            }),
            Some(_) => Ok(()),
        }
    }
}

impl LockFile {
    /// Writes `dir/plugins.lock` (mode 0644, whatever the umask) through a temporary file.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(LOCK_FILE);
        let body = toml::to_string(self).map_err(|e| {
            MigrateError::io(
                format!("cannot encode {LOCK_FILE}"),
                std::io::Error::other(e),
            )
        })?;
        let tmp = dir.join(format!(".{LOCK_FILE}.{}", std::process::id()));
        let fail = |e| MigrateError::io(format!("cannot write {}", path.display()), e);
        std::fs::write(&tmp, format!("{HEADER}{body}")).map_err(fail)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_with(file: &str, sha: &str) -> Lock {
        Lock {
            path: PathBuf::from("/p/plugins.lock"),
            content: Ok(LockFile {
                format: FORMAT,
                algorithm: ALGORITHM.into(),
                plugins: vec![Pin {
                    file: file.into(),
                    sha256: sha.into(),
                    name: "n".into(),
                    from: "1.0.0".into(),
                    to: "2.0.0".into(),
                    api_version: "1.1.0".into(),
                }],
            }),
            insecure: None,
        }
    }

    #[test]
    fn listed_with_the_same_hash_passes_anything_else_is_refused() {
        let lock = lock_with("liba.so", "aa");
        let at = Path::new("/p/liba.so");
        assert_eq!(lock.check(at, "liba.so", "aa"), Ok(()));
        let e = lock.check(at, "liba.so", "bb").unwrap_err().to_string();
        assert!(e.contains("differs from plugins.lock"), "{e}");
        let e = lock
            .check(Path::new("/p/libb.so"), "libb.so", "aa")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not listed in plugins.lock"), "{e}");
        assert!(e.contains("migrate plugins pin /p"), "{e}");
    }

    #[test]
    fn the_lock_round_trips_and_other_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(want) = lock_with("liba.so", "aa").content else {
            unreachable!()
        };
        want.write(dir.path()).unwrap();
        let lock = read(dir.path()).unwrap();
        assert_eq!(lock.content.unwrap(), want);
        assert_eq!(lock.insecure, None);
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        for (from, to) in [("format = 1", "format = 2"), ("\"sha256\"", "\"blake3\"")] {
            std::fs::write(dir.path().join(LOCK_FILE), text.replacen(from, to, 1)).unwrap();
            let e = read(dir.path()).unwrap().content.unwrap_err().to_string();
            assert!(e.contains("upgrade migrate"), "{e}");
        }
    }

    #[test]
    fn no_lock_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).is_none());
    }
}

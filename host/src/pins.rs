//! `plugins.lock`: the plugins a folder may load, pinned by sha256.
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

use crate::error::{MigrateError, Result};
use crate::registry::{self, Discovery, Folder, Registry, Status};
use crate::trust;

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
    pub content: std::result::Result<LockFile, String>,
    pub insecure: Option<String>,
}

/// Reads `dir/plugins.lock`; `None` when there is none.
pub fn read(dir: &Path) -> Option<Lock> {
    let path = dir.join(LOCK_FILE);
    let (content, insecure) = match File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => (Err(format!("cannot open {}: {e}", path.display())), None),
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
) -> (std::result::Result<LockFile, String>, Option<String>) {
    let insecure = file
        .metadata()
        .ok()
        .and_then(|m| trust::check(path, &m, LOCK_FILE).err());
    let mut text = String::new();
    let content = match file.read_to_string(&mut text) {
        Ok(_) => parse(path, &text),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    };
    (content, insecure)
}

fn parse(path: &Path, text: &str) -> std::result::Result<LockFile, String> {
    let shown = path.display();
    let lock: LockFile = toml::from_str(text).map_err(|e| {
        format!(
            "{shown} is not a valid plugins.lock ({}); fix: run `migrate plugins pin` again",
            e.message()
        )
    })?;
    if lock.format != FORMAT || lock.algorithm != ALGORITHM {
        return Err(format!(
            "{shown} has format {} with algorithm `{}`; this migrate reads format {FORMAT} with `{ALGORITHM}`: upgrade migrate, or run `migrate plugins pin` again",
            lock.format, lock.algorithm
        ));
    }
    Ok(lock)
}

impl Lock {
    /// Whether the file `name` (at `path`) with content hash `sha256` may be loaded.
    pub fn check(&self, path: &Path, name: &str, sha256: &str) -> std::result::Result<(), String> {
        let lock = self.content.as_ref().map_err(|e| {
            format!(
                "{}: refused because the folder's lock is unusable: {e}",
                path.display()
            )
        })?;
        let shown = path.display();
        let dir = self.path.parent().unwrap_or(Path::new(".")).display();
        match lock.plugins.iter().find(|p| p.file == name) {
            None => Err(format!(
                "{shown} is not listed in plugins.lock ({}); fix: if you trust it, run `migrate plugins pin {dir}`, otherwise remove it",
                self.path.display()
            )),
            Some(p) if p.sha256 != sha256 => Err(format!(
                "sha256 {sha256} of {shown} differs from plugins.lock ({} pins {}): the file changed since it was pinned; fix: restore the pinned file, or if you trust the new one run `migrate plugins pin {dir}`",
                self.path.display(),
                p.sha256
            )),
            Some(_) => Ok(()),
        }
    }
}

impl LockFile {
    /// Writes `dir/plugins.lock` (mode 0644, whatever the umask) through a temporary file.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(LOCK_FILE);
        let body = toml::to_string(self)
            .map_err(|e| MigrateError::Plugin(format!("cannot encode {LOCK_FILE}: {e}")))?;
        let tmp = dir.join(format!(".{LOCK_FILE}.{}", std::process::id()));
        let fail = |e| MigrateError::io(format!("cannot write {}", path.display()), e);
        std::fs::write(&tmp, format!("{HEADER}{body}")).map_err(fail)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(path)
    }
}

/// A file `plugins pin` left out of the lock, and why.
#[derive(Debug, Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// What `plugins pin` wrote for one folder.
#[derive(Debug, Serialize)]
pub struct Pinned {
    pub lock: PathBuf,
    pub plugins: Vec<Pin>,
    pub skipped: Vec<Skipped>,
}

/// The folders to pin or verify: those named, or every folder of the search path that holds
/// plugin files (or, for verify, a lock).
fn folders(discovery: &Discovery, named: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if let Some(missing) = named.iter().find(|d| !d.is_dir()) {
        return Err(MigrateError::Usage(format!(
            "{} is not a folder; next step: pass an existing plugin folder",
            missing.display()
        )));
    }
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let dirs = discovery.search_path().dirs;
    Ok(dirs
        .into_iter()
        .filter(|d| !registry::candidates(d).is_empty() || d.join(LOCK_FILE).is_file())
        .collect())
}

/// `migrate plugins pin`: loads each folder's plugins (ignoring any existing lock, still
/// applying the trust checks) and writes a lock listing those that loaded as valid plugins.
pub fn pin(discovery: &Discovery, named: &[PathBuf]) -> Result<Vec<Pinned>> {
    folders(discovery, named)?
        .iter()
        .map(|dir| pin_folder(discovery, dir))
        .collect()
}

fn pin_folder(discovery: &Discovery, dir: &Path) -> Result<Pinned> {
    let only_here = Discovery {
        plugin_dirs: vec![dir.to_path_buf()],
        no_default_dirs: true,
        preferred: Vec::new(),
        ignore_locks: true,
        ..discovery.clone()
    };
    let registry = Registry::discover(&only_here)?;
    let mut lock = LockFile {
        format: FORMAT,
        algorithm: ALGORITHM.to_owned(),
        plugins: Vec::new(),
    };
    let mut skipped = Vec::new();
    for e in registry.entries {
        match (&e.status, &e.descriptor) {
            (Status::Invalid { reason } | Status::Refused { reason }, _) => skipped.push(Skipped {
                path: e.path,
                reason: reason.clone(),
            }),
            (_, Some(d)) => lock.plugins.push(Pin {
                file: e.file_name,
                sha256: e.sha256,
                name: d.name.clone(),
                from: d.from.clone(),
                to: d.to.clone(),
                api_version: d.api_version.clone(),
            }),
            (_, None) => {}
        }
    }
    let path = lock.write(dir)?;
    Ok(Pinned {
        lock: path,
        plugins: lock.plugins,
        skipped,
    })
}

/// `plugins verify`'s verdict on one file.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub path: PathBuf,
    pub sha256: String,
    /// Why it would be refused (or cannot be read); `None` when it would be loaded.
    pub problem: Option<String>,
    pub warnings: Vec<String>,
}

/// `plugins verify`'s verdict on one folder.
#[derive(Debug, Serialize)]
pub struct VerifiedFolder {
    pub dir: PathBuf,
    /// The folder's lock, `None` when it is not pinned.
    pub lock: Option<PathBuf>,
    pub files: Vec<Verified>,
    /// Problems not tied to one present file: no lock, a pinned file that is missing.
    pub problems: Vec<String>,
}

impl VerifiedFolder {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.files.iter().all(|f| f.problem.is_none())
    }
}

/// `migrate plugins verify`: the checks made before loading, for every plugin file of the
/// folders, without loading anything.
pub fn verify(discovery: &Discovery, named: &[PathBuf]) -> Result<Vec<VerifiedFolder>> {
    Ok(folders(discovery, named)?
        .iter()
        .map(|dir| verify_folder(discovery, dir))
        .collect())
}

fn verify_folder(discovery: &Discovery, dir: &Path) -> VerifiedFolder {
    let folder = Folder::inspect(dir, discovery);
    let files: Vec<Verified> = registry::candidates(dir)
        .iter()
        .map(|p| verify_file(p, &folder))
        .collect();
    let mut problems = Vec::new();
    match folder.lock().map(|l| (&l.path, &l.content)) {
        None if !files.is_empty() => problems.push(format!(
            "{} has no {LOCK_FILE}: its plugins are not pinned; fix: run `migrate plugins pin {}`",
            dir.display(),
            dir.display()
        )),
        Some((path, Ok(lock))) => problems.extend(missing_files(path, lock, dir)),
        _ => {}
    }
    VerifiedFolder {
        dir: dir.to_path_buf(),
        lock: folder.lock().map(|l| l.path.clone()),
        files,
        problems,
    }
}

fn verify_file(listed: &Path, folder: &Folder) -> Verified {
    let path = listed
        .canonicalize()
        .unwrap_or_else(|_| listed.to_path_buf());
    let name = listed.file_name().unwrap_or_default().to_string_lossy();
    match registry::inspect(&path, &name, folder) {
        Ok(i) => Verified {
            path,
            sha256: i.sha256,
            problem: i.refusal,
            warnings: i.warnings,
        },
        Err(e) => Verified {
            problem: Some(format!("{}: {e}", path.display())),
            path,
            sha256: String::new(),
            warnings: Vec::new(),
        },
    }
}

fn missing_files(lock_path: &Path, lock: &LockFile, dir: &Path) -> Vec<String> {
    lock.plugins
        .iter()
        .filter(|p| !dir.join(&p.file).is_file())
        .map(|p| {
            format!(
                "{} pins {} ({}), which is missing; fix: restore it, or run `migrate plugins pin {}`",
                lock_path.display(),
                p.file,
                p.name,
                dir.display()
            )
        })
        .collect()
}

/// Human-readable `plugins pin` output.
pub fn render_pinned(pinned: &[Pinned]) -> String {
    let mut out = String::new();
    if pinned.is_empty() {
        out.push_str("no plugin folder to pin: pass one, or use --plugin-dir\n");
    }
    for p in pinned {
        out.push_str(&format!(
            "{}: pinned {} plugin(s)\n",
            p.lock.display(),
            p.plugins.len()
        ));
        for pin in &p.plugins {
            out.push_str(&format!(
                "  {}  {} {} → {}  sha256 {}\n",
                pin.file, pin.name, pin.from, pin.to, pin.sha256
            ));
        }
        for s in &p.skipped {
            out.push_str(&format!("  not pinned: {}\n", s.reason));
        }
    }
    out
}

/// Human-readable `plugins verify` output.
pub fn render_verified(folders: &[VerifiedFolder]) -> String {
    let mut out = String::new();
    if folders.is_empty() {
        out.push_str("no plugin folder to verify\n");
    }
    for f in folders {
        let verdict = if f.ok() { "ok" } else { "FAILED" };
        out.push_str(&format!("{}: {verdict}\n", f.dir.display()));
        for v in &f.files {
            match &v.problem {
                None => out.push_str(&format!("  ok       {}\n", v.path.display())),
                Some(p) => out.push_str(&format!("  REFUSED  {p}\n")),
            }
            for w in &v.warnings {
                out.push_str(&format!("  warning  {w}\n"));
            }
        }
        for p in &f.problems {
            out.push_str(&format!("  PROBLEM  {p}\n"));
        }
    }
    out
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
        let e = lock.check(at, "liba.so", "bb").unwrap_err();
        assert!(e.contains("differs from plugins.lock"), "{e}");
        let e = lock
            .check(Path::new("/p/libb.so"), "libb.so", "aa")
            .unwrap_err();
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
            let e = read(dir.path()).unwrap().content.unwrap_err();
            assert!(e.contains("upgrade migrate"), "{e}");
        }
    }

    #[test]
    fn no_lock_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).is_none());
    }
}

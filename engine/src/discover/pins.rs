//! `migrate plugins pin` and `migrate plugins verify`: write a folder's `plugins.lock` from the
//! plugins that load there, and check folders against their locks without loading anything.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::lockfile::{LockFile, Pin, ALGORITHM, FORMAT, LOCK_FILE};
use super::registry::{self, Discovery, Folder, Loader, Registry, Status};
use crate::error::{MigrateError, Result};

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
    /// How the workers that described this folder's plugins, and those of the folders pinned
    /// before it in the same command, were confined ([`Registry::isolation`]): pinning runs
    /// plugin code to read each descriptor. `None` when none ran.
    pub isolation: Option<crate::isolation::Isolation>,
}

/// The folders to pin or verify: those named, or every folder of the search path that holds
/// plugin files (or, for verify, a lock).
fn folders(discovery: &Discovery, named: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if let Some(missing) = named.iter().find(|d| !d.is_dir()) {
        return Err(MigrateError::usage(
            format!("{} is not a folder", missing.display()),
            "pass an existing plugin folder",
        ));
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
pub fn pin(discovery: &Discovery, loader: &dyn Loader, named: &[PathBuf]) -> Result<Vec<Pinned>> {
    folders(discovery, named)?
        .iter()
        .map(|dir| pin_folder(discovery, loader, dir))
        .collect()
}

fn pin_folder(discovery: &Discovery, loader: &dyn Loader, dir: &Path) -> Result<Pinned> {
    let only_here = Discovery {
        plugin_dirs: vec![dir.to_path_buf()],
        no_default_dirs: true,
        preferred: Vec::new(),
        ignore_locks: true,
        ..discovery.clone()
    };
    let mut registry = Registry::discover(&only_here, loader)?;
    let mut lock = LockFile {
        format: FORMAT,
        algorithm: ALGORITHM.to_owned(),
        plugins: Vec::new(),
    };
    let mut skipped = Vec::new();
    for e in std::mem::take(&mut registry.entries) {
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
        isolation: registry.isolation,
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

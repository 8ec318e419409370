//! An installation on disk: where its files are and which release it is (spec section 1).

use std::fs;
use std::path::{Path, PathBuf};

use semver::Version;

use crate::error::{MigrateError, Result};

pub const VERSION_FILE: &str = "VERSION";
pub const SERVER_TOML: &str = "config/server.toml";
pub const DATA_DIR: &str = "data";
pub const MODELS_DIR: &str = "models";
/// Rejected records go below this folder of the data folder (`data/.quarantine/`).
pub const QUARANTINE: &str = ".quarantine";
pub use migrate_transaction::layout::{BACKUPS_DIR, TOOL_DIR};

/// A TrustformeRS Serve installation root.
#[derive(Debug, Clone)]
pub struct Installation {
    pub root: PathBuf,
}

/// A data file and how its records are laid out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataFile {
    /// Relative to the installation root, `/`-separated.
    pub rel: String,
    pub kind: DataKind,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DataKind {
    /// One JSON object per line.
    Lines,
    /// One JSON document: an object, or an array of objects.
    Document,
}

impl Installation {
    /// Opens `root`, which must be a folder.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(MigrateError::invalid(
                root,
                "not a folder",
                "pass --path with the root of a TrustformeRS Serve installation (the folder holding config/)",
            ));
        }
        Ok(Installation {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Version detection when `--from` is not given: `VERSION` if present, else a top-level
    /// `model_path` key in `config/server.toml` means 0.1.0.
    pub fn detect_version(&self) -> Result<Version> {
        let version_file = self.path(VERSION_FILE);
        if let Ok(text) = fs::read_to_string(&version_file) {
            return Version::parse(text.trim()).map_err(|e| {
                MigrateError::invalid(
                    &version_file,
                    format!("`{}` is not a semver version ({e})", text.trim()),
                    "fix the file, or pass --from VERSION --force",
                )
            });
        }
        let toml_path = self.path(SERVER_TOML);
        let text = fs::read_to_string(&toml_path).map_err(|e| MigrateError::UnknownVersion {
            root: self.root.clone(),
            reason: format!(
                "no {} and {} cannot be read ({e})",
                version_file.display(),
                toml_path.display()
            ),
        })?;
        let doc: toml_edit::DocumentMut = text.parse().map_err(|e| {
            MigrateError::invalid(
                &toml_path,
                format!("invalid TOML: {e}"),
                "fix the file, or pass --from VERSION",
            )
        })?;
        if doc
            .as_table()
            .get("model_path")
            .is_some_and(|i| i.is_value())
        {
            return Ok(Version::new(0, 1, 0));
        }
        Err(MigrateError::UnknownVersion {
            root: self.root.clone(),
            reason: format!(
                "{} is absent and {} has no top-level `model_path` (the 0.1.0 marker)",
                version_file.display(),
                toml_path.display()
            ),
        })
    }

    /// Resolves the source version: detected, checked against `--from` unless `force`.
    pub fn source_version(&self, from: Option<&Version>, force: bool) -> Result<Version> {
        let detected = self.detect_version();
        match (from, detected) {
            (None, detected) => detected,
            (Some(f), Ok(d)) if &d == f || force => Ok(f.clone()),
            (Some(f), Ok(d)) => Err(MigrateError::VersionMismatch {
                root: self.root.clone(),
                given: f.clone(),
                detected: d,
            }),
            (Some(f), Err(_)) => Ok(f.clone()),
        }
    }

    /// Every data file, sorted, skipping the quarantine. Files that are neither `.jsonl` nor
    /// `.json` are left as they are and not listed.
    pub fn data_files(&self, dir: &Path) -> Result<Vec<DataFile>> {
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let quarantine = dir.join(QUARANTINE);
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(dir)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.path() != quarantine)
        {
            let entry = entry.map_err(|e| {
                MigrateError::io(format!("cannot list {}", dir.display()), e.into())
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let kind = match entry.path().extension().and_then(|e| e.to_str()) {
                Some("jsonl") => DataKind::Lines,
                Some("json") => DataKind::Document,
                _ => continue,
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(DataFile {
                rel: self.rel(entry.path()),
                kind,
                size,
            });
        }
        Ok(out)
    }

    /// Model folders (`models/<name>/`), sorted by name.
    pub fn model_dirs(&self, dir: &Path) -> Result<Vec<String>> {
        let Ok(read) = fs::read_dir(dir) else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = read
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Total size of the regular files below `path` (0 if absent).
    pub fn size_of(path: &Path) -> u64 {
        walkdir::WalkDir::new(path)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// `path` relative to the root with `/` separators.
    pub fn rel(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

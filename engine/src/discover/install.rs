//! An installation on disk: where its files are and which release it is (spec section 1).

use std::path::{Path, PathBuf};

use semver::Version;

use migrate_transaction::confine::{self, Kind, Root};

use crate::error::{MigrateError, Result};

pub use migrate_transaction::layout::VERSION_FILE;
/// A config file is read only when it is a regular file of at most this size.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
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

    /// A folder is taken for an installation only if it holds `VERSION` or
    /// `config/server.toml` (spec section 1). A whole-installation migration writes `.migrate/`
    /// and `backups/` into its root, which must never happen to an arbitrary folder (a typo in
    /// `--path`, the parent of the installation), even with `--from`.
    pub fn ensure_installation(&self) -> Result<()> {
        // Any entry by those names counts (a link or a special file there is refused later, by
        // the check that reads it, naming it): only their absence says "not an installation".
        // Looked up confined: a `config` that is a link is refused here, named.
        let root = Root::open(&self.root)?;
        if root.stat(VERSION_FILE)?.is_some() || root.stat(SERVER_TOML)?.is_some() {
            return Ok(());
        }
        Err(MigrateError::invalid(
            &self.root,
            format!("not a TrustformeRS Serve installation: it holds neither {VERSION_FILE} nor {SERVER_TOML}"),
            "pass --path with the installation's root (the folder holding config/server.toml); nothing was written",
        ))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Version detection when `--from` is not given: `VERSION` if present, else a top-level
    /// `model_path` key in `config/server.toml` means 0.1.0.
    pub fn detect_version(&self) -> Result<Version> {
        let version_file = self.path(VERSION_FILE);
        let root = Root::open(&self.root)?;
        if root.file_exists(VERSION_FILE)? {
            let bytes = root.read(VERSION_FILE, 4096)?;
            let text = String::from_utf8_lossy(&bytes);
            return Version::parse(text.trim()).map_err(|e| {
                MigrateError::invalid(
                    &version_file,
                    format!("`{}` is not a semver version ({e})", text.trim()),
                    "fix the file, or pass --from VERSION --force",
                )
            });
        }
        let toml_path = self.path(SERVER_TOML);
        let text = read_text(&root, SERVER_TOML).map_err(|e| MigrateError::UnknownVersion {
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
    /// `.json` are left as they are and not listed. Nothing is skipped in silence: a link, a
    /// FIFO, a socket or a device below `dir`, or a name that is not UTF-8, is an error naming
    /// it, since migrating around it would leave data behind (or follow a link out).
    pub fn data_files(&self, dir: &Path) -> Result<Vec<DataFile>> {
        let root = Root::open(&self.root)?;
        let Some(base) = rel_in(&root, dir) else {
            return Ok(Vec::new());
        };
        if !root.dir_exists(&base)? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        self.walk_data(&root, &base, "", &mut out)?;
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    fn walk_data(&self, root: &Root, base: &str, sub: &str, out: &mut Vec<DataFile>) -> Result<()> {
        let here = confine::join(base, sub);
        for (name, kind) in root.list(&here)?.unwrap_or_default() {
            let name =
                confine::utf8_name(&name).map_err(|why| special(&self.root.join(&here), why))?;
            let inside = confine::join(sub, name);
            let rel = confine::join(base, &inside);
            match kind {
                Kind::Dir if inside == QUARANTINE => {}
                Kind::Dir => self.walk_data(root, base, &inside, out)?,
                Kind::File => {
                    let kind = match Path::new(name).extension().and_then(|e| e.to_str()) {
                        Some("jsonl") => DataKind::Lines,
                        Some("json") => DataKind::Document,
                        _ => continue,
                    };
                    let size = root.stat(&rel)?.map_or(0, |f| f.size);
                    out.push(DataFile { rel, kind, size });
                }
                other => {
                    return Err(special(
                        &self.root.join(&rel),
                        format!(
                            "is {}: migrate does not read special files or follow links in data/",
                            other.describe()
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Model folders (`models/<name>/`), sorted by name. A link or special file in `models/`
    /// or in a model folder is an error naming it.
    pub fn model_dirs(&self, dir: &Path) -> Result<Vec<String>> {
        let root = Root::open(&self.root)?;
        let Some(base) = rel_in(&root, dir) else {
            return Ok(Vec::new());
        };
        let Some(entries) = root.list(&base)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for (name, kind) in entries {
            let name = confine::utf8_name(&name).map_err(|why| special(dir, why))?;
            let rel = confine::join(&base, name);
            match kind {
                Kind::Dir => {
                    // Every file of the folder is reached without following a link.
                    root.files_below(&rel)?;
                    names.push(name.to_owned());
                }
                Kind::File => {}
                other => {
                    return Err(special(
                        &self.root.join(&rel),
                        format!(
                            "is {}: migrate does not read special files or follow links in models/",
                            other.describe()
                        ),
                    ))
                }
            }
        }
        names.sort();
        Ok(names)
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

/// A special file, a link or a name that is not UTF-8 where data or models are read.
fn special(path: &Path, why: String) -> MigrateError {
    MigrateError::invalid(
        path,
        why,
        "nothing was changed; move it out of the installation (or replace a link by the real file or folder) and run the command again",
    )
}

/// `dir` relative to the (canonical) root; `None` when its parent does not exist. Its own last
/// component is not resolved: a `data` that is a link is then refused by the confined walk.
fn rel_in(root: &Root, dir: &Path) -> Option<String> {
    let parent = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.canonicalize().ok()?,
        None => std::env::current_dir().ok()?,
    };
    let dir = parent.join(dir.file_name()?);
    let rel = dir.strip_prefix(root.path()).ok()?;
    Some(
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// A small text file beneath the root, read confined and bounded.
fn read_text(root: &Root, rel: &str) -> std::result::Result<String, migrate_transaction::Error> {
    let bytes = root.read(rel, MAX_CONFIG_BYTES)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

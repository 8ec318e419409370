//! The plan: what a migration will touch and through which hops. Built once; the executor, the
//! dry run and the estimate all read the same plan, so what is shown is what is done.
//!
//! [`graph`] finds the hop path between two releases; [`preflight`] checks, before any work,
//! what can be known to fail.

pub mod graph;
pub mod preflight;

use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::discover::install::{
    DataFile, Installation, BACKUPS_DIR, DATA_DIR, MODELS_DIR, SERVER_TOML, TOOL_DIR,
};
use crate::discover::registry::HopInfo;
use crate::error::Result;
use crate::settings::{Dtype, OnInvalid};

/// What a command migrates, which names its backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Full,
    Config,
    Data,
    Model,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Full => "full",
            TargetKind::Config => "config",
            TargetKind::Data => "data",
            TargetKind::Model => "model",
        }
    }
}

/// What a command migrates. `version` takes a whole installation; `config`, `data` and
/// `models` take one part of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// Where `.migrate/` (staging) lives; every staged path is relative to it.
    pub root: PathBuf,
    pub config: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub models: Option<PathBuf>,
    /// Only a whole-installation migration moves the `VERSION` marker.
    pub write_version: bool,
    /// Names the backup.
    pub kind: TargetKind,
}

impl Target {
    pub fn installation(root: &Path) -> Target {
        Target {
            root: root.to_path_buf(),
            config: Some(root.join(SERVER_TOML)),
            data: Some(root.join(DATA_DIR)),
            models: Some(root.join(MODELS_DIR)),
            write_version: true,
            kind: TargetKind::Full,
        }
    }

    /// A single config file; its installation root is guessed from `…/config/server.toml`.
    pub fn config_file(file: &Path) -> Target {
        let dir = file.parent().unwrap_or(Path::new("."));
        Target {
            config: Some(file.to_path_buf()),
            data: None,
            models: None,
            write_version: false,
            kind: TargetKind::Config,
            root: part_root(dir),
        }
    }

    pub fn data_dir(dir: &Path) -> Target {
        Target {
            data: Some(dir.to_path_buf()),
            config: None,
            models: None,
            write_version: false,
            kind: TargetKind::Data,
            root: part_root(dir),
        }
    }

    pub fn models_dir(dir: &Path) -> Target {
        Target {
            models: Some(dir.to_path_buf()),
            config: None,
            data: None,
            write_version: false,
            kind: TargetKind::Model,
            root: part_root(dir),
        }
    }

    pub fn tool_dir(&self) -> PathBuf {
        self.root.join(TOOL_DIR)
    }

    /// `--backup-dir`, else `TRUSTFORMERS_BACKUP_DIR`, else `<root>/backups`.
    pub fn backup_dir(&self, explicit: Option<&Path>) -> PathBuf {
        explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("TRUSTFORMERS_BACKUP_DIR").map(PathBuf::from))
            .unwrap_or_else(|| self.root.join(BACKUPS_DIR))
    }

    /// `path` relative to the root, `/`-separated.
    pub fn rel(&self, path: &Path) -> String {
        Installation {
            root: self.root.clone(),
        }
        .rel(path)
    }
}

/// The installation root for a part folder (`config/`, `data/`, `models/`): its parent, so
/// that staging shares the part's filesystem and relative paths read `data/…` as usual.
fn part_root(dir: &Path) -> PathBuf {
    let abs = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    abs.parent().map(Path::to_path_buf).unwrap_or(abs)
}

/// Operator choices that shape the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub on_invalid: OnInvalid,
    /// Refused records allowed in one run before the run is refused.
    pub max_invalid_records: u64,
    pub optimize: bool,
    pub dtype: Dtype,
    pub batch_size: usize,
    /// Where the backup goes; `None`: no backup.
    pub backup_dir: Option<PathBuf>,
    /// Give up (and roll back) after this long; `None`: no limit.
    pub timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            on_invalid: OnInvalid::Fail,
            max_invalid_records: 1000,
            optimize: false,
            dtype: Dtype::F16,
            batch_size: 4096,
            backup_dir: None,
            timeout: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelItem {
    pub name: String,
    /// Relative to the target root.
    pub rel: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigItem {
    pub rel: String,
    pub size: u64,
}

/// One planned hop, for display.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedHop {
    pub plugin: String,
    pub from: String,
    pub to: String,
    pub description: String,
    pub breaking_changes: Vec<String>,
    pub file: PathBuf,
}

/// Serializable: the supervisor hands it to the worker process that stages it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub target: Target,
    pub from: Version,
    pub to: Version,
    pub hops: Vec<HopInfo>,
    pub steps: Vec<PlannedHop>,
    pub config: Option<ConfigItem>,
    /// Other `config/*.toml`, left byte-identical.
    pub untouched_configs: Vec<String>,
    pub data_files: Vec<DataFile>,
    pub models: Vec<ModelItem>,
    pub options: Options,
}

impl Plan {
    pub fn build(
        target: Target,
        from: Version,
        to: Version,
        hops: Vec<HopInfo>,
        options: Options,
    ) -> Result<Plan> {
        let install = Installation {
            root: target.root.clone(),
        };
        if let Some(p) = &target.config {
            // A config that is there but is not a regular file (a FIFO, a link) is never
            // skipped in silence.
            if let Ok(meta) = std::fs::symlink_metadata(p) {
                if !meta.is_file() {
                    return Err(crate::error::MigrateError::invalid(
                        p,
                        "is not a regular file (a symbolic link, or a special file: FIFO, socket or device): refused",
                        "nothing was changed; replace it with the real config file and run the command again",
                    ));
                }
            }
        }
        let config = target
            .config
            .as_ref()
            .filter(|p| p.is_file())
            .map(|p| ConfigItem {
                rel: target.rel(p),
                size: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            });
        let untouched_configs = match &target.config {
            Some(p) => sibling_tomls(p, &target),
            None => Vec::new(),
        };
        let data_files = match &target.data {
            Some(dir) => install
                .data_files(dir)?
                .into_iter()
                .map(|mut f| {
                    f.rel = target.rel(&install.root.join(&f.rel));
                    f
                })
                .collect(),
            None => Vec::new(),
        };
        let models = match &target.models {
            Some(dir) => install
                .model_dirs(dir)?
                .into_iter()
                .map(|name| {
                    let path = dir.join(&name);
                    ModelItem {
                        rel: target.rel(&path),
                        size: Installation::size_of(&path),
                        name,
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        let steps = hops.iter().map(planned_hop).collect();
        Ok(Plan {
            target,
            from,
            to,
            hops,
            steps,
            config,
            untouched_configs,
            data_files,
            models,
            options,
        })
    }

    pub fn data_bytes(&self) -> u64 {
        self.data_files.iter().map(|f| f.size).sum()
    }

    pub fn model_bytes(&self) -> u64 {
        self.models.iter().map(|m| m.size).sum()
    }

    /// A rough duration from the sizes and throughputs measured on a 2-core machine.
    pub fn estimate(&self) -> Duration {
        estimate(
            self.data_bytes(),
            self.model_bytes(),
            self.hops.len(),
            self.options.optimize,
        )
    }
}

pub fn planned_hop(h: &HopInfo) -> PlannedHop {
    PlannedHop {
        plugin: h.descriptor.name.clone(),
        from: h.from.to_string(),
        to: h.to.to_string(),
        description: h.descriptor.description.clone(),
        breaking_changes: h.descriptor.breaking_changes.clone(),
        file: h.path.clone(),
    }
}

/// Throughputs (bytes/s) used for estimates; conservative so that a window is not overrun.
const DATA_BYTES_PER_SEC: f64 = 40e6;
const HASH_BYTES_PER_SEC: f64 = 400e6;
const OPTIMIZE_BYTES_PER_SEC: f64 = 150e6;

pub fn estimate(data_bytes: u64, model_bytes: u64, hops: usize, optimize: bool) -> Duration {
    if hops == 0 {
        return Duration::ZERO;
    }
    let data = data_bytes as f64 / DATA_BYTES_PER_SEC;
    let mut models = model_bytes as f64 / HASH_BYTES_PER_SEC;
    if optimize {
        models += model_bytes as f64 / OPTIMIZE_BYTES_PER_SEC;
    }
    Duration::from_secs_f64(0.05 + data + models)
}

fn sibling_tomls(server: &Path, target: &Target) -> Vec<String> {
    let Some(dir) = server.parent() else {
        return Vec::new();
    };
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = read
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p != server && p.is_file())
        .map(|p| target.rel(&p))
        .collect();
    out.sort();
    out
}

//! The plan: what a migration will touch and through which hops. Built once; the executor, the
//! dry run and the estimate all read the same plan, so what is shown is what is done.
//!
//! [`graph`] finds the hop path between two releases; [`preflight`] checks, before any work,
//! what can be known to fail.

pub mod graph;
pub mod preflight;
pub mod release;

use std::path::{Path, PathBuf};
use std::time::Duration;

use migrate_transaction::confine::{self, Kind, Root};
use migrate_transaction::encrypt::Recipients;
use migrate_transaction::remote::Location;
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
        let root = absolute(root);
        Target {
            root: root.clone(),
            config: Some(root.join(SERVER_TOML)),
            data: Some(root.join(DATA_DIR)),
            models: Some(root.join(MODELS_DIR)),
            write_version: true,
            kind: TargetKind::Full,
        }
    }

    /// A single config file; its installation root is guessed from `…/config/server.toml`.
    pub fn config_file(file: &Path) -> Target {
        let file = absolute(file);
        let dir = file.parent().unwrap_or(Path::new("/"));
        Target {
            config: Some(file.clone()),
            data: None,
            models: None,
            write_version: false,
            kind: TargetKind::Config,
            root: part_root(dir),
        }
    }

    pub fn data_dir(dir: &Path) -> Target {
        let dir = &absolute(dir);
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
        let dir = &absolute(dir);
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

/// `path` made absolute against the working directory (without resolving links): every path of
/// a target is taken relative to its root, so a relative `d3/config/server.toml` beside a
/// canonical root would otherwise be joined to it a second time (`…/d3/d3/config`). Backups
/// also record the root, which must name the same folder from any working directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The installation root for a part folder (`config/`, `data/`, `models/`): its parent, so
/// that staging shares the part's filesystem and relative paths read `data/…` as usual.
/// `dir` is absolute (not canonical: the part's own path must stay below the root).
fn part_root(dir: &Path) -> PathBuf {
    dir.parent()
        .map_or_else(|| dir.to_path_buf(), Path::to_path_buf)
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
    /// Encrypt the backup to these age recipients; `None`: not encrypted.
    pub encrypt_to: Option<Recipients>,
    /// Upload every backup here before the swap.
    pub remote: Option<RemoteCopy>,
}

/// `[backup] remote` and `require_remote`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteCopy {
    pub location: Location,
    /// A failed upload refuses the migration (`true`) or is only a warning.
    pub required: bool,
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
            encrypt_to: None,
            remote: None,
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
        // Every size and existence check goes through the confined root: a link planted in
        // `config/` or `models/` is refused here, naming it, never followed. A root that does
        // not exist (a `config` target whose folder is missing) has nothing to plan.
        let root = match target.root.is_dir() {
            true => Some(Root::open(&target.root)?),
            false => None,
        };
        let config = match (&target.config, &root) {
            (Some(p), Some(root)) => config_item(root, &target, p)?,
            _ => None,
        };
        let untouched_configs = match (&target.config, &root) {
            (Some(p), Some(root)) => sibling_tomls(root, p, &target)?,
            _ => Vec::new(),
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
            Some(dir) => {
                let mut items = Vec::new();
                for name in install.model_dirs(dir)? {
                    let rel = target.rel(&dir.join(&name));
                    let size = match &root {
                        Some(root) => root.size_below(&rel)?,
                        None => 0,
                    };
                    items.push(ModelItem { rel, size, name });
                }
                items
            }
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

    /// The data folder, relative to the installation, when the run migrates data.
    pub fn data_folder(&self) -> Option<String> {
        self.target.data.as_ref().map(|d| self.target.rel(d))
    }

    /// Each model folder, relative to the installation: what the host hashes during staging
    /// and checks before the swap.
    pub fn model_folders(&self) -> Vec<String> {
        self.models.iter().map(|m| m.rel.clone()).collect()
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

/// The config file of a target, when a regular file is there; anything else by that name (a
/// link, a FIFO) is refused, named, never skipped in silence or followed.
fn config_item(root: &Root, target: &Target, path: &Path) -> Result<Option<ConfigItem>> {
    let rel = target.rel(path);
    match root.stat(&rel)? {
        None => Ok(None),
        Some(f) if f.kind == Kind::File => Ok(Some(ConfigItem { rel, size: f.size })),
        Some(f) => Err(crate::error::MigrateError::invalid(
            path,
            format!("is {}, not a regular file: refused", f.kind.describe()),
            "nothing was changed; replace it with the real config file and run the command again",
        )),
    }
}

/// The other `*.toml` of the config's folder, left byte-identical: listed confined (a link
/// there is refused, named, since "left byte-identical" could not be promised through it).
fn sibling_tomls(root: &Root, server: &Path, target: &Target) -> Result<Vec<String>> {
    let server_rel = target.rel(server);
    let dir = match server_rel.rsplit_once('/') {
        Some((dir, _)) => dir.to_owned(),
        None => String::new(),
    };
    let mut out = Vec::new();
    for (name, kind) in root.list(&dir)?.unwrap_or_default() {
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        let rel = confine::join(&dir, &name);
        if !name.ends_with(".toml") || rel == server_rel {
            continue;
        }
        match kind {
            Kind::File => out.push(rel),
            Kind::Dir => {}
            other => {
                return Err(crate::error::MigrateError::invalid(
                    root.join(&rel),
                    format!("is {}, where a config file was expected: refused (migrate never follows links in the installation)", other.describe()),
                    "nothing was changed; replace it by the real file (or move it out of the installation) and run the command again",
                ))
            }
        }
    }
    out.sort();
    Ok(out)
}

//! Where an installation stands, without changing it: the `migrate status` query (like
//! `sqlx migrate info` or `flyway info`), and the choices `migrate rollback` makes from the
//! same facts — which backup brings the installation back, and which of its files changed
//! since that backup was taken.

use std::path::{Path, PathBuf};

use migrate_transaction::audit::{self, HistoryItem};
use migrate_transaction::backup::{self, BackupMetadata};
use migrate_transaction::restore;
use semver::Version;
use serde::Serialize;

use crate::discover::install::Installation;
use crate::discover::registry::Registry;
use crate::error::{MigrateError, Result};
use crate::plan::graph::VersionGraph;

/// What `migrate status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct InstallStatus {
    pub path: PathBuf,
    /// The installation's release, as detected.
    pub version: String,
    /// The newest release the loaded plugins reach from `version` (`version` if none).
    pub latest: String,
    /// The hops a migration to `latest` would run, in order.
    pub pending: Vec<PendingHop>,
    /// The last finished migration in the audit trail.
    pub last_migration: Option<HistoryItem>,
    pub backups: Backups,
    /// How the workers that described the plugins (to find `latest` and `pending`) were
    /// confined ([`Registry::isolation`]): plugin code ran there; `None` when none ran.
    pub isolation: Option<crate::isolation::Isolation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingHop {
    pub from: String,
    pub to: String,
    pub plugin: String,
    pub file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backups {
    pub dir: PathBuf,
    pub count: usize,
    pub newest: Option<BackupSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub path: PathBuf,
    pub kind: String,
    pub source_version: String,
    pub target_version: String,
    pub created: String,
}

impl BackupSummary {
    fn new(path: &Path, m: &BackupMetadata) -> BackupSummary {
        BackupSummary {
            path: path.to_path_buf(),
            kind: m.kind.clone(),
            source_version: m.source_version.clone(),
            target_version: m.target_version.clone(),
            created: m.created.clone(),
        }
    }
}

/// The status of the installation at `root`, its backups looked for in `backup_dir`.
pub fn status(root: &Path, registry: &Registry, backup_dir: &Path) -> Result<InstallStatus> {
    let install = Installation::open(root)?;
    install.ensure_installation()?;
    registry.ensure_no_conflicts()?;
    let version = install.detect_version()?;
    let graph = VersionGraph::new(registry.active_hops());
    let latest = graph.latest(&version)?;
    let pending = graph
        .path(&version, &latest)?
        .iter()
        .map(|h| PendingHop {
            from: h.from.to_string(),
            to: h.to.to_string(),
            plugin: h.descriptor.name.clone(),
            file: h.path.clone(),
        })
        .collect();
    let mine = backups_of(root, backup_dir)?;
    Ok(InstallStatus {
        path: root.to_path_buf(),
        version: version.to_string(),
        latest: latest.to_string(),
        pending,
        last_migration: audit::history(root).pop(),
        backups: Backups {
            dir: backup_dir.to_path_buf(),
            count: mine.len(),
            newest: mine.last().map(|(p, m)| BackupSummary::new(p, m)),
        },
        isolation: registry.isolation.clone(),
    })
}

/// The readable backups in `dir` taken from the installation at `root`, oldest first. A
/// shared `TRUSTFORMERS_BACKUP_DIR` holds other installations' backups too.
fn backups_of(root: &Path, dir: &Path) -> Result<Vec<(PathBuf, BackupMetadata)>> {
    let same = same_path(root);
    Ok(backup::list(root, dir)?
        .into_iter()
        .filter_map(|(p, m)| m.ok().map(|m| (p, m)))
        .filter(|(_, m)| same_path(Path::new(&m.root)) == same)
        .collect())
}

fn same_path(p: &Path) -> PathBuf {
    p.canonicalize()
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// The backup `migrate rollback --path ROOT` uses without `--backup-path`: the newest backup of
/// `root` whose target is the installation's current release, i.e. the one taken by the
/// migration that brought it there. A pre-rollback backup is never it: it holds only the files
/// a rollback replaced, and its target is the release that rollback went back to.
pub fn backup_for_rollback(root: &Path, backup_dir: &Path) -> Result<(PathBuf, BackupMetadata)> {
    let install = Installation::open(root)?;
    install.ensure_installation()?;
    let version: Version = install.detect_version()?;
    backups_of(root, backup_dir)?
        .into_iter()
        .rev()
        .filter(|(_, m)| m.kind != restore::PRE_ROLLBACK_KIND)
        .find(|(_, m)| m.target_version == version.to_string())
        .ok_or_else(|| {
            MigrateError::invalid(
                backup_dir,
                format!(
                    "no backup of {} whose target is its current release {version}",
                    root.display()
                ),
                format!(
                    "list the backups with `migrate backups list --path {}` and pass one with --backup-path; nothing was changed",
                    root.display()
                ),
            )
        })
}

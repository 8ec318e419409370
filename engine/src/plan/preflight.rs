//! Pre-flight checks: what can be known to fail before any work is done. The path and the
//! source version are checked while planning; here: config syntax, model headers, free disk
//! space for staging and backup, and write permission where files will be replaced. Every data
//! record is checked by the staging pass itself, which parses each one before anything in the
//! installation changes — a separate pass would read the data twice.

use std::path::{Path, PathBuf};

use migrate_transaction::confine::{self, Root};
use serde::Serialize;

use super::Plan;
use crate::size::human;
use crate::verify::{Finding, RuleKind, Severity};

/// The space a migration needs, in bytes, and what the filesystem has.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceEstimate {
    pub staging_bytes: u64,
    pub backup_bytes: u64,
    /// Free on the installation's file system.
    pub available_bytes: u64,
    pub backup_available_bytes: Option<u64>,
    /// A dry run whose scratch folder is on another file system than the installation: what
    /// it needs there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<ScratchSpace>,
}

/// The space a dry run's staging needs in its scratch folder's file system.
#[derive(Debug, Clone, Serialize)]
pub struct ScratchSpace {
    /// Where the scratch folder is made (`TMPDIR`).
    pub dir: PathBuf,
    pub staging_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Preflight {
    pub findings: Vec<Finding>,
    pub space: Option<SpaceEstimate>,
}

impl Preflight {
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    fn add(
        &mut self,
        rule: &'static str,
        kind: RuleKind,
        severity: Severity,
        path: String,
        message: String,
    ) {
        self.findings.push(Finding {
            rule,
            kind,
            severity,
            path,
            message,
        });
    }
}

/// Migrated records grow (0.1.0 → 2.1.0 adds `usage`, `metrics`, `schema_version`): the
/// staged copy is assumed up to twice the original, and never smaller than it.
const DATA_GROWTH: u64 = 2;
/// zstd on JSON lines: the archive is assumed at most half the input (weights: all of it).
const BACKUP_RATIO_DIVISOR: u64 = 2;

/// Where a run stages its output, for the space check.
#[derive(Debug, Clone, Copy)]
pub enum StagingAt<'a> {
    /// The installation's own `.migrate/`: on its file system, where model files are linked.
    Installation,
    /// A dry run's scratch folder (under `TMPDIR`), often on another file system (a tmpfs, in
    /// memory): there the model files are copied, not linked, and the staging's bytes count
    /// against that file system's space, not the installation's.
    Scratch(&'a Path),
}

pub fn check(plan: &Plan, staging_at: StagingAt) -> Preflight {
    let mut p = Preflight {
        findings: Vec::new(),
        space: None,
    };
    check_config_syntax(plan, &mut p);
    check_model_headers(plan, &mut p);
    check_permissions(plan, &mut p);
    check_space(plan, staging_at, &mut p);
    p
}

fn check_config_syntax(plan: &Plan, p: &mut Preflight) {
    let Some(item) = &plan.config else { return };
    let read = migrate_transaction::confine::Root::open(&plan.target.root)
        .and_then(|root| root.read(&item.rel, crate::discover::install::MAX_CONFIG_BYTES));
    match read.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()) {
        Ok(text) => match text.parse::<toml_edit::DocumentMut>() {
            // No key at all: every hop would add its defaults around nothing and write a
            // config without [server] or [models], which no release can start with.
            Ok(doc) if doc.as_table().is_empty() => p.add(
                "config_syntax",
                RuleKind::ConfigurationSyntax,
                Severity::Error,
                item.rel.clone(),
                "holds no settings at all (empty, or only comments): it may have been truncated; restore it from your copy before migrating".to_owned(),
            ),
            Ok(_) => {}
            Err(e) => {
                let msg = format!("invalid TOML: {}", e.to_string().trim_end());
                p.add(
                    "config_syntax",
                    RuleKind::ConfigurationSyntax,
                    Severity::Error,
                    item.rel.clone(),
                    msg,
                );
            }
        },
        Err(e) => p.add(
            "config_syntax",
            RuleKind::ConfigurationSyntax,
            Severity::Error,
            item.rel.clone(),
            format!("cannot read: {e}"),
        ),
    }
}

/// The `*.safetensors` files below the model folder `rel`, relative to the root, reached
/// confined ([`Root::files_below`]: a link or special file below is refused).
fn safetensors_files(root: &Root, rel: &str) -> migrate_transaction::Result<Vec<String>> {
    Ok(root
        .files_below(rel)?
        .into_iter()
        .filter(|f| f.ends_with(".safetensors"))
        .map(|f| confine::join(rel, &f))
        .collect())
}

/// Each weight file's header, read from a descriptor opened confined: a file replaced by a
/// link (to a file outside, a FIFO) since planning is refused and named, never read.
fn check_model_headers(plan: &Plan, p: &mut Preflight) {
    if plan.models.is_empty() {
        return;
    }
    let mut refused = |rel: String, message: String| {
        p.add(
            "model_headers",
            RuleKind::ModelCompatibility,
            Severity::Error,
            rel,
            message,
        )
    };
    let root = match Root::open(&plan.target.root) {
        Ok(root) => root,
        Err(e) => return refused(plan.target.root.display().to_string(), e.to_string()),
    };
    for model in &plan.models {
        let files = match safetensors_files(&root, &model.rel) {
            Ok(files) => files,
            Err(e) => {
                refused(model.rel.clone(), e.to_string());
                continue;
            }
        };
        for rel in files {
            let header = root
                .open_read(&rel, None)
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    plugin_api::safetensors::read_header_from(file, &root.join(&rel))
                        .map_err(|e| e.message)
                });
            if let Err(message) = header {
                refused(rel, message);
            }
        }
    }
}

/// Renaming over a file needs write permission on its folder, not on the file.
fn check_permissions(plan: &Plan, p: &mut Preflight) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let root = &plan.target.root;
    let files = plan
        .config
        .iter()
        .map(|c| c.rel.clone())
        .chain(plan.data_files.iter().map(|f| f.rel.clone()));
    for rel in files {
        if let Some(parent) = root.join(rel).parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    dirs.extend(plan.models.iter().map(|m| root.join(&m.rel)));
    dirs.push(root.clone());
    if let Some(b) = &plan.options.backup_dir {
        dirs.push(existing_ancestor(b));
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if !writable(&dir) {
            let msg = "not writable by this user: files in it cannot be replaced; fix the permissions or run as the installation's owner".to_owned();
            p.add(
                "permissions",
                RuleKind::Permissions,
                Severity::Error,
                dir.display().to_string(),
                msg,
            );
        }
    }
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn check_space(plan: &Plan, staging_at: StagingAt, p: &mut Preflight) {
    // Sizes looked up confined (a link is refused by the header check above, not followed).
    let weights: u64 = match Root::open(&plan.target.root) {
        Ok(root) if plan.options.optimize => plan
            .models
            .iter()
            .flat_map(|m| safetensors_files(&root, &m.rel).unwrap_or_default())
            .filter_map(|rel| root.stat(&rel).ok().flatten())
            .map(|f| f.size)
            .sum(),
        _ => 0,
    };
    let config = plan.config.as_ref().map_or(0, |c| c.size);
    let data = plan.data_bytes();
    let staging = config + data * DATA_GROWTH + weights / 2 + 64 * 1024;
    let backup = if plan.options.backup_dir.is_some() {
        config + data / BACKUP_RATIO_DIVISOR + weights
    } else {
        0
    };
    let root = &plan.target.root;
    // What the real run needs, a dry run included: it says whether the real run would fit.
    let Ok(available) = fs4::available_space(root) else {
        return;
    };
    let backup_dir = plan.options.backup_dir.as_deref().map(existing_ancestor);
    let backup_fs = backup_dir
        .as_deref()
        .and_then(|b| fs4::available_space(b).ok());
    let same_fs = backup_dir
        .as_deref()
        .is_none_or(|b| same_filesystem(b, root));
    let mut space = SpaceEstimate {
        staging_bytes: staging,
        backup_bytes: backup,
        available_bytes: available,
        backup_available_bytes: None,
        dry_run: None,
    };
    if same_fs && backup > 0 {
        need(
            p,
            staging + backup,
            available,
            root,
            "staging and backup need",
            FREE_SOME,
        );
    } else {
        need(p, staging, available, root, "staging needs", FREE_SOME);
        if let (Some(dir), Some(free)) = (backup_dir, backup_fs) {
            need(p, backup, free, &dir, "the backup needs", FREE_SOME);
            space.backup_available_bytes = Some(free);
        }
    }
    // A dry run stages into its scratch folder instead (and takes no backup). On another file
    // system than the installation's, that space is its own, and the model rules' snapshot of
    // the model folders (`stage::snapshot`) is a copy of every model file there, not links.
    if let StagingAt::Scratch(dir) = staging_at {
        if !same_filesystem(dir, root) {
            let snapshot = plan.model_bytes();
            if let Ok(free) = fs4::available_space(dir) {
                // Named by where it is made (`TMPDIR`): the scratch folder is gone once the run
                // ends.
                let tmpdir = dir.parent().unwrap_or(dir);
                let what = "the dry run's staging needs";
                need(p, staging + snapshot, free, tmpdir, what, DRY_RUN);
                space.dry_run = Some(ScratchSpace {
                    dir: tmpdir.to_path_buf(),
                    staging_bytes: staging + snapshot,
                    available_bytes: free,
                });
            }
        }
    }
    p.space = Some(space);
}

const FREE_SOME: &str =
    "free some space, or point TRUSTFORMERS_BACKUP_DIR / --backup-dir at another filesystem";
const DRY_RUN: &str = "nothing was written; set TMPDIR to a folder with more free space (on the installation's file system the model files are linked, not copied) and run the dry run again";

fn need(p: &mut Preflight, bytes: u64, available: u64, at: &Path, what: &str, hint: &str) {
    if bytes > available {
        let msg = format!(
            "{what} about {} but only {} is free: {hint}",
            human(bytes),
            human(available)
        );
        p.add(
            "disk_space",
            RuleKind::DiskSpace,
            Severity::Error,
            at.display().to_string(),
            msg,
        );
    }
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => true,
    }
}

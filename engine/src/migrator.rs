//! The programmatic API: what the `migrate` binary uses, and what an embedding program uses.
//!
//! ```no_run
//! # async fn demo() -> Result<(), trustformers_migrate::MigrateError> {
//! use trustformers_migrate::{OverallStatus, VersionMigrator};
//! let migrator = VersionMigrator::new("0.1.0", "2.1.0")?;
//! println!("{:?}", migrator.get_migration_info()?);
//! let result = migrator.execute_full_migration(std::path::Path::new("/srv/trustformers")).await?;
//! assert_eq!(result.overall_status, OverallStatus::Completed);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use migrate_transaction::lock::InstallLock;
use migrate_transaction::{journal, recovery};
use semver::Version;
use serde::Serialize;

use crate::discover::install::Installation;
use crate::discover::registry::{Discovery, HopInfo, Registry, Status};
use crate::error::{MigrateError, Result};
use crate::isolation::Isolation;
use crate::observe::{Observer, Silent};
use crate::plan::graph::VersionGraph;
use crate::plan::{self, Options, Plan, PlannedHop, Target};
use crate::report::MigrationResult;
use crate::run::{announce, execute, refuse_if_interrupted, Mode};
use crate::worker::{WorkerLoader, WorkerSpec};

/// What `migrate info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationInfo {
    pub from: String,
    pub to: String,
    pub steps: Vec<PlannedHop>,
    pub breaking_changes: Vec<String>,
    /// With an installation: estimated from its real sizes.
    pub estimated_duration_secs: Option<f64>,
    pub data_bytes: Option<u64>,
    pub model_bytes: Option<u64>,
    /// How the workers that described the plugins were confined ([`Registry::isolation`]).
    pub isolation: Option<Isolation>,
}

/// Migrates installations from one release to another through the loaded hop plugins.
pub struct VersionMigrator {
    from: Option<Version>,
    to: Version,
    registry: Arc<Registry>,
    options: Options,
    force: bool,
    observer: Arc<dyn Observer>,
    worker: WorkerSpec,
}

impl VersionMigrator {
    /// Discovers plugins in the default folders. `from` may be `""` to detect it from the
    /// installation at execution time. Plugin code runs in worker processes started as this
    /// same program with the argument `worker`: a program that embeds the engine calls
    /// [`crate::worker::serve_if_worker`] first thing in its `main` (or sets another program
    /// with [`VersionMigrator::worker`]).
    pub fn new(from: &str, to: &str) -> Result<Self> {
        let spec = WorkerSpec::default();
        let registry = Registry::discover(&Discovery::default(), &WorkerLoader::new(spec.clone()))?;
        Ok(Self::with_registry(from, to, Arc::new(registry))?.worker(spec))
    }

    pub fn with_registry(from: &str, to: &str, registry: Arc<Registry>) -> Result<Self> {
        let from = if from.is_empty() {
            None
        } else {
            Some(parse_version(from, "--from")?)
        };
        let to = parse_version(to, "--to")?;
        Ok(VersionMigrator {
            from,
            to,
            registry,
            options: Options::default(),
            force: false,
            observer: Arc::new(Silent),
            worker: WorkerSpec::default(),
        })
    }

    /// How plugin workers are started and watched (program, sandbox, limits, cancellation).
    pub fn worker(mut self, spec: WorkerSpec) -> Self {
        self.worker = spec;
        self
    }

    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Where progress, notices and warnings go while executing (the default: nowhere).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Accept a `--from` that disagrees with the detected version.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Path, steps and breaking changes, without an installation.
    pub fn get_migration_info(&self) -> Result<MigrationInfo> {
        // A hop claimed twice is not "no path": name both files.
        self.registry.ensure_no_conflicts()?;
        let from = self.from.clone().ok_or_else(|| {
            MigrateError::usage(
                "--from is needed without --path",
                "pass --from VERSION, or --path with the installation",
            )
        })?;
        let hops = self.path(&from)?;
        Ok(self.info(&from, &hops, None))
    }

    /// Like [`Self::get_migration_info`], with the estimate from the installation's sizes.
    pub fn get_migration_info_for(&self, root: &Path) -> Result<MigrationInfo> {
        let plan = self.plan(Target::installation(root))?;
        Ok(self.info(&plan.from, &plan.hops, Some(&plan)))
    }

    /// Builds the plan for `target`: resolves the source version and the hop path.
    pub fn plan(&self, target: Target) -> Result<Plan> {
        if target.write_version {
            Installation::open(&target.root)?.ensure_installation()?;
        }
        self.registry.ensure_no_conflicts()?;
        let from = self.source_version(&target)?;
        let hops = self.path(&from)?;
        Plan::build(target, from, self.to.clone(), hops, self.options.clone())
    }

    /// Migrates the whole installation at `root` (config, data, models, `VERSION`).
    pub async fn execute_full_migration(&self, root: &Path) -> Result<MigrationResult> {
        Installation::open(root)?;
        self.execute(Target::installation(root), Mode::Commit).await
    }

    /// Runs `target` in `mode` on a blocking thread: hops are synchronous FFI calls.
    pub async fn execute(&self, target: Target, mode: Mode) -> Result<MigrationResult> {
        // Before planning, under the lock: version detection must see the installation, not
        // a half swap, and no rollback may change it between detection and migration.
        let lock = match mode {
            Mode::Commit => {
                let lock = InstallLock::acquire(&target.tool_dir())?;
                let recovered = recovery::recover_locked(&target.root, false, false)?;
                announce(&target.root, &recovered, self.observer.as_ref());
                Some(lock)
            }
            Mode::DryRun => {
                refuse_if_interrupted(&target)?;
                None
            }
        };
        let plan = self.plan(target)?;
        let observer = self.observer.clone();
        let tool_dir = plan.target.tool_dir();
        let worker = self.worker.clone();
        let described = self.registry.isolation.clone();
        tokio::task::spawn_blocking(move || {
            let mut result = execute(&plan, mode, observer.as_ref(), &worker, lock);
            // Plugin code also ran in the workers that described the plugin files: the result
            // says what held for all of them, not the staging worker's confinement alone.
            if let Some(described) = described {
                Isolation::fold(&mut result.isolation, described);
            }
            result
        })
            .await
            .map_err(|e| MigrateError::Internal {
                detail: format!("the migration thread died: {e}"),
                state: if journal::is_interrupted(&tool_dir) {
                    "the installation's journal is kept: the next migrate command (or `migrate recover`) will undo the interrupted run".into()
                } else {
                    "nothing was swapped into the installation".into()
                },
            })
    }

    fn source_version(&self, target: &Target) -> Result<Version> {
        let install = Installation {
            root: target.root.clone(),
        };
        match (&self.from, target.write_version) {
            (from, true) => install.source_version(from.as_ref(), self.force),
            (Some(from), false) => Ok(from.clone()),
            (None, false) => install.detect_version(),
        }
    }

    /// What `migrate info` shows of the path `hops` from `from`, with the plan's estimate when
    /// there is one.
    fn info(&self, from: &Version, hops: &[HopInfo], plan: Option<&Plan>) -> MigrationInfo {
        let steps: Vec<PlannedHop> = hops.iter().map(plan::planned_hop).collect();
        let breaking_changes = steps
            .iter()
            .flat_map(|s| {
                s.breaking_changes
                    .iter()
                    .map(move |c| format!("{} → {}: {c}", s.from, s.to))
            })
            .collect();
        MigrationInfo {
            from: from.to_string(),
            to: self.to.to_string(),
            steps,
            breaking_changes,
            estimated_duration_secs: plan.map(|p| p.estimate().as_secs_f64()),
            data_bytes: plan.map(Plan::data_bytes),
            model_bytes: plan.map(Plan::model_bytes),
            isolation: self.registry.isolation.clone(),
        }
    }

    fn path(&self, from: &Version) -> Result<Vec<HopInfo>> {
        VersionGraph::new(self.registry.active_hops())
            .path(from, &self.to)
            .map_err(|e| match e {
                MigrateError::NoPath {
                    from,
                    to,
                    reason,
                    hint,
                } => MigrateError::NoPath {
                    from,
                    to,
                    reason: reason + &self.unusable_plugins(),
                    hint,
                },
                other => other,
            })
    }

    /// The plugin files that were found but not used, with why: often the missing hop.
    fn unusable_plugins(&self) -> String {
        let lines: Vec<String> = self
            .registry
            .entries
            .iter()
            .filter_map(|e| match &e.status {
                Status::Invalid { reason } | Status::Refused { reason } => Some(format!(
                    "\n    {} was not loaded: {reason}",
                    e.path.display()
                )),
                _ => None,
            })
            .collect();
        if lines.is_empty() {
            String::new()
        } else {
            format!("; plugin files found but not usable:{}", lines.concat())
        }
    }
}

fn parse_version(text: &str, flag: &'static str) -> Result<Version> {
    plan::release::parse_release(text).map_err(|source| MigrateError::BadVersion {
        flag,
        text: text.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::registry::Loader;
    use crate::isolation::SandboxStatus;
    use plugin_api::HopDescriptor;

    /// Describes nothing; says its workers ran without a sandbox.
    struct Unsandboxed;

    impl Loader for Unsandboxed {
        fn describe(&self, _: &Path, _: &str) -> std::result::Result<HopDescriptor, String> {
            Err("not a plugin".into())
        }

        fn isolation(&self) -> Option<Isolation> {
            Some(Isolation {
                worker_process: true,
                sandbox: SandboxStatus::Disabled,
                landlock_abi: None,
                network_denied: false,
                sockets_denied: false,
                processes_denied: false,
                memory_limit_bytes: None,
                reason: Some("described without a sandbox".into()),
            })
        }
    }

    /// A program that embeds the engine gets, in `info` and in a migration's result, what
    /// held for the workers that described the plugin files too: plugin code ran there. (The
    /// CLI used to fold that in itself, so embedders got the staging worker's alone.)
    #[tokio::test]
    async fn results_report_the_workers_that_described_the_plugins() {
        let plugins = tempfile::tempdir().unwrap();
        let discovery = Discovery {
            plugin_dirs: vec![plugins.path().to_path_buf()],
            no_default_dirs: true,
            ..Discovery::default()
        };
        let registry = Registry::discover(&discovery, &Unsandboxed).unwrap();
        assert_eq!(registry.isolation, Unsandboxed.isolation());
        let migrator =
            VersionMigrator::with_registry("2.1.0", "2.1.0", Arc::new(registry)).unwrap();
        let sandbox = |i: &Option<Isolation>| i.as_ref().map(|i| i.sandbox);
        let info = migrator.get_migration_info().unwrap();
        assert_eq!(sandbox(&info.isolation), Some(SandboxStatus::Disabled));
        let install = tempfile::tempdir().unwrap();
        std::fs::write(install.path().join("VERSION"), "2.1.0\n").unwrap();
        let result = migrator
            .execute(Target::installation(install.path()), Mode::DryRun)
            .await
            .unwrap();
        assert_eq!(sandbox(&result.isolation), Some(SandboxStatus::Disabled));
        let reason = result.isolation.and_then(|i| i.reason).unwrap_or_default();
        assert_eq!(reason, "described without a sandbox");
    }
}

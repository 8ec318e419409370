//! One small function per command, each over the engine: the CLI's whole behaviour. Plugins are
//! discovered (and their code run) only by the commands that need them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use semver::Version;
use trustformers_migrate::discover::install::Installation;
use trustformers_migrate::discover::pins;
use trustformers_migrate::discover::registry::{Discovery, Registry};
use trustformers_migrate::isolation::Isolation;
use trustformers_migrate::metrics::{self, RunCounts, Snapshot};
use trustformers_migrate::plan::{Options, RemoteCopy, Target};
use trustformers_migrate::settings::Settings;
use trustformers_migrate::transaction::encrypt::Identities;
use trustformers_migrate::transaction::remote::{Location, Remote};
use trustformers_migrate::transaction::{audit, backup, journal, lock, recovery, restore};
use trustformers_migrate::worker::{WorkerLoader, WorkerSpec};
use trustformers_migrate::{verify, ExitCode, MigrateError, Mode, Observer, VersionMigrator};

use crate::args::{BackupsCommand, Cli, Command, GlobalArgs, ModelArgs, PluginsCommand, RunArgs};
use crate::progress::{Progress, ProgressMode};
use crate::render;

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = &cli.global;
    let json = global.json;
    let observer = Arc::new(Progress::new(if global.quiet {
        ProgressMode::None
    } else {
        global.progress
    }));
    if let Command::Worker = cli.command {
        return Ok(ExitCode::from_i32(trustformers_migrate::worker::serve()));
    }
    let settings = Settings::load(global.config_file.as_deref())?;
    let worker = worker_spec(global, &settings);
    if let Some((target, run, models)) = cli.command.migration() {
        // A dry run changes nothing, so it has no metrics to report.
        let metrics_file = run
            .metrics_file
            .clone()
            .or_else(|| settings.global.metrics_file.clone())
            .filter(|_| !run.dry_run);
        if let Some(file) = &metrics_file {
            metrics::check_destination(file)?;
        }
        let (root, started) = (target.root.clone(), Instant::now());
        let migrated = match discover(global, &worker) {
            Ok(registry) => {
                migrate(&registry, &settings, target, run, models, observer, worker).await
            }
            Err(e) => Err(e),
        };
        if let Some(file) = &metrics_file {
            // Also when it ended before a result (no plugin, no path, …): the fleet must see a
            // failed run, not the previous run's success.
            write_metrics(file, &root, started, migrated.as_ref().ok());
        }
        return show(&migrated?, run, json);
    }
    match cli.command {
        Command::Worker => unreachable!("served above"),
        Command::Version { .. }
        | Command::Config { .. }
        | Command::Data { .. }
        | Command::Models { .. } => unreachable!("migrations are handled above"),
        Command::Info { from, to, path } => {
            if let Some(p) = &path {
                trustformers_migrate::recover_if_interrupted(p, observer.as_ref())?;
            }
            info(discover(global, &worker)?, from, to, path.as_deref(), json)
        }
        Command::Validate { path, version } => {
            trustformers_migrate::recover_if_interrupted(&path, observer.as_ref())?;
            validate(&discover(global, &worker)?, &path, &version, json)
        }
        Command::Plugins { command } => plugins(&command, &discovery(global), &worker, json),
        Command::History { path } => history(&path, json),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "migrate",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::Ok)
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())?;
            Ok(ExitCode::Ok)
        }
        Command::Rollback {
            backup_path,
            path,
            force,
            identity,
        } => rollback(
            &backup_path,
            path.as_deref(),
            force,
            identity.as_deref(),
            json,
        ),
        Command::Recover { path, forward } => recover(&path, forward, json, observer.as_ref()),
        Command::Backups {
            command:
                BackupsCommand::List {
                    path,
                    backup_dir,
                    remote,
                },
        } => match (remote, path) {
            (Some(url), _) => backups_list_remote(&url, global, json),
            (None, Some(path)) => backups_list(&path, backup_dir.as_deref(), json),
            (None, None) => Err(MigrateError::usage(
                "backups list needs --path or --remote",
                "pass --path ROOT for the local backups, --remote for the remote copies",
            )
            .into()),
        },
        Command::Backups {
            command: BackupsCommand::Verify { backup, identity },
        } => backups_verify(&backup, identity.as_deref(), json),
    }
}

/// The plugin search as the global options shape it.
fn discovery(global: &GlobalArgs) -> Discovery {
    Discovery {
        plugin_dirs: global.plugin_dirs.clone(),
        no_default_dirs: global.no_default_plugins,
        preferred: global.use_plugin.clone(),
        allow_insecure: global.allow_insecure_plugins,
        ignore_locks: false,
    }
}

/// How plugin workers run: the sandbox unless `--no-sandbox`, the limits from
/// `migration_config.toml`, and SIGINT/SIGTERM turned into a request to stop them (the
/// supervisor then discards the staging and exits 130 or 143).
fn worker_spec(global: &GlobalArgs, settings: &Settings) -> WorkerSpec {
    let mut spec = WorkerSpec {
        sandbox: !global.no_sandbox,
        stall: std::time::Duration::from_secs(settings.global.stall_seconds),
        ..WorkerSpec::default()
    };
    if settings.global.max_worker_memory_mb > 0 {
        spec.memory_limit = Some(settings.global.max_worker_memory_mb << 20);
    }
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A failure leaves the default action (the process ends, the staging stays until
        // the next command removes it): worse, but not unsafe.
        let _ = signal_hook::flag::register_usize(signal, spec.cancel.clone(), signal as usize);
    }
    spec
}

/// Finds the plugins and has workers describe them: only the commands that run plugin code
/// call this. Also returns what confined those workers.
fn discover(
    global: &GlobalArgs,
    worker: &WorkerSpec,
) -> anyhow::Result<(Arc<Registry>, Option<Isolation>)> {
    let loader = WorkerLoader::new(worker.clone());
    let registry = Registry::discover(&discovery(global), &loader)?;
    Ok((Arc::new(registry), loader.isolation()))
}

fn history(root: &Path, json: bool) -> anyhow::Result<ExitCode> {
    Installation::open(root)?;
    let items = audit::history(root);
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print!("{}", render::history(root, &items));
    }
    Ok(ExitCode::Ok)
}

fn rollback(
    backup: &Path,
    root: Option<&Path>,
    force: bool,
    identity: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let keys = identity.map(Identities::from_file).transpose()?;
    let report = match backup.to_str().filter(|s| s.starts_with("s3://")) {
        Some(url) => rollback_remote(url, root, force, keys.as_ref())?,
        None => restore::restore_with(
            &restore::RestoreRequest {
                backup,
                root,
                force,
            },
            keys.as_ref(),
        )?,
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(saved) = &report.pre_rollback_backup {
        eprintln!(
            "note: {} changed after the migration; their current content was saved first into {}",
            report.saved_files.join(", "),
            saved.display()
        );
    }
    if !report.kept_files.is_empty() {
        eprintln!(
            "note: {} were created by the migration but changed since: kept as they are",
            report.kept_files.join(", ")
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "restored {} from {}: {} files put back, {} created files removed; the installation is at {} again",
            report.root.display(),
            report.backup.display(),
            report.restored_files,
            report.removed_files,
            report.version
        );
    }
    Ok(ExitCode::Ok)
}

/// `rollback --backup-path s3://…`: downloads the copy into ROOT/.migrate/downloads/, restores
/// it exactly as a local backup (verified in full first), and removes the download.
fn rollback_remote(
    url: &str,
    root: Option<&Path>,
    force: bool,
    keys: Option<&Identities>,
) -> anyhow::Result<restore::RestoreReport> {
    use trustformers_migrate::transaction::Error as T;
    let location = Location::parse(url).map_err(T::from)?;
    if location.prefix.is_empty() {
        return Err(MigrateError::usage(
            format!("{url} names a bucket, not a backup"),
            "pass s3://bucket/prefix/<backup folder name>; `migrate backups list --remote` lists them",
        )
        .into());
    }
    let hint = "nothing was changed; check AWS_ENDPOINT_URL, the bucket and the credentials, or roll back from a local backup";
    let remote = Remote::connect(&location, hint).map_err(T::from)?;
    let meta = remote.metadata().map_err(T::from)?;
    if let (Some(enc), None) = (&meta.encryption, keys) {
        return Err(T::invalid(
            url,
            format!("this backup is encrypted with age (to {})", enc.recipients.join(", ")),
            "pass --identity FILE with the age identity file of one of those recipients; nothing was changed",
        )
        .into());
    }
    let root: PathBuf = root.map_or_else(|| PathBuf::from(&meta.root), Path::to_path_buf);
    Installation::open(&root)?;
    let downloads = root
        .join(trustformers_migrate::discover::install::TOOL_DIR)
        .join("downloads");
    let local = remote
        .download(&meta, &downloads.join(location.name()))
        .map_err(T::from)?;
    let restored = restore::restore_with(
        &restore::RestoreRequest {
            backup: &local,
            root: Some(&root),
            force,
        },
        keys,
    );
    let _ = std::fs::remove_dir_all(&local);
    let _ = std::fs::remove_dir(&downloads);
    let mut report = restored?;
    report.backup = PathBuf::from(url);
    Ok(report)
}

fn recover(
    root: &Path,
    forward: bool,
    json: bool,
    observer: &dyn Observer,
) -> anyhow::Result<ExitCode> {
    Installation::open(root)?;
    let tool_dir = root.join(trustformers_migrate::discover::install::TOOL_DIR);
    let _lock = lock::InstallLock::acquire(&tool_dir)?;
    let recovered = recovery::recover_locked(root, forward, true)?;
    for w in &recovered.warnings {
        observer.warning(w);
    }
    let text = match &recovered.outcome {
        None => "nothing to recover".to_owned(),
        Some(journal::Recovery::RolledBack { from, to }) => {
            format!("rolled back the interrupted migration {from} → {to}")
        }
        Some(journal::Recovery::Finished {
            from,
            to,
            backup: Some(b),
        }) => {
            format!("finished the interrupted migration {from} → {to}, after completing its backup {b} from the kept originals")
        }
        Some(journal::Recovery::Finished { from, to, .. }) => {
            format!("finished the interrupted migration {from} → {to}")
        }
        Some(journal::Recovery::Cleaned { removed }) => {
            format!(
                "removed the staging of an interrupted migration; nothing had changed ({})",
                removed.join(", ")
            )
        }
    };
    if json {
        println!("{}", serde_json::json!({ "path": root, "outcome": text }));
    } else {
        println!("{}: {text}", root.display());
    }
    Ok(ExitCode::Ok)
}

fn backups_list(root: &Path, dir: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let dir = Target::installation(root).backup_dir(dir);
    let backups = backup::list(&dir);
    if json {
        let items: Vec<serde_json::Value> = backups
            .iter()
            .map(|(p, m)| match m {
                Ok(m) => serde_json::json!({"path": p, "kind": m.kind, "source_version": m.source_version, "target_version": m.target_version, "created": m.created, "files": m.files.len(), "encrypted": m.encryption.is_some()}),
                Err(e) => serde_json::json!({"path": p, "error": e.to_string()}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print!("{}", render::backups(&dir, &backups));
    }
    Ok(ExitCode::Ok)
}

/// `backups list --remote [s3://…]`: the copies at that location, or at `[backup] remote`.
fn backups_list_remote(url: &str, global: &GlobalArgs, json: bool) -> anyhow::Result<ExitCode> {
    use trustformers_migrate::transaction::Error as T;
    let url = match url {
        "" => Settings::load(global.config_file.as_deref())?
            .backup
            .remote
            .ok_or_else(|| {
                MigrateError::usage(
                    "no remote location to list",
                    "pass --remote s3://bucket/prefix, or set [backup] remote in migration_config.toml",
                )
            })?,
        given => given.to_owned(),
    };
    let location = Location::parse(&url).map_err(T::from)?;
    let hint = "check AWS_ENDPOINT_URL, the bucket and the credentials";
    let found = Remote::connect(&location, hint)
        .and_then(|r| r.list())
        .map_err(T::from)?;
    if json {
        let items: Vec<serde_json::Value> = found
            .iter()
            .map(|b| match &b.metadata {
                Some(m) => serde_json::json!({"url": b.url, "kind": m.kind, "source_version": m.source_version, "target_version": m.target_version, "created": m.created, "files": m.files.len(), "encrypted": m.encryption.is_some()}),
                None => serde_json::json!({"url": b.url, "error": b.problem}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print!("{}", render::remote_backups(&location.url(), &found));
    }
    Ok(ExitCode::Ok)
}

fn backups_verify(backup: &Path, identity: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let keys = identity.map(Identities::from_file).transpose()?;
    let meta = backup::verify_with(backup, keys.as_ref())?;
    if json {
        println!(
            "{}",
            serde_json::json!({"path": backup, "ok": true, "files": meta.files.len(), "encrypted": meta.encryption.is_some()})
        );
    } else {
        println!(
            "{}: ok, {} files verified ({} → {})",
            backup.display(),
            meta.files.len(),
            meta.source_version,
            meta.target_version
        );
    }
    Ok(ExitCode::Ok)
}

/// The engine's options from the config file and the command line (which wins).
fn options(
    settings: &Settings,
    target: &Target,
    run: &RunArgs,
    models: Option<&ModelArgs>,
) -> anyhow::Result<Options> {
    let backup = settings.global.backup_before_migration && !run.dry_run;
    let timeout = settings.global.timeout_seconds;
    let refused =
        |e: String| MigrateError::usage(format!("[backup]: {e}"), "fix migration_config.toml");
    Ok(Options {
        on_invalid: run
            .on_invalid
            .map_or(settings.data_migration.on_invalid, Into::into),
        optimize: models.is_some_and(|m| m.optimize) || settings.model_migration.optimize_models,
        dtype: models
            .and_then(|m| m.optimize_dtype)
            .map_or(settings.model_migration.optimize_dtype, Into::into),
        batch_size: settings.data_migration.batch_size,
        max_invalid_records: settings.data_migration.max_invalid_records,
        backup_dir: backup.then(|| target.backup_dir(run.backup_dir.as_deref())),
        timeout: (timeout > 0).then(|| std::time::Duration::from_secs(timeout)),
        encrypt_to: settings.backup.recipients().map_err(refused)?,
        remote: settings
            .backup
            .location()
            .map_err(refused)?
            .map(|location| RemoteCopy {
                location,
                required: settings.backup.require_remote,
            }),
    })
}

/// `version`, `config`, `data` and `models`: one migration over the engine, differing only in
/// the target they name.
#[allow(clippy::too_many_arguments)]
async fn migrate(
    (registry, _): &(Arc<Registry>, Option<Isolation>),
    settings: &Settings,
    mut target: Target,
    run: &RunArgs,
    models: Option<&ModelArgs>,
    observer: Arc<Progress>,
    worker: WorkerSpec,
) -> anyhow::Result<trustformers_migrate::MigrationResult> {
    check_target(&target)?;
    if !settings.config_migration.enabled {
        target.config = None;
    }
    if !settings.data_migration.enabled {
        target.data = None;
    }
    if !settings.model_migration.enabled {
        target.models = None;
    }
    let from = run
        .from
        .as_ref()
        .map(Version::to_string)
        .unwrap_or_default();
    let migrator = VersionMigrator::with_registry(&from, &run.to.to_string(), registry.clone())?
        .options(options(settings, &target, run, models)?)
        .force(run.force)
        .observer(observer)
        .worker(worker);
    let mode = if run.dry_run {
        Mode::DryRun
    } else {
        Mode::Commit
    };
    Ok(migrator.execute(target, mode).await?)
}

/// A migration's result: to `--report`, then as JSON or text; its exit code.
fn show(
    result: &trustformers_migrate::MigrationResult,
    run: &RunArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(file) = &run.report {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(file, text)
            .with_context(|| format!("cannot write the report to {}", file.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(result)?);
    } else {
        print!("{}", render::result(result));
    }
    if let Some(e) = &result.error {
        eprintln!("error: {e}");
    }
    Ok(ExitCode::from_i32(result.exit_code))
}

/// The metrics of a migration; `result` is `None` when it ended before producing one. A
/// failure to write them is a warning: it must not turn a good migration into a failed one.
fn write_metrics(
    file: &Path,
    root: &Path,
    started: Instant,
    result: Option<&trustformers_migrate::MigrationResult>,
) {
    let finished_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let snapshot = Snapshot {
        finished_unix,
        duration_secs: started.elapsed().as_secs_f64(),
        result,
        runs: RunCounts::from_audit(root),
    };
    if let Err(e) = metrics::write(file, &snapshot.render()) {
        eprintln!("warning: {e}");
    }
}

/// The folder or file a command names must exist before anything else happens.
fn check_target(target: &Target) -> anyhow::Result<()> {
    if target.write_version {
        Installation::open(&target.root)?;
        return Ok(());
    }
    let parts = [&target.config, &target.data, &target.models];
    for path in parts.into_iter().flatten() {
        if !path.exists() {
            return Err(trustformers_migrate::MigrateError::invalid(
                path,
                "does not exist",
                "check the path you passed",
            )
            .into());
        }
    }
    Ok(())
}

fn info(
    (registry, isolation): (Arc<Registry>, Option<Isolation>),
    from: Option<Version>,
    to: Version,
    path: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let from = from.map(|v| v.to_string()).unwrap_or_default();
    let migrator = VersionMigrator::with_registry(&from, &to.to_string(), registry)?;
    let mut info = match path {
        Some(p) => migrator.get_migration_info_for(p)?,
        None => migrator.get_migration_info()?,
    };
    info.isolation = isolation;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", render::info(&info));
    }
    Ok(ExitCode::Ok)
}

fn validate(
    (registry, isolation): &(Arc<Registry>, Option<Isolation>),
    path: &Path,
    version: &Version,
    json: bool,
) -> anyhow::Result<ExitCode> {
    Installation::open(path)?;
    let report = verify::validate(
        path,
        version,
        &registry.active_hops(),
        verify::Checksums::Verify,
    );
    if json {
        let mut doc = serde_json::to_value(&report)?;
        doc["isolation"] = serde_json::to_value(isolation)?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render::validation(&report));
    }
    Ok(if report.ok() {
        ExitCode::Ok
    } else {
        ExitCode::Invalid
    })
}

/// `plugins list` loads every plugin it finds (to read its descriptor); `pin` loads ignoring
/// the existing locks; `verify` loads nothing.
fn plugins(
    command: &PluginsCommand,
    discovery: &Discovery,
    worker: &WorkerSpec,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let loader = WorkerLoader::new(worker.clone());
    let (text, doc, ok) = match command {
        PluginsCommand::List => {
            let registry = Registry::discover(discovery, &loader)?;
            let isolation = loader.isolation();
            let doc = serde_json::json!({ "search_path": registry.search_path, "plugins": registry.entries, "isolation": isolation });
            (render::plugins(&registry, isolation.as_ref()), doc, true)
        }
        PluginsCommand::Pin { dirs } => {
            let pinned = pins::pin(discovery, &loader, dirs)?;
            (
                render::pinned(&pinned),
                serde_json::to_value(&pinned)?,
                true,
            )
        }
        PluginsCommand::Verify { dirs } => {
            let verified = pins::verify(discovery, dirs)?;
            let ok = verified.iter().all(pins::VerifiedFolder::ok);
            let doc = serde_json::json!({ "ok": ok, "folders": verified });
            (render::verified(&verified), doc, ok)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{text}");
    }
    Ok(if ok { ExitCode::Ok } else { ExitCode::Plugin })
}

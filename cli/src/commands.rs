//! One small function per command, each over the engine: the CLI's whole behaviour. Plugins are
//! discovered (and their code run) only by the commands that need them.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use semver::Version;
use trustformers_migrate::discover::install::Installation;
use trustformers_migrate::discover::pins;
use trustformers_migrate::discover::registry::{Discovery, Registry};
use trustformers_migrate::isolation::Isolation;
use trustformers_migrate::plan::{Options, Target};
use trustformers_migrate::settings::Settings;
use trustformers_migrate::transaction::{audit, backup, journal, lock, recovery, restore};
use trustformers_migrate::worker::{WorkerLoader, WorkerSpec};
use trustformers_migrate::{verify, ExitCode, Mode, Observer, VersionMigrator};

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
        let registry = discover(global, &worker)?;
        return migrate(
            &registry, &settings, target, run, models, json, observer, worker,
        )
        .await;
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
        } => rollback(&backup_path, path.as_deref(), force, json),
        Command::Recover { path, forward } => recover(&path, forward, json, observer.as_ref()),
        Command::Backups {
            command: BackupsCommand::List { path, backup_dir },
        } => backups_list(&path, backup_dir.as_deref(), json),
        Command::Backups {
            command: BackupsCommand::Verify { backup },
        } => backups_verify(&backup, json),
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
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = restore::restore(&restore::RestoreRequest {
        backup,
        root,
        force,
    })?;
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
                Ok(m) => serde_json::json!({"path": p, "kind": m.kind, "source_version": m.source_version, "target_version": m.target_version, "created": m.created, "files": m.files.len()}),
                Err(e) => serde_json::json!({"path": p, "error": e.to_string()}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print!("{}", render::backups(&dir, &backups));
    }
    Ok(ExitCode::Ok)
}

fn backups_verify(backup: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let meta = backup::verify(backup)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"path": backup, "ok": true, "files": meta.files.len()})
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
) -> Options {
    let backup = settings.global.backup_before_migration && !run.dry_run;
    let timeout = settings.global.timeout_seconds;
    Options {
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
    }
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
    json: bool,
    observer: Arc<Progress>,
    worker: WorkerSpec,
) -> anyhow::Result<ExitCode> {
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
        .options(options(settings, &target, run, models))
        .force(run.force)
        .observer(observer)
        .worker(worker);
    let mode = if run.dry_run {
        Mode::DryRun
    } else {
        Mode::Commit
    };
    let result = migrator.execute(target, mode).await?;
    if let Some(file) = &run.report {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(file, text)
            .with_context(|| format!("cannot write the report to {}", file.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", render::result(&result));
    }
    if let Some(e) = &result.error {
        eprintln!("error: {e}");
    }
    Ok(ExitCode::from_i32(result.exit_code))
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

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
use trustformers_migrate::metrics::{self, RunCounts, Snapshot};
use trustformers_migrate::plan::graph::VersionGraph;
use trustformers_migrate::plan::release::TargetRelease;
use trustformers_migrate::plan::{Options, RemoteCopy, Target};
use trustformers_migrate::settings::Settings;
use trustformers_migrate::transaction::encrypt::Identities;
use trustformers_migrate::transaction::remote::{Location, Remote};
use trustformers_migrate::transaction::{audit, backup, journal, lock, recovery, restore};
use trustformers_migrate::worker::{WorkerLoader, WorkerSpec};
use trustformers_migrate::{
    status, verify, ExitCode, MigrateError, Mode, Observer, VersionMigrator,
};

use crate::args::{BackupsCommand, Cli, Command, GlobalArgs, ModelArgs, PluginsCommand, RunArgs};
use crate::confirm::{cancelled, confirm, Answer};
use crate::progress::{Progress, ProgressMode};
use crate::render;

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = &cli.global;
    let json = global.json;
    check_plugin_dirs(global)?;
    let observer = Arc::new(Progress::new(if global.quiet {
        ProgressMode::None
    } else {
        global.progress
    }));
    if let Command::Worker = cli.command {
        // Served by `main` before the async runtime starts; here its threads already run,
        // and the sandbox could not bind them.
        return Err(MigrateError::usage(
            "`migrate worker` takes no other argument",
            "it is started by migrate itself to run plugin code; run another command",
        )
        .into());
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
                migrate(
                    &registry, &settings, target, run, models, global, observer, worker,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Some(file) = &metrics_file {
            // Also when it ended before a result (no plugin, no path, …): the fleet must see a
            // failed run, not the previous run's success.
            write_metrics(file, &root, started, migrated.as_ref().ok());
        }
        return show(&migrated?, run, global.json);
    }
    match cli.command {
        Command::Worker => unreachable!("served above"),
        Command::Version { .. }
        | Command::Config { .. }
        | Command::Data { .. }
        | Command::Models { .. } => unreachable!("migrations are handled above"),
        Command::Status { path, backup_dir } => {
            trustformers_migrate::recover_if_interrupted(&path, observer.as_ref())?;
            let registry = discover(global, &worker)?;
            let dir = Target::installation(&path).backup_dir(backup_dir.as_deref());
            let status = status::status(&std::path::absolute(&path)?, &registry, &dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render::status(&status));
            }
            Ok(ExitCode::Ok)
        }
        Command::Info { from, to, path } => {
            if let Some(p) = &path {
                trustformers_migrate::recover_if_interrupted(p, observer.as_ref())?;
            }
            info(discover(global, &worker)?, from, to, path.as_deref(), json)
        }
        Command::Validate { path, version } => {
            trustformers_migrate::recover_if_interrupted(&path, observer.as_ref())?;
            validate(
                &*discover(global, &worker)?,
                &path,
                &version,
                json,
                observer.as_ref(),
            )
        }
        Command::Plugins { command } => plugins(&command, global, &worker),
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
            backup_dir,
            force,
            identity,
        } => rollback(
            backup_path.as_deref(),
            path.as_deref(),
            backup_dir.as_deref(),
            force,
            identity.as_deref(),
            global,
            observer.as_ref(),
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

/// A `--plugin-dir` that does not exist is a typo, not an empty folder: saying nothing would
/// let a migration run with other plugins than the operator meant.
fn check_plugin_dirs(global: &GlobalArgs) -> Result<(), MigrateError> {
    match global.plugin_dirs.iter().find(|d| !d.is_dir()) {
        Some(dir) => Err(MigrateError::usage(
            format!("--plugin-dir {}: no such folder", dir.display()),
            "check the path (relative paths start at the current folder), or drop the option",
        )),
        None => Ok(()),
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
/// call this. What confined those workers is the registry's `isolation`. A `--use-plugin` that
/// names none of the plugins found is an error, not a silent no-op.
fn discover(global: &GlobalArgs, worker: &WorkerSpec) -> anyhow::Result<Arc<Registry>> {
    let loader = WorkerLoader::new(worker.clone());
    let registry = Registry::discover(&discovery(global), &loader)?;
    check_choices(&registry, global)?;
    Ok(Arc::new(registry))
}

fn check_choices(registry: &Registry, global: &GlobalArgs) -> Result<(), MigrateError> {
    for choice in &global.use_plugin {
        if !registry.entries.iter().any(|e| e.is_named(choice)) {
            let known: Vec<String> = registry
                .entries
                .iter()
                .map(|e| {
                    let name = e.descriptor.as_ref().map_or("-", |d| d.name.as_str());
                    format!("{name} ({})", e.path.display())
                })
                .collect();
            return Err(MigrateError::usage(
                format!(
                    "--use-plugin {choice} names none of the plugins found ({})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
                "pass a plugin's name, file name or path as `migrate plugins list` shows them",
            ));
        }
    }
    Ok(())
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

/// `migrate rollback`: the backup named, or the newest of `--path` whose target is the
/// installation's release, announced before anything is touched. Files changed since the
/// migration are replaced by the backup's versions (their current content is saved first into
/// a pre-rollback backup): asked first on a terminal.
fn rollback(
    backup_path: Option<&Path>,
    root: Option<&Path>,
    backup_dir: Option<&Path>,
    force: bool,
    identity: Option<&Path>,
    global: &GlobalArgs,
    observer: &dyn Observer,
) -> anyhow::Result<ExitCode> {
    let keys = identity.map(Identities::from_file).transpose()?;
    let remote = backup_path
        .and_then(Path::to_str)
        .filter(|s| s.starts_with("s3://"));
    if let Some(url) = remote {
        let report = rollback_remote(
            url,
            root,
            backup_dir,
            force,
            keys.as_ref(),
            global,
            observer,
        )?;
        return report_rollback(&report, global, observer);
    }
    if let (Some(backup), Some(_)) = (backup_path, backup_dir) {
        return Err(MigrateError::usage(
            format!(
                "--backup-dir is for finding a backup, and --backup-path {} already names one",
                backup.display()
            ),
            "drop --backup-dir (a local backup's changed files are saved beside it); nothing was changed",
        )
        .into());
    }
    let (backup, meta) = match (backup_path, root) {
        (Some(b), _) => (b.to_path_buf(), backup::read_metadata(b)?),
        (None, Some(root)) => {
            trustformers_migrate::recover_if_interrupted(root, observer)?;
            let dir = Target::installation(root).backup_dir(backup_dir);
            status::backup_for_rollback(&std::path::absolute(root)?, &dir)?
        }
        (None, None) => unreachable!("clap requires --backup-path or --path"),
    };
    let into = root.map_or_else(|| PathBuf::from(&meta.root), Path::to_path_buf);
    observer.notice(&format!(
        "rolling {} back from {} to {} with the backup {} (taken {})",
        into.display(),
        meta.target_version,
        meta.source_version,
        backup.display(),
        meta.created
    ));
    let what = Restoring {
        backup: &backup,
        meta: &meta,
        root,
        save_into: None,
        origin: None,
        force,
        keys: keys.as_ref(),
    };
    let report = restore_shown(&what, global, observer)?;
    report_rollback(&report, global, observer)
}

/// The question a restore asks before it replaces files that changed since the migration: on
/// a terminal only; otherwise (`--yes`, a pipe, Ansible) it goes on, and the log says what it
/// replaced.
fn ask_over_changed(
    changed: &restore::Changed,
    yes: bool,
    observer: &dyn Observer,
) -> std::io::Result<bool> {
    let mut question = format!(
        "{} file(s) changed since the migration; the rollback will replace them (their current content is saved first into a pre-rollback backup):\n  {}",
        changed.saved.len(),
        changed.saved.join("\n  ")
    );
    if !changed.kept.is_empty() {
        question.push_str(&format!(
            "\nit will keep as they are (created by the migration, changed since): {}",
            changed.kept.join(", ")
        ));
    }
    Ok(match confirm(&question, yes)? {
        Answer::No => false,
        Answer::NotAsked => {
            observer.warning(&question);
            true
        }
        Answer::Yes => true,
    })
}

/// What a rollback restores: the backup (`meta` its metadata, already read), into `root` (else
/// the backup's recorded root), saving the files changed since the migration into `save_into`
/// (else beside the backup); `keys` open an encrypted one.
#[derive(Clone, Copy)]
struct Restoring<'a> {
    backup: &'a Path,
    meta: &'a backup::BackupMetadata,
    root: Option<&'a Path>,
    save_into: Option<&'a Path>,
    /// The `s3://` URL `backup` was downloaded from, for the audit trail.
    origin: Option<&'a str>,
    force: bool,
    keys: Option<&'a Identities>,
}

/// Restores `what.backup` as a step of its own, `restore`, that progress
/// shows moving as the archived files are extracted: on a large log that takes minutes, at a
/// time the operator is least patient. The step starts with the extraction, once the checks
/// before it passed: a rollback refused before it touched anything (another release, the lock
/// held) shows no step that failed, only the error.
fn restore_shown(
    what: &Restoring,
    global: &GlobalArgs,
    observer: &dyn Observer,
) -> Result<restore::RestoreReport, trustformers_migrate::transaction::Error> {
    let Restoring {
        backup,
        meta,
        root,
        save_into,
        origin,
        force,
        keys,
    } = *what;
    let begun: std::cell::Cell<Option<Instant>> = Default::default();
    let restored = restore::restore_with(
        &restore::RestoreRequest {
            backup,
            root,
            force,
            save_into,
            origin,
            confirm: &|changed| ask_over_changed(changed, global.yes, observer),
            progress: &|extracted| {
                if begun.get().is_none() {
                    begun.set(Some(Instant::now()));
                    // Sizes from metadata.json, which may be crafted: never an overflow.
                    let total = meta
                        .files
                        .iter()
                        .map(|f| f.size)
                        .fold(0, u64::saturating_add);
                    observer.step_started("restore", total);
                }
                observer.step_progress(extracted, 0)
            },
        },
        keys,
    );
    if let Some(started) = begun.get() {
        observer.step_finished("restore", restored.is_ok(), Some(started.elapsed()));
    }
    restored
}

/// What a rollback did: its warnings and notices, then the result as JSON or text.
fn report_rollback(
    report: &restore::RestoreReport,
    global: &GlobalArgs,
    observer: &dyn Observer,
) -> anyhow::Result<ExitCode> {
    for w in &report.warnings {
        observer.warning(w);
    }
    if let Some(saved) = &report.pre_rollback_backup {
        observer.notice(&format!(
            "{} changed after the migration; their current content was saved first into {}",
            report.saved_files.join(", "),
            saved.display()
        ));
    }
    if !report.kept_files.is_empty() {
        observer.notice(&format!(
            "{} were created by the migration but changed since: kept as they are",
            report.kept_files.join(", ")
        ));
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(report)?);
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
/// it exactly as a local backup (verified in full first), and removes the download. The files
/// changed since the migration are saved into the installation's backup folder (`backup_dir`,
/// else `$TRUSTFORMERS_BACKUP_DIR` or ROOT/backups), not beside the download.
fn rollback_remote(
    url: &str,
    root: Option<&Path>,
    backup_dir: Option<&Path>,
    force: bool,
    keys: Option<&Identities>,
    global: &GlobalArgs,
    observer: &dyn Observer,
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
    // `.migrate/downloads` is reached from the installation's root without following a link
    // (`.migrate/` checked private, as the journal's is); the download is written below it.
    let tool_dir = trustformers_migrate::discover::install::TOOL_DIR;
    let install = trustformers_migrate::transaction::confine::Root::open(&root)?;
    install.private_dir(tool_dir)?;
    let held = trustformers_migrate::transaction::confine::join(tool_dir, "downloads");
    install.private_dir(&held)?;
    let downloads = install.subroot(&held)?;
    let local = remote
        .download(&meta, &downloads, location.name())
        .map_err(T::from)?;
    let save_into = Target::installation(&root).backup_dir(backup_dir);
    let what = Restoring {
        backup: &local,
        meta: &meta,
        root: Some(&root),
        save_into: Some(&save_into),
        origin: Some(url),
        force,
        keys,
    };
    let restored = restore_shown(&what, global, observer);
    // Removed through the installation's Root: no link on the way is followed, and a link
    // in place of the download is removed as a link.
    if let Ok(install) = trustformers_migrate::transaction::confine::Root::open(&root) {
        use trustformers_migrate::transaction::confine::join;
        let held = join(
            trustformers_migrate::discover::install::TOOL_DIR,
            "downloads",
        );
        let _ = install.remove_all(&join(&held, location.name()));
        let _ = install.remove_empty_dir(&held);
    }
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
    let backups = backup::list(root, &dir)?;
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
    // A dry run takes no backup (it writes nothing), but plans one as the real run would: its
    // pre-flight then checks the backup's space and folder, and says what it will need.
    let backup = settings.global.backup_before_migration;
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
    registry: &Arc<Registry>,
    settings: &Settings,
    mut target: Target,
    run: &RunArgs,
    models: Option<&ModelArgs>,
    global: &GlobalArgs,
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
    // Version detection below must see the installation, not half a swap.
    if run.dry_run {
        trustformers_migrate::run::refuse_if_interrupted(&target)?;
    } else {
        trustformers_migrate::recover_if_interrupted(&target.root, observer.as_ref())?;
    }
    registry.ensure_no_conflicts()?;
    let (source, to) = resolve_target(registry, &target, run)?;
    if run.to.is_none() {
        observer.notice(&format!(
            "no --to given: migrating to {to}, the newest release the loaded plugins reach"
        ));
    }
    if !run.dry_run {
        let backup = options(settings, &target, run, models)?.backup_dir;
        if let Some(from) = &source {
            confirm_irreversible(registry, from, &to, backup.as_deref(), global.yes)?;
        }
    }
    let from = run
        .from
        .as_ref()
        .map(Version::to_string)
        .unwrap_or_default();
    let migrator = VersionMigrator::with_registry(&from, &to.to_string(), registry.clone())?
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
        let text = serde_json::to_string_pretty(result)?;
        std::fs::write(file, text)
            .with_context(|| format!("cannot write the report to {}", file.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(result)?);
    } else {
        print!("{}", render::result(result));
    }
    if let Some(e) = &result.error {
        render::eprint_error(&e.text());
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

/// The source release as the migration will see it, and the target: `--to`, or the newest
/// release the loaded hops reach from the source (`latest`, the default). The source is
/// `None` only when `--to` is explicit and the source cannot be known yet: the migration then
/// reports why.
fn resolve_target(
    registry: &Registry,
    target: &Target,
    run: &RunArgs,
) -> Result<(Option<Version>, Version), MigrateError> {
    let install = Installation {
        root: target.root.clone(),
    };
    let source = match (&run.from, target.write_version) {
        (from, true) => install.source_version(from.as_ref(), run.force),
        (Some(from), false) => Ok(from.clone()),
        (None, false) => install.detect_version(),
    };
    match &run.to {
        Some(TargetRelease::Exact(to)) => Ok((source.ok(), to.clone())),
        None | Some(TargetRelease::Latest) => {
            let from = source?;
            let latest = VersionGraph::new(registry.active_hops()).latest(&from)?;
            Ok((Some(from), latest))
        }
    }
}

/// Hops that are irreversible (2.0.0 → 2.1.0 hashes API keys and drops the plaintext) are
/// confirmed first on a terminal. The descriptor's flag says so; a plugin built before
/// plugin-api 1.6.0 has none and is judged by its text (`HopDescriptor::is_irreversible`).
fn confirm_irreversible(
    registry: &Registry,
    from: &Version,
    to: &Version,
    backup: Option<&Path>,
    yes: bool,
) -> anyhow::Result<()> {
    let Ok(path) = VersionGraph::new(registry.active_hops()).path(from, to) else {
        return Ok(());
    };
    let irreversible: Vec<String> = path
        .iter()
        .flat_map(|h| {
            h.descriptor
                .irreversible_changes()
                .into_iter()
                .map(move |c| format!("{} → {}: {c}", h.from, h.to))
        })
        .collect();
    if irreversible.is_empty() {
        return Ok(());
    }
    let undo = match backup {
        Some(dir) => format!(
            "a backup is taken into {} first; `migrate rollback` brings the old files back from it",
            dir.display()
        ),
        None => "no backup will be taken (backup_before_migration = false): nothing can bring the old values back".to_owned(),
    };
    let question = format!(
        "This migration makes irreversible changes:\n  - {}\n{undo}.",
        irreversible.join("\n  - ")
    );
    match confirm(&question, yes)? {
        Answer::No => Err(cancelled()),
        Answer::Yes | Answer::NotAsked => Ok(()),
    }
}

/// The folder or file a command names must exist before anything else happens.
fn check_target(target: &Target) -> anyhow::Result<()> {
    if target.write_version {
        Installation::open(&target.root)?.ensure_installation()?;
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

/// `migrate info`: `--to` defaults to the newest release the plugins reach from the source
/// (`--from`, or the version detected at `--path`).
fn info(
    registry: Arc<Registry>,
    from: Option<Version>,
    to: Option<TargetRelease>,
    path: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    registry.ensure_no_conflicts()?;
    let to = match to {
        Some(TargetRelease::Exact(v)) => v,
        None | Some(TargetRelease::Latest) => {
            let source = match (&from, path) {
                (Some(f), _) => f.clone(),
                (None, Some(p)) => {
                    let install = Installation::open(p)?;
                    install.ensure_installation()?;
                    install.detect_version()?
                }
                (None, None) => {
                    return Err(MigrateError::usage(
                        "migrate info needs --from or --path",
                        "pass --from VERSION, or --path with the installation",
                    )
                    .into())
                }
            };
            VersionGraph::new(registry.active_hops()).latest(&source)?
        }
    };
    let from = from.map(|v| v.to_string()).unwrap_or_default();
    let migrator = VersionMigrator::with_registry(&from, &to.to_string(), registry)?;
    let info = match path {
        Some(p) => migrator.get_migration_info_for(p)?,
        None => migrator.get_migration_info()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", render::info(&info));
    }
    Ok(ExitCode::Ok)
}

fn validate(
    registry: &Registry,
    path: &Path,
    version: &Version,
    json: bool,
    observer: &dyn Observer,
) -> anyhow::Result<ExitCode> {
    Installation::open(path)?;
    let report = verify::validate(
        path,
        version,
        &registry.active_hops(),
        verify::Checksums::Verify,
        observer,
    );
    if json {
        let mut doc = serde_json::to_value(&report)?;
        doc["isolation"] = serde_json::to_value(&registry.isolation)?;
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
    global: &GlobalArgs,
    worker: &WorkerSpec,
) -> anyhow::Result<ExitCode> {
    let discovery = &discovery(global);
    let loader = WorkerLoader::new(worker.clone());
    let (text, doc, ok) = match command {
        PluginsCommand::List => {
            let registry = Registry::discover(discovery, &loader)?;
            check_choices(&registry, global)?;
            let doc = serde_json::json!({ "search_path": registry.search_path, "plugins": registry.entries, "isolation": registry.isolation });
            (render::plugins(&registry), doc, true)
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
            // With no plugins.lock anywhere nothing is pinned, so nothing can mismatch: that
            // is said, not failed. Once one folder is pinned, an unpinned one is a problem.
            let pinned = verified.iter().any(|f| f.lock.is_some());
            let ok = verified
                .iter()
                .all(|f| f.ok() || (!pinned && f.files.iter().all(|v| v.problem.is_none())));
            let doc = serde_json::json!({ "ok": ok, "pinned": pinned, "folders": verified });
            (render::verified(&verified, pinned), doc, ok)
        }
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{text}");
    }
    Ok(if ok { ExitCode::Ok } else { ExitCode::Plugin })
}

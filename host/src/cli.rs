//! The command line: definitions (clap) and what each command does with the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use semver::Version;

use crate::error::{ExitCode, MigrateError};
use crate::execute::Mode;
use crate::migrator::VersionMigrator;
use crate::plan::{Options, Target};
use crate::registry::{Discovery, Registry, Status};
use crate::report::MigrationResult;
use crate::settings::{Dtype, OnInvalid, Settings};

const AFTER_HELP: &str = "\
Examples:
  migrate version --path /srv/trustformers --to 2.1.0 --dry-run
  migrate version --path /srv/trustformers --to 2.1.0
  migrate info --from 0.1.0 --to 2.1.0
  migrate plugins list

Plugins are searched in: --plugin-dir (in order), $TRUSTFORMERS_PLUGIN_DIR, the folder of the
migrate executable and its plugins/ subfolder, ~/.local/share/trustformers-migrate/plugins, and
/usr/lib/trustformers-migrate/plugins. A folder listed earlier wins over a later one.

Exit codes: 0 ok, 1 failed (installation unchanged), 2 bad usage, 3 invalid input,
4 rolled back, 5 lock held, 6 plugin error, 7 no migration path / unknown version.";

/// Upgrades a TrustformeRS Serve installation — configuration, data and models — from one
/// release to another, through version-hop plugins. Nothing in the installation changes until
/// every file has been migrated into a staging area; on any error it is left as it was.
#[derive(Debug, Parser)]
#[command(name = "migrate", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Folder to load hop plugins from; repeat to add more (searched before the defaults).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Load plugins only from --plugin-dir folders.
    #[arg(long, global = true)]
    pub no_default_plugins: bool,
    /// When two plugins in one folder provide the same hop, use this one (plugin name or file).
    #[arg(long = "use-plugin", global = true, value_name = "NAME|PATH")]
    pub use_plugin: Vec<String>,
    /// migration_config.toml with your defaults [env: TRUSTFORMERS_MIGRATION_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Progress display on stderr: bars on a terminal, plain lines otherwise (auto).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "MODE"
    )]
    pub progress: crate::progress::ProgressMode,
    /// Log format on stderr (level set by RUST_LOG, default warn).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// No progress output (same as --progress none).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Load plugins even if they or their folder are writable by group/others or owned by
    /// another user (they are refused by default); each is reported with a warning.
    #[arg(long, global = true)]
    pub allow_insecure_plugins: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate a whole installation (config, data, models, VERSION).
    Version {
        /// Installation root: the folder holding config/, data/, models/.
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Migrate only a server.toml.
    Config {
        /// The config file to migrate (usually ROOT/config/server.toml).
        #[arg(long = "config", value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Migrate only the data files of a data folder.
    Data {
        /// The data folder (usually ROOT/data).
        #[arg(long, value_name = "DIR")]
        data_path: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Migrate only the model folders of a models folder.
    Models {
        /// The models folder (usually ROOT/models).
        #[arg(long, value_name = "DIR")]
        models_path: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Show the migration path, its steps, breaking changes and an estimated duration.
    Info {
        /// Source release (detected from --path when omitted).
        #[arg(long)]
        from: Option<Version>,
        #[arg(long)]
        to: Version,
        /// Estimate from this installation's real sizes.
        #[arg(long, value_name = "ROOT")]
        path: Option<PathBuf>,
    },
    /// Check an installation against a release: VERSION, config syntax, every record's
    /// schema_version, model metadata checksums.
    Validate {
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
        /// The release the installation should be.
        #[arg(long)]
        version: Version,
    },
    /// Inspect hop plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Restore a backup: verifies every checksum first, then puts back the files the migration
    /// replaced (with their modes) and removes the files it created.
    Rollback {
        /// The backup folder (holds backup.tar.zst and metadata.json).
        #[arg(long, value_name = "PATH")]
        backup_path: PathBuf,
        /// Installation to restore into (default: the one the backup was taken from).
        #[arg(long, value_name = "ROOT")]
        path: Option<PathBuf>,
    },
    /// Finish or undo a migration that was interrupted (crash, kill -9, power loss). Every
    /// other command does this first on its own, rolling back.
    Recover {
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
        /// Complete the interrupted migration instead of rolling it back.
        #[arg(long)]
        forward: bool,
    },
    /// List or verify backups.
    Backups {
        #[command(subcommand)]
        command: BackupsCommand,
    },
    /// Past migrations of an installation (from its audit trail, .migrate/audit.jsonl).
    History {
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
    },
    /// Print a shell completion script, e.g. `migrate completions bash > /etc/bash_completion.d/migrate`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `migrate man > /usr/share/man/man1/migrate.1`.
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// The backups of an installation, oldest first.
    List {
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
        /// Backup folder, if not the default ($TRUSTFORMERS_BACKUP_DIR or ROOT/backups).
        #[arg(long, value_name = "DIR")]
        backup_dir: Option<PathBuf>,
    },
    /// Check every file's checksum in a backup; writes nothing.
    Verify {
        /// The backup folder.
        #[arg(value_name = "PATH")]
        backup: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Every plugin file found: name, hop, rules, ABI, file, status.
    List,
    /// Pin the sha256 of each plugin of a folder in its plugins.lock.
    ///
    /// From then on a plugin in that folder that is not listed, or whose hash differs, is
    /// refused before it is loaded. Run it again after installing or upgrading a plugin.
    Pin {
        /// Plugin folders [default: every folder of the search path that holds plugins].
        #[arg(value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
    /// Check plugins against plugins.lock and their permissions, loading nothing; exit 6 on
    /// any problem.
    Verify {
        /// Plugin folders [default: every folder of the search path with plugins or a lock].
        #[arg(value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Source release; detected from VERSION (or a 0.1.0 server.toml) when omitted.
    #[arg(long)]
    pub from: Option<Version>,
    /// Target release.
    #[arg(long)]
    pub to: Version,
    /// Run the whole migration in a scratch folder and report; writes nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept a --from that disagrees with the detected version.
    #[arg(long)]
    pub force: bool,
    /// What to do with a record that cannot be migrated.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub on_invalid: Option<OnInvalid>,
    /// Write the result as JSON to FILE as well.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Where to put the backup [default: $TRUSTFORMERS_BACKUP_DIR, else ROOT/backups].
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Convert F32 safetensors weights to a 16-bit dtype (2.0.0 hop).
    #[arg(long)]
    pub optimize: bool,
    /// Target dtype for --optimize.
    #[arg(long, value_enum, value_name = "DTYPE")]
    pub optimize_dtype: Option<Dtype>,
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.global.config_file.as_deref())?;
    let discovery = Discovery {
        plugin_dirs: cli.global.plugin_dirs.clone(),
        no_default_dirs: cli.global.no_default_plugins,
        preferred: cli.global.use_plugin.clone(),
        allow_insecure: cli.global.allow_insecure_plugins,
        ignore_locks: false,
    };
    if let Command::Plugins { command } = &cli.command {
        if let Some(code) = plugins_lock(command, &discovery, cli.global.json)? {
            return Ok(code);
        }
    }
    let registry = Arc::new(Registry::discover(&discovery)?);
    let json = cli.global.json;
    let progress = if cli.global.quiet {
        crate::progress::ProgressMode::None
    } else {
        cli.global.progress
    };
    let out = Out { json, progress };
    match cli.command {
        Command::Version { path, run, models } => {
            migrate(
                &registry,
                &settings,
                Target::installation(&path),
                &run,
                Some(&models),
                out,
            )
            .await
        }
        Command::Config { config, run } => {
            migrate(
                &registry,
                &settings,
                Target::config_file(&config),
                &run,
                None,
                out,
            )
            .await
        }
        Command::Data { data_path, run } => {
            migrate(
                &registry,
                &settings,
                Target::data_dir(&data_path),
                &run,
                None,
                out,
            )
            .await
        }
        Command::Models {
            models_path,
            run,
            models,
        } => {
            migrate(
                &registry,
                &settings,
                Target::models_dir(&models_path),
                &run,
                Some(&models),
                out,
            )
            .await
        }
        Command::Info { from, to, path } => {
            if let Some(p) = &path {
                recover_if_interrupted(p)?;
            }
            info(registry, from, to, path.as_deref(), json)
        }
        Command::Validate { path, version } => {
            recover_if_interrupted(&path)?;
            validate(&registry, &path, &version, json)
        }
        Command::Plugins {
            command: PluginsCommand::List,
        } => plugins_list(&registry, json),
        Command::Plugins { .. } => unreachable!("pin and verify run before discovery"),
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
        Command::Rollback { backup_path, path } => rollback(&backup_path, path.as_deref(), json),
        Command::Recover { path, forward } => recover(&path, forward, json),
        Command::Backups {
            command: BackupsCommand::List { path, backup_dir },
        } => backups_list(&path, backup_dir.as_deref(), json),
        Command::Backups {
            command: BackupsCommand::Verify { backup },
        } => backups_verify(&backup, json),
    }
}

/// Every command on an installation first rolls back a migration that was interrupted.
fn recover_if_interrupted(root: &Path) -> anyhow::Result<()> {
    crate::journal::recover_if_interrupted(root)?;
    Ok(())
}

fn history(root: &Path, json: bool) -> anyhow::Result<ExitCode> {
    crate::install::Installation::open(root)?;
    let items = crate::audit::history(root);
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::Ok);
    }
    if items.is_empty() {
        println!(
            "no migrations recorded in {}",
            crate::audit::Audit::file(root).display()
        );
    }
    for h in &items {
        let backup = h.backup.as_deref().unwrap_or("no backup");
        println!(
            "{}  {} → {}  {:<10} {:>8} ms  {}@{}  {backup}",
            h.time, h.from, h.to, h.status, h.duration_ms, h.user, h.host
        );
        if let Some(e) = &h.error {
            println!("    error: {}", e.lines().next().unwrap_or(""));
        }
    }
    Ok(ExitCode::Ok)
}

fn rollback(backup: &Path, root: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let report = crate::restore::restore(backup, root)?;
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

fn recover(root: &Path, forward: bool, json: bool) -> anyhow::Result<ExitCode> {
    crate::install::Installation::open(root)?;
    let tool_dir = root.join(crate::install::TOOL_DIR);
    let _lock = crate::lock::InstallLock::acquire(&tool_dir)?;
    let outcome = crate::journal::recover(root, &tool_dir, forward)?;
    let text = match &outcome {
        None => "nothing to recover".to_owned(),
        Some(crate::journal::Recovery::RolledBack { from, to }) => {
            format!("rolled back the interrupted migration {from} → {to}")
        }
        Some(crate::journal::Recovery::Finished { from, to }) => {
            format!("finished the interrupted migration {from} → {to}")
        }
        Some(crate::journal::Recovery::Cleaned) => {
            "removed the staging of an interrupted migration; nothing had changed".to_owned()
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
    let backups = crate::backup::list(&dir);
    if json {
        let items: Vec<serde_json::Value> = backups
            .iter()
            .map(|(p, m)| match m {
                Ok(m) => serde_json::json!({"path": p, "kind": m.kind, "source_version": m.source_version, "target_version": m.target_version, "created": m.created, "files": m.files.len()}),
                Err(e) => serde_json::json!({"path": p, "error": e.to_string()}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::Ok);
    }
    if backups.is_empty() {
        println!("no backups in {}", dir.display());
    }
    for (p, m) in &backups {
        match m {
            Ok(m) => println!(
                "{}  {} {} → {}  {} files  {}",
                m.created,
                m.kind,
                m.source_version,
                m.target_version,
                m.files.len(),
                p.display()
            ),
            Err(e) => println!("{}  UNREADABLE: {e}", p.display()),
        }
    }
    Ok(ExitCode::Ok)
}

fn backups_verify(backup: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let meta = crate::backup::verify(backup)?;
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

/// How results and progress are shown.
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
    progress: crate::progress::ProgressMode,
}

fn options(
    settings: &Settings,
    target: &Target,
    run: &RunArgs,
    models: Option<&ModelArgs>,
) -> Options {
    let backup = settings.global.backup_before_migration && !run.dry_run;
    let timeout = settings.global.timeout_seconds;
    Options {
        on_invalid: run.on_invalid.unwrap_or(settings.data_migration.on_invalid),
        optimize: models.is_some_and(|m| m.optimize) || settings.model_migration.optimize_models,
        dtype: models
            .and_then(|m| m.optimize_dtype)
            .unwrap_or(settings.model_migration.optimize_dtype),
        batch_size: settings.data_migration.batch_size,
        backup_dir: backup.then(|| target.backup_dir(run.backup_dir.as_deref())),
        validate_after: settings.global.validate_after_migration,
        timeout: (timeout > 0).then(|| std::time::Duration::from_secs(timeout)),
    }
}

async fn migrate(
    registry: &Arc<Registry>,
    settings: &Settings,
    mut target: Target,
    run: &RunArgs,
    models: Option<&ModelArgs>,
    out: Out,
) -> anyhow::Result<ExitCode> {
    let json = out.json;
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
        .progress(crate::progress::Progress::new(out.progress));
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
    print_result(&result, json)?;
    if let Some(e) = &result.error {
        eprintln!("error: {e}");
    }
    Ok(ExitCode::from_i32(result.exit_code))
}

/// The folder or file a command names must exist before anything else happens.
fn check_target(target: &Target) -> Result<(), MigrateError> {
    let parts = [&target.config, &target.data, &target.models];
    if target.write_version {
        crate::install::Installation::open(&target.root)?;
        return Ok(());
    }
    for path in parts.into_iter().flatten() {
        if !path.exists() {
            return Err(MigrateError::invalid(
                path,
                "does not exist",
                "check the path you passed",
            ));
        }
    }
    Ok(())
}

fn print_result(result: &MigrationResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(result)?);
    } else {
        print!("{}", result.render());
    }
    Ok(())
}

fn info(
    registry: Arc<Registry>,
    from: Option<Version>,
    to: Version,
    path: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let from = from.map(|v| v.to_string()).unwrap_or_default();
    let migrator = VersionMigrator::with_registry(&from, &to.to_string(), registry)?;
    let info = match path {
        Some(p) => migrator.get_migration_info_for(p)?,
        None => migrator.get_migration_info()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::Ok);
    }
    println!(
        "migration path {} → {} ({} hops)",
        info.from,
        info.to,
        info.steps.len()
    );
    for (i, s) in info.steps.iter().enumerate() {
        println!(
            "  {}. {} → {}  [{}] {}",
            i + 1,
            s.from,
            s.to,
            s.plugin,
            s.description
        );
    }
    if !info.breaking_changes.is_empty() {
        println!("breaking changes:");
        for c in &info.breaking_changes {
            println!("  - {c}");
        }
    }
    match (info.estimated_duration_secs, info.data_bytes, info.model_bytes) {
        (Some(secs), Some(d), Some(m)) => println!("estimated duration: {secs:.1} s ({d} bytes of data, {m} bytes of models)"),
        _ => println!("estimated duration: about 25 s per GB of data and 3 s per GB of models (pass --path for this installation's sizes)"),
    }
    Ok(ExitCode::Ok)
}

fn validate(
    registry: &Registry,
    path: &Path,
    version: &Version,
    json: bool,
) -> anyhow::Result<ExitCode> {
    crate::install::Installation::open(path)?;
    let report = crate::validate::validate(
        path,
        version,
        &registry.active_hops(),
        crate::validate::Checksums::Verify,
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verdict = if report.ok() { "valid" } else { "INVALID" };
        println!(
            "{} as {}: {verdict} ({} files, {} records checked)",
            report.path, report.version, report.files_checked, report.records_checked
        );
        for f in &report.findings {
            println!(
                "  {:?} [{:?}/{}] {}: {}",
                f.severity, f.kind, f.rule, f.path, f.message
            );
        }
    }
    Ok(if report.ok() {
        ExitCode::Ok
    } else {
        ExitCode::Invalid
    })
}

/// `plugins pin` and `plugins verify`, which must run before (and instead of) the discovery
/// every other command makes: verify loads nothing, pin loads ignoring the existing locks.
fn plugins_lock(
    command: &PluginsCommand,
    discovery: &Discovery,
    json: bool,
) -> anyhow::Result<Option<ExitCode>> {
    use crate::pins;
    let (text, doc, ok) = match command {
        PluginsCommand::List => return Ok(None),
        PluginsCommand::Pin { dirs } => {
            let pinned = pins::pin(discovery, dirs)?;
            (
                pins::render_pinned(&pinned),
                serde_json::to_value(&pinned)?,
                true,
            )
        }
        PluginsCommand::Verify { dirs } => {
            let verified = pins::verify(discovery, dirs)?;
            let ok = verified.iter().all(pins::VerifiedFolder::ok);
            let doc = serde_json::json!({ "ok": ok, "folders": verified });
            (pins::render_verified(&verified), doc, ok)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{text}");
    }
    Ok(Some(if ok { ExitCode::Ok } else { ExitCode::Plugin }))
}

fn plugins_list(registry: &Registry, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let doc =
            serde_json::json!({ "search_path": registry.search_path, "plugins": registry.entries });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::Ok);
    }
    println!(
        "search path: {}",
        registry
            .search_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    );
    if registry.entries.is_empty() {
        println!("no plugin files found");
    }
    for e in &registry.entries {
        let (name, hop, rules, abi) = match &e.descriptor {
            Some(d) => {
                let r = [
                    ("config", d.rules.config),
                    ("data", d.rules.data),
                    ("model", d.rules.model),
                ]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(",");
                (
                    d.name.clone(),
                    format!("{} → {}", d.from, d.to),
                    r,
                    d.api_version.clone(),
                )
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let status = match &e.status {
            Status::Active => "active".to_owned(),
            Status::Shadowed { by } => format!("shadowed by {}", by.display()),
            Status::Conflict { with } => format!("CONFLICT with {}", with.display()),
            Status::Invalid { reason } => format!("INVALID: {reason}"),
            Status::Refused { reason } => format!("REFUSED: {reason}"),
        };
        let status = if e.warnings.is_empty() {
            status
        } else {
            format!(
                "{status}; INSECURE, loaded because of --allow-insecure-plugins: {}",
                e.warnings.join("; ")
            )
        };
        println!(
            "{name:<14} {hop:<18} rules={rules:<18} abi={abi:<7} {}  [{status}]",
            e.path.display()
        );
    }
    Ok(ExitCode::Ok)
}

//! The command line's definitions (clap), and nothing else: what each command does is in
//! `commands`, how results look in `render`. The engine never sees these types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use semver::Version;
use trustformers_migrate::plan::Target;
use trustformers_migrate::settings::{Dtype, OnInvalid};

use crate::progress::ProgressMode;

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
4 rolled back, 5 lock held, 6 plugin error, 7 no migration path / unknown version,
8 interrupted (the next migrate command or `migrate recover` finishes or undoes it),
9 internal error (a bug in migrate).";

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
    pub progress: ProgressMode,
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
    /// Run plugin workers without the Landlock sandbox (for debugging a plugin; every output
    /// says the run was unsandboxed). Plugins still run in a separate worker process.
    #[arg(long, global = true)]
    pub no_sandbox: bool,
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
        /// Installation to restore into (default: the one the backup was taken from, when the
        /// backup lies under it).
        #[arg(long, value_name = "ROOT")]
        path: Option<PathBuf>,
        /// Restore even though the installation's VERSION is not the backup's target version.
        #[arg(long)]
        force: bool,
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
    /// Internal: serve one request as a sandboxed plugin worker over stdin/stdout. Started by
    /// migrate itself; never run by hand.
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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
    pub on_invalid: Option<OnInvalidArg>,
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
    pub optimize_dtype: Option<DtypeArg>,
}

/// `--on-invalid`: the engine's [`OnInvalid`], spelled for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnInvalidArg {
    /// Stop; nothing is changed.
    Fail,
    /// Copy the record to data/.quarantine/ and go on.
    Quarantine,
}

impl From<OnInvalidArg> for OnInvalid {
    fn from(a: OnInvalidArg) -> Self {
        match a {
            OnInvalidArg::Fail => OnInvalid::Fail,
            OnInvalidArg::Quarantine => OnInvalid::Quarantine,
        }
    }
}

/// `--optimize-dtype`: the engine's [`Dtype`], spelled for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F16,
    Bf16,
}

impl From<DtypeArg> for Dtype {
    fn from(a: DtypeArg) -> Self {
        match a {
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::Bf16,
        }
    }
}

impl Command {
    /// For the four migration commands: what they migrate, and their options. One place
    /// maps each command to its target, so the commands share one code path.
    pub fn migration(&self) -> Option<(Target, &RunArgs, Option<&ModelArgs>)> {
        match self {
            Command::Version { path, run, models } => {
                Some((Target::installation(path), run, Some(models)))
            }
            Command::Config { config, run } => Some((Target::config_file(config), run, None)),
            Command::Data { data_path, run } => Some((Target::data_dir(data_path), run, None)),
            Command::Models {
                models_path,
                run,
                models,
            } => Some((Target::models_dir(models_path), run, Some(models))),
            _ => None,
        }
    }
}

//! The command line's definitions (clap), and nothing else: what each command does is in
//! `commands`, how results look in `render`. The engine never sees these types.
//!
//! The doc comments here are `--help` text, written for operators, not rustdoc: `[backup]` is a
//! TOML table, `<backup folder name>` a placeholder. rustdoc would read them as links and tags.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use semver::Version;
use trustformers_migrate::plan::release::{parse_release, parse_target, TargetRelease};
use trustformers_migrate::plan::Target;
use trustformers_migrate::settings::{Dtype, OnInvalid};

use crate::progress::ProgressMode;

const AFTER_HELP: &str = "\
Examples:
  migrate status --path /srv/trustformers
  migrate version --path /srv/trustformers --dry-run
  migrate version --path /srv/trustformers
  migrate info --from 0.1.0 --to 2.1.0
  migrate rollback --path /srv/trustformers
  migrate plugins list

Plugins are searched in: --plugin-dir (in order), $TRUSTFORMERS_PLUGIN_DIR, the folder of the
migrate executable and its plugins/ subfolder, ~/.local/share/trustformers-migrate/plugins, and
/usr/lib/trustformers-migrate/plugins. A folder listed earlier wins over a later one.

Exit codes: 0 ok, 1 failed or cancelled (installation unchanged), 2 bad usage, 3 invalid input
(or not an installation), 4 rolled back, 5 lock held, 6 plugin error, 7 no migration path,
unknown version, or a --from that disagrees with the installation, 8 interrupted (the next
migrate command or `migrate recover` finishes or undoes it), 9 internal error (a bug in migrate).";

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

/// Options every command takes, shown under their own heading in each command's help.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Folder to load hop plugins from; repeat to add more (searched before the defaults).
    /// A folder that does not exist is an error.
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Load plugins only from --plugin-dir folders.
    #[arg(long, global = true)]
    pub no_default_plugins: bool,
    /// When two plugins in one folder provide the same hop, use this one: its name (as
    /// `plugins list` shows it), its file name, or its path. One that matches no plugin is
    /// an error.
    #[arg(long = "use-plugin", global = true, value_name = "NAME|FILE|PATH")]
    pub use_plugin: Vec<String>,
    /// migration_config.toml with your defaults [env: TRUSTFORMERS_MIGRATION_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Print results as JSON on stdout; a failure prints
    /// {"error": {"exit_code", "message", "next_step", "file"}}.
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
    /// Log format on stderr (level from -v, or RUST_LOG, which wins; default warn).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG wins).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Colour on stderr: auto uses it only on a terminal and never when NO_COLOR is set.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "WHEN"
    )]
    pub color: ColorWhen,
    /// No progress output (same as --progress none).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Answer yes to the confirmations before irreversible steps (hashing API keys, a rollback
    /// over files changed since the migration). Without a terminal on stdin nothing is asked.
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,
    /// Load plugins even if they or their folder are writable by group/others or owned by
    /// another user (they are refused by default); each is reported with a warning.
    #[arg(long, global = true)]
    pub allow_insecure_plugins: bool,
    /// Run plugin workers without the sandbox, Landlock and the seccomp filter alike (for
    /// debugging a plugin; every output says the run was unsandboxed). Plugins still run in a
    /// separate worker process, under its memory limit.
    #[arg(long, global = true)]
    pub no_sandbox: bool,
}

/// `--color`: when stderr gets ANSI colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    Always,
    Never,
}

/// `--from`, `--version`: a release number; `2.1` means `2.1.0`.
fn release(text: &str) -> Result<Version, String> {
    parse_release(text)
        .map_err(|_| "not a release number: write it like 2.1.0 (2.1 means 2.1.0)".to_owned())
}

/// `--to`: a release number or `latest`.
fn target_release(text: &str) -> Result<TargetRelease, String> {
    parse_target(text).map_err(|_| {
        "not a release number: write it like 2.1.0 (2.1 means 2.1.0), or latest".to_owned()
    })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Where an installation stands: its version, the latest release the plugins reach, the
    /// pending hops, the last migration and its backups. Changes nothing.
    #[command(after_help = "\
Examples:
  migrate status --path /srv/trustformers
  migrate status --path /srv/trustformers --json
  migrate status --path /srv/trustformers --plugin-dir /opt/hops")]
    Status {
        /// Installation root: the folder holding config/, data/, models/.
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
        /// Backup folder, if not the default ($TRUSTFORMERS_BACKUP_DIR or ROOT/backups).
        #[arg(long, value_name = "DIR")]
        backup_dir: Option<PathBuf>,
    },
    /// Migrate a whole installation (config, data, models, VERSION).
    #[command(after_help = "\
Examples:
  migrate version --path /srv/trustformers --dry-run
  migrate version --path /srv/trustformers
  migrate version --path /srv/trustformers --to 2.0
  migrate version --path /srv/trustformers --to 2.1.0 --optimize --optimize-dtype bf16
  migrate version --path /srv/trustformers --on-invalid quarantine --report report.json
  migrate --json --quiet version --path /srv/trustformers --yes")]
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
    #[command(after_help = "\
Examples:
  migrate config --config /srv/trustformers/config/server.toml --to 1.0.0
  migrate config --config config/server.toml --from 1.0.0 --to 2.0.0 --dry-run")]
    Config {
        /// The config file to migrate (usually ROOT/config/server.toml).
        #[arg(long = "config", value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Migrate only the data files of a data folder.
    #[command(after_help = "\
Examples:
  migrate data --data-path /srv/trustformers/data --from 0.1.0 --to 1.0.0
  migrate data --data-path data --from 0.1.0 --on-invalid quarantine")]
    Data {
        /// The data folder (usually ROOT/data).
        #[arg(long, value_name = "DIR")]
        data_path: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Migrate only the model folders of a models folder.
    #[command(after_help = "\
Examples:
  migrate models --models-path /srv/trustformers/models --from 1.0.0 --to 2.0.0
  migrate models --models-path models --from 1.0.0 --to 2.0.0 --optimize")]
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
    #[command(after_help = "\
Examples:
  migrate info --from 0.1.0 --to 2.1.0
  migrate info --from 1.0
  migrate info --path /srv/trustformers --json")]
    Info {
        /// Source release (detected from --path when omitted).
        #[arg(long, value_parser = release, value_name = "VERSION")]
        from: Option<Version>,
        /// Target release: 2.1.0, 2.1 (= 2.1.0) or latest [default: latest, the newest
        /// release the loaded plugins reach].
        #[arg(long, value_parser = target_release, value_name = "VERSION")]
        to: Option<TargetRelease>,
        /// Estimate from this installation's real sizes (and detect --from from it).
        #[arg(long, value_name = "ROOT")]
        path: Option<PathBuf>,
    },
    /// Check an installation against a release: VERSION, config syntax, every record's
    /// schema_version, model metadata checksums.
    #[command(after_help = "\
Examples:
  migrate validate --path /srv/trustformers --version 2.1.0
  migrate validate --path /srv/trustformers --version 2.1 --json")]
    Validate {
        /// Installation root to check.
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
        /// The release the installation should be.
        #[arg(long, value_parser = release, value_name = "VERSION")]
        version: Version,
    },
    /// Inspect hop plugins.
    #[command(after_help = "\
Examples:
  migrate plugins list
  migrate plugins list --json
  migrate plugins pin /usr/lib/trustformers-migrate/plugins
  migrate plugins verify")]
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Restore a backup: verifies every checksum first, then puts back the files the migration
    /// replaced (with their modes) and removes the files it created. With --path alone it uses
    /// the newest backup of that installation whose target is its current release.
    #[command(after_help = "\
Examples:
  migrate rollback --path /srv/trustformers
  migrate rollback --backup-path /srv/trustformers/backups/full_backup_1795517413
  migrate rollback --path /srv/trustformers --backup-dir /mnt/backups --yes")]
    Rollback {
        /// The backup folder (holds backup.tar.zst or backup.tar.zst.age, and metadata.json),
        /// or a remote copy: s3://bucket/prefix/<backup folder name> (downloaded into
        /// ROOT/.migrate/ and verified in full first) [default: the newest backup of --path
        /// whose target is its current release].
        #[arg(long, value_name = "PATH", required_unless_present = "path")]
        backup_path: Option<PathBuf>,
        /// Installation to restore into (default: the one the backup was taken from, when the
        /// backup lies under it).
        #[arg(long, value_name = "ROOT")]
        path: Option<PathBuf>,
        /// Where to look for backups without --backup-path; with an s3:// --backup-path,
        /// where the files changed since the migration are saved before they are replaced
        /// ($TRUSTFORMERS_BACKUP_DIR or ROOT/backups by default).
        #[arg(long, value_name = "DIR")]
        backup_dir: Option<PathBuf>,
        /// Restore even though the installation's VERSION is not the backup's target version.
        #[arg(long)]
        force: bool,
        /// age identity file (from age-keygen) that opens an encrypted backup.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Finish or undo a migration that was interrupted (crash, kill -9, power loss). Every
    /// other command does this first on its own, rolling back.
    #[command(after_help = "\
Examples:
  migrate recover --path /srv/trustformers
  migrate recover --path /srv/trustformers --forward")]
    Recover {
        /// Installation root holding the interrupted migration (its .migrate/journal.json).
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
        /// Complete the interrupted migration instead of rolling it back.
        #[arg(long)]
        forward: bool,
    },
    /// List or verify backups.
    #[command(after_help = "\
Examples:
  migrate backups list --path /srv/trustformers
  migrate backups verify /srv/trustformers/backups/full_backup_1795517413")]
    Backups {
        #[command(subcommand)]
        command: BackupsCommand,
    },
    /// Past migrations of an installation (from its audit trail, .migrate/audit.jsonl).
    #[command(after_help = "\
Examples:
  migrate history --path /srv/trustformers
  migrate history --path /srv/trustformers --json")]
    History {
        /// Installation root whose audit trail to read.
        #[arg(long, value_name = "ROOT")]
        path: PathBuf,
    },
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  migrate completions bash > /etc/bash_completion.d/migrate
  migrate completions zsh > ~/.zfunc/_migrate")]
    Completions {
        /// The shell to write the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(after_help = "\
Examples:
  migrate man > /usr/share/man/man1/migrate.1")]
    Man,
    /// Internal: serve one request as a sandboxed plugin worker over stdin/stdout. Started by
    /// migrate itself; never run by hand.
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// The backups of an installation, oldest first.
    #[command(after_help = "\
Examples:
  migrate backups list --path /srv/trustformers
  migrate backups list --path /srv/trustformers --backup-dir /mnt/backups --json")]
    List {
        /// Installation root whose backups to list.
        #[arg(long, value_name = "ROOT", required_unless_present = "remote")]
        path: Option<PathBuf>,
        /// Backup folder, if not the default ($TRUSTFORMERS_BACKUP_DIR or ROOT/backups).
        #[arg(long, value_name = "DIR")]
        backup_dir: Option<PathBuf>,
        /// List the remote copies instead: at s3://bucket/prefix, or at [backup] remote of
        /// migration_config.toml when no location is given.
        #[arg(long, value_name = "S3_URL", num_args = 0..=1, default_missing_value = "")]
        remote: Option<String>,
    },
    /// Check every file's checksum in a backup; writes nothing.
    #[command(after_help = "\
Examples:
  migrate backups verify /srv/trustformers/backups/full_backup_1795517413")]
    Verify {
        /// The backup folder.
        #[arg(value_name = "PATH")]
        backup: PathBuf,
        /// age identity file (from age-keygen) that opens an encrypted backup.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Every plugin file found: name, hop, rules, ABI, file, status.
    #[command(after_help = "\
Examples:
  migrate plugins list
  migrate plugins list --plugin-dir /opt/hops --json")]
    List,
    /// Pin the sha256 of each plugin of a folder in its plugins.lock.
    ///
    /// From then on a plugin in that folder that is not listed, or whose hash differs, is
    /// refused before it is loaded. Run it again after installing or upgrading a plugin.
    #[command(after_help = "\
Examples:
  migrate plugins pin
  migrate plugins pin /usr/lib/trustformers-migrate/plugins")]
    Pin {
        /// Plugin folders [default: every folder of the search path that holds plugins].
        #[arg(value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
    /// Check plugins against plugins.lock and their permissions, loading nothing; exit 6 on
    /// any problem. A search path without any plugins.lock has nothing pinned: that is said,
    /// and is not a failure.
    #[command(after_help = "\
Examples:
  migrate plugins verify
  migrate plugins verify /usr/lib/trustformers-migrate/plugins --json")]
    Verify {
        /// Plugin folders [default: every folder of the search path with plugins or a lock].
        #[arg(value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Source release; detected from VERSION (or a 0.1.0 server.toml) when omitted.
    #[arg(long, value_parser = release, value_name = "VERSION")]
    pub from: Option<Version>,
    /// Target release: 2.1.0, 2.1 (= 2.1.0) or latest [default: latest, the newest release
    /// the loaded plugins reach from the source].
    #[arg(long, value_parser = target_release, value_name = "VERSION")]
    pub to: Option<TargetRelease>,
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
    /// Write Prometheus metrics of the run here (node_exporter textfile format, e.g.
    /// /var/lib/node_exporter/textfile/migrate.prom) [default: [global] metrics_file].
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
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
    /// IEEE half precision.
    F16,
    /// bfloat16: the range of f32, less precision.
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command and subcommand, with its path of names (`["backups", "list"]`).
    fn commands() -> Vec<(Vec<String>, clap::Command)> {
        fn walk(
            prefix: &[String],
            cmd: &clap::Command,
            out: &mut Vec<(Vec<String>, clap::Command)>,
        ) {
            // clap's own `help` subcommand is not ours to document, nor is the hidden
            // `worker` that migrate starts itself.
            for sub in cmd
                .get_subcommands()
                .filter(|s| s.get_name() != "help" && !s.is_hide_set())
            {
                let mut path = prefix.to_vec();
                path.push(sub.get_name().to_owned());
                out.push((path.clone(), sub.clone()));
                walk(&path, sub, out);
            }
        }
        let mut out = Vec::new();
        let mut root = Cli::command();
        root.build();
        walk(&[], &root, &mut out);
        out
    }

    #[test]
    fn every_command_ends_its_help_with_examples_that_parse() {
        let mut checked = 0;
        for (path, cmd) in commands() {
            let after = cmd
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                after.starts_with("Examples:\n"),
                "`migrate {}` has no Examples section",
                path.join(" ")
            );
            let examples: Vec<&str> = after
                .lines()
                .filter_map(|l| l.trim().strip_prefix("migrate "))
                .collect();
            assert!(!examples.is_empty(), "`migrate {}`", path.join(" "));
            for example in examples {
                // A redirection is the shell's, not migrate's.
                let line = example.split(" > ").next().unwrap_or(example);
                let words = std::iter::once("migrate").chain(line.split_whitespace());
                let parsed = Cli::command().try_get_matches_from(words);
                assert!(
                    parsed.is_ok(),
                    "example `migrate {example}` of `migrate {}` does not parse: {}",
                    path.join(" "),
                    parsed.unwrap_err()
                );
                let used = line.split_whitespace().collect::<Vec<_>>();
                assert!(
                    used.windows(path.len()).any(|w| w == path.as_slice()),
                    "example `migrate {example}` of `migrate {}` runs another command",
                    path.join(" ")
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "only {checked} examples");
    }

    #[test]
    fn no_option_is_left_without_a_description() {
        for (path, cmd) in commands() {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "`migrate {}`: {id} has no description",
                    path.join(" ")
                );
                for value in arg.get_possible_values() {
                    if value.is_hide_set() {
                        continue;
                    }
                    let documented = value.get_help().is_some()
                        || [
                            "auto",
                            "always",
                            "never",
                            "bash",
                            "elvish",
                            "fish",
                            "powershell",
                            "zsh",
                            "fail",
                            "quarantine",
                        ]
                        .contains(&value.get_name());
                    assert!(
                        documented,
                        "`migrate {}`: {id}={} has no description",
                        path.join(" "),
                        value.get_name()
                    );
                }
            }
        }
    }

    #[test]
    fn global_options_are_listed_apart() {
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd
            .find_subcommand_mut("version")
            .expect("version")
            .render_help()
            .to_string();
        let global = help.find("Global options:").expect(&help);
        let own = help.find("--path").expect(&help);
        let plugin_dir = help.find("--plugin-dir").expect(&help);
        assert!(own < global && global < plugin_dir, "{help}");
    }
}

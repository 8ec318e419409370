//! `migration_config.toml`: the operator's defaults. Unknown keys are an error, not ignored: a
//! misspelt `rollback_on_failure` must not silently turn a safety off.

use std::path::{Path, PathBuf};

use migrate_transaction::encrypt::Recipients;
use migrate_transaction::remote::Location;
use serde::Deserialize;

use crate::error::{MigrateError, Result};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub global: Global,
    pub config_migration: ConfigMigration,
    pub data_migration: DataMigration,
    pub model_migration: ModelMigration,
    pub backup: Backup,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Global {
    pub backup_before_migration: bool,
    /// Accepted for older configs. The staged output is always verified before the swap now
    /// (a trust boundary cannot be switched off), so it changes nothing.
    pub validate_after_migration: bool,
    pub rollback_on_failure: bool,
    /// Wall-clock limit of the whole run, enforced by stopping the plugin worker; 0 = none.
    pub timeout_seconds: u64,
    /// A plugin worker that reports no progress for this long is stopped.
    pub stall_seconds: u64,
    /// Memory limit of a plugin worker; 0 = half of this machine's memory.
    pub max_worker_memory_mb: u64,
    /// Write Prometheus metrics (node_exporter textfile format) here after each migration.
    pub metrics_file: Option<PathBuf>,
}

/// `[backup]`: where backups go beyond the box, and who can read them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Backup {
    /// age recipients (`age1…` public keys); empty: the archive is not encrypted.
    pub encrypt_to: Vec<String>,
    /// `s3://bucket/prefix`: every backup is uploaded there before the swap.
    pub remote: Option<String>,
    /// A failed or unverified upload refuses the migration (`true`) or is a warning.
    pub require_remote: bool,
}

impl Default for Backup {
    fn default() -> Self {
        Backup {
            encrypt_to: Vec::new(),
            remote: None,
            require_remote: true,
        }
    }
}

impl Backup {
    /// The parsed recipients, `None` when the backup is not encrypted.
    pub fn recipients(&self) -> std::result::Result<Option<Recipients>, String> {
        if self.encrypt_to.is_empty() {
            return Ok(None);
        }
        Recipients::parse(&self.encrypt_to).map(Some)
    }

    /// The parsed remote location, if any.
    pub fn location(&self) -> std::result::Result<Option<Location>, String> {
        self.remote
            .as_deref()
            .map(|u| Location::parse(u).map_err(|e| e.to_string()))
            .transpose()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigMigration {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataMigration {
    pub enabled: bool,
    /// Records per batch handed to a plugin.
    pub batch_size: usize,
    /// `fail` (default) or `quarantine`.
    pub on_invalid: OnInvalid,
    /// Past this many refused records in one run, the run is refused: that many invalid
    /// records more likely means a wrong `--from` than bad data.
    pub max_invalid_records: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelMigration {
    pub enabled: bool,
    pub optimize_models: bool,
    /// `f16` or `bf16`.
    pub optimize_dtype: Dtype,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Stop; nothing is changed.
    #[default]
    Fail,
    /// Copy the record to data/.quarantine/ and go on.
    Quarantine,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F16,
    Bf16,
}

impl Default for Global {
    fn default() -> Self {
        Global {
            backup_before_migration: true,
            validate_after_migration: true,
            rollback_on_failure: true,
            timeout_seconds: 0,
            stall_seconds: 300,
            max_worker_memory_mb: 0,
            metrics_file: None,
        }
    }
}

impl Default for ConfigMigration {
    fn default() -> Self {
        ConfigMigration { enabled: true }
    }
}

impl Default for DataMigration {
    fn default() -> Self {
        DataMigration {
            enabled: true,
            batch_size: 4096,
            on_invalid: OnInvalid::Fail,
            max_invalid_records: 1000,
        }
    }
}

impl Default for ModelMigration {
    fn default() -> Self {
        ModelMigration {
            enabled: true,
            optimize_models: false,
            optimize_dtype: Dtype::F16,
        }
    }
}

impl Settings {
    /// `--config-file`, else `TRUSTFORMERS_MIGRATION_CONFIG`, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Settings> {
        let path: Option<PathBuf> = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("TRUSTFORMERS_MIGRATION_CONFIG").map(PathBuf::from));
        match path {
            None => Ok(Settings::default()),
            Some(p) => Self::from_file(&p),
        }
    }

    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = read_config(path)?;
        let settings: Settings = toml::from_str(&text).map_err(|e| MigrateError::Settings {
            path: path.to_path_buf(),
            detail: e.to_string().trim_end().to_owned(),
        })?;
        if settings.global.stall_seconds == 0 {
            return Err(MigrateError::Settings {
                path: path.to_path_buf(),
                detail: "global.stall_seconds must be at least 1".into(),
            });
        }
        if settings.data_migration.batch_size == 0 {
            return Err(MigrateError::Settings {
                path: path.to_path_buf(),
                detail: "data_migration.batch_size must be at least 1".into(),
            });
        }
        // A mistyped key or bucket is refused now, not after everything was staged.
        let checked = settings
            .backup
            .recipients()
            .map(drop)
            .and_then(|()| settings.backup.location().map(drop));
        if let Err(e) = checked {
            return Err(MigrateError::Settings {
                path: path.to_path_buf(),
                detail: format!("[backup]: {e}"),
            });
        }
        Ok(settings)
    }
}

/// A migration config larger than this is not one (it is read whole before the run starts).
/// Not `install::MAX_CONFIG_BYTES`, the bound on an installation's `server.toml`.
const MAX_SETTINGS_BYTES: u64 = 1 << 20;

/// The config's text. Only a regular file of at most [`MAX_SETTINGS_BYTES`] is read: a FIFO, a
/// device or a folder named by mistake would block the run, never end, or fail obscurely. It
/// is opened without blocking, so that a FIFO with no writer is refused rather than waited on.
fn read_config(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| {
        MigrateError::io(
            format!("cannot read migration config {}", path.display()),
            e,
        )
    };
    let refuse = |detail: String| MigrateError::Settings {
        path: path.to_path_buf(),
        detail,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(refuse(
            "not a regular file (a folder, FIFO or device?): point --config-file or \
             TRUSTFORMERS_MIGRATION_CONFIG at the TOML file itself"
                .into(),
        ));
    }
    if meta.len() > MAX_SETTINGS_BYTES {
        return Err(refuse(format!(
            "{} bytes: larger than a migration config can be ({} bytes); is this the right file?",
            meta.len(),
            MAX_SETTINGS_BYTES
        )));
    }
    let mut text = String::new();
    file.take(MAX_SETTINGS_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Named by mistake: a folder, a FIFO with no writer (refused at once, not waited on), a
    /// device that never ends, a file far too large. Each error names the path.
    #[test]
    fn only_a_regular_file_of_sane_size_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("config.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_SETTINGS_BYTES + 1) as usize]).unwrap();
        for (path, words) in [
            (dir.path(), "not a regular file"),
            (fifo.as_path(), "not a regular file"),
            (Path::new("/dev/zero"), "not a regular file"),
            (big.as_path(), "larger than a migration config"),
        ] {
            let e = Settings::from_file(path).unwrap_err().to_string();
            assert!(e.contains(words), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "[global]\ntimeout_seconds = 5\n").unwrap();
        assert_eq!(Settings::from_file(&ok).unwrap().global.timeout_seconds, 5);
    }

    fn load(text: &str) -> Result<Settings> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Settings::from_file(f.path())
    }

    #[test]
    fn seed_keys_parse() {
        let s = load(
            "[global]\nbackup_before_migration = false\nvalidate_after_migration = true\nrollback_on_failure = true\ntimeout_seconds = 60\n[config_migration]\n[data_migration]\n[model_migration]\noptimize_models = true\n",
        )
        .unwrap();
        assert!(!s.global.backup_before_migration);
        assert_eq!(s.global.timeout_seconds, 60);
        assert!(s.model_migration.optimize_models);
    }

    #[test]
    fn backup_keys_parse_and_bad_ones_are_refused() {
        let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let s = load(&format!(
            "[global]\nmetrics_file = \"/var/lib/node_exporter/migrate.prom\"\n[backup]\nencrypt_to = [\"{key}\"]\nremote = \"s3://fleet-backups/box-1\"\nrequire_remote = false\n"
        ))
        .unwrap();
        assert_eq!(s.backup.recipients().unwrap().unwrap().public_keys(), [key]);
        assert_eq!(
            s.backup.location().unwrap().unwrap().url(),
            "s3://fleet-backups/box-1"
        );
        assert!(!s.backup.require_remote);
        assert!(Settings::default().backup.require_remote);
        let e = load("[backup]\nencrypt_to = [\"age1nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("age1nope"), "{e}");
        let e = load("[backup]\nremote = \"/mnt/nas\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/mnt/nas") && e.contains("s3://"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = load("[global]\nrollback_on_falure = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rollback_on_falure"), "{e}");
    }
}

//! `migration_config.toml`: the operator's defaults. Unknown keys are an error, not ignored: a
//! misspelt `rollback_on_failure` must not silently turn a safety off.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{MigrateError, Result};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub global: Global,
    pub config_migration: ConfigMigration,
    pub data_migration: DataMigration,
    pub model_migration: ModelMigration,
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
        let text = std::fs::read_to_string(path).map_err(|e| {
            MigrateError::io(
                format!("cannot read migration config {}", path.display()),
                e,
            )
        })?;
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
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
    fn unknown_key_is_an_error_naming_it() {
        let e = load("[global]\nrollback_on_falure = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rollback_on_falure"), "{e}");
    }
}

//! `config/server.toml` 2.1.0 → 3.0.0: `[rate_limit] requests_per_minute` → `[rate_limit] rpm`.
//!
//! The key is renamed in place with [`plugin_api::toml::rename_key`]: its value, the comment
//! above it, its trailing comment and its position are kept, and so is the rest of the file.
//! The value must be an integer ≥ 1. A file without `[rate_limit]` or without the key is left as
//! it is (3.0.0 reads a missing `rpm` as "no limit"). A file that has both keys is refused
//! rather than dropping one. An inline `rate_limit = { … }` is refused with the fix: this hop
//! only edits a `[rate_limit]` section.

use plugin_api::toml::{get_int, parse, rename_key};
use plugin_api::toml_edit::Item;
use plugin_api::{ConfigMigrationRule, ConfigOutcome, RuleError};

/// The table and the keys this hop touches.
const TABLE: &str = "rate_limit";
const OLD: &str = "requests_per_minute";
const NEW: &str = "rpm";

/// The config rule of this hop.
pub struct RenameRpm;

impl ConfigMigrationRule for RenameRpm {
    fn migrate(&self, content: &str) -> Result<ConfigOutcome, RuleError> {
        let mut doc = parse(content)?;
        let table = match doc.get_mut(TABLE) {
            None => return Ok(unchanged(content)),
            Some(Item::Table(table)) => table,
            Some(_) => {
                return Err(RuleError::at_field(
                    TABLE,
                    "expected a [rate_limit] section; write the inline table as a section",
                ))
            }
        };
        get_int(table, OLD, 1, i64::MAX).map_err(|e| qualified(e, OLD))?;
        rename_key(table, OLD, NEW).map_err(|e| qualified(e, NEW))?;
        Ok(ConfigOutcome::new(doc.to_string()))
    }

    fn description(&self) -> String {
        format!("[{TABLE}] {OLD} → {NEW}")
    }
}

fn unchanged(content: &str) -> ConfigOutcome {
    ConfigOutcome::new(content)
}

/// Errors name the key as `rate_limit.key`, as the host shows it.
fn qualified(e: RuleError, key: &str) -> RuleError {
    e.with_field(format!("{TABLE}.{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(content: &str) -> Result<String, RuleError> {
        RenameRpm.migrate(content).map(|o| o.content)
    }

    #[test]
    fn renames_the_key_keeping_value_comments_and_place() {
        let before = "# top\n[rate_limit]\nenabled = false\n# per client\nrequests_per_minute = 600 # soft\nburst = 50\n\n[logging]\nlevel = \"info\"\n";
        let after = "# top\n[rate_limit]\nenabled = false\n# per client\nrpm = 600 # soft\nburst = 50\n\n[logging]\nlevel = \"info\"\n";
        assert_eq!(run(before).unwrap(), after);
    }

    #[test]
    fn a_file_without_the_key_is_unchanged() {
        for content in [
            "[server]\naddress = \"0.0.0.0:80\"\n",
            "[rate_limit]\nburst = 1\n",
        ] {
            assert_eq!(run(content).unwrap(), content);
        }
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_type() {
        let e = run("[rate_limit]\nrequests_per_minute = \"many\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("rate_limit.requests_per_minute"));
        assert!(e.message.contains("an integer ≥ 1"), "{e}");
    }

    #[test]
    fn both_keys_present_is_refused() {
        let e = run("[rate_limit]\nrequests_per_minute = 1\nrpm = 2\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("rate_limit.rpm"));
    }

    #[test]
    fn an_inline_table_is_refused_with_the_fix() {
        let e = run("rate_limit = { requests_per_minute = 1 }\n").unwrap_err();
        assert!(e.message.contains("as a section"), "{e}");
    }
}

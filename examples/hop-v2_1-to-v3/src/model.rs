//! Models 2.1.0 → 3.0.0: `metadata.json` `schema_version` 3 → 4, everything else kept.
//!
//! The host's `validate` checks that every model's `metadata.json` carries the
//! `target_schema_version` the hop declares, so a hop that declares one must move model
//! metadata too, even when nothing else about models changes.

use plugin_api::serde_json::Value;
use plugin_api::{ModelFolder, ModelMigrationRule, ModelOptions, ModelOutcome, RuleError};

use crate::{SCHEMA_VERSION, SOURCE_SCHEMA_VERSION};

const METADATA: &str = "metadata.json";

/// The model rule of this hop.
pub struct SchemaVersion4;

impl ModelMigrationRule for SchemaVersion4 {
    fn migrate(&self, model: &ModelFolder, _: &ModelOptions) -> Result<ModelOutcome, RuleError> {
        let place = format!("models/{}/{METADATA}", model.name);
        let refuse = |why: &str| {
            RuleError::at_field(
                METADATA,
                format!("{place} {why}: the folder is not a 2.1.0 model"),
            )
        };
        let Some(Value::Object(mut metadata)) = model.read_json(METADATA)? else {
            return Err(refuse("is missing or not a JSON object"));
        };
        if metadata.get("schema_version").and_then(Value::as_u64) != Some(SOURCE_SCHEMA_VERSION) {
            return Err(refuse(&format!(
                "does not have schema_version {SOURCE_SCHEMA_VERSION}"
            )));
        }
        metadata.insert("schema_version".to_owned(), Value::from(SCHEMA_VERSION));
        model
            .write_json(METADATA, &Value::Object(metadata))
            .map_err(|e| RuleError::new(format!("cannot write {place}: {e}")))?;
        Ok(ModelOutcome::new().written(METADATA))
    }

    fn description(&self) -> String {
        "metadata.json: schema_version 3 → 4".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::serde_json;
    use std::fs;

    fn folder(metadata: Option<&str>) -> (tempfile::TempDir, ModelFolder) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("models/bert");
        fs::create_dir_all(&source).unwrap();
        if let Some(text) = metadata {
            fs::write(source.join(METADATA), text).unwrap();
        }
        let staging = dir.path().join("staging/models/bert");
        let folder = ModelFolder::new("bert", source, staging);
        (dir, folder)
    }

    #[test]
    fn moves_metadata_to_schema_4_in_staging_only() {
        let original = r#"{"name":"bert","serving":{"streaming":true},"schema_version":3}"#;
        let (_dir, f) = folder(Some(original));
        let outcome = SchemaVersion4
            .migrate(&f, &ModelOptions::default())
            .unwrap();
        assert_eq!(outcome.written, [METADATA]);
        let staged: Value =
            serde_json::from_str(&fs::read_to_string(f.staging.join(METADATA)).unwrap()).unwrap();
        assert_eq!(staged["schema_version"], 4);
        assert_eq!(staged["serving"]["streaming"], true);
        assert_eq!(
            fs::read_to_string(f.source.join(METADATA)).unwrap(),
            original
        );
    }

    #[test]
    fn a_folder_that_is_not_a_2_1_0_model_is_refused() {
        for metadata in [None, Some("[]"), Some(r#"{"schema_version":2}"#)] {
            let (_dir, f) = folder(metadata);
            let e = SchemaVersion4
                .migrate(&f, &ModelOptions::default())
                .unwrap_err();
            assert!(e.message.contains("not a 2.1.0 model"), "{metadata:?}: {e}");
        }
    }
}

//! Models 2.0.0 → 2.1.0: serving settings in `metadata.json`.
//!
//! Adds `"serving": {"streaming": true, "kv_cache": {"enabled": true, "max_tokens": M}}` just
//! before `schema_version`, which becomes 3; every other key keeps its value and position.
//! `M` is `config.json` `max_position_embeddings` when that is a positive integer, 4096 when
//! `config.json` or the field is absent. Any other value (null, 0, a string…) is refused: a
//! silent 4096 could be far from what the model supports.
//!
//! The folder must be a 2.0.0 model: `metadata.json` present, a JSON object, with
//! `schema_version` 2 and no `serving` yet.

use plugin_api::json::type_name;
use plugin_api::{ModelFolder, ModelMigrationRule, ModelOptions, ModelOutcome, RuleError};
use serde_json::{json, Map, Value};

use crate::{SCHEMA_VERSION, SOURCE_SCHEMA_VERSION};

/// The file this hop rewrites.
const METADATA: &str = "metadata.json";

/// Hugging Face model configuration, read for the context length.
const CONFIG: &str = "config.json";

/// The `config.json` field that gives the KV cache size.
const MAX_POSITIONS: &str = "max_position_embeddings";

/// KV cache size when the model does not say.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The model rule of this hop.
pub struct ServingMetadata;

impl ModelMigrationRule for ServingMetadata {
    fn migrate(&self, model: &ModelFolder, _: &ModelOptions) -> Result<ModelOutcome, RuleError> {
        let mut metadata = read_metadata(model)?;
        let serving = json!({
            "streaming": true,
            "kv_cache": {"enabled": true, "max_tokens": max_tokens(model)?},
        });
        plugin_api::json::replace_key(
            &mut metadata,
            "schema_version",
            vec![
                ("serving".to_owned(), serving),
                ("schema_version".to_owned(), Value::from(SCHEMA_VERSION)),
            ],
        );
        model
            .write_json(METADATA, &Value::Object(metadata))
            .map_err(|e| RuleError::new(format!("cannot write {METADATA}: {e}")))?;
        Ok(ModelOutcome::new().written(METADATA))
    }

    fn description(&self) -> String {
        "metadata.json: add serving {streaming, kv_cache {enabled, max_tokens}}; schema_version 3"
            .to_owned()
    }
}

/// The 2.0.0 `metadata.json`, checked to be one.
fn read_metadata(model: &ModelFolder) -> Result<Map<String, Value>, RuleError> {
    let place = format!("models/{}/{METADATA}", model.name);
    let not_2_0_0 = |why: String| {
        RuleError::at_field(
            METADATA,
            format!("{place} {why}: the folder is not a 2.0.0 model"),
        )
    };
    let metadata = model
        .read_json(METADATA)?
        .ok_or_else(|| not_2_0_0("is missing".to_owned()))?;
    let Value::Object(metadata) = metadata else {
        return Err(not_2_0_0(format!(
            "is a JSON {}, not an object",
            type_name(&metadata)
        )));
    };
    match metadata.get("schema_version") {
        Some(v) if v.as_u64() == Some(SOURCE_SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(not_2_0_0(format!(
                "has schema_version {v}, expected {SOURCE_SCHEMA_VERSION}"
            )))
        }
        None => return Err(not_2_0_0("has no schema_version".to_owned())),
    }
    if metadata.contains_key("serving") {
        return Err(not_2_0_0("already has `serving`".to_owned()));
    }
    Ok(metadata)
}

/// `config.json` `max_position_embeddings`, or [`DEFAULT_MAX_TOKENS`].
fn max_tokens(model: &ModelFolder) -> Result<u64, RuleError> {
    let place = format!("models/{}/{CONFIG}", model.name);
    let Some(config) = model.read_json(CONFIG)? else {
        return Ok(DEFAULT_MAX_TOKENS);
    };
    let Value::Object(config) = config else {
        return Err(RuleError::at_field(
            CONFIG,
            format!(
                "{place}: expected a JSON object, found {}",
                type_name(&config)
            ),
        ));
    };
    match config.get(MAX_POSITIONS) {
        None => Ok(DEFAULT_MAX_TOKENS),
        Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            RuleError::at_field(
                MAX_POSITIONS,
                format!(
                    "{place}: expected a positive integer, found {} `{v}`",
                    type_name(v)
                ),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Fixture {
        _dir: tempfile::TempDir,
        folder: ModelFolder,
    }

    /// A 2.0.0 model folder named `bert` holding `files`.
    fn fixture(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("models/bert");
        fs::create_dir_all(&source).unwrap();
        for (rel, text) in files {
            fs::write(source.join(rel), text).unwrap();
        }
        let folder = ModelFolder::new("bert", source, dir.path().join("staging/models/bert"));
        Fixture { _dir: dir, folder }
    }

    const METADATA_2_0_0: &str = r#"{
  "name": "bert",
  "format": "safetensors",
  "architecture": "BertModel",
  "files": [],
  "parameters": 2,
  "dtypes": ["F32"],
  "optimization": {"optimized": false, "dtype": null, "source_sha256": null},
  "schema_version": 2
}"#;

    fn run(f: &Fixture) -> Result<String, RuleError> {
        let outcome = ServingMetadata.migrate(&f.folder, &ModelOptions::default())?;
        assert_eq!(outcome.written, ["metadata.json"]);
        Ok(fs::read_to_string(f.folder.staging.join(METADATA)).unwrap())
    }

    #[test]
    fn adds_serving_before_schema_version_keeping_everything_else() {
        let f = fixture(&[
            (METADATA, METADATA_2_0_0),
            (CONFIG, r#"{"max_position_embeddings": 512}"#),
        ]);
        let text = run(&f).unwrap();
        assert_eq!(
            text,
            r#"{
  "name": "bert",
  "format": "safetensors",
  "architecture": "BertModel",
  "files": [],
  "parameters": 2,
  "dtypes": [
    "F32"
  ],
  "optimization": {
    "optimized": false,
    "dtype": null,
    "source_sha256": null
  },
  "serving": {
    "streaming": true,
    "kv_cache": {
      "enabled": true,
      "max_tokens": 512
    }
  },
  "schema_version": 3
}
"#
        );
        assert_eq!(
            fs::read_to_string(f.folder.source.join(METADATA)).unwrap(),
            METADATA_2_0_0
        );
    }

    #[test]
    fn reads_metadata_an_earlier_hop_staged() {
        let f = fixture(&[(METADATA, r#"{"schema_version": 1}"#)]);
        fs::create_dir_all(&f.folder.staging).unwrap();
        fs::write(
            f.folder.staging.join(METADATA),
            r#"{"name":"bert","schema_version":2}"#,
        )
        .unwrap();
        let meta: Value = serde_json::from_str(&run(&f).unwrap()).unwrap();
        assert_eq!(meta["name"], "bert");
        assert_eq!(meta["schema_version"], 3);
    }

    #[test]
    fn max_tokens_defaults_to_4096() {
        for files in [
            vec![(METADATA, METADATA_2_0_0)],
            vec![(METADATA, METADATA_2_0_0), (CONFIG, "{}")],
        ] {
            let f = fixture(&files);
            let meta: Value = serde_json::from_str(&run(&f).unwrap()).unwrap();
            assert_eq!(meta["serving"]["kv_cache"]["max_tokens"], 4096);
        }
    }

    #[test]
    fn bad_max_position_embeddings_is_an_error_naming_config_and_field() {
        for bad in ["\"512\"", "0", "-1", "1.5", "null"] {
            let config = format!("{{\"max_position_embeddings\": {bad}}}");
            let f = fixture(&[(METADATA, METADATA_2_0_0), (CONFIG, &config)]);
            let e = run(&f).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("max_position_embeddings"), "{bad}");
            assert!(e.message.contains("models/bert/config.json"), "{bad}: {e}");
        }
    }

    #[test]
    fn invalid_config_json_is_an_error_naming_the_file() {
        for bad in ["{oops", "[]"] {
            let f = fixture(&[(METADATA, METADATA_2_0_0), (CONFIG, bad)]);
            let e = run(&f).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("config.json"), "{bad}");
        }
    }

    #[test]
    fn missing_metadata_means_not_a_2_0_0_model() {
        let f = fixture(&[(CONFIG, "{}")]);
        let e = run(&f).unwrap_err();
        assert!(
            e.message.contains("models/bert/metadata.json is missing"),
            "{e}"
        );
        assert!(e.message.contains("not a 2.0.0 model"), "{e}");
        assert!(!f.folder.staging.join(METADATA).exists());
    }

    #[test]
    fn wrong_metadata_is_refused() {
        let cases = [
            (r#"{"schema_version": 1}"#, "schema_version 1"),
            (r#"{"schema_version": 3}"#, "schema_version 3"),
            (r#"{"name": "bert"}"#, "no schema_version"),
            (r#"[1]"#, "not an object"),
            (
                r#"{"serving": {}, "schema_version": 2}"#,
                "already has `serving`",
            ),
        ];
        for (metadata, why) in cases {
            let f = fixture(&[(METADATA, metadata)]);
            let e = run(&f).unwrap_err();
            assert!(e.message.contains(why), "{metadata}: {e}");
            assert_eq!(e.field.as_deref(), Some("metadata.json"));
        }
    }
}

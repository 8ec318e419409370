//! Models 0.1.0 → 1.0.0: write `models/<name>/metadata.json`.
//!
//! ```json
//! {"name": …, "format": …, "architecture": …, "files": [{"path", "size", "sha256"}], "schema_version": 1}
//! ```
//! * `format`: the extension of the weight files found at any depth (`safetensors`, `bin`, `pt`,
//!   `onnx`, `gguf`, matched case-insensitively); `"mixed"` when there are several different
//!   ones, `"unknown"` when there is none.
//! * `architecture`: `config.json` `architectures[0]`, or null when `config.json` is absent or
//!   has no (or an empty) `architectures`. A `config.json` that is not valid JSON, not an
//!   object, or whose `architectures` is not a list of strings is refused: the operator should
//!   fix it rather than get metadata that silently says nothing.
//! * `files`: every regular file except the top-level `metadata.json`, relative with `/`,
//!   sorted by byte order, hashed by streaming (weights are never loaded whole).
//!
//! A 0.1.0 folder should not have a `metadata.json`; if one is there it is overwritten (the
//! backup keeps it) and the operator is warned.

use plugin_api::{ModelFolder, ModelMigrationRule, ModelOptions, ModelOutcome, RuleError};
use serde_json::{json, Value};

use crate::SCHEMA_VERSION;

/// The file this hop writes.
const METADATA: &str = "metadata.json";

/// Hugging Face model configuration, read for `architectures`.
const CONFIG: &str = "config.json";

/// Weight file extensions, as `format` names them.
const WEIGHT_FORMATS: &[&str] = &["safetensors", "bin", "pt", "onnx", "gguf"];

/// The model rule of this hop.
pub struct CreateMetadata;

impl ModelMigrationRule for CreateMetadata {
    fn migrate(&self, model: &ModelFolder, _: &ModelOptions) -> Result<ModelOutcome, RuleError> {
        let mut warnings = Vec::new();
        if model.exists(METADATA) {
            warnings.push(format!(
                "{METADATA} already existed in a 0.1.0 model folder and was overwritten (the backup keeps it)"
            ));
        }
        let files = listed_files(model)?;
        let metadata = json!({
            "name": model.name,
            "format": format_of(&files),
            "architecture": architecture(model)?,
            "files": file_entries(model, &files)?,
            "schema_version": SCHEMA_VERSION,
        });
        model
            .write_json(METADATA, &metadata)
            .map_err(|e| RuleError::new(format!("cannot write {METADATA}: {e}")))?;
        Ok(ModelOutcome::new().written(METADATA).warnings(warnings))
    }

    fn description(&self) -> String {
        "writes metadata.json: name, weight format, architecture, every file's size and sha256"
            .to_owned()
    }
}

/// The files `metadata.json` lists: all but itself, in byte order.
fn listed_files(model: &ModelFolder) -> Result<Vec<String>, RuleError> {
    let files = model
        .files()
        .map_err(|e| RuleError::new(format!("cannot list models/{}: {e}", model.name)))?;
    Ok(files.into_iter().filter(|f| f != METADATA).collect())
}

/// The weight format of a folder from its files' extensions.
fn format_of(files: &[String]) -> &'static str {
    let mut found: Option<&'static str> = None;
    for format in files.iter().filter_map(|f| weight_format(f)) {
        match found {
            None => found = Some(format),
            Some(seen) if seen != format => return "mixed",
            Some(_) => {}
        }
    }
    found.unwrap_or("unknown")
}

/// The weight format named by `path`'s extension, if it is a weight file. A hidden file with
/// no stem (`.bin`) is not one.
fn weight_format(path: &str) -> Option<&'static str> {
    let file_name = path.rsplit('/').next()?;
    let (stem, ext) = file_name.rsplit_once('.')?;
    if stem.is_empty() {
        return None;
    }
    WEIGHT_FORMATS
        .iter()
        .copied()
        .find(|f| f.eq_ignore_ascii_case(ext))
}

/// `config.json` `architectures[0]`, or null.
fn architecture(model: &ModelFolder) -> Result<Value, RuleError> {
    let Some(config) = model.read_json(CONFIG)? else {
        return Ok(Value::Null);
    };
    let place = format!("models/{}/{CONFIG}", model.name);
    let Value::Object(config) = config else {
        return Err(RuleError::at_field(
            CONFIG,
            format!(
                "{place}: expected a JSON object, found {}",
                plugin_api::json::type_name(&config)
            ),
        ));
    };
    match config.get("architectures") {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            Ok(list.first().cloned().unwrap_or(Value::Null))
        }
        Some(other) => Err(RuleError::at_field(
            "architectures",
            format!("{place}: expected a list of strings, found {other}"),
        )),
    }
}

/// `{path, size, sha256}` of every file, hashed by streaming.
fn file_entries(model: &ModelFolder, files: &[String]) -> Result<Vec<Value>, RuleError> {
    files
        .iter()
        .map(|rel| {
            let entry = model.file_entry(rel).map_err(|e| {
                RuleError::new(format!("cannot hash models/{}/{rel}: {e}", model.name))
            })?;
            Ok(json!({"path": entry.path, "size": entry.size, "sha256": entry.sha256}))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    /// A hand-made safetensors file: one F32 tensor `w` of shape [2] holding 1.0 and 2.0.
    fn safetensors_bytes() -> Vec<u8> {
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        bytes.extend_from_slice(&2.0f32.to_le_bytes());
        bytes
    }

    /// sha256 of [`safetensors_bytes`], computed outside Rust with `sha256sum`.
    const SAFETENSORS_SHA256: &str =
        "ec7c158d6647d50c7495f33972f2ab622e283d34113ca293a61993a82cc164d3";
    /// sha256 of `{"architectures":["BertModel"]}`, computed with `sha256sum`.
    const CONFIG_SHA256: &str = "e5eb740ee49198bf795d2627ab3686da156098f95f1f9f469195ef01ec116169";

    struct Fixture {
        _dir: tempfile::TempDir,
        folder: ModelFolder,
    }

    fn fixture(files: &[(&str, &[u8])]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("models/bert");
        for (rel, bytes) in files {
            write(&source, rel, bytes);
        }
        fs::create_dir_all(&source).unwrap();
        let folder = ModelFolder::new("bert", source, dir.path().join("staging/models/bert"));
        Fixture { _dir: dir, folder }
    }

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn run(f: &Fixture) -> Result<(ModelOutcome, String), RuleError> {
        let outcome = CreateMetadata.migrate(&f.folder, &ModelOptions::default())?;
        let text = fs::read_to_string(f.folder.staging.join(METADATA)).unwrap();
        Ok((outcome, text))
    }

    #[test]
    fn the_hand_made_safetensors_file_is_valid() {
        let f = fixture(&[("model.safetensors", &safetensors_bytes())]);
        let header =
            plugin_api::safetensors::read_header(&f.folder.source.join("model.safetensors"))
                .unwrap();
        assert_eq!(header.tensors.len(), 1);
        assert_eq!(header.tensors[0].elements(), 2);
    }

    #[test]
    fn writes_exact_metadata_for_a_safetensors_model() {
        let config = br#"{"architectures":["BertModel"]}"#;
        let st = safetensors_bytes();
        let f = fixture(&[("model.safetensors", &st), ("config.json", config)]);
        let (outcome, text) = run(&f).unwrap();
        let expected = format!(
            r#"{{
  "name": "bert",
  "format": "safetensors",
  "architecture": "BertModel",
  "files": [
    {{
      "path": "config.json",
      "size": {config_len},
      "sha256": "{CONFIG_SHA256}"
    }},
    {{
      "path": "model.safetensors",
      "size": {st_len},
      "sha256": "{SAFETENSORS_SHA256}"
    }}
  ],
  "schema_version": 1
}}
"#,
            config_len = config.len(),
            st_len = st.len(),
        );
        assert_eq!(text, expected);
        assert_eq!(outcome.written, ["metadata.json"]);
        assert!(outcome.warnings.is_empty());
        assert!(
            !f.folder.source.join(METADATA).exists(),
            "the source must not be written"
        );
    }

    #[test]
    fn files_at_any_depth_in_byte_order_without_top_level_metadata() {
        let f = fixture(&[
            ("b.txt", b"b"),
            ("Z.txt", b"z"),
            ("sub/metadata.json", b"{}"),
            ("sub/a.bin", b"a"),
            ("metadata.json", b"{}"),
        ]);
        let (outcome, text) = run(&f).unwrap();
        let meta: Value = serde_json::from_str(&text).unwrap();
        let paths: Vec<&str> = meta["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["Z.txt", "b.txt", "sub/a.bin", "sub/metadata.json"]);
        assert_eq!(meta["format"], "bin");
        assert_eq!(meta["architecture"], Value::Null);
        assert_eq!(
            outcome.warnings.len(),
            1,
            "existing metadata.json must be reported"
        );
        assert!(outcome.warnings[0].contains("overwritten"));
    }

    #[test]
    fn format_is_mixed_unknown_or_the_single_extension() {
        let files = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            format_of(&files(&["a.safetensors", "b.safetensors"])),
            "safetensors"
        );
        assert_eq!(format_of(&files(&["a.safetensors", "x/b.gguf"])), "mixed");
        assert_eq!(
            format_of(&files(&["config.json", "tokenizer.json"])),
            "unknown"
        );
        assert_eq!(format_of(&files(&["MODEL.ONNX"])), "onnx");
        assert_eq!(format_of(&files(&["weights.pt", "notes.txt"])), "pt");
        assert_eq!(format_of(&files(&[".bin", "pt"])), "unknown");
    }

    #[test]
    fn architecture_is_null_without_architectures() {
        for config in [
            &br#"{}"#[..],
            br#"{"architectures":[]}"#,
            br#"{"architectures":null}"#,
        ] {
            let f = fixture(&[("config.json", config)]);
            let (_, text) = run(&f).unwrap();
            assert!(text.contains("\"architecture\": null"), "{text}");
        }
    }

    #[test]
    fn invalid_config_json_is_an_error_naming_the_file() {
        let f = fixture(&[("config.json", b"{not json")]);
        let e = run(&f).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("config.json"));
        let f = fixture(&[("config.json", b"[1]")]);
        let e = run(&f).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("config.json"));
        let f = fixture(&[("config.json", br#"{"architectures":"BertModel"}"#)]);
        let e = run(&f).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("architectures"));
        assert!(e.message.contains("config.json"), "{e}");
    }

    #[test]
    fn an_empty_folder_gets_metadata_with_no_files() {
        let f = fixture(&[]);
        let (_, text) = run(&f).unwrap();
        assert_eq!(
            text,
            "{\n  \"name\": \"bert\",\n  \"format\": \"unknown\",\n  \"architecture\": null,\n  \"files\": [],\n  \"schema_version\": 1\n}\n"
        );
    }
}

//! Model folders 1.0.0 → 2.0.0: `metadata.json` gains `parameters`, `dtypes` and
//! `optimization`; with `--optimize` the safetensors files are converted to F16/BF16 first.
//!
//! Everything is read through the [`ModelFolder`] (an earlier hop's staged copy wins) and
//! written only into staging; the source folder is never opened for writing. Every header is
//! read and validated before anything is written, so a bad file stops the rule early.
//!
//! `optimization.source_sha256` is the hex sha256 of the original file when the folder has
//! one safetensors file; when it has several, it is an object mapping the relative path of
//! each converted file to the sha256 of its original (files without F32 tensors are not
//! rewritten and are not listed: their hash in `files` is still the original's).

use std::fs;

use plugin_api::model::FileEntry;
use plugin_api::safetensors::{read_header, Header};
use plugin_api::{
    ModelFolder, ModelMigrationRule, ModelOptions, ModelOutcome, OptimizeDtype, RuleError,
};
use serde_json::{json, Map, Value};

use crate::optimize::{convert_file, has_f32, Converted, CHUNK_BYTES};

/// The model rule of this hop.
pub struct ModelRule;

const METADATA: &str = "metadata.json";
const FROM_SCHEMA: u64 = 1;
const TO_SCHEMA: u64 = 2;
/// Keys this hop adds to `metadata.json`, in the order they are written (before
/// `schema_version`, which stays last).
const NEW_KEYS: &[&str] = &["parameters", "dtypes", "optimization"];

impl ModelMigrationRule for ModelRule {
    fn migrate(
        &self,
        model: &ModelFolder,
        options: &ModelOptions,
    ) -> Result<ModelOutcome, RuleError> {
        let mut metadata = read_metadata(model)?;
        let mut weights = read_weights(model)?;
        let mut outcome = ModelOutcome::default();
        let optimization = if options.optimize {
            optimize(
                model,
                options.dtype,
                &mut weights,
                &mut metadata,
                &mut outcome,
            )?
        } else {
            not_optimized()
        };
        let fields = [parameters(&weights), dtypes(&weights), optimization];
        let metadata = with_v2_fields(metadata, fields);
        model
            .write_json(METADATA, &Value::Object(metadata))
            .map_err(|e| {
                RuleError::at_field(shown(model, METADATA), format!("cannot write: {e}"))
            })?;
        outcome.written.push(METADATA.to_owned());
        Ok(outcome)
    }

    fn description(&self) -> String {
        "metadata.json gains parameters, dtypes and optimization; --optimize converts F32 \
         safetensors weights to F16/BF16"
            .to_owned()
    }
}

/// `models/<name>/<rel>`, how an operator finds the file.
fn shown(model: &ModelFolder, rel: &str) -> String {
    format!("models/{}/{rel}", model.name)
}

/// The folder's `metadata.json`, which a 1.0.0 model folder must have, with schema_version 1.
fn read_metadata(model: &ModelFolder) -> Result<Map<String, Value>, RuleError> {
    let field = shown(model, METADATA);
    let value = model
        .read_json(METADATA)
        .map_err(|e| e.with_field(field.clone()))?;
    let Some(value) = value else {
        return Err(RuleError::at_field(
            field,
            "missing: this is not a 1.0.0 model folder (1.0.0 writes a metadata.json in every model \
             folder); migrate it from its own release, or pass the right --from",
        ));
    };
    let Value::Object(metadata) = value else {
        return Err(RuleError::at_field(field, "expected a JSON object"));
    };
    match metadata.get("schema_version") {
        Some(v) if v.as_u64() == Some(FROM_SCHEMA) => Ok(metadata),
        found => Err(RuleError::at_field(
            field,
            format!(
                "schema_version is {}, expected {FROM_SCHEMA}: this is not a 1.0.0 model folder",
                found.map_or("missing".to_owned(), Value::to_string)
            ),
        )),
    }
}

/// Every `*.safetensors` file of the folder with its validated header, by relative path.
fn read_weights(model: &ModelFolder) -> Result<Vec<(String, Header)>, RuleError> {
    let files = model.files().map_err(|e| {
        RuleError::at_field(
            format!("models/{}", model.name),
            format!("cannot list: {e}"),
        )
    })?;
    files
        .into_iter()
        .filter(|rel| rel.ends_with(".safetensors"))
        .map(|rel| {
            let header = read_weights_header(model, &rel)?;
            Ok((rel, header))
        })
        .collect()
}

/// Reads and validates the header of `rel` (a truncated file is refused here).
fn read_weights_header(model: &ModelFolder, rel: &str) -> Result<Header, RuleError> {
    read_header(&model.resolve(rel)).map_err(|e| e.with_field(shown(model, rel)))
}

/// `parameters`: every tensor's element count, summed; `null` without safetensors files.
fn parameters(weights: &[(String, Header)]) -> Value {
    if weights.is_empty() {
        return Value::Null;
    }
    let total = weights
        .iter()
        .flat_map(|(_, h)| &h.tensors)
        .map(|t| t.elements())
        .sum::<u64>();
    Value::from(total)
}

/// `dtypes`: the distinct tensor dtypes of all safetensors files, sorted.
fn dtypes(weights: &[(String, Header)]) -> Value {
    let mut names: Vec<&str> = weights
        .iter()
        .flat_map(|(_, h)| &h.tensors)
        .map(|t| t.dtype.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    json!(names)
}

fn not_optimized() -> Value {
    json!({"optimized": false, "dtype": null, "source_sha256": null})
}

/// `metadata` with the 2.0.0 keys inserted before `schema_version`, which becomes 2 and stays
/// last. Keys already there keep their order; a 2.0.0 key a 1.0.0 file should not have is
/// replaced.
fn with_v2_fields(metadata: Map<String, Value>, fields: [Value; 3]) -> Map<String, Value> {
    let mut out: Map<String, Value> = metadata
        .into_iter()
        .filter(|(k, _)| k != "schema_version" && !NEW_KEYS.contains(&k.as_str()))
        .collect();
    for (key, value) in NEW_KEYS.iter().zip(fields) {
        out.insert((*key).to_owned(), value);
    }
    out.insert("schema_version".to_owned(), Value::from(TO_SCHEMA));
    out
}

/// Converts every safetensors file that has F32 tensors, updates `weights` with the new
/// headers and `metadata.files` with the new sizes and hashes, and returns `optimization`.
fn optimize(
    model: &ModelFolder,
    target: OptimizeDtype,
    weights: &mut [(String, Header)],
    metadata: &mut Map<String, Value>,
    outcome: &mut ModelOutcome,
) -> Result<Value, RuleError> {
    let several = weights.len() > 1;
    if weights.iter().any(|(_, h)| has_f32(h))
        && !metadata.get("files").is_some_and(Value::is_array)
    {
        return Err(files_not_an_array(model));
    }
    let mut sources = Map::new();
    for (rel, header) in weights.iter_mut().filter(|(_, h)| has_f32(h)) {
        let (converted, hashes) = convert(model, rel, header, target)?;
        *header = converted;
        let (size, sha256) = hashes.output;
        let entry = FileEntry::new(rel.clone(), size, sha256);
        update_file_entry(model, entry, metadata, outcome)?;
        outcome.written.push(rel.clone());
        sources.insert(rel.clone(), Value::String(hashes.source.1));
    }
    if sources.is_empty() {
        outcome.warnings.push(
            "--optimize: no F32 safetensors tensor to convert; weights left as they are".to_owned(),
        );
        return Ok(not_optimized());
    }
    let source_sha256 = if several {
        Value::Object(sources)
    } else {
        sources
            .into_iter()
            .next()
            .map_or(Value::Null, |(_, only)| only)
    };
    Ok(json!({"optimized": true, "dtype": target.name(), "source_sha256": source_sha256}))
}

/// Writes the converted `rel` into staging and returns its (re-read, validated) header, with
/// the source's and the output's sizes and hashes.
/// The data goes to a `.partial` file renamed over the staged path once complete and synced,
/// so the staged path only ever holds a whole file, even when it is also the source (an
/// earlier hop of the same run staged it).
fn convert(
    model: &ModelFolder,
    rel: &str,
    header: &Header,
    target: OptimizeDtype,
) -> Result<(Header, Converted), RuleError> {
    let fail =
        |e: std::io::Error| RuleError::at_field(shown(model, rel), format!("cannot convert: {e}"));
    let source = model.resolve(rel);
    let staged = model.staged_path(rel).map_err(fail)?;
    let partial = model.staged_path(&format!("{rel}.partial")).map_err(fail)?;
    let written = convert_file(&source, header, &partial, target, CHUNK_BYTES)
        .and_then(|hashes| fs::rename(&partial, &staged).map(|()| hashes));
    match written {
        Ok(hashes) => Ok((read_weights_header(model, rel)?, hashes)),
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(fail(e))
        }
    }
}

/// Records the converted file's new size and sha256 in `files`; a file `files` did not list
/// is added (keeping the list sorted by path), with a warning.
fn update_file_entry(
    model: &ModelFolder,
    entry: FileEntry,
    metadata: &mut Map<String, Value>,
    outcome: &mut ModelOutcome,
) -> Result<(), RuleError> {
    let rel = entry.path.as_str();
    let files = metadata
        .get_mut("files")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| files_not_an_array(model))?;
    let listed = files
        .iter_mut()
        .find(|f| f.get("path").and_then(Value::as_str) == Some(rel));
    if let Some(Value::Object(listed)) = listed {
        listed.insert("size".to_owned(), Value::from(entry.size));
        listed.insert("sha256".to_owned(), Value::String(entry.sha256));
        return Ok(());
    }
    let at = files
        .iter()
        .position(|f| f.get("path").and_then(Value::as_str) > Some(rel))
        .unwrap_or(files.len());
    files.insert(
        at,
        json!({"path": rel, "size": entry.size, "sha256": entry.sha256}),
    );
    outcome.warnings.push(format!(
        "metadata.json did not list {rel}; added it to `files`"
    ));
    Ok(())
}

fn files_not_an_array(model: &ModelFolder) -> RuleError {
    RuleError::at_field(
        shown(model, METADATA),
        "`files` must be an array of file entries",
    )
}

#[cfg(test)]
mod tests;

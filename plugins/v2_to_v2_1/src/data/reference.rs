//! The Map-based rule this hop had before it worked on raw records, kept verbatim as the
//! reference the raw rule must agree with (see `equivalence`).

use plugin_api::json::{
    expect_schema_version, join, opt_f64, opt_u64, replace_key, type_name, walk_record_mut,
};
use plugin_api::{DataMigrationRule, FieldError};
use serde_json::{json, Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::{SCHEMA_VERSION, SOURCE_SCHEMA_VERSION};

/// Characters of a plaintext key kept to let operators recognise it.
const KEY_PREFIX_CHARS: usize = 8;

/// The data rule of this hop, as it was.
pub struct MetricsAndHashedKeys;

impl DataMigrationRule for MetricsAndHashedKeys {
    fn migrate_record(&self, record: &mut Map<String, Value>) -> Result<(), FieldError> {
        expect_schema_version(record, Some(SOURCE_SCHEMA_VERSION))?;
        move_latency_into_metrics(record)?;
        walk_record_mut(record, &mut hash_api_key)?;
        record.insert("schema_version".to_owned(), Value::from(SCHEMA_VERSION));
        Ok(())
    }

    fn description(&self) -> String {
        "latency_ms → metrics {latency_ms, tokens_per_second}; API keys → key_sha256 + \
         key_prefix (plaintext removed); schema_version 2 → 3"
            .to_owned()
    }
}

/// Replaces a top-level `latency_ms` by the `metrics` object, in its place.
fn move_latency_into_metrics(record: &mut Map<String, Value>) -> Result<(), FieldError> {
    let output_tokens = output_tokens(record)?;
    let Some(latency) = opt_f64(record, "latency_ms")? else {
        return Ok(());
    };
    if record.contains_key("metrics") {
        return Err(FieldError::new(
            "metrics",
            "already present: latency_ms cannot move into it without losing one of the two",
        ));
    }
    let tokens_per_second = tokens_per_second(output_tokens, latency)?;
    let kept_latency = record.get("latency_ms").cloned().unwrap_or(Value::Null);
    let metrics = json!({"latency_ms": kept_latency, "tokens_per_second": tokens_per_second});
    replace_key(record, "latency_ms", vec![("metrics".to_owned(), metrics)]);
    Ok(())
}

/// `usage.output_tokens`, checked: `usage` must be an object, the count a non-negative integer.
fn output_tokens(record: &Map<String, Value>) -> Result<Option<u64>, FieldError> {
    match record.get("usage") {
        None => Ok(None),
        Some(Value::Object(usage)) => opt_u64(usage, "output_tokens").map_err(|mut e| {
            e.field = join("usage", &e.field);
            e
        }),
        Some(other) => Err(FieldError::new(
            "usage",
            format!("expected an object, found {} `{other}`", type_name(other)),
        )),
    }
}

/// `output_tokens / (latency_ms / 1000)` rounded to 2 decimals; null when either is unknown
/// or the latency is 0 (no meaningful rate).
fn tokens_per_second(output_tokens: Option<u64>, latency_ms: f64) -> Result<Value, FieldError> {
    let Some(tokens) = output_tokens else {
        return Ok(Value::Null);
    };
    if latency_ms == 0.0 {
        return Ok(Value::Null);
    }
    let rate = tokens as f64 / (latency_ms / 1000.0);
    let rounded = (rate * 100.0).round() / 100.0;
    Number::from_f64(rounded).map(Value::Number).ok_or_else(|| {
        FieldError::new(
            "latency_ms",
            format!("{latency_ms} is too small to compute tokens_per_second from"),
        )
    })
}

/// Visitor for [`walk_record_mut`]: replaces the plaintext of an API key entry. (Changed
/// from the original in one way, with the raw rule: a `key` that is not a string next to a
/// `scopes` array is refused, never left in place — issue 14.)
fn hash_api_key(object: &mut Map<String, Value>, path: &str) -> Result<(), FieldError> {
    let key = match (object.get("key"), object.get("scopes")) {
        (Some(Value::String(key)), Some(Value::Array(_))) => key,
        (Some(other), Some(Value::Array(_))) => {
            return Err(FieldError::new(
                join(path, "key"),
                format!(
                    "an API key entry's `key` must be a string, found {} `{other}`; it cannot be hashed, and its plaintext must not be kept",
                    type_name(other)
                ),
            ))
        }
        _ => return Ok(()),
    };
    for taken in ["key_sha256", "key_prefix"] {
        if object.contains_key(taken) {
            return Err(FieldError::new(
                join(path, taken),
                "already present next to a plaintext `key`; refusing to guess which one is right",
            ));
        }
    }
    let sha256 = hex::encode(Sha256::digest(key.as_bytes()));
    let prefix: String = key.chars().take(KEY_PREFIX_CHARS).collect();
    replace_key(
        object,
        "key",
        vec![
            ("key_sha256".to_owned(), Value::String(sha256)),
            ("key_prefix".to_owned(), Value::String(prefix)),
        ],
    );
    Ok(())
}

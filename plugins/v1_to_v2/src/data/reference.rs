//! The Map-based rule this hop had before it worked on raw records, kept verbatim as the
//! reference the raw rule must agree with (see `equivalence`).

use plugin_api::json::{
    expect_schema_version, join, opt_u64, replace_key, type_name, walk_record_mut,
};
use plugin_api::{DataMigrationRule, FieldError};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The data rule of this hop, as it was.
pub struct DataRule;

const FROM_SCHEMA: u64 = 1;
const TO_SCHEMA: u64 = 2;

impl DataMigrationRule for DataRule {
    fn migrate_record(&self, record: &mut Map<String, Value>) -> Result<(), FieldError> {
        expect_schema_version(record, Some(FROM_SCHEMA))?;
        let usage = usage_of(record)?;
        walk_record_mut(record, &mut |object, path| check_timestamps(object, path))?;
        walk_record_mut(record, &mut |object, path| convert_timestamps(object, path))?;
        if let Some(usage) = usage {
            place_usage(record, usage);
        }
        record.insert("schema_version".to_owned(), Value::from(TO_SCHEMA));
        Ok(())
    }

    fn description(&self) -> String {
        "timestamps → RFC 3339 UTC strings; prompt_tokens/completion_tokens → usage; \
         schema_version 1 → 2"
            .to_owned()
    }
}

/// True for the keys whose integer values are unix seconds.
fn is_timestamp_key(key: &str) -> bool {
    key == "timestamp" || key.ends_with("_at")
}

/// Refuses any timestamp that [`convert_timestamps`] could not convert, without changing it.
fn check_timestamps(object: &mut Map<String, Value>, path: &str) -> Result<(), FieldError> {
    for (key, value) in object.iter().filter(|(k, _)| is_timestamp_key(k)) {
        timestamp_text(value, &join(path, key))?;
    }
    Ok(())
}

/// Replaces integer timestamps by their RFC 3339 form; strings and nulls are left as they are.
fn convert_timestamps(object: &mut Map<String, Value>, path: &str) -> Result<(), FieldError> {
    for (key, value) in object.iter_mut().filter(|(k, _)| is_timestamp_key(k)) {
        if let Some(text) = timestamp_text(value, &join(path, key))? {
            *value = Value::String(text);
        }
    }
    Ok(())
}

/// The RFC 3339 text an integer timestamp becomes; `None` for values kept as they are
/// (strings are already converted, `null` means "never").
fn timestamp_text(value: &Value, field: &str) -> Result<Option<String>, FieldError> {
    match value {
        Value::String(_) | Value::Null => Ok(None),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            let seconds = n.as_i64().ok_or_else(|| out_of_range(field, value))?;
            rfc3339(seconds)
                .map(Some)
                .ok_or_else(|| out_of_range(field, value))
        }
        other => Err(FieldError::new(
            field,
            format!(
                "expected integer unix seconds, a string or null, found {} `{other}`",
                type_name(other)
            ),
        )),
    }
}

/// `1640995200` → `2022-01-01T00:00:00Z`: UTC, `Z` suffix, no fraction (whole seconds have
/// none). `None` when the instant has no RFC 3339 form (years outside 0000–9999).
fn rfc3339(seconds: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

fn out_of_range(field: &str, value: &Value) -> FieldError {
    FieldError::new(
        field,
        format!(
            "unix seconds {value} are outside the years 0000–9999 that an RFC 3339 timestamp can \
             express"
        ),
    )
}

/// The `usage` object the token counts make, `None` when the record has neither count.
/// Refuses counts that are not non-negative integers, and a record that already has a
/// `usage` beside the counts (merging the two could silently drop one of them).
fn usage_of(record: &Map<String, Value>) -> Result<Option<Map<String, Value>>, FieldError> {
    let input = opt_u64(record, "prompt_tokens")?;
    let output = opt_u64(record, "completion_tokens")?;
    if input.is_none() && output.is_none() {
        return Ok(None);
    }
    if record.contains_key("usage") {
        return Err(FieldError::new(
            "usage",
            "the record already has `usage` as well as `prompt_tokens`/`completion_tokens`; \
             remove one of them",
        ));
    }
    let mut usage = Map::new();
    if let Some(n) = input {
        usage.insert("input_tokens".to_owned(), Value::from(n));
    }
    if let Some(n) = output {
        usage.insert("output_tokens".to_owned(), Value::from(n));
    }
    Ok(Some(usage))
}

/// Puts `usage` where `prompt_tokens` was (or `completion_tokens`, when there was no
/// `prompt_tokens`) and removes both counts.
fn place_usage(record: &mut Map<String, Value>, usage: Map<String, Value>) {
    let anchor = if record.contains_key("prompt_tokens") {
        "prompt_tokens"
    } else {
        "completion_tokens"
    };
    replace_key(
        record,
        anchor,
        vec![("usage".to_owned(), Value::Object(usage))],
    );
    replace_key(record, "completion_tokens", Vec::new());
}

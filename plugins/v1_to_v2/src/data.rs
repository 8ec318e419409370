//! Data records 1.0.0 → 2.0.0: timestamps at any depth become RFC 3339 strings, the top-level
//! token counts move under `usage`, and `schema_version` becomes 2.
//!
//! A refused record is left exactly as the caller gave it (and can be quarantined as it was):
//! the batch path drops the half-migrated raw record and keeps the input line, and a `Map`
//! caller's record is only replaced once the rule has succeeded.
//!
//! The rule is a [`DataEditRule`]: the record's own keys are read from the host's view, nested
//! timestamps are found in the objects of the values that may hold one and replaced in place
//! (only the converted value changes, every other byte is copied through), and every other value
//! is written out as it came in.

use plugin_api::json::{join, type_name};
use plugin_api::program::DataProgram;
use plugin_api::view::walk_objects_at;
use plugin_api::{DataEditRule, Edits, FieldError, RecordView};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The data rule of this hop.
pub struct DataRule;

const FROM_SCHEMA: u64 = 1;
const TO_SCHEMA: u64 = 2;

/// What [`DataRule`] does to the records it accepts, declared for the host to run natively
/// (plugin-api 1.7); the rule decides every record the program leaves to it, and the
/// equivalence tests check the two agree.
pub fn program() -> DataProgram {
    DataProgram::new()
        .require("schema_version", Some(FROM_SCHEMA))
        .unix_seconds_to_rfc3339(&["timestamp"], &["_at"])
        .group(
            "usage",
            &[
                ("prompt_tokens", "input_tokens"),
                ("completion_tokens", "output_tokens"),
            ],
        )
        .set_integer("schema_version", TO_SCHEMA)
}

impl DataEditRule for DataRule {
    fn edit(&self, record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError> {
        record.expect_schema_version(Some(FROM_SCHEMA))?;
        let usage = usage_of(record)?;
        convert_top_level_timestamps(record, edits)?;
        convert_nested_timestamps(record, edits)?;
        if let Some(usage) = usage {
            place_usage(record, usage, edits);
        }
        edits.set_u64("schema_version", TO_SCHEMA);
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

/// Whether the JSON text of an object or array may hold a timestamp key: it mentions
/// `"timestamp"` or a key ending in `_at`, or has escapes (a key may be written with them).
fn may_hold_timestamps(text: &str) -> bool {
    text.contains("_at\"") || text.contains("\"timestamp\"") || text.contains('\\')
}

/// Converts the record's own timestamps (a refusal drops every edit, so the order of checks is
/// the order of the keys).
fn convert_top_level_timestamps(
    record: &RecordView<'_>,
    edits: &mut Edits,
) -> Result<(), FieldError> {
    for (key, raw) in record.entries() {
        if is_timestamp_key(key) {
            if let Some(text) = timestamp_json(raw, key)? {
                edits.set(key, &text);
            }
        }
    }
    Ok(())
}

/// The JSON text (a quoted string) a timestamp whose JSON text is `raw` becomes, `None` for
/// values kept as they are. Read from the text when it is a string, null or an integer with an
/// RFC 3339 form (anything else is parsed, to be refused in the same words as
/// [`timestamp_text`]).
fn timestamp_json(raw: &str, field: &str) -> Result<Option<String>, FieldError> {
    if raw == "null" || raw.starts_with('"') {
        return Ok(None);
    }
    // serde_json reads `-0` as a float.
    if let (Ok(seconds), false) = (raw.parse::<i64>(), raw == "-0") {
        if let Some(json) = rfc3339_json(seconds) {
            return Ok(Some(json));
        }
    }
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| FieldError::new(field, format!("unreadable value ({e})")))?;
    let text = timestamp_text(&value, field)?;
    Ok(text.map(|t| Value::String(t).to_string()))
}

/// Converts timestamps at any depth in the containers that may hold one, in place: only the
/// converted values' text changes. A container with an object that repeats a key is parsed
/// and set whole, as a `Map` sees it.
fn convert_nested_timestamps(record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError> {
    for (key, text) in record.entries() {
        if !text.starts_with(['{', '[']) || !may_hold_timestamps(text) {
            continue;
        }
        let Some(objects) = record.objects_in(key) else {
            let mut value = record.get(key)?.unwrap_or_default();
            walk_objects_at(key, &mut value, &mut convert_timestamps)?;
            edits.set(key, &value.to_string());
            continue;
        };
        for object in &objects {
            for member in object.members() {
                if is_timestamp_key(&member.key) {
                    let field = join(object.path(), &member.key);
                    if let Some(json) = timestamp_json(object.raw(member), &field)? {
                        edits.replace_at(key, member.value.clone(), &json);
                    }
                }
            }
        }
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
    let mut text = Vec::with_capacity(20);
    write_rfc3339(seconds, &mut text)?;
    String::from_utf8(text).ok()
}

/// [`rfc3339`] as a JSON string (the text needs no escapes), written in one buffer.
fn rfc3339_json(seconds: i64) -> Option<String> {
    let mut json = Vec::with_capacity(22);
    json.push(b'"');
    write_rfc3339(seconds, &mut json)?;
    json.push(b'"');
    String::from_utf8(json).ok()
}

fn write_rfc3339(seconds: i64, out: &mut Vec<u8>) -> Option<()> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format_into(out, &Rfc3339)
        .ok()
        .map(drop)
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

/// The `usage` object the token counts make (as JSON text), `None` when the record has neither
/// count. Refuses counts that are not non-negative integers, and a record that already has a
/// `usage` beside the counts (merging the two could silently drop one of them).
fn usage_of(record: &RecordView<'_>) -> Result<Option<String>, FieldError> {
    let input = record.u64("prompt_tokens")?;
    let output = record.u64("completion_tokens")?;
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
    // Built by hand: `format!` then `RawValue::from_string` were a sixth of this hop's
    // instructions (valgrind).
    let mut text = String::with_capacity(48);
    let mut digits = itoa::Buffer::new();
    for (name, count) in [("\"input_tokens\":", input), ("\"output_tokens\":", output)] {
        if let Some(count) = count {
            text.push(if text.is_empty() { '{' } else { ',' });
            text.push_str(name);
            text.push_str(digits.format(count));
        }
    }
    text.push('}');
    Ok(Some(text))
}

/// Puts `usage` where `prompt_tokens` was (or `completion_tokens`, when there was no
/// `prompt_tokens`) and removes both counts.
fn place_usage(record: &RecordView<'_>, usage: String, edits: &mut Edits) {
    let anchor = if record.contains_key("prompt_tokens") {
        "prompt_tokens"
    } else {
        "completion_tokens"
    };
    edits.replace(anchor, &[("usage", &usage)]);
    edits.remove("completion_tokens");
}

#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

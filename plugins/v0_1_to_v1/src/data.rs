//! Data records 0.1.0 → 1.0.0: every record gets `"schema_version": 1` as its last key.
//!
//! Nothing else changes, but the fields later hops rely on are type-checked here so that a bad
//! record is refused at the hop that first sees it, naming the field: `id` and `model` strings,
//! `prompt_tokens` and `completion_tokens` non-negative integers, `latency_ms` a non-negative
//! number, `timestamp` an integer (unix seconds), a string or null. Only top-level fields are
//! checked: nested objects belong to other documents (e.g. API keys) with their own meaning.
//!
//! The rule is a [`DataEditRule`]: it reads the host's view of the record (the raw text of the
//! known fields; a value is parsed only to word an error) and returns one edit, so every value
//! is written out as it came in.

use plugin_api::json::wrong_type;
use plugin_api::program::{DataProgram, Kind};
use plugin_api::{DataEditRule, Edits, FieldError, RecordView};
use serde_json::Value;

use crate::SCHEMA_VERSION;

/// The data rule of this hop.
pub struct AddSchemaVersion;

/// What [`AddSchemaVersion`] does to the records it accepts, declared for the host to run
/// natively (plugin-api 1.7); the rule decides every record the program leaves to it, and
/// `program_matches_the_rule` checks the two agree.
pub fn program() -> DataProgram {
    DataProgram::new()
        .require("schema_version", None)
        .check("id", Kind::String)
        .check("model", Kind::String)
        .check("prompt_tokens", Kind::Count)
        .check("completion_tokens", Kind::Count)
        .check("latency_ms", Kind::NonNegativeNumber)
        .check("timestamp", Kind::IntegerStringOrNull)
        .set_integer("schema_version", SCHEMA_VERSION)
}

impl DataEditRule for AddSchemaVersion {
    fn edit(&self, record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError> {
        record.expect_schema_version(None)?;
        check_known_fields(record)?;
        edits.set_u64("schema_version", SCHEMA_VERSION);
        Ok(())
    }

    fn description(&self) -> String {
        "every record gets \"schema_version\": 1 as its last key".to_owned()
    }
}

/// Type-checks the known fields of a 0.1.0 request-log record that are present.
fn check_known_fields(record: &RecordView<'_>) -> Result<(), FieldError> {
    check_str(record, "id")?;
    check_str(record, "model")?;
    record.u64("prompt_tokens")?;
    record.u64("completion_tokens")?;
    record.f64("latency_ms")?;
    check_timestamp(record)
}

/// A string field, if present: raw text that starts with a quote is a JSON string.
fn check_str(record: &RecordView<'_>, field: &str) -> Result<(), FieldError> {
    match record.raw(field) {
        Some(raw) if raw.starts_with('"') => Ok(()),
        _ => record.str(field).map(drop),
    }
}

/// `timestamp` is unix seconds (an integer), already a string, or null; the 1.0.0 → 2.0.0 hop
/// converts the first and keeps the others.
fn check_timestamp(record: &RecordView<'_>) -> Result<(), FieldError> {
    if let Some(raw) = record.raw("timestamp") {
        if raw == "null" || raw.starts_with('"') || is_integer(raw) {
            return Ok(());
        }
    }
    match record.get("timestamp")? {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
        Some(other) => Err(wrong_type(
            "timestamp",
            "an integer, a string or null",
            &other,
        )),
    }
}

/// Whether raw JSON text is a number serde_json reads as an integer (`-0` it reads as a float).
fn is_integer(raw: &str) -> bool {
    raw.parse::<u64>().is_ok() || (raw.parse::<i64>().is_ok() && raw != "-0")
}

#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn record(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn migrate(v: Value) -> Result<String, FieldError> {
        let mut r = record(v);
        AddSchemaVersion.edit_map(&mut r)?;
        Ok(serde_json::to_string(&r).unwrap())
    }

    #[test]
    fn spec_sample_record_gets_schema_version_last() {
        let out = migrate(json!({"id":"req-000001","model":"bert-base","prompt_tokens":12,"completion_tokens":30,"latency_ms":123,"timestamp":1640995200})).unwrap();
        assert_eq!(
            out,
            r#"{"id":"req-000001","model":"bert-base","prompt_tokens":12,"completion_tokens":30,"latency_ms":123,"timestamp":1640995200,"schema_version":1}"#
        );
    }

    #[test]
    fn api_keys_document_gets_schema_version_on_the_record_only() {
        let out = migrate(json!({"keys":[{"name":"ci","key":"tfk_8c1d0e5f9a7b4c2e","created_at":1640995200,"scopes":["infer"]}]})).unwrap();
        assert_eq!(
            out,
            r#"{"keys":[{"name":"ci","key":"tfk_8c1d0e5f9a7b4c2e","created_at":1640995200,"scopes":["infer"]}],"schema_version":1}"#
        );
    }

    #[test]
    fn empty_record_and_accepted_timestamp_forms() {
        assert_eq!(migrate(json!({})).unwrap(), r#"{"schema_version":1}"#);
        for ts in [
            json!(null),
            json!("2022-01-01T00:00:00Z"),
            json!(-5),
            json!(1640995200),
        ] {
            assert!(migrate(json!({ "timestamp": ts })).is_ok(), "{ts}");
        }
        assert!(migrate(json!({"latency_ms": 12.5})).is_ok());
    }

    #[test]
    fn existing_schema_version_is_refused() {
        let e = migrate(json!({"id":"a","schema_version":1})).unwrap_err();
        assert_eq!(e.field, "schema_version");
        assert!(e.message.contains("not a 0.1.0 record"), "{e}");
    }

    #[test]
    fn known_fields_of_the_wrong_type_are_refused_by_name() {
        let cases = [
            (json!({"id": 1}), "id"),
            (json!({"model": null}), "model"),
            (json!({"prompt_tokens": -1}), "prompt_tokens"),
            (json!({"prompt_tokens": "12"}), "prompt_tokens"),
            (json!({"completion_tokens": 1.5}), "completion_tokens"),
            (json!({"latency_ms": -0.5}), "latency_ms"),
            (json!({"latency_ms": "fast"}), "latency_ms"),
            (json!({"timestamp": 1.5}), "timestamp"),
            (json!({"timestamp": [1]}), "timestamp"),
        ];
        for (input, field) in cases {
            let e = migrate(input.clone()).unwrap_err();
            assert_eq!(e.field, field, "{input}");
            assert!(e.message.starts_with("expected "), "{input}: {e}");
        }
    }

    #[test]
    fn nested_fields_are_not_checked() {
        assert!(migrate(json!({"meta": {"id": 5, "timestamp": 1.5}})).is_ok());
    }
}

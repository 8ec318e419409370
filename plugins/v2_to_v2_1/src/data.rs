//! Data records 2.0.0 → 2.1.0: performance metrics and hashed API keys.
//!
//! * A record with a top-level `latency_ms` (a non-negative number) gets, at that key's
//!   position, `"metrics": {"latency_ms": L, "tokens_per_second": T}`. `L` is kept exactly as
//!   written (an integer stays an integer). `T` = `usage.output_tokens` / (L / 1000) rounded to
//!   2 decimals, or null when L is 0 or `output_tokens` is absent. `usage`, if present, must be
//!   an object and `usage.output_tokens` a non-negative integer. A record that already has a
//!   `metrics` key is refused rather than losing either value.
//! * At any depth, an object with a string `key` and a `scopes` array (an API key entry) gets
//!   `key` replaced, in place, by `"key_sha256": hex(sha256(key))` and `"key_prefix"`: its
//!   first 8 characters (characters, not bytes). This cannot be undone from the data: only a
//!   backup brings the plaintext back.
//! * `schema_version` must be 2 and becomes 3, keeping its position.
//!
//! The rule is a [`DataEditRule`]: the record's own keys are read from the host's view, API key
//! entries at depth are found in the objects of the values that may hold one and their `key`
//! member replaced in place, and every other value is written out as it came in.

use std::fmt::Write as _;

use plugin_api::json::{join, opt_u64, replace_key, type_name};
use plugin_api::program::{DataProgram, Rate};
use plugin_api::raw::RawRecord;
use plugin_api::view::{walk_objects_at, NestedObject};
use plugin_api::{DataEditRule, Edits, FieldError, RecordView};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::{SCHEMA_VERSION, SOURCE_SCHEMA_VERSION};

/// Characters of a plaintext key kept to let operators recognise it.
const KEY_PREFIX_CHARS: usize = 8;

/// The data rule of this hop.
pub struct MetricsAndHashedKeys;

/// What [`MetricsAndHashedKeys`] does to the records it accepts, declared for the host to run
/// natively (plugin-api 1.7); the rule decides every record the program leaves to it, and the
/// equivalence tests check the two agree.
pub fn program() -> DataProgram {
    DataProgram::new()
        .require("schema_version", Some(SOURCE_SCHEMA_VERSION))
        .nest_with_rate(
            "latency_ms",
            "metrics",
            Rate {
                name: "tokens_per_second".to_owned(),
                count: vec!["usage".to_owned(), "output_tokens".to_owned()],
                per: 1000,
                decimals: 2,
            },
        )
        .hash_secret(
            ["key", "scopes", "key_sha256", "key_prefix"],
            KEY_PREFIX_CHARS as u32,
        )
        .set_integer("schema_version", SCHEMA_VERSION)
}

impl DataEditRule for MetricsAndHashedKeys {
    fn edit(&self, record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError> {
        record.expect_schema_version(Some(SOURCE_SCHEMA_VERSION))?;
        move_latency_into_metrics(record, edits)?;
        hash_record_api_key(record, edits)?;
        hash_nested_api_keys(record, edits)?;
        edits.set_u64("schema_version", SCHEMA_VERSION);
        Ok(())
    }

    fn description(&self) -> String {
        "latency_ms → metrics {latency_ms, tokens_per_second}; API keys → key_sha256 + \
         key_prefix (plaintext removed); schema_version 2 → 3"
            .to_owned()
    }
}

/// Replaces a top-level `latency_ms` by the `metrics` object, in its place. `latency_ms` goes
/// into it as the text it was written as.
fn move_latency_into_metrics(record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError> {
    let output_tokens = output_tokens(record)?;
    let Some(latency) = record.f64("latency_ms")? else {
        return Ok(());
    };
    if record.contains_key("metrics") {
        return Err(FieldError::new(
            "metrics",
            "already present: latency_ms cannot move into it without losing one of the two",
        ));
    }
    let tokens_per_second = tokens_per_second(output_tokens, latency)?;
    let kept_latency = record.raw("latency_ms").unwrap_or("null");
    // Built in one buffer and checked once by the host, as `usage` is in the 1.0 → 2.0 hop.
    let mut metrics = String::with_capacity(64);
    metrics.push_str(r#"{"latency_ms":"#);
    metrics.push_str(kept_latency);
    metrics.push_str(r#","tokens_per_second":"#);
    // As `format!` wrote it (a `Value` displays as compact JSON); writing into a `String`
    // cannot fail.
    let _ = write!(metrics, "{tokens_per_second}}}");
    edits.replace("latency_ms", &[("metrics", &metrics)]);
    Ok(())
}

/// `usage.output_tokens`, checked: `usage` must be an object, the count a non-negative integer.
/// An object is read as a raw record of its own (no tree).
fn output_tokens(record: &RecordView<'_>) -> Result<Option<u64>, FieldError> {
    let in_usage = |mut e: FieldError| {
        e.field = join("usage", &e.field);
        e
    };
    if let Some(text) = record.raw("usage").filter(|t| t.starts_with('{')) {
        let usage =
            RawRecord::parse(text.as_bytes()).map_err(|e| FieldError::new("usage", e.message))?;
        return usage.u64("output_tokens").map_err(in_usage);
    }
    match record.get("usage")? {
        None => Ok(None),
        Some(Value::Object(usage)) => opt_u64(&usage, "output_tokens").map_err(in_usage),
        Some(other) => Err(FieldError::new(
            "usage",
            format!("expected an object, found {} `{other}`", type_name(&other)),
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

/// Whether the JSON text of an object or array may hold an API key entry: it mentions the key
/// `scopes`, or has escapes (a key may be written with them).
fn may_hold_api_key(text: &str) -> bool {
    text.contains("\"scopes\"") || text.contains('\\')
}

/// Whether `field` is present and its value's JSON text starts with `first` (`"` a string,
/// `[` an array).
fn is_kind(record: &RecordView<'_>, field: &str, first: char) -> bool {
    record
        .raw(field)
        .is_some_and(|text| text.starts_with(first))
}

/// [`hash_api_key`] for the record itself, which may be an API key entry too.
fn hash_record_api_key(record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError> {
    if !is_kind(record, "scopes", '[') || !record.contains_key("key") {
        return Ok(());
    }
    if !is_kind(record, "key", '"') {
        let found = record.get("key")?.unwrap_or(Value::Null);
        return Err(key_not_a_string("key", &found));
    }
    for taken in ["key_sha256", "key_prefix"] {
        if record.contains_key(taken) {
            return Err(already_hashed(taken));
        }
    }
    let key = record.str("key")?.unwrap_or_default();
    let [(k1, v1), (k2, v2)] = hashed_key_json(&key);
    edits.replace("key", &[(k1, &v1), (k2, &v2)]);
    Ok(())
}

/// Hashes the API key entries at any depth in the containers that may hold one, in place: only
/// the `key` member's text changes. A container with an object that repeats a key is parsed and
/// set whole, as a `Map` sees it.
fn hash_nested_api_keys(record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError> {
    for (key, text) in record.entries() {
        if !text.starts_with(['{', '[']) || !may_hold_api_key(text) {
            continue;
        }
        let Some(objects) = record.objects_in(key) else {
            let mut value = record.get(key)?.unwrap_or_default();
            walk_objects_at(key, &mut value, &mut hash_api_key)?;
            edits.set(key, &value.to_string());
            continue;
        };
        for object in &objects {
            hash_nested_api_key(key, object, edits)?;
        }
    }
    Ok(())
}

/// One object of [`hash_nested_api_keys`]: an API key entry has a string `key` and an array
/// `scopes`.
fn hash_nested_api_key(
    top: &str,
    object: &NestedObject<'_>,
    edits: &mut Edits,
) -> Result<(), FieldError> {
    let (Some(key), Some(scopes)) = (object.member("key"), object.member("scopes")) else {
        return Ok(());
    };
    let key_text = object.raw(key);
    if !object.raw(scopes).starts_with('[') {
        return Ok(());
    }
    if !key_text.starts_with('"') {
        let found: Value = serde_json::from_str(key_text)
            .map_err(|e| FieldError::new(join(object.path(), "key"), e.to_string()))?;
        return Err(key_not_a_string(&join(object.path(), "key"), &found));
    }
    for taken in ["key_sha256", "key_prefix"] {
        if object.contains_key(taken) {
            return Err(already_hashed(&join(object.path(), taken)));
        }
    }
    let plaintext: String = serde_json::from_str(key_text)
        .map_err(|e| FieldError::new(join(object.path(), "key"), e.to_string()))?;
    let [(k1, v1), (k2, v2)] = hashed_key_json(&plaintext);
    let members = format!("\"{k1}\":{v1},\"{k2}\":{v2}");
    edits.replace_at(top, key.span.clone(), &members);
    Ok(())
}

/// Visitor for a parsed value (see [`hash_nested_api_keys`]): replaces the plaintext of an API
/// key entry.
fn hash_api_key(object: &mut Map<String, Value>, path: &str) -> Result<(), FieldError> {
    let key = match (object.get("key"), object.get("scopes")) {
        (Some(Value::String(key)), Some(Value::Array(_))) => key,
        (Some(other), Some(Value::Array(_))) => {
            return Err(key_not_a_string(&join(path, "key"), other))
        }
        _ => return Ok(()),
    };
    for taken in ["key_sha256", "key_prefix"] {
        if object.contains_key(taken) {
            return Err(already_hashed(&join(path, taken)));
        }
    }
    let entries = hashed_key(key);
    replace_key(object, "key", entries);
    Ok(())
}

/// An API key entry (it has a `scopes` array) whose `key` is not a string: its plaintext must
/// not stay in place, and no hash of it can be defined, so the record is refused (and can be
/// quarantined).
fn key_not_a_string(field: &str, found: &Value) -> FieldError {
    FieldError::new(
        field,
        format!(
            "an API key entry's `key` must be a string, found {} `{found}`; it cannot be hashed, and its plaintext must not be kept",
            type_name(found)
        ),
    )
}

fn already_hashed(field: &str) -> FieldError {
    FieldError::new(
        field,
        "already present next to a plaintext `key`; refusing to guess which one is right",
    )
}

/// The entries that take the place of a plaintext `key`, as JSON text.
fn hashed_key_json(key: &str) -> [(&'static str, String); 2] {
    let sha256 = hex::encode(Sha256::digest(key.as_bytes()));
    let prefix: String = key.chars().take(KEY_PREFIX_CHARS).collect();
    [
        ("key_sha256", format!("\"{sha256}\"")),
        ("key_prefix", Value::String(prefix).to_string()),
    ]
}

/// The entries that take the place of a plaintext `key`.
fn hashed_key(key: &str) -> Vec<(String, Value)> {
    let sha256 = hex::encode(Sha256::digest(key.as_bytes()));
    let prefix: String = key.chars().take(KEY_PREFIX_CHARS).collect();
    vec![
        ("key_sha256".to_owned(), Value::String(sha256)),
        ("key_prefix".to_owned(), Value::String(prefix)),
    ]
}

#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `printf %s tfk_8c1d0e5f9a7b4c2e | sha256sum`
    const SPEC_KEY_SHA256: &str =
        "60c535de7bd511dcf63c560edede9eb5eee3bb7aed79fb5b6b99e4b222b0c4bb";

    fn migrate(v: Value) -> Result<String, FieldError> {
        let Value::Object(mut record) = v else {
            panic!("test input must be an object")
        };
        MetricsAndHashedKeys.edit_map(&mut record)?;
        Ok(serde_json::to_string(&record).unwrap())
    }

    fn metrics(latency: Value, output_tokens: Option<u64>) -> Value {
        let mut record = json!({"latency_ms": latency, "schema_version": 2});
        if let Some(n) = output_tokens {
            record["usage"] = json!({"output_tokens": n});
        }
        let out: Value = serde_json::from_str(&migrate(record).unwrap()).unwrap();
        out["metrics"].clone()
    }

    #[test]
    fn spec_request_record_gets_metrics_in_place_of_latency() {
        let out = migrate(json!({"id":"req-000001","model":"bert-base","usage":{"input_tokens":12,"output_tokens":30},"latency_ms":123,"timestamp":"2022-01-01T00:00:00Z","schema_version":2})).unwrap();
        assert_eq!(
            out,
            r#"{"id":"req-000001","model":"bert-base","usage":{"input_tokens":12,"output_tokens":30},"metrics":{"latency_ms":123,"tokens_per_second":243.9},"timestamp":"2022-01-01T00:00:00Z","schema_version":3}"#
        );
    }

    #[test]
    fn tokens_per_second_is_rounded_to_two_decimals() {
        // 30 / 0.123 = 243.902…; 10 / 0.3 = 33.333…; 2 / 0.003 = 666.666…; 1 / 0.008 = 125
        assert_eq!(
            metrics(json!(123), Some(30))["tokens_per_second"],
            json!(243.9)
        );
        assert_eq!(
            metrics(json!(300), Some(10))["tokens_per_second"],
            json!(33.33)
        );
        assert_eq!(
            metrics(json!(3), Some(2))["tokens_per_second"],
            json!(666.67)
        );
        assert_eq!(
            metrics(json!(8), Some(1))["tokens_per_second"],
            json!(125.0)
        );
        assert_eq!(
            metrics(json!(12.5), Some(0))["tokens_per_second"],
            json!(0.0)
        );
    }

    #[test]
    fn latency_is_kept_as_written() {
        assert_eq!(
            serde_json::to_string(&metrics(json!(250), Some(5))).unwrap(),
            r#"{"latency_ms":250,"tokens_per_second":20.0}"#
        );
        assert_eq!(metrics(json!(12.5), Some(5))["latency_ms"], json!(12.5));
    }

    #[test]
    fn tokens_per_second_is_null_without_a_rate() {
        assert_eq!(
            metrics(json!(0), Some(30))["tokens_per_second"],
            Value::Null
        );
        assert_eq!(
            metrics(json!(0.0), Some(30))["tokens_per_second"],
            Value::Null
        );
        assert_eq!(metrics(json!(100), None)["tokens_per_second"], Value::Null);
        let out =
            migrate(json!({"latency_ms": 5, "usage": {"input_tokens": 1}, "schema_version": 2}))
                .unwrap();
        assert!(
            out.contains(r#""metrics":{"latency_ms":5,"tokens_per_second":null}"#),
            "{out}"
        );
    }

    #[test]
    fn a_record_without_latency_gets_no_metrics() {
        let out = migrate(json!({"id": "x", "usage": {"output_tokens": 3}, "schema_version": 2}))
            .unwrap();
        assert_eq!(
            out,
            r#"{"id":"x","usage":{"output_tokens":3},"schema_version":3}"#
        );
    }

    #[test]
    fn schema_version_must_be_2_and_keeps_its_position() {
        assert_eq!(
            migrate(json!({"schema_version": 2, "a": 1})).unwrap(),
            r#"{"schema_version":3,"a":1}"#
        );
        for bad in [
            json!({"a": 1}),
            json!({"schema_version": 3}),
            json!({"schema_version": "2"}),
        ] {
            let e = migrate(bad.clone()).unwrap_err();
            assert_eq!(e.field, "schema_version", "{bad}");
        }
    }

    #[test]
    fn known_fields_of_the_wrong_type_are_refused_by_name() {
        let cases = [
            (
                json!({"latency_ms": "slow", "schema_version": 2}),
                "latency_ms",
            ),
            (json!({"latency_ms": -1, "schema_version": 2}), "latency_ms"),
            (json!({"usage": 5, "schema_version": 2}), "usage"),
            (
                json!({"latency_ms": 1, "usage": {"output_tokens": "3"}, "schema_version": 2}),
                "usage.output_tokens",
            ),
            (
                json!({"latency_ms": 1, "usage": {"output_tokens": 2.5}, "schema_version": 2}),
                "usage.output_tokens",
            ),
            (
                json!({"usage": {"output_tokens": -3}, "schema_version": 2}),
                "usage.output_tokens",
            ),
        ];
        for (input, field) in cases {
            let e = migrate(input.clone()).unwrap_err();
            assert_eq!(e.field, field, "{input}");
            assert!(e.message.starts_with("expected "), "{input}: {e}");
        }
    }

    #[test]
    fn an_existing_metrics_key_is_refused() {
        let e = migrate(json!({"latency_ms": 1, "metrics": {}, "schema_version": 2})).unwrap_err();
        assert_eq!(e.field, "metrics");
    }

    #[test]
    fn spec_api_keys_document_is_hashed_in_place() {
        let out = migrate(json!({"keys":[{"name":"ci","key":"tfk_8c1d0e5f9a7b4c2e","created_at":"2022-01-01T00:00:00Z","scopes":["infer"]}],"schema_version":2})).unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"keys":[{{"name":"ci","key_sha256":"{SPEC_KEY_SHA256}","key_prefix":"tfk_8c1d","created_at":"2022-01-01T00:00:00Z","scopes":["infer"]}}],"schema_version":3}}"#
            )
        );
        assert!(
            !out.contains("tfk_8c1d0e5f9a7b4c2e"),
            "plaintext must be gone"
        );
    }

    #[test]
    fn hash_matches_an_independent_sha256() {
        let independent = hex::encode(sha2::Sha256::digest(b"tfk_8c1d0e5f9a7b4c2e"));
        assert_eq!(independent, SPEC_KEY_SHA256);
    }

    #[test]
    fn api_keys_are_hashed_at_any_depth_including_the_record_itself() {
        let record = json!({"key":"top-level-key","scopes":[],"a":{"b":[{"c":{"key":"deep","scopes":["x"]}}]},"schema_version":2});
        let out: Value = serde_json::from_str(&migrate(record).unwrap()).unwrap();
        assert_eq!(out["key_prefix"], "top-leve");
        assert_eq!(
            out["key_sha256"],
            hex::encode(Sha256::digest(b"top-level-key"))
        );
        let deep = &out["a"]["b"][0]["c"];
        assert_eq!(deep["key_prefix"], "deep");
        assert_eq!(deep["key_sha256"], hex::encode(Sha256::digest(b"deep")));
        assert!(deep.get("key").is_none());
    }

    #[test]
    fn key_prefix_counts_characters_not_bytes() {
        let out: Value = serde_json::from_str(
            &migrate(json!({"key": "ключ-éàü-1234", "scopes": [], "schema_version": 2})).unwrap(),
        )
        .unwrap();
        assert_eq!(out["key_prefix"], "ключ-éàü");
    }

    #[test]
    fn objects_that_are_not_api_keys_are_left_alone() {
        let input = json!({"a":{"key":"k"},"b":{"key":"k","scopes":"infer"},"schema_version":2});
        let out = migrate(input).unwrap();
        assert_eq!(
            out,
            r#"{"a":{"key":"k"},"b":{"key":"k","scopes":"infer"},"schema_version":3}"#
        );
    }

    /// Issue 14, finding 8: an API key entry whose `key` is a number, an object or null is an
    /// error naming the field, never migrated with the plaintext left in it.
    #[test]
    fn an_api_key_that_is_not_a_string_is_refused_with_its_path() {
        for key in [json!(12345678), json!({"v": "tfk_secret"}), json!(null)] {
            let nested = migrate(json!({"keys":[{"name":"ci","key":key.clone(),"scopes":["infer"]}],"schema_version":2}))
                .unwrap_err();
            assert_eq!(nested.field, "keys[0].key", "{key}");
            assert!(
                nested.message.contains("must be a string"),
                "{}",
                nested.message
            );
            let top =
                migrate(json!({"key":key.clone(),"scopes":[],"schema_version":2})).unwrap_err();
            assert_eq!(top.field, "key", "{key}");
        }
    }

    #[test]
    fn an_api_key_that_already_has_a_hash_is_refused_with_its_path() {
        let e =
            migrate(json!({"keys":[{"key":"k","key_sha256":"x","scopes":[]}],"schema_version":2}))
                .unwrap_err();
        assert_eq!(e.field, "keys[0].key_sha256");
    }
}

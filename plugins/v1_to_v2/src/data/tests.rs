use super::*;

/// Runs the rule on one JSON line, as the host does, and returns the output line.
fn migrate(line: &str) -> Result<String, FieldError> {
    let mut record: Map<String, Value> =
        serde_json::from_str(line).expect("test input is an object");
    DataRule.edit_map(&mut record)?;
    Ok(serde_json::to_string(&record).expect("serialisable"))
}

/// Runs the rule and returns the error together with the record as the rule left it.
fn refuse(line: &str) -> (FieldError, String) {
    let mut record: Map<String, Value> =
        serde_json::from_str(line).expect("test input is an object");
    let err = DataRule
        .edit_map(&mut record)
        .expect_err("the rule should refuse this record");
    (err, serde_json::to_string(&record).expect("serialisable"))
}

#[test]
fn spec_sample_record() {
    let out = migrate(
        r#"{"id":"req-000001","model":"bert-base","prompt_tokens":12,"completion_tokens":30,"latency_ms":123,"timestamp":1640995200,"schema_version":1}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"id":"req-000001","model":"bert-base","usage":{"input_tokens":12,"output_tokens":30},"latency_ms":123,"timestamp":"2022-01-01T00:00:00Z","schema_version":2}"#
    );
}

#[test]
fn nested_created_at_is_converted_and_schema_version_stays_on_the_record() {
    let out = migrate(
        r#"{"keys":[{"name":"ci","key":"tfk_8c1d0e5f9a7b4c2e","created_at":1640995200,"scopes":["infer"]},{"name":"old","revoked_at":null,"created_at":"2021-06-01T12:00:00Z"}],"schema_version":1}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"keys":[{"name":"ci","key":"tfk_8c1d0e5f9a7b4c2e","created_at":"2022-01-01T00:00:00Z","scopes":["infer"]},{"name":"old","revoked_at":null,"created_at":"2021-06-01T12:00:00Z"}],"schema_version":2}"#
    );
}

#[test]
fn deeply_nested_and_in_arrays_of_arrays() {
    let out = migrate(r#"{"a":{"b":[[{"seen_at":0}]]},"schema_version":1}"#).unwrap();
    assert_eq!(
        out,
        r#"{"a":{"b":[[{"seen_at":"1970-01-01T00:00:00Z"}]]},"schema_version":2}"#
    );
}

#[test]
fn string_and_null_timestamps_are_untouched() {
    let line = r#"{"timestamp":"yesterday","finished_at":null,"schema_version":1}"#;
    assert_eq!(
        migrate(line).unwrap(),
        r#"{"timestamp":"yesterday","finished_at":null,"schema_version":2}"#
    );
}

#[test]
fn keys_that_merely_contain_at_are_not_timestamps() {
    let out =
        migrate(r#"{"attempts":3,"at":5,"format":7,"timestamps":9,"schema_version":1}"#).unwrap();
    assert_eq!(
        out,
        r#"{"attempts":3,"at":5,"format":7,"timestamps":9,"schema_version":2}"#
    );
}

#[test]
fn negative_and_extreme_timestamps() {
    let out = migrate(r#"{"timestamp":-1,"a_at":253402300799,"schema_version":1}"#).unwrap();
    assert_eq!(
        out,
        r#"{"timestamp":"1969-12-31T23:59:59Z","a_at":"9999-12-31T23:59:59Z","schema_version":2}"#
    );
    let (e, _) = refuse(r#"{"a_at":253402300800,"schema_version":1}"#);
    assert_eq!(e.field, "a_at");
    assert!(e.message.contains("0000–9999"), "{}", e.message);
    let (e, _) = refuse(r#"{"timestamp":18446744073709551615,"schema_version":1}"#);
    assert_eq!(e.field, "timestamp");
}

#[test]
fn float_timestamp_is_refused_with_its_path_and_the_record_is_untouched() {
    let line = r#"{"timestamp":1640995200,"keys":[{"created_at":1640995200.5}],"prompt_tokens":1,"schema_version":1}"#;
    let (e, left) = refuse(line);
    assert_eq!(e.field, "keys[0].created_at");
    assert!(
        e.message
            .contains("expected integer unix seconds, a string or null"),
        "{}",
        e.message
    );
    assert!(e.message.contains("1640995200.5"), "{}", e.message);
    assert_eq!(left, line, "a refused record must not be half migrated");
}

#[test]
fn bool_array_and_object_timestamps_are_refused() {
    for (value, kind) in [
        ("true", "boolean"),
        ("[1]", "array"),
        (r#"{"s":1}"#, "object"),
    ] {
        let (e, _) = refuse(&format!(r#"{{"updated_at":{value},"schema_version":1}}"#));
        assert_eq!(e.field, "updated_at");
        assert!(e.message.contains(kind), "{}", e.message);
    }
}

#[test]
fn wrong_or_missing_schema_version_is_refused() {
    for line in [
        r#"{"id":"x","schema_version":2}"#,
        r#"{"id":"x"}"#,
        r#"{"id":"x","schema_version":"1"}"#,
    ] {
        let (e, left) = refuse(line);
        assert_eq!(e.field, "schema_version", "{line}");
        assert_eq!(left, line);
    }
}

#[test]
fn usage_takes_the_place_of_completion_tokens_when_prompt_tokens_is_absent() {
    let out =
        migrate(r#"{"id":"a","completion_tokens":30,"latency_ms":5,"schema_version":1}"#).unwrap();
    assert_eq!(
        out,
        r#"{"id":"a","usage":{"output_tokens":30},"latency_ms":5,"schema_version":2}"#
    );
}

#[test]
fn usage_takes_the_place_of_prompt_tokens_even_when_it_comes_second() {
    let out = migrate(r#"{"completion_tokens":30,"id":"a","prompt_tokens":12,"schema_version":1}"#)
        .unwrap();
    assert_eq!(
        out,
        r#"{"id":"a","usage":{"input_tokens":12,"output_tokens":30},"schema_version":2}"#
    );
}

#[test]
fn only_prompt_tokens_gives_input_tokens_only() {
    let out = migrate(r#"{"prompt_tokens":0,"schema_version":1}"#).unwrap();
    assert_eq!(out, r#"{"usage":{"input_tokens":0},"schema_version":2}"#);
}

#[test]
fn no_counts_no_usage() {
    let out = migrate(r#"{"id":"a","latency_ms":5,"schema_version":1}"#).unwrap();
    assert_eq!(out, r#"{"id":"a","latency_ms":5,"schema_version":2}"#);
}

#[test]
fn an_existing_usage_alone_is_kept() {
    let out = migrate(r#"{"usage":{"input_tokens":1},"schema_version":1}"#).unwrap();
    assert_eq!(out, r#"{"usage":{"input_tokens":1},"schema_version":2}"#);
}

#[test]
fn usage_beside_token_counts_is_refused() {
    let (e, _) = refuse(r#"{"usage":{},"completion_tokens":3,"schema_version":1}"#);
    assert_eq!(e.field, "usage");
}

#[test]
fn bad_token_counts_are_refused_naming_the_field() {
    for (line, field) in [
        (
            r#"{"prompt_tokens":-1,"schema_version":1}"#,
            "prompt_tokens",
        ),
        (
            r#"{"prompt_tokens":1,"completion_tokens":"30","schema_version":1}"#,
            "completion_tokens",
        ),
        (
            r#"{"completion_tokens":1.5,"schema_version":1}"#,
            "completion_tokens",
        ),
        (
            r#"{"prompt_tokens":null,"schema_version":1}"#,
            "prompt_tokens",
        ),
    ] {
        let (e, left) = refuse(line);
        assert_eq!(e.field, field, "{line}");
        assert!(e.message.contains("non-negative integer"), "{}", e.message);
        assert_eq!(left, line);
    }
}

#[test]
fn token_counts_in_nested_objects_are_left_alone() {
    let out = migrate(r#"{"inner":{"prompt_tokens":1},"schema_version":1}"#).unwrap();
    assert_eq!(out, r#"{"inner":{"prompt_tokens":1},"schema_version":2}"#);
}

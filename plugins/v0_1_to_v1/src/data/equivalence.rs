//! The raw rule against the Map-based rule it replaced ([`super::reference`]): for generated
//! records whose values are in serde_json's canonical compact form (so that copying a value
//! through and re-printing it agree), `migrate_data_batch` must give the same bytes and the
//! same failures as the reference applied to a `Map` and printed with `serde_json::to_vec`.

use plugin_testing::{config, count, field, float, key_name, scalar, text, Equivalence};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

use super::reference;

/// Any value, with objects that look like API keys or hold timestamps among the nested ones.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key_name(), inner.clone()), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            (
                "[a-z0-9_é]{0,12}",
                prop::collection::vec(inner.clone(), 0..2),
                inner.clone()
            )
                .prop_map(|(key, scopes, created)| {
                    json!({"name": "k", "key": key, "created_at": created, "scopes": scopes})
                }),
            (any::<i32>(), inner).prop_map(|(ts, other)| json!({"seen_at": ts, "x": other})),
        ]
    })
}

fn wrong_count() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("12")),
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        value(),
    ]
}

/// The fields of a 0.1.0 record, present or not, right or wrong.
fn known_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    (
        field(text(), value()),
        field(text(), value()),
        field(count(), wrong_count()),
        field(count(), wrong_count()),
        field(
            prop_oneof![count(), float().prop_map(|f| Value::from(f.abs()))],
            prop_oneof![
                float().prop_map(|f| Value::from(-f.abs() - 1.0)),
                text(),
                value()
            ],
        ),
        field(
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                text(),
                Just(Value::Null)
            ],
            prop_oneof![float().prop_map(Value::from), value()],
        ),
        // 0.1.0 records carry no schema_version; one that does is refused.
        prop_oneof![
            12 => Just(None),
            1 => prop_oneof![Just(json!(1)), Just(json!(0)), value()].prop_map(Some),
        ],
    )
        .prop_map(|(id, model, p, c, l, ts, sv)| {
            [
                ("id", id),
                ("model", model),
                ("prompt_tokens", p),
                ("completion_tokens", c),
                ("latency_ms", l),
                ("timestamp", ts),
                ("schema_version", sv),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect()
        })
}

/// One record as a JSON line: this hop's known fields and random others.
fn record_line() -> impl Strategy<Value = String> {
    plugin_testing::record_line(known_fields(), value().boxed())
}

/// This hop's raw rule against the reference it replaced.
fn check(lines: &[String]) -> Result<(), TestCaseError> {
    let hop = crate::hop();
    Equivalence {
        hop: &hop,
        reference: &reference::AddSchemaVersion,
    }
    .check(lines)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn raw_rule_matches_the_map_reference(lines in prop::collection::vec(record_line(), 1..5)) {
        check(&lines)?;
    }
}

/// Inputs outside the canonical form agree too, up to layout.
#[test]
fn non_canonical_inputs_agree_up_to_layout() {
    let lines = [
        r#"{"timestamp":-0}"#,
        r#"{"timestamp":-1,"prompt_tokens":-0}"#,
        r#"{"latency_ms":-0,"id":"a"}"#,
        r#"{"latency_ms":1E2,"completion_tokens":1e0}"#,
        r#"{"prompt_tokens":1,"prompt_tokens":"x"}"#,
        r#"{"prompt_tokens":"x","prompt_tokens":1}"#,
        r#"{"schema_version":1,"schema_version":null}"#,
        r#"{"time\u0073tamp":1.5}"#,
        r#"{"id":"a\u0062","model":"\ud83d\ude00"}"#,
        r#" { "id" : "a" , "nested" : { "x" : [ 1 , 2.50 ] } , "timestamp" : 5 } "#,
        r#"{"timestamp":18446744073709551615,"completion_tokens":18446744073709551615}"#,
        r#"{"timestamp":-9223372036854775808}"#,
        r#"{"timestamp":-9223372036854775809}"#,
        r#"{"timestamp":18446744073709551616}"#,
    ];
    let hop = crate::hop();
    Equivalence {
        hop: &hop,
        reference: &reference::AddSchemaVersion,
    }
    .assert_agree_up_to_layout(&lines);
}

//! The raw rule against the Map-based rule it replaced ([`super::reference`]), through the
//! harness the plugins share ([`plugin_testing::Equivalence`]): for generated records whose
//! values are in serde_json's canonical compact form (so that copying a value through and
//! re-printing it agree), `migrate_data_batch` must give the same bytes and the same failures
//! as the reference applied to a `Map` and printed with `serde_json::to_vec`. This file holds
//! only what is this hop's own: the objects it rewrites at any depth and its records' fields.

use plugin_testing::{api_key_entry, count, field, float, text, Equivalence};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::reference;

/// Any value, with API key entries and objects holding a `seen_at` among the nested ones.
fn value() -> BoxedStrategy<Value> {
    plugin_testing::value(|inner| {
        prop_oneof![
            api_key_entry(inner.clone()),
            (any::<i32>(), inner).prop_map(|(ts, other)| json!({"seen_at": ts, "x": other})),
        ]
        .boxed()
    })
}

fn wrong_count() -> BoxedStrategy<Value> {
    plugin_testing::wrong_count(value())
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

#[test]
fn raw_rule_matches_the_map_reference() {
    let hop = crate::hop();
    Equivalence::new(&hop, &reference::AddSchemaVersion)
        .check_generated(plugin_testing::record_line(known_fields(), value()));
}

/// Records outside serde_json's canonical form: escapes, repeats, whitespace, odd numbers.
const NON_CANONICAL: &[&str] = &[
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

/// Inputs outside the canonical form agree too, up to layout.
#[test]
fn non_canonical_inputs_agree_up_to_layout() {
    let hop = crate::hop();
    Equivalence::new(&hop, &reference::AddSchemaVersion).assert_agree_up_to_layout(NON_CANONICAL);
}

/// Records as the spec shows them (and as the bench generates them): the program writes every
/// one, and writes what the rule writes.
const COMMON: &[&str] = &[
    r#"{"id":"req-1","model":"bert-base","prompt_tokens":12,"completion_tokens":30,"latency_ms":123,"timestamp":1640995200}"#,
    r#"{"id":"req-2","model":"m","latency_ms":12.5,"timestamp":"2022-01-01T00:00:00Z","client":{"seen_at":1}}"#,
    r#"{"id":"req-3","timestamp":null,"x":[1,{"y":2}]}"#,
];

#[test]
fn the_declared_program_writes_what_the_rule_writes() {
    plugin_testing::check_program(
        &crate::hop(),
        COMMON,
        NON_CANONICAL,
        plugin_testing::record_line(known_fields(), value()),
    );
}

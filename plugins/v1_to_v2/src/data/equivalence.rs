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

/// Any value, with API key entries and objects holding timestamps among the nested ones.
fn value() -> BoxedStrategy<Value> {
    plugin_testing::value(|inner| {
        prop_oneof![
            api_key_entry(inner.clone()),
            ("[a-z]{0,4}_at|timestamp", timestamp(), inner)
                .prop_map(|(key, ts, other)| json!({ key: ts, "x": other })),
        ]
        .boxed()
    })
}

fn wrong_count() -> BoxedStrategy<Value> {
    plugin_testing::wrong_count(value())
}

/// A timestamp: mostly unix seconds RFC 3339 can express, or already converted, or null.
fn timestamp() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (-62_167_219_200i64..=253_402_300_799).prop_map(Value::from),
        1 => prop_oneof![Just(json!(-62_167_219_201i64)), Just(json!(253_402_300_800i64))],
        2 => text(),
        1 => Just(Value::Null),
    ]
    .boxed()
}

/// Anything at all where a timestamp goes.
fn any_timestamp() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => timestamp(),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => float().prop_map(Value::from),
        1 => value(),
    ]
}

/// The fields of a 1.0.0 record, present or not, right or wrong.
fn known_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    (
        prop_oneof![
            12 => Just(Some(json!(1))),
            1 => Just(None),
            1 => prop_oneof![Just(json!(2)), Just(json!("1")), Just(json!(1.0)), value()]
                .prop_map(Some),
        ],
        field(count(), wrong_count()),
        field(count(), wrong_count()),
        prop::option::weighted(0.1, value()),
        prop::option::weighted(0.7, any_timestamp()),
        prop::option::weighted(0.3, any_timestamp()),
        field(text(), value()),
    )
        .prop_map(|(sv, p, c, usage, ts, created, id)| {
            [
                ("schema_version", sv),
                ("prompt_tokens", p),
                ("completion_tokens", c),
                ("usage", usage),
                ("timestamp", ts),
                ("created_at", created),
                ("id", id),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect()
        })
}

#[test]
fn raw_rule_matches_the_map_reference() {
    let hop = crate::hop();
    Equivalence::new(&hop, &reference::DataRule)
        .check_generated(plugin_testing::record_line(known_fields(), value()));
}

/// Records outside serde_json's canonical form: escapes, repeats, whitespace, odd numbers.
const NON_CANONICAL: &[&str] = &[
    r#"{"timestamp":-0,"schema_version":1}"#,
    r#"{"schema_version":1,"a":{"b_at":-0}}"#,
    r#"{"schema_version":1,"a":[{"b_at":-1}]}"#,
    r#"{"schema_version":1,"timestamp":5,"timestamp":"x"}"#,
    r#"{"schema_version":1,"timestamp":"x","timestamp":5}"#,
    r#"{"schema_version":1,"timestamp":5,"timestamp":1.5}"#,
    r#"{"schema_version":1,"prompt_tokens":"x","prompt_tokens":3,"usage":1,"usage":2}"#,
    r#"{"schema_version":2,"schema_version":1}"#,
    r#"{"schema_version":1,"a":{"cre\u0061ted_at":5}}"#,
    r#"{"schema_version":1,"a":{"x_\u0061t":5},"b":[{"time\u0073tamp":6}]}"#,
    r#"{"schema_version":1,"time\u0073tamp":5}"#,
    r#" { "schema_version" : 1 , "a" : { "x_at" : 5 , "y" : [ 1.50 ] } , "b" : [ 2.50 ] } "#,
    r#"{"schema_version":1,"x_at":9223372036854775808}"#,
    r#"{"schema_version":1,"x_at":1e3}"#,
    r#"{"schema_version":1,"x_at":-9223372036854775808}"#,
    r#"{"schema_version":1,"a":{"[0]":{"b_at":1.5}}}"#,
    r#"{"schema_version":1,"[k]":[{"b_at":1.5}]}"#,
    r#"{"schema_version":1,"a":[[{"b_at":true}]]}"#,
    r#"{"schema_version":1,"latency_ms":{"":{"created_at":[]}}}"#,
    r#"{"schema_version":1,"":{"x_at":1.5}}"#,
    r#"{"schema_version":1,"":[{"":{"x_at":1.5}}]}"#,
    r#"{"schema_version":1,"a":{"b":{"c":[{"d_at":"x","e_at":[]}]}}}"#,
    r#"{"schema_version":1,"s":"_at\" \"timestamp\"","a_at":{"x":1}}"#,
];

/// Inputs outside the canonical form agree too, up to layout.
#[test]
fn non_canonical_inputs_agree_up_to_layout() {
    let hop = crate::hop();
    Equivalence::new(&hop, &reference::DataRule).assert_agree_up_to_layout(NON_CANONICAL);
}

/// Records as the spec shows them (and as the bench generates them): the program writes every
/// one, and writes what the rule writes.
const COMMON: &[&str] = &[
    r#"{"id":"req-1","model":"bert-base","prompt_tokens":12,"completion_tokens":30,"latency_ms":123,"timestamp":1640995200,"schema_version":1}"#,
    r#"{"id":"req-2","prompt_tokens":7,"latency_ms":5,"timestamp":1640995201,"client":{"ip":"10.1.2.3","seen_at":1640995140},"schema_version":1}"#,
    r#"{"keys":[{"name":"k0","key":"tfk_0","created_at":1640995200,"scopes":["infer"]}],"schema_version":1}"#,
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

//! The raw rule against the Map-based rule it replaced ([`super::reference`]), through the
//! harness the plugins share ([`plugin_testing::Equivalence`]): for generated records whose
//! values are in serde_json's canonical compact form (so that copying a value through and
//! re-printing it agree), `migrate_data_batch` must give the same bytes and the same failures
//! as the reference applied to a `Map` and printed with `serde_json::to_vec`. This file holds
//! only what is this hop's own: the objects it rewrites at any depth and its records' fields.

use plugin_testing::{api_key_entry, count, field, float, key_name, text, Equivalence};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::reference;

/// Any value, with API key entries (some already hashed) and objects holding timestamps among
/// the nested ones.
fn value() -> BoxedStrategy<Value> {
    plugin_testing::value(|inner| {
        prop_oneof![
            (
                api_key_entry(inner.clone()),
                prop::option::weighted(0.1, "key_sha256|key_prefix"),
            )
                .prop_map(|(mut entry, taken)| {
                    if let Some(taken) = taken {
                        entry[taken] = json!("x");
                    }
                    entry
                }),
            ("[a-z]{0,4}_at|timestamp", timestamp(), inner)
                .prop_map(|(key, ts, other)| json!({ key: ts, "x": other })),
        ]
        .boxed()
    })
}

fn wrong_count() -> BoxedStrategy<Value> {
    plugin_testing::wrong_count(value())
}

/// A timestamp, as 2.0.0 records have them.
fn timestamp() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => text(),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
    ]
    .boxed()
}

/// A `usage` object: the counts (right or wrong) and maybe other keys.
fn usage() -> impl Strategy<Value = Value> {
    (
        field(count(), wrong_count()),
        field(count(), wrong_count()),
        prop::collection::vec((key_name(), value()), 0..2),
    )
        .prop_flat_map(|(input, output, extra)| {
            let mut entries: Vec<(String, Value)> = extra;
            entries.extend(input.map(|v| ("input_tokens".to_owned(), v)));
            entries.extend(output.map(|v| ("output_tokens".to_owned(), v)));
            Just(entries).prop_shuffle()
        })
        .prop_map(|entries| Value::Object(entries.into_iter().collect()))
}

/// A latency: integers and floats, 0, and some too small to divide by.
fn latency() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0u64..5000).prop_map(Value::from),
        2 => float().prop_map(|f| Value::from(f.abs())),
        1 => prop::sample::select(vec![0.0, 5e-324, 1e-310, 0.001, 12.5]).prop_map(Value::from),
        1 => Just(json!(0)),
        1 => any::<u64>().prop_map(Value::from),
    ]
}

/// The fields of a 2.0.0 record, present or not, right or wrong; sometimes the record is an
/// API key entry itself.
fn known_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    (
        prop_oneof![
            12 => Just(Some(json!(2))),
            1 => Just(None),
            1 => prop_oneof![Just(json!(3)), Just(json!("2")), Just(json!(2.0)), value()]
                .prop_map(Some),
        ],
        field(
            latency(),
            prop_oneof![
                float().prop_map(|f| Value::from(-f.abs() - 1.0)),
                text(),
                value()
            ],
        ),
        field(usage(), value()),
        prop::option::weighted(0.05, value()),
        prop::option::weighted(0.7, timestamp()),
        field(text(), value()),
        (
            prop::option::weighted(0.2, prop_oneof![8 => text(), 1 => value()]),
            prop::option::weighted(
                0.2,
                prop_oneof![
                    8 => prop::collection::vec(text(), 0..3).prop_map(Value::Array),
                    1 => value()
                ],
            ),
            prop::option::weighted(0.05, text()),
            prop::option::weighted(0.05, text()),
        ),
    )
        .prop_map(
            |(sv, latency, usage, metrics, ts, id, (key, scopes, sha, prefix))| {
                [
                    ("schema_version", sv),
                    ("latency_ms", latency),
                    ("usage", usage),
                    ("metrics", metrics),
                    ("timestamp", ts),
                    ("id", id),
                    ("key", key),
                    ("scopes", scopes),
                    ("key_sha256", sha),
                    ("key_prefix", prefix),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                .collect()
            },
        )
}

#[test]
fn raw_rule_matches_the_map_reference() {
    let hop = crate::hop();
    Equivalence::new(&hop, &reference::MetricsAndHashedKeys)
        .check_generated(plugin_testing::record_line(known_fields(), value()));
}

/// Records outside serde_json's canonical form: escapes, repeats, whitespace, odd numbers.
const NON_CANONICAL: &[&str] = &[
    r#"{"schema_version":2,"latency_ms":-0}"#,
    r#"{"schema_version":2,"latency_ms":1E2,"usage":{"output_tokens":7}}"#,
    r#"{"schema_version":2,"latency_ms":1.50,"usage":{"output_tokens":3}}"#,
    r#"{"schema_version":2,"latency_ms":5,"usage":{"output_tokens":-0}}"#,
    r#"{"schema_version":2,"latency_ms":5,"usage":{"output_tokens":"x","output_tokens":10}}"#,
    r#"{"schema_version":2,"latency_ms":5,"usage":{"output_tokens":10,"output_tokens":"x"}}"#,
    r#"{"schema_version":2,"latency_ms":"x","latency_ms":5,"metrics":1,"metrics":2}"#,
    r#"{"schema_version":2,"usage":[1],"latency_ms":5}"#,
    r#"{"schema_version":2,"k":{"k\u0065y":"abc","scopes":[]}}"#,
    r#"{"schema_version":2,"k":{"key":"abc","sc\u006fpes":[]}}"#,
    r#"{"schema_version":2,"k\u0065y":"top","scopes":[],"key_prefix":"x"}"#,
    r#"{"schema_version":2,"key":"a\u0062c","scopes":[1]}"#,
    r#"{"schema_version":2,"key":"\ud83d\ude00ключ-éàü-1234","scopes":[]}"#,
    r#" { "schema_version" : 2 , "latency_ms" : 5 , "k" : [ { "key" : "x" , "scopes" : [ ] } ] , "o" : { "a" : 1.50 } } "#,
    r#"{"schema_version":2,"":{"key":"x","scopes":[],"key_sha256":"y"}}"#,
    r#"{"schema_version":2,"a":[{"":{"key":"x","scopes":[],"key_prefix":"y"}}]}"#,
    r#"{"schema_version":2,"[0]":[{"key":"x","scopes":[],"key_prefix":"y"}]}"#,
    r#"{"schema_version":2,"key":"x","scopes":[],"key":1}"#,
    r#"{"schema_version":2,"s":"\"scopes\"","a":{"key":1,"scopes":[]}}"#,
];

/// Inputs outside the canonical form agree too, up to layout.
#[test]
fn non_canonical_inputs_agree_up_to_layout() {
    let hop = crate::hop();
    Equivalence::new(&hop, &reference::MetricsAndHashedKeys)
        .assert_agree_up_to_layout(NON_CANONICAL);
}

/// A latency written with more digits than serde_json reads exactly: it is kept as written, and
/// tokens_per_second is computed from the float serde_json reads, as before.
#[test]
fn latency_is_read_as_serde_json_reads_it() {
    let line =
        r#"{"schema_version":2,"latency_ms":3.363491038161739523,"usage":{"output_tokens":1000}}"#;
    let mut out = Vec::new();
    assert!(crate::hop()
        .migrate_data_batch(line.as_bytes(), &mut out)
        .is_empty());
    let hop = crate::hop();
    let (want, _) = Equivalence {
        hop: &hop,
        reference: &reference::MetricsAndHashedKeys,
    }
    .reference_batch(&[line.to_owned()]);
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains(r#""metrics":{"latency_ms":3.363491038161739523,"#),
        "{out}"
    );
    let rate = |text: &[u8]| {
        serde_json::from_slice::<Value>(text).unwrap()["metrics"]["tokens_per_second"].clone()
    };
    assert_eq!(rate(out.as_bytes()), rate(&want));
}

/// Records as the spec shows them (and as the bench generates them): the program writes every
/// one, and writes what the rule writes.
const COMMON: &[&str] = &[
    r#"{"id":"req-1","model":"bert-base","usage":{"input_tokens":12,"output_tokens":30},"latency_ms":123,"timestamp":"2022-01-01T00:00:00Z","schema_version":2}"#,
    r#"{"id":"req-2","usage":{"input_tokens":7},"latency_ms":0,"schema_version":2}"#,
    r#"{"keys":[{"name":"k0","key":"tfk_0000000000000000","created_at":"2022-01-01T00:00:00Z","scopes":["infer"]}],"schema_version":2}"#,
    r#"{"key":"tfk_8c1d0e5f9a7b4c2e","scopes":[],"schema_version":2}"#,
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

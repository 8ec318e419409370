//! The raw rule against the Map-based rule it replaced ([`super::reference`]): for generated
//! records whose values are in serde_json's canonical compact form (so that copying a value
//! through and re-printing it agree), `migrate_data_batch` must give the same bytes and the
//! same failures as the reference applied to a `Map` and printed with `serde_json::to_vec`.

use plugin_api::{DataMigrationRule, RuleError};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

use super::reference;
use super::MetricsAndHashedKeys;

/// Cases per property; `PROPTEST_CASES` overrides it.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Finite floats whose serde_json text reads back as the same float (serde_json's own float
/// parsing is not always correctly rounded, so not every float is canonical).
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-100_000i64..100_000).prop_map(|n| n as f64 / 100.0),
        any::<f64>().prop_filter("finite and stable", |f| {
            f.is_finite()
                && serde_json::from_str::<f64>(&serde_json::to_string(f).unwrap()).unwrap() == *f
        }),
        prop::sample::select(vec![0.0, -0.0, 5e-324, 1e-300, 1e300, 0.5, 1.5]),
    ]
}

fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "id", "model", "prompt_tokens", "completion_tokens", "latency_ms", "timestamp",
            "schema_version", "usage", "metrics", "key", "scopes", "key_sha256", "key_prefix",
            "created_at", "seen_at", "_at", "at", "timestamps", "name", "client",
        ])
        .prop_map(str::to_owned),
        2 => "[a-z_]{0,8}",
        1 => "[a-z]{1,5}_at",
        1 => any::<String>(),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-5i64..300).prop_map(Value::from),
        float().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-z0-9_ \"\\\\-]{0,12}".prop_map(Value::from),
    ]
}

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
                inner.clone(),
                prop::option::weighted(0.1, "key_sha256|key_prefix"),
            )
                .prop_map(|(key, scopes, created, taken)| {
                    let mut entry =
                        json!({"name": "k", "key": key, "created_at": created, "scopes": scopes});
                    if let Some(taken) = taken {
                        entry[taken] = json!("x");
                    }
                    entry
                }),
            ("[a-z]{0,4}_at|timestamp", timestamp(), inner)
                .prop_map(|(key, ts, other)| json!({ key: ts, "x": other })),
        ]
    })
}

/// A known field: absent, of the right type, or of a wrong one.
fn field(
    valid: impl Strategy<Value = Value> + 'static,
    wrong: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        3 => Just(None),
        8 => valid.prop_map(Some),
        1 => wrong.prop_map(Some),
    ]
    .boxed()
}

fn count() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..5000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from)
    ]
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

fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9-]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from)
    ]
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

/// One record as a JSON line: the known fields and random others in random order, sometimes
/// with a key repeated (serde_json keeps its first place and its last value).
fn record_line() -> impl Strategy<Value = String> {
    (
        known_fields(),
        prop::collection::vec((key_name(), value()), 0..4),
        prop::option::weighted(0.1, (any::<prop::sample::Index>(), value())),
    )
        .prop_flat_map(|(known, extra, repeat)| {
            let mut entries = known;
            entries.extend(extra);
            if let (Some((at, v)), false) = (repeat, entries.is_empty()) {
                let key = entries[at.index(entries.len())].0.clone();
                entries.push((key, v));
            }
            Just(entries).prop_shuffle()
        })
        .prop_map(|entries| {
            let fields: Vec<String> = entries
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(k).unwrap(),
                        serde_json::to_string(v).unwrap()
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        })
}

/// What the hop gave before: the reference rule on a `Map`, printed by serde_json.
fn reference_batch(lines: &[String]) -> (Vec<u8>, Vec<(u64, RuleError)>) {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut record: Map<String, Value> = serde_json::from_str(line).unwrap();
        match reference::MetricsAndHashedKeys.migrate_record(&mut record) {
            Ok(()) => {
                out.extend(serde_json::to_vec(&record).unwrap());
                out.push(b'\n');
            }
            Err(e) => failures.push((i as u64, RuleError::from(e))),
        }
    }
    (out, failures)
}

fn check(lines: &[String]) -> Result<(), TestCaseError> {
    let batch = lines.join("\n") + "\n";
    let mut out = Vec::new();
    let failures = crate::hop().migrate_data_batch(batch.as_bytes(), &mut out);
    let (want_out, want_failures) = reference_batch(lines);
    prop_assert_eq!(
        String::from_utf8(out).unwrap(),
        String::from_utf8(want_out).unwrap()
    );
    prop_assert_eq!(failures, want_failures);
    // Map callers go through the trait's default, i.e. through the raw rule too.
    for line in lines {
        let mut want: Map<String, Value> = serde_json::from_str(line).unwrap();
        let mut got = want.clone();
        let want = reference::MetricsAndHashedKeys
            .migrate_record(&mut want)
            .map(|()| serde_json::to_string(&want).unwrap());
        let got = MetricsAndHashedKeys
            .migrate_record(&mut got)
            .map(|()| serde_json::to_string(&got).unwrap());
        prop_assert_eq!(got, want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn raw_rule_matches_the_map_reference(lines in prop::collection::vec(record_line(), 1..5)) {
        check(&lines)?;
    }
}

/// Inputs outside the canonical form agree too, up to layout: failures are the same, and each
/// output record reads as the same JSON as the reference's.
#[test]
fn non_canonical_inputs_agree_up_to_layout() {
    let lines = [
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
    let batch = lines.join("\n");
    let mut out = Vec::new();
    let failures = crate::hop().migrate_data_batch(batch.as_bytes(), &mut out);
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let (want_out, want_failures) = reference_batch(&lines);
    assert_eq!(failures, want_failures);
    let relaid = |bytes: &[u8]| -> Vec<String> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::to_string(&serde_json::from_slice::<Value>(l).unwrap()).unwrap())
            .collect()
    };
    assert_eq!(relaid(&out), relaid(&want_out));
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
    let (want, _) = reference_batch(&[line.to_owned()]);
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

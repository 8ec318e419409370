//! The raw rule against the Map-based rule it replaced ([`super::reference`]): for generated
//! records whose values are in serde_json's canonical compact form (so that copying a value
//! through and re-printing it agree), `migrate_data_batch` must give the same bytes and the
//! same failures as the reference applied to a `Map` and printed with `serde_json::to_vec`.

use plugin_api::{DataMigrationRule, RuleError};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

use super::reference;
use super::AddSchemaVersion;

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
                inner.clone()
            )
                .prop_map(|(key, scopes, created)| {
                    json!({"name": "k", "key": key, "created_at": created, "scopes": scopes})
                }),
            (any::<i32>(), inner).prop_map(|(ts, other)| json!({"seen_at": ts, "x": other})),
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
        match reference::AddSchemaVersion.migrate_record(&mut record) {
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
        let want = reference::AddSchemaVersion
            .migrate_record(&mut want)
            .map(|()| serde_json::to_string(&want).unwrap());
        let got = AddSchemaVersion
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

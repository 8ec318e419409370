//! Test support for hop plugins' data rules: the one equivalence harness the plugins share.
//!
//! A rule's fast path (`migrate_raw`, on raw records) must give what the `Map`-based rule it
//! replaced (kept in the plugin as a reference) gives: the same bytes and the same failures for
//! records in serde_json's canonical compact form, the same JSON up to layout for the rest.
//! [`Equivalence`] checks that, on generated batches ([`Equivalence::check_generated`]) and on
//! hand-written lines ([`Equivalence::assert_agree_up_to_layout`]). The generators are the
//! building blocks every hop's records are drawn from; each hop adds only its own known fields
//! and nested objects:
//!
//! ```ignore
//! fn value() -> BoxedStrategy<Value> {
//!     plugin_testing::value(|inner| my_objects(inner))
//! }
//!
//! #[test]
//! fn raw_rule_matches_the_map_reference() {
//!     let hop = crate::hop();
//!     Equivalence::new(&hop, &reference::MyRule)
//!         .check_generated(plugin_testing::record_line(known_fields(), value()));
//! }
//! ```

use plugin_api::{DataMigrationRule, Hop, RuleError};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use serde_json::{Map, Value};

/// Cases per property; `PROPTEST_CASES` overrides it.
pub fn config() -> ProptestConfig {
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
pub fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-100_000i64..100_000).prop_map(|n| n as f64 / 100.0),
        any::<f64>().prop_filter("finite and stable", |f| {
            f.is_finite()
                && serde_json::from_str::<f64>(&serde_json::to_string(f).unwrap()).unwrap() == *f
        }),
        prop::sample::select(vec![0.0, -0.0, 5e-324, 1e-300, 1e300, 0.5, 1.5]),
    ]
}

pub fn key_name() -> impl Strategy<Value = String> {
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

pub fn scalar() -> impl Strategy<Value = Value> {
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

/// A known field: absent, of the right type, or of a wrong one.
pub fn field(
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

/// Any JSON value, nested up to three levels: scalars, arrays, objects with [`key_name`]s,
/// and (as often as the other two together) the objects `hop_objects` builds from the values
/// one level down — API key entries, objects holding timestamps, whatever the hop rewrites
/// wherever it finds it.
pub fn value(
    hop_objects: impl Fn(BoxedStrategy<Value>) -> BoxedStrategy<Value> + 'static,
) -> BoxedStrategy<Value> {
    scalar()
        .prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                1 => prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                1 => prop::collection::vec((key_name(), inner.clone()), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                2 => hop_objects(inner),
            ]
        })
        .boxed()
}

/// An API key entry (`name`, plaintext `key`, `created_at`, `scopes`), as records of every
/// release may hold at any depth; `inner` gives the nested values.
pub fn api_key_entry(inner: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    (
        "[a-z0-9_é]{0,12}",
        prop::collection::vec(inner.clone(), 0..2),
        inner,
    )
        .prop_map(|(key, scopes, created)| {
            serde_json::json!({"name": "k", "key": key, "created_at": created, "scopes": scopes})
        })
        .boxed()
}

/// A value where a count goes that is not a non-negative integer: negative, a float, a string,
/// null, or any `value`.
pub fn wrong_count(value: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(1.5)),
        Just(serde_json::json!("12")),
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        value,
    ]
    .boxed()
}

pub fn count() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..5000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from)
    ]
}

pub fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9-]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from)
    ]
}

/// One record as a JSON line: the `known` fields and random others (`value`s under random
/// keys) in random order, sometimes with a key repeated (serde_json keeps its first place and
/// its last value).
pub fn record_line(
    known: impl Strategy<Value = Vec<(String, Value)>>,
    value: BoxedStrategy<Value>,
) -> impl Strategy<Value = String> {
    (
        known,
        prop::collection::vec((key_name(), value.clone()), 0..4),
        prop::option::weighted(0.1, (any::<prop::sample::Index>(), value)),
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

/// A hop whose data rule is checked against the `Map`-based `reference` it replaced.
pub struct Equivalence<'a> {
    pub hop: &'a Hop,
    pub reference: &'a dyn DataMigrationRule,
}

impl<'a> Equivalence<'a> {
    pub fn new(hop: &'a Hop, reference: &'a dyn DataMigrationRule) -> Self {
        Equivalence { hop, reference }
    }

    /// The property: for batches of one to four records drawn from `record` (canonical JSON
    /// lines, see [`record_line`]), [`check`](Self::check) holds. Runs [`config`]'s cases and
    /// panics with the smallest failing batch proptest finds.
    pub fn check_generated(&self, record: impl Strategy<Value = String>) {
        let mut runner = TestRunner::new(config());
        match runner.run(&prop::collection::vec(record, 1..5), |lines| {
            self.check(&lines)
        }) {
            Ok(()) => {}
            Err(TestError::Fail(why, lines)) => {
                panic!("the raw rule and its reference differ: {why}\nminimal batch: {lines:#?}")
            }
            Err(TestError::Abort(why)) => panic!("the property was aborted: {why}"),
        }
    }

    /// The hop's rule on a `Map`: its edit rule (since plugin-api 1.5.0) or its data rule.
    fn migrate_map(&self, record: &mut Map<String, Value>) -> Result<(), plugin_api::FieldError> {
        match self.hop.data_edit_rule() {
            Some(rule) => rule.edit_map(record),
            None => self
                .hop
                .data_rule()
                .expect("the hop has a data rule")
                .migrate_record(record),
        }
    }

    /// What the hop gave before: the reference rule on a `Map`, printed by serde_json.
    pub fn reference_batch(&self, lines: &[String]) -> (Vec<u8>, Vec<(u64, RuleError)>) {
        let mut out = Vec::new();
        let mut failures = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let mut record: Map<String, Value> = serde_json::from_str(line).unwrap();
            match self.reference.migrate_record(&mut record) {
                Ok(()) => {
                    out.extend(serde_json::to_vec(&record).unwrap());
                    out.push(b'\n');
                }
                Err(e) => failures.push((i as u64, RuleError::from(e))),
            }
        }
        (out, failures)
    }

    /// Canonical records: the batch path gives the reference's bytes and failures, and a
    /// `Map` caller (through the trait's default, i.e. the raw rule) the reference's result.
    pub fn check(&self, lines: &[String]) -> Result<(), TestCaseError> {
        let batch = lines.join("\n") + "\n";
        let mut out = Vec::new();
        let failures = self.hop.migrate_data_batch(batch.as_bytes(), &mut out);
        let (want_out, want_failures) = self.reference_batch(lines);
        prop_assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(want_out).unwrap()
        );
        prop_assert_eq!(failures, want_failures);
        for line in lines {
            let mut want: Map<String, Value> = serde_json::from_str(line).unwrap();
            let mut got = want.clone();
            let edits = self.hop.data_edit_rule().is_some();
            let want = self.reference.migrate_record(&mut want).map(|()| {
                let printed = serde_json::to_string(&want).unwrap();
                // An edit rule's `Map` caller reads the record back from the text the rule
                // made, and serde_json does not read every float back exactly: compare with
                // the reference's output read back the same way.
                match edits {
                    true => serde_json::to_string(
                        &serde_json::from_str::<Map<String, Value>>(&printed).unwrap(),
                    )
                    .unwrap(),
                    false => printed,
                }
            });
            let got = self
                .migrate_map(&mut got)
                .map(|()| serde_json::to_string(&got).unwrap());
            prop_assert_eq!(got, want);
        }
        Ok(())
    }

    /// Inputs outside the canonical form agree too, up to layout: failures are the same, and
    /// each output record reads as the same JSON as the reference's.
    pub fn assert_agree_up_to_layout(&self, lines: &[&str]) {
        let batch = lines.join("\n");
        let mut out = Vec::new();
        let failures = self.hop.migrate_data_batch(batch.as_bytes(), &mut out);
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let (want_out, want_failures) = self.reference_batch(&lines);
        assert_eq!(failures, want_failures);
        let relaid = |bytes: &[u8]| -> Vec<String> {
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    serde_json::to_string(&serde_json::from_slice::<Value>(l).unwrap()).unwrap()
                })
                .collect()
        };
        assert_eq!(relaid(&out), relaid(&want_out));
    }
}

/// The hop's declared data program ([`plugin_api::program`], since 1.7) against its edit
/// rule, on generated records: wherever the program writes a record, it writes what the rule
/// writes, and it leaves every record the rule refuses to the rule. Returns how many of the
/// generated records the program wrote, for the caller to check it is not vacuous.
pub fn check_program_generated(hop: &Hop, record: impl Strategy<Value = String>) -> usize {
    let (program, rule) = program_and_rule(hop);
    let written = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(config());
    let result = runner.run(&record, |line| {
        let n = plugin_api::program::check_against_rule(&program, rule, line.as_bytes())
            .map_err(TestCaseError::fail)?;
        written.set(written.get() + n);
        Ok(())
    });
    match result {
        Ok(()) => written.get(),
        Err(TestError::Fail(why, line)) => {
            panic!("the program and the rule differ: {why}\nminimal record: {line}")
        }
        Err(TestError::Abort(why)) => panic!("the property was aborted: {why}"),
    }
}

/// Everything a hop's tests check of its declared program: it writes every one of the
/// `common` records (and writes what the rule writes), agrees with the rule on the
/// `non_canonical` ones, and on generated records, of which it writes some.
pub fn check_program(
    hop: &Hop,
    common: &[&str],
    non_canonical: &[&str],
    generated: impl Strategy<Value = String>,
) {
    assert_eq!(
        assert_program_agrees(hop, common),
        common.len(),
        "the program leaves common records to the rule"
    );
    assert_program_agrees(hop, non_canonical);
    let written = check_program_generated(hop, generated);
    assert!(
        written > 0,
        "the program wrote none of the generated records"
    );
}

/// [`check_program_generated`] on hand-written lines; returns how many the program wrote.
pub fn assert_program_agrees(hop: &Hop, lines: &[&str]) -> usize {
    let (program, rule) = program_and_rule(hop);
    plugin_api::program::check_against_rule(&program, rule, lines.join("\n").as_bytes())
        .unwrap_or_else(|e| panic!("the program and the rule differ: {e}"))
}

fn program_and_rule(
    hop: &Hop,
) -> (
    plugin_api::program::DataProgram,
    &dyn plugin_api::DataEditRule,
) {
    let program = hop
        .descriptor()
        .data_program()
        .expect("the hop declares a data program this plugin-api reads");
    let rule = hop.data_edit_rule().expect("the hop has an edit rule");
    (program, rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::raw::RawRecord;
    use plugin_api::{FieldError, HopDescriptor};

    /// The reference: every record gets `"n": 1`.
    struct Reference;

    impl DataMigrationRule for Reference {
        fn migrate_record(&self, record: &mut Map<String, Value>) -> Result<(), FieldError> {
            record.insert("n".to_owned(), Value::from(1));
            Ok(())
        }

        fn description(&self) -> String {
            "adds n".to_owned()
        }
    }

    /// A raw rule that agrees with [`Reference`] unless `wrong_from` keys or more are present.
    struct Raw {
        wrong_from: usize,
    }

    impl DataMigrationRule for Raw {
        fn migrate_raw(&self, record: &mut RawRecord<'_>) -> Result<(), FieldError> {
            let n = if record.keys().count() >= self.wrong_from {
                2
            } else {
                1
            };
            record.insert("n", Value::from(n))
        }

        fn description(&self) -> String {
            "adds n, wrongly for large records".to_owned()
        }
    }

    fn hop(wrong_from: usize) -> Hop {
        Hop::new(HopDescriptor::new("t", "1.0.0", "2.0.0", "test")).data(Raw { wrong_from })
    }

    fn records() -> impl Strategy<Value = String> {
        record_line(Just(Vec::new()), scalar().boxed())
    }

    #[test]
    fn a_raw_rule_that_agrees_with_its_reference_passes() {
        let hop = hop(usize::MAX);
        let equivalence = Equivalence::new(&hop, &Reference);
        equivalence.check_generated(records());
        equivalence.assert_agree_up_to_layout(&[r#" { "a" : 1.50 } "#, "{}"]);
    }

    #[test]
    #[should_panic(expected = "the raw rule and its reference differ")]
    fn a_raw_rule_that_differs_from_its_reference_fails_the_property() {
        let hop = hop(3);
        Equivalence::new(&hop, &Reference).check_generated(records());
    }

    #[test]
    #[should_panic(expected = "assertion `left == right` failed")]
    fn a_difference_on_a_hand_written_line_fails() {
        let hop = hop(1);
        Equivalence::new(&hop, &Reference).assert_agree_up_to_layout(&[r#"{"a":1}"#]);
    }
}

//! Tests of the hop as the host drives it: the descriptor, and data batches through
//! `Hop::migrate_data_batch` (failures come back with their index in the batch).

use super::*;

#[test]
fn descriptor_names_the_hop_and_its_breaking_changes() {
    let d = hop().descriptor();
    assert_eq!(
        (d.name.as_str(), d.from.as_str(), d.to.as_str()),
        (NAME, "2.0.0", "2.1.0")
    );
    assert!(d.rules.config && d.rules.data && d.rules.model);
    assert_eq!(d.target_schema_version, Some(3));
    assert!(d
        .breaking_changes
        .iter()
        .any(|c| c.contains("irreversibly") && c.contains("backup")));
    // The flag, not the word, is what a host from 1.6.0 on asks about.
    assert!(d.irreversible && d.is_irreversible());
    assert_eq!(d.irreversible_changes().len(), 1);
}

#[test]
fn batch_migrates_good_records_and_reports_bad_ones_by_index() {
    let batch = concat!(
        "{\"latency_ms\":1000,\"usage\":{\"output_tokens\":5},\"schema_version\":2}\n",
        "{\"schema_version\":1}\n",
        "\"text\"\n",
        "{\"latency_ms\":10,\"usage\":{\"output_tokens\":-1},\"schema_version\":2}\n",
        "{\"schema_version\":2}\n",
    );
    let mut out = Vec::new();
    let failures = hop().migrate_data_batch(batch.as_bytes(), &mut out);
    let indexes: Vec<u64> = failures.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [1, 2, 3]);
    assert_eq!(failures[0].1.field.as_deref(), Some("schema_version"));
    assert!(
        failures[1].1.message.contains("found string"),
        "{}",
        failures[1].1
    );
    assert_eq!(failures[2].1.field.as_deref(), Some("usage.output_tokens"));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        concat!(
            "{\"metrics\":{\"latency_ms\":1000,\"tokens_per_second\":5.0},\"usage\":{\"output_tokens\":5},\"schema_version\":3}\n",
            "{\"schema_version\":3}\n",
        )
    );
}

#[test]
fn batch_hashes_the_spec_api_keys_document() {
    let line = br#"{"keys":[{"name":"ci","key":"tfk_8c1d0e5f9a7b4c2e","created_at":"2022-01-01T00:00:00Z","scopes":["infer"]}],"schema_version":2}"#;
    let mut out = Vec::new();
    assert!(hop().migrate_data_batch(line, &mut out).is_empty());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"keys\":[{\"name\":\"ci\",\"key_sha256\":\"60c535de7bd511dcf63c560edede9eb5eee3bb7aed79fb5b6b99e4b222b0c4bb\",\"key_prefix\":\"tfk_8c1d\",\"created_at\":\"2022-01-01T00:00:00Z\",\"scopes\":[\"infer\"]}],\"schema_version\":3}\n"
    );
}

#[test]
fn config_rule_is_reachable_through_the_hop() {
    let hop = hop();
    let rule = hop.config_rule().expect("config rule");
    let e = rule.migrate("streaming = true\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("streaming"));
}

//! Tests of the hop as the host drives it: the descriptor, and data batches through
//! `Hop::migrate_data_batch` (failures come back with their index in the batch).

use super::*;

#[test]
fn descriptor_names_the_hop_and_its_rules() {
    let d = hop().descriptor();
    assert_eq!(
        (d.name.as_str(), d.from.as_str(), d.to.as_str()),
        (NAME, "0.1.0", "1.0.0")
    );
    assert!(d.rules.config && d.rules.data && d.rules.model);
    assert_eq!(d.target_schema_version, Some(1));
    assert!(d
        .breaking_changes
        .iter()
        .any(|c| c.contains("request_timeout_ms")));
}

#[test]
fn batch_migrates_good_records_and_reports_bad_ones_by_index() {
    let batch = b"{\"id\":\"a\"}\n[1,2]\n{\"id\":\"b\",\"prompt_tokens\":-1}\nnot json\n{\"schema_version\":1}\n{}\n";
    let mut out = Vec::new();
    let failures = hop().migrate_data_batch(batch, &mut out);
    let indexes: Vec<u64> = failures.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [1, 2, 3, 4]);
    assert!(
        failures[0].1.message.contains("found array"),
        "{}",
        failures[0].1
    );
    assert_eq!(failures[1].1.field.as_deref(), Some("prompt_tokens"));
    assert!(
        failures[2].1.message.contains("not valid JSON"),
        "{}",
        failures[2].1
    );
    assert_eq!(failures[3].1.field.as_deref(), Some("schema_version"));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"id\":\"a\",\"schema_version\":1}\n{\"schema_version\":1}\n"
    );
}

#[test]
fn batch_migrates_the_spec_sample_record() {
    let line = br#"{"id":"req-000001","model":"bert-base","prompt_tokens":12,"completion_tokens":30,"latency_ms":123,"timestamp":1640995200}"#;
    let mut out = Vec::new();
    assert!(hop().migrate_data_batch(line, &mut out).is_empty());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"id\":\"req-000001\",\"model\":\"bert-base\",\"prompt_tokens\":12,\"completion_tokens\":30,\"latency_ms\":123,\"timestamp\":1640995200,\"schema_version\":1}\n"
    );
}

#[test]
fn config_rule_is_reachable_through_the_hop() {
    let hop = hop();
    let rule = hop.config_rule().expect("config rule");
    let e = rule.migrate("port = \"eighty\"\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("port"));
    let ok = rule.migrate("host = \"h\"\n").unwrap();
    assert!(
        ok.content.starts_with("bind_address = \"h\"\n"),
        "{}",
        ok.content
    );
}

//! The one-pass data path (plugin-api 1.5.0 edit rules: the host indexes each record once,
//! the hops return edits, the host writes each record once) against the hops run one by one
//! on text, with the real binary and the real plugins, on records chosen to reach every corner
//! of the host's index: whitespace, escaped and repeated keys, deep nesting, timestamps and API
//! keys at depth, records each hop refuses, blank lines, several batches.

mod common;
use common::*;

use std::path::Path;

use serde_json::Value;

/// Records of a 0.1.0 request log that exercise the index; each line is one record (or a blank
/// line, or a record no hop can read).
const CORNERS: &[&str] = &[
    r#"{"id":"req-1","model":"bert-base","prompt_tokens":12,"completion_tokens":30,"latency_ms":123,"timestamp":1640995200}"#,
    r#"  { "id" : "req-2" , "model":"m", "latency_ms" : 12.5 , "timestamp" : 1640995201 }  "#,
    r#"{"id":"req-3","client":{"ip":"10.0.0.1", "seen_at":1640995100,"ratio":1.0E2,"name":"\u00e9\/"},"timestamp":null}"#,
    r#"{"id":"req-4","keys":[{"name":"ci","key":"tfk_8c1d0e5f9a7b4c2e","created_at":1640995200,"scopes":["infer"]}],"timestamp":"2022-01-01T00:00:00Z"}"#,
    r#"{"key":"top-level-key","scopes":["a"],"deep":{"a":[{"b":{"key":"ключ-éàü-1234","scopes":[],"created_at":5}}]}}"#,
    r#"{"time\u0073tamp":1640995200,"prompt\u005ftokens":3,"completion_tokens":4}"#,
    r#"{"id":"dup","id":"dup2","timestamp":1,"timestamp":2}"#,
    r#"{"id":"nested-dup","client":{"seen_at":1,"seen_at":2,"key":"k","scopes":[]}}"#,
    r#"{"id":"floats","latency_ms":0,"prompt_tokens":0,"completion_tokens":7,"x":-0.0,"y":1e-7}"#,
    "",
    "   ",
    r#"{"id":"bad-json","timestamp":}"#,
    r#"[1,2,3]"#,
    r#"{"id":"bad-count","prompt_tokens":-1}"#,
    r#"{"id":"bad-timestamp","client":{"seen_at":1.5}}"#,
    r#"{"id":"bad-latency","latency_ms":"slow"}"#,
    r#"{"id":"metrics-taken","latency_ms":5,"metrics":{}}"#,
    r#"{"id":"hashed","keys":[{"key":"k","key_sha256":"x","scopes":[]}]}"#,
    r#"{"id":"out-of-range","timestamp":253402300800}"#,
    "{\"id\":\"crlf\",\"timestamp\":7}\r",
    r#"{}"#,
];

/// The corners, then enough ordinary records for several batches (the default batch is 4096).
fn request_log() -> String {
    let mut log = String::new();
    for line in CORNERS {
        log.push_str(line);
        log.push('\n');
    }
    log.push_str(&"[".repeat(70));
    log.push_str(&"]".repeat(70));
    log.push('\n');
    let deep = format!(
        "{{\"id\":\"deep\",\"v\":{}1{}}}\n",
        "[".repeat(80),
        "]".repeat(80)
    );
    log.push_str(&deep);
    for i in 0..9000u64 {
        if i % 97 == 0 {
            log.push_str(&format!(
                "{{\"id\":\"req-{i:09}\",\"model\":\"minilm\",\"prompt_tokens\":{},\"latency_ms\":{},\"timestamp\":{},\"client\":{{\"ip\":\"10.1.2.3\",\"seen_at\":{}}}}}\n",
                i % 2048,
                i % 5000,
                1_640_995_200 + i,
                1_640_995_140 + i
            ));
        } else {
            log.push_str(&format!(
                "{{\"id\":\"req-{i:09}\",\"model\":\"bert-base\",\"prompt_tokens\":{},\"completion_tokens\":{},\"latency_ms\":{},\"timestamp\":{}}}\n",
                i % 2048,
                i % 1024,
                i % 5000,
                1_640_995_200 + i
            ));
        }
    }
    log
}

fn install_with_log() -> tempfile::TempDir {
    let install = sample_install();
    write(install.path(), "data/requests.jsonl", &request_log());
    install
}

/// The migration's `--json` report.
fn migrate_quarantining(root: &Path, env: &[(&str, &str)]) -> String {
    ok(&migrate_env(
        &[
            "--json",
            "version",
            "--path",
            root.to_str().unwrap(),
            "--to",
            "2.1.0",
            "--on-invalid",
            "quarantine",
        ],
        env,
    ))
}

/// The data step of a `--json` report.
fn data_step(report: &str) -> Value {
    let report: Value = serde_json::from_str(report).expect("a JSON report");
    step(&report, "data").cloned().expect("a data step")
}

#[test]
fn the_one_pass_path_gives_what_the_hops_run_one_by_one_give() {
    let programs = install_with_log();
    let one_pass = install_with_log();
    let hop_by_hop = install_with_log();
    let fused = data_step(&migrate_quarantining(programs.path(), &[]));
    let by_rules = data_step(&migrate_quarantining(
        one_pass.path(),
        &[("TRUSTFORMERS_MIGRATE_RULES_ONLY", "1")],
    ));
    migrate_quarantining(
        hop_by_hop.path(),
        &[("TRUSTFORMERS_MIGRATE_HOP_BY_HOP", "1")],
    );
    let a = tree_hash(one_pass.path());
    assert_eq!(
        a,
        tree_hash(hop_by_hop.path()),
        "one pass differs from hop by hop"
    );
    assert_eq!(
        a,
        tree_hash(programs.path()),
        "the programs' pass differs from the rules'"
    );
    // The declared programs (plugin-api 1.7) migrated the ordinary records in the host's one
    // fused pass, and left the corners to the rules; with RULES_ONLY they migrated none.
    let records = fused["records"].as_u64().expect("records");
    let by_program = fused["records_by_program"].as_u64().unwrap_or(0);
    assert!(
        by_program >= 9000 && by_program < records,
        "{by_program} of {records} records by the programs: {fused}"
    );
    assert!(by_rules.get("records_by_program").is_none(), "{by_rules}");
    assert_eq!(by_rules["records"], fused["records"]);
    // Not vacuous: records were migrated, refused into the quarantine, and kept as blank lines.
    let out = read(one_pass.path(), "data/requests.jsonl");
    assert!(out.contains(r#""schema_version":3"#), "{}", &out[..500]);
    assert!(
        out.contains("\n\n   \n"),
        "blank lines stay where they were"
    );
    let quarantined = read(
        one_pass.path(),
        "data/.quarantine/requests.jsonl.rejected.jsonl",
    );
    for id in [
        "bad-json",
        "bad-count",
        "bad-timestamp",
        "bad-latency",
        "metrics-taken",
        "hashed",
        "out-of-range",
    ] {
        assert!(quarantined.contains(id), "{id} is not in the quarantine");
    }
    assert!(
        a.contains_key("data/.quarantine/requests.jsonl.rejected.jsonl"),
        "{a:?}"
    );
}

/// The migrated log's records, read as JSON (blank lines skipped).
fn records(root: &Path) -> Vec<Value> {
    read(root, "data/requests.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a migrated record is JSON"))
        .collect()
}

/// What each corner record becomes, read as JSON (the layout is checked below).
fn migrated(root: &Path, id: &str) -> Value {
    records(root)
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no record {id}"))
}

#[test]
fn records_read_as_the_spec_says_through_the_one_pass_path() {
    let install = install_with_log();
    migrate_quarantining(install.path(), &[]);
    let root = install.path();
    let r1 = migrated(root, "req-1");
    assert_eq!(
        serde_json::to_string(&r1).unwrap(),
        r#"{"id":"req-1","model":"bert-base","usage":{"input_tokens":12,"output_tokens":30},"metrics":{"latency_ms":123,"tokens_per_second":243.9},"timestamp":"2022-01-01T00:00:00Z","schema_version":3}"#
    );
    // Repeated keys: the first place, the last value, as a `Map` reads them.
    let dup = migrated(root, "dup2");
    assert_eq!(dup["timestamp"], "1970-01-01T00:00:02Z");
    let nested = migrated(root, "nested-dup");
    assert_eq!(nested["client"]["seen_at"], "1970-01-01T00:00:02Z");
    assert!(nested["client"].get("key").is_none(), "{nested}");
    // Escaped keys are read as the keys they spell, and written as serde_json writes them.
    let out = read(root, "data/requests.jsonl");
    assert!(
        out.lines().any(|l| l
            == r#"{"timestamp":"2022-01-01T00:00:00Z","usage":{"input_tokens":3,"output_tokens":4},"schema_version":3}"#),
        "{out:.2000}"
    );
    // Whitespace between top-level entries goes, as it always did; values stay as written.
    assert!(
        out.lines().any(|l| l
            == r#"{"id":"req-2","model":"m","metrics":{"latency_ms":12.5,"tokens_per_second":null},"timestamp":"2022-01-01T00:00:01Z","schema_version":3}"#),
        "{out:.2000}"
    );
    let keys = migrated(root, "req-4");
    assert!(keys["keys"][0].get("key").is_none());
    assert_eq!(keys["keys"][0]["key_prefix"], "tfk_8c1d");
    let top = records(root)
        .into_iter()
        .find(|r| r["key_prefix"] == "top-leve")
        .expect("the API key record");
    assert_eq!(top["deep"]["a"][0]["b"]["key_prefix"], "ключ-éàü");
    assert_eq!(
        top["deep"]["a"][0]["b"]["created_at"],
        "1970-01-01T00:00:05Z"
    );
}

/// The spec's "untouched values pass through as written": in a nested object a hop edits, only
/// the edited member changes. Before plugin-api 1.5.0 the hops re-printed such an object whole
/// (`1.0E2` became `100.0`, `\u00e9` became `é`, the spaces went): the one listed difference.
#[test]
fn untouched_values_inside_an_edited_object_pass_through_as_written() {
    let install = install_with_log();
    migrate_quarantining(install.path(), &[]);
    let out = read(install.path(), "data/requests.jsonl");
    let line = out
        .lines()
        .find(|l| l.contains(r#""id":"req-3""#))
        .expect("req-3");
    assert_eq!(
        line,
        r#"{"id":"req-3","client":{"ip":"10.0.0.1", "seen_at":"2021-12-31T23:58:20Z","ratio":1.0E2,"name":"\u00e9\/"},"timestamp":null,"schema_version":3}"#
    );
}

/// A plugin whose declared program says more than its rule does (the failing-hop fixture with
/// `FAILING_HOP_PROGRAM=lying` adds `"lied": 1` in its program only): the host runs the first
/// batch both ways, sees the difference, and lets the rules migrate every record, with a
/// warning that names the hops and the place.
#[test]
fn a_program_that_disagrees_with_its_rule_is_dropped_and_the_rules_decide() {
    let plugins = failing_plugin_dir();
    let install = install_with_log();
    // The fixture has no model rule: the sample's model would stop the run at 2.0.0 → 2.1.0.
    std::fs::remove_dir_all(install.path().join("models")).expect("remove models");
    let root = install.path().to_str().unwrap();
    let report = ok(&migrate_env(
        &[
            "--json",
            "--plugin-dir",
            plugins.path().to_str().unwrap(),
            "version",
            "--path",
            root,
            "--to",
            "2.1.0",
            "--on-invalid",
            "quarantine",
        ],
        &[("FAILING_HOP_PROGRAM", "lying")],
    ));
    let data = data_step(&report);
    assert!(data.get("records_by_program").is_none(), "{data}");
    let warnings = data["warnings"].as_array().expect("warnings");
    let dropped = warnings
        .iter()
        .filter_map(|w| w.as_str())
        .find(|w| w.contains("disagree with their rules"))
        .unwrap_or_else(|| panic!("no warning says the programs were dropped: {warnings:?}"));
    // It names the hop and the first record on which the two differ (the first file the run
    // migrates is the API keys document, whose one record the lie changes).
    assert!(
        dropped.contains("failing_v1_to_v2") && dropped.contains("data/api_keys.json (record 1)"),
        "{dropped}"
    );
    let out = read(install.path(), "data/requests.jsonl");
    assert!(
        !out.contains("\"lied\""),
        "a record carries the program's lie"
    );
    assert!(out.contains(r#""schema_version":3"#), "{}", &out[..300]);
}

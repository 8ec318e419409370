//! The full chain 0.1.0 → 2.1.0 and every hop, checked against the spec with values computed
//! here independently of the plugins.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

fn migrate_to(root: &Path, to: &str) -> String {
    ok(&migrate(&[
        "version",
        "--path",
        root.to_str().unwrap(),
        "--to",
        to,
    ]))
}

fn toml(root: &Path) -> toml_edit::DocumentMut {
    read(root, "config/server.toml")
        .parse()
        .expect("migrated server.toml is valid TOML")
}

#[test]
fn full_chain_equals_hop_by_hop_and_is_deterministic() {
    let full = sample_install();
    let stepwise = sample_install();
    let again = sample_install();
    migrate_to(full.path(), "2.1.0");
    migrate_to(again.path(), "2.1.0");
    for to in ["1.0.0", "2.0.0", "2.1.0"] {
        migrate_to(stepwise.path(), to);
        assert_eq!(read(stepwise.path(), "VERSION"), format!("{to}\n"));
    }
    let a = tree_hash(full.path());
    assert_eq!(
        a,
        tree_hash(stepwise.path()),
        "fused chain differs from hop-by-hop"
    );
    assert_eq!(
        a,
        tree_hash(again.path()),
        "two identical installations gave different trees"
    );
}

#[test]
fn files_outside_the_spec_stay_byte_identical_and_modes_are_kept() {
    let install = sample_install();
    let root = install.path();
    std::fs::set_permissions(
        root.join("data/requests.jsonl"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("config/server.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = tree_hash(root);
    let out = migrate_to(root, "2.1.0");
    let after = tree_hash(root);
    for rel in [
        "config/logging.toml",
        "data/README.txt",
        "models/bert-tiny/model.safetensors",
        "models/bert-tiny/config.json",
    ] {
        assert_eq!(before[rel], after[rel], "{rel} changed");
    }
    assert_eq!(after["data/requests.jsonl"].0, 0o640);
    assert_eq!(after["config/server.toml"].0, 0o600);
    assert_ne!(
        before["data/requests.jsonl"].1,
        after["data/requests.jsonl"].1
    );
    assert!(out.contains("config/logging.toml: not migrated"), "{out}");
    let new_files: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(new_files, ["VERSION", "models/bert-tiny/metadata.json"]);
}

#[test]
fn hop_0_1_to_1_0() {
    let install = sample_install();
    let root = install.path();
    let original = jsonl(root, "data/requests.jsonl");
    migrate_to(root, "1.0.0");
    assert_eq!(read(root, "VERSION"), "1.0.0\n");

    let doc = toml(root);
    assert_eq!(doc["bind_address"].as_str(), Some("0.0.0.0"));
    assert_eq!(doc["port"].as_integer(), Some(8080));
    assert_eq!(doc["model_dir"].as_str(), Some("models"));
    assert_eq!(doc["default_model"].as_str(), Some("bert-tiny"));
    assert_eq!(doc["max_batch_size"].as_integer(), Some(32));
    assert_eq!(doc["request_timeout_ms"].as_integer(), Some(30_000));
    assert_eq!(doc["log_level"].as_str(), Some("info"));
    assert_eq!(doc["workers"]["count"].as_integer(), Some(4));
    assert_eq!(doc["workers"]["max_queue"].as_integer(), Some(1024));
    assert_eq!(
        doc["metrics_port"].as_integer(),
        Some(9090),
        "unknown keys are kept"
    );
    for gone in ["host", "model_path", "batch_size", "timeout", "num_threads"] {
        assert!(doc.get(gone).is_none(), "{gone} should be renamed");
    }
    let text = read(root, "config/server.toml");
    assert!(
        text.starts_with("# TrustformeRS Serve configuration\n# Production inference node\n"),
        "{text}"
    );
    assert!(
        text.contains("# Where the default model lives\nmodel_dir"),
        "{text}"
    );
    assert!(text.contains("# listen on all interfaces"), "{text}");

    let migrated = jsonl(root, "data/requests.jsonl");
    assert_eq!(migrated.len(), original.len());
    for (old, new) in original.iter().zip(&migrated) {
        let mut expected = old.as_object().unwrap().clone();
        expected.insert("schema_version".into(), json!(1));
        assert_eq!(
            serde_json::to_string(new).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }
    let meta: Value = serde_json::from_str(&read(root, "models/bert-tiny/metadata.json")).unwrap();
    let keys: Vec<&String> = meta.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["name", "format", "architecture", "files", "schema_version"]
    );
    assert_eq!(meta["name"], "bert-tiny");
    assert_eq!(meta["format"], "safetensors");
    assert_eq!(meta["architecture"], "BertModel");
    let paths: Vec<&str> = meta["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    for f in meta["files"].as_array().unwrap() {
        let bytes = std::fs::read(
            root.join("models/bert-tiny")
                .join(f["path"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(f["size"], bytes.len());
        assert_eq!(f["sha256"], sha256_hex(&bytes));
    }
}

#[test]
fn full_chain_records_config_and_models_match_the_spec() {
    let install = sample_install();
    let root = install.path();
    migrate_to(root, "2.1.0");
    assert_eq!(read(root, "VERSION"), "2.1.0\n");

    // The first request: {"id":"req-000001","model":"bert-base","prompt_tokens":155,
    // "completion_tokens":202,"latency_ms":666,"timestamp":1640995260}
    let first = read(root, "data/requests.jsonl")
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        first,
        r#"{"id":"req-000001","model":"bert-base","usage":{"input_tokens":155,"output_tokens":202},"metrics":{"latency_ms":666,"tokens_per_second":303.3},"timestamp":"2022-01-01T00:01:00Z","schema_version":3}"#
    );
    for r in jsonl(root, "data/requests.jsonl")
        .iter()
        .chain(&jsonl(root, "data/archive/2024/requests.jsonl"))
    {
        assert_eq!(r["schema_version"], 3);
        assert!(r.get("latency_ms").is_none() && r.get("prompt_tokens").is_none());
        let latency = r["metrics"]["latency_ms"].as_u64().unwrap();
        let tps = &r["metrics"]["tokens_per_second"];
        match r["usage"].get("output_tokens").and_then(Value::as_u64) {
            Some(out) if latency > 0 => {
                let want = (out as f64 / (latency as f64 / 1000.0) * 100.0).round() / 100.0;
                assert_eq!(tps.as_f64(), Some(want), "{r}");
            }
            _ => assert!(tps.is_null(), "{r}"),
        }
        if let Some(client) = r.get("client") {
            assert!(
                client["seen_at"].as_str().unwrap().ends_with('Z'),
                "nested *_at converted: {r}"
            );
            assert!(
                client.get("schema_version").is_none(),
                "schema_version only on records"
            );
        }
    }

    let keys: Value = serde_json::from_str(&read(root, "data/api_keys.json")).unwrap();
    assert_eq!(keys["schema_version"], 3);
    let ci = &keys["keys"][0];
    assert_eq!(
        serde_json::to_string(ci).unwrap(),
        json!({"name":"ci","key_sha256": sha256_hex(b"tfk_8c1d0e5f9a7b4c2e"),"key_prefix":"tfk_8c1d","created_at":"2022-01-01T00:00:00Z","scopes":["infer"]}).to_string()
    );
    assert!(keys["keys"][1]["revoked_at"].is_null());
    assert!(
        !read(root, "data/api_keys.json").contains("tfk_0a9b8c7d6e5f4a3b"),
        "plaintext key removed"
    );

    let doc = toml(root);
    assert_eq!(doc["server"]["address"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(doc["server"]["request_timeout"].as_str(), Some("30s"));
    assert_eq!(doc["models"]["directory"].as_str(), Some("models"));
    assert_eq!(doc["models"]["default"].as_str(), Some("bert-tiny"));
    assert_eq!(doc["batching"]["max_batch_size"].as_integer(), Some(32));
    assert_eq!(doc["batching"]["max_wait"].as_str(), Some("10ms"));
    assert_eq!(doc["workers"]["count"].as_integer(), Some(4));
    assert_eq!(doc["logging"]["level"].as_str(), Some("info"));
    assert_eq!(doc["logging"]["format"].as_str(), Some("text"));
    assert_eq!(doc["streaming"]["enabled"].as_bool(), Some(true));
    assert_eq!(doc["streaming"]["chunk_tokens"].as_integer(), Some(16));
    assert_eq!(doc["rate_limit"]["enabled"].as_bool(), Some(false));
    assert_eq!(
        doc["rate_limit"]["requests_per_minute"].as_integer(),
        Some(600)
    );
    assert_eq!(doc["rate_limit"]["burst"].as_integer(), Some(50));
    assert_eq!(doc["metrics_port"].as_integer(), Some(9090));
    let text = read(root, "config/server.toml");
    assert!(
        text.starts_with("# TrustformeRS Serve configuration\n# Production inference node\n"),
        "{text}"
    );
    assert!(
        text.contains("# trace|debug|info|warn|error"),
        "inline comment kept: {text}"
    );

    let meta: Value = serde_json::from_str(&read(root, "models/bert-tiny/metadata.json")).unwrap();
    assert_eq!(meta["schema_version"], 3);
    assert_eq!(meta["parameters"], 64 * 16 + 32 + 16 * 16 + 16 + 16 * 16);
    assert_eq!(meta["dtypes"], json!(["F32", "I64"]));
    assert_eq!(
        meta["optimization"],
        json!({"optimized": false, "dtype": null, "source_sha256": null})
    );
    assert_eq!(
        meta["serving"],
        json!({"streaming": true, "kv_cache": {"enabled": true, "max_tokens": 32}})
    );

    let v = ok(&migrate(&[
        "validate",
        "--path",
        root.to_str().unwrap(),
        "--version",
        "2.1.0",
    ]));
    assert!(v.contains("valid"), "{v}");
}

#[test]
fn validate_refuses_the_wrong_release() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    migrate_to(install.path(), "2.0.0");
    ok(&migrate(&[
        "validate",
        "--path",
        root,
        "--version",
        "2.0.0",
    ]));
    let out = migrate(&["validate", "--path", root, "--version", "2.1.0", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rules: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"version_marker") && rules.contains(&"record_schema_version"),
        "{report:#}"
    );
}

/// A `*.json` document that is an array of records is migrated record by record: the same
/// records as the same data in a `*.jsonl` file, printed in the document's style, and the
/// migration's memory does not follow the document's size (when documents were parsed whole,
/// a document of these records, 8.6 MB, took a release build to 186 MiB).
#[test]
fn a_large_array_document_migrates_like_lines_in_bounded_memory() {
    let install = sample_install();
    let records: Vec<Value> = (0..40_000u64)
        .map(|i| {
            let model = ["bert-tiny", "llama-7b"][i as usize % 2];
            json!({
                "id": format!("req-{i:09}"),
                "model": model,
                "prompt_tokens": 100 + i % 900,
                "completion_tokens": i % 500,
                "latency_ms": 1 + i % 4000,
                "timestamp": 1_640_995_200 + i,
                "note": "commas, ] and } inside a string",
            })
        })
        .collect();
    let doc = serde_json::to_string_pretty(&records).unwrap() + "\n";
    assert!(doc.len() > 8 << 20, "{}", doc.len());
    write(install.path(), "data/history.json", &doc);
    let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
    write(install.path(), "data/history_lines.jsonl", &lines);

    let report = install.path().join("report.json");
    ok(&migrate(&[
        "--quiet",
        "version",
        "--path",
        install.path().to_str().unwrap(),
        "--to",
        "2.1.0",
        "--report",
        report.to_str().unwrap(),
    ]));

    let text = read(install.path(), "data/history.json");
    let migrated: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(migrated, jsonl(install.path(), "data/history_lines.jsonl"));
    assert_eq!(migrated.len(), records.len());
    assert_eq!(migrated[7]["schema_version"], 3, "{}", migrated[7]);
    let pretty = serde_json::to_string_pretty(&migrated).unwrap() + "\n";
    assert!(text == pretty, "printed in the original's (pretty) style");

    let report: Value = serde_json::from_str(&read(install.path(), "report.json")).unwrap();
    let peak = report["peak_rss_bytes"].as_u64().unwrap();
    assert!(peak < 128 << 20, "peak RSS {} MiB", peak >> 20);
}

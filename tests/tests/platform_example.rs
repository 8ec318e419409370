//! The example third-party plugin (examples/hop-v2_1-to-v3), built as a third party builds it,
//! dropped into a plugin folder next to the three real plugins, extends the chain to 3.0.0.

mod common;
mod platform_support;

use std::process::Command;

use common::*;
use platform_support::*;
use serde_json::Value;

const EXAMPLE: &str = "libv2_1_to_v3.so";

#[test]
fn the_example_plugin_migrates_0_1_0_to_3_0_0_through_four_hops() {
    let dir = plugin_dir();
    install(&example_hop(), dir.path(), EXAMPLE);
    let doc = list(dir.path(), &[], &[]);
    assert_eq!(active(&doc), 4, "{doc:#}");
    let d = &entry(&doc, EXAMPLE)["descriptor"];
    assert_eq!(
        (d["name"].as_str(), d["from"].as_str()),
        (Some("v2_1_to_v3"), Some("2.1.0"))
    );
    assert_eq!(
        (d["to"].as_str(), d["target_schema_version"].as_u64()),
        (Some("3.0.0"), Some(4))
    );

    let install = sample_install();
    let root = install.path();
    let out = ok(&migrate_to(dir.path(), root, "3.0.0", &["--json"], &[]));
    let report: Value = serde_json::from_str(&out).expect("report JSON");
    assert_eq!(report["overall_status"], "Completed", "{report:#}");
    assert_eq!(read(root, "VERSION"), "3.0.0\n");
    assert_config_renamed(&read(root, "config/server.toml"));
    assert_records_migrated(root);
    let meta: Value = serde_json::from_str(&read(root, "models/bert-tiny/metadata.json")).unwrap();
    assert_eq!(meta["schema_version"], 4);
    let r = root.to_str().unwrap();
    let valid = ok(&run_in(
        dir.path(),
        &["validate", "--path", r, "--version", "3.0.0"],
        &[],
    ));
    assert!(valid.contains("valid"), "{valid}");
}

fn assert_config_renamed(config: &str) {
    let doc: toml_edit::DocumentMut = config.parse().expect("server.toml");
    let rate = doc["rate_limit"].as_table().expect("[rate_limit]");
    assert_eq!(
        rate.get("rpm").and_then(|i| i.as_integer()),
        Some(600),
        "{config}"
    );
    assert!(!rate.contains_key("requests_per_minute"), "{config}");
    let keys: Vec<&str> = rate.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["enabled", "rpm", "burst"],
        "kept its place: {config}"
    );
    assert!(
        config.starts_with("# TrustformeRS Serve configuration\n"),
        "{config}"
    );
}

fn assert_records_migrated(root: &std::path::Path) {
    let records = jsonl(root, "data/requests.jsonl");
    assert!(!records.is_empty());
    for r in &records {
        assert_eq!(r["schema_version"], 4, "{r}");
        let metrics = r["metrics"].as_object().expect("metrics");
        assert!(metrics.contains_key("output_tokens_per_second"), "{r}");
        assert!(!metrics.contains_key("tokens_per_second"), "{r}");
    }
    let keys: Value = serde_json::from_str(&read(root, "data/api_keys.json")).unwrap();
    assert_eq!(keys["schema_version"], 4, "{keys}");
}

#[test]
fn the_example_plugins_own_unit_tests_pass() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .arg("test")
        .arg("--manifest-path")
        .arg(workspace_root().join("examples/hop-v2_1-to-v3/Cargo.toml"))
        .arg("--target-dir")
        .arg(workspace_root().join("target/fixtures"))
        .output()
        .expect("run cargo test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("test result: ok"), "{text}");
}

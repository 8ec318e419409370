//! The command line around a migration: detection, info, dry run, single-kind commands.

mod common;
use common::*;

use serde_json::Value;

#[test]
fn version_is_detected_and_a_disagreeing_from_is_refused() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let out = migrate(&[
        "version", "--path", root, "--from", "1.0.0", "--to", "2.1.0",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    std::fs::write(install.path().join("config/server.toml"), "port = 1\n").unwrap();
    let out = migrate(&["version", "--path", root, "--to", "2.1.0"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).contains("pass --from"), "{}", stderr(&out));
}

#[test]
fn dry_run_writes_nothing_at_all() {
    let install = sample_install();
    let before = full_tree_hash(install.path());
    let out = ok(&migrate(&[
        "version",
        "--path",
        install.path().to_str().unwrap(),
        "--to",
        "2.1.0",
        "--dry-run",
    ]));
    assert!(out.contains("DryRun"), "{out}");
    assert_eq!(full_tree_hash(install.path()), before);
}

#[test]
fn info_shows_path_breaking_changes_and_an_estimate_from_real_sizes() {
    let out = ok(&migrate(&[
        "info", "--from", "0.1.0", "--to", "2.1.0", "--json",
    ]));
    let info: Value = serde_json::from_str(&out).unwrap();
    let steps: Vec<(&str, &str)> = info["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["from"].as_str().unwrap(), s["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [("0.1.0", "1.0.0"), ("1.0.0", "2.0.0"), ("2.0.0", "2.1.0")]
    );
    assert!(!info["breaking_changes"].as_array().unwrap().is_empty());

    let install = sample_install();
    let out = ok(&migrate(&[
        "info",
        "--path",
        install.path().to_str().unwrap(),
        "--to",
        "2.1.0",
        "--json",
    ]));
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["from"], "0.1.0", "detected");
    let data: u64 = [
        "data/requests.jsonl",
        "data/archive/2024/requests.jsonl",
        "data/api_keys.json",
    ]
    .iter()
    .map(|f| std::fs::metadata(install.path().join(f)).unwrap().len())
    .sum();
    assert_eq!(info["data_bytes"], data);
    assert!(info["estimated_duration_secs"].as_f64().unwrap() > 0.0);

    let text = ok(&migrate(&["info", "--from", "0.1.0", "--to", "2.1.0"]));
    assert!(
        text.contains("0.1.0 → 1.0.0") && text.contains("breaking changes"),
        "{text}"
    );
}

#[test]
fn no_path_backwards_says_what_to_do() {
    let out = migrate(&["info", "--from", "2.1.0", "--to", "1.0.0"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).contains("rollback"), "{}", stderr(&out));
}

#[test]
fn single_kind_commands_migrate_only_their_part() {
    let install = sample_install();
    let root = install.path();
    let before = tree_hash(root);
    ok(&migrate(&[
        "config",
        "--config",
        root.join("config/server.toml").to_str().unwrap(),
        "--to",
        "1.0.0",
    ]));
    let after = tree_hash(root);
    assert_ne!(before["config/server.toml"], after["config/server.toml"]);
    assert_eq!(
        before.len(),
        after.len(),
        "no VERSION written by a single-kind command"
    );
    assert!(read(root, "config/server.toml").contains("bind_address"));

    ok(&migrate(&[
        "data",
        "--data-path",
        root.join("data").to_str().unwrap(),
        "--from",
        "0.1.0",
        "--to",
        "1.0.0",
    ]));
    assert!(jsonl(root, "data/requests.jsonl")
        .iter()
        .all(|r| r["schema_version"] == 1));

    ok(&migrate(&[
        "models",
        "--models-path",
        root.join("models").to_str().unwrap(),
        "--from",
        "0.1.0",
        "--to",
        "1.0.0",
    ]));
    assert!(root.join("models/bert-tiny/metadata.json").is_file());
    assert!(!root.join("VERSION").exists());
}

#[test]
fn unknown_keys_in_migration_config_are_an_error() {
    let install = sample_install();
    let cfg = install.path().join("mc.toml");
    std::fs::write(&cfg, "[global]\nrollback_on_falure = true\n").unwrap();
    let before = tree_hash(install.path());
    let out = migrate_env(
        &[
            "version",
            "--path",
            install.path().to_str().unwrap(),
            "--to",
            "2.1.0",
        ],
        &[("TRUSTFORMERS_MIGRATION_CONFIG", cfg.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("rollback_on_falure"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_hash(install.path()), before);
}

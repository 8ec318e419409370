//! Operability: the audit trail and history after successful, failed and rolled-back
//! migrations, JSON output of every command, and the documented exit codes.

mod common;
use common::*;

use std::path::Path;

use serde_json::Value;

fn audit(root: &Path) -> Vec<Value> {
    read(root, ".migrate/audit.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn history(root: &Path) -> Vec<Value> {
    let out = ok(&migrate(&[
        "history",
        "--path",
        root.to_str().unwrap(),
        "--json",
    ]));
    serde_json::from_str::<Value>(&out)
        .expect("history --json")
        .as_array()
        .expect("array")
        .clone()
}

fn actions(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn audit_and_history_of_a_successful_migration() {
    let install = sample_install();
    let root = install.path();
    let out = ok(&migrate(&[
        "version",
        "--path",
        root.to_str().unwrap(),
        "--to",
        "2.1.0",
        "--json",
    ]));
    let result: Value = serde_json::from_str(&out).expect("version --json");
    assert_eq!(result["overall_status"], "Completed");
    assert!(result["peak_rss_bytes"].as_u64().unwrap() > 0);

    let entries = audit(root);
    let acts = actions(&entries);
    assert_eq!(acts.first().map(String::as_str), Some("migration_started"));
    assert_eq!(acts.last().map(String::as_str), Some("migration_finished"));
    assert_eq!(acts.iter().filter(|a| *a == "plugin_loaded").count(), 3);
    assert_eq!(acts.iter().filter(|a| *a == "backup_created").count(), 1);
    for e in entries.iter().filter(|e| e["action"] == "plugin_loaded") {
        let file = std::fs::read(e["file"].as_str().unwrap()).unwrap();
        assert_eq!(e["sha256"], sha256_hex(&file));
    }
    for e in &entries {
        assert!(
            e["time"].as_str().unwrap().ends_with('Z') && !e["user"].as_str().unwrap().is_empty()
        );
        assert!(!e["host"].as_str().unwrap().is_empty());
    }
    let steps: Vec<&str> = entries
        .iter()
        .filter(|e| e["action"] == "step_finished")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, STEPS);

    let h = history(root);
    assert_eq!(h.len(), 1);
    assert_eq!(
        (
            h[0]["from"].as_str(),
            h[0]["to"].as_str(),
            h[0]["status"].as_str()
        ),
        (Some("0.1.0"), Some("2.1.0"), Some("Completed"))
    );
    let backup = h[0]["backup"].as_str().unwrap();
    assert!(Path::new(backup).join("metadata.json").is_file());
    let data = h[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "data")
        .unwrap();
    assert_eq!(data["records"], 261);
    assert!(h[0]["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn audit_and_history_of_a_failed_migration() {
    let install = sample_install();
    let root = install.path();
    let toml = read(root, "config/server.toml").replace("port = 8080", "port = \"eighty\"");
    write(root, "config/server.toml", &toml);
    let out = migrate(&[
        "version",
        "--path",
        root.to_str().unwrap(),
        "--to",
        "2.1.0",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let result: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(result["overall_status"], "Failed");
    assert_eq!(result["exit_code"], 3);
    let h = history(root);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["status"], "Failed");
    assert!(h[0]["error"].as_str().unwrap().contains("port"));
    assert!(
        h[0]["backup"].is_null(),
        "no backup when nothing was about to change"
    );
    assert_eq!(
        actions(&audit(root)).last().map(String::as_str),
        Some("migration_finished")
    );
}

#[test]
fn audit_and_history_of_a_rolled_back_migration() {
    let install = sample_install();
    let root = install.path();
    // Big enough that a debug build cannot migrate it within the one-second limit.
    let line = r#"{"id":"req-x","model":"m","prompt_tokens":12,"completion_tokens":30,"latency_ms":123,"timestamp":1640995200}"#;
    write(root, "data/big.jsonl", &format!("{line}\n").repeat(400_000));
    let cfg = root.join("mc.toml");
    std::fs::write(
        &cfg,
        "[global]\ntimeout_seconds = 1\n[data_migration]\nbatch_size = 100\n",
    )
    .unwrap();
    let before = tree_hash(root);
    let out = migrate(&[
        "--config-file",
        cfg.to_str().unwrap(),
        "version",
        "--path",
        root.to_str().unwrap(),
        "--to",
        "2.1.0",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let result: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(result["overall_status"], "RolledBack");
    assert!(result["error"]["message"]
        .as_str()
        .unwrap()
        .contains("timed out"));
    assert_eq!(result["error"]["exit_code"], 4);
    assert_eq!(tree_hash(root), before);
    let h = history(root);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["status"], "RolledBack");
}

#[test]
fn every_command_speaks_json() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let parse = |args: &[&str]| -> Value {
        let out = migrate(args);
        serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", stdout(&out)))
    };
    assert_eq!(
        parse(&["info", "--from", "0.1.0", "--to", "2.1.0", "--json"])["to"],
        "2.1.0"
    );
    assert_eq!(
        parse(&["plugins", "list", "--json"])["plugins"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        parse(&[
            "version",
            "--path",
            root,
            "--to",
            "2.1.0",
            "--dry-run",
            "--json"
        ])["overall_status"],
        "DryRun"
    );
    assert_eq!(
        parse(&["version", "--path", root, "--to", "2.1.0", "--json"])["overall_status"],
        "Completed"
    );
    assert_eq!(
        parse(&["validate", "--path", root, "--version", "2.1.0", "--json"])["findings"],
        Value::Array(vec![])
    );
    let backups = parse(&["backups", "list", "--path", root, "--json"]);
    let backup = backups[0]["path"].as_str().unwrap().to_owned();
    assert_eq!(parse(&["backups", "verify", &backup, "--json"])["ok"], true);
    assert_eq!(
        parse(&["history", "--path", root, "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(parse(&["recover", "--path", root, "--json"])["outcome"]
        .as_str()
        .unwrap()
        .contains("nothing"));
    assert_eq!(
        parse(&["rollback", "--backup-path", &backup, "--json"])["version"],
        "0.1.0"
    );
}

#[test]
fn exit_codes_are_the_documented_ones() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    assert_eq!(
        migrate(&["version", "--path", root, "--to", "2.1.0", "--no-such-flag"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        migrate(&["version", "--path", root, "--to", "9.9.9"])
            .status
            .code(),
        Some(7)
    );
    // Lock held: take the lock the way migrate does and leave it taken.
    std::fs::create_dir_all(install.path().join(".migrate")).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(install.path().join(".migrate/lock"))
        .unwrap();
    lock.try_lock().unwrap();
    std::fs::write(install.path().join(".migrate/lock"), "4242").unwrap();
    let out = migrate(&["version", "--path", root, "--to", "2.1.0"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("4242"), "{}", stderr(&out));
    drop(lock);
    assert_eq!(
        migrate(&["version", "--path", root, "--to", "2.1.0"])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let bash = ok(&migrate(&["completions", "bash"]));
    for sub in ["version", "rollback", "history", "plugins"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    let man = ok(&migrate(&["man"]));
    assert!(
        man.contains(".TH migrate 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("rollback"));
}

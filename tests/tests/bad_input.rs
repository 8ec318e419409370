//! Bad input from the spec: an error naming the file and place, a non-zero exit, and an
//! untouched installation.

mod common;
use common::*;

use std::path::Path;

/// Runs a full migration expected to be refused; returns stdout+stderr.
fn refused(root: &Path) -> String {
    let before = tree_hash(root);
    let out = migrate(&["version", "--path", root.to_str().unwrap(), "--to", "2.1.0"]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected exit 3 (invalid input):\n{text}"
    );
    assert_eq!(tree_hash(root), before, "the installation changed:\n{text}");
    let leftovers: Vec<String> = std::fs::read_dir(root.join(".migrate"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.iter().all(|n| n == "lock" || n == "audit.jsonl"),
        "staging or journal left behind: {leftovers:?}"
    );
    text
}

#[test]
fn invalid_toml_names_the_file_and_line() {
    let install = sample_install();
    write(
        install.path(),
        "config/server.toml",
        "host = \"0.0.0.0\"\nport = = 8080\nmodel_path = \"models/a\"\n",
    );
    // Version detection needs a parsable file, so say which release it is.
    std::fs::write(install.path().join("VERSION"), "0.1.0\n").unwrap();
    let text = refused(install.path());
    assert!(text.contains("config/server.toml"), "{text}");
    assert!(text.contains("line 2"), "{text}");
}

#[test]
fn a_value_of_the_wrong_type_names_file_key_and_type() {
    let install = sample_install();
    let toml =
        read(install.path(), "config/server.toml").replace("port = 8080", "port = \"eighty\"");
    write(install.path(), "config/server.toml", &toml);
    let text = refused(install.path());
    assert!(text.contains("config/server.toml"), "{text}");
    assert!(text.contains("`port`"), "{text}");
    assert!(text.contains("integer"), "{text}");
}

#[test]
fn an_invalid_json_line_names_file_and_line() {
    let install = sample_install();
    let mut lines: Vec<String> = read(install.path(), "data/requests.jsonl")
        .lines()
        .map(String::from)
        .collect();
    lines[6] = "{\"id\": \"req-7\", \"model\": ".into();
    write(
        install.path(),
        "data/requests.jsonl",
        &(lines.join("\n") + "\n"),
    );
    let text = refused(install.path());
    assert!(text.contains("data/requests.jsonl:7"), "{text}");
    assert!(text.contains("not valid JSON"), "{text}");
}

#[test]
fn a_known_field_of_the_wrong_type_names_file_line_and_field() {
    let install = sample_install();
    let mut lines: Vec<String> = read(install.path(), "data/archive/2024/requests.jsonl")
        .lines()
        .map(String::from)
        .collect();
    lines[2] = r#"{"id":"req-x","model":"m","prompt_tokens":"twelve","completion_tokens":3,"latency_ms":5,"timestamp":1}"#.into();
    write(
        install.path(),
        "data/archive/2024/requests.jsonl",
        &(lines.join("\n") + "\n"),
    );
    let text = refused(install.path());
    assert!(
        text.contains("data/archive/2024/requests.jsonl:3"),
        "{text}"
    );
    assert!(text.contains("prompt_tokens"), "{text}");
}

#[test]
fn a_record_that_is_not_an_object_is_refused() {
    let install = sample_install();
    let mut content = read(install.path(), "data/requests.jsonl");
    content.push_str("[1,2,3]\n");
    write(install.path(), "data/requests.jsonl", &content);
    let text = refused(install.path());
    assert!(text.contains("data/requests.jsonl:201"), "{text}");
    assert!(text.contains("object"), "{text}");
}

#[test]
fn a_truncated_safetensors_file_names_the_file() {
    let install = sample_install();
    let path = install.path().join("models/bert-tiny/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let text = refused(install.path());
    assert!(text.contains("models/bert-tiny"), "{text}");
    assert!(text.contains("model.safetensors"), "{text}");
    assert!(text.contains("truncated"), "{text}");
}

#[test]
fn quarantine_sets_bad_records_aside_and_goes_on() {
    let install = sample_install();
    let root = install.path();
    let mut lines: Vec<String> = read(root, "data/requests.jsonl")
        .lines()
        .map(String::from)
        .collect();
    let bad = "{\"id\": broken".to_string();
    lines[9] = bad.clone();
    write(root, "data/requests.jsonl", &(lines.join("\n") + "\n"));
    let report = root.join("report.json");
    migrate_quarantining(root, &["--report", report.to_str().unwrap()]);
    let migrated = jsonl(root, "data/requests.jsonl");
    assert_eq!(
        migrated.len(),
        199,
        "one record set aside, none dropped silently"
    );
    let q = jsonl(root, "data/.quarantine/requests.jsonl.rejected.jsonl");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["line"], 10);
    assert_eq!(q[0]["record"], bad, "copied verbatim");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let data = step(&report, "data").unwrap();
    assert_eq!(data["quarantined"], 1);
    assert_eq!(data["records"].as_u64().unwrap(), 199 + 60 + 1);
}

/// Regression: an error in the middle of a file larger than the pipeline's buffers must end
/// the run (it once left the reader blocked on a full channel, hanging the migration).
#[test]
fn a_bad_record_deep_in_a_large_file_stops_the_run_promptly() {
    let install = sample_install();
    let root = install.path();
    let line = r#"{"id":"r","model":"m","prompt_tokens":1,"completion_tokens":2,"latency_ms":3,"timestamp":4}"#;
    let mut content = format!("{line}\n").repeat(60_000);
    content.push_str("{\"id\": broken\n");
    content.push_str(&format!("{line}\n").repeat(60_000));
    write(root, "data/big.jsonl", &content);
    let cfg = root.join("mc.toml");
    std::fs::write(&cfg, "[data_migration]\nbatch_size = 100\n").unwrap();
    let before = tree_hash(root);
    let out = migrate(&[
        "--config-file",
        cfg.to_str().unwrap(),
        "version",
        "--path",
        root.to_str().unwrap(),
        "--to",
        "2.1.0",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("data/big.jsonl:60001"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_hash(root), before);
}

/// A later run adds to the quarantine file an earlier run left: nothing set aside is lost.
#[test]
fn quarantine_keeps_what_earlier_runs_set_aside() {
    let install = sample_install();
    let root = install.path();
    let data = root.join("data");
    let data = data.to_str().unwrap();
    // Appends a bad record to the log, then migrates the log one hop, quarantining.
    let run_with_bad = |bad: &str, from: &str, to: &str| {
        let mut content = read(root, "data/requests.jsonl");
        content.push_str(bad);
        content.push('\n');
        write(root, "data/requests.jsonl", &content);
        ok(&migrate(&[
            "data",
            "--data-path",
            data,
            "--from",
            from,
            "--to",
            to,
            "--on-invalid",
            "quarantine",
        ]));
    };
    run_with_bad("{\"id\": first-bad", "0.1.0", "1.0.0");
    run_with_bad("{\"id\": second-bad", "1.0.0", "2.0.0");
    let q = jsonl(root, "data/.quarantine/requests.jsonl.rejected.jsonl");
    let records: Vec<&str> = q.iter().map(|e| e["record"].as_str().unwrap()).collect();
    assert_eq!(records, ["{\"id\": first-bad", "{\"id\": second-bad"]);
    assert_eq!(jsonl(root, "data/requests.jsonl").len(), 200);
}

/// Runs a full migration with `--on-invalid quarantine` (and `extra`), which must succeed.
fn migrate_quarantining(root: &Path, extra: &[&str]) {
    let root = root.to_str().unwrap();
    let mut args = vec!["version", "--path", root, "--to", "2.1.0"];
    args.extend(["--on-invalid", "quarantine"]);
    args.extend(extra);
    ok(&migrate(&args));
}

/// A `*.json` document that is not well-formed JSON is refused whole, with the line where it
/// breaks: the run stops by default, and with quarantine the whole text is set aside and the
/// file leaves `data/` (nothing of a broken document is half-migrated).
#[test]
fn a_broken_json_document_is_refused_whole_with_its_line() {
    let broken = "[\n  {\"id\": \"a\", \"created_at\": 1640995200},\n  {\"id\": \"b\",\n]\n";
    let install = sample_install();
    write(install.path(), "data/history.json", broken);
    let text = refused(install.path());
    assert!(text.contains("data/history.json"), "{text}");
    assert!(text.contains("not valid JSON"), "{text}");

    migrate_quarantining(install.path(), &[]);
    assert!(!install.path().join("data/history.json").exists());
    let q = jsonl(
        install.path(),
        "data/.quarantine/history.json.rejected.jsonl",
    );
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["record"], broken, "the whole original text");
    assert_eq!(q[0]["line"], 4, "where the JSON breaks");
    assert_eq!(jsonl(install.path(), "data/requests.jsonl").len(), 200);
}

/// In an array document each element is a record: a bad one is set aside with its place in
/// the array and the others are migrated, in order.
#[test]
fn a_bad_record_in_an_array_document_is_quarantined_alone() {
    let install = sample_install();
    let doc = r#"[{"id":"a","created_at":1640995200},
 5,
 {"id":"c","created_at":1640995201}]"#;
    write(install.path(), "data/history.json", doc);
    let text = refused(install.path());
    assert!(text.contains("data/history.json (record 2)"), "{text}");

    migrate_quarantining(install.path(), &[]);
    let migrated: serde_json::Value =
        serde_json::from_str(&read(install.path(), "data/history.json")).unwrap();
    let ids: Vec<&str> = migrated
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "c"]);
    assert_eq!(migrated[1]["created_at"], "2022-01-01T00:00:01Z");
    assert_eq!(migrated[1]["schema_version"], 3);
    let q = jsonl(
        install.path(),
        "data/.quarantine/history.json.rejected.jsonl",
    );
    assert_eq!(
        (q.len(), &q[0]["line"], &q[0]["record"]),
        (1, &2.into(), &"5".into())
    );
}

/// A document that is one object is one record: refused, it goes to the quarantine and the
/// file leaves `data/`.
#[test]
fn a_bad_single_record_document_leaves_data_for_the_quarantine() {
    let install = sample_install();
    let doc = "{\"keys\": \"not a list\", \"schema_version\": \"one\"}\n";
    write(install.path(), "data/settings.json", doc);
    migrate_quarantining(install.path(), &[]);
    assert!(!install.path().join("data/settings.json").exists());
    let q = jsonl(
        install.path(),
        "data/.quarantine/settings.json.rejected.jsonl",
    );
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["line"], 1);
}

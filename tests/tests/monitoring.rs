//! Prometheus metrics for the fleet's monitoring (issue 17): `--metrics-file` and
//! `[global] metrics_file` write the node_exporter textfile format, read back here by the
//! Python `prometheus_client` parser (installed by scripts/fetch-test-assets; missing, these
//! tests fail) and checked by `promtool check metrics` where it is available.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

/// A 0.1.0 record the 2.0.0 → 2.1.0 hop refuses (it has `metrics` and `latency_ms`): with the
/// default `on_invalid = "fail"` the migration fails and changes nothing.
const REFUSED: &str =
    "{\"id\":\"req-q\",\"model\":\"bert-tiny\",\"latency_ms\":5,\"metrics\":{\"kept\":1}}\n";

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Every sample of the file as `prometheus_client` parses it: `name{labels}` → value, plus the
/// type of each family.
fn parse(file: &Path) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, types = {}, {}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    types[family.name] = family.type
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        samples[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps({"samples": samples, "types": types}))
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT, p(file)])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "prometheus_client could not parse {}: {}\n(scripts/fetch-test-assets installs prometheus_client)",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let samples = doc["samples"]
        .as_object()
        .expect("samples")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().expect("number")))
        .collect();
    let types = doc["types"]
        .as_object()
        .expect("types")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("type").to_owned()))
        .collect();
    (samples, types)
}

/// `promtool check metrics` (Debian package `prometheus`) where it is installed; otherwise
/// says so, as the issue allows.
fn promtool(file: &Path) {
    let Ok(out) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file).expect("open metrics"))
        .output()
    else {
        eprintln!("promtool is not installed: `promtool check metrics` skipped (the prometheus_client parse still ran)");
        return;
    };
    assert!(
        out.status.success(),
        "promtool check metrics refused {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing in {samples:?}"))
}

/// A completed migration, then a failed one (configured through `[global] metrics_file`):
/// each time the file parses, passes promtool, and carries the run's own figures; the run
/// counts come from the audit trail.
#[test]
fn metrics_parse_with_prometheus_client_and_promtool_and_tell_the_runs_apart() {
    let install = sample_install();
    let root = install.path();
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("trustformers_migrate.prom");

    let out = migrate(&[
        "version",
        "--path",
        p(root),
        "--to",
        "2.1.0",
        "--json",
        "--metrics-file",
        p(&file),
    ]);
    let report: serde_json::Value = serde_json::from_str(&ok(&out)).expect("json");
    let (samples, types) = parse(&file);
    promtool(&file);
    let m = |name: &str| format!("trustformers_migrate_{name}");
    assert_eq!(get(&samples, &m("last_run_success")), 1.0);
    assert!(get(&samples, &m("last_run_timestamp_seconds")) > 1.6e9);
    assert!(get(&samples, &m("last_run_duration_seconds")) > 0.0);
    let records: f64 = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["records"].as_f64().expect("records"))
        .sum();
    assert!(records > 0.0);
    assert_eq!(
        get(&samples, &m("records_total{status=\"migrated\"}")),
        records
    );
    assert_eq!(
        get(&samples, &m("records_total{status=\"quarantined\"}")),
        0.0
    );
    for step in report["steps"].as_array().expect("steps") {
        let name = step["name"].as_str().expect("name");
        let secs = get(
            &samples,
            &m(&format!("step_duration_seconds{{step=\"{name}\"}}")),
        );
        let ms = step["duration_ms"].as_f64().expect("ms");
        assert!(
            (secs * 1000.0 - ms).abs() < 1.0,
            "{name}: {secs} s vs {ms} ms"
        );
    }
    for kind in ["config", "data", "models", "backup"] {
        let step = step(&report, kind).expect("step");
        assert_eq!(
            get(&samples, &m(&format!("bytes_total{{kind=\"{kind}\"}}"))),
            step["bytes"].as_f64().expect("bytes"),
            "{kind}"
        );
    }
    assert!(get(&samples, &m("bytes_total{kind=\"backup\"}")) > 0.0);
    assert_eq!(
        get(&samples, &m("peak_memory_bytes")),
        report["peak_rss_bytes"].as_f64().expect("rss")
    );
    assert_eq!(get(&samples, &m("runs_total{status=\"completed\"}")), 1.0);
    assert_eq!(get(&samples, &m("runs_total{status=\"failed\"}")), 0.0);
    assert_eq!(get(&samples, &m("runs_total{status=\"rolled_back\"}")), 0.0);
    assert_eq!(types[&m("last_run_success")], "gauge");
    assert_eq!(types[&m("runs")], "counter", "{types:?}");
    assert_eq!(types[&m("records")], "counter", "{types:?}");
    assert_eq!(types[&m("bytes")], "counter", "{types:?}");
    let text = std::fs::read_to_string(&file).expect("read");
    for name in [
        "last_run_timestamp_seconds",
        "last_run_success",
        "last_run_duration_seconds",
        "step_duration_seconds",
        "records_total",
        "bytes_total",
        "peak_memory_bytes",
        "runs_total",
    ] {
        assert!(text.contains(&format!("# HELP {} ", m(name))), "{name}");
        assert!(text.contains(&format!("# TYPE {} ", m(name))), "{name}");
    }

    // A second installation, at 0.1.0, with a record the chain refuses: the run fails.
    let failing = sample_install();
    let froot = failing.path();
    let mut requests = read(froot, "data/requests.jsonl");
    requests.push_str(REFUSED);
    write(froot, "data/requests.jsonl", &requests);
    let cfg = out_dir.path().join("migration_config.toml");
    std::fs::write(&cfg, format!("[global]\nmetrics_file = \"{}\"\n", p(&file))).expect("config");
    let out = migrate(&[
        "version",
        "--path",
        p(froot),
        "--to",
        "2.1.0",
        "--config-file",
        p(&cfg),
    ]);
    assert!(!out.status.success(), "the refused record fails the run");
    let (samples, _) = parse(&file);
    promtool(&file);
    assert_eq!(get(&samples, &m("last_run_success")), 0.0);
    assert_eq!(get(&samples, &m("runs_total{status=\"failed\"}")), 1.0);
    assert_eq!(
        get(&samples, &m("runs_total{status=\"completed\"}")),
        0.0,
        "counted from this installation's audit trail"
    );
    let names: Vec<String> = std::fs::read_dir(out_dir.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".tmp")),
        "no temporary file left: {names:?}"
    );
}

/// A metrics path in a folder that does not exist is refused before the migration starts,
/// naming it; nothing in the installation changes (not even `.migrate/`).
#[test]
fn a_metrics_path_in_a_missing_folder_is_refused_before_the_migration() {
    let install = sample_install();
    let root = install.path();
    let before = full_tree_hash(root);
    let missing = root.join("no-such-folder/migrate.prom");
    let out = migrate(&[
        "version",
        "--path",
        p(root),
        "--to",
        "2.1.0",
        "--metrics-file",
        p(&missing),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-folder"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(full_tree_hash(root), before, "nothing changed");
}

/// A run that ends before it has a result (no migration path to 9.9.9) still replaces the
/// previous run's success with a failure; a dry run writes no metrics.
#[test]
fn a_run_without_a_result_reports_failure_and_a_dry_run_writes_nothing() {
    let install = sample_install();
    let root = install.path();
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("trustformers_migrate.prom");
    std::fs::write(
        &file,
        "# HELP trustformers_migrate_last_run_success x\n# TYPE trustformers_migrate_last_run_success gauge\ntrustformers_migrate_last_run_success 1\n",
    )
    .expect("a previous run's file");
    let out = migrate(&[
        "version",
        "--path",
        p(root),
        "--to",
        "9.9.9",
        "--metrics-file",
        p(&file),
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let (samples, _) = parse(&file);
    promtool(&file);
    assert_eq!(get(&samples, "trustformers_migrate_last_run_success"), 0.0);

    let dry = out_dir.path().join("dry.prom");
    ok(&migrate(&[
        "version",
        "--path",
        p(root),
        "--to",
        "2.1.0",
        "--dry-run",
        "--metrics-file",
        p(&dry),
    ]));
    assert!(!dry.exists(), "a dry run writes no metrics");
}

//! What each command runs and what its exit status says: true statuses for a run that stops
//! between two states (interrupted, 8) and for a bug in the host (internal, 9, never blamed on
//! a plugin), and no plugin code at all for the commands that need none. Faults are injected
//! through the `TRUSTFORMERS_MIGRATE_FAULT` hook (`<point>:<n>:error|panic`), which exists only
//! in the test build.

mod common;

use std::path::Path;

use common::*;

const FAULT: &str = "TRUSTFORMERS_MIGRATE_FAULT";

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn describe(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

/// A migration whose every file is in place but whose commit cannot be recorded (the disk
/// fills up as the journal is marked committed) is neither "failed, left as it was" nor done:
/// it exits 8, says that the next command finishes or undoes it, and that is what happens.
#[test]
fn a_commit_that_cannot_be_recorded_is_interrupted_and_recover_undoes_it() {
    let install = sample_install();
    let root = install.path();
    let before = tree_hash(root);
    let o = migrate_env(
        &["--json", "version", "--path", p(root), "--to", "2.1.0"],
        &[(FAULT, "commit:1:error")],
    );
    assert_eq!(o.status.code(), Some(8), "{}", describe(&o));
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json result");
    assert_eq!(result["overall_status"], "Interrupted", "{result}");
    assert_eq!(result["exit_code"], 8);
    // The result's error is {exit_code, message, next_step, file} (issue 16).
    assert_eq!(result["error"]["exit_code"], 8, "{result}");
    let error = format!(
        "{}\n  next step: {}",
        result["error"]["message"].as_str().expect("error message"),
        result["error"]["next_step"].as_str().expect("next step")
    );
    assert!(
        error.contains("migrate recover --path") && error.contains("journal is kept"),
        "{error}"
    );
    assert!(
        root.join(".migrate/journal.json").is_file(),
        "the journal is what lets the next command undo the run"
    );
    assert_eq!(
        read(root, "VERSION").trim(),
        "2.1.0",
        "every file was in place"
    );

    let o = migrate(&["recover", "--path", p(root)]);
    assert!(
        ok(&o).contains("rolled back the interrupted migration 0.1.0 → 2.1.0"),
        "{}",
        describe(&o)
    );
    assert_eq!(
        tree_hash(root),
        before,
        "recover gives back the original tree"
    );
    assert_no_leftovers(root, "after recover");
}

/// The worker writes the staged data and goes on to the models; the host syncs that data
/// meanwhile, while the model rules and then the pre-swap check run, and nothing reaches the
/// journal before it is on disk. A sync that fails, as a failing disk would, fails the data
/// step and the run with nothing changed: exit 1, an error that names the staged file and says
/// the installation was not changed, no journal, no backup, the tree as it was. The models
/// and verify steps had completed meanwhile, and the audit trail still has the steps in their
/// order, the data step's (failed) before theirs.
#[test]
fn a_staged_data_file_that_cannot_be_synced_fails_the_run_before_the_journal() {
    let install = sample_install();
    let root = install.path();
    let before = tree_hash(root);
    let o = migrate_env(
        &["--json", "version", "--path", p(root), "--to", "2.1.0"],
        &[(FAULT, "sync-data:1:error")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json result");
    let data = step(&result, "data").expect("a data step");
    assert_eq!(data["status"], "Failed", "{result}");
    let message = result["error"]["message"].as_str().expect("error message");
    for needle in [
        "cannot get the staged data/",
        "onto the disk (in ",
        "nothing in the installation was changed",
        "injected fault at sync-data",
    ] {
        assert!(message.contains(needle), "{needle:?} in {message}");
        assert!(
            data["error"].as_str().unwrap_or("").contains(needle),
            "{data}"
        );
    }
    let models = step(&result, "models").unwrap_or_else(|| panic!("no models step: {result}"));
    assert_eq!(models["status"], "Completed", "{result}");
    let verify = step(&result, "verify").unwrap_or_else(|| panic!("no verify step: {result}"));
    assert_eq!(verify["status"], "Completed", "{result}");
    assert!(step(&result, "journal").is_none(), "{result}");
    let trail = std::fs::read_to_string(root.join(".migrate/audit.jsonl")).expect("audit");
    let recorded: Vec<(String, String)> = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit line"))
        .filter(|e| e["action"] == "step_finished")
        .map(|e| {
            (
                e["step"].as_str().unwrap().into(),
                e["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("preflight", "Completed"),
        ("config", "Completed"),
        ("data", "Failed"),
        ("models", "Completed"),
        ("verify", "Completed"),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(recorded, want, "{trail}");
    assert_eq!(result["backup_path"], serde_json::Value::Null, "{result}");
    // Progress (plain lines: stderr is not a terminal) never called the data step done.
    let progress = String::from_utf8_lossy(&o.stderr);
    assert!(
        progress.contains("[data] FAILED in") && !progress.contains("[data] done"),
        "{progress}"
    );
    assert_eq!(tree_hash(root), before, "nothing was changed");
    assert_no_leftovers(root, "after a failed sync");
}

/// Plain progress says the data step is done once its output is on disk: the host syncs it
/// while the models and verify steps run, so its end is printed after theirs, once, and every
/// step that started ends.
#[test]
fn plain_progress_calls_the_data_step_done_once_its_output_is_on_disk() {
    let install = sample_install();
    let root = install.path();
    let o = migrate_env(
        &[
            "--progress",
            "plain",
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let progress = String::from_utf8_lossy(&o.stderr);
    let ends: Vec<&str> = progress
        .lines()
        .filter_map(|l| l.strip_prefix('[').and_then(|l| l.split_once("] done in ")))
        .map(|(step, _)| step)
        .collect();
    let starts = progress.lines().filter(|l| l.contains("] started")).count();
    assert_eq!(
        starts,
        ends.len(),
        "every step that started ended:\n{progress}"
    );
    let at = |step: &str| {
        ends.iter()
            .position(|s| *s == step)
            .unwrap_or_else(|| panic!("no end of {step}:\n{progress}"))
    };
    assert_eq!(
        ends.iter().filter(|s| **s == "data").count(),
        1,
        "{progress}"
    );
    for before in ["models", "verify"] {
        assert!(
            at(before) < at("data"),
            "{before} ends before data:\n{progress}"
        );
    }
    assert!(at("data") < at("backup"), "{progress}");
}

/// The run waits for the staged data on disk after the pre-swap check: a slow disk there is
/// missing neither from the report (the data step's duration runs until its output is on disk)
/// nor taken for the worker's silence (a `stall_seconds` of 1 does not stop a run whose sync
/// takes 2.5 s: it would, were the wait ever moved back into the supervisor's handling of the
/// worker's replies).
#[test]
fn a_slow_sync_of_the_staged_data_is_waited_for_and_reported() {
    let install = sample_install();
    let root = install.path();
    let settings = tempfile::tempdir().expect("tempdir");
    let config = settings.path().join("migration_config.toml");
    std::fs::write(&config, "[global]\nstall_seconds = 1\n").expect("write settings");
    let o = migrate_env(
        &[
            "--json",
            "--config-file",
            p(&config),
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
        ],
        &[(FAULT, "sync-data:1:slow2500")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json result");
    let data = step(&result, "data").expect("a data step");
    assert_eq!(data["status"], "Completed", "{result}");
    let ms = data["duration_ms"].as_u64().expect("duration_ms");
    assert!(ms >= 2500, "the data step took {ms} ms: {result}");
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
}

/// A swap that fails part-way is rolled back; when the rollback fails too, the installation
/// is between two states: exit 8 (not 1, "left as it was"), and the next command finishes the
/// rollback.
#[test]
fn a_rollback_that_fails_after_a_failed_swap_is_interrupted() {
    let install = sample_install();
    let root = install.path();
    let before = tree_hash(root);
    let o = migrate_env(
        &["version", "--path", p(root), "--to", "2.1.0"],
        &[(FAULT, "swap:2:error,rollback:1:error")],
    );
    assert_eq!(o.status.code(), Some(8), "{}", describe(&o));
    let err = stderr(&o);
    assert!(
        err.contains("rolling back also failed") && err.contains("migrate recover --path"),
        "{err}"
    );
    assert_ne!(
        tree_hash(root),
        before,
        "the run stopped between two states"
    );

    // Any command on the installation finishes the undo first.
    let o = migrate(&["validate", "--path", p(root), "--version", "0.1.0"]);
    assert!(
        stderr(&o).contains("was found in") && stderr(&o).contains("rolled back"),
        "{}",
        describe(&o)
    );
    assert_eq!(tree_hash(root), before);
    assert_no_leftovers(root, "after the next command");
}

/// A panic in the host's own code is a bug in migrate, exit 9, never reported as a plugin
/// error, whether it happens in the supervisor (as a batch lands) or in the host code of the
/// plugin worker (its data pipeline); nothing in the installation changed.
#[test]
fn a_panic_in_the_host_is_an_internal_error_not_a_plugin_error() {
    for (variable, said) in [
        (FAULT, "internal error in migrate:"),
        (
            "TRUSTFORMERS_MIGRATE_WORKER_FAULT",
            "internal error in migrate's plugin worker",
        ),
    ] {
        let install = sample_install();
        let root = install.path();
        let before = tree_hash(root);
        let o = migrate_env(
            &["version", "--path", p(root), "--to", "2.1.0"],
            &[(variable, "batch:1:panic")],
        );
        assert_eq!(o.status.code(), Some(9), "{variable}: {}", describe(&o));
        let err = stderr(&o);
        assert!(err.contains(said), "{err}");
        assert!(err.contains("nothing was swapped"), "{err}");
        assert!(
            !err.contains("plugin error") && !err.contains("author"),
            "{err}"
        );
        assert_eq!(tree_hash(root), before);
        assert_no_leftovers(root, "after the panic");
    }
}

/// Plugins run code as soon as they are loaded (building their hop). `completions`, `man`,
/// `history`, `backups` and `rollback` need no plugin, so none is loaded: the probe plugin
/// never writes its marker for them, and does for `plugins list` (the control). The probe
/// writes outside any staging, which the worker's sandbox forbids, so these runs are
/// `--no-sandbox`.
#[test]
fn commands_that_need_no_plugin_run_no_plugin_code() {
    let plugins = tempfile::tempdir().expect("tempdir");
    std::fs::copy(failing_hop(), plugins.path().join("libfailing_hop.so")).expect("copy");
    let install = sample_install();
    let root = install.path();
    let marker = plugins.path().join("loaded.txt");
    let env = [("FAILING_HOP_LOAD_MARKER", p(&marker))];
    let dir = p(plugins.path());
    let missing_backup = root.join("backups/none");
    let commands: Vec<Vec<&str>> = vec![
        vec!["completions", "bash"],
        vec!["man"],
        vec!["history", "--path", p(root)],
        vec!["backups", "list", "--path", p(root)],
        vec!["backups", "verify", p(&missing_backup)],
        vec![
            "rollback",
            "--backup-path",
            p(&missing_backup),
            "--path",
            p(root),
        ],
        vec!["recover", "--path", p(root)],
    ];
    for command in commands {
        let mut args = vec!["--no-sandbox", "--plugin-dir", dir];
        args.extend(command.iter().copied());
        let o = migrate_env(&args, &env);
        assert!(
            !marker.exists(),
            "`migrate {}` loaded a plugin\n{}",
            command.join(" "),
            describe(&o)
        );
    }
    let o = migrate_env(
        &["--no-sandbox", "--plugin-dir", dir, "plugins", "list"],
        &env,
    );
    assert!(ok(&o).contains("failing_v1_to_v2"), "{}", describe(&o));
    assert!(marker.exists(), "the probe works: plugins list loads it");
}

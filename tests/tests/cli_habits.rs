//! The command line as operators coming from sqlx-cli, Flyway or cargo use it (issue 16):
//! relative paths, help with examples, JSON on every failure, colour and verbosity, the
//! default target, and plugin choices that are never accepted in silence.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// `migrate` run from `cwd`, isolated like [`migrate_env`].
fn migrate_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(migrate_bin());
    isolated(cmd.args(args).current_dir(cwd), home.path())
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .envs(env.iter().copied());
    cmd.output().expect("run migrate")
}

/// Stdout parsed as exactly one JSON object whose `error` matches the exit status.
fn json_error(out: &Output) -> Value {
    let text = stdout(out);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{text}"));
    let err = &v["error"];
    assert!(err.is_object(), "{v}");
    assert_eq!(err["exit_code"].as_i64(), out.status.code().map(i64::from));
    assert!(!err["message"].as_str().unwrap().is_empty(), "{v}");
    assert!(!err["next_step"].as_str().unwrap().is_empty(), "{v}");
    v
}

#[test]
fn relative_paths_are_taken_from_the_working_folder_once() {
    let parent = tempfile::tempdir().unwrap();
    copy_tree(
        &workspace_root().join("samples/install-0.1.0"),
        &parent.path().join("d3"),
    );
    let d3 = parent.path().join("d3");
    let out = migrate_in(
        parent.path(),
        &[
            "config",
            "--config",
            "d3/config/server.toml",
            "--to",
            "1.0.0",
        ],
        &[],
    );
    ok(&out);
    assert!(read(&d3, "config/server.toml").contains("bind_address"));
    let out = migrate_in(
        parent.path(),
        &[
            "data",
            "--data-path",
            "d3/data",
            "--from",
            "0.1.0",
            "--to",
            "1.0.0",
        ],
        &[],
    );
    ok(&out);
    assert!(jsonl(&d3, "data/requests.jsonl")
        .iter()
        .all(|r| r["schema_version"] == 1));
    let out = migrate_in(
        &d3,
        &[
            "models",
            "--models-path",
            "./models",
            "--from",
            "0.1.0",
            "--to",
            "1.0.0",
        ],
        &[],
    );
    ok(&out);
    assert!(d3.join("models/bert-tiny/metadata.json").is_file());
    // Nothing landed in a doubled path, and the backups record the real root.
    assert!(!d3.join("d3").exists());
    let backups = migrate_in(
        parent.path(),
        &["backups", "list", "--path", "d3", "--json"],
        &[],
    );
    let list: Value = serde_json::from_str(&ok(&backups)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
}

#[test]
fn every_command_help_has_examples_and_global_options_apart() {
    let commands: &[&[&str]] = &[
        &["status"],
        &["version"],
        &["config"],
        &["data"],
        &["models"],
        &["info"],
        &["validate"],
        &["plugins", "list"],
        &["plugins", "pin"],
        &["plugins", "verify"],
        &["rollback"],
        &["recover"],
        &["backups", "list"],
        &["backups", "verify"],
        &["history"],
        &["completions"],
        &["man"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = ok(&migrate(&args));
        let examples = help
            .find("Examples:\n  migrate ")
            .unwrap_or_else(|| panic!("{cmd:?}: no examples\n{help}"));
        let global = help
            .find("Global options:")
            .unwrap_or_else(|| panic!("{cmd:?}: no global options heading\n{help}"));
        assert!(global < examples, "{cmd:?}");
        assert!(
            help[global..].contains("--plugin-dir") && help[global..].contains("--color"),
            "{cmd:?}"
        );
    }
    // The options the issue found bare.
    let described = |cmd: &[&str], option: &str| {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = ok(&migrate(&args));
        // Long help: the option on its line, its description on the next.
        let mut lines = help
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(option));
        let own = lines
            .next()
            .unwrap_or_else(|| panic!("{cmd:?} {option}\n{help}"));
        let next = lines.next().unwrap_or("");
        assert!(
            own.trim().len() > option.len() + 12 || next.trim().len() > 8,
            "{cmd:?}: {option} has no description\n{help}"
        );
    };
    described(&["info"], "--to");
    for cmd in [
        &["validate"][..],
        &["recover"],
        &["history"],
        &["backups", "list"],
    ] {
        described(cmd, "--path");
    }
}

#[test]
fn info_names_both_files_of_a_conflict_and_plugin_choices_are_checked() {
    let dir = plugin_dir();
    let d = dir.path().to_str().unwrap();
    std::fs::copy(
        dir.path().join("libv1_to_v2.so"),
        dir.path().join("libdup.so"),
    )
    .unwrap();
    let base = ["--no-default-plugins", "--plugin-dir", d];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        migrate(&args)
    };
    let out = run(&["info", "--from", "0.1.0", "--to", "2.1.0"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("libv1_to_v2.so") && err.contains("libdup.so"),
        "{err}"
    );
    assert!(!err.contains("no hop plugins were loaded"), "{err}");

    // A bare file name picks that file.
    let out = ok(&run(&[
        "--use-plugin",
        "libdup.so",
        "info",
        "--from",
        "0.1.0",
        "--to",
        "2.1.0",
        "--json",
    ]));
    let info: Value = serde_json::from_str(&out).unwrap();
    let files: Vec<&str> = info["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap())
        .collect();
    assert!(files[1].ends_with("libdup.so"), "{files:?}");

    // A name that matches nothing is an error naming it.
    let out = run(&["--use-plugin", "libnothing.so", "plugins", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("libnothing.so"), "{}", stderr(&out));

    // So is a plugin folder that does not exist.
    let missing = dir.path().join("no-such-folder");
    let out = migrate(&[
        "--plugin-dir",
        missing.to_str().unwrap(),
        "info",
        "--from",
        "0.1.0",
        "--to",
        "2.1.0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no-such-folder"), "{}", stderr(&out));
}

#[test]
fn a_folder_that_is_not_an_installation_is_never_written_even_with_from() {
    let folder = tempfile::tempdir().unwrap();
    write(folder.path(), "notes/readme.txt", "not an installation\n");
    let before = full_tree_hash(folder.path());
    let p = folder.path().to_str().unwrap();
    for extra in [&[][..], &["--dry-run"]] {
        let mut args = vec!["version", "--path", p, "--from", "0.1.0", "--to", "2.1.0"];
        args.extend_from_slice(extra);
        let out = migrate(&args);
        assert_eq!(out.status.code(), Some(3), "{extra:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("not a TrustformeRS Serve installation"),
            "{err}"
        );
        assert!(!err.contains("pass --from"), "{err}");
        assert_eq!(full_tree_hash(folder.path()), before, "{extra:?}");
    }
    let out = migrate(&["status", "--path", p]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn with_json_every_failure_is_one_json_object_on_stdout() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    // Not a folder.
    let out = migrate(&["--json", "version", "--path", "/nonexistent/tfs"]);
    assert_eq!(out.status.code(), Some(3));
    let v = json_error(&out);
    assert_eq!(v["error"]["file"], "/nonexistent/tfs");
    // No path at all: clap's refusal, as JSON too.
    let out = migrate(&["--json", "version"]);
    assert_eq!(out.status.code(), Some(2));
    let v = json_error(&out);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--path"),
        "{v}"
    );
    // A --from that disagrees with the installation.
    let out = migrate(&["--json", "version", "--path", root, "--from", "1.0.0"]);
    assert_eq!(out.status.code(), Some(7));
    let v = json_error(&out);
    assert!(
        v["error"]["next_step"]
            .as_str()
            .unwrap()
            .contains("--force"),
        "{v}"
    );
    assert_eq!(v["error"]["file"].as_str(), Some(root));
    // A bad version.
    let out = migrate(&["--json", "version", "--path", root, "--to", "2.x"]);
    assert_eq!(out.status.code(), Some(2));
    json_error(&out);

    // A migration's result carries its backup as a field, and the backup is there.
    let out = migrate(&[
        "--json", "--quiet", "version", "--path", root, "--to", "1.0",
    ]);
    let result: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(result["to"], "1.0.0");
    assert!(result["error"].is_null());
    let backup = result["backup_path"].as_str().expect("backup_path");
    assert!(
        Path::new(backup).join("metadata.json").is_file(),
        "{backup}"
    );

    // A failed migration: the same error object inside the result.
    write(install.path(), "data/bad.jsonl", "{\"id\": 5}\n");
    let out = migrate(&["--json", "--quiet", "version", "--path", root]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let result: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(result["error"]["exit_code"], 3);
    assert!(result["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bad.jsonl"));
    assert!(result["error"]["next_step"].is_string(), "{result}");
}

/// Errors met in the plugin worker name their file with `--json` as errors met in the
/// supervisor do (issue 16): a malformed record, refused with the default `on_invalid =
/// fail`, names its data file as the installation names it; its place is in the message.
#[test]
fn with_json_a_malformed_record_names_its_data_file() {
    for (file, text, place) in [
        (
            "data/requests.jsonl",
            "{\"id\": \"b\",\n",
            "data/requests.jsonl:1",
        ),
        (
            "data/log.json",
            "[{\"id\": 1}, {\"id\":",
            "data/log.json (record",
        ),
    ] {
        let install = sample_install();
        let root = install.path().to_str().unwrap();
        write(install.path(), file, text);
        let out = migrate(&["--json", "--quiet", "version", "--path", root]);
        assert_eq!(out.status.code(), Some(3), "{file}: {}", stderr(&out));
        let result: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let error = &result["error"];
        assert_eq!(error["exit_code"], 3, "{result}");
        assert_eq!(error["file"], file, "{result}");
        assert!(
            error["message"].as_str().unwrap().starts_with(place),
            "{result}"
        );
        assert!(error["next_step"]
            .as_str()
            .unwrap()
            .contains("--on-invalid quarantine"));
    }
}

#[test]
fn colour_only_where_asked_and_never_in_a_log_file() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    // stderr is a pipe here, as when logs go to a file.
    let out = migrate_env(
        &["version", "--path", root, "--to", "1.0.0", "--dry-run"],
        &[("RUST_LOG", "info")],
    );
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains("INFO"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in a redirected log:\n{err}"
    );

    let out = migrate_env(
        &[
            "--color",
            "always",
            "version",
            "--path",
            root,
            "--to",
            "1.0.0",
            "--dry-run",
        ],
        &[("RUST_LOG", "info")],
    );
    assert!(
        stderr(&out).contains("\u{1b}["),
        "--color always: {}",
        stderr(&out)
    );
    let out = migrate_env(
        &[
            "--color",
            "always",
            "validate",
            "--path",
            "/nonexistent",
            "--version",
            "1.0.0",
        ],
        &[],
    );
    assert!(stderr(&out).contains("\u{1b}["), "{}", stderr(&out));
    let out = migrate_env(
        &[
            "--color",
            "never",
            "validate",
            "--path",
            "/nonexistent",
            "--version",
            "1.0.0",
        ],
        &[("CLICOLOR_FORCE", "1")],
    );
    assert!(!stderr(&out).contains('\u{1b}'), "{}", stderr(&out));

    let help = migrate(&["--color", "always", "version", "--help"]);
    assert!(stdout(&help).contains("\u{1b}["));
    let help = migrate_env(&["version", "--help"], &[("NO_COLOR", "1")]);
    assert!(!stdout(&help).contains('\u{1b}'));
}

#[test]
fn v_raises_the_log_level_and_rust_log_wins() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let args = |v: &'static str| {
        vec![v, "version", "--path", root, "--to", "1.0.0", "--dry-run"]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
    };
    let quiet = migrate(&args(""));
    assert!(!stderr(&quiet).contains("INFO"), "{}", stderr(&quiet));
    let v = migrate(&args("-v"));
    assert!(stderr(&v).contains("INFO"), "{}", stderr(&v));
    assert!(!stderr(&v).contains("DEBUG"));
    let vv = migrate(&args("-vv"));
    assert!(stderr(&vv).contains("DEBUG") || stderr(&vv).contains("INFO"));
    let env_wins = migrate_env(&args("-vv"), &[("RUST_LOG", "error")]);
    let err = stderr(&env_wins);
    assert!(!err.contains("INFO") && !err.contains("DEBUG"), "{err}");
}

#[test]
fn to_defaults_to_the_latest_release_and_takes_short_forms() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let out = migrate(&[
        "--json",
        "version",
        "--path",
        root,
        "--to",
        "2.1",
        "--dry-run",
    ]);
    let r: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(r["to"], "2.1.0");
    let out = migrate(&[
        "--json",
        "version",
        "--path",
        root,
        "--to",
        "latest",
        "--dry-run",
    ]);
    let r: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(r["to"], "2.1.0");

    let out = migrate(&["version", "--path", root]);
    ok(&out);
    assert!(
        stderr(&out).contains("migrating to 2.1.0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read(install.path(), "VERSION"), "2.1.0\n");
    // Now up to date: the default target is the installation's own release.
    let out = migrate(&["--json", "version", "--path", root]);
    let r: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(r["overall_status"], "UpToDate");

    let out = migrate(&["version", "--path", root, "--to", "2.x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("write it like 2.1.0"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("unexpected character"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn small_texts_say_what_is_true() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    // validate against a release no plugin knows: the warning names the installation.
    let out = migrate(&["--json", "validate", "--path", root, "--version", "9.9.9"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let warning = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["message"].as_str().unwrap().contains("9.9.9"))
        .expect("a warning about 9.9.9");
    assert_eq!(warning["path"].as_str(), Some(root), "{warning}");

    // plugins verify with no lock anywhere: nothing is pinned, which is not a failure.
    let dir = plugin_dir();
    let out = migrate(&["plugins", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("nothing is pinned"),
        "{}",
        stdout(&out)
    );
    // ... but a pinned folder whose plugin changed still fails.
    ok(&migrate(&["plugins", "pin", dir.path().to_str().unwrap()]));
    std::fs::copy(
        dir.path().join("libv0_1_to_v1.so"),
        dir.path().join("libv1_to_v2.so"),
    )
    .unwrap();
    let out = migrate(&["plugins", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stdout(&out));

    // The dry run states the backup the real run will take; steps that move no file say no
    // "0 files, 0 bytes".
    let out = ok(&migrate(&[
        "version",
        "--path",
        root,
        "--to",
        "2.1.0",
        "--dry-run",
    ]));
    assert!(!out.contains("about 0 B"), "{out}");
    assert!(out.contains("the backup about"), "{out}");
    assert!(!out.contains("0 files, 0 bytes"), "{out}");
    let cfg = install.path().join("mc.toml");
    std::fs::write(&cfg, "[global]\nbackup_before_migration = false\n").unwrap();
    let out = ok(&migrate(&[
        "--config-file",
        cfg.to_str().unwrap(),
        "version",
        "--path",
        root,
        "--dry-run",
    ]));
    assert!(out.contains("no backup is taken"), "{out}");

    // The converted timeout's comment names its new unit.
    ok(&migrate(&["version", "--path", root, "--to", "1.0.0"]));
    let config = read(install.path(), "config/server.toml");
    let line = config
        .lines()
        .find(|l| l.starts_with("request_timeout_ms"))
        .unwrap();
    assert!(line.ends_with("# milliseconds"), "{line}");
}

#[test]
fn an_empty_server_toml_is_refused_naming_the_file() {
    let install = sample_install();
    write(install.path(), "VERSION", "1.0.0\n");
    write(install.path(), "config/server.toml", "# nothing left\n\n");
    let before = tree_hash(install.path());
    let root = install.path().to_str().unwrap();
    let out = migrate(&["version", "--path", root, "--to", "2.0.0"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("config/server.toml") && err.contains("no settings"),
        "{err}"
    );
    assert_eq!(tree_hash(install.path()), before);
    let file = install.path().join("config/server.toml");
    let out = migrate(&[
        "config",
        "--config",
        file.to_str().unwrap(),
        "--from",
        "1.0.0",
        "--to",
        "2.0.0",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        read(install.path(), "config/server.toml"),
        "# nothing left\n\n"
    );
}

#[test]
fn the_default_target_is_never_a_guess() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let before = tree_hash(install.path());
    // No plugins at all: "up to date" would be a lie.
    let empty = tempfile::tempdir().unwrap();
    let out = migrate(&[
        "--no-default-plugins",
        "--plugin-dir",
        empty.path().to_str().unwrap(),
        "version",
        "--path",
        root,
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no hop plugins were loaded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_hash(install.path()), before);

    // A release newer than every plugin knows: not up to date either, but unknown.
    write(install.path(), "VERSION", "3.0.0\n");
    for cmd in [
        &["version", "--path", root][..],
        &["status", "--path", root],
    ] {
        let out = migrate(cmd);
        assert_eq!(out.status.code(), Some(7), "{cmd:?}: {}", stdout(&out));
        assert!(stderr(&out).contains("3.0.0"), "{}", stderr(&out));
    }
    // The release the chain ends at is up to date, truly.
    write(install.path(), "VERSION", "2.1.0\n");
    let out = migrate(&["--json", "status", "--path", root]);
    let s: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(s["latest"], "2.1.0");
    assert!(s["pending"].as_array().unwrap().is_empty());
}

/// What a terminal shows of `drawn`, one entry per redraw of a line: escape sequences
/// removed, cut at carriage returns and line feeds.
fn drawn_lines(drawn: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = drawn.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then one final byte in @..~.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
        .split(['\r', '\n'])
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// On a terminal, each step's bar fits an 80-column screen (a wider line wraps, and every
/// redraw then climbs a line), and the long steps move: the data step, the pre-swap check and
/// the backup each show bytes done before they end (the check and the backup used to stand at
/// "0 B" until they were over), and so does the restore of a rollback (which showed nothing).
/// Records per second are shown for the data step only.
#[test]
fn on_a_terminal_every_bar_fits_80_columns_and_the_long_steps_move() {
    ensure_built();
    let install = sample_install();
    let root = install.path();
    // About 16 MB of records: each long step reads several MiB, past its first progress report.
    let log = read(root, "data/requests.jsonl");
    let log = log.repeat((16 << 20) / log.len() + 1);
    write(root, "data/requests.jsonl", &log);
    let path = root.to_str().unwrap();
    let migration = ["version", "--path", path, "--to", "2.1.0"];
    let lines = progress_on_terminal(&migration);
    for step in ["data", "verify", "backup"] {
        let bars = moved(&lines, step);
        if step != "data" {
            assert!(bars.iter().all(|l| !l.contains("rec/s")), "{bars:#?}");
        }
    }
    assert!(
        lines.iter().any(|l| l.starts_with("[backup] done in ")),
        "{lines:#?}"
    );
    // validate reads the same 16 MB (its bar moves), then hashes the weights (under a MiB
    // here: only the step's end shows).
    let lines = progress_on_terminal(&["validate", "--path", path, "--version", "2.1.0"]);
    let bars = moved(&lines, "data");
    assert!(bars.iter().all(|l| !l.contains("rec/s")), "{bars:#?}");
    for step in ["data", "models"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("[{step}] done in "))),
            "{lines:#?}"
        );
    }
    let lines = progress_on_terminal(&["rollback", "--path", path]);
    let bars = moved(&lines, "restore");
    assert!(bars.iter().all(|l| !l.contains("rec/s")), "{bars:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("[restore] done in ")),
        "{lines:#?}"
    );
    // Back at 0.1.0, which has no VERSION file.
    assert!(!root.join("VERSION").exists());
    assert!(
        read(root, "data/requests.jsonl") == log,
        "the log is restored byte for byte"
    );
}

/// `validate` shows its long parts as steps, in a log as on a terminal: the data files read
/// and the model files hashed, each with its size; a step whose files hold errors ends
/// FAILED, and the findings say why.
#[test]
fn validate_shows_its_steps_and_fails_the_one_with_errors() {
    ensure_built();
    let install = sample_at_2_1();
    let root = install.path();
    let path = root.to_str().unwrap();
    let args = [
        "--progress",
        "plain",
        "validate",
        "--path",
        path,
        "--version",
        "2.1.0",
    ];
    // What each step reads: the data files (`*.json` and `*.jsonl`, in subfolders too), and
    // the model files metadata.json lists.
    let data: u64 = walkdir::WalkDir::new(root.join("data"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| {
            let name = e.file_name().to_string_lossy();
            e.file_type().is_file() && (name.ends_with(".json") || name.ends_with(".jsonl"))
        })
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let mut models = 0;
    for model in std::fs::read_dir(root.join("models")).unwrap() {
        let meta: Value = serde_json::from_slice(
            &std::fs::read(model.unwrap().path().join("metadata.json")).unwrap(),
        )
        .unwrap();
        for file in meta["files"].as_array().unwrap() {
            models += file["size"].as_u64().unwrap();
        }
    }
    // Both in KiB, as the plain lines print them.
    let kib = |n: u64| {
        assert!((1 << 10..1 << 20).contains(&n), "{n} bytes");
        format!("{:.1} KiB", n as f64 / 1024.0)
    };
    let out = migrate(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    for line in [
        format!("[data] started: {}", kib(data)),
        format!("[models] started: {}", kib(models)),
        "[data] done in ".into(),
        "[models] done in ".into(),
    ] {
        assert!(err.contains(&line), "no `{line}`:\n{err}");
    }
    let mut log = read(root, "data/requests.jsonl");
    log.push_str("{\"id\": \n");
    write(root, "data/requests.jsonl", &log);
    let out = migrate(&args);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("[data] FAILED in "), "{err}");
    assert!(err.contains("[models] done in "), "{err}");
    assert!(
        stdout(&out).contains("data/requests.jsonl:"),
        "{}",
        stdout(&out)
    );
    // metadata.json at another schema_version (found before any file is hashed): the models
    // step fails.
    let meta_path = root.join("models/bert-tiny/metadata.json");
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["schema_version"] = 2.into();
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    let out = migrate(&args);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[models] FAILED in "),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("schema_version is not 3"),
        "{}",
        stdout(&out)
    );
    // A weights file that no longer matches its metadata.json: the models step fails too,
    // and its total is the file as it is now, not the size listed.
    let weights = root.join("models/bert-tiny/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes.extend_from_slice(&[0; 2048]);
    std::fs::write(&weights, &bytes).unwrap();
    let out = migrate(&args);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    let grown = format!("[models] started: {}", kib(models + 2048));
    assert!(err.contains(&grown), "no `{grown}`:\n{err}");
    assert!(err.contains("[models] FAILED in "), "{err}");
    assert!(
        stdout(&out).contains("model.safetensors"),
        "{}",
        stdout(&out)
    );
}

/// A rollback shows its restore as a step from the extraction on. Refused before that (here:
/// the installation is no longer at the backup's release), it shows no step at all, only the
/// error, and nothing changes.
#[test]
fn a_rollback_refused_before_extracting_shows_no_restore_step() {
    ensure_built();
    let install = sample_at_2_1();
    let root = install.path();
    let path = root.to_str().unwrap();
    let listed: Value = serde_json::from_str(&stdout(&migrate(&[
        "backups", "list", "--path", path, "--json",
    ])))
    .unwrap();
    let backup = listed[0]["path"].as_str().unwrap().to_owned();
    let rollback = [
        "--progress",
        "plain",
        "--yes",
        "rollback",
        "--backup-path",
        &backup,
    ];
    let out = migrate(&rollback);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("[restore] started: "), "{err}");
    assert!(err.contains("[restore] done in "), "{err}");
    // Back at 0.1.0: the same backup, taken at 2.1.0, does not apply any more.
    let log = read(root, "data/requests.jsonl");
    let out = migrate(&rollback);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("2.1.0"), "the error says why: {err}");
    assert!(!err.contains("[restore]"), "a step for a refusal: {err}");
    assert_eq!(read(root, "data/requests.jsonl"), log);
}

/// The sample installation, migrated to 2.1.0 (its backup beside it).
fn sample_at_2_1() -> tempfile::TempDir {
    let install = sample_install();
    let path = install.path().to_str().unwrap();
    let out = migrate(&[
        "--quiet", "--yes", "version", "--path", path, "--to", "2.1.0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    install
}

/// Runs `migrate --progress bars --yes args` on an 80-column terminal; it must succeed, and
/// each progress draw (a step's name, then its bar or its spinner) fit in 80 columns. Returns
/// the lines drawn.
fn progress_on_terminal(args: &[&str]) -> Vec<String> {
    let all: Vec<&str> = ["--progress", "bars", "--yes"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let seen = migrate_on_terminal(&all, "", &[], 80);
    assert_eq!(seen.code, 0, "{}", seen.drawn);
    let lines = drawn_lines(&seen.drawn);
    let progress = |l: &&String| {
        l.trim_start().split_once(' ').is_some_and(|(name, rest)| {
            (STEPS.contains(&name) || name == "restore")
                && rest.starts_with(|c| c == '[' || ('\u{2800}'..='\u{28ff}').contains(&c))
        })
    };
    let draws: Vec<&String> = lines.iter().filter(progress).collect();
    assert!(!draws.is_empty(), "{lines:#?}");
    for line in &draws {
        assert!(
            line.chars().count() <= 80,
            "wider than the terminal: {line:?}\n{draws:#?}"
        );
    }
    lines
}

/// The bar draws of `step` in `lines`; one of them must show bytes done.
fn moved<'a>(lines: &'a [String], step: &str) -> Vec<&'a String> {
    let bars: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with(&format!("{step:>8} [")))
        .collect();
    assert!(
        bars.iter()
            .any(|l| l.split("] ").nth(1).is_some_and(|m| !m.starts_with("0 B/"))),
        "the {step} bar never moved: {bars:#?}"
    );
    bars
}

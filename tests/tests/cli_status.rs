//! `migrate status`, `migrate rollback --path` without a backup path, and the confirmations
//! before irreversible steps: asked on a terminal only, skipped with `--yes`.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

/// Runs `migrate args` on an 80-column terminal ([`common::migrate_on_terminal`]), answering
/// `answer` to the first `Continue? [y/N]`. Returns the exit code, everything printed, and
/// whether a question was asked.
fn migrate_on_terminal(args: &[&str], answer: &str) -> (i32, String, bool) {
    migrate_on_terminal_env(args, answer, &[])
}

/// [`migrate_on_terminal`] with more environment variables.
fn migrate_on_terminal_env(
    args: &[&str],
    answer: &str,
    env: &[(&str, &str)],
) -> (i32, String, bool) {
    let seen = common::migrate_on_terminal(args, answer, env, 80);
    (seen.code, seen.drawn, seen.asked)
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(&migrate(args))).expect("JSON")
}

#[test]
fn status_shows_version_latest_pending_hops_last_migration_and_backups() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let s = json(&["status", "--path", root, "--json"]);
    assert_eq!(s["version"], "0.1.0");
    assert_eq!(s["latest"], "2.1.0");
    assert_eq!(s["pending"].as_array().unwrap().len(), 3);
    assert!(s["last_migration"].is_null());
    assert_eq!(s["backups"]["count"], 0);

    ok(&migrate(&["version", "--path", root, "--to", "1.0.0"]));
    let s = json(&["status", "--path", root, "--json"]);
    assert_eq!(s["version"], "1.0.0");
    assert_eq!(s["latest"], "2.1.0");
    let pending: Vec<(&str, &str, &str)> = s["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["from"].as_str().unwrap(),
                h["to"].as_str().unwrap(),
                h["plugin"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pending,
        [
            ("1.0.0", "2.0.0", "v1_to_v2"),
            ("2.0.0", "2.1.0", "v2_to_v2_1")
        ]
    );
    assert_eq!(s["last_migration"]["from"], "0.1.0");
    assert_eq!(s["last_migration"]["to"], "1.0.0");
    assert_eq!(s["last_migration"]["status"], "Completed");
    assert_eq!(s["backups"]["count"], 1);
    assert_eq!(s["backups"]["newest"]["target_version"], "1.0.0");
    let newest = s["backups"]["newest"]["path"].as_str().unwrap();
    assert!(Path::new(newest).join("metadata.json").is_file());

    let text = ok(&migrate(&["status", "--path", root]));
    for needle in [
        "1.0.0 → 2.0.0",
        "v2_to_v2_1",
        "0.1.0 → 1.0.0 Completed",
        newest,
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }

    ok(&migrate(&["version", "--path", root, "--yes"]));
    let s = json(&["status", "--path", root, "--json"]);
    assert_eq!(s["version"], "2.1.0");
    assert_eq!(s["latest"], "2.1.0");
    assert!(s["pending"].as_array().unwrap().is_empty());
    assert_eq!(s["backups"]["count"], 2);
}

#[test]
fn rollback_without_a_backup_path_uses_the_newest_backup_to_the_current_release() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let at_0_1 = tree_hash(install.path());
    ok(&migrate(&["version", "--path", root, "--to", "1.0.0"]));
    let at_1_0 = tree_hash(install.path());
    ok(&migrate(&["version", "--path", root, "--to", "2.1.0"]));
    let backups = json(&["backups", "list", "--path", root, "--json"]);
    let to_2_1 = backups
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["target_version"] == "2.1.0")
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = migrate(&["rollback", "--path", root]);
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains(&to_2_1), "the backup is named first:\n{err}");
    assert!(!err.contains("changed since"), "nothing was changed: {err}");
    assert_eq!(tree_hash(install.path()), at_1_0);

    // Again: now the backup that leads to 1.0.0, although restored files are newer than it.
    let out = migrate(&["rollback", "--path", root]);
    ok(&out);
    assert!(!stderr(&out).contains("changed since"), "{}", stderr(&out));
    assert_eq!(tree_hash(install.path()), at_0_1);

    // At 0.1.0 no backup leads here: said, and nothing changes.
    let out = migrate(&["--json", "rollback", "--path", root]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("0.1.0"),
        "{v}"
    );
    assert!(v["error"]["next_step"]
        .as_str()
        .unwrap()
        .contains("backups list"));
    assert_eq!(tree_hash(install.path()), at_0_1);

    // Neither --path nor --backup-path: a usage error.
    assert_eq!(migrate(&["rollback"]).status.code(), Some(2));
}

#[test]
fn a_rollback_over_changed_files_is_confirmed_on_a_terminal_only() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let at_0_1 = tree_hash(install.path());
    ok(&migrate(&["version", "--path", root, "--to", "1.0.0"]));
    // The operator edits the migrated config afterwards: no longer what the migration wrote.
    let config = install.path().join("config/server.toml");
    let edited = format!(
        "{}# tuned after the upgrade\n",
        read(install.path(), "config/server.toml")
    );
    std::fs::write(&config, &edited).unwrap();

    // On a terminal, "n" keeps everything.
    let (code, text, asked) = migrate_on_terminal(&["rollback", "--path", root], "n");
    assert!(asked, "{text}");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("config/server.toml"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(read(install.path(), "config/server.toml"), edited);

    // Without a terminal nothing is asked: the rollback goes on and says what it overwrote.
    let out = migrate(&["rollback", "--path", root]);
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("changed since the migration") && err.contains("config/server.toml"),
        "{err}"
    );
    assert_eq!(tree_hash(install.path()), at_0_1);
    // ... and the edit is not lost: the rollback saved it first.
    assert!(err.contains("saved first into"), "{err}");
}

#[test]
fn a_file_written_to_while_the_rollback_asks_is_saved_before_it_is_replaced() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    ok(&migrate(&["version", "--path", root, "--to", "1.0.0"]));
    let at_1_0 = read(install.path(), "data/requests.jsonl");
    // The config was edited: the rollback asks. The log is still what the migration wrote
    // when it asks, and a server appends a record while the operator reads the question.
    let config = install.path().join("config/server.toml");
    let edited = format!(
        "{}# tuned after the upgrade\n",
        read(install.path(), "config/server.toml")
    );
    std::fs::write(&config, &edited).unwrap();
    let record = "{\"id\":\"appended-while-asked\"}\n";
    let log = install.path().join("data/requests.jsonl");
    let seen = common::migrate_on_terminal_appending(
        &["rollback", "--path", root],
        "y",
        &[],
        80,
        Some((&log, record)),
    );
    assert!(seen.asked, "{}", seen.drawn);
    assert_eq!(seen.code, 0, "{}", seen.drawn);
    // The question named the config only; the log changed after it, and was saved too.
    assert!(
        seen.drawn
            .contains("data/requests.jsonl changed while the rollback ran"),
        "{}",
        seen.drawn
    );
    let saved: Vec<_> = std::fs::read_dir(install.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("pre_rollback")
        })
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let archive = saved[0].join("backup.tar.zst");
    let extract = |rel: &str| {
        let out = std::process::Command::new("tar")
            .args(["-I", "zstd", "-xOf"])
            .arg(&archive)
            .arg(rel)
            .output()
            .expect("tar");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(extract("data/requests.jsonl"), format!("{at_1_0}{record}"));
    assert_eq!(extract("config/server.toml"), edited);
    assert_ne!(read(install.path(), "data/requests.jsonl"), at_1_0);
}

#[test]
fn a_rollback_the_installation_is_past_is_refused_before_any_question() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    ok(&migrate(&["version", "--path", root, "--to", "1.0.0"]));
    let backups: Vec<_> = std::fs::read_dir(install.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let to_1_0 = backups[0].to_str().unwrap().to_owned();
    ok(&migrate(&["version", "--path", root, "--to", "2.0.0"]));
    // Changed since the 1.0.0 migration: a rollback to that backup would replace it, but the
    // installation is at 2.0.0, which that backup does not restore.
    let config = install.path().join("config/server.toml");
    let edited = format!(
        "{}# tuned after the upgrade\n",
        read(install.path(), "config/server.toml")
    );
    std::fs::write(&config, &edited).unwrap();
    let before = tree_hash(install.path());

    // On a terminal, the operator is not asked about files a refused rollback never touches.
    let args = ["rollback", "--backup-path", to_1_0.as_str(), "--path", root];
    let (code, text, asked) = migrate_on_terminal(&args, "y");
    assert!(!asked, "{text}");
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("the installation is at 2.0.0"), "{text}");
    // Without one, no warning says what it would have replaced.
    let out = migrate(&args);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("changed since the migration"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_hash(install.path()), before);
}

#[test]
fn a_rollback_reads_no_file_through_a_link_and_is_refused_before_extracting() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    ok(&migrate(&["version", "--path", root, "--to", "1.0.0"]));
    // The config folder replaced by a link to a folder outside, whose server.toml differs
    // from what the migration wrote.
    let outside = tempfile::tempdir().unwrap();
    let config = install.path().join("config");
    copy_tree(&config, &outside.path().join("config"));
    let theirs = outside.path().join("config/server.toml");
    let edited = format!("{}# outside\n", std::fs::read_to_string(&theirs).unwrap());
    std::fs::write(&theirs, &edited).unwrap();
    std::fs::remove_dir_all(&config).unwrap();
    std::os::unix::fs::symlink(outside.path().join("config"), &config).unwrap();

    let out = migrate(&["rollback", "--path", root]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
    // The file behind the link was not compared (nor named as changed), and nothing was
    // extracted: the refusal came first.
    assert!(!err.contains("changed since the migration"), "{err}");
    assert!(!err.contains("[restore]"), "{err}");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), edited);
    assert!(config.is_symlink());
    assert_eq!(read(install.path(), "VERSION").trim(), "1.0.0");
}

#[test]
fn hashing_api_keys_is_confirmed_on_a_terminal_and_never_asked_with_yes_or_without_one() {
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    ok(&migrate(&["version", "--path", root, "--to", "2.0.0"]));
    let at_2_0 = tree_hash(install.path());

    let (code, text, asked) = migrate_on_terminal(&["version", "--path", root], "n");
    assert!(asked, "{text}");
    assert!(
        text.contains("irreversib") && text.contains("API keys"),
        "{text}"
    );
    assert_eq!(code, 1, "{text}");
    assert_eq!(tree_hash(install.path()), at_2_0);

    // A dry run changes nothing, so asks nothing.
    let (code, text, asked) = migrate_on_terminal(&["version", "--path", root, "--dry-run"], "n");
    assert!(!asked && code == 0, "{text}");

    let (code, text, asked) = migrate_on_terminal(&["version", "--path", root, "--yes"], "n");
    assert!(!asked, "{text}");
    assert_eq!(code, 0, "{text}");
    assert_eq!(read(install.path(), "VERSION"), "2.1.0\n");

    // stdin not a terminal (Ansible, cron, a pipe): never asked, never blocked.
    let other = sample_install();
    let other_root = other.path().to_str().unwrap();
    let out = migrate(&["version", "--path", other_root]);
    ok(&out);
    assert!(!stderr(&out).contains("Continue?"), "{}", stderr(&out));
    assert_eq!(read(other.path(), "VERSION"), "2.1.0\n");
}

/// The question is asked because of the descriptor's flag (plugin-api 1.6.0), not the
/// wording: the failing hop's 1.0.0 → 2.0.0, flagged by a breaking change that never says
/// "irreversible", is asked about, and the same hop unflagged is not.
#[test]
fn a_hop_flagged_irreversible_is_confirmed_whatever_its_text_says() {
    let plugins = tempfile::tempdir().expect("tempdir");
    for (from, name) in [
        (failing_hop().to_path_buf(), "libfailing_hop.so"),
        (target_dir().join("libv0_1_to_v1.so"), "libv0_1_to_v1.so"),
    ] {
        let dest = plugins.path().join(name);
        std::fs::copy(from, &dest).expect("copy plugin");
        // Whatever the umask: migrate refuses group- or world-writable plugins.
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))
            .expect("chmod plugin");
    }
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let before = tree_hash(install.path());
    let args = [
        "--no-default-plugins",
        "--plugin-dir",
        plugins.path().to_str().unwrap(),
        "version",
        "--path",
        root,
        "--to",
        "2.0.0",
    ];

    let flagged = [("FAILING_HOP_IRREVERSIBLE", "1")];
    let (code, text, asked) = migrate_on_terminal_env(&args, "n", &flagged);
    assert!(asked, "{text}");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("irreversible changes")
            && text.contains("1.0.0 → 2.0.0: records: the fixture's field is dropped for good"),
        "{text}"
    );
    assert_eq!(tree_hash(install.path()), before);

    // Unflagged, the same hop is not asked about: the run goes on, to the staging (which this
    // fixture, touching only records, leaves invalid for 2.0.0: refused before the swap).
    let (code, text, asked) = migrate_on_terminal_env(&args, "n", &[]);
    assert!(!asked, "{text}");
    assert!(!text.contains("irreversible changes"), "{text}");
    assert_eq!(code, 6, "{text}");
    assert!(
        text.contains("staged output is not a valid 2.0.0"),
        "{text}"
    );
    assert_eq!(tree_hash(install.path()), before);
}

#[test]
fn status_of_an_installation_of_unknown_version_says_how_to_tell_it() {
    let install = sample_install();
    write(install.path(), "config/server.toml", "port = 1\n");
    let out = migrate(&[
        "--json",
        "status",
        "--path",
        install.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let next = v["error"]["next_step"].as_str().unwrap();
    // status takes no --from: the next step must name something status can use.
    assert!(next.contains("/VERSION"), "{next}");
}

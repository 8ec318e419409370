//! Issue 14, "Trust nothing on disk": each numbered finding of the issue, reproduced on a real
//! installation on disk with the real binary and plugins — links, FIFOs, crafted journals,
//! crafted backups, a zstd bomb, umask 022 and 000 — and what must happen instead.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn migrate_version(root: &Path, extra: &[&str]) -> Output {
    migrate(&version_args(root, extra))
}

/// `version --path ROOT --to 2.1.0`, then `extra`.
fn version_args<'a>(root: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["version", "--path", p(root), "--to", "2.1.0"];
    args.extend_from_slice(extra);
    args
}

/// `migrate` with extra environment, a working folder and a umask of its own.
fn migrate_with(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&Path>,
    umask: Option<u32>,
) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(migrate_bin());
    isolated(cmd.args(args), home.path())
        .env_remove("TRUSTFORMERS_MIGRATE_FAULT")
        .envs(env.iter().copied());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    if let Some(mask) = umask {
        // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's mask.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
    cmd.output().expect("run migrate")
}

fn was_killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(libc::SIGKILL)
}

/// The backup folders in `dir`.
fn backups_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(read) => read.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn only_backup(root: &Path) -> PathBuf {
    let b = backups_in(&root.join("backups"));
    assert_eq!(b.len(), 1, "{b:?}");
    b[0].clone()
}

fn metadata(backup: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(backup.join("metadata.json")).expect("metadata"))
        .expect("metadata.json")
}

fn write_metadata(backup: &Path, meta: &serde_json::Value) {
    std::fs::write(
        backup.join("metadata.json"),
        serde_json::to_vec_pretty(meta).expect("json"),
    )
    .expect("write metadata");
}

/// The entries of a backup archive: name → bytes.
fn archive_entries(backup: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let bytes = std::fs::read(backup.join("backup.tar.zst")).expect("archive");
    let tar = zstd::decode_all(bytes.as_slice()).expect("zstd");
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        out.push((name, data));
    }
    out
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(p(path)).expect("c path");
    // SAFETY: a valid NUL-terminated path; mkfifo has no other precondition.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(r, 0, "mkfifo {}", path.display());
}

/// Runs `migrate` and fails the test (instead of hanging it) if it has not ended after a
/// generous while: what a FIFO would do to a reader that opens it blocking.
fn migrate_or_hang(args: &[&str]) -> Output {
    let mut child = Command::new(migrate_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn migrate");
    for _ in 0..600 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "`migrate {}` hung on a FIFO:\n{}",
        args.join(" "),
        both(&out)
    );
}

/// Finding 1: killed while the backup is written, then `recover --forward`. The migration is
/// finished only after its backup was completed from the journal's kept originals: the backup
/// is listed and verifies, no `.partial` is left, and rolling back from it brings the plaintext
/// API keys back.
#[test]
fn finding_01_forward_recovery_completes_the_backup_first() {
    let dir = sample_install();
    let root = dir.path();
    let original = tree_hash(root);
    let out = migrate_with(
        &["version", "--path", p(root), "--to", "2.1.0"],
        &[("TRUSTFORMERS_MIGRATE_FAULT", "backup_entry:2")],
        None,
        None,
    );
    assert!(was_killed(&out), "not killed: {}", both(&out));
    let partial: Vec<PathBuf> = backups_in(&root.join("backups"));
    assert!(
        partial
            .iter()
            .all(|b| b.extension().is_some_and(|e| e == "partial"))
            && !partial.is_empty(),
        "the kill should leave only a .partial backup: {partial:?}"
    );
    let rec = migrate(&["recover", "--path", p(root), "--forward"]);
    let text = ok(&rec);
    assert!(
        text.contains("finished") && text.contains("completing its backup"),
        "{text}"
    );
    let backup = only_backup(root);
    assert!(
        backup.extension().is_none(),
        "the .partial backup was not removed: {backup:?}"
    );
    let list = ok(&migrate(&["backups", "list", "--path", p(root)]));
    assert!(list.contains(p(&backup)), "{list}");
    ok(&migrate(&["backups", "verify", p(&backup)]));
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
    assert!(!read(root, "data/api_keys.json").contains("tfk_8c1d0e5f9a7b4c2e"));
    ok(&migrate(&["rollback", "--backup-path", p(&backup)]));
    assert_eq!(
        tree_hash(root),
        original,
        "the completed backup restores every byte"
    );
    assert!(read(root, "data/api_keys.json").contains("tfk_8c1d0e5f9a7b4c2e"));

    // When the backup cannot be completed (its folder is now a file), `--forward` refuses and
    // says why; the migration stays undoable, and a plain `recover` undoes it.
    let dir = sample_install();
    let root = dir.path();
    let original = tree_hash(root);
    let out = migrate_with(
        &["version", "--path", p(root), "--to", "2.1.0"],
        &[("TRUSTFORMERS_MIGRATE_FAULT", "backup_entry:2")],
        None,
        None,
    );
    assert!(was_killed(&out), "not killed: {}", both(&out));
    std::fs::remove_dir_all(root.join("backups")).unwrap();
    std::fs::write(root.join("backups"), "not a folder").unwrap();
    let out = migrate(&["recover", "--path", p(root), "--forward"]);
    let text = both(&out);
    assert_eq!(
        out.status.code(),
        Some(8),
        "the journal is kept: interrupted; {text}"
    );
    assert!(
        text.contains("no backup yet") && text.contains("without --forward"),
        "{text}"
    );
    assert_eq!(
        tree_hash(root).get("VERSION"),
        None,
        "finished without a backup"
    );
    std::fs::remove_file(root.join("backups")).unwrap();
    let text = ok(&migrate(&["recover", "--path", p(root)]));
    assert!(text.contains("rolled back"), "{text}");
    assert_eq!(tree_hash(root), original);
}

/// The backup records the size and sha256 of every file the migration wrote, for a rollback
/// to tell them from what changed since. The data files' come from the pre-swap check, which
/// hashed them as it read them (the backup does not read them again): each must be the file's
/// as it is installed, as the others are.
#[test]
fn the_backup_records_the_sha256_of_what_the_migration_wrote() {
    let dir = sample_install();
    let root = dir.path();
    let out = migrate_version(root, &["-vv"]);
    let text = ok(&out) + &stderr(&out);
    let meta = metadata(&only_backup(root));
    let written = meta["written"].as_array().unwrap();
    let paths: Vec<&str> = written
        .iter()
        .map(|w| w["path"].as_str().unwrap())
        .collect();
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("data/") && p.ends_with(".jsonl")),
        "{paths:?}"
    );
    for w in written {
        let rel = w["path"].as_str().unwrap();
        let from_the_check = text.lines().any(|l| {
            l.contains("checksum taken by the pre-swap check")
                && l.contains(&format!("file=\"{rel}\""))
        });
        assert_eq!(
            from_the_check,
            rel.ends_with(".jsonl"),
            "{rel}: the check's checksum is used for the data logs only: {text}"
        );
        let bytes = std::fs::read(root.join(rel)).unwrap();
        assert_eq!(w["size"], bytes.len() as u64, "{w}");
        assert_eq!(w["sha256"], sha256_hex(&bytes), "{w}");
    }
}

/// A metadata.json that lists one path both among the files a rollback restores and among those
/// it removes (as created by the migration) would have the file put back, then deleted: it is
/// refused by `backups verify` and `rollback`, and nothing changes.
#[test]
fn a_backup_listing_a_file_both_restored_and_removed_is_refused() {
    let dir = sample_install();
    let root = dir.path();
    ok(&migrate_version(root, &[]));
    let backup = only_backup(root);
    let mut meta = metadata(&backup);
    assert!(
        meta["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "config/server.toml"),
        "{meta}"
    );
    meta["created_files"]
        .as_array_mut()
        .unwrap()
        .push("config/server.toml".into());
    write_metadata(&backup, &meta);
    let migrated = tree_hash(root);
    let verify = migrate(&["backups", "verify", p(&backup)]);
    assert!(!verify.status.success(), "{}", both(&verify));
    assert!(both(&verify).contains("listed twice"), "{}", both(&verify));
    let rollback = migrate(&["rollback", "--backup-path", p(&backup)]);
    assert_eq!(rollback.status.code(), Some(3), "{}", both(&rollback));
    assert!(
        both(&rollback).contains("config/server.toml"),
        "{}",
        both(&rollback)
    );
    assert_eq!(tree_hash(root), migrated);
}

/// A file written to after the rollback's last full look (while it saves what changed and
/// prepares its swap: a server still running) stops the rollback before anything is swapped;
/// once the writer stops, the next rollback saves that write first.
#[test]
fn a_file_written_to_just_before_the_rollback_swaps_stops_it_with_nothing_swapped() {
    let dir = sample_install();
    let root = dir.path();
    let original = tree_hash(root);
    ok(&migrate_version(root, &[]));
    let log = root.join("data/requests.jsonl");
    let record = "{\"id\":\"appended-before-the-swap\"}\n";
    let out = migrate_paused(&["rollback", "--path", p(root)], "restore_prepared", || {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, record.as_bytes()).unwrap();
    });
    let text = both(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("data/requests.jsonl changed while the rollback saved"),
        "{text}"
    );
    assert!(text.contains("stop the server"), "{text}");
    // Nothing swapped: still the migrated installation, with the record, and no journal.
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
    assert!(read(root, "data/requests.jsonl").ends_with(record));
    assert!(!root.join(".migrate/journal.json").exists());
    assert_no_leftovers(root, "after the refused rollback");

    // A writer that replaces the file (a new one renamed over it, as an editor saves): the
    // refused rollback leaves the new file, not the original it had kept aside.
    let rewritten = format!("{}{record}", read(root, "data/requests.jsonl"));
    let out = migrate_paused(&["rollback", "--path", p(root)], "restore_prepared", || {
        let new = root.join("data/requests.jsonl.new");
        std::fs::write(&new, &rewritten).unwrap();
        std::fs::rename(&new, &log).unwrap();
    });
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(
        read(root, "data/requests.jsonl") == rewritten,
        "the file the writer put in place was replaced by the original kept aside"
    );
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
    assert_no_leftovers(root, "after the second refused rollback");

    let again = migrate(&["rollback", "--path", p(root)]);
    let text = both(&again);
    assert!(again.status.success(), "{text}");
    assert!(
        text.contains("data/requests.jsonl") && text.contains("saved first into"),
        "{text}"
    );
    assert_eq!(tree_hash(root), original);
}

/// Finding 2: `created_files` names a file the migration never created. A name without the
/// sha256 of what the migration wrote is refused by `backups verify` and `rollback`; one with
/// a sha256 that is not the file's makes the rollback keep the file and say so.
#[test]
fn finding_02_rollback_removes_only_what_the_migration_wrote() {
    let dir = sample_install();
    let root = dir.path();
    ok(&migrate_version(root, &[]));
    let backup = only_backup(root);
    let innocent = read(root, "config/logging.toml");
    let real = metadata(&backup);
    assert!(
        real["created_files"].as_array().unwrap().iter().all(|c| {
            real["written"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["path"] == *c)
        }),
        "every created file has the sha256 of what the migration wrote: {real}"
    );

    // (a) Listed as created, no sha256: refused by both, nothing changes.
    let mut meta = real.clone();
    meta["created_files"]
        .as_array_mut()
        .unwrap()
        .push("config/logging.toml".into());
    write_metadata(&backup, &meta);
    let migrated = tree_hash(root);
    let verify = migrate(&["backups", "verify", p(&backup)]);
    assert!(
        !verify.status.success(),
        "verify accepted it: {}",
        both(&verify)
    );
    assert!(
        both(&verify).contains("config/logging.toml"),
        "{}",
        both(&verify)
    );
    let rollback = migrate(&["rollback", "--backup-path", p(&backup)]);
    assert_eq!(rollback.status.code(), Some(3), "{}", both(&rollback));
    assert_eq!(tree_hash(root), migrated);

    // (b) Listed as created, with a sha256 that is not the file's: the file is kept.
    let mut meta = real.clone();
    meta["created_files"]
        .as_array_mut()
        .unwrap()
        .push("config/logging.toml".into());
    meta["written"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "path": "config/logging.toml", "size": 1, "mode": 420, "sha256": "0".repeat(64)
        }));
    write_metadata(&backup, &meta);
    let rollback = migrate(&["rollback", "--backup-path", p(&backup)]);
    let text = both(&rollback);
    assert!(rollback.status.success(), "{text}");
    assert_eq!(
        read(root, "config/logging.toml"),
        innocent,
        "rollback deleted or changed it"
    );
    assert!(
        text.contains("config/logging.toml") && text.contains("kept"),
        "{text}"
    );
    assert_eq!(
        read(root, "config/server.toml"),
        read(
            &workspace_root().join("samples/install-0.1.0"),
            "config/server.toml"
        )
    );
}

/// Finding 3: a link inside the installation (`data/archive -> <outside>`). The restore refuses
/// it, names it, and writes or deletes nothing outside.
#[test]
fn finding_03_a_restore_never_follows_a_link() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("install");
    copy_tree(&workspace_root().join("samples/install-0.1.0"), &root);
    ok(&migrate_version(&root, &[]));
    let backup = only_backup(&root);
    let outside = base.path().join("elsewhere");
    std::fs::rename(root.join("data/archive"), &outside).expect("move out");
    std::os::unix::fs::symlink(&outside, root.join("data/archive")).expect("symlink");
    let outside_before = full_tree_hash(&outside);
    let before = full_tree_hash(&root);
    let out = migrate(&["rollback", "--backup-path", p(&backup)]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("data/archive") && text.contains("symbolic link"),
        "{text}"
    );
    assert_eq!(full_tree_hash(&outside), outside_before, "written outside");
    let mut after = full_tree_hash(&root);
    after.remove(".migrate/lock");
    let mut before = before;
    before.remove(".migrate/lock");
    assert_eq!(after, before, "the installation changed");
    assert_no_leftovers(&root, "refused restore");
}

/// Finding 4: `root` is stored canonical and absolute; without `--path`, a backup that does not
/// lie under its recorded root (a relative `"s1"` here, run from another folder holding another
/// `s1`) asks for `--path`; and a target whose VERSION is not the backup's target is refused.
#[test]
fn finding_04_the_recorded_root_is_used_only_when_certain() {
    let base = tempfile::tempdir().expect("tempdir");
    let real = base.path().join("a/s1");
    let other = base.path().join("b/s1");
    copy_tree(&workspace_root().join("samples/install-0.1.0"), &real);
    copy_tree(&workspace_root().join("samples/install-0.1.0"), &other);
    let out = migrate_with(
        &["version", "--path", "s1", "--to", "2.1.0"],
        &[],
        Some(&base.path().join("a")),
        None,
    );
    ok(&out);
    ok(&migrate_version(&other, &[]));
    let backup = only_backup(&real);
    let meta = metadata(&backup);
    assert_eq!(
        meta["root"].as_str(),
        Some(p(&real.canonicalize().unwrap())),
        "root must be stored canonical and absolute"
    );
    // The default layout: the recorded root is used.
    let copy = base.path().join("copied-backup");
    copy_tree(&backup, &copy);
    // A backup with the root as typed, copied elsewhere, run from the other `s1`'s folder.
    let mut typed = meta.clone();
    typed["root"] = "s1".into();
    write_metadata(&copy, &typed);
    let (real_before, other_before) = (tree_hash(&real), tree_hash(&other));
    let out = migrate_with(
        &["rollback", "--backup-path", p(&copy)],
        &[],
        Some(&base.path().join("b")),
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(both(&out).contains("--path"), "{}", both(&out));
    assert_eq!(
        tree_hash(&other),
        other_before,
        "restored into another installation"
    );
    assert_eq!(tree_hash(&real), real_before);

    // VERSION is not the backup's target: refused, unless --force.
    let fresh = sample_install();
    let fresh_before = tree_hash(fresh.path());
    let out = migrate(&[
        "rollback",
        "--backup-path",
        p(&backup),
        "--path",
        p(fresh.path()),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(both(&out).contains("2.1.0"), "{}", both(&out));
    assert_eq!(tree_hash(fresh.path()), fresh_before);
    // With --force it restores, and what it would overwrite is saved first: the fresh tree's
    // own files differ from what the migration wrote.
    let out = migrate(&[
        "rollback",
        "--backup-path",
        p(&backup),
        "--path",
        p(fresh.path()),
        "--force",
    ]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(both(&out).contains("saved"), "{}", both(&out));
    assert_eq!(
        tree_hash(fresh.path()),
        fresh_before,
        "a 0.1.0 tree restored to 0.1.0"
    );

    // And the real one, without --path, from anywhere: the recorded root.
    let out = migrate_with(
        &["rollback", "--backup-path", p(&backup)],
        &[],
        Some(base.path()),
        None,
    );
    ok(&out);
    assert_eq!(
        read(&real, "data/api_keys.json"),
        read(
            &workspace_root().join("samples/install-0.1.0"),
            "data/api_keys.json"
        )
    );
    assert_eq!(tree_hash(&other), other_before);
}

/// A journal crafted by whoever can write the installation.
fn crafted_journal(staging: &str, originals: &str, entries: serde_json::Value) -> String {
    serde_json::json!({
        "format": 1, "pid": 1, "from": "0.1.0", "to": "1.0.0",
        "staging": staging, "originals": originals, "entries": entries,
        "created_dirs": [], "phase": "RollingBack"
    })
    .to_string()
}

/// Finding 5: `.migrate/journal.json` is not trusted. Journals whose originals, staging or
/// entries point outside the installation, a journal owned by another user, a `.migrate/`
/// others can write, and a journal that is a link: a plain `migrate info` refuses each, names
/// the fix, and deletes or moves nothing inside or outside.
#[test]
fn finding_05_a_crafted_journal_is_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("install");
    copy_tree(&workspace_root().join("samples/install-0.1.0"), &root);
    let victim = base.path().join("victim");
    std::fs::create_dir_all(victim.join("data")).expect("mkdir");
    std::fs::write(victim.join("data/requests.jsonl"), "precious\n").expect("write");
    std::fs::create_dir_all(root.join(".migrate")).expect("mkdir");
    std::fs::set_permissions(
        root.join(".migrate"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let journal = root.join(".migrate/journal.json");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "originals outside",
            crafted_journal(
                ".migrate/staging-x",
                "../victim",
                serde_json::json!([{"rel": "data/requests.jsonl", "action": "Replace"}]),
            ),
            &["originals"],
        ),
        (
            "absolute staging",
            crafted_journal(
                p(&victim),
                &format!("{}.orig", p(&victim)),
                serde_json::json!([]),
            ),
            &["staging"],
        ),
        (
            "entry outside",
            crafted_journal(
                ".migrate/staging-x",
                ".migrate/staging-x.orig",
                serde_json::json!([{"rel": "../victim/data/requests.jsonl", "action": "Create"}]),
            ),
            &["..", "refused"],
        ),
    ];
    let installation = tree_hash(&root);
    for (case, text, why) in cases {
        std::fs::write(&journal, text).expect("write journal");
        std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = migrate(&["info", "--path", p(&root), "--to", "2.1.0"]);
        let said = both(&out);
        assert_eq!(out.status.code(), Some(3), "{case}: {said}");
        assert!(
            why.iter().all(|w| said.contains(w)),
            "{case}: {why:?} not in {said}"
        );
        assert_eq!(
            read(&victim, "data/requests.jsonl"),
            "precious\n",
            "{case}: the victim changed"
        );
        assert_eq!(
            tree_hash(&root),
            installation,
            "{case}: the installation changed"
        );
        println!(
            "  {case}: refused: {}",
            said.lines().next().unwrap_or_default()
        );
    }
    // A genuine-looking journal written by another user (a service account).
    std::fs::write(
        &journal,
        crafted_journal(
            ".migrate/staging-x",
            ".migrate/staging-x.orig",
            serde_json::json!([]),
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&journal, Some(4242), Some(4242)).expect("chown");
    let out = migrate(&["info", "--path", p(&root), "--to", "2.1.0"]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(both(&out).contains("uid 4242"), "{}", both(&out));
    assert!(
        journal.exists(),
        "a journal it refused to trust was acted on"
    );
    std::os::unix::fs::chown(&journal, Some(0), Some(0)).expect("chown");
    // .migrate/ writable by others.
    std::fs::set_permissions(
        root.join(".migrate"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let out = migrate(&["info", "--path", p(&root), "--to", "2.1.0"]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(both(&out).contains("chmod 700"), "{}", both(&out));
    std::fs::set_permissions(
        root.join(".migrate"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    // The journal is a link to a file elsewhere.
    std::fs::remove_file(&journal).unwrap();
    let elsewhere = base.path().join("journal-elsewhere.json");
    std::fs::write(
        &elsewhere,
        crafted_journal(
            ".migrate/staging-x",
            ".migrate/staging-x.orig",
            serde_json::json!([]),
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(&elsewhere, &journal).unwrap();
    let out = migrate(&["info", "--path", p(&root), "--to", "2.1.0"]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(both(&out).contains("symbolic link"), "{}", both(&out));
    assert!(elsewhere.exists());
    assert_eq!(read(&victim, "data/requests.jsonl"), "precious\n");
}

/// Finding 6: bounded work. A zstd bomb (an entry whose tar header declares 64 MiB where the
/// metadata lists the real, small size) is refused before its data is read, by `verify` and
/// `rollback`; a FIFO named `metadata.json` does not hang `backups list` or `backups verify`;
/// a `metadata.json` over 64 MiB is refused without being read.
#[test]
fn finding_06_reads_are_bounded() {
    let dir = sample_install();
    let root = dir.path();
    ok(&migrate_version(root, &[]));
    let backup = only_backup(root);
    let meta = metadata(&backup);
    let migrated = tree_hash(root);

    // The bomb: config/server.toml's entry is 64 MiB of zeros.
    let bomb_dir = tempfile::tempdir().expect("tempdir");
    let bomb = bomb_dir.path().join("full_backup_1");
    std::fs::create_dir_all(&bomb).unwrap();
    {
        let file = std::fs::File::create(bomb.join("backup.tar.zst")).unwrap();
        let enc = zstd::Encoder::new(file, 1).unwrap().auto_finish();
        let mut builder = tar::Builder::new(enc);
        for (name, data) in archive_entries(&backup) {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            if name == "config/server.toml" {
                h.set_size(64 << 20);
                builder
                    .append_data(&mut h, &name, std::io::repeat(0).take(64 << 20))
                    .unwrap();
            } else {
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, &name, data.as_slice()).unwrap();
            }
        }
        builder.finish().unwrap();
    }
    write_metadata(&bomb, &meta);
    for args in [
        vec!["backups", "verify", p(&bomb)],
        vec!["rollback", "--backup-path", p(&bomb), "--path", p(root)],
    ] {
        let out = migrate(&args);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
        assert!(
            text.contains("config/server.toml") && text.contains("refused before reading it"),
            "{args:?}: {text}"
        );
    }
    assert_eq!(tree_hash(root), migrated);
    assert_no_leftovers(root, "bomb");

    // A FIFO named metadata.json, in the backups folder and given to verify.
    let fifo_backup = root.join("backups/full_backup_9");
    std::fs::create_dir_all(&fifo_backup).unwrap();
    mkfifo(&fifo_backup.join("metadata.json"));
    let list = migrate_or_hang(&["backups", "list", "--path", p(root)]);
    assert!(both(&list).contains("special file"), "{}", both(&list));
    let verify = migrate_or_hang(&["backups", "verify", p(&fifo_backup)]);
    assert_eq!(verify.status.code(), Some(3), "{}", both(&verify));
    assert!(both(&verify).contains("special file"), "{}", both(&verify));
    std::fs::remove_dir_all(&fifo_backup).unwrap();

    // A 65 MiB metadata.json (sparse: it costs no disk).
    let huge = root.join("backups/full_backup_8");
    std::fs::create_dir_all(&huge).unwrap();
    std::fs::File::create(huge.join("metadata.json"))
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let verify = migrate(&["backups", "verify", p(&huge)]);
    assert_eq!(verify.status.code(), Some(3), "{}", both(&verify));
    assert!(
        both(&verify).contains("larger than 64 MiB"),
        "{}",
        both(&verify)
    );
}

use std::io::Read as _;

/// Finding 7: with umask 022 and with umask 000, `backups/` and the backup folder are 0700,
/// the archive and metadata 0600, `.migrate/` 0700, `audit.jsonl` and the lock 0600, and a
/// quarantine file has its data file's mode.
#[test]
fn finding_07_modes_do_not_follow_the_umask() {
    for umask in [0o022, 0o000] {
        let dir = sample_install();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut requests = read(root, "data/requests.jsonl");
        requests.push_str(
            "{\"id\":\"req-q\",\"model\":\"bert-tiny\",\"latency_ms\":5,\"metrics\":{\"kept\":1}}\n",
        );
        write(root, "data/requests.jsonl", &requests);
        std::fs::set_permissions(
            root.join("data/requests.jsonl"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::set_permissions(
            root.join("data/api_keys.json"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let out = migrate_with(
            &[
                "version",
                "--path",
                p(root),
                "--to",
                "2.1.0",
                "--on-invalid",
                "quarantine",
            ],
            &[],
            None,
            Some(umask),
        );
        ok(&out);
        let backup = only_backup(root);
        let ctx = format!("umask {umask:03o}");
        for (path, want) in [
            (root.join("backups"), 0o700),
            (backup.clone(), 0o700),
            (backup.join("backup.tar.zst"), 0o600),
            (backup.join("metadata.json"), 0o600),
            (root.join(".migrate"), 0o700),
            (root.join(".migrate/audit.jsonl"), 0o600),
            (root.join(".migrate/lock"), 0o600),
            (
                root.join("data/.quarantine/requests.jsonl.rejected.jsonl"),
                0o640,
            ),
            (root.join("data/api_keys.json"), 0o600),
        ] {
            assert_eq!(mode_of(&path), want, "{ctx}: {}", path.display());
        }
        let version = mode_of(&root.join("VERSION"));
        assert_eq!(
            version & 0o022,
            0,
            "{ctx}: VERSION is writable by others ({version:o})"
        );
    }
}

/// Finding 8: an API-key entry whose `key` is not a string is an error naming the field, and
/// with `--on-invalid quarantine` it goes to the quarantine: it is never migrated with its
/// plaintext left in place.
#[test]
fn finding_08_a_non_string_api_key_is_never_left_in_place() {
    let dir = sample_install();
    let root = dir.path();
    write(
        root,
        "data/api_keys.json",
        "{\"keys\":[{\"name\":\"ci\",\"key\":{\"secret\":\"tfk_plain_object\"},\"created_at\":1640995200,\"scopes\":[\"infer\"]}]}\n",
    );
    let before = tree_hash(root);
    let out = migrate_version(root, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(
        both(&out).contains("keys[0].key") && both(&out).contains("must be a string"),
        "{}",
        both(&out)
    );
    assert_eq!(tree_hash(root), before);
    let out = migrate_version(root, &["--on-invalid", "quarantine"]);
    ok(&out);
    let left: Vec<String> = tree_hash(root)
        .keys()
        .filter(|rel| !rel.starts_with("data/.quarantine"))
        .filter(|rel| {
            let bytes = std::fs::read(root.join(rel)).expect("read");
            bytes.windows(16).any(|w| w == b"tfk_plain_object")
        })
        .cloned()
        .collect();
    assert!(left.is_empty(), "the plaintext key stayed in {left:?}");
    assert!(read(root, "data/.quarantine/api_keys.json.rejected.jsonl").contains("keys[0].key"));
}

/// Finding 9: an installation at 2.1.0 migrated with `--from 0.1.0 --force`. The run is
/// refused as a wrong version naming 2.1.0, even with `--on-invalid quarantine`; nothing is
/// quarantined, no data is emptied, and the hint suggests nothing that loses data. A run with
/// more refused records than `max_invalid_records` is refused as well.
#[test]
fn finding_09_a_wrong_version_is_not_invalid_data() {
    let dir = sample_install();
    let root = dir.path();
    ok(&migrate_version(root, &[]));
    let migrated = tree_hash(root);
    for extra in [
        &["--from", "0.1.0", "--force"][..],
        &["--from", "0.1.0", "--force", "--on-invalid", "quarantine"],
    ] {
        let out = migrate_version(root, extra);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(7), "{extra:?}: {text}");
        assert!(
            text.contains("2.1.0") && text.contains("schema_version 3"),
            "{extra:?}: {text}"
        );
        assert!(
            !text.contains("--on-invalid quarantine"),
            "{extra:?}: the hint suggests quarantining: {text}"
        );
        assert_eq!(tree_hash(root), migrated, "{extra:?}: changed");
        assert!(!root.join("data/.quarantine").exists());
    }

    // The ceiling: 5 invalid records, max_invalid_records = 3.
    let dir = sample_install();
    let root = dir.path();
    let mut requests = read(root, "data/requests.jsonl");
    for i in 0..5 {
        requests.push_str(&format!(
            "{{\"id\":\"bad-{i}\",\"model\":\"m\",\"latency_ms\":5,\"metrics\":{{}}}}\n"
        ));
    }
    write(root, "data/requests.jsonl", &requests);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[data_migration]\nmax_invalid_records = 3\n").unwrap();
    let before = tree_hash(root);
    let out = migrate(&[
        "--config-file",
        p(cfg.path()),
        "version",
        "--path",
        p(root),
        "--to",
        "2.1.0",
        "--on-invalid",
        "quarantine",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(both(&out).contains("max_invalid_records"), "{}", both(&out));
    assert_eq!(tree_hash(root), before);
}

/// Finding 10: a FIFO `data/x.jsonl`, a `data/ext.jsonl` linking to a file outside and a
/// name that is not UTF-8 are errors naming them, for `version` and for `validate`.
#[test]
fn finding_10_special_files_are_errors() {
    let base = tempfile::tempdir().expect("tempdir");
    let outside = base.path().join("outside.jsonl");
    std::fs::write(&outside, "{\"id\":\"x\",\"model\":\"m\"}\n").unwrap();
    type Plant = Box<dyn Fn(&Path)>;
    let outside2 = outside.clone();
    let outside3 = outside.clone();
    let cases: Vec<(&str, Plant, &str)> = vec![
        (
            "fifo",
            Box::new(|root: &Path| mkfifo(&root.join("data/x.jsonl"))),
            "special file",
        ),
        (
            "link",
            Box::new(move |root: &Path| {
                std::os::unix::fs::symlink(&outside2, root.join("data/ext.jsonl")).unwrap()
            }),
            "symbolic link",
        ),
        (
            "link in a model folder",
            Box::new(move |root: &Path| {
                std::os::unix::fs::symlink(&outside3, root.join("models/bert-tiny/extra.json"))
                    .unwrap()
            }),
            "symbolic link",
        ),
        (
            "non-utf8",
            Box::new(|root: &Path| {
                use std::os::unix::ffi::OsStrExt;
                let name = std::ffi::OsStr::from_bytes(b"bad-\xff.jsonl");
                std::fs::write(root.join("data").join(name), "{}\n").unwrap();
            }),
            "\\xff",
        ),
    ];
    for (case, plant, why) in cases {
        let dir = sample_install();
        let root = dir.path();
        plant(root);
        let out = migrate_or_hang(&["version", "--path", p(root), "--to", "2.1.0"]);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(3), "{case}: {text}");
        assert!(text.contains(why), "{case}: {why} not in {text}");
        assert!(!root.join("VERSION").exists(), "{case}: migrated anyway");
        let out = migrate_or_hang(&["validate", "--path", p(root), "--version", "0.1.0"]);
        assert!(
            !out.status.success(),
            "{case}: validate says valid: {}",
            both(&out)
        );
        assert!(both(&out).contains(why), "{case}: {}", both(&out));
        println!("  {case}: refused");
    }
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "{\"id\":\"x\",\"model\":\"m\"}\n"
    );
}

/// Finding 11: a record appended after the migration is not lost by `rollback`: the current
/// file is saved into a pre-rollback backup first, and the rollback says so.
#[test]
fn finding_11_records_written_after_the_migration_are_saved() {
    let dir = sample_install();
    let root = dir.path();
    let original = tree_hash(root);
    ok(&migrate_version(root, &[]));
    let backup = only_backup(root);
    let later = "{\"id\":\"after\",\"model\":\"bert-tiny\",\"schema_version\":3}\n";
    let mut requests = read(root, "data/requests.jsonl");
    requests.push_str(later);
    write(root, "data/requests.jsonl", &requests);
    let out = migrate(&["rollback", "--backup-path", p(&backup)]);
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("data/requests.jsonl") && text.contains("saved"),
        "{text}"
    );
    assert_eq!(tree_hash(root), original);
    let saved: Vec<PathBuf> = backups_in(&root.join("backups"))
        .into_iter()
        .filter(|b| b.to_string_lossy().contains("pre_rollback"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    ok(&migrate(&["backups", "verify", p(&saved[0])]));
    let entries = archive_entries(&saved[0]);
    let kept = entries
        .iter()
        .find(|(n, _)| n == "data/requests.jsonl")
        .expect("the changed file is in the pre-rollback backup");
    assert!(String::from_utf8_lossy(&kept.1).ends_with(later));
    // The pre-rollback backup's target is the release the rollback went back to, but it is
    // not a migration's backup: `rollback --path` does not pick it to undo the rollback with
    // (it would put the newer release's log into the older installation).
    let again = migrate(&["rollback", "--path", p(root)]);
    assert_eq!(again.status.code(), Some(3), "{}", both(&again));
    assert!(both(&again).contains("no backup of"), "{}", both(&again));
    // Named with --backup-path, it is refused too, and says how to read the saved file.
    let named = migrate(&["rollback", "--backup-path", p(&saved[0])]);
    assert_eq!(named.status.code(), Some(3), "{}", both(&named));
    assert!(
        both(&named).contains("a pre-rollback backup") && both(&named).contains("tar -I zstd -xf"),
        "{}",
        both(&named)
    );
    assert_eq!(tree_hash(root), original);
    // A local backup's changed files go beside it: --backup-dir, which names where to find a
    // backup, is refused with one named.
    let both_named = migrate(&[
        "rollback",
        "--backup-path",
        p(&backup),
        "--backup-dir",
        p(&root.join("backups")),
    ]);
    assert_eq!(both_named.status.code(), Some(2), "{}", both(&both_named));
    assert!(
        both(&both_named).contains("already names one"),
        "{}",
        both(&both_named)
    );
    assert_eq!(tree_hash(root), original);
}

/// Finding 12: the disk fills up while the commit is recorded. The status is not "Failed,
/// left as it was": it is Interrupted (exit 8), and `recover --forward` finishes it.
#[test]
fn finding_12_a_failed_commit_record_is_reported_as_interrupted() {
    let dir = sample_install();
    let root = dir.path();
    // Journal writes: prepare (1), backup done (2), committed (3).
    let out = migrate_with(
        &["--json", "version", "--path", p(root), "--to", "2.1.0"],
        &[("TRUSTFORMERS_MIGRATE_FAULT", "journal_write:3:error")],
        None,
        None,
    );
    assert_eq!(out.status.code(), Some(8), "{}", both(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json result");
    assert_eq!(result["overall_status"], "Interrupted", "{result}");
    assert!(!both(&out).contains("left as it was"), "{}", both(&out));
    assert!(both(&out).contains("--forward"), "{}", both(&out));
    let text = ok(&migrate(&["recover", "--path", p(root), "--forward"]));
    assert!(text.contains("finished"), "{text}");
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
    ok(&migrate(&[
        "validate",
        "--path",
        p(root),
        "--version",
        "2.1.0",
    ]));
    assert_no_leftovers(root, "after recover --forward");
}

/// Finding 13: the version is detected only after the lock is taken. While another process
/// holds the lock (a rollback, here the test itself), `version --to 2.1.0` on an installation
/// whose VERSION says 2.1.0 must not answer "UpToDate, exit 0": it says the lock is held.
#[test]
fn finding_13_the_version_is_detected_under_the_lock() {
    use std::os::fd::AsRawFd;
    let dir = sample_install();
    let root = dir.path();
    ok(&migrate_version(root, &[]));
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.join(".migrate/lock"))
        .expect("open lock");
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let out = migrate_version(root, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", both(&out));
    assert!(!stdout(&out).contains("UpToDate"), "{}", both(&out));
    drop(lock);
    let out = migrate_version(root, &[]);
    assert!(
        ok(&out).contains("UpToDate") || stdout(&out).contains("up to date"),
        "{}",
        both(&out)
    );
}

/// Finding 14: `validate` and `info` clean the staging of a crash that happened before the
/// journal was written, and `.partial` backups, and say so; an explicit `recover` writes an
/// audit entry; a crashed run appears in `history`.
#[test]
fn finding_14_leftovers_are_cleaned_and_every_run_is_in_history() {
    let dir = sample_install();
    let root = dir.path();
    let original = tree_hash(root);
    let out = migrate_with(
        &["version", "--path", p(root), "--to", "2.1.0"],
        &[("TRUSTFORMERS_MIGRATE_FAULT", "batch:1")],
        None,
        None,
    );
    assert!(was_killed(&out), "{}", both(&out));
    assert!(
        !leftovers(root).is_empty(),
        "the kill left no staging to clean"
    );
    std::fs::create_dir_all(root.join("backups/full_backup_1.partial")).unwrap();
    std::fs::write(
        root.join("backups/full_backup_1.partial/backup.tar.zst"),
        "half",
    )
    .unwrap();
    let out = migrate(&["validate", "--path", p(root), "--version", "0.1.0"]);
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("removed") && text.contains("staging-"),
        "{text}"
    );
    assert!(text.contains("full_backup_1.partial"), "{text}");
    assert_no_leftovers(root, "validate");
    assert!(!root.join("backups/full_backup_1.partial").exists());
    assert_eq!(tree_hash(root), original);

    let out = migrate(&["--json", "history", "--path", p(root)]);
    let items: serde_json::Value = serde_json::from_str(&ok(&out)).expect("history json");
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["status"] == "Interrupted"),
        "the crashed run is not in history: {items}"
    );

    ok(&migrate(&["recover", "--path", p(root)]));
    let audit = read(root, ".migrate/audit.jsonl");
    let last: serde_json::Value =
        serde_json::from_str(audit.lines().last().expect("an audit line")).expect("json");
    assert_eq!(last["action"], "recovery", "{last}");
    assert_eq!(last["outcome"], "nothing_to_recover", "{last}");
}

/// Finding 5, as the service user it is about: an operator who is not root (a throwaway uid
/// through `setpriv`) migrates an installation it owns — `.migrate/` becomes that user's, 0700 —
/// and is refused a journal that a third user planted there. Skipped, with a message, where
/// `setpriv` or root is not available.
#[test]
fn finding_05_as_a_non_root_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        println!("SKIPPED: needs root and /usr/bin/setpriv to run as a throwaway user");
        return;
    }
    let (uid, other) = (4343u32, 4444u32);
    let base = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.path().join("install");
    copy_tree(&workspace_root().join("samples/install-0.1.0"), &root);
    for entry in walkdir::WalkDir::new(&root) {
        std::os::unix::fs::chown(entry.unwrap().path(), Some(uid), Some(uid)).unwrap();
    }
    let as_user = |args: &[&str]| {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
            p(&migrate_bin()),
        ])
        .args(args)
        .env_remove("TRUSTFORMERS_MIGRATE_FAULT")
        .env_remove("TRUSTFORMERS_BACKUP_DIR")
        .env("HOME", base.path())
        .env("XDG_DATA_HOME", base.path().join("share"))
        .env("USER", "svc");
        cmd.output().expect("run setpriv")
    };
    let out = as_user(&["version", "--path", p(&root), "--to", "2.1.0"]);
    assert!(out.status.success(), "as uid {uid}: {}", both(&out));
    let tool = std::fs::metadata(root.join(".migrate")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((tool.uid(), tool.mode() & 0o7777), (uid, 0o700));
    let journal = root.join(".migrate/journal.json");
    std::fs::write(
        &journal,
        crafted_journal(
            ".migrate/staging-x",
            ".migrate/staging-x.orig",
            serde_json::json!([{"rel": "data/requests.jsonl", "action": "Create"}]),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&journal, Some(other), Some(other)).unwrap();
    let migrated = tree_hash(&root);
    let out = as_user(&["info", "--path", p(&root), "--to", "2.1.0"]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(
        both(&out).contains(&format!("uid {other}")),
        "{}",
        both(&out)
    );
    assert_eq!(
        tree_hash(&root),
        migrated,
        "the planted journal was acted on"
    );
}

/// Finding 14, with the backup outside the installation (`--backup-dir`): a run killed while
/// writing its backup leaves a `.partial` there; the recovery removes it (and only it: another
/// backup in the same folder stays).
#[test]
fn finding_14_a_partial_backup_in_another_folder_is_removed() {
    let dir = sample_install();
    let root = dir.path();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let shared = elsewhere.path().join("backups");
    std::fs::create_dir_all(shared.join("full_backup_1.999999.partial")).unwrap();
    let out = migrate_with(
        &[
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
            "--backup-dir",
            p(&shared),
        ],
        &[("TRUSTFORMERS_MIGRATE_FAULT", "backup_entry:2")],
        None,
        None,
    );
    assert!(was_killed(&out), "not killed: {}", both(&out));
    let partials = |d: &Path| -> Vec<PathBuf> {
        backups_in(d)
            .into_iter()
            .filter(|b| b.to_string_lossy().ends_with(".partial"))
            .collect()
    };
    assert_eq!(partials(&shared).len(), 2, "{:?}", backups_in(&shared));
    let text = ok(&migrate(&["recover", "--path", p(root)]));
    assert!(text.contains("rolled back"), "{text}");
    assert_eq!(
        partials(&shared),
        vec![shared.join("full_backup_1.999999.partial")],
        "the killed run's .partial must go, another process's must stay"
    );
}

/// Finding 10, for the config: a FIFO or a link as `config/server.toml` is an error naming it
/// (it used to be skipped: the migration went on without its config), and `validate` says so.
#[test]
fn finding_10_a_config_that_is_not_a_regular_file_is_an_error() {
    let base = tempfile::tempdir().expect("tempdir");
    let outside = base.path().join("server.toml");
    std::fs::copy(
        workspace_root().join("samples/install-0.1.0/config/server.toml"),
        &outside,
    )
    .unwrap();
    for (case, why) in [("fifo", "special file"), ("link", "symbolic link")] {
        let dir = sample_install();
        let root = dir.path();
        std::fs::remove_file(root.join("config/server.toml")).unwrap();
        match case {
            "fifo" => mkfifo(&root.join("config/server.toml")),
            _ => std::os::unix::fs::symlink(&outside, root.join("config/server.toml")).unwrap(),
        }
        let out = migrate_or_hang(&[
            "version",
            "--path",
            p(root),
            "--from",
            "0.1.0",
            "--to",
            "2.1.0",
        ]);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(3), "{case}: {text}");
        assert!(
            text.contains("config/server.toml") && text.contains(why),
            "{case}: {text}"
        );
        assert!(!root.join("VERSION").exists(), "{case}: migrated anyway");
        let out = migrate_or_hang(&["validate", "--path", p(root), "--version", "0.1.0"]);
        assert!(
            !out.status.success(),
            "{case}: validate says valid: {}",
            both(&out)
        );
        assert!(both(&out).contains(why), "{case}: {}", both(&out));
    }
}

/// Runs `migrate` with the fault point `point` set to `stop` (SIGSTOP): once the process has
/// stopped there, `change` alters the disk, then the process goes on (SIGCONT). Fails the test
/// if the process never reaches the point, or hangs afterwards (a FIFO read through a link).
fn migrate_paused(args: &[&str], point: &str, change: impl FnOnce()) -> Output {
    migrate_paused_in("TRUSTFORMERS_MIGRATE_FAULT", None, args, point, change)
}

/// The state letter of process `pid` (`T`: stopped), from /proc.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// `pid` and its descendants.
fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        // Each thread lists the children it started (the worker is started from any thread).
        let tasks = std::fs::read_dir(format!("/proc/{}/task", out[i]))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for task in tasks {
            let children = std::fs::read_to_string(task.join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    out
}

/// [`migrate_paused`] with the fault in `variable` (`TRUSTFORMERS_MIGRATE_WORKER_FAULT`
/// pauses the plugin worker instead) and an optional umask.
fn migrate_paused_in(
    variable: &str,
    umask: Option<u32>,
    args: &[&str],
    point: &str,
    change: impl FnOnce(),
) -> Output {
    migrate_pausing(umask, args, vec![(variable, point, Box::new(change))])
}

/// A pause of [`migrate_pausing`]: the fault variable, its point, what to do there.
type Pause<'a> = (&'a str, &'a str, Box<dyn FnOnce() + 'a>);

/// Runs `migrate` with each pause's point set to `stop` in its variable (several points of one
/// variable are joined): each time a process of the run stops, the next pause's change alters
/// the disk, then the process goes on.
fn migrate_pausing(umask: Option<u32>, args: &[&str], pauses: Vec<Pause>) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(migrate_bin());
    isolated(cmd.args(args), home.path())
        .env_remove("TRUSTFORMERS_MIGRATE_FAULT")
        .env_remove("TRUSTFORMERS_MIGRATE_WORKER_FAULT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut faults: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (variable, point, _) in &pauses {
        faults
            .entry(variable)
            .or_default()
            .push(format!("{point}:1:stop"));
    }
    for (variable, points) in faults {
        cmd.env(variable, points.join(","));
    }
    if let Some(mask) = umask {
        // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's mask.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn migrate");
    let mut last = "";
    for (_, point, change) in pauses {
        let mut waited = 0;
        let stopped = loop {
            if let Some(pid) = family(child.id())
                .into_iter()
                .find(|p| proc_state(*p) == Some('T'))
            {
                break pid;
            }
            if child.try_wait().expect("wait").is_some() {
                let out = child.wait_with_output().expect("output");
                panic!(
                    "`migrate` ended before the `{point}` point:\n{}",
                    both(&out)
                );
            }
            waited += 1;
            assert!(waited < 1200, "`migrate` never reached the `{point}` point");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        change();
        // SAFETY: kill(2) with SIGCONT on a process of the family we started.
        unsafe { libc::kill(stopped as libc::pid_t, libc::SIGCONT) };
        // Until it has gone on, the process still shows as stopped.
        while proc_state(stopped) == Some('T') {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        last = point;
    }
    for _ in 0..600 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "`migrate {}` hung after the `{last}` point (a FIFO read through a link?):\n{}",
        args.join(" "),
        both(&out)
    );
}

/// Issue 14, review item 1: planning lists the other `config/*.toml` (promised "left
/// byte-identical") confined. A link among them is refused and named, not followed (it used to
/// be listed through `is_file`, which follows links, and the run went on).
#[test]
fn issue14_a_link_among_the_config_files_is_refused_at_planning() {
    let dir = sample_install();
    let root = dir.path();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secrets.toml"), "token = \"outside\"\n").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secrets.toml"),
        root.join("config/secrets.toml"),
    )
    .unwrap();
    let before = tree_hash(root);
    for args in [vec!["--dry-run"], vec![]] {
        let out = migrate_version(root, &args);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
        assert!(
            text.contains("config/secrets.toml") && text.contains("symbolic link"),
            "{args:?}: the link is not named: {text}"
        );
        assert_eq!(
            tree_hash(root),
            before,
            "{args:?}: the installation changed"
        );
        assert!(!root.join("VERSION").exists(), "{args:?}: migrated anyway");
    }
    assert_no_leftovers(root, "a refused plan");
}

/// Issue 14, review item 2: the safetensors headers are read from descriptors opened confined.
/// A model folder replaced by a link to a folder outside between planning and the pre-flight
/// checks is refused and named; the file outside is never read (its header is garbage, and
/// reading it would have reported a header error instead).
#[test]
fn issue14_preflight_reads_no_header_through_a_link() {
    let dir = sample_install();
    let root = dir.path();
    let outside = tempfile::tempdir().unwrap();
    let elsewhere = outside.path().join("bert-tiny");
    std::fs::create_dir(&elsewhere).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(root.join("models/bert-tiny").join(f), elsewhere.join(f)).unwrap();
    }
    std::fs::write(elsewhere.join("model.safetensors"), [0xffu8; 64]).unwrap();
    let out = migrate_paused(
        &["version", "--path", p(root), "--to", "2.1.0"],
        "preflight",
        || {
            std::fs::rename(root.join("models/bert-tiny"), outside.path().join("kept")).unwrap();
            std::os::unix::fs::symlink(&elsewhere, root.join("models/bert-tiny")).unwrap();
        },
    );
    let text = both(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("models/bert-tiny") && text.contains("symbolic link"),
        "the link is not named: {text}"
    );
    assert!(
        !text.contains("not safetensors") && !text.contains("does not fit"),
        "the garbage header outside was read through the link: {text}"
    );
    assert!(!root.join("VERSION").exists(), "migrated anyway");
    assert_no_leftovers(root, "a refused preflight");
}

/// Issue 14, review item 4: model rules read a link-free snapshot of the model folder, built
/// after planning from files opened confined. A file replaced by a link (here to a FIFO
/// outside, which would hang a plugin that opens it) after planning is refused and named
/// while the snapshot is built; no plugin ever opens it, nothing is left behind. With and
/// without the Landlock sandbox (which would deny the read outside, but is not everywhere):
/// the snapshot does not rely on it.
#[test]
fn issue14_a_link_planted_after_planning_never_reaches_a_plugin() {
    for (dry_run, sandbox) in [(false, false), (false, true), (true, true)] {
        let dir = sample_install();
        let root = dir.path();
        let before = tree_hash(root);
        let outside = tempfile::tempdir().unwrap();
        let fifo = outside.path().join("config.json");
        mkfifo(&fifo);
        let mut args = vec!["version", "--path", p(root), "--to", "2.1.0"];
        if dry_run {
            args.push("--dry-run");
        }
        if !sandbox {
            args.push("--no-sandbox");
        }
        let planted = root.join("models/bert-tiny/config.json");
        let out = migrate_paused(&args, "model_snapshot", || {
            std::fs::remove_file(&planted).unwrap();
            std::os::unix::fs::symlink(&fifo, &planted).unwrap();
        });
        let text = both(&out);
        assert_eq!(out.status.code(), Some(3), "dry run {dry_run}: {text}");
        assert!(
            text.contains("models/bert-tiny/config.json") && text.contains("symbolic link"),
            "dry run {dry_run}: the link is not named: {text}"
        );
        assert!(
            !root.join("VERSION").exists(),
            "dry run {dry_run}: migrated"
        );
        std::fs::remove_file(&planted).unwrap();
        let mut after = tree_hash(root);
        after.insert(
            "models/bert-tiny/config.json".into(),
            before["models/bert-tiny/config.json"].clone(),
        );
        assert_eq!(after, before, "dry run {dry_run}: the installation changed");
        assert_no_leftovers(root, "a refused snapshot");
        let snapshots: Vec<_> = std::fs::read_dir(root.join(".migrate"))
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            snapshots
                .iter()
                .all(|n| !n.to_string_lossy().contains("snapshot")),
            "{snapshots:?}"
        );
    }
}

/// Writes `path` in place, its last byte flipped: same name, same size, other content.
fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
}

/// Issue 15: the host hashes the installation's model files during staging and hands the
/// checksums to the model rules, which list them in `metadata.json` without reading the files
/// again. A weights file written in place after that (the worker held just after it got them)
/// no longer matches what the rules listed: nothing is swapped in, and the error (exit 1) says
/// the file changed while the migration ran, blaming no plugin. (A rule that hashed the file itself
/// would have listed the new content, and the run would have completed.) Left alone, the run
/// completes, and the listed checksum is the file's. The worker asks before the host is done
/// hashing (its data step is short): the answer waits for every checksum.
#[test]
fn issue15_a_model_file_changed_after_its_checksum_was_handed_to_the_rules_is_refused() {
    let rel = "models/bert-tiny/model.safetensors";
    for change in [false, true] {
        let dir = sample_install();
        let root = dir.path();
        let weights = root.join(rel);
        let before = tree_hash(root);
        let out = migrate_pausing(
            None,
            &version_args(root, &["-vv", "--yes"]),
            vec![(
                "TRUSTFORMERS_MIGRATE_WORKER_FAULT",
                "model_checksums",
                Box::new(|| {
                    if change {
                        flip_last_byte(&weights);
                    }
                }),
            )],
        );
        let text = both(&out);
        // The host had hashed the model's three files when the worker asked.
        assert!(
            text.lines().any(
                |l| l.contains("model checksums handed to the worker") && l.contains("files=3")
            ),
            "{text}"
        );
        let now = sha256_hex(&std::fs::read(&weights).unwrap());
        if !change {
            assert_eq!(out.status.code(), Some(0), "{text}");
            let meta: serde_json::Value =
                serde_json::from_str(&read(root, "models/bert-tiny/metadata.json")).unwrap();
            let listed = meta["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == "model.safetensors")
                .map(|f| f["sha256"].clone());
            assert_eq!(listed, Some(now.into()), "{meta}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{text}");
        for needle in [
            "files of ",
            "models/bert-tiny/model.safetensors: changed while the migration ran",
            "is something still writing to it?",
            "next step: nothing was changed; stop whatever writes to the installation",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
        assert!(!text.contains("written by plugin"), "{text}");
        // Nothing was swapped in: the tree is as it was, but for the test's own change.
        let after = tree_hash(root);
        assert_eq!(after.get(rel).map(|(_, sha)| sha), Some(&now));
        let others = |t: &BTreeMap<String, (u32, String)>| {
            let mut t = t.clone();
            t.remove(rel);
            t
        };
        assert_eq!(others(&after), others(&before));
        assert_no_leftovers(root, "after the refused run");
    }
}

/// Issue 15: the pre-swap check takes the checksum of a weights file the hops left alone from
/// the one the host took during staging, but only for that very file, unchanged. Written in
/// place after it (same size, same name), the file is read again: the checksum the rules
/// listed, true of the file as it was, no longer matches, and nothing is swapped in (exit 1,
/// the file named as changed while the migration ran). Left alone, the checksum taken during
/// staging is used and the run completes. A run that optimizes the weights rewrites them: the
/// host takes no checksum of the installation's.
#[test]
fn issue15_a_model_file_changed_after_its_checksum_was_taken_is_read_again() {
    let rel = "models/bert-tiny/model.safetensors";
    let logged = |text: &str, what: &str| {
        text.lines()
            .any(|l| l.contains(what) && l.contains(&format!("file=\"{rel}\"")))
    };
    for (change, optimize) in [(false, false), (true, false), (false, true)] {
        let dir = sample_install();
        let root = dir.path();
        let weights = root.join(rel);
        let mut args = version_args(root, &["-vv", "--yes"]);
        if optimize {
            args.push("--optimize");
        }
        let out = migrate_pausing(
            None,
            &args,
            vec![(
                "TRUSTFORMERS_MIGRATE_FAULT",
                "verify",
                Box::new(|| {
                    if change {
                        flip_last_byte(&weights);
                    }
                }),
            )],
        );
        let text = both(&out);
        if optimize {
            // The hops rewrite the weights: the check reads the staged file, and the host
            // takes no checksum of the installation's.
            assert_eq!(out.status.code(), Some(0), "{text}");
            assert!(
                !text.contains("checksum taken during staging")
                    && !text.contains("changed since its checksum was taken"),
                "a checksum was taken of weights the run rewrites: {text}"
            );
            continue;
        }
        if !change {
            assert_eq!(out.status.code(), Some(0), "{text}");
            assert!(
                logged(&text, "checksum taken during staging"),
                "the checksum taken during staging was not used: {text}"
            );
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            logged(&text, "changed since its checksum was taken"),
            "no checksum was taken, or the change went unseen: {text}"
        );
        assert!(
            text.contains("model.safetensors: changed while the migration ran"),
            "the mismatch is not named: {text}"
        );
        assert!(!root.join("VERSION").exists(), "migrated: {text}");
        assert_no_leftovers(root, "a refused staging");
    }
}

/// Issue 14, review item 5: staged files are created with their final mode (the mode of the
/// file they replace), not 0600 until the commit: observed while the worker is paused at its
/// first data batch, with the config and a data file already staged, under umask 022 and 000.
/// The modes are unusual on purpose (0640, 0604), so that neither 0600 nor a umask gives them.
#[test]
fn issue14_staged_files_have_their_final_mode_while_staging() {
    for umask in [0o022, 0o000] {
        let dir = sample_install();
        let root = dir.path();
        let modes = [("config/server.toml", 0o640), ("data/api_keys.json", 0o604)];
        for (rel, mode) in modes {
            std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let mut seen = Vec::new();
        let out = migrate_paused_in(
            "TRUSTFORMERS_MIGRATE_WORKER_FAULT",
            Some(umask),
            &["version", "--path", p(root), "--to", "2.1.0"],
            "batch",
            || {
                let staging: Vec<PathBuf> = std::fs::read_dir(root.join(".migrate"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| {
                        let name = p.file_name().unwrap().to_string_lossy().into_owned();
                        name.starts_with("staging-") && !name.ends_with(".snapshot")
                    })
                    .collect();
                assert_eq!(staging.len(), 1, "{staging:?}");
                for (rel, _) in modes {
                    seen.push((rel, mode_of(&staging[0].join(rel))));
                }
            },
        );
        ok(&out);
        assert_eq!(
            seen,
            modes.to_vec(),
            "umask {umask:03o}: staged modes while staging"
        );
        for (rel, mode) in modes {
            assert_eq!(mode_of(&root.join(rel)), mode, "umask {umask:03o}: {rel}");
        }
    }
}

/// Issue 14: a dry run's preview reads the installation's config and data confined. The
/// config replaced by a link to a FIFO outside after it was staged (the worker paused at its
/// first data batch) is left out of the preview, not waited on (a plain read would hang).
#[test]
fn issue14_the_dry_run_preview_reads_no_link() {
    let dir = sample_install();
    let root = dir.path();
    let outside = tempfile::tempdir().unwrap();
    let fifo = outside.path().join("server.toml");
    mkfifo(&fifo);
    let config = root.join("config/server.toml");
    let out = migrate_paused_in(
        "TRUSTFORMERS_MIGRATE_WORKER_FAULT",
        None,
        &["version", "--path", p(root), "--to", "2.1.0", "--dry-run"],
        "batch",
        || {
            std::fs::rename(&config, outside.path().join("kept.toml")).unwrap();
            std::os::unix::fs::symlink(&fifo, &config).unwrap();
        },
    );
    let text = both(&out);
    assert!(
        !text.contains("a/config/server.toml"),
        "a config diff was made through the link: {text}"
    );
    assert!(!root.join("VERSION").exists(), "a dry run migrated: {text}");
    assert_no_leftovers(root, "a dry run");
}

/// Issue 14, the backup writer: `<root>/backups` planted as a link to a folder outside the
/// installation. A migration with the default backup folder refuses (exit 3), names
/// `backups`, and writes nothing outside; the installation is left as it was.
#[test]
fn finding_14_a_backups_link_is_refused_and_nothing_is_written_outside() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("install");
    copy_tree(&workspace_root().join("samples/install-0.1.0"), &root);
    let outside = base.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("backups")).expect("symlink");
    let outside_before = full_tree_hash(&outside);
    let before = tree_hash(&root);
    let out = migrate_version(&root, &[]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("backups") && text.contains("symbolic link"),
        "{text}"
    );
    assert_eq!(full_tree_hash(&outside), outside_before, "written outside");
    assert_eq!(tree_hash(&root), before, "the installation changed");
}

/// The same with a link on the way to a backup folder below the installation
/// (`--backup-dir <root>/var/backups`, `var -> <outside>`): refused, `var` named, nothing
/// written outside.
#[test]
fn finding_14_a_link_on_the_way_to_the_backup_folder_is_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("install");
    copy_tree(&workspace_root().join("samples/install-0.1.0"), &root);
    let root = root.canonicalize().unwrap();
    let outside = base.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("var")).expect("symlink");
    let dir = root.join("var/backups");
    let before = tree_hash(&root);
    let out = migrate_version(&root, &["--backup-dir", p(&dir)]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("var") && text.contains("symbolic link"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "written outside"
    );
    assert_eq!(tree_hash(&root), before, "the installation changed");
}

/// Issue 14, the backup readers: after a real migration, `<root>/backups` is replaced by a link
/// to a folder outside the installation holding a (valid, copied) backup. `backups list`,
/// `backups verify` and `rollback` refuse (exit 3), name `backups`, and change nothing.
#[test]
fn finding_14_a_backups_link_is_not_read_through() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("install");
    copy_tree(&workspace_root().join("samples/install-0.1.0"), &root);
    let root = root.canonicalize().unwrap();
    ok(&migrate_version(&root, &[]));
    let name = only_backup(&root).file_name().unwrap().to_owned();
    let outside = base.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    copy_tree(&root.join("backups"), &outside);
    std::fs::remove_dir_all(root.join("backups")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("backups")).expect("symlink");
    // The copy outside is a valid backup: read as given, it verifies.
    ok(&migrate(&["backups", "verify", p(&outside.join(&name))]));
    let outside_before = full_tree_hash(&outside);
    let before = tree_hash(&root);
    let version = read(&root, "VERSION");
    let through = root.join("backups").join(&name);
    for args in [
        vec!["backups", "list", "--path", p(&root)],
        vec!["backups", "verify", p(&through)],
        vec!["rollback", "--path", p(&root)],
    ] {
        let out = migrate(&args);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
        assert!(
            text.contains("backups") && text.contains("symbolic link"),
            "{args:?}: {text}"
        );
        assert_eq!(
            full_tree_hash(&outside),
            outside_before,
            "{args:?}: outside"
        );
        assert_eq!(
            tree_hash(&root),
            before,
            "{args:?}: the installation changed"
        );
        assert_eq!(read(&root, "VERSION"), version, "{args:?}: rolled back");
    }
}

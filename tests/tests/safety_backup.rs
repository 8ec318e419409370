//! Backups and `migrate rollback --backup-path`: a full 0.1.0 → 2.1.0 migration (which hashes
//! the API keys irreversibly) is undone byte for byte and mode for mode; `backups list` and
//! `backups verify` see the backup; hand-crafted malicious or damaged backups are refused
//! without writing anything inside or outside the installation; and
//! `backup_before_migration = false` writes no backup.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

type Tree = BTreeMap<String, (u32, String)>;

/// The plaintext API keys of the sample (`data/api_keys.json`).
const PLAINTEXT_KEYS: [&str; 2] = ["tfk_8c1d0e5f9a7b4c2e", "tfk_0a9b8c7d6e5f4a3b"];

/// A 0.1.0 record that the 2.0.0 → 2.1.0 hop refuses (it has `metrics` and `latency_ms`):
/// with `--on-invalid quarantine` the migration creates `data/.quarantine/`.
const QUARANTINED: &str =
    "{\"id\":\"req-q\",\"model\":\"bert-tiny\",\"latency_ms\":5,\"metrics\":{\"kept\":1}}\n";

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(root: &Path, rel: &str) -> u32 {
    std::fs::metadata(root.join(rel))
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

/// Every folder below `root`, outside `.migrate/` and `backups/`.
fn dirs(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            e.depth() != 1 || (name != ".migrate" && name != "backups")
        })
        .map(|e| e.expect("walk"))
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.path().strip_prefix(root).unwrap().display().to_string())
        .collect()
}

/// The backup folders in `dir`.
fn backups_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(read) => read.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn migrate_version(root: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["version", "--path", p(root), "--to", "2.1.0"];
    args.extend_from_slice(extra);
    migrate(&args)
}

/// A full migration with unusual modes and a quarantined record, then `migrate rollback` from
/// its backup: the tree is byte- and mode-identical to the one before, the files and folders
/// the migration created are gone, and the installation validates as 0.1.0 again.
#[test]
fn rollback_after_a_full_migration_restores_every_byte_and_mode() {
    let dir = sample_install();
    let root = dir.path();
    let mut requests = read(root, "data/requests.jsonl");
    requests.push_str(QUARANTINED);
    write(root, "data/requests.jsonl", &requests);
    chmod(root, "config/server.toml", 0o600);
    chmod(root, "data/requests.jsonl", 0o640);
    chmod(root, "data/archive/2024/requests.jsonl", 0o755);
    chmod(root, "data/api_keys.json", 0o604);
    let original = tree_hash(root);
    let original_dirs = dirs(root);
    assert!(read(root, "data/api_keys.json").contains(PLAINTEXT_KEYS[0]));

    let text = ok(&migrate_version(root, &["--on-invalid", "quarantine"]));
    assert!(text.contains("backup:"), "{text}");
    // The plaintext keys are gone from the installation (only the backup has them).
    for (rel, _) in tree_hash(root) {
        let content = std::fs::read(root.join(&rel)).expect("read");
        let content = String::from_utf8_lossy(&content);
        for key in PLAINTEXT_KEYS {
            assert!(
                !content.contains(key),
                "{rel} still holds the plaintext {key}"
            );
        }
    }
    assert!(read(root, "data/api_keys.json").contains("key_sha256"));
    // The migration kept the modes of the files it replaced.
    assert_eq!(mode_of(root, "config/server.toml"), 0o600);
    assert_eq!(mode_of(root, "data/requests.jsonl"), 0o640);
    assert_eq!(mode_of(root, "data/archive/2024/requests.jsonl"), 0o755);
    assert_eq!(mode_of(root, "data/api_keys.json"), 0o604);
    let created = [
        "VERSION",
        "models/bert-tiny/metadata.json",
        "data/.quarantine/requests.jsonl.rejected.jsonl",
    ];
    for rel in created {
        assert!(root.join(rel).is_file(), "{rel} was not created");
    }
    let migrated = tree_hash(root);

    let backups = backups_in(&root.join("backups"));
    assert_eq!(backups.len(), 1, "{backups:?}");
    let backup = &backups[0];
    assert!(backup.join("backup.tar.zst").is_file());
    assert!(backup.join("metadata.json").is_file());

    // `backups list`, as text and as JSON.
    let list = ok(&migrate(&["backups", "list", "--path", p(root)]));
    assert!(list.contains(p(backup)), "{list}");
    assert!(list.contains("0.1.0") && list.contains("2.1.0"), "{list}");
    let json = ok(&migrate(&["--json", "backups", "list", "--path", p(root)]));
    let items: serde_json::Value = serde_json::from_str(&json).expect("backups list --json");
    let items = items.as_array().expect("an array");
    assert_eq!(items.len(), 1, "{json}");
    assert_eq!(items[0]["path"], p(backup));
    assert_eq!(items[0]["source_version"], "0.1.0");
    assert_eq!(items[0]["target_version"], "2.1.0");
    assert_eq!(items[0]["kind"], "full");
    assert_eq!(items[0]["files"], 4, "{json}");

    // `backups verify` on a good backup, as text and as JSON.
    let verified = ok(&migrate(&["backups", "verify", p(backup)]));
    assert!(verified.contains("ok"), "{verified}");
    let json = ok(&migrate(&["--json", "backups", "verify", p(backup)]));
    let v: serde_json::Value = serde_json::from_str(&json).expect("verify --json");
    assert_eq!(v["ok"], true, "{json}");
    assert_eq!(v["files"], 4, "{json}");
    assert_eq!(
        tree_hash(root),
        migrated,
        "verify wrote into the installation"
    );

    // The rollback, without --path: the backup knows its installation.
    let out = migrate(&["rollback", "--backup-path", p(backup)]);
    let text = ok(&out);
    assert!(text.contains("0.1.0"), "{text}");
    let restored = tree_hash(root);
    if restored != original {
        let diff: Vec<String> = original
            .iter()
            .filter(|(k, v)| restored.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {v:?} → {:?}", restored.get(k)))
            .chain(
                restored
                    .keys()
                    .filter(|k| !original.contains_key(*k))
                    .map(|k| format!("{k}: left behind")),
            )
            .collect();
        panic!(
            "the rollback did not restore the original tree:\n{}",
            diff.join("\n")
        );
    }
    for rel in created {
        assert!(!root.join(rel).exists(), "{rel} was not removed");
    }
    assert_eq!(
        dirs(root),
        original_dirs,
        "folders created by the migration remain"
    );
    assert!(!root.join("data/.quarantine").exists());
    assert_no_leftovers(root, "rollback");
    // The backup itself is kept.
    assert!(backup.join("backup.tar.zst").is_file());
    let text = ok(&migrate(&[
        "validate",
        "--path",
        p(root),
        "--version",
        "0.1.0",
    ]));
    assert!(text.contains("valid"), "{text}");
}

/// `--backup-dir` and `TRUSTFORMERS_BACKUP_DIR` put the backup outside the installation, where
/// `backups list` finds it and from where the rollback works.
#[test]
fn backups_go_where_backup_dir_or_the_environment_says() {
    // --backup-dir
    let dir = sample_install();
    let root = dir.path();
    let original = tree_hash(root);
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let target = elsewhere.path().join("nested/backups");
    ok(&migrate_version(root, &["--backup-dir", p(&target)]));
    assert!(
        !root.join("backups").exists(),
        "a backup was written inside"
    );
    let backups = backups_in(&target);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let list = ok(&migrate(&[
        "backups",
        "list",
        "--path",
        p(root),
        "--backup-dir",
        p(&target),
    ]));
    assert!(list.contains(p(&backups[0])), "{list}");
    ok(&migrate(&[
        "rollback",
        "--backup-path",
        p(&backups[0]),
        "--path",
        p(root),
    ]));
    assert_eq!(tree_hash(root), original, "rollback from --backup-dir");

    // TRUSTFORMERS_BACKUP_DIR
    let dir = sample_install();
    let root = dir.path();
    let env_dir = tempfile::tempdir().expect("tempdir");
    let out = migrate_env(
        &["version", "--path", p(root), "--to", "2.1.0"],
        &[("TRUSTFORMERS_BACKUP_DIR", p(env_dir.path()))],
    );
    ok(&out);
    assert!(
        !root.join("backups").exists(),
        "a backup was written inside"
    );
    let backups = backups_in(env_dir.path());
    assert_eq!(backups.len(), 1, "{backups:?}");
    let list = ok(&migrate_env(
        &["backups", "list", "--path", p(root)],
        &[("TRUSTFORMERS_BACKUP_DIR", p(env_dir.path()))],
    ));
    assert!(list.contains(p(&backups[0])), "{list}");
    // The backup does not lie under the installation it records: which installation to
    // restore is not certain without --path (issue 14, finding 4), and nothing changes.
    let migrated = tree_hash(root);
    let asked = migrate(&["rollback", "--backup-path", p(&backups[0])]);
    assert_eq!(asked.status.code(), Some(2), "{}", both(&asked));
    assert!(both(&asked).contains("--path"), "{}", both(&asked));
    assert_eq!(
        tree_hash(root),
        migrated,
        "a refused rollback changed the tree"
    );
    ok(&migrate(&[
        "rollback",
        "--backup-path",
        p(&backups[0]),
        "--path",
        p(root),
    ]));
    assert_eq!(
        tree_hash(root),
        original,
        "rollback from TRUSTFORMERS_BACKUP_DIR"
    );
}

/// `backup_before_migration = false`: no backups/ folder, nothing in TRUSTFORMERS_BACKUP_DIR,
/// and the `backup` crash point is never reached.
#[test]
fn no_backup_when_backup_before_migration_is_false() {
    let dir = sample_install();
    let root = dir.path();
    let config = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(config.path(), "[global]\nbackup_before_migration = false\n").expect("write");
    let env_dir = tempfile::tempdir().expect("tempdir");
    let out = migrate_env(
        &[
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
            "--config-file",
            p(config.path()),
        ],
        &[
            ("TRUSTFORMERS_BACKUP_DIR", p(env_dir.path())),
            ("TRUSTFORMERS_MIGRATE_FAULT", "backup:1"),
        ],
    );
    let text = ok(&out);
    assert!(!text.contains("backup: /"), "{text}");
    assert!(!root.join("backups").exists(), "backups/ was created");
    assert!(
        backups_in(env_dir.path()).is_empty(),
        "a backup went to TRUSTFORMERS_BACKUP_DIR"
    );
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
    let list = ok(&migrate(&["backups", "list", "--path", p(root)]));
    assert!(list.contains("no backups"), "{list}");
}

// ---------------------------------------------------------------------------------------------
// Crafted backups

/// One archive entry.
struct Entry {
    /// Raw name bytes, written into the header as they are (no checks).
    name: Vec<u8>,
    kind: tar::EntryType,
    link: Option<Vec<u8>>,
    mode: u32,
    data: Vec<u8>,
}

impl Entry {
    fn file(name: &str, data: &[u8]) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            link: None,
            mode: 0o644,
            data: data.to_vec(),
        }
    }

    fn link(name: &str, kind: tar::EntryType, target: &str) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind,
            link: Some(target.as_bytes().to_vec()),
            mode: 0o777,
            data: Vec::new(),
        }
    }
}

/// A zstd-compressed tar of `entries`, names and link names written byte for byte (the `tar`
/// crate's builder refuses `..` and absolute paths, which is the point here).
fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let name = &mut h.as_old_mut().name;
        assert!(e.name.len() < name.len(), "name too long for the test");
        name[..e.name.len()].copy_from_slice(&e.name);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_mtime(0);
        h.set_entry_type(e.kind);
        if let Some(link) = &e.link {
            h.set_link_name_literal(link).expect("link name");
        }
        h.set_cksum();
        builder.append(&h, e.data.as_slice()).expect("append");
    }
    let tar = builder.into_inner().expect("finish tar");
    zstd::encode_all(tar.as_slice(), 3).expect("zstd")
}

/// The entries of a real backup's archive.
fn read_archive(backup: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(backup.join("backup.tar.zst")).expect("archive");
    let tar = zstd::decode_all(bytes.as_slice()).expect("zstd");
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path_bytes().to_vec();
        let mode = entry.header().mode().expect("mode");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read entry");
        out.push(Entry {
            name,
            kind: tar::EntryType::Regular,
            link: None,
            mode,
            data,
        });
    }
    out
}

fn record(path: &str, data: &[u8], mode: u32) -> serde_json::Value {
    serde_json::json!({
        "path": path,
        "size": data.len(),
        "mode": mode,
        "sha256": sha256_hex(data),
    })
}

/// A migrated installation at `<base>/install` with its real backup, and the place where the
/// crafted backups go (`<base>/evil-*`). Paths that an escaping entry would write are below
/// `<base>` too, so that nothing shared (like /tmp) is touched even if the host has a bug.
struct Scene {
    base: tempfile::TempDir,
    meta: serde_json::Value,
    entries: Vec<Entry>,
    migrated: Tree,
}

impl Scene {
    fn new() -> Scene {
        let base = tempfile::tempdir().expect("tempdir");
        let root = base.path().join("install");
        copy_tree(&workspace_root().join("samples/install-0.1.0"), &root);
        ok(&migrate_version(&root, &[]));
        let backups = backups_in(&root.join("backups"));
        assert_eq!(backups.len(), 1);
        let real = &backups[0];
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(real.join("metadata.json")).expect("meta"))
                .expect("metadata.json");
        // Sanity: a copy of the real backup passes; it is what every case below starts from.
        let entries = read_archive(real);
        assert_eq!(entries.len(), meta["files"].as_array().unwrap().len());
        let migrated = tree_hash(&root);
        Scene {
            base,
            meta,
            entries,
            migrated,
        }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("install")
    }

    /// Top-level names in `<base>`, but the crafted backups.
    fn outside(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.base.path())
            .expect("read base")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("evil-"))
            .collect();
        names.sort();
        names
    }

    /// Writes a crafted backup folder `<base>/evil-<name>`.
    fn craft(&self, name: &str, archive_bytes: &[u8], meta: &serde_json::Value) -> PathBuf {
        let dir = self.base.path().join(format!("evil-{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("backup.tar.zst"), archive_bytes).expect("write archive");
        std::fs::write(
            dir.join("metadata.json"),
            serde_json::to_vec_pretty(meta).expect("json"),
        )
        .expect("write metadata");
        dir
    }

    /// The real entries followed by `extra`, and the metadata listing `listed` as well.
    fn with_extra(
        &self,
        extra: Entry,
        listed: Option<serde_json::Value>,
    ) -> (Vec<u8>, serde_json::Value) {
        let mut entries: Vec<Entry> = self
            .entries
            .iter()
            .map(|e| Entry {
                name: e.name.clone(),
                kind: e.kind,
                link: e.link.clone(),
                mode: e.mode,
                data: e.data.clone(),
            })
            .collect();
        entries.push(extra);
        let mut meta = self.meta.clone();
        if let Some(r) = listed {
            meta["files"].as_array_mut().unwrap().push(r);
        }
        (archive(&entries), meta)
    }

    /// Runs `backups verify` and `rollback` on a crafted backup: both must fail, say `why`
    /// (one of the alternatives), and write nothing anywhere; `must_not_exist` are the paths
    /// an escaping entry would have created.
    fn refused(&self, case: &str, backup: &Path, why: &[&str], must_not_exist: &[PathBuf]) {
        let root = self.root();
        let outside_before = self.outside();
        let verify = migrate(&["backups", "verify", p(backup)]);
        let rollback = migrate(&["rollback", "--backup-path", p(backup), "--path", p(&root)]);
        for (what, out) in [("backups verify", &verify), ("rollback", &rollback)] {
            let text = both(out);
            assert!(
                !out.status.success(),
                "{case}: `{what}` accepted a malicious backup:\n{text}"
            );
            assert!(
                why.iter().any(|w| text.contains(w)),
                "{case}: `{what}` does not say why ({why:?}):\n{text}"
            );
            let reason = text
                .lines()
                .find(|l| why.iter().any(|w| l.contains(w)))
                .unwrap_or_default()
                .trim();
            println!(
                "  {case}: `{what}` refused (exit {:?}): {reason}",
                out.status.code()
            );
        }
        assert_eq!(
            rollback.status.code(),
            Some(3),
            "{case}: a refused backup is invalid input"
        );
        assert_eq!(
            tree_hash(&root),
            self.migrated,
            "{case}: the installation changed"
        );
        for path in must_not_exist {
            assert!(
                std::fs::symlink_metadata(path).is_err(),
                "{case}: {} was written",
                path.display()
            );
        }
        assert_eq!(
            self.outside(),
            outside_before,
            "{case}: something was written outside"
        );
        assert_no_leftovers(&root, case);
    }
}

/// Hand-crafted backups, each otherwise valid (a real backup's metadata and entries), with one
/// defect: an entry escaping with `..`, an absolute entry, a symlink or hard link pointing
/// outside, a wrong checksum, tampered data, a truncated archive, an entry not listed, a listed
/// file missing, an archive name that is a path. Every one is refused by `backups verify` and
/// by `rollback`, nothing is written outside the installation, and the installation (and its
/// `.migrate/`) is unchanged.
#[test]
fn crafted_malicious_backups_are_refused_and_nothing_is_written() {
    let scene = Scene::new();
    let base = scene.base.path().to_path_buf();
    let root = scene.root();
    let payload = b"escaped!\n".to_vec();

    // (a) `../escape.txt`, listed in the metadata with the right checksum.
    let (a, meta) = scene.with_extra(
        Entry::file("../escape.txt", &payload),
        Some(record("../escape.txt", &payload, 0o644)),
    );
    let b = scene.craft("dotdot", &a, &meta);
    scene.refused(
        "(a) ../escape.txt",
        &b,
        &["`..`"],
        &[base.join("escape.txt")],
    );

    // (a2) `data/../../escape2.txt`: `..` in the middle.
    let (a, meta) = scene.with_extra(
        Entry::file("data/../../escape2.txt", &payload),
        Some(record("data/../../escape2.txt", &payload, 0o644)),
    );
    let b = scene.craft("dotdot-inner", &a, &meta);
    scene.refused(
        "(a2) data/../../escape2.txt",
        &b,
        &["`..`"],
        &[base.join("escape2.txt")],
    );

    // (b) An absolute path below <base>.
    let abs = base.join("abs/abs.txt");
    let (a, meta) = scene.with_extra(
        Entry::file(p(&abs), &payload),
        Some(record(p(&abs), &payload, 0o644)),
    );
    let b = scene.craft("absolute", &a, &meta);
    scene.refused(
        "(b) absolute path",
        &b,
        &["absolute"],
        &[abs.clone(), base.join("abs")],
    );

    // (c) A symlink data/link -> ../../outside, listed in the metadata.
    let (a, meta) = scene.with_extra(
        Entry::link("data/link", tar::EntryType::Symlink, "../../outside"),
        Some(record("data/link", b"", 0o777)),
    );
    let b = scene.craft("symlink", &a, &meta);
    scene.refused(
        "(c) symlink data/link -> ../../outside",
        &b,
        &["outside the installation"],
        &[root.join("data/link"), base.join("outside")],
    );

    // (c2) A symlink to an absolute path, and (c3) a hard link out of the installation.
    let (a, meta) = scene.with_extra(
        Entry::link(
            "config/abs-link",
            tar::EntryType::Symlink,
            p(&base.join("abs-target")),
        ),
        Some(record("config/abs-link", b"", 0o777)),
    );
    let b = scene.craft("symlink-absolute", &a, &meta);
    scene.refused(
        "(c2) symlink to an absolute path",
        &b,
        &["outside the installation"],
        &[root.join("config/abs-link"), base.join("abs-target")],
    );
    let (a, meta) = scene.with_extra(
        Entry::link("data/hard", tar::EntryType::Link, "../../outside-hard"),
        Some(record("data/hard", b"", 0o644)),
    );
    let b = scene.craft("hardlink", &a, &meta);
    scene.refused(
        "(c3) hard link out of the installation",
        &b,
        &["outside the installation", "link"],
        &[root.join("data/hard"), base.join("outside-hard")],
    );

    // (d) The real archive, with the sha256 of one file altered in the metadata.
    let real_archive = archive(&scene.entries);
    let mut meta = scene.meta.clone();
    let files = meta["files"].as_array_mut().unwrap();
    let last = files.len() - 1;
    files[last]["sha256"] = serde_json::Value::from("0".repeat(64));
    let b = scene.craft("bad-checksum", &real_archive, &meta);
    scene.refused("(d) altered checksum", &b, &["checksum mismatch"], &[]);

    // (d2) The metadata intact, one byte of one archived file changed.
    let mut entries = read_archive(&root.join(&backups_in(&root.join("backups"))[0]));
    let victim = entries
        .iter_mut()
        .find(|e| e.name == b"config/server.toml")
        .unwrap();
    victim.data[0] ^= 0x20;
    let b = scene.craft("tampered", &archive(&entries), &scene.meta);
    scene.refused("(d2) tampered data", &b, &["checksum mismatch"], &[]);

    // (e) The real archive cut in half.
    let real = backups_in(&root.join("backups"))[0].clone();
    let full = std::fs::read(real.join("backup.tar.zst")).expect("archive");
    let b = scene.craft("truncated", &full[..full.len() / 2], &scene.meta);
    scene.refused(
        "(e) truncated archive",
        &b,
        &["truncated", "corrupt", "unreadable", "missing", "not zstd"],
        &[],
    );

    // (f) An extra entry that metadata.json does not list.
    let (a, meta) = scene.with_extra(Entry::file("data/extra.txt", &payload), None);
    let b = scene.craft("unlisted", &a, &meta);
    scene.refused(
        "(f) entry not listed",
        &b,
        &["not listed"],
        &[root.join("data/extra.txt")],
    );

    // (g) A listed file missing from the archive.
    let b = scene.craft(
        "missing",
        &archive(&scene.entries[..scene.entries.len() - 1]),
        &scene.meta,
    );
    scene.refused(
        "(g) listed file missing",
        &b,
        &["missing from the archive"],
        &[],
    );

    // (h) The archive named by a path out of the backup folder.
    std::fs::write(base.join("elsewhere.tar.zst"), &full).expect("write");
    let mut meta = scene.meta.clone();
    meta["archive"] = serde_json::Value::from("../elsewhere.tar.zst");
    let b = scene.craft("archive-path", &full, &meta);
    scene.refused(
        "(h) archive name is a path",
        &b,
        &["not a plain file name"],
        &[],
    );

    // And the real backup still restores (the refusals left no lock or staging in the way).
    let out = migrate(&["rollback", "--backup-path", p(&real), "--path", p(&root)]);
    ok(&out);
    assert_eq!(
        read(&root, "config/server.toml"),
        read(
            &workspace_root().join("samples/install-0.1.0"),
            "config/server.toml"
        )
    );
}

/// BUG (found on commit 8637706; this test failed there) — host/src/restore.rs, `restore`;
/// host/src/backup.rs, `read_metadata`: the paths in
/// `created_files` and `created_dirs` of a backup's metadata.json are trusted as they are.
/// `restore` does `root.join(rel)` for each of them, so `../x` or an absolute path names a file
/// OUTSIDE the installation; it is put in the restore journal as a `Remove` entry and deleted
/// by the swap (for an absolute path, `Transaction::prepare` first "keeps" it with `fs::copy`
/// onto itself), and the empty folders named in `created_dirs` are removed with
/// `remove_dir(root.join(dir))`. A crafted backup can thus delete any file the user can delete,
/// and `backups verify` says it is fine. Expected: every path in metadata.json (files,
/// created_files, created_dirs) is checked like the archive entries (relative, no `..`, no
/// root) and a backup with one that is not is refused before anything changes.
#[test]
fn regression_backup_metadata_paths_cannot_reach_outside_the_installation() {
    let scene = Scene::new();
    let base = scene.base.path().to_path_buf();
    std::fs::create_dir_all(base.join("victims/empty-dir")).expect("mkdir");
    let relative_victim = base.join("victims/relative.txt");
    let absolute_victim = base.join("victims/absolute.txt");
    std::fs::write(&relative_victim, "do not delete\n").expect("write");
    std::fs::write(&absolute_victim, "do not delete either\n").expect("write");

    let real_archive = archive(&scene.entries);
    let mut meta = scene.meta.clone();
    meta["created_files"]
        .as_array_mut()
        .unwrap()
        .push("../victims/relative.txt".into());
    meta["created_files"]
        .as_array_mut()
        .unwrap()
        .push(p(&absolute_victim).into());
    meta["created_dirs"]
        .as_array_mut()
        .unwrap()
        .push("../victims/empty-dir".into());
    let b = scene.craft("created-outside", &real_archive, &meta);
    let root = scene.root();
    let verify = migrate(&["backups", "verify", p(&b)]);
    let rollback = migrate(&["rollback", "--backup-path", p(&b), "--path", p(&root)]);
    let mut damage = Vec::new();
    for (victim, content) in [
        (&relative_victim, "do not delete\n"),
        (&absolute_victim, "do not delete either\n"),
    ] {
        match std::fs::read_to_string(victim) {
            Ok(c) if c == content => {}
            Ok(c) => damage.push(format!("{} was changed to {c:?}", victim.display())),
            Err(e) => damage.push(format!("{} is gone ({e})", victim.display())),
        }
    }
    if !base.join("victims/empty-dir").is_dir() {
        damage.push(format!(
            "{} was removed",
            base.join("victims/empty-dir").display()
        ));
    }
    assert!(
        damage.is_empty() && !rollback.status.success(),
        "regression: a backup whose metadata.json lists paths outside the installation in \
         created_files / created_dirs reached outside:\n  {}\n  backups verify: exit {:?} {}\n  rollback: exit {:?} {}",
        damage.join("\n  "),
        verify.status.code(),
        both(&verify).trim(),
        rollback.status.code(),
        both(&rollback).trim()
    );
}

/// A run that writes more files than its open-file limit lets it hold at once is backed up:
/// the files it wrote are hashed one at a time. (Opening them all first, as one version of
/// the backup did, failed here with "Too many open files".) The limit is set on the real
/// binary with `prlimit`, and the rollback proves the backup whole.
#[test]
fn a_run_writing_more_files_than_it_may_hold_open_is_backed_up() {
    let dir = sample_install();
    let root = dir.path();
    const PARTS: usize = 160;
    for i in 0..PARTS {
        write(
            root,
            &format!("data/parts/part-{i:03}.jsonl"),
            &format!("{{\"id\":\"p-{i}\",\"model\":\"bert-tiny\",\"prompt_tokens\":1,\"completion_tokens\":2,\"latency_ms\":4,\"timestamp\":1640995200}}\n"),
        );
    }
    let before = tree_hash(root);
    let home = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg("--nofile=120:120")
            .arg("--")
            .arg(migrate_bin())
            .args(args);
        isolated(&mut cmd, home.path())
            .output()
            .expect("run prlimit")
    };
    let out = run(&["--yes", "version", "--path", p(root), "--to", "2.1.0"]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
    let migrated = jsonl(root, "data/parts/part-159.jsonl");
    assert_eq!(migrated[0]["schema_version"], 3, "{migrated:?}");
    let out = run(&["--yes", "rollback", "--path", p(root)]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(
        tree_hash(root),
        before,
        "the rollback restores every file byte for byte"
    );
}

//! `plugins.lock`: `migrate plugins pin` writes it, a plugin that is not listed or whose sha256
//! differs is refused before it is loaded, and `migrate plugins verify` checks without loading.

mod common;
mod platform_support;

use std::io::Write;
use std::path::Path;

use common::*;
use platform_support::*;
use serde_json::Value;

fn pin(dir: &Path) -> Value {
    pin_env(dir, &[])
}

/// With the load marker (see `run_in`), unsandboxed: the marker is a write outside staging.
fn pin_env(dir: &Path, env: &[(&str, &str)]) -> Value {
    let d = dir.to_str().unwrap();
    let mut args = vec!["--json", "plugins", "pin", d];
    if env.iter().any(|(k, _)| *k == "PLATFORM_HOP_LOAD_MARKER") {
        args.insert(0, "--no-sandbox");
    }
    let out = migrate_env(&args, env);
    serde_json::from_str(&ok(&out)).expect("pin --json")
}

/// `plugins verify DIR --json`: (exit code, document).
fn verify(dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let d = dir.to_str().unwrap();
    let out = migrate_env(&["--json", "plugins", "verify", d], env);
    let doc = serde_json::from_str(&stdout(&out)).expect("verify --json");
    (out.status.code(), doc)
}

fn append(file: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn pin_writes_a_versioned_lock_listing_every_plugin_and_verify_passes() {
    let dir = plugin_dir();
    let doc = pin(dir.path());
    let lock_path = dir.path().join("plugins.lock");
    assert_eq!(doc[0]["lock"], lock_path.to_str().unwrap(), "{doc:#}");
    let text = read(dir.path(), "plugins.lock");
    let lock: toml_edit::DocumentMut = text.parse().expect("plugins.lock is TOML");
    assert_eq!(lock["format"].as_integer(), Some(1), "{text}");
    assert_eq!(lock["algorithm"].as_str(), Some("sha256"), "{text}");
    let pins = lock["plugin"].as_array_of_tables().expect("[[plugin]]");
    let mut hops = Vec::new();
    for (pin, file) in pins.iter().zip(PLUGINS) {
        assert_eq!(pin["file"].as_str(), Some(file));
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        assert_eq!(pin["sha256"].as_str(), Some(sha256_hex(&bytes).as_str()));
        assert_eq!(pin["api_version"].as_str(), Some("1.8.1"));
        let (from, to) = (pin["from"].as_str().unwrap(), pin["to"].as_str().unwrap());
        hops.push(format!("{from}>{to}"));
    }
    assert_eq!(hops, ["0.1.0>1.0.0", "1.0.0>2.0.0", "2.0.0>2.1.0"]);
    let meta = std::fs::metadata(&lock_path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o644
    );

    let (code, doc) = verify(dir.path(), &[]);
    assert_eq!((code, &doc["ok"]), (Some(0), &Value::Bool(true)), "{doc:#}");
    assert_eq!(active(&list(dir.path(), &[], &[])), 3);
    let install = sample_install();
    ok(&migrate_to(dir.path(), install.path(), "2.1.0", &[], &[]));
}

#[test]
fn a_changed_plugin_is_refused_until_pinned_again() {
    let dir = plugin_dir();
    pin(dir.path());
    let file = dir.path().join("libv1_to_v2.so");
    append(&file, b"tampered");
    let doc = list(dir.path(), &[], &[]);
    let (state, reason) = status_of(&doc, "libv1_to_v2.so");
    assert_eq!(state, "refused", "{doc:#}");
    assert!(reason.contains("differs from plugins.lock"), "{reason}");
    assert!(reason.contains(&sha256_hex(&std::fs::read(&file).unwrap())));
    assert_eq!(entry(&doc, "libv1_to_v2.so")["loaded"], false);

    let (code, doc) = verify(dir.path(), &[]);
    assert_eq!(code, Some(6), "{doc:#}");
    assert!(
        doc.to_string().contains("differs from plugins.lock"),
        "{doc:#}"
    );
    let text = stdout(&migrate(&[
        "plugins",
        "verify",
        dir.path().to_str().unwrap(),
    ]));
    assert!(
        text.contains("REFUSED") && text.contains("libv1_to_v2.so"),
        "{text}"
    );

    let install = sample_install();
    let before = tree_hash(install.path());
    let out = migrate_to(dir.path(), install.path(), "2.1.0", &[], &[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("differs from plugins.lock"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_hash(install.path()), before);

    pin(dir.path());
    assert_eq!(verify(dir.path(), &[]).0, Some(0));
    ok(&migrate_to(dir.path(), install.path(), "2.1.0", &[], &[]));
}

#[test]
fn an_unlisted_plugin_is_refused_without_being_loaded() {
    let dir = plugin_dir();
    pin(dir.path());
    install(&platform_hop(), dir.path(), "libplatform_hop.so");
    let marker = dir.path().join("loaded.txt");
    let env = [("PLATFORM_HOP_LOAD_MARKER", marker.to_str().unwrap())];
    let doc = list(dir.path(), &[], &env);
    let (state, reason) = status_of(&doc, "libplatform_hop.so");
    assert_eq!(state, "refused", "{doc:#}");
    assert!(reason.contains("not listed in plugins.lock"), "{reason}");
    assert!(reason.contains("migrate plugins pin"), "{reason}");
    assert!(!marker.exists(), "an unlisted plugin was loaded");
    assert_eq!(active(&doc), 3);
    let (code, doc) = verify(dir.path(), &env);
    assert_eq!(code, Some(6));
    assert!(
        doc.to_string().contains("not listed in plugins.lock"),
        "{doc:#}"
    );
}

#[test]
fn verify_loads_nothing() {
    let dir = plugin_dir();
    install(&platform_hop(), dir.path(), "libplatform_hop.so");
    let marker = dir.path().join("loaded.txt");
    let env = [("PLATFORM_HOP_LOAD_MARKER", marker.to_str().unwrap())];
    let (code, doc) = verify(dir.path(), &env);
    // Nothing is pinned anywhere: said (issue 16: not a failure, exit 0), and nothing loaded.
    assert_eq!(code, Some(0), "no lock at all is not a failure: {doc:#}");
    assert_eq!(doc["pinned"], false, "{doc:#}");
    assert!(doc.to_string().contains("has no plugins.lock"), "{doc:#}");
    assert!(!marker.exists(), "verify loaded a plugin");
    pin_env(dir.path(), &env);
    std::fs::remove_file(&marker).expect("pin loads the plugins it pins");
    let (code, doc) = verify(dir.path(), &env);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["folders"][0]["files"].as_array().unwrap().len(), 4);
    assert!(!marker.exists(), "plugins verify loaded a plugin");
    list(dir.path(), &[], &env);
    assert!(marker.exists(), "the marker does not work");
}

#[test]
fn a_pinned_file_that_is_missing_fails_verify() {
    let dir = plugin_dir();
    pin(dir.path());
    std::fs::remove_file(dir.path().join("libv0_1_to_v1.so")).unwrap();
    let (code, doc) = verify(dir.path(), &[]);
    assert_eq!(code, Some(6));
    let problems = doc["folders"][0]["problems"].to_string();
    assert!(
        problems.contains("libv0_1_to_v1.so") && problems.contains("missing"),
        "{doc:#}"
    );
}

#[test]
fn an_unusable_or_unsafe_lock_refuses_its_whole_folder() {
    let dir = plugin_dir();
    pin(dir.path());
    let lock = dir.path().join("plugins.lock");
    let text = read(dir.path(), "plugins.lock");
    let cases = [
        ("this is = not [toml", "not a valid plugins.lock"),
        (
            &*text.replacen("format = 1", "format = 2", 1),
            "upgrade migrate",
        ),
        (
            &*text.replacen("\"sha256\"", "\"blake3\"", 1),
            "upgrade migrate",
        ),
    ];
    for (content, why) in cases {
        std::fs::write(&lock, content).unwrap();
        let doc = list(dir.path(), &[], &[]);
        for file in PLUGINS {
            let (state, reason) = status_of(&doc, file);
            assert_eq!(state, "refused", "{doc:#}");
            assert!(
                reason.contains(why) && reason.contains("plugins.lock"),
                "{reason}"
            );
        }
        assert_eq!(verify(dir.path(), &[]).0, Some(6));
    }
    std::fs::write(&lock, &text).unwrap();
    chmod(&lock, 0o666);
    let doc = list(dir.path(), &[], &[]);
    assert!(
        status_of(&doc, PLUGINS[0]).1.contains("plugins.lock"),
        "{doc:#}"
    );
    assert_eq!(active(&doc), 0);
    assert_eq!(
        active(&list(dir.path(), &["--allow-insecure-plugins"], &[])),
        3
    );
}

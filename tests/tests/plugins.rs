//! Discovery and loading of the real plugin `.so` files by the real host.

mod common;
use common::*;

use serde_json::Value;

fn list_json(args: &[&str]) -> Value {
    let mut all = vec!["plugins", "list", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&migrate(&all))).expect("plugins list --json is JSON")
}

#[test]
fn three_plugins_are_listed_as_three() {
    let dir = plugin_dir();
    let doc = list_json(&[
        "--no-default-plugins",
        "--plugin-dir",
        dir.path().to_str().unwrap(),
    ]);
    let plugins = doc["plugins"].as_array().expect("plugins array");
    assert_eq!(plugins.len(), 3, "{doc:#}");
    let mut hops: Vec<(String, String)> = Vec::new();
    for p in plugins {
        assert_eq!(p["status"]["state"], "active", "{p:#}");
        let d = &p["descriptor"];
        assert_eq!(d["api_version"], "1.8.1");
        assert_eq!(
            d["rules"],
            serde_json::json!({"config": true, "data": true, "model": true, "data_edits": true})
        );
        let file = std::fs::read(p["path"].as_str().unwrap()).unwrap();
        assert_eq!(
            p["sha256"],
            sha256_hex(&file),
            "sha256 is of the loaded file"
        );
        hops.push((
            d["from"].as_str().unwrap().into(),
            d["to"].as_str().unwrap().into(),
        ));
    }
    hops.sort();
    let want = [("0.1.0", "1.0.0"), ("1.0.0", "2.0.0"), ("2.0.0", "2.1.0")];
    assert_eq!(hops, want.map(|(a, b)| (a.to_string(), b.to_string())));
}

#[test]
fn plugins_next_to_the_binary_are_found_by_default() {
    let doc = list_json(&[]);
    let active: Vec<&Value> = doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"]["state"] == "active")
        .collect();
    assert_eq!(active.len(), 3, "{doc:#}");
    let text = ok(&migrate(&["plugins", "list"]));
    assert_eq!(text.matches("[active]").count(), 3, "{text}");
}

#[test]
fn files_that_are_not_plugins_are_reported_not_fatal() {
    let dir = plugin_dir();
    std::fs::write(dir.path().join("libnotes.so"), "this is text, not ELF").unwrap();
    let libz = [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/libz.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    if let Some(libz) = libz {
        std::fs::copy(libz, dir.path().join("libz.so")).unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let doc = list_json(&["--no-default-plugins", "--plugin-dir", d]);
    let plugins = doc["plugins"].as_array().unwrap();
    let invalid: Vec<&Value> = plugins
        .iter()
        .filter(|p| p["status"]["state"] == "invalid")
        .collect();
    assert_eq!(invalid.len(), if libz.is_some() { 2 } else { 1 }, "{doc:#}");
    for p in &invalid {
        assert!(!p["status"]["reason"].as_str().unwrap().is_empty());
    }
    if libz.is_some() {
        let z = invalid
            .iter()
            .find(|p| p["path"].as_str().unwrap().ends_with("libz.so"))
            .unwrap();
        assert!(
            z["status"]["reason"]
                .as_str()
                .unwrap()
                .contains("not a trustformers-migrate plugin"),
            "{z:#}"
        );
    }
    let install = sample_install();
    let out = migrate(&[
        "--no-default-plugins",
        "--plugin-dir",
        d,
        "version",
        "--path",
        install.path().to_str().unwrap(),
        "--to",
        "2.1.0",
    ]);
    ok(&out);
    assert_eq!(read(install.path(), "VERSION"), "2.1.0\n");
}

#[test]
fn two_plugins_for_one_hop_are_an_error_naming_both_unless_one_is_chosen() {
    let dir = plugin_dir();
    let twin = dir.path().join("libv1_to_v2_copy.so");
    std::fs::copy(dir.path().join("libv1_to_v2.so"), &twin).unwrap();
    let d = dir.path().to_str().unwrap();
    let install = sample_install();
    let root = install.path().to_str().unwrap();
    let before = tree_hash(install.path());
    let out = migrate(&[
        "--no-default-plugins",
        "--plugin-dir",
        d,
        "version",
        "--path",
        root,
        "--to",
        "2.1.0",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("libv1_to_v2.so") && err.contains("libv1_to_v2_copy.so"),
        "{err}"
    );
    assert!(err.contains("--use-plugin"), "{err}");
    assert_eq!(tree_hash(install.path()), before);

    let chosen = twin.canonicalize().unwrap();
    let out = migrate(&[
        "--no-default-plugins",
        "--plugin-dir",
        d,
        "--use-plugin",
        chosen.to_str().unwrap(),
        "version",
        "--path",
        root,
        "--to",
        "2.1.0",
    ]);
    ok(&out);
}

#[test]
fn a_higher_precedence_folder_shadows_a_lower_one() {
    let first = plugin_dir();
    let second = plugin_dir();
    let doc = list_json(&[
        "--no-default-plugins",
        "--plugin-dir",
        first.path().to_str().unwrap(),
        "--plugin-dir",
        second.path().to_str().unwrap(),
    ]);
    let plugins = doc["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 6);
    let shadowed = plugins
        .iter()
        .filter(|p| p["status"]["state"] == "shadowed")
        .count();
    assert_eq!(shadowed, 3, "{doc:#}");
    for p in plugins.iter().filter(|p| p["status"]["state"] == "active") {
        assert!(p["path"]
            .as_str()
            .unwrap()
            .starts_with(first.path().canonicalize().unwrap().to_str().unwrap()));
    }
}

#[test]
fn a_missing_hop_error_names_the_plugin_that_was_not_loaded_and_why() {
    use std::os::unix::fs::PermissionsExt;
    let dir = plugin_dir();
    let insecure = dir.path().join("libv1_to_v2.so");
    std::fs::set_permissions(&insecure, std::fs::Permissions::from_mode(0o646)).unwrap();
    let d = dir.path().to_str().unwrap();
    let out = migrate(&[
        "--no-default-plugins",
        "--plugin-dir",
        d,
        "info",
        "--from",
        "0.1.0",
        "--to",
        "2.1.0",
    ]);
    assert_eq!(out.status.code(), Some(7));
    let err = stderr(&out);
    assert!(
        err.contains("loaded hops: 0.1.0 → 1.0.0, 2.0.0 → 2.1.0"),
        "{err}"
    );
    assert!(
        err.contains("libv1_to_v2.so was not loaded") && err.contains("chmod go-w"),
        "{err}"
    );
}

//! Trust, like ssh's StrictModes: a plugin file or folder writable by group/others, or owned by
//! another user than the current one or root, is refused before it is loaded, with the path and
//! the fix; `--allow-insecure-plugins` loads it anyway, with a warning.

mod common;
mod platform_support;

use common::*;
use platform_support::*;

const ALLOW: &str = "--allow-insecure-plugins";

/// The migration needing the refused hop fails (no path), names the reason on stderr, and
/// leaves the installation as it was.
fn assert_migration_refused(dir: &std::path::Path, reason_part: &str) {
    let install = sample_install();
    let before = tree_hash(install.path());
    let out = migrate_to(dir, install.path(), "2.1.0", &[], &[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains(reason_part), "{}", stderr(&out));
    assert_eq!(tree_hash(install.path()), before);
}

fn assert_migration_allowed(dir: &std::path::Path) {
    let install = sample_install();
    ok(&migrate_to(dir, install.path(), "2.1.0", &[ALLOW], &[]));
    assert_eq!(read(install.path(), "VERSION"), "2.1.0\n");
}

#[test]
fn a_world_writable_plugin_file_is_refused_unless_allowed() {
    let dir = plugin_dir();
    let file = dir.path().join("libv1_to_v2.so");
    chmod(&file, 0o666);
    let doc = list(dir.path(), &[], &[]);
    let (state, reason) = status_of(&doc, "libv1_to_v2.so");
    assert_eq!(state, "refused", "{doc:#}");
    let shown = file.canonicalize().unwrap().display().to_string();
    assert!(reason.contains(&shown), "{reason}");
    assert!(
        reason.contains("writable by group and others (mode 0666)"),
        "{reason}"
    );
    assert!(reason.contains(&format!("chmod go-w {shown}")), "{reason}");
    assert!(reason.contains(ALLOW), "{reason}");
    let e = entry(&doc, "libv1_to_v2.so");
    assert_eq!(
        (e["loaded"].as_bool(), e["descriptor"].is_null()),
        (Some(false), true)
    );
    assert_eq!(active(&doc), 2);
    assert_migration_refused(dir.path(), "chmod go-w");

    let doc = list(dir.path(), &[ALLOW], &[]);
    assert_eq!(active(&doc), 3, "{doc:#}");
    let warnings = entry(&doc, "libv1_to_v2.so")["warnings"]
        .as_array()
        .unwrap();
    assert!(
        warnings[0].as_str().unwrap().contains("mode 0666"),
        "{doc:#}"
    );
    let text = ok(&run_in(dir.path(), &[ALLOW, "plugins", "list"], &[]));
    assert!(text.contains("INSECURE"), "{text}");
    assert_migration_allowed(dir.path());
}

#[test]
fn a_group_writable_folder_refuses_every_plugin_in_it() {
    let dir = plugin_dir();
    chmod(dir.path(), 0o775);
    let doc = list(dir.path(), &[], &[]);
    let shown = dir.path().canonicalize().unwrap().display().to_string();
    for file in PLUGINS {
        let (state, reason) = status_of(&doc, file);
        assert_eq!(state, "refused", "{doc:#}");
        assert!(
            reason.contains(&format!("plugin folder {shown} is writable by its group")),
            "{reason}"
        );
        assert!(reason.contains(&format!("chmod go-w {shown}")), "{reason}");
    }
    assert_migration_refused(dir.path(), "writable by its group");
    assert_eq!(active(&list(dir.path(), &[ALLOW], &[])), 3);
    assert_migration_allowed(dir.path());
}

#[test]
fn a_refused_plugin_is_never_loaded() {
    let dir = plugin_dir();
    let so = install(&platform_hop(), dir.path(), "libplatform_hop.so");
    chmod(&so, 0o646);
    let marker = dir.path().join("loaded.txt");
    let env = [("PLATFORM_HOP_LOAD_MARKER", marker.to_str().unwrap())];
    let doc = list(dir.path(), &[], &env);
    assert_eq!(status_of(&doc, "libplatform_hop.so").0, "refused");
    assert!(status_of(&doc, "libplatform_hop.so")
        .1
        .contains("writable by others"));
    assert!(!marker.exists(), "the refused library's constructor ran");
    let doc = list(dir.path(), &[ALLOW], &env);
    assert_eq!(status_of(&doc, "libplatform_hop.so").0, "active");
    assert!(marker.exists(), "the allowed library was not loaded");
}

#[test]
fn a_plugin_owned_by_another_user_is_refused() {
    if my_uid() != 0 {
        eprintln!(
            "skipped: chown to another user needs root (running as uid {})",
            my_uid()
        );
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = plugin_dir();
    let file = dir.path().join("libv2_to_v2_1.so");
    std::os::unix::fs::chown(&file, Some(NOBODY), None).expect("chown nobody");
    let doc = list(dir.path(), &[], &[]);
    let (state, reason) = status_of(&doc, "libv2_to_v2_1.so");
    assert_eq!(state, "refused", "{doc:#}");
    let shown = file.canonicalize().unwrap().display().to_string();
    assert!(
        reason.contains(&format!(
            "{shown} is owned by uid {NOBODY}, not by you (uid 0) or root"
        )),
        "{reason}"
    );
    assert!(reason.contains(&format!("chown 0 {shown}")), "{reason}");
    assert_migration_refused(dir.path(), "owned by uid 65534");
    assert_eq!(active(&list(dir.path(), &[ALLOW], &[])), 3);
    assert_migration_allowed(dir.path());
}

#[test]
fn files_owned_by_root_or_the_user_with_owner_only_write_are_loaded() {
    let dir = plugin_dir();
    chmod(dir.path(), 0o755);
    chmod(&dir.path().join("libv0_1_to_v1.so"), 0o600);
    let doc = list(dir.path(), &[], &[]);
    assert_eq!(active(&doc), 3, "{doc:#}");
    for p in doc["plugins"].as_array().unwrap() {
        assert_eq!(p["warnings"], serde_json::json!([]));
        assert_eq!(p["loaded"], true);
    }
}

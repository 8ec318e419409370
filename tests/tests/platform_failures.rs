//! A plugin that panics, or returns an error, in the middle of a migration: the migration ends
//! in a clean error naming the plugin (exit 6 for a plugin failure, 3 for refused input), the
//! host does not crash, and the installation is exactly as it was.

mod common;
mod platform_support;

use common::*;
use platform_support::*;

/// Migrates the sample 0.1.0 → 2.2.0 through the three real hops and the fixture hop
/// 2.1.0 → 2.2.0 misbehaving as `fail` says; returns (exit code, stderr).
fn migrate_through_failing_hop(fail: &str) -> (Option<i32>, String) {
    let dir = plugin_dir();
    install(&platform_hop(), dir.path(), "libfailing.so");
    let install = sample_install();
    let before = tree_hash(install.path());
    let env = [
        ("PLATFORM_HOP_FAIL", fail),
        ("PLATFORM_HOP_NAME", "failing_fixture"),
    ];
    let out = migrate_to(dir.path(), install.path(), "2.2.0", &[], &env);
    assert_eq!(
        tree_hash(install.path()),
        before,
        "{fail}: the installation changed"
    );
    assert!(!install.path().join("VERSION").exists(), "{fail}");
    let staging = install.path().join(".migrate");
    let leftovers: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().starts_with("staging")),
        "{fail}: staging left behind: {leftovers:?}"
    );
    (out.status.code(), stderr(&out))
}

#[test]
fn a_plugin_panicking_in_its_data_rule_ends_in_a_plugin_error() {
    let (code, err) = migrate_through_failing_hop("data-panic");
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("failing_fixture") && err.contains("panicked"),
        "{err}"
    );
    assert!(
        err.contains("libfailing.so"),
        "the plugin file is named: {err}"
    );
}

#[test]
fn a_plugin_panicking_in_its_config_rule_ends_in_a_clean_error() {
    let (code, err) = migrate_through_failing_hop("config-panic");
    assert!(matches!(code, Some(3 | 6)), "{code:?}: {err}");
    assert!(
        err.contains("failing_fixture") && err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn a_plugin_returning_an_error_from_its_config_rule_ends_in_a_clean_error() {
    let (code, err) = migrate_through_failing_hop("config-error");
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("failing_fixture") && err.contains("refused on purpose"),
        "{err}"
    );
    assert!(err.contains("config/server.toml"), "{err}");
}

#[test]
fn a_plugin_refusing_records_ends_in_a_clean_error() {
    let (code, err) = migrate_through_failing_hop("data-error");
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("failing_fixture") && err.contains("refused on purpose"),
        "{err}"
    );
    assert!(err.contains("data/"), "the file is named: {err}");
}

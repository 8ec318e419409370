//! Compatibility: a plugin built against the previous plugin-api loads and migrates; plugins
//! built against an incompatible plugin-api, files that are not plugins, hops that are not
//! semver or go backwards, and a plugin that panics while loading are each listed with a
//! clear status and reason, and never crash the host.

mod common;
mod platform_support;

use common::*;
use platform_support::*;

/// A folder with the three real plugins and `so` as `name`.
fn folder_with(so: &std::path::Path, name: &str) -> tempfile::TempDir {
    let dir = plugin_dir();
    install(so, dir.path(), name);
    dir
}

#[test]
fn a_plugin_built_against_plugin_api_1_0_0_loads_and_migrates() {
    let dir = folder_with(&platform_hop_api_1_0_0(), "libold.so");
    let doc = list(dir.path(), &[], &[]);
    assert_eq!(status_of(&doc, "libold.so"), ("active", ""), "{doc:#}");
    let d = &entry(&doc, "libold.so")["descriptor"];
    assert_eq!(d["api_version"], "1.0.0", "built against the snapshot");
    assert_eq!(
        (d["from"].as_str(), d["to"].as_str()),
        (Some("2.1.0"), Some("2.2.0"))
    );
    assert_eq!(
        entry(&doc, PLUGINS[0])["descriptor"]["api_version"],
        "1.8.1"
    );

    let install = sample_install();
    let report = ok(&migrate_to(
        dir.path(),
        install.path(),
        "2.2.0",
        &["--json"],
        &[],
    ));
    assert_eq!(read(install.path(), "VERSION"), "2.2.0\n");
    // A hop without a declared program (plugin-api 1.7) keeps the whole chain on the hops'
    // rules: the host's one fused pass migrated nothing.
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON report");
    let data = step(&report, "data").expect("a data step");
    assert!(data["records"].as_u64() > Some(0), "{data}");
    assert!(data.get("records_by_program").is_none(), "{data}");
    let config = read(install.path(), "config/server.toml");
    assert!(
        config.contains("[fixture]\nmigrated_by = \"platform_hop\""),
        "{config}"
    );
    for record in jsonl(install.path(), "data/requests.jsonl") {
        assert_eq!(record["migrated_by"], "platform_hop", "{record}");
        assert_eq!(record["schema_version"], 3, "{record}");
    }
    let root = install.path().to_str().unwrap();
    ok(&run_in(
        dir.path(),
        &["validate", "--path", root, "--version", "2.2.0"],
        &[],
    ));
}

#[test]
fn a_plugin_built_against_plugin_api_2_is_invalid_with_a_short_reason() {
    let dir = folder_with(&platform_hop_api_2(), "libnext.so");
    let doc = list(dir.path(), &[], &[]);
    let (state, reason) = status_of(&doc, "libnext.so");
    assert_eq!(state, "invalid", "{doc:#}");
    assert!(
        reason.contains("built against plugin-api 2.0.0"),
        "{reason}"
    );
    assert!(reason.contains("plugin-api 1.x"), "{reason}");
    assert!(reason.len() < 300, "{reason}");
    assert_eq!(active(&doc), 3);
    let install = sample_install();
    let out = migrate_to(dir.path(), install.path(), "2.2.0", &[], &[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    ok(&migrate_to(dir.path(), install.path(), "2.1.0", &[], &[]));
}

#[test]
fn files_that_are_not_plugins_are_listed_with_the_reason() {
    let dir = folder_with(&not_a_plugin(), "libnosymbol.so");
    std::fs::write(dir.path().join("libtext.so"), "this is text, not ELF").unwrap();
    std::fs::write(dir.path().join("libempty.so"), "").unwrap();
    let doc = list(dir.path(), &[], &[]);
    let (state, reason) = status_of(&doc, "libnosymbol.so");
    assert_eq!(state, "invalid");
    assert!(
        reason.contains("not a trustformers-migrate plugin"),
        "{reason}"
    );
    for file in ["libtext.so", "libempty.so"] {
        let (state, reason) = status_of(&doc, file);
        assert_eq!(state, "invalid", "{doc:#}");
        assert!(
            reason.contains("not a loadable library"),
            "{file}: {reason}"
        );
    }
    assert_eq!(active(&doc), 3);
}

#[test]
fn a_hop_that_is_not_semver_or_does_not_go_forward_is_invalid() {
    let dir = folder_with(&platform_hop(), "libfixture.so");
    let cases = [
        ("2.1", "2.2.0", "hop source `2.1` is not semver"),
        ("2.1.0", "three", "hop target `three` is not semver"),
        ("3.0.0", "2.1.0", "hop 3.0.0 → 2.1.0 does not go forward"),
        ("2.1.0", "2.1.0", "hop 2.1.0 → 2.1.0 does not go forward"),
    ];
    for (from, to, why) in cases {
        let env = [("PLATFORM_HOP_FROM", from), ("PLATFORM_HOP_TO", to)];
        let doc = list(dir.path(), &[], &env);
        let (state, reason) = status_of(&doc, "libfixture.so");
        assert_eq!(state, "invalid", "{from} → {to}: {doc:#}");
        assert!(reason.contains(why), "{reason}");
        assert_eq!(active(&doc), 3);
    }
}

#[test]
fn a_backward_hop_cannot_close_a_cycle() {
    let dir = folder_with(&example_hop(), "libv2_1_to_v3.so");
    install(&platform_hop(), dir.path(), "libback.so");
    let env = [("PLATFORM_HOP_FROM", "3.0.0"), ("PLATFORM_HOP_TO", "2.1.0")];
    let doc = list(dir.path(), &[], &env);
    assert_eq!(status_of(&doc, "libback.so").0, "invalid", "{doc:#}");
    assert!(status_of(&doc, "libback.so")
        .1
        .contains("can never form a cycle"));
    assert_eq!(active(&doc), 4);
    let info = ok(&run_in(
        dir.path(),
        &["info", "--from", "0.1.0", "--to", "3.0.0"],
        &env,
    ));
    assert!(info.contains("(4 hops)"), "{info}");
    let install = sample_install();
    ok(&migrate_to(dir.path(), install.path(), "3.0.0", &[], &env));
    assert_eq!(read(install.path(), "VERSION"), "3.0.0\n");
}

/// The panic's own message reaches the operator (plugin-api 1.3 and later); a plugin built
/// against 1.0.0 can only be reported as having panicked. Either way the other plugins migrate.
#[test]
fn a_plugin_that_panics_while_loading_is_invalid_and_says_why() {
    let env = [("PLATFORM_HOP_FAIL", "load-panic")];
    let cases = [
        (
            platform_hop(),
            "the plugin failed to load: it panicked while building its hop (the code given to \
             export_hop!): panicked at ",
        ),
        (
            platform_hop_api_1_0_0(),
            "the plugin panicked while it was being loaded (in the code given to export_hop!)",
        ),
    ];
    for (plugin, want) in cases {
        let dir = folder_with(&plugin, "libfixture.so");
        let out = run_in(dir.path(), &["plugins", "list", "--json"], &env);
        let doc: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        let (state, reason) = status_of(&doc, "libfixture.so");
        assert_eq!(state, "invalid", "{doc:#}");
        assert!(reason.starts_with(want), "{reason}");
        let message = "platform_hop panics while it is being loaded, on purpose";
        assert_eq!(
            reason.contains(message),
            plugin == platform_hop(),
            "{reason}"
        );
        assert!(!reason.contains('\n'), "one line: {reason:?}");
        assert_eq!(active(&doc), 3);
        let install = sample_install();
        ok(&migrate_to(dir.path(), install.path(), "2.1.0", &[], &env));
    }
}

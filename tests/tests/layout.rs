//! The shape of the workspace, as promised in docs/architecture.md: the engine library that
//! programs embed compiles no terminal code, and it is usable on its own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::*;

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata json")
}

fn terminal_crate(name: &str) -> bool {
    name == "clap" || name == "indicatif" || name.starts_with("clap_")
}

/// Only the crate that builds `migrate` depends on clap, indicatif or clap_* — directly, and
/// no other workspace crate pulls them in through its own dependencies.
#[test]
fn only_the_binary_crate_depends_on_terminal_crates() {
    let meta = metadata();
    let members: BTreeSet<String> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m.as_str().expect("id").to_owned())
        .collect();
    let packages = meta["packages"].as_array().expect("packages");
    let name_of: BTreeMap<String, String> = packages
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id").to_owned(),
                p["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    let direct: BTreeSet<String> = packages
        .iter()
        .filter(|p| members.contains(p["id"].as_str().expect("id")))
        .filter(|p| {
            p["dependencies"]
                .as_array()
                .expect("deps")
                .iter()
                .any(|d| terminal_crate(d["name"].as_str().expect("dep name")))
        })
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        direct,
        BTreeSet::from(["trustformers-migrate-cli".to_owned()]),
        "workspace crates that depend on clap/indicatif/clap_*"
    );

    // Through the resolved graph: nothing the engine links reaches a terminal crate.
    let nodes: BTreeMap<String, Vec<String>> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .expect("kinds")
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().expect("pkg").to_owned())
                .collect();
            (n["id"].as_str().expect("id").to_owned(), deps)
        })
        .collect();
    for library in ["trustformers-migrate", "trustformers-migrate-transaction"] {
        let start = name_of
            .iter()
            .find(|(id, name)| *name == library && members.contains(*id))
            .map(|(id, _)| id.clone())
            .expect("library in the workspace");
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let name = &name_of[&id];
            assert!(!terminal_crate(name), "{library} links {name}");
            todo.extend(nodes.get(&id).cloned().unwrap_or_default());
        }
        assert!(seen.len() > 5, "{library}: the walk saw its dependencies");
    }
}

/// The README's "Programmatic use" is `engine/examples/programmatic.rs`: it builds against the
/// engine alone and migrates a real installation with the real plugins.
#[test]
fn the_programmatic_example_migrates_an_installation() {
    ensure_built();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "trustformers-migrate",
            "--example",
            "programmatic",
        ])
        .current_dir(workspace_root())
        .status()
        .expect("build the example");
    assert!(status.success());
    let install = sample_install();
    let plugins = plugin_dir();
    let home = tempfile::tempdir().expect("home");
    let out = Command::new(target_dir().join("examples/programmatic"))
        .arg(install.path())
        .env("TRUSTFORMERS_PLUGIN_DIR", plugins.path())
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path().join("share"))
        .output()
        .expect("run the example");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("3 hops"), "{text}");
    assert!(text.contains("commit Completed"), "{text}");
    assert_eq!(read(install.path(), "VERSION").trim(), "2.1.0");
    // The example serves its workers before its async runtime starts: the sandbox binds every
    // thread of theirs (served from inside the runtime, it is only partially enforced, "N
    // threads were running before Landlock was applied"). That the result covers the workers
    // that described the plugins is the engine's test (`migrator::tests`).
    let isolation: serde_json::Value = text
        .lines()
        .find_map(|l| l.strip_prefix("isolation "))
        .map(|json| serde_json::from_str(json).expect("isolation JSON"))
        .unwrap_or_else(|| panic!("no isolation line: {text}"));
    assert_sandbox_as_the_kernel_allows(&isolation);
    for denied in ["sockets_denied", "processes_denied"] {
        assert_eq!(isolation[denied], kernel_has_seccomp(), "{isolation}");
    }
}

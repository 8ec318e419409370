//! The README's promises that a newcomer acts on literally: the install snippet works in plain
//! `sh`, and the exit-code table covers every code `migrate` returns.

mod common;
use common::*;

use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md")
}

/// The first ```sh block after `heading`.
fn sh_block(text: &str, heading: &str) -> String {
    let at = text.find(heading).unwrap_or_else(|| panic!("{heading}"));
    let rest = &text[at..];
    let start = rest.find("```sh\n").expect("```sh") + "```sh\n".len();
    let end = rest[start..].find("```").expect("end of block");
    rest[start..start + end].to_owned()
}

#[test]
fn the_install_snippet_works_in_plain_sh() {
    ensure_built();
    let snippet = sh_block(&readme(), "## Install");
    assert!(
        snippet.contains("install -m 755 target/release/migrate"),
        "{snippet}"
    );
    // Brace expansion is bash's; where /bin/sh is bash it would pass below regardless.
    assert!(
        !snippet.contains('{'),
        "brace expansion fails under sh:\n{snippet}"
    );
    // Run it as written, but from the debug build into a scratch prefix; the build line is
    // what ensure_built() already did.
    let prefix = tempfile::tempdir().unwrap();
    let dest = format!("{}/", prefix.path().display());
    let script: String = snippet
        .lines()
        .filter(|l| !l.trim_start().starts_with("cargo "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("target/release/", &format!("{}/", target_dir().display()))
        .replace("/usr/local/bin/", &dest);
    let out = Command::new("sh")
        .arg("-ec")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(out.status.success(), "{script}\n{}", stderr(&out));
    assert!(prefix.path().join("migrate").is_file());
    for p in PLUGINS {
        assert!(
            prefix.path().join("plugins").join(p).is_file(),
            "{p}\n{script}"
        );
    }
    // And the installed binary finds the installed plugins.
    let list = Command::new(prefix.path().join("migrate"))
        .args(["--json", "plugins", "list"])
        .env("HOME", prefix.path())
        .env_remove("TRUSTFORMERS_PLUGIN_DIR")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&list)).unwrap();
    let active = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"]["state"] == "active")
        .count();
    assert_eq!(active, 3, "{v}");
}

#[test]
fn the_exit_code_table_covers_every_code_and_the_from_mismatch() {
    let text = readme();
    let at = text.find("## Exit codes").expect("exit codes section");
    let table: Vec<&str> = text[at..]
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    for code in 0..=9 {
        assert!(
            table.iter().any(|l| l.starts_with(&format!("| {code} |"))),
            "exit code {code} is not in the table:\n{}",
            table.join("\n")
        );
    }
    let seven = table.iter().find(|l| l.starts_with("| 7 |")).unwrap();
    assert!(seven.contains("--from"), "{seven}");

    // What the table says of 7 is what migrate does.
    let install = sample_install();
    let out = migrate(&[
        "version",
        "--path",
        install.path().to_str().unwrap(),
        "--from",
        "1.0.0",
    ]);
    assert_eq!(out.status.code(), Some(7));
}

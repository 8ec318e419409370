//! Shared by the `platform_*` tests: the out-of-workspace plugins they load, each built by the
//! test itself, once per test process, into `target/fixtures` (see tests/fixtures/*/Cargo.toml
//! and examples/; a build is a no-op when nothing changed), and helpers to run `migrate` on one
//! plugin folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;

use super::common::{migrate_env, ok, workspace_root};

fn target() -> PathBuf {
    workspace_root().join("target/fixtures")
}

/// `cargo build` of `manifest` (relative to the workspace root); returns `lib<lib>.so`.
fn build(manifest: &Path, lib: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    let out = Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace_root().join(manifest))
        .arg("--target-dir")
        .arg(target())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "building {} failed:\n{}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "fixture {} built in {:.1} s",
        manifest.display(),
        started.elapsed().as_secs_f64()
    );
    let so = target().join("debug").join(format!("lib{lib}.so"));
    assert!(so.is_file(), "{} was not built", so.display());
    so
}

macro_rules! fixture {
    ($(#[$doc:meta])* $name:ident, $manifest:expr, $lib:expr) => {
        $(#[$doc])*
        pub fn $name() -> PathBuf {
            static BUILT: OnceLock<PathBuf> = OnceLock::new();
            BUILT.get_or_init(|| build(Path::new($manifest), $lib)).clone()
        }
    };
}

fixture!(
    /// tests/fixtures/platform-hop: hop and failures chosen by `PLATFORM_HOP_*` variables.
    platform_hop,
    "tests/fixtures/platform-hop/Cargo.toml",
    "platform_hop"
);
fixture!(
    /// The same source built against the frozen plugin-api 1.0.0 snapshot.
    platform_hop_api_1_0_0,
    "tests/fixtures/platform-hop-api-1.0.0/Cargo.toml",
    "platform_hop_api_1_0_0"
);
fixture!(
    /// A real shared library without the plugin symbol.
    not_a_plugin,
    "tests/fixtures/not-a-plugin/Cargo.toml",
    "not_a_plugin"
);
fixture!(
    /// The example third-party plugin, hop 2.1.0 → 3.0.0.
    example_hop,
    "examples/hop-v2_1-to-v3/Cargo.toml",
    "v2_1_to_v3"
);

/// The platform-hop source built against plugin-api **2.0.0**: the 1.0.0 snapshot with its
/// major bumped, generated under target/fixtures/gen so it never drifts from the snapshot.
pub fn platform_hop_api_2() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build(&generate_api_2(), "platform_hop_api_2"))
        .clone()
}

fn generate_api_2() -> PathBuf {
    let fixtures = workspace_root().join("tests/fixtures");
    let gen = target().join("gen");
    let api = gen.join("plugin-api-2.0.0");
    let snapshot = fixtures.join("plugin-api-1.0.0");
    for entry in std::fs::read_dir(snapshot.join("src")).expect("snapshot src") {
        let from = entry.expect("entry").path();
        let text = std::fs::read_to_string(&from).expect("read snapshot");
        write_if_changed(&api.join("src").join(from.file_name().unwrap()), &text);
    }
    let manifest = std::fs::read_to_string(snapshot.join("Cargo.toml")).expect("manifest");
    write_if_changed(
        &api.join("Cargo.toml"),
        &manifest.replacen("version = \"1.0.0\"", "version = \"2.0.0\"", 1),
    );
    let hop = gen.join("platform-hop-api-2");
    let manifest = std::fs::read_to_string(fixtures.join("platform-hop-api-1.0.0/Cargo.toml"))
        .expect("manifest")
        .replace("platform-hop-api-1-0-0", "platform-hop-api-2")
        .replace("platform_hop_api_1_0_0", "platform_hop_api_2")
        .replace(
            "\"../platform-hop/src/lib.rs\"",
            &format!("{:?}", fixtures.join("platform-hop/src/lib.rs")),
        )
        .replace("../plugin-api-1.0.0", "../plugin-api-2.0.0");
    write_if_changed(&hop.join("Cargo.toml"), &manifest);
    if !hop.join("Cargo.lock").exists() {
        let lock = fixtures.join("platform-hop-api-1.0.0/Cargo.lock");
        std::fs::copy(lock, hop.join("Cargo.lock")).expect("copy Cargo.lock");
    }
    hop.join("Cargo.toml")
}

/// Writes only when the content differs, so that cargo sees no change on later runs.
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return;
    }
    std::fs::create_dir_all(path.parent().unwrap()).expect("mkdir");
    std::fs::write(path, text).expect("write generated fixture");
}

/// Copies `so` into `dir` as `name`.
pub fn install(so: &Path, dir: &Path, name: &str) -> PathBuf {
    let dest = dir.join(name);
    std::fs::copy(so, &dest).expect("copy fixture plugin");
    dest
}

/// `migrate --no-default-plugins --plugin-dir DIR ARGS…` with `env`.
///
/// With `PLATFORM_HOP_LOAD_MARKER` set, the fixture plugin appends to that file as it loads:
/// the probe by which these tests see which files were loaded. The worker's sandbox (rightly)
/// forbids plugin code to write anywhere outside its staging, so those runs use
/// `--no-sandbox`; tests/tests/isolation.rs covers the sandbox itself.
pub fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec![
        "--no-default-plugins",
        "--plugin-dir",
        dir.to_str().unwrap(),
    ];
    if env.iter().any(|(k, _)| *k == "PLATFORM_HOP_LOAD_MARKER") {
        all.push("--no-sandbox");
    }
    all.extend_from_slice(args);
    migrate_env(&all, env)
}

/// `plugins list --json` of `dir` (plus `flags`, e.g. `--allow-insecure-plugins`).
pub fn list(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = flags.to_vec();
    args.extend(["plugins", "list", "--json"]);
    serde_json::from_str(&ok(&run_in(dir, &args, env))).expect("plugins list --json is JSON")
}

/// The entry of `doc` whose file is named `file`.
pub fn entry<'a>(doc: &'a Value, file: &str) -> &'a Value {
    doc["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["path"].as_str().unwrap().ends_with(&format!("/{file}")))
        .unwrap_or_else(|| panic!("{file} not listed: {doc:#}"))
}

/// `(state, reason)` of `file` in `doc`; the reason is "" when there is none.
pub fn status_of<'a>(doc: &'a Value, file: &str) -> (&'a str, &'a str) {
    let status = &entry(doc, file)["status"];
    (
        status["state"].as_str().unwrap(),
        status["reason"].as_str().unwrap_or(""),
    )
}

/// How many entries of `doc` are active.
pub fn active(doc: &Value) -> usize {
    doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"]["state"] == "active")
        .count()
}

/// `migrate version --path ROOT --to TO` with the plugins of `dir` only.
pub fn migrate_to(
    dir: &Path,
    root: &Path,
    to: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut args = flags.to_vec();
    args.extend(["version", "--path", root.to_str().unwrap(), "--to", to]);
    run_in(dir, &args, env)
}

/// The effective uid of the tests, read from the owner of a file they create.
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    file.as_file().metadata().expect("metadata").uid()
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

//! Shared harness for the end-to-end tests: the real `migrate` binary and the real plugin
//! `.so` files, on installations built on disk.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub const PLUGINS: [&str; 3] = ["libv0_1_to_v1.so", "libv1_to_v2.so", "libv2_to_v2_1.so"];

/// The steps of a migration, in the order they start (as progress and the audit trail name
/// them).
pub const STEPS: [&str; 8] = [
    "preflight",
    "config",
    "data",
    "models",
    "verify",
    "journal",
    "backup",
    "commit",
];

/// `target/debug` (or whatever profile the tests were built with).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the binary and the plugins once per test process: `cargo test` alone never builds
/// cdylibs. A no-op when `scripts/test` already ran the same build. The binary is built with
/// the crash tests' fault hook, which release builds never have.
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--features", FAULT_FEATURE])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace failed");
    });
}

/// The cargo feature that compiles the `TRUSTFORMERS_MIGRATE_FAULT` hook into `migrate`.
pub const FAULT_FEATURE: &str = "trustformers-migrate-cli/fault-injection";

pub fn migrate_bin() -> PathBuf {
    ensure_built();
    target_dir().join("migrate")
}

/// A folder holding copies of the three real plugins (and nothing else).
pub fn plugin_dir() -> tempfile::TempDir {
    ensure_built();
    let dir = tempfile::tempdir().expect("tempdir");
    for p in PLUGINS {
        let dest = dir.path().join(p);
        std::fs::copy(target_dir().join(p), &dest).expect("copy plugin");
        // Whatever the umask: migrate refuses group- or world-writable plugins.
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))
            .expect("chmod plugin");
    }
    dir
}

/// A scratch copy of the bundled 0.1.0 sample installation.
pub fn sample_install() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&workspace_root().join("samples/install-0.1.0"), dir.path());
    dir
}

pub fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.expect("walk");
        let rel = entry.path().strip_prefix(from).expect("prefix");
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// Runs `migrate` with an isolated environment: only the plugins next to the binary (the
/// real build output) unless the args say otherwise, and no user plugin folder.
pub fn migrate(args: &[&str]) -> Output {
    migrate_env(args, &[])
}

pub fn migrate_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(migrate_bin());
    isolated(cmd.args(args), home.path()).envs(env.iter().copied());
    cmd.output().expect("run migrate")
}

/// `cmd` without the operator's own settings: no plugin, settings or backup folder from the
/// environment, no `RUST_LOG`, and `home` as its home.
pub fn isolated<'a>(cmd: &'a mut Command, home: &Path) -> &'a mut Command {
    cmd.env_remove("TRUSTFORMERS_PLUGIN_DIR")
        .env_remove("TRUSTFORMERS_MIGRATION_CONFIG")
        .env_remove("TRUSTFORMERS_BACKUP_DIR")
        .env_remove("RUST_LOG")
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("share"))
}

/// What [`migrate_on_terminal`] saw.
pub struct OnTerminal {
    pub code: i32,
    /// Everything drawn on the terminal, escape sequences included.
    pub drawn: String,
    /// Whether `Continue? [y/N]` was asked.
    pub asked: bool,
}

/// Runs `migrate args` (isolated, with `env` added) with a pseudo-terminal of `cols` columns
/// as its stdin, stdout and stderr (Python's `pty`, as a person at a terminal or in an ssh
/// session), answering `answer` to the first `Continue? [y/N]`.
pub fn migrate_on_terminal(
    args: &[&str],
    answer: &str,
    env: &[(&str, &str)],
    cols: u16,
) -> OnTerminal {
    migrate_on_terminal_appending(args, answer, env, cols, None)
}

/// [`migrate_on_terminal`], appending `text` to the file `path` (when given) once the question
/// is shown and before answering it: a server writing while the operator thinks.
pub fn migrate_on_terminal_appending(
    args: &[&str],
    answer: &str,
    env: &[(&str, &str)],
    cols: u16,
    append: Option<(&Path, &str)>,
) -> OnTerminal {
    const DRIVER: &str = r#"
import fcntl, os, pty, struct, sys, termios
answer, cols, path, text, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    os.execv(argv[0], argv)
out, asked = b"", False
while True:
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    out += data
    if not asked and b"Continue? [y/N]" in out:
        if path:
            with open(path, "a") as f:
                f.write(text)
        os.write(fd, answer.encode() + b"\n")
        asked = True
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.stderr.write("asked" if asked else "not asked")
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(DRIVER)
        .arg(answer)
        .arg(cols.to_string())
        .arg(append.map_or(Path::new(""), |(p, _)| p))
        .arg(append.map_or("", |(_, t)| t))
        .arg(migrate_bin())
        .args(args);
    let out = isolated(&mut cmd, home.path())
        .envs(env.iter().copied())
        .output()
        .expect("python3 (scripts/test needs it for the test assets too)");
    OnTerminal {
        code: out.status.code().expect("exit code"),
        drawn: stdout(&out),
        asked: stderr(&out) == "asked",
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "migrate failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Every file below `root` (outside `.migrate/` and `backups/`): relative path → (mode, sha256).
pub fn tree_hash(root: &Path) -> BTreeMap<String, (u32, String)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).into_iter().filter_entry(|e| {
        let name = e.file_name().to_string_lossy();
        e.depth() != 1 || (name != ".migrate" && name != "backups")
    }) {
        let entry = entry.expect("walk");
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        let mode = entry.metadata().expect("meta").permissions().mode() & 0o7777;
        let hash = hex::encode(Sha256::digest(std::fs::read(entry.path()).expect("read")));
        out.insert(rel, (mode, hash));
    }
    out
}

/// Every file below `root`, `.migrate/` included: for "writes nothing at all".
pub fn full_tree_hash(root: &Path) -> BTreeMap<String, (u32, String)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.expect("walk");
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        let mode = entry.metadata().expect("meta").permissions().mode() & 0o7777;
        let hash = if entry.file_type().is_file() {
            hex::encode(Sha256::digest(std::fs::read(entry.path()).expect("read")))
        } else {
            "dir".into()
        };
        out.insert(rel, (mode, hash));
    }
    out
}

pub fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

pub fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

pub fn jsonl(root: &Path, rel: &str) -> Vec<serde_json::Value> {
    read(root, rel)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The step `name` of a migration's JSON result or report, if it has one.
pub fn step<'a>(result: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    result["steps"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The real all-MiniLM-L6-v2 folder fetched by scripts/fetch-test-assets.
pub fn real_model_dir() -> PathBuf {
    let dir = workspace_root().join("target/test-assets/all-minilm-l6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-test-assets (scripts/test does)",
        dir.display()
    );
    dir
}

/// Staging folders, kept originals and journal files in `.migrate/`.
pub fn leftovers(root: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(root.join(".migrate")) else {
        return Vec::new();
    };
    let mut left: Vec<String> = read
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("staging-") || n.starts_with("journal"))
        .collect();
    left.sort();
    left
}

/// No staging, kept originals or journal may survive a run, a rollback or a recovery.
pub fn assert_no_leftovers(root: &Path, context: &str) {
    let left = leftovers(root);
    assert!(
        left.is_empty(),
        "{context}: leftovers in .migrate: {left:?}"
    );
}

/// Builds the fixture plugin crate `tests/fixtures/<dir>` on its own (out of the workspace,
/// as a third party would) into `target/fixtures`; returns its `lib<lib>.so`.
pub fn build_fixture(dir: &str, lib: &str) -> PathBuf {
    ensure_built();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = workspace_root().join("target/fixtures");
    let out = Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace_root().join(format!("tests/fixtures/{dir}/Cargo.toml")))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap_or_else(|e| panic!("run cargo build for the {dir} fixture: {e}"));
    assert!(
        out.status.success(),
        "building tests/fixtures/{dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = target.join(format!("debug/lib{lib}.so"));
    assert!(lib.is_file(), "{} was not built", lib.display());
    lib
}

/// `target/fixtures/debug/libfailing_hop.so`, built once.
pub fn failing_hop() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build_fixture("failing-hop", "failing_hop"))
}

/// A plugin folder with the real 0.1.0 → 1.0.0 and 2.0.0 → 2.1.0 hops and the failing-hop
/// fixture's 1.0.0 → 2.0.0 in between.
pub fn failing_plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(failing_hop(), dir.path().join("libfailing_hop.so")).expect("copy fixture");
    for name in ["libv0_1_to_v1.so", "libv2_to_v2_1.so"] {
        std::fs::copy(target_dir().join(name), dir.path().join(name)).expect("copy plugin");
    }
    dir
}

/// Whether this kernel has seccomp filters that can return an errno: asked of the kernel
/// itself (`SECCOMP_GET_ACTION_AVAIL`), as any kernel since 4.14 answers.
pub fn kernel_has_seccomp() -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: the kernel reads the u32 we point to and writes nothing.
    unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        ) == 0
    }
}

/// A worker's reported `isolation` (JSON) says its sandbox is what this kernel allows: fully
/// enforced where the kernel offers every right the worker asks for (Landlock ABI 7), else
/// partially (never because threads ran before Landlock was applied), and not enforced
/// without Landlock.
pub fn assert_sandbox_as_the_kernel_allows(isolation: &serde_json::Value) {
    let abi = landlock_abi();
    let sandbox = isolation["sandbox"].as_str().unwrap_or_default();
    let reason = isolation["reason"].as_str().unwrap_or_default();
    match abi {
        7.. => assert_eq!(sandbox, "fully_enforced", "{isolation}"),
        1..=6 => assert!(
            sandbox == "partially_enforced" && !reason.contains("threads"),
            "Landlock ABI {abi}: {isolation}"
        ),
        _ => assert_eq!(sandbox, "not_enforced", "{isolation}"),
    }
}

/// The Landlock ABI this kernel offers (0 or less: none).
pub fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version, or -1.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    }
}

//! Hostile plugins (issue 13): no plugin can crash, hang or escape the host. The fixture
//! `tests/fixtures/hostile-hop` (built here like a third party's plugin, out of the workspace)
//! stands in for the real 2.0.0 → 2.1.0 plugin, next to the real 0.1.0 → 1.0.0 and
//! 1.0.0 → 2.0.0 plugins, and misbehaves as `HOSTILE_MODE` says: panic, abort, segfault,
//! endless loop, memory bomb, invalid TOML, a non-object record, a wrong schema_version,
//! lying checksums, a write outside the staging, a TCP connect, a UDP datagram, a connect to a
//! Unix socket, a file planted in the staging outside the plugin's own output.
//!
//! For each mode, and for `version`, `version --dry-run` and the single-kind command
//! (`config`, `data`, `models`) whose rule misbehaves:
//! * the exit status is the documented one (6: a plugin's fault; 4: `timeout_seconds`);
//! * the message names the plugin (for a dead worker: its file and sha256, and the file it was
//!   migrating, with the line range for data) and says nothing was changed;
//! * the installation is unchanged. What a failed run may legitimately write is its audit
//!   trail (`.migrate/audit.jsonl`, which must record the failure) and its lock file
//!   (`.migrate/lock`, and the `.migrate/` folder holding both): every other path, `.migrate/`
//!   included, must hash the same before and after ([`assert_unchanged`]), and no staging,
//!   journal or backup may be left. A dry run writes nothing at all, not even `.migrate/`;
//! * nothing happened outside: the escape target does not exist, the listeners got nothing;
//! * the command finished: every run has a watchdog ([`WATCHDOG`]) that kills it and fails.
//!
//! Control runs prove the tests can fail: the fixture in its default mode migrates the
//! installation, and with `--no-sandbox` the escape, the connects and the datagram do happen.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The plugin's name, as the fixture declares it.
const NAME: &str = "hostile_v2_to_v2_1";

/// No run may take longer than this: a run that does is killed and the test fails. Far above
/// what any run here needs (a few seconds), so that a slow, shared machine never trips it.
const WATCHDOG: Duration = Duration::from_secs(120);

/// Records in data/requests.jsonl: the data rule misbehaves on the 1000th it sees.
const RECORDS: usize = 2500;

type Tree = BTreeMap<String, (u32, String)>;

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `migrate <flags> version --path ROOT --to 2.1.0`, with the hostile fixture among the plugins
/// and the settings at `settings`: a whole migration, as the controls and progress tests run it.
fn version_args<'a>(
    plugins: &'a Plugins,
    settings: &'a Path,
    root: &'a Path,
    flags: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "--no-default-plugins",
        "--plugin-dir",
        p(plugins.dir.path()),
        "--config-file",
        p(settings),
    ];
    args.extend_from_slice(flags);
    args.extend(["version", "--path", p(root), "--to", "2.1.0"]);
    args
}

// ---------------------------------------------------------------------------------------------
// The fixture, the plugin folder and the installation

/// `target/fixtures/debug/libhostile_hop.so`, built once per test process.
fn hostile_hop() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build_fixture("hostile-hop", "hostile_hop"))
}

/// A plugin folder: the real 0.1.0 → 1.0.0 and 1.0.0 → 2.0.0 plugins and the hostile
/// 2.0.0 → 2.1.0 one, in place of the real v2_to_v2_1.
struct Plugins {
    dir: tempfile::TempDir,
}

impl Plugins {
    fn new() -> Plugins {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = |from: &Path, name: &str| {
            let dest = dir.path().join(name);
            std::fs::copy(from, &dest).expect("copy plugin");
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))
                .expect("chmod plugin");
        };
        copy(hostile_hop(), "libhostile_hop.so");
        for name in ["libv0_1_to_v1.so", "libv1_to_v2.so"] {
            copy(&target_dir().join(name), name);
        }
        Plugins { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("libhostile_hop.so")
    }

    fn sha256(&self) -> String {
        sha256_hex(&std::fs::read(self.file()).expect("read the hostile plugin"))
    }
}

/// The 0.1.0 sample installation with `RECORDS` generated records in data/requests.jsonl.
fn install() -> tempfile::TempDir {
    let dir = sample_install();
    let mut text = String::with_capacity(RECORDS * 130);
    for i in 0..RECORDS {
        text.push_str(&format!(
            "{{\"id\":\"req-{i:07}\",\"model\":\"bert-tiny\",\"prompt_tokens\":{},\"completion_tokens\":{},\"latency_ms\":{},\"timestamp\":{}}}\n",
            (i * 37) % 512,
            (i * 53) % 300,
            (i * 13) % 900 + 1,
            1_640_995_200 + 7 * i as u64
        ));
    }
    write(dir.path(), "data/requests.jsonl", &text);
    dir
}

/// A `migration_config.toml` in a folder of its own (outside the installation).
struct Settings {
    dir: tempfile::TempDir,
}

impl Settings {
    fn new(global: &str) -> Settings {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("migration_config.toml"),
            format!("[global]\n{global}"),
        )
        .expect("write migration_config.toml");
        Settings { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("migration_config.toml")
    }
}

/// The settings of most runs: a memory limit small enough for the memory bomb to hit it at
/// once, and a deadline far above any run's needs.
fn default_settings() -> Settings {
    Settings::new("max_worker_memory_mb = 512\ntimeout_seconds = 100\n")
}

// ---------------------------------------------------------------------------------------------
// Running migrate under a watchdog

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A `migrate` started with the isolated environment of `common::migrate_env`, its output
/// going to files (no pipe can fill up and block it).
struct Started {
    child: Child,
    out: tempfile::NamedTempFile,
    err: tempfile::NamedTempFile,
    _home: tempfile::TempDir,
    started: Instant,
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Started {
    let home = tempfile::tempdir().expect("tempdir");
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    let err = tempfile::NamedTempFile::new().expect("stderr file");
    let mut cmd = Command::new(migrate_bin());
    isolated(cmd.args(args), home.path())
        .env_remove("HOSTILE_MODE")
        .env_remove("HOSTILE_RULE")
        .env_remove("HOSTILE_TARGET")
        .env_remove("HOSTILE_FORGE")
        .env_remove("HOSTILE_FORGE_THEN")
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("reopen stdout file"))
        .stderr(err.reopen().expect("reopen stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Started {
        child: cmd.spawn().expect("start migrate"),
        out,
        err,
        _home: home,
        started: Instant::now(),
    }
}

impl Started {
    fn stderr_so_far(&self) -> String {
        let mut text = String::new();
        let _ = self
            .err
            .reopen()
            .and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    /// Waits for the end of the run; past [`WATCHDOG`], kills it and fails the test.
    fn finish(mut self, what: &str) -> Run {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for migrate") {
                break status;
            }
            if self.started.elapsed() > WATCHDOG {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{what}: migrate was still running after {} s and was killed\nstderr:\n{}",
                    WATCHDOG.as_secs(),
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = String::new();
        self.out
            .reopen()
            .and_then(|mut f| f.read_to_string(&mut stdout))
            .expect("read stdout");
        Run {
            code: status.code(),
            stdout,
            stderr: self.stderr_so_far(),
        }
    }
}

fn run(args: &[&str], env: &[(&str, &str)], what: &str) -> Run {
    start(args, env).finish(what)
}

/// `migrate <flags> --json version --to 2.1.0 --dry-run` on a fresh installation, with the
/// hostile fixture among the plugins and the default settings: what the controls run.
fn dry_run(
    plugins: &Plugins,
    settings: &Settings,
    flags: &[&str],
    env: &[(&str, &str)],
    what: &str,
) -> Run {
    let dir = install();
    let mut args = vec![
        "--no-default-plugins",
        "--plugin-dir",
        p(plugins.dir.path()),
        "--config-file",
    ];
    let settings_path = settings.path();
    args.push(p(&settings_path));
    args.extend(["--progress", "none"]);
    args.extend(flags);
    args.extend([
        "--json",
        "version",
        "--path",
        p(dir.path()),
        "--to",
        "2.1.0",
        "--dry-run",
    ]);
    run(&args, env, what)
}

// ---------------------------------------------------------------------------------------------
// What every hostile run must show

/// The commands a mode is run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Version,
    Config,
    Data,
    Models,
}

impl Cmd {
    /// The command line (after the global flags) on the installation at `root`.
    fn args(self, root: &Path) -> Vec<String> {
        let s = |x: &str| x.to_owned();
        let at = |rel: &str| p(&root.join(rel)).to_owned();
        match self {
            Cmd::Version => vec![s("version"), s("--path"), at(""), s("--to"), s("2.1.0")],
            Cmd::Config => vec![
                s("config"),
                s("--config"),
                at("config/server.toml"),
                s("--from"),
                s("0.1.0"),
                s("--to"),
                s("2.1.0"),
            ],
            Cmd::Data => vec![
                s("data"),
                s("--data-path"),
                at("data"),
                s("--from"),
                s("0.1.0"),
                s("--to"),
                s("2.1.0"),
            ],
            Cmd::Models => vec![
                s("models"),
                s("--models-path"),
                at("models"),
                s("--from"),
                s("0.1.0"),
                s("--to"),
                s("2.1.0"),
            ],
        }
    }

    /// The single-kind command that runs only `rule`.
    fn of_rule(rule: &str) -> Cmd {
        match rule {
            "config" => Cmd::Config,
            "data" => Cmd::Data,
            "model" => Cmd::Models,
            other => panic!("no rule {other}"),
        }
    }

    /// What the plugin was migrating when its `rule` misbehaved, as the message names it.
    fn input_of(rule: &str) -> &'static str {
        match rule {
            "config" => "config/server.toml",
            "data" => "data/requests.jsonl",
            "model" => "models/bert-tiny",
            other => panic!("no rule {other}"),
        }
    }
}

/// One hostile scenario: a mode, the rule that misbehaves, its settings and what a run of it
/// must say.
struct Case<'a> {
    mode: &'a str,
    rule: &'a str,
    settings: &'a Settings,
    code: i32,
    /// Words the output must hold, besides the plugin's name and "nothing was changed".
    words: Vec<String>,
    extra_env: Vec<(&'a str, String)>,
    /// The worker died (or was killed): the message names the plugin's file and sha256, and
    /// the audit trail records it.
    worker_died: bool,
}

impl Case<'_> {
    /// Runs the case with `cmd` (and `--dry-run` when asked), on a fresh installation, and
    /// checks everything the module docs list.
    fn check(&self, plugins: &Plugins, cmd: Cmd, dry_run: bool) {
        let what = format!(
            "{} in the {} rule, {cmd:?}{}",
            self.mode,
            self.rule,
            if dry_run { " --dry-run" } else { "" }
        );
        let dir = install();
        let root = dir.path();
        let before = full_tree_hash(root);
        let mut args: Vec<String> = [
            "--no-default-plugins",
            "--plugin-dir",
            p(plugins.dir.path()),
            "--config-file",
            p(&self.settings.path()),
            "--progress",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(cmd.args(root));
        if dry_run {
            args.push("--dry-run".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env: Vec<(&str, &str)> =
            vec![("HOSTILE_MODE", self.mode), ("HOSTILE_RULE", self.rule)];
        env.extend(self.extra_env.iter().map(|(k, v)| (*k, v.as_str())));
        let out = run(&args, &env, &what);
        let text = out.text();

        assert_eq!(out.code, Some(self.code), "{what}: {}", out.describe());
        assert!(
            text.contains(&format!("{NAME}: misbehaving now ({}", self.mode)),
            "{what}: the plugin never reached its misbehaviour, so this run proves nothing:\n{}",
            out.describe()
        );
        let mut words = vec![NAME.to_owned()];
        words.extend(self.words.iter().cloned());
        if self.worker_died {
            words.push(p(&plugins.file()).to_owned());
            words.push(plugins.sha256());
            words.push(Cmd::input_of(self.rule).to_owned());
        }
        for w in &words {
            assert!(
                text.contains(w.as_str()),
                "{what}: the message does not say {w:?}:\n{text}"
            );
        }
        assert!(
            text.contains("nothing was changed") || text.contains("installation is unchanged"),
            "{what}: the message does not say that nothing was changed:\n{text}"
        );
        if self.worker_died && self.rule == "data" {
            assert!(
                has_line_range(&text),
                "{what}: the message does not give the data lines being migrated:\n{text}"
            );
        }

        if dry_run {
            assert_eq!(
                full_tree_hash(root),
                before,
                "{what}: a dry run must write nothing at all, not even .migrate/"
            );
        } else {
            assert_unchanged(root, &before, &what);
            let audit = audit(root);
            assert_eq!(
                audit.last().map(|e| e["action"].as_str()),
                Some(Some("migration_finished")),
                "{what}: the audit trail does not end with the run: {audit:?}"
            );
            assert_eq!(audit.last().unwrap()["exit_code"], self.code, "{what}");
            if self.worker_died {
                assert!(
                    audit
                        .iter()
                        .any(|e| e["action"] == "worker_stopped" && e["plugin"] == NAME),
                    "{what}: no worker_stopped entry naming the plugin: {audit:?}"
                );
            }
        }
    }
}

/// `lines/records A–B` (or `lines A–B`): the batch the data rule was on.
fn has_line_range(text: &str) -> bool {
    text.split("lines").skip(1).any(|rest| {
        let rest = rest.trim_start_matches("/records").trim_start();
        let mut parts = rest.splitn(2, '–');
        let a = parts.next().unwrap_or("");
        let b: String = parts
            .next()
            .unwrap_or("")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        matches!((a.parse::<u64>(), b.parse::<u64>()), (Ok(a), Ok(b)) if a >= 1 && b >= a)
    })
}

/// The installation is as it was. Only `.migrate/` (the folder), `.migrate/audit.jsonl` (the
/// failed run's audit trail) and `.migrate/lock` (its lock file) may have appeared or changed;
/// no staging, journal or backup may be left.
fn assert_unchanged(root: &Path, before: &Tree, what: &str) {
    const RUN_WRITES: [&str; 3] = [".migrate", ".migrate/audit.jsonl", ".migrate/lock"];
    let after = full_tree_hash(root);
    let changed: Vec<&String> = after
        .keys()
        .chain(before.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .filter(|k| !RUN_WRITES.contains(&k.as_str()))
        .collect();
    assert!(changed.is_empty(), "{what}: changed: {changed:?}");
    assert!(
        !root.join("backups").exists(),
        "{what}: a backup was written"
    );
    assert_no_leftovers(root, what);
}

fn audit(root: &Path) -> Vec<Value> {
    std::fs::read_to_string(root.join(".migrate/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// Every command a misbehaving `rule` is checked with: `version`, `version --dry-run`, and the
/// single-kind command that runs the rule (and its `--dry-run`).
fn check_everywhere(case: &Case) {
    let plugins = Plugins::new();
    for (cmd, dry) in [
        (Cmd::Version, false),
        (Cmd::Version, true),
        (Cmd::of_rule(case.rule), false),
        (Cmd::of_rule(case.rule), true),
    ] {
        case.check(&plugins, cmd, dry);
    }
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Controls: the fixture behaves by default, and unsandboxed its breaches happen

/// Without `HOSTILE_MODE` the fixture is a working 2.0.0 → 2.1.0 plugin: every failure below
/// is its misbehaviour, nothing else.
#[test]
fn the_hostile_fixture_migrates_correctly_when_it_behaves() {
    let plugins = Plugins::new();
    let settings = default_settings();
    let settings = settings.path();
    let dir = install();
    let root = dir.path();
    let args = version_args(&plugins, &settings, root, &["--progress", "none", "--json"]);
    let out = run(&args, &[], "default mode");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let result: Value = serde_json::from_str(&out.stdout).expect("json result");
    assert!(
        result["hops"].to_string().contains(NAME),
        "the hostile plugin was not in the chain: {result}"
    );
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
    let records = jsonl(root, "data/requests.jsonl");
    assert_eq!(records.len(), RECORDS);
    assert!(records.iter().all(|r| r["schema_version"] == 3));
    read(root, "config/server.toml")
        .parse::<toml_edit::DocumentMut>()
        .expect("valid TOML");
    let meta: Value =
        serde_json::from_str(&read(root, "models/bert-tiny/metadata.json")).expect("metadata");
    assert_eq!(meta["schema_version"], 3);
    assert_no_leftovers(root, "default mode");
}

/// The same escape, connects and datagram, with `--no-sandbox`: the file is written, the
/// listeners get their connections and the datagram arrives. This is what the sandboxed tests
/// below prove does not happen.
#[test]
fn unsandboxed_the_escape_and_the_connect_do_happen() {
    let plugins = Plugins::new();
    let settings = default_settings();
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("escaped.txt");
    let (listener, address) = tcp_listener();
    let (udp, udp_address) = udp_listener();
    let (unix, unix_path) = unix_listener(outside.path());
    let (datagrams, datagram_path) = unix_datagram_socket(outside.path());
    for (mode, to) in [
        ("escape", p(&target).to_owned()),
        ("connect", address),
        ("udp", udp_address),
        ("unix", p(&unix_path).to_owned()),
        ("pair", p(&datagram_path).to_owned()),
        ("fork", TAMPERED.to_owned()),
        ("spawn", "the installation".to_owned()),
    ] {
        let out = dry_run(
            &plugins,
            &settings,
            &["--no-sandbox"],
            &[("HOSTILE_MODE", mode), ("HOSTILE_TARGET", &to)],
            mode,
        );
        assert_eq!(out.code, Some(0), "{mode}: {}", out.describe());
        let result: Value = serde_json::from_str(&out.stdout).expect("json result");
        assert_eq!(result["isolation"]["sandbox"], "disabled", "{result}");
        assert_eq!(result["isolation"]["network_denied"], false, "{result}");
        assert_eq!(result["isolation"]["sockets_denied"], false, "{result}");
        assert_eq!(result["isolation"]["processes_denied"], false, "{result}");
    }
    assert!(target.is_file(), "unsandboxed, the plugin wrote its file");
    assert!(
        listener.accept().is_ok(),
        "unsandboxed, the plugin connected to the listener"
    );
    let mut datagram = [0u8; 64];
    let (n, _) = udp
        .recv_from(&mut datagram)
        .expect("unsandboxed, the plugin's datagram arrives");
    assert_greeting(&datagram[..n]);
    assert!(
        unix.accept().is_ok(),
        "unsandboxed, the plugin connected to the Unix socket"
    );
    let n = datagrams
        .recv(&mut datagram)
        .expect("unsandboxed, the datagram from the plugin's socket pair arrives");
    assert_greeting(&datagram[..n]);
}

/// The text the fixture's forked process writes over an installed file: what the sandboxed
/// test below proves never reaches the installation.
const TAMPERED: &str = "TAMPERED after the check by a process hostile_v2_to_v2_1 forked";

/// With `--no-sandbox`, a process forked by the data rule outlives the worker: the run checks
/// the staged data, swaps it in and exits 0, and afterwards that process writes into the
/// installed log through the descriptor it inherited. No check before the swap can see a
/// write that comes after it, which is why the sandbox must refuse the fork itself.
#[test]
fn unsandboxed_a_forked_process_writes_into_the_installation_after_the_swap() {
    let plugins = Plugins::new();
    let settings = default_settings();
    let settings = settings.path();
    let dir = install();
    let root = dir.path();
    let args = version_args(
        &plugins,
        &settings,
        root,
        &["--progress", "none", "--no-sandbox"],
    );
    let env = [("HOSTILE_MODE", "fork"), ("HOSTILE_TARGET", TAMPERED)];
    let out = run(&args, &env, "fork, unsandboxed");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("{NAME}: misbehaving now (fork")),
        "the plugin never forked: {}",
        out.describe()
    );
    let log = root.join("data/requests.jsonl");
    let until = Instant::now() + Duration::from_secs(20);
    while !read_bytes(&log).starts_with(TAMPERED.as_bytes()) {
        assert!(
            Instant::now() < until,
            "the forked process never wrote into {}: the control shows no breach",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sandboxed, the fork is refused in every rule and command (the seccomp filter answers any
/// new process with EACCES): the run fails with exit 6, naming the plugin and "Permission
/// denied", nothing changes, and no process is left to write into the installation later.
#[test]
fn a_forked_process_is_denied() {
    denied_in_every_rule("fork", TAMPERED);
}

/// `std::process::Command` (glibc's `posix_spawn`, which starts its process with `clone3`
/// first) is refused in every rule and command as well: `clone3` is answered "not implemented",
/// and the `clone` the C library falls back to is refused like a fork.
#[test]
fn a_spawned_process_is_denied() {
    denied_in_every_rule("spawn", "the installation");
}

fn read_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What the fixture sends when a breach succeeds.
fn assert_greeting(received: &[u8]) {
    assert!(
        received.starts_with(format!("hello from {NAME}").as_bytes()),
        "{:?}",
        String::from_utf8_lossy(received)
    );
}

/// A Unix datagram socket bound at `dir/datagrams.sock`, outside any installation, that does
/// not block: (socket, its path).
fn unix_datagram_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("datagrams.sock");
    let socket = UnixDatagram::bind(&path).expect("bind unix datagram socket");
    socket.set_nonblocking(true).expect("nonblocking");
    (socket, path)
}

/// A TCP listener on 127.0.0.1 that does not block: (listener, its address).
fn tcp_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let address = listener.local_addr().expect("address").to_string();
    (listener, address)
}

/// A UDP socket on 127.0.0.1 that does not block: (socket, its address).
fn udp_listener() -> (UdpSocket, String) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    socket.set_nonblocking(true).expect("nonblocking");
    let address = socket.local_addr().expect("address").to_string();
    (socket, address)
}

/// A Unix socket listening at `dir/listener.sock`, outside any installation, that does not
/// block: (listener, its path).
fn unix_listener(dir: &Path) -> (UnixListener, PathBuf) {
    let path = dir.join("listener.sock");
    let listener = UnixListener::bind(&path).expect("bind unix socket");
    listener.set_nonblocking(true).expect("nonblocking");
    (listener, path)
}

// ---------------------------------------------------------------------------------------------
// Crashes

#[test]
fn a_panicking_plugin_changes_nothing() {
    let settings = default_settings();
    for rule in ["config", "data", "model"] {
        check_everywhere(&Case {
            mode: "panic",
            rule,
            settings: &settings,
            code: 6,
            words: words(&[
                &format!("{NAME} panics on purpose in its {rule} rule"),
                "libhostile_hop.so",
                Cmd::input_of(rule),
            ]),
            extra_env: Vec::new(),
            worker_died: false,
        });
    }
}

#[test]
fn an_aborting_plugin_changes_nothing() {
    let settings = default_settings();
    for rule in ["config", "data", "model"] {
        check_everywhere(&Case {
            mode: "abort",
            rule,
            settings: &settings,
            code: 6,
            words: words(&["SIGABRT"]),
            extra_env: Vec::new(),
            worker_died: true,
        });
    }
}

/// When the worker dies in a step, plain progress ends that step as FAILED and every other
/// step it started once: none is left running, none ends twice (the data step's end, which
/// waits for its output on disk, comes too when the worker dies in the models step after it).
#[test]
fn progress_ends_the_step_a_dead_worker_was_in_as_failed() {
    let plugins = Plugins::new();
    let settings = default_settings();
    let settings = settings.path();
    for (rule, step) in [("config", "config"), ("data", "data"), ("model", "models")] {
        let dir = install();
        let args = version_args(&plugins, &settings, dir.path(), &["--progress", "plain"]);
        let env = [("HOSTILE_MODE", "abort"), ("HOSTILE_RULE", rule)];
        let out = run(&args, &env, rule);
        assert_eq!(out.code, Some(6), "{rule}: {}", out.describe());
        let mut started: Vec<&str> = Vec::new();
        let mut ended: Vec<(&str, &str)> = Vec::new();
        for line in out.stderr.lines() {
            let Some((name, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
                continue;
            };
            if rest.starts_with("started") {
                started.push(name);
            } else if let Some((verdict, _)) = rest.split_once(" in ") {
                ended.push((name, verdict));
            }
        }
        let mut ends: Vec<&str> = ended.iter().map(|(name, _)| *name).collect();
        ends.sort();
        started.sort();
        assert_eq!(
            started, ends,
            "{rule}: each started step ends once:\n{}",
            out.stderr
        );
        assert!(ended.contains(&(step, "FAILED")), "{rule}: {}", out.stderr);
        assert_eq!(
            ended
                .iter()
                .filter(|(_, verdict)| *verdict == "FAILED")
                .count(),
            1,
            "{rule}: only {step} failed:\n{}",
            out.stderr
        );
    }
}

#[test]
fn a_segfaulting_plugin_changes_nothing() {
    let settings = default_settings();
    for rule in ["config", "data", "model"] {
        check_everywhere(&Case {
            mode: "segfault",
            rule,
            settings: &settings,
            code: 6,
            words: words(&["SIGSEGV"]),
            extra_env: Vec::new(),
            worker_died: true,
        });
    }
}

/// The memory bomb hits `max_worker_memory_mb` and is reported as such, whatever the
/// environment makes the plugin print on its way out (RUST_BACKTRACE=1 adds a backtrace of
/// dozens of lines after Rust's "memory allocation … failed").
#[test]
fn a_memory_bomb_hits_the_memory_limit_and_changes_nothing() {
    let settings = default_settings();
    for backtrace in ["0", "1"] {
        for rule in ["config", "data", "model"] {
            check_everywhere(&Case {
                mode: "membomb",
                rule,
                settings: &settings,
                code: 6,
                words: words(&["memory limit", "max_worker_memory_mb"]),
                extra_env: vec![("RUST_BACKTRACE", backtrace.to_owned())],
                worker_died: true,
            });
        }
    }
}

/// An endless loop is stopped at `timeout_seconds` (exit 4, "timed out") when that comes
/// first, and by `stall_seconds` (exit 6) when no deadline is set.
#[test]
fn an_endless_loop_is_stopped_by_the_deadline_or_the_stall_limit() {
    let deadline = Settings::new("timeout_seconds = 3\nstall_seconds = 300\n");
    let stall = Settings::new("stall_seconds = 2\n");
    for rule in ["config", "data", "model"] {
        check_everywhere(&Case {
            mode: "loop",
            rule,
            settings: &deadline,
            code: 4,
            words: words(&["timed out", "timeout_seconds"]),
            extra_env: Vec::new(),
            worker_died: true,
        });
        check_everywhere(&Case {
            mode: "loop",
            rule,
            settings: &stall,
            code: 6,
            words: words(&["no progress", "stall_seconds"]),
            extra_env: Vec::new(),
            worker_died: true,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Bad output, caught before the swap

#[test]
fn invalid_toml_from_the_config_rule_is_never_swapped_in() {
    let settings = default_settings();
    check_everywhere(&Case {
        mode: "toml",
        rule: "config",
        settings: &settings,
        code: 6,
        words: words(&["config/server.toml", "not valid TOML"]),
        extra_env: Vec::new(),
        worker_died: false,
    });
}

/// With `--json`, a staging refused before the swap names the file the check found wrong,
/// as the installation names it (issue 16), and keeps its exit code.
#[test]
fn with_json_a_refused_staging_names_its_file() {
    let plugins = Plugins::new();
    let settings = default_settings();
    let settings = settings.path();
    for (mode, file) in [
        ("toml", "config/server.toml"),
        ("checksums", "models/bert-tiny/metadata.json"),
        // The record is in the message (data/requests.jsonl:1000); the file is the file.
        ("schema", "data/requests.jsonl"),
    ] {
        let dir = install();
        let args = [
            "--json",
            "--no-default-plugins",
            "--plugin-dir",
            p(plugins.dir.path()),
            "--config-file",
            p(&settings),
            "--progress",
            "none",
            "version",
            "--path",
            p(dir.path()),
            "--to",
            "2.1.0",
        ];
        let out = run(&args, &[("HOSTILE_MODE", mode)], mode);
        assert_eq!(out.code, Some(6), "{mode}: {}", out.describe());
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{mode}: stdout is not JSON ({e}): {}", out.describe()));
        let error = &v["error"];
        assert_eq!(error["exit_code"], 6, "{mode}: {v}");
        assert_eq!(error["file"], file, "{mode}: {v}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("staged output is not a valid")),
            "{mode}: {v}"
        );
    }
}

#[test]
fn a_record_that_is_not_an_object_is_never_swapped_in() {
    let settings = default_settings();
    check_everywhere(&Case {
        mode: "nonobject",
        rule: "data",
        settings: &settings,
        code: 6,
        words: words(&["data/requests.jsonl:", "must be a JSON object"]),
        extra_env: Vec::new(),
        worker_died: false,
    });
}

#[test]
fn a_wrong_schema_version_is_never_swapped_in() {
    let settings = default_settings();
    check_everywhere(&Case {
        mode: "schema",
        rule: "data",
        settings: &settings,
        code: 6,
        words: words(&["data/requests.jsonl:", "schema_version is 99"]),
        extra_env: Vec::new(),
        worker_died: false,
    });
    check_everywhere(&Case {
        mode: "schema",
        rule: "model",
        settings: &settings,
        code: 6,
        words: words(&["models/bert-tiny/metadata.json", "schema_version is not 3"]),
        extra_env: Vec::new(),
        worker_died: false,
    });
}

#[test]
fn lying_checksums_in_metadata_json_are_never_swapped_in() {
    let settings = default_settings();
    check_everywhere(&Case {
        mode: "checksums",
        rule: "model",
        settings: &settings,
        code: 6,
        words: words(&[
            "models/bert-tiny/metadata.json",
            "metadata.json says",
            &"0".repeat(64),
        ]),
        extra_env: Vec::new(),
        worker_died: false,
    });
}

/// The sandbox lets a plugin write anywhere in the staging, and everything in the staging is
/// swapped in: a file written there outside the plugin's own output (an installation file the
/// run does not migrate, or a new file) must be refused before the swap, never put in place.
#[test]
fn a_file_planted_in_the_staging_is_never_swapped_in() {
    let settings = default_settings();
    for target in ["config/logging.toml", "planted/run-me.sh"] {
        check_everywhere(&Case {
            mode: "plant",
            rule: "model",
            settings: &settings,
            code: 6,
            words: words(&[target, "not a file this run migrates"]),
            extra_env: vec![("HOSTILE_TARGET", target.to_owned())],
            worker_died: false,
        });
    }
}

/// A symlink in the staging is refused before the swap: the swap moves regular files only, so
/// the model's `metadata.json` would list the checksum of the link's target (outside the
/// installation) for a file that stays as it was.
#[test]
fn a_symlink_in_the_staging_is_never_swapped_in() {
    let settings = default_settings();
    // A file the sandbox lets the worker read (the system's), outside the installation.
    let target = Path::new("/etc/passwd");
    assert!(target.is_file(), "this test needs {}", target.display());
    check_everywhere(&Case {
        mode: "symlink",
        rule: "model",
        settings: &settings,
        code: 6,
        words: words(&["models/bert-tiny/tokenizer.json", "not a regular file"]),
        extra_env: vec![("HOSTILE_TARGET", p(target).to_owned())],
        worker_died: false,
    });
}

// ---------------------------------------------------------------------------------------------
// Breaches: the sandbox denies them

/// A write outside the staging is refused by the sandbox, both outside the installation and
/// into it (the plugin may read the installation, never write it).
#[test]
fn a_write_outside_the_staging_is_denied() {
    let settings = default_settings();
    let outside = tempfile::tempdir().expect("tempdir");
    for rule in ["config", "data", "model"] {
        let target = outside.path().join(format!("escaped-by-the-{rule}-rule"));
        check_everywhere(&Case {
            mode: "escape",
            rule,
            settings: &settings,
            code: 6,
            words: words(&["Permission denied", p(&target)]),
            extra_env: vec![("HOSTILE_TARGET", p(&target).to_owned())],
            worker_died: false,
        });
        assert!(
            !target.exists(),
            "{rule}: the plugin wrote {}",
            target.display()
        );
    }
}

/// The same, aimed at the installation itself: its own files are read-only to plugins.
#[test]
fn a_write_into_the_installation_outside_the_staging_is_denied() {
    let settings = default_settings();
    let plugins = Plugins::new();
    // The target is computed per installation: `check` builds a fresh one each run, so the
    // plugin is pointed at a file of the sample that every installation has.
    for cmd in [Cmd::Version, Cmd::Data] {
        let dir = install();
        let root = dir.path();
        let before = full_tree_hash(root);
        let target = root.join("config/logging.toml");
        let mut args = vec![
            "--no-default-plugins".to_owned(),
            "--plugin-dir".to_owned(),
            p(plugins.dir.path()).to_owned(),
            "--config-file".to_owned(),
            p(&settings.path()).to_owned(),
            "--progress".to_owned(),
            "none".to_owned(),
        ];
        args.extend(cmd.args(root));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(
            &args,
            &[("HOSTILE_MODE", "escape"), ("HOSTILE_TARGET", p(&target))],
            "escape into the installation",
        );
        assert_eq!(out.code, Some(6), "{cmd:?}: {}", out.describe());
        assert!(
            out.text().contains("Permission denied") && out.text().contains(NAME),
            "{cmd:?}: {}",
            out.describe()
        );
        assert_unchanged(
            root,
            &before,
            &format!("escape into the installation, {cmd:?}"),
        );
    }
}

/// The breach `mode` aimed at `target`, committed by each rule in turn, in every command: the
/// run fails with exit 6, naming the target and the OS's "Permission denied".
fn denied_in_every_rule(mode: &str, target: &str) {
    denied_in_every_rule_with(mode, target, &[], &[]);
}

/// [`denied_in_every_rule`], with `extra` in the environment and `said` in the output too.
fn denied_in_every_rule_with(
    mode: &str,
    target: &str,
    extra: &[(&'static str, &str)],
    said: &[&str],
) {
    let settings = default_settings();
    for rule in ["config", "data", "model"] {
        let mut extra_env = vec![("HOSTILE_TARGET", target.to_owned())];
        extra_env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        check_everywhere(&Case {
            mode,
            rule,
            settings: &settings,
            code: 6,
            words: words(&[&["Permission denied", target][..], said].concat()),
            extra_env,
            worker_died: false,
        });
    }
}

/// A TCP connect to a listener on 127.0.0.1 is refused by the sandbox: the listener accepts
/// nothing.
#[test]
fn a_tcp_connect_is_denied() {
    let (listener, address) = tcp_listener();
    denied_in_every_rule("connect", &address);
    nothing_came(listener.accept(), "the TCP listener", |(_, from)| {
        format!("accepted a connection from {from}")
    });
}

/// Landlock's own TCP rule, the only network rule on a kernel without seccomp, which the seccomp
/// filter would otherwise answer first (its `socket()` fails before any connect): with the
/// filter turned off by the test build's switch, the sandboxed worker's UDP datagram does
/// arrive (the switch works, and Landlock does not cover UDP), and a TCP connect is still
/// refused, by Landlock (ABI 4 and later), in every rule and command.
#[test]
fn landlock_alone_denies_a_tcp_connect() {
    const NO_SECCOMP: (&str, &str) = ("TRUSTFORMERS_MIGRATE_FAULT_NO_SECCOMP", "1");
    let abi = landlock_abi();
    if abi < 4 {
        eprintln!("Landlock ABI {abi}: no TCP rule on this kernel, nothing to check");
        return;
    }
    let plugins = Plugins::new();
    let settings = default_settings();
    let (udp, udp_address) = udp_listener();
    let out = dry_run(
        &plugins,
        &settings,
        &[],
        &[
            ("HOSTILE_MODE", "udp"),
            ("HOSTILE_TARGET", &udp_address),
            NO_SECCOMP,
        ],
        "udp without the filter",
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let result: Value = serde_json::from_str(&out.stdout).expect("json result");
    assert_sandbox_as_the_kernel_allows(&result["isolation"]);
    assert_eq!(result["isolation"]["network_denied"], true, "{result}");
    assert_eq!(result["isolation"]["sockets_denied"], false, "{result}");
    assert_eq!(result["isolation"]["processes_denied"], false, "{result}");
    let mut datagram = [0u8; 64];
    let (n, _) = udp
        .recv_from(&mut datagram)
        .expect("without the filter, the sandboxed plugin's datagram arrives");
    assert_greeting(&datagram[..n]);

    let (listener, address) = tcp_listener();
    // Each run says the filter was left out: what refused the connect was Landlock.
    let said = ["turned off by the test build's switch"];
    denied_in_every_rule_with("connect", &address, &[NO_SECCOMP], &said);
    nothing_came(listener.accept(), "the TCP listener", |(_, from)| {
        format!("accepted a connection from {from}")
    });
}

/// Panics unless `got`, a non-blocking socket's accept or receive, found nothing there:
/// `show` says what came instead.
fn nothing_came<T>(got: std::io::Result<T>, socket: &str, show: impl FnOnce(T) -> String) {
    match got {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok(came) => panic!("{socket} {}", show(came)),
        Err(e) => panic!("{socket} failed: {e}"),
    }
}

/// A UDP datagram to 127.0.0.1 is refused by the sandbox (Landlock does not cover UDP; the
/// seccomp filter refuses the socket): nothing arrives.
#[test]
fn a_udp_datagram_is_denied() {
    let (socket, address) = udp_listener();
    denied_in_every_rule("udp", &address);
    let mut datagram = [0u8; 64];
    let got = socket.recv_from(&mut datagram);
    nothing_came(got, "the UDP socket", |(n, from)| {
        format!(
            "got a datagram from {from}: {:?}",
            String::from_utf8_lossy(&datagram[..n])
        )
    });
}

/// A datagram sent from a socket pair (made without `socket()`) to a Unix datagram socket
/// outside the installation is refused by the sandbox: the seccomp filter refuses the pair.
/// Nothing arrives.
#[test]
fn a_datagram_from_a_socket_pair_is_denied() {
    let outside = tempfile::tempdir().expect("tempdir");
    let (socket, path) = unix_datagram_socket(outside.path());
    denied_in_every_rule("pair", p(&path));
    let mut datagram = [0u8; 64];
    let got = socket.recv(&mut datagram);
    nothing_came(got, "the Unix datagram socket", |n| {
        format!(
            "got a datagram: {:?}",
            String::from_utf8_lossy(&datagram[..n])
        )
    });
}

/// A connect to a Unix socket outside the installation (a container engine's, say, would give
/// its caller the machine) is refused by the sandbox: Landlock does not see it, the seccomp
/// filter refuses the socket. The listener accepts nothing.
#[test]
fn a_unix_socket_connect_is_denied() {
    let outside = tempfile::tempdir().expect("tempdir");
    let (listener, path) = unix_listener(outside.path());
    denied_in_every_rule("unix", p(&path));
    nothing_came(listener.accept(), "the Unix socket", |_| {
        "accepted a connection".to_owned()
    });
}

// ---------------------------------------------------------------------------------------------
// A forged answer: plugin code shares the worker's process and can write on its protocol pipe

/// The data rule's forged frame on the protocol pipe (`HOSTILE_TARGET`: `target`; afterwards
/// the plugin does `then`, `exit` or `loop`; `more` in the environment too): refused with exit
/// 6, the output saying `said`.
fn forged<'a>(
    settings: &'a Settings,
    target: &str,
    then: &str,
    more: &[(&'a str, &str)],
    said: &[&str],
) -> Case<'a> {
    let mut extra_env = vec![
        ("HOSTILE_TARGET", target.to_owned()),
        ("HOSTILE_FORGE_THEN", then.to_owned()),
    ];
    extra_env.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    Case {
        mode: "forge",
        rule: "data",
        settings,
        code: 6,
        words: words(said),
        extra_env,
        worker_died: false,
    }
}

/// The plugin writes the worker's final answer itself ("staged, all done") asking the commit
/// to delete a file: one outside the installation (absolute), one of the installation the run
/// does not migrate, and a data file of the run that was not quarantined. The supervisor must
/// not take the worker's word for it: nothing is deleted, nothing changes, exit 6. With
/// `HOSTILE_FORGE_THEN=loop` the plugin keeps the worker running after its forged answer:
/// the supervisor must not wait for it forever.
#[test]
fn a_forged_answer_cannot_delete_files() {
    let settings = default_settings();
    let plugins = Plugins::new();
    let outside = tempfile::tempdir().expect("tempdir");
    let victim = outside.path().join("victim.txt");
    for then in ["exit", "loop"] {
        for target in [p(&victim), "config/logging.toml", "data/api_keys.json"] {
            std::fs::write(&victim, "precious\n").expect("write the victim");
            let said = [target, "not a data file this run set aside"];
            let case = forged(&settings, target, then, &[], &said);
            case.check(&plugins, Cmd::Version, false);
            case.check(&plugins, Cmd::Data, false);
            assert_eq!(
                std::fs::read_to_string(&victim).ok().as_deref(),
                Some("precious\n"),
                "{then}, {target}: the file outside the installation was touched"
            );
        }
    }
}

/// A forged "all done" with nothing to delete, sent half-way through the data: the worker's
/// word is not taken — the staged data file misses lines the installation has, and nothing
/// is swapped in (it once replaced data/requests.jsonl with an empty file and exited 0).
#[test]
fn a_forged_early_answer_cannot_swap_in_half_the_data() {
    let settings = default_settings();
    let plugins = Plugins::new();
    for then in ["exit", "loop"] {
        let said = [
            "data/requests.jsonl",
            "reported its work done, but it is not",
        ];
        let case = forged(&settings, "", then, &[], &said);
        case.check(&plugins, Cmd::Version, false);
        case.check(&plugins, Cmd::Data, false);
    }
}

/// Plugin code asks the supervisor for the model checksums in the worker's name, over and
/// over, during the data step: nobody reads the worker's request channel then, so answers
/// written there would fill the pipe. The supervisor answers once, on a thread of its own, and
/// stops the worker at the second request: the run ends (exit 6, nothing changed) instead of
/// hanging with the installation locked, whether the plugin then exits or loops.
#[test]
fn forged_requests_for_checksums_cannot_hold_the_supervisor() {
    let settings = default_settings();
    let plugins = Plugins::new();
    for then in ["exit", "loop"] {
        let flood = [("HOSTILE_FORGE", "want_checksums")];
        let case = forged(
            &settings,
            "",
            then,
            &flood,
            &["broke the protocol", "checksums"],
        );
        case.check(&plugins, Cmd::Version, false);
    }
}

// ---------------------------------------------------------------------------------------------
// Signals to the supervisor

/// SIGINT (130) or SIGTERM (143) to the supervisor while its plugin loops: the worker is
/// stopped, the run says nothing was changed, and the installation is as it was, without
/// staging. The signal goes to the supervisor alone (not its process group), as `kill PID`
/// does: stopping the worker is the supervisor's job.
#[test]
fn sigint_and_sigterm_stop_a_running_supervisor_and_change_nothing() {
    let plugins = Plugins::new();
    let settings = Settings::new("stall_seconds = 300\n");
    for (signal, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let dir = install();
        let root = dir.path();
        let before = full_tree_hash(root);
        let started = start(
            &[
                "--no-default-plugins",
                "--plugin-dir",
                p(plugins.dir.path()),
                "--config-file",
                p(&settings.path()),
                "--progress",
                "none",
                "version",
                "--path",
                p(root),
                "--to",
                "2.1.0",
            ],
            &[("HOSTILE_MODE", "loop")],
        );
        // Wait until the plugin is in its loop (it says so on stderr), under the watchdog.
        while !started.stderr_so_far().contains("misbehaving now (loop") {
            assert!(
                started.started.elapsed() < WATCHDOG,
                "{name}: the plugin never started looping:\n{}",
                started.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = started.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {name}");
        let out = started.finish(name);
        assert_eq!(out.code, Some(code), "{name}: {}", out.describe());
        let text = out.text();
        assert!(
            text.contains(&format!("stopped by {name}"))
                && text.contains("installation is unchanged"),
            "{name}: {text}"
        );
        assert_unchanged(root, &before, name);
        // The worker is gone with it: no `migrate worker` is left with this installation.
        assert!(
            !worker_running_for(root),
            "{name}: a worker outlived its supervisor"
        );
    }
}

/// Whether a `migrate worker` process is still running a request for `root`'s staging
/// (its open files point into `root`).
fn worker_running_for(root: &Path) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.filter_map(Result::ok).any(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let is_worker = cmdline
            .split(|b| *b == 0)
            .nth(1)
            .is_some_and(|arg| arg == b"worker");
        is_worker
            && std::fs::read_dir(e.path().join("fd"))
                .map(|fds| {
                    fds.filter_map(Result::ok)
                        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(root)))
                })
                .unwrap_or(false)
    })
}

// ---------------------------------------------------------------------------------------------
// The sandbox state in every --json output that runs plugins

/// `plugins list --json`, `plugins pin --json`, `info --json`, `status --json` and a
/// migration's result (completed or failed, whichever way its worker ended) carry "isolation": enforced by default as far as this
/// kernel allows, "disabled" with `--no-sandbox`, with the configured memory limit.
#[test]
fn every_json_output_that_runs_plugins_reports_the_isolation() {
    let plugins = Plugins::new();
    let settings = default_settings();
    let limit = 512u64 << 20;
    // TCP rules came with Landlock ABI 4.
    let tcp_rule = landlock_abi() >= 4;
    let seccomp = kernel_has_seccomp();
    let settings_path = settings.path();
    for sandbox in [true, false] {
        let mut global = vec![
            "--no-default-plugins",
            "--plugin-dir",
            p(plugins.dir.path()),
            "--config-file",
            p(&settings_path),
            "--progress",
            "none",
            "--json",
        ];
        if !sandbox {
            global.push("--no-sandbox");
        }
        let check = |what: &str, doc: &Value| {
            let i = &doc["isolation"];
            assert_eq!(i["worker_process"], true, "{what}: {doc}");
            assert_eq!(i["memory_limit_bytes"], limit, "{what}: {doc}");
            match sandbox {
                false => assert_eq!(i["sandbox"], "disabled", "{what}: {doc}"),
                true => assert_sandbox_as_the_kernel_allows(i),
            }
            assert_eq!(i["network_denied"], sandbox && tcp_rule, "{what}: {doc}");
            assert_eq!(i["sockets_denied"], sandbox && seccomp, "{what}: {doc}");
            assert_eq!(i["processes_denied"], sandbox && seccomp, "{what}: {doc}");
        };
        let json = |out: &Run, what: &str| -> Value {
            serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", out.describe()))
        };

        let mut args = global.clone();
        args.extend(["plugins", "list"]);
        let out = run(&args, &[], "plugins list");
        assert_eq!(out.code, Some(0), "{}", out.describe());
        check("plugins list", &json(&out, "plugins list"));

        let mut args = global.clone();
        args.extend(["info", "--from", "0.1.0", "--to", "2.1.0"]);
        let out = run(&args, &[], "info");
        assert_eq!(out.code, Some(0), "{}", out.describe());
        check("info", &json(&out, "info"));

        let dir = install();
        let mut args = global.clone();
        args.extend(["status", "--path", p(dir.path())]);
        let out = run(&args, &[], "status");
        assert_eq!(out.code, Some(0), "{}", out.describe());
        check("status", &json(&out, "status"));

        // `plugins pin` writes the lock into the folder it pins: a copy of the plugin folder.
        let pinned = Plugins::new();
        let mut args = global.clone();
        args.extend(["plugins", "pin", p(pinned.dir.path())]);
        let out = run(&args, &[], "plugins pin");
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let doc = json(&out, "plugins pin");
        let folders = doc
            .as_array()
            .expect("plugins pin --json: one entry per folder");
        assert_eq!(folders.len(), 1, "{doc}");
        check("plugins pin", &folders[0]);

        // A migration that completes, one whose plugin fails in the worker (a panic, reported
        // by the worker) and one whose worker dies (abort): each ran plugins.
        for (mode, code) in [("", 0), ("panic", 6), ("abort", 6), ("toml", 6)] {
            let dir = install();
            let mut args = global.clone();
            args.extend(["version", "--path", p(dir.path()), "--to", "2.1.0"]);
            let out = run(&args, &[("HOSTILE_MODE", mode)], mode);
            assert_eq!(out.code, Some(code), "{mode}: {}", out.describe());
            check(&format!("migration ({mode:?})"), &json(&out, mode));
        }
    }
}

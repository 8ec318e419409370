//! Backups that leave the box and keep their secrets (issue 17), checked by tools that are not
//! ours: the `age` command line tool decrypts an encrypted archive and `zstd -d | tar` lists
//! it; a real S3 endpoint (`moto_server`, started here on 127.0.0.1) receives the copies, and
//! boto3 reads back what it holds. A server that dies mid-upload, an unreachable and a
//! forbidden endpoint each refuse the migration with the installation unchanged.
//!
//! The tools come from `scripts/fetch-test-assets` (Debian `age`, PyPI `moto[server]`): a
//! missing one fails these tests, it never skips them.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The plaintext API keys of the sample (`data/api_keys.json`): after a 0.1.0 → 2.1.0
/// migration they exist only in the backup.
const PLAINTEXT_KEYS: [&str; 2] = ["tfk_8c1d0e5f9a7b4c2e", "tfk_0a9b8c7d6e5f4a3b"];

/// The secret access key the tests hand to `migrate`: no message may ever show it.
const SECRET: &str = "offbox-secret-Zq81vKx0";
const ACCESS_KEY: &str = "AKIAOFFBOXTEST0001";
const BUCKET: &str = "fleet-backups";

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// Fails loudly when a tool the issue names is missing: these tests are never skipped.
fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("run sh");
    assert!(
        found.status.success(),
        "`{tool}` is not installed: run scripts/fetch-test-assets (it installs the Debian packages age and prometheus, and moto[server] from PyPI)"
    );
}

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 failed: {}\n(scripts/fetch-test-assets installs moto[server] and boto3)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An age identity file and its public key, made by `age-keygen`.
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    require("age-keygen");
    let file = dir.join(name);
    let made = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .expect("run age-keygen");
    assert!(made.status.success(), "age-keygen failed");
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&file)
        .output()
        .expect("run age-keygen -y");
    let key = String::from_utf8_lossy(&public.stdout).trim().to_owned();
    assert!(key.starts_with("age1"), "public key: {key}");
    (file, key)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Waits (bounded) until something accepts connections on `port`.
fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening ({status}): run scripts/fetch-test-assets");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A background process the test started; killed and reaped when the test ends.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// `moto_server` on 127.0.0.1 with `BUCKET` created. With `auth`, it checks credentials (and
/// knows none of ours): every request is forbidden.
fn moto(auth: bool) -> Server {
    python("import moto.server, boto3", &[]);
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if auth {
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
    }
    let mut child = cmd.spawn().expect("start moto_server");
    wait_for_port(port, &mut child, "moto_server");
    let server = Server { child, port };
    if !auth {
        python(
            "import sys, boto3\nboto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='x', aws_secret_access_key='y', region_name='us-east-1').create_bucket(Bucket=sys.argv[2])",
            &[&server.endpoint(), BUCKET],
        );
    }
    server
}

/// A TCP proxy in front of `upstream` that dies — every connection dropped, the port closed —
/// once `limit` bytes went up through it: an S3 server that dies mid-upload.
fn dying_proxy(upstream: u16, limit: u64) -> Server {
    const PROXY: &str = r#"
import os, socket, sys, threading
port, upstream, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
sent = [0]
lock = threading.Lock()
def pipe(a, b, upward):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            if upward:
                with lock:
                    sent[0] += len(data)
                    if sent[0] > limit:
                        os._exit(0)
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    u = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=pipe, args=(c, u, True), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c, False), daemon=True).start()
"#;
    let port = free_port();
    let mut child = Command::new("python3")
        .args([
            "-c",
            PROXY,
            &port.to_string(),
            &upstream.to_string(),
            &limit.to_string(),
        ])
        .spawn()
        .expect("start the proxy");
    wait_for_port(port, &mut child, "the proxy");
    Server { child, port }
}

/// The `AWS_*` environment `migrate` reads, pointing at `endpoint`.
fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", endpoint.into()),
        ("NO_PROXY", "127.0.0.1,localhost".into()),
    ]
}

fn run(args: &[&str], env: &[(&'static str, String)]) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    migrate_env(args, &env)
}

fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("migration_config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn backups_in(root: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(root.join("backups")) {
        Ok(read) => read.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Replaces the sample's model with 12 MB of F32 weights that `--optimize` converts: the
/// backup then holds them, and its archive (random floats do not compress) needs a multipart
/// upload (8 MiB parts).
fn big_model(root: &Path) {
    let n: usize = 3_000_000;
    let header = format!(
        "{{\"w\":{{\"dtype\":\"F32\",\"shape\":[{n}],\"data_offsets\":[0,{}]}}}}",
        4 * n
    );
    let mut header = header.into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + header.len() + 4 * n);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(root.join("models/bert-tiny/model.safetensors"), bytes).expect("write model");
}

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.expect("walk"))
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let bytes = std::fs::read(e.path()).expect("read");
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

/// `age -d -i identity archive | zstd -d | tar …`, all outside our code.
fn age_zstd_tar(identity: &Path, archive: &Path, tar_args: &[&str]) -> Vec<u8> {
    require("age");
    require("zstd");
    let script = format!(
        "age -d -i \"$1\" \"$2\" | zstd -d -q -c | tar {}",
        tar_args.join(" ")
    );
    let out = Command::new("sh")
        .args(["-c", &script, "sh", p(identity), p(archive)])
        .output()
        .expect("run age | zstd | tar");
    assert!(
        out.status.success(),
        "age | zstd -d | tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The whole installation, `.migrate/` and `backups/` included, to prove nothing changed.
fn snapshot(root: &Path) -> std::collections::BTreeMap<String, (u32, String)> {
    full_tree_hash(root)
}

/// The encrypted archive is an age file the `age` CLI opens with the identity, and
/// `zstd -d | tar` then lists the original files; the plaintext keys are in it and nowhere
/// else on disk; `metadata.json`, the report and `backups list` say it is encrypted.
#[test]
fn encrypted_backup_opens_with_the_age_cli_and_the_keys_are_nowhere_else() {
    let install = sample_install();
    let root = install.path();
    let keys = tempfile::tempdir().expect("tempdir");
    let (identity, public) = age_key(keys.path(), "key.txt");
    let cfg = config(
        keys.path(),
        &format!("[backup]\nencrypt_to = [\"{public}\"]\n"),
    );
    let out = migrate(&[
        "version",
        "--path",
        p(root),
        "--to",
        "2.1.0",
        "--json",
        "--config-file",
        p(&cfg),
    ]);
    let report: serde_json::Value = serde_json::from_str(&ok(&out)).expect("json report");
    let backup_step = step(&report, "backup").expect("backup step");
    assert!(
        backup_step["warnings"]
            .to_string()
            .contains(&format!("backup encrypted with age to {public}")),
        "the report says the backup is encrypted: {backup_step}"
    );

    let backups = backups_in(root);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let backup = &backups[0];
    let mut names: Vec<String> = std::fs::read_dir(backup)
        .expect("read backup")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["backup.tar.zst.age", "metadata.json"]);
    let archive = backup.join("backup.tar.zst.age");
    let head = std::fs::read(&archive).expect("read archive");
    assert!(head.starts_with(b"age-encryption.org/v1\n"), "an age file");

    let meta: serde_json::Value =
        serde_json::from_str(&read(backup, "metadata.json")).expect("metadata");
    assert_eq!(meta["archive"], "backup.tar.zst.age");
    assert_eq!(meta["encryption"]["scheme"], "age");
    assert_eq!(
        meta["encryption"]["recipients"],
        serde_json::json!([public])
    );
    let meta_text = read(backup, "metadata.json");
    assert!(
        !meta_text.contains("AGE-SECRET-KEY"),
        "no secret key in metadata.json"
    );
    for key in PLAINTEXT_KEYS {
        assert!(!meta_text.contains(key), "no API key in metadata.json");
    }

    // Independently of our code: age decrypts, zstd decompresses, tar lists.
    let listed = String::from_utf8(age_zstd_tar(&identity, &archive, &["-t"])).expect("utf-8");
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    let mut recorded: Vec<String> = meta["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_owned())
        .collect();
    recorded.sort();
    assert_eq!(listed, recorded);
    assert!(listed.contains(&"data/api_keys.json"), "{listed:?}");
    let original = std::fs::read(workspace_root().join("samples/install-0.1.0/data/api_keys.json"))
        .expect("sample keys");
    let extracted = age_zstd_tar(&identity, &archive, &["-xO", "data/api_keys.json"]);
    assert_eq!(
        extracted, original,
        "the archived api_keys.json is the original, byte for byte"
    );

    // The plaintext keys are in the archive (above) and nowhere on disk: not in the migrated
    // installation, not in the backup folder, not in .migrate/.
    for key in PLAINTEXT_KEYS {
        assert!(
            String::from_utf8_lossy(&extracted).contains(key),
            "the backup holds {key}"
        );
        let found = files_containing(root, key);
        assert!(found.is_empty(), "{key} in plaintext on disk: {found:?}");
    }

    let listed = migrate(&["backups", "list", "--path", p(root), "--json"]);
    let items: serde_json::Value = serde_json::from_str(&ok(&listed)).expect("json");
    assert_eq!(items[0]["encrypted"], true, "{items}");
    let text = ok(&migrate(&["backups", "list", "--path", p(root)]));
    assert!(text.contains(" encrypted "), "{text}");
}

/// `rollback` and `backups verify` of an encrypted backup refuse without `--identity`, with a
/// wrong identity (naming the file), with a file that is not an identity, and when the `.age`
/// archive is damaged, touching nothing; with the right identity the rollback restores the
/// tree byte for byte.
#[test]
fn an_encrypted_backup_needs_its_identity_and_refuses_wrong_ones() {
    let install = sample_install();
    let root = install.path();
    let before = tree_hash(root);
    let keys = tempfile::tempdir().expect("tempdir");
    let (identity, public) = age_key(keys.path(), "key.txt");
    let (wrong, _) = age_key(keys.path(), "someone-else.txt");
    let not_identity = keys.path().join("notes.txt");
    std::fs::write(&not_identity, "remember the milk\n").expect("write");
    let cfg = config(
        keys.path(),
        &format!("[backup]\nencrypt_to = [\"{public}\"]\n"),
    );
    ok(&migrate(&[
        "version",
        "--path",
        p(root),
        "--to",
        "2.1.0",
        "--config-file",
        p(&cfg),
    ]));
    let backup = backups_in(root).pop().expect("a backup");
    let migrated = snapshot(root);

    let no_identity = migrate(&["rollback", "--backup-path", p(&backup)]);
    assert_eq!(no_identity.status.code(), Some(3), "{}", both(&no_identity));
    assert!(
        stderr(&no_identity).contains("--identity"),
        "{}",
        stderr(&no_identity)
    );
    assert!(
        stderr(&no_identity).contains("encrypted with age"),
        "{}",
        stderr(&no_identity)
    );
    let verify = migrate(&["backups", "verify", p(&backup)]);
    assert_eq!(verify.status.code(), Some(3), "{}", both(&verify));
    assert!(
        stderr(&verify).contains("--identity"),
        "{}",
        stderr(&verify)
    );

    for bad in [&wrong, &not_identity] {
        for args in [
            vec![
                "rollback",
                "--backup-path",
                p(&backup),
                "--identity",
                p(bad),
            ],
            vec!["backups", "verify", p(&backup), "--identity", p(bad)],
        ] {
            let out = migrate(&args);
            assert_eq!(out.status.code(), Some(3), "{}", both(&out));
            assert!(
                stderr(&out).contains(p(bad)),
                "names the identity file: {}",
                stderr(&out)
            );
        }
    }
    assert_eq!(
        snapshot(root),
        migrated,
        "a refused rollback touches nothing"
    );

    // A damaged archive: one byte flipped in the middle of the age payload.
    let archive = backup.join("backup.tar.zst.age");
    let good = std::fs::read(&archive).expect("read");
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&archive, &bad).expect("damage");
    let damaged = snapshot(root);
    for args in [
        vec!["backups", "verify", p(&backup), "--identity", p(&identity)],
        vec![
            "rollback",
            "--backup-path",
            p(&backup),
            "--identity",
            p(&identity),
        ],
    ] {
        let out = migrate(&args);
        assert_eq!(out.status.code(), Some(3), "{}", both(&out));
        assert!(
            stderr(&out).contains("backup.tar.zst.age"),
            "names the archive: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("nothing was changed"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(snapshot(root), damaged, "a damaged archive changes nothing");
    assert_no_leftovers(root, "refused rollback of a damaged archive");
    std::fs::write(&archive, &good).expect("repair");

    let verified = ok(&migrate(&[
        "backups",
        "verify",
        p(&backup),
        "--identity",
        p(&identity),
    ]));
    assert!(verified.contains("ok, 4 files verified"), "{verified}");
    ok(&migrate(&[
        "rollback",
        "--backup-path",
        p(&backup),
        "--identity",
        p(&identity),
    ]));
    assert_eq!(
        tree_hash(root),
        before,
        "restored byte for byte and mode for mode"
    );
    assert_no_leftovers(root, "rollback");
}

/// With `[backup] remote`, the backup goes to S3 (moto_server) before the swap: a large
/// archive in parts, verified; boto3 reads back the very bytes of the local archive;
/// `backups list --remote` lists it; and with the local copy gone (a dead disk), `rollback
/// --backup-path s3://…` downloads, verifies and restores it.
#[test]
fn backups_go_to_s3_in_parts_and_roll_back_from_there() {
    let s3 = moto(false);
    let install = sample_install();
    let root = install.path();
    big_model(root);
    let before = tree_hash(root);
    let keys = tempfile::tempdir().expect("tempdir");
    let (identity, public) = age_key(keys.path(), "key.txt");
    let cfg = config(
        keys.path(),
        &format!("[backup]\nencrypt_to = [\"{public}\"]\nremote = \"s3://{BUCKET}/box-17/\"\n"),
    );
    let env = aws_env(&s3.endpoint());
    let out = run(
        &[
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
            "--optimize",
            "--config-file",
            p(&cfg),
        ],
        &env,
    );
    let text = ok(&out);
    let backup = backups_in(root).pop().expect("a local backup");
    let name = backup
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let url = format!("s3://{BUCKET}/box-17/{name}");
    assert!(
        text.contains(&format!("remote copy: {url} ("))
            && text.contains("in 2 part(s), read back and verified"),
        "{text}"
    );
    assert!(!both(&out).contains(SECRET));

    // What the store holds, read by boto3: both files, the archive uploaded in two parts
    // (its ETag ends in -2), with the local archive's size and sha256.
    let listing = python(
        r#"
import hashlib, json, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1")
out = {}
for o in s3.list_objects_v2(Bucket=sys.argv[2])["Contents"]:
    body = s3.get_object(Bucket=sys.argv[2], Key=o["Key"])["Body"].read()
    out[o["Key"]] = {"size": o["Size"], "etag": o["ETag"].strip('"'), "sha256": hashlib.sha256(body).hexdigest()}
print(json.dumps(out))
"#,
        &[&s3.endpoint(), BUCKET],
    );
    let stored: serde_json::Value = serde_json::from_str(&listing).expect("listing");
    let archive = std::fs::read(backup.join("backup.tar.zst.age")).expect("archive");
    assert!(
        archive.len() > 8 << 20,
        "large enough for parts: {}",
        archive.len()
    );
    let remote_archive = &stored[format!("box-17/{name}/backup.tar.zst.age")];
    assert_eq!(remote_archive["size"], archive.len(), "{stored}");
    assert_eq!(remote_archive["sha256"], sha256_hex(&archive), "{stored}");
    assert!(
        remote_archive["etag"]
            .as_str()
            .expect("etag")
            .ends_with("-2"),
        "a multipart upload of two parts: {stored}"
    );
    let remote_meta = &stored[format!("box-17/{name}/metadata.json")];
    assert_eq!(
        remote_meta["sha256"],
        sha256_hex(&std::fs::read(backup.join("metadata.json")).expect("metadata"))
    );

    let listed = ok(&run(
        &[
            "backups",
            "list",
            "--remote",
            &format!("s3://{BUCKET}/box-17"),
        ],
        &env,
    ));
    assert!(
        listed.contains(&url) && listed.contains(" encrypted "),
        "{listed}"
    );
    let listed = ok(&run(
        &[
            "backups",
            "list",
            "--remote",
            "--config-file",
            p(&cfg),
            "--json",
        ],
        &env,
    ));
    let items: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
    assert_eq!(items[0]["url"], url.as_str());
    assert_eq!(items[0]["encrypted"], true);

    // The disk with the local backup died: restore from the remote copy alone.
    std::fs::remove_dir_all(root.join("backups")).expect("lose the local backups");
    let no_identity = run(&["rollback", "--backup-path", &url], &env);
    assert_eq!(no_identity.status.code(), Some(3), "{}", both(&no_identity));
    assert!(stderr(&no_identity).contains("--identity"));
    // A link planted at `.migrate/downloads` is refused and named, never written through.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(elsewhere.path(), root.join(".migrate/downloads")).expect("plant");
    let from_s3 = [
        "rollback",
        "--backup-path",
        &url,
        "--identity",
        p(&identity),
    ];
    let planted = run(&from_s3, &env);
    assert_eq!(planted.status.code(), Some(3), "{}", both(&planted));
    assert!(both(&planted).contains("downloads"), "{}", both(&planted));
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).expect("list").count(),
        0,
        "written through the link"
    );
    std::fs::remove_file(root.join(".migrate/downloads")).expect("unplant");
    // The operator edited the config after the migration: the rollback replaces it, and saves
    // the edit first into the backup folder it is given (not beside the download, which is
    // removed), encrypted like the backup, where `backups list` shows it.
    let config_path = root.join("config/server.toml");
    let mut edited = std::fs::read(&config_path).expect("config");
    edited.extend_from_slice(b"# tuned after the migration\n");
    std::fs::write(&config_path, &edited).expect("edit the config");
    let new_disk = tempfile::tempdir().expect("tempdir");
    let rolled = run(
        &[&from_s3[..], &["--backup-dir", p(new_disk.path())]].concat(),
        &env,
    );
    let restored = ok(&rolled);
    assert!(restored.contains(&url), "{restored}");
    assert_eq!(tree_hash(root), before, "restored from S3 byte for byte");
    assert!(
        !root.join(".migrate/downloads").exists(),
        "the download is removed after the restore, and nothing is left beside it"
    );
    let saved: Vec<PathBuf> = std::fs::read_dir(new_disk.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let saved = &saved[0];
    let name = saved.file_name().expect("name").to_string_lossy();
    assert!(name.starts_with("pre_rollback"), "{name}");
    assert!(
        both(&rolled).contains(&saved.display().to_string()),
        "{}",
        both(&rolled)
    );
    assert_eq!(
        age_zstd_tar(
            &identity,
            &saved.join("backup.tar.zst.age"),
            &["-xO", "config/server.toml"]
        ),
        edited,
        "the pre-rollback backup holds the edited config"
    );
    let listed = ok(&run(
        &[
            "backups",
            "list",
            "--path",
            p(root),
            "--backup-dir",
            p(new_disk.path()),
        ],
        &env,
    ));
    assert!(listed.contains(name.as_ref()), "{listed}");
    // The audit trail names the backup by its URL, not by the download that is gone.
    let audit = std::fs::read_to_string(root.join(".migrate/audit.jsonl")).expect("audit");
    let last: serde_json::Value =
        serde_json::from_str(audit.lines().last().expect("an entry")).expect("json");
    assert_eq!(last["action"], "rollback", "{last}");
    assert_eq!(last["backup"], url.as_str(), "{last}");
    assert_no_leftovers(root, "rollback from S3");
}

/// The S3 server dies mid-upload (a proxy in front of moto that exits after 3 MB of the
/// archive's first part): the migration is refused, the installation is unchanged, the local
/// backup of the migration that did not happen is removed, and the error names the endpoint
/// and the bucket but not the credentials.
#[test]
fn a_server_that_dies_mid_upload_refuses_the_migration() {
    let s3 = moto(false);
    let proxy = dying_proxy(s3.port, 3 << 20);
    let install = sample_install();
    let root = install.path();
    big_model(root);
    let before = tree_hash(root);
    let version_before = std::fs::read(root.join("VERSION")).ok();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &format!("[backup]\nremote = \"s3://{BUCKET}/box-17\"\n"),
    );
    let out = run(
        &[
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
            "--optimize",
            "--config-file",
            p(&cfg),
        ],
        &aws_env(&proxy.endpoint()),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(err.contains(&proxy.endpoint()), "names the endpoint: {err}");
    assert!(err.contains(BUCKET), "names the bucket: {err}");
    assert!(err.contains("nothing in the installation changed"), "{err}");
    assert!(
        !both(&out).contains(SECRET) && !both(&out).contains(ACCESS_KEY),
        "{err}"
    );
    assert_eq!(tree_hash(root), before, "the installation is unchanged");
    assert_eq!(std::fs::read(root.join("VERSION")).ok(), version_before);
    assert!(
        backups_in(root).is_empty(),
        "no backup of a migration that did not happen"
    );
    assert_no_leftovers(root, "refused upload");
    let history = ok(&migrate(&["history", "--path", p(root), "--json"]));
    assert!(history.contains("\"Failed\""), "{history}");
}

/// An unreachable endpoint and a forbidden one (moto checking credentials it does not know)
/// refuse the migration, naming endpoint and bucket, never the credentials; the installation
/// is unchanged. With `require_remote = false` the unreachable endpoint is a warning and the
/// migration completes with its local backup.
#[test]
fn unreachable_and_forbidden_endpoints_are_refused_naming_endpoint_and_bucket() {
    let forbidding = moto(true);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &format!("[backup]\nremote = \"s3://{BUCKET}/box-17\"\n"),
    );
    for endpoint in [closed.clone(), forbidding.endpoint()] {
        let install = sample_install();
        let root = install.path();
        let before = tree_hash(root);
        let out = run(
            &[
                "version",
                "--path",
                p(root),
                "--to",
                "2.1.0",
                "--config-file",
                p(&cfg),
            ],
            &aws_env(&endpoint),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{endpoint}: {}", both(&out));
        assert!(err.contains(&endpoint) && err.contains(BUCKET), "{err}");
        assert!(
            !both(&out).contains(SECRET) && !both(&out).contains(ACCESS_KEY),
            "{err}"
        );
        assert_eq!(
            tree_hash(root),
            before,
            "{endpoint}: the installation is unchanged"
        );
        assert!(backups_in(root).is_empty(), "{endpoint}");
        assert_no_leftovers(root, &endpoint);
    }
    let forbidden = run(
        &[
            "backups",
            "list",
            "--remote",
            &format!("s3://{BUCKET}/box-17"),
        ],
        &aws_env(&forbidding.endpoint()),
    );
    assert_eq!(forbidden.status.code(), Some(1), "{}", both(&forbidden));
    assert!(stderr(&forbidden).contains(&forbidding.endpoint()));
    assert!(!both(&forbidden).contains(SECRET));

    let lenient = config(
        dir.path(),
        &format!("[backup]\nremote = \"s3://{BUCKET}/box-17\"\nrequire_remote = false\n"),
    );
    let install = sample_install();
    let root = install.path();
    let out = run(
        &[
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
            "--config-file",
            p(&lenient),
        ],
        &aws_env(&closed),
    );
    let text = ok(&out);
    assert!(
        text.contains("remote copy failed") && text.contains(&closed),
        "{text}"
    );
    assert_eq!(read(root, "VERSION").trim(), "2.1.0");
    assert_eq!(backups_in(root).len(), 1, "the local backup is kept");
}

/// A mistyped recipient or a remote that is not an `s3://` location is refused when the
/// settings are read, naming the value and the file, before anything is written.
#[test]
fn a_mistyped_recipient_or_remote_is_refused_before_anything() {
    let install = sample_install();
    let root = install.path();
    let before = full_tree_hash(root);
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, named) in [
        ("[backup]\nencrypt_to = [\"age1typo\"]\n", "age1typo"),
        (
            "[backup]\nremote = \"/mnt/nas/backups\"\n",
            "/mnt/nas/backups",
        ),
    ] {
        let cfg = config(dir.path(), text);
        let out = migrate(&[
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
            "--config-file",
            p(&cfg),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", both(&out));
        assert!(stderr(&out).contains(named), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(p(&cfg)),
            "names the file: {}",
            stderr(&out)
        );
        assert_eq!(full_tree_hash(root), before, "nothing was written");
    }
}

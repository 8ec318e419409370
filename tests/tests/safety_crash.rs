//! Crash safety: the real `migrate` binary is killed with SIGKILL at every step of the commit
//! journal (through the `TRUSTFORMERS_MIGRATE_FAULT` hook), during the rollback of a recovery,
//! during a restore from a backup, during staging (`batch` points) and at pseudo-random
//! instants; after each kill the installation must be recoverable to exactly the original tree
//! or exactly the fully migrated tree, byte for byte and mode for mode, with no staging or
//! journal left behind.
//!
//! Every command runs exactly as an operator types it: the real binary, the default plugin
//! discovery (the three real plugins next to it), an isolated HOME.
//!
//! Each test prints how many kill points it exercised (`cargo test -- --nocapture`).

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use common::*;

type Tree = BTreeMap<String, (u32, String)>;

const FAULT: &str = "TRUSTFORMERS_MIGRATE_FAULT";

/// Kill points exercised by all tests of this file so far (the last test to finish prints the
/// total).
static KILLS: AtomicUsize = AtomicUsize::new(0);

fn report_kills(test: &str, n: usize) {
    let total = KILLS.fetch_add(n, Ordering::SeqCst) + n;
    println!("[safety_crash] {test}: {n} kill points (running total in this run: {total})");
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn was_killed(o: &Output) -> bool {
    o.status.signal() == Some(libc::SIGKILL)
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

/// `migrate version --path ROOT --to 2.1.0 [extra]` with an optional fault.
fn migrate_version(root: &Path, extra: &[&str], fault: Option<&str>) -> Output {
    let mut args = vec!["version", "--path", p(root), "--to", "2.1.0"];
    args.extend_from_slice(extra);
    match fault {
        Some(f) => migrate_env(&args, &[(FAULT, f)]),
        None => migrate(&args),
    }
}

/// `migrate recover --path ROOT [--forward]` with an optional fault.
fn recover(root: &Path, forward: bool, fault: Option<&str>) -> Output {
    let mut args = vec!["recover", "--path", p(root)];
    if forward {
        args.push("--forward");
    }
    match fault {
        Some(f) => migrate_env(&args, &[(FAULT, f)]),
        None => migrate(&args),
    }
}

/// `migrate rollback --backup-path B --path ROOT` with an optional fault.
fn restore(backup: &Path, root: &Path, fault: Option<&str>) -> Output {
    let args = ["rollback", "--backup-path", p(backup), "--path", p(root)];
    match fault {
        Some(f) => migrate_env(&args, &[(FAULT, f)]),
        None => migrate(&args),
    }
}

/// The phase of `.migrate/journal.json`, if there is one.
fn journal_phase(root: &Path) -> Option<String> {
    let bytes = std::fs::read(root.join(".migrate/journal.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("journal is JSON");
    Some(v["phase"].as_str().expect("journal phase").to_owned())
}

fn journal_entries(root: &Path) -> usize {
    let bytes = std::fs::read(root.join(".migrate/journal.json")).expect("journal");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("journal is JSON");
    v["entries"].as_array().expect("entries").len()
}

/// "original", "migrated" or "mixed" (no panic).
fn classify(actual: &Tree, original: &Tree, migrated: &Tree) -> &'static str {
    if actual == original {
        "original"
    } else if actual == migrated {
        "migrated"
    } else {
        "mixed (the journal is still needed)"
    }
}

/// Which reference tree `actual` is, or a panic listing the differences.
fn which_tree(actual: &Tree, original: &Tree, migrated: &Tree, context: &str) -> &'static str {
    if actual == original {
        return "original";
    }
    if actual == migrated {
        return "migrated";
    }
    let diff = |reference: &Tree| -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in actual {
            match reference.get(k) {
                None => out.push(format!("+ {k}")),
                Some(r) if r != v => out.push(format!("~ {k}")),
                _ => {}
            }
        }
        for k in reference.keys().filter(|k| !actual.contains_key(*k)) {
            out.push(format!("- {k}"));
        }
        out
    };
    panic!(
        "{context}: the tree is neither the original nor the migrated one (a mix of both?)\n  vs original: {:?}\n  vs migrated: {:?}",
        diff(original),
        diff(migrated)
    );
}

fn assert_tree(actual: &Tree, expected: &Tree, name: &str, context: &str, o: &Tree, m: &Tree) {
    let got = which_tree(actual, o, m, context);
    assert!(
        actual == expected,
        "{context}: expected the {name} tree, found the {got} tree"
    );
}

/// The sample installation before and after a fault-free 0.1.0 → 2.1.0.
struct Refs {
    original: Tree,
    migrated: Tree,
}

fn refs() -> &'static Refs {
    static REFS: OnceLock<Refs> = OnceLock::new();
    REFS.get_or_init(|| {
        let dir = sample_install();
        let original = tree_hash(dir.path());
        ok(&migrate_version(dir.path(), &[], None));
        let migrated = tree_hash(dir.path());
        assert_ne!(original, migrated);
        Refs { original, migrated }
    })
}

/// What a recovery must produce after a kill at `point`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// Killed before the journal existed.
    BeforeJournal,
    /// Journal written, phase Prepared.
    Prepared,
    /// Journal phase Committed.
    Committed,
}

fn stage_of(point: &str) -> Stage {
    match point.split(':').next().unwrap() {
        "batch" | "sync-data" => Stage::BeforeJournal,
        "prepared" | "backup" | "swap" => Stage::Prepared,
        "committed" | "cleanup" => Stage::Committed,
        other => panic!("unknown point {other}"),
    }
}

/// Kills a full migration of a fresh sample at `point` and recovers it (`forward` chooses
/// `recover --forward`). `None` when the point was not reached (the run then completed);
/// otherwise the tree the recovery produced ("original" / "migrated").
fn kill_and_recover(point: &str, forward: bool) -> Option<&'static str> {
    let r = refs();
    let ctx = format!(
        "kill at {point}, then recover{}",
        if forward { " --forward" } else { "" }
    );
    let dir = sample_install();
    let root = dir.path();
    let out = migrate_version(root, &[], Some(point));
    if !was_killed(&out) {
        assert!(
            out.status.success(),
            "{ctx}: not killed: {}",
            describe(&out)
        );
        assert_eq!(tree_hash(root), r.migrated, "{ctx}: unkilled run");
        assert_no_leftovers(root, &ctx);
        return None;
    }
    let stage = stage_of(point);
    let phase = journal_phase(root);
    match stage {
        Stage::BeforeJournal => assert_eq!(phase, None, "{ctx}: journal"),
        Stage::Prepared => assert_eq!(phase.as_deref(), Some("Prepared"), "{ctx}"),
        Stage::Committed => assert_eq!(phase.as_deref(), Some("Committed"), "{ctx}"),
    }
    let text = ok(&recover(root, forward, None));
    let (expected, name) = match (stage, forward) {
        (Stage::BeforeJournal, _) => {
            assert!(text.contains("removed the staging"), "{ctx}: {text}");
            (&r.original, "original")
        }
        (Stage::Prepared, false) => {
            assert!(text.contains("rolled back"), "{ctx}: {text}");
            (&r.original, "original")
        }
        (Stage::Prepared, true) | (Stage::Committed, _) => {
            assert!(text.contains("finished"), "{ctx}: {text}");
            (&r.migrated, "migrated")
        }
    };
    assert_tree(
        &tree_hash(root),
        expected,
        name,
        &ctx,
        &r.original,
        &r.migrated,
    );
    assert_no_leftovers(root, &ctx);
    // A second recovery has nothing left to do and changes nothing.
    let again = ok(&recover(root, forward, None));
    assert!(again.contains("nothing to recover"), "{ctx}: {again}");
    assert_eq!(&tree_hash(root), expected, "{ctx}: second recovery");
    println!("  {ctx}: recovered to the {name} tree");
    Some(name)
}

/// Every journal step of a full migration of the sample (and one staging point before the
/// journal, and the sync of the staged data the run waits for before it): `batch:1`,
/// `sync-data:1`, `prepared:1`, `backup:1`, `swap:1..=N` (N found by running until
/// `swap:N+1` is not reached), `committed:1`, `cleanup:1`, `cleanup:2`. Returns the kills.
fn kill_at_every_journal_step(forward: bool) -> usize {
    let mut kills = 0;
    for point in ["batch:1", "sync-data:1", "prepared:1", "backup:1"] {
        assert!(
            kill_and_recover(point, forward).is_some(),
            "{point} not reached"
        );
        kills += 1;
    }
    let mut swaps = 0;
    loop {
        let point = format!("swap:{}", swaps + 1);
        assert!(swaps < 50, "swap points never end");
        if kill_and_recover(&point, forward).is_none() {
            break;
        }
        swaps += 1;
        kills += 1;
    }
    println!("  {swaps} swap points in a full migration of the sample");
    assert_eq!(
        swaps,
        swap_count(),
        "one swap point per journal entry (files replaced or created)"
    );
    for point in ["committed:1", "cleanup:1", "cleanup:2"] {
        assert!(
            kill_and_recover(point, forward).is_some(),
            "{point} not reached"
        );
        kills += 1;
    }
    kills
}

#[test]
fn kill_at_every_journal_step_then_recover_rolls_back() {
    let kills = kill_at_every_journal_step(false);
    assert!(kills >= 10, "only {kills} kill points");
    report_kills("kill_at_every_journal_step_then_recover_rolls_back", kills);
}

#[test]
fn kill_at_every_journal_step_then_recover_forward_finishes() {
    let kills = kill_at_every_journal_step(true);
    assert!(kills >= 10, "only {kills} kill points");
    report_kills(
        "kill_at_every_journal_step_then_recover_forward_finishes",
        kills,
    );
}

/// BUG 3 (found on commit 8637706; this test failed there) — host/src/migrator.rs
/// `VersionMigrator::execute` → `plan` → `source_version`, and
/// host/src/execute.rs `run_steps`): after a kill, the next `migrate version` must recover
/// first and then migrate (README: every version/config/data/models run first rolls back an
/// unfinished journal). But the plan — and so the source version, read from `VERSION` — is
/// built BEFORE the recovery, and `run_steps` returns at `if plan.hops.is_empty()` before it
/// takes the lock and calls `recover_first`. So when the kill came after `VERSION` was swapped
/// in (the last swap, then validation, `committed`, `cleanup`), `migrate version` reports
/// "2.1.0 → 2.1.0: UpToDate", exits 0 and leaves the journal. With phase `Prepared` (killed
/// after the last swap) the next command that does recover (`migrate recover`, `validate`,
/// `info --path`) silently ROLLS THE INSTALLATION BACK to 0.1.0, after the operator was told
/// it was up to date. And when the kill came after `config/server.toml` was swapped but before
/// `VERSION` (swap:1 .. swap:N-1), version detection sees a migrated server.toml and no
/// VERSION and fails (exit 7, "cannot detect the installation's version … pass --from")
/// instead of recovering. Expected: recovery (under the lock) before the version is detected;
/// then the migration runs as needed; exit 0, the migrated tree, and no journal left.
#[test]
fn regression_migrate_version_after_a_kill_recovers_first_at_every_journal_step() {
    let r = refs();
    let swaps = swap_count();
    let mut points: Vec<String> = vec![
        "batch:1".into(),
        "sync-data:1".into(),
        "prepared:1".into(),
        "backup:1".into(),
    ];
    points.extend((1..=swaps).map(|n| format!("swap:{n}")));
    points.extend(["committed:1", "cleanup:1", "cleanup:2"].map(String::from));
    let mut kills = 0;
    let mut broken = Vec::new();
    for point in &points {
        let dir = sample_install();
        let root = dir.path();
        let out = migrate_version(root, &[], Some(point));
        assert!(was_killed(&out), "{point}: {}", describe(&out));
        kills += 1;
        let again = migrate_version(root, &[], None);
        let ctx = format!("kill at {point}, then `migrate version` again");
        let which = classify(&tree_hash(root), &r.original, &r.migrated);
        let left = leftovers(root);
        if again.status.success() && which == "migrated" && left.is_empty() {
            println!("  {ctx}: migrated, nothing left over");
            continue;
        }
        let said = format!("{}{}", stdout(&again), stderr(&again))
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned();
        // What the operator's next command does with what was left behind.
        let next = ok(&recover(root, false, None));
        let after = which_tree(&tree_hash(root), &r.original, &r.migrated, &ctx);
        broken.push(format!(
            "{ctx}: exit {:?}, {said:?}; tree: {which}, left {left:?}; the next `migrate recover`: {:?} → {after} tree",
            again.status.code(),
            next.trim()
        ));
    }
    report_kills(
        "regression_migrate_version_after_a_kill_recovers_first_at_every_journal_step",
        kills,
    );
    assert!(
        broken.is_empty(),
        "regression: `migrate version` after a kill does not always recover first:\n{}",
        broken.join("\n")
    );
}

/// Swaps of a full migration of the sample, read from the journal after a kill at `swap:1`.
fn swap_count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        let dir = sample_install();
        let out = migrate_version(dir.path(), &[], Some("swap:1"));
        assert!(was_killed(&out), "{}", describe(&out));
        journal_entries(dir.path())
    })
}

/// A migration killed after its 3rd swap; its recovery killed after undoing `n` files (each
/// time a fresh recovery starts over); then a plain recovery brings back the original tree, and
/// the installation migrates normally afterwards.
#[test]
fn kill_during_the_rollback_of_a_recovery() {
    let r = refs();
    let entries = swap_count();
    let mut kills = 0;
    // Independent runs: one kill in the rollback at each of its points.
    for n in 1..=entries {
        let ctx = format!("swap:3 then recover killed at rollback:{n}");
        let dir = sample_install();
        let root = dir.path();
        assert!(
            was_killed(&migrate_version(root, &[], Some("swap:3"))),
            "{ctx}"
        );
        kills += 1;
        let out = recover(root, false, Some(&format!("rollback:{n}")));
        assert!(was_killed(&out), "{ctx}: {}", describe(&out));
        kills += 1;
        let text = ok(&recover(root, false, None));
        assert!(text.contains("rolled back"), "{ctx}: {text}");
        assert_tree(
            &tree_hash(root),
            &r.original,
            "original",
            &ctx,
            &r.original,
            &r.migrated,
        );
        assert_no_leftovers(root, &ctx);
    }
    // One installation, killed again and again during successive recoveries.
    let dir = sample_install();
    let root = dir.path();
    assert!(was_killed(&migrate_version(root, &[], Some("swap:3"))));
    kills += 1;
    for n in 1..=entries {
        let out = recover(root, false, Some(&format!("rollback:{n}")));
        assert!(was_killed(&out), "chained rollback:{n}: {}", describe(&out));
        kills += 1;
    }
    ok(&recover(root, false, None));
    assert_tree(
        &tree_hash(root),
        &r.original,
        "original",
        "chained rollback kills",
        &r.original,
        &r.migrated,
    );
    assert_no_leftovers(root, "chained rollback kills");
    // Still a healthy 0.1.0 installation: the migration now runs to the end.
    ok(&migrate_version(root, &[], None));
    assert_eq!(
        tree_hash(root),
        r.migrated,
        "migration after the recoveries"
    );
    report_kills("kill_during_the_rollback_of_a_recovery", kills);
}

/// BUG (found on commit 8637706; this test failed there) — host/src/journal.rs, `recover` /
/// `roll_back`: a rollback that is interrupted leaves
/// the journal in phase `Prepared`, indistinguishable from an interrupted swap. `recover
/// --forward` then "finishes" it with `swap_forward`, which only moves files that are still in
/// staging: the files the interrupted rollback had already put back keep their OLD content,
/// the others get the new one, VERSION says 2.1.0, and the kept originals are deleted — a
/// silent mix of 0.1.0 and 2.1.0 files. Expected: either the rollback is completed (the
/// journal records that a rollback started, and `--forward` finishes the rollback or refuses),
/// or the migration is completed — in every case exactly one of the two trees.
#[test]
fn regression_recover_forward_after_an_interrupted_rollback_gives_a_consistent_tree() {
    let r = refs();
    let entries = swap_count();
    let mut kills = 0;
    let mut mixed = Vec::new();
    for n in 1..=entries {
        let ctx = format!("swap:3, recover killed at rollback:{n}, then recover --forward");
        let dir = sample_install();
        let root = dir.path();
        assert!(was_killed(&migrate_version(root, &[], Some("swap:3"))));
        let out = recover(root, false, Some(&format!("rollback:{n}")));
        assert!(was_killed(&out), "{ctx}: {}", describe(&out));
        kills += 2;
        let out = recover(root, true, None);
        let tree = tree_hash(root);
        let left = leftovers(root);
        if !left.is_empty() {
            mixed.push(format!("{ctx}: leftovers {left:?}"));
        }
        if tree != r.original && tree != r.migrated {
            let changed: Vec<&String> = tree
                .iter()
                .filter(|(k, v)| r.original.get(*k) == Some(*v))
                .filter(|(k, _)| r.migrated.get(*k) != r.original.get(*k))
                .map(|(k, _)| k)
                .collect();
            mixed.push(format!(
                "{ctx}: exit {:?}, VERSION {:?}, still 0.1.0 content: {changed:?}",
                out.status.code(),
                std::fs::read_to_string(root.join("VERSION")).ok()
            ));
        }
    }
    report_kills(
        "regression_recover_forward_after_an_interrupted_rollback_gives_a_consistent_tree",
        kills,
    );
    assert!(
        mixed.is_empty(),
        "regression: `recover --forward` after an interrupted rollback leaves a mixed tree:\n{}",
        mixed.join("\n")
    );
}

/// A migrated sample with its backup, as a template for the restore tests.
struct Migrated {
    dir: tempfile::TempDir,
    backup_rel: PathBuf,
}

fn migrated_template() -> Migrated {
    let dir = sample_install();
    ok(&migrate_version(dir.path(), &[], None));
    let backups: Vec<PathBuf> = std::fs::read_dir(dir.path().join("backups"))
        .expect("backups/")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let backup_rel = backups[0].strip_prefix(dir.path()).unwrap().to_path_buf();
    Migrated { dir, backup_rel }
}

/// Kills `migrate rollback --backup-path` (a restore) at each of its journal points, then
/// recovers (both ways): the tree is the migrated one (restore undone) or the original one
/// (restore finished), never a mix.
#[test]
fn kill_during_a_restore_from_backup() {
    let r = refs();
    let t = &migrated_template();
    let mut kills = 0;
    for forward in [false, true] {
        let mut fixed: Vec<String> = vec!["prepared:1".into()];
        let mut n = 0;
        let mut swaps_done = false;
        let mut after: Vec<String> = Vec::new();
        loop {
            let point = if !fixed.is_empty() {
                fixed.remove(0)
            } else if !swaps_done {
                n += 1;
                assert!(n < 50);
                format!("swap:{n}")
            } else if !after.is_empty() {
                after.remove(0)
            } else {
                break;
            };
            let ctx = format!(
                "restore killed at {point}, then recover{}",
                if forward { " --forward" } else { "" }
            );
            let copy = tempfile::tempdir().expect("tempdir");
            copy_tree(t.dir.path(), copy.path());
            let root = copy.path();
            assert_eq!(tree_hash(root), r.migrated, "{ctx}: template");
            let out = restore(&root.join(&t.backup_rel), root, Some(&point));
            if !was_killed(&out) {
                assert!(point.starts_with("swap:"), "{ctx}: {}", describe(&out));
                assert!(out.status.success(), "{ctx}: {}", describe(&out));
                assert_eq!(tree_hash(root), r.original, "{ctx}: unkilled restore");
                println!("  restore: {} swaps", n - 1);
                assert!(n > 5, "expected at least 5 swaps");
                swaps_done = true;
                after = vec!["committed:1".into(), "cleanup:1".into(), "cleanup:2".into()];
                continue;
            }
            kills += 1;
            let committed = point.starts_with("committed") || point.starts_with("cleanup");
            assert_eq!(
                journal_phase(root).as_deref(),
                Some(if committed { "Committed" } else { "Prepared" }),
                "{ctx}"
            );
            ok(&recover(root, forward, None));
            let (expected, name) = if committed || forward {
                (&r.original, "original")
            } else {
                (&r.migrated, "migrated")
            };
            assert_tree(
                &tree_hash(root),
                expected,
                name,
                &ctx,
                &r.original,
                &r.migrated,
            );
            assert_no_leftovers(root, &ctx);
            println!("  {ctx}: {name} tree");
        }
    }
    // After a restore interrupted and rolled back, the restore can simply be run again.
    let copy = tempfile::tempdir().expect("tempdir");
    copy_tree(t.dir.path(), copy.path());
    let root = copy.path();
    assert!(was_killed(&restore(
        &root.join(&t.backup_rel),
        root,
        Some("swap:2")
    )));
    kills += 1;
    ok(&restore(&root.join(&t.backup_rel), root, None));
    assert_eq!(
        tree_hash(root),
        r.original,
        "restore run again after a kill"
    );
    assert_no_leftovers(root, "restore run again after a kill");
    report_kills("kill_during_a_restore_from_backup", kills);
}

fn phase_name(phase: &Option<String>) -> &str {
    phase.as_deref().unwrap_or("staging")
}

/// A deterministic pseudo-random sequence (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The sample with `records` generated request records in `data/requests.jsonl`, and a
/// `migration_config.toml` (outside the installation) with `batch_size`.
struct Big {
    template: tempfile::TempDir,
    config: tempfile::NamedTempFile,
    original: Tree,
}

fn big_install(records: usize, batch_size: usize) -> Big {
    let template = sample_install();
    let mut text = String::with_capacity(records * 130);
    for i in 0..records {
        text.push_str(&format!(
            "{{\"id\":\"req-{i:07}\",\"model\":\"{}\",\"prompt_tokens\":{},\"completion_tokens\":{},\"latency_ms\":{},\"timestamp\":{}}}\n",
            ["bert-tiny", "bert-base", "minilm"][i % 3],
            (i * 37) % 512,
            (i * 53) % 300,
            (i * 13) % 900 + 1,
            1_640_995_200 + 7 * i as u64
        ));
    }
    write(template.path(), "data/requests.jsonl", &text);
    let config = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(
        config.path(),
        format!("[data_migration]\nbatch_size = {batch_size}\n"),
    )
    .expect("write config");
    let original = tree_hash(template.path());
    Big {
        template,
        config,
        original,
    }
}

impl Big {
    fn fresh(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_tree(self.template.path(), dir.path());
        dir
    }

    fn config(&self) -> &str {
        p(self.config.path())
    }
}

/// The environment `common::migrate_env` gives, for a process the test kills itself.
fn spawn_migrate(args: &[&str], home: &Path) -> std::process::Child {
    isolated(Command::new(migrate_bin()).args(args), home)
        .env_remove(FAULT)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn migrate")
}

/// Runs `migrate version` on `root` and kills it with SIGKILL `delay` after the start, unless
/// it ended before. Returns (killed, how long it ran).
fn run_and_kill_after(
    root: &Path,
    config: &str,
    delay: std::time::Duration,
) -> (bool, std::time::Duration) {
    let home = tempfile::tempdir().expect("home");
    let started = Instant::now();
    let mut child = spawn_migrate(
        &[
            "version",
            "--path",
            p(root),
            "--to",
            "2.1.0",
            "--config-file",
            config,
        ],
        home.path(),
    );
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "unkilled run failed: {status:?}");
            return (false, started.elapsed());
        }
        if started.elapsed() >= delay {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    if status.signal() == Some(libc::SIGKILL) {
        (true, started.elapsed())
    } else {
        assert!(status.success(), "run failed: {status:?}");
        (false, started.elapsed())
    }
}

/// A 40 000-record installation (about 5 MB of request logs, batches of 500): `kill -9` at
/// pseudo-random instants spread over a whole run, then recovery by the next `migrate version`
/// (which rolls back first, then migrates) or by `migrate recover`, alternately. The length of
/// a run is re-measured as the test goes (it depends on the load of the machine), and runs go
/// on until 16 of them were really killed.
#[test]
fn random_kills_of_a_large_migration() {
    let big = big_install(40_000, 500);
    // One undisturbed run: the migrated reference, and the length of a run.
    let reference = big.fresh();
    let started = Instant::now();
    ok(&migrate_version(
        reference.path(),
        &["--config-file", big.config()],
        None,
    ));
    let mut full = started.elapsed();
    let migrated = tree_hash(reference.path());
    println!("  a full run of the 40k-record installation takes {full:?}");
    const WANTED: usize = 16;
    const SLICES: usize = 16;
    let mut kills = 0;
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut outcomes = Vec::new();
    let mut i = 0;
    while kills < WANTED {
        assert!(i < 3 * WANTED, "too few runs could be killed: {outcomes:?}");
        // Stratified over the run: the i-th kill falls in the i-th slice, jittered.
        let frac = ((i % SLICES) as f64 + rng.next_f64()) / SLICES as f64;
        let delay = full.mul_f64(frac * 0.95);
        let dir = big.fresh();
        let root = dir.path();
        let (killed, ran) = run_and_kill_after(root, big.config(), delay);
        if !killed {
            // The run was shorter than estimated: learn from it.
            full = ran;
            outcomes.push(format!("{delay:.1?}→(finished in {ran:.1?})"));
            assert_eq!(tree_hash(root), migrated, "unkilled run {i}");
            i += 1;
            continue;
        }
        kills += 1;
        let before = journal_phase(root);
        let mut ctx = format!("random kill {i} after {delay:?} (journal: {before:?})");
        if kills % 2 == 1 {
            let started = Instant::now();
            let out = migrate_version(root, &["--config-file", big.config()], None);
            ctx = format!("{ctx}; migrate version said: {}", describe(&out));
            let left = leftovers(root);
            let bug3 = before.is_some()
                && (out.status.code() == Some(7) || (out.status.success() && !left.is_empty()));
            if bug3 {
                // Host bug 3, which has its own deterministic test
                // (`regression_migrate_version_after_a_kill_recovers_first_at_every_journal_step`):
                // the version was detected before recovering. Recover by hand and go on.
                println!(
                    "  note: random kill {i} after {delay:.1?} hit host bug 3 (exit {:?}, left {left:?}); recovering by hand",
                    out.status.code()
                );
                ok(&recover(root, false, None));
                let which = which_tree(&tree_hash(root), &big.original, &migrated, &ctx);
                outcomes.push(format!(
                    "{delay:.1?}[{}]→version:bug3→recover:{which}",
                    phase_name(&before)
                ));
            } else {
                assert!(out.status.success(), "{ctx}");
                full = started.elapsed();
                assert_tree(
                    &tree_hash(root),
                    &migrated,
                    "migrated",
                    &ctx,
                    &big.original,
                    &migrated,
                );
                outcomes.push(format!(
                    "{delay:.1?}[{}]→version:migrated",
                    phase_name(&before)
                ));
            }
        } else {
            let out = recover(root, false, None);
            ctx = format!("{ctx}; recover said: {}", describe(&out));
            ok(&out);
            let which = which_tree(&tree_hash(root), &big.original, &migrated, &ctx);
            // No journal means either "not prepared yet" (the original tree) or "committed and
            // cleaned up" (the kill fell after the commit, in the last moments of the run):
            // then the audit trail must show the commit completed.
            let committed = commit_recorded(root);
            if before.as_deref() != Some("Committed") && !(before.is_none() && committed) {
                assert_eq!(which, "original", "{ctx}");
            }
            if which == "migrated" && before.is_none() {
                assert!(
                    committed,
                    "a migrated tree without a recorded commit: {ctx}"
                );
            }
            outcomes.push(format!(
                "{delay:.1?}[{}]→recover:{which}",
                phase_name(&before)
            ));
        }
        assert_no_leftovers(root, &ctx);
        i += 1;
    }
    println!("  random kills: {}", outcomes.join(", "));
    report_kills("random_kills_of_a_large_migration", kills);
}

/// Deterministic kills during the staging of the 20 000-record installation: the first, a
/// middle and the last of its 81 batches (60 archived records, then 40 000 / 500).
#[test]
fn batch_kills_of_a_large_migration() {
    let big = big_install(40_000, 500);
    let reference = big.fresh();
    ok(&migrate_version(
        reference.path(),
        &["--config-file", big.config()],
        None,
    ));
    let migrated = tree_hash(reference.path());
    let mut kills = 0;
    for (j, n) in [1, 41, 81].into_iter().enumerate() {
        let dir = big.fresh();
        let root = dir.path();
        let point = format!("batch:{n}");
        let out = migrate_version(root, &["--config-file", big.config()], Some(&point));
        assert!(was_killed(&out), "{point}: {}", describe(&out));
        kills += 1;
        assert_eq!(journal_phase(root), None, "{point}: no journal yet");
        let ctx = format!("killed at {point}");
        if j == 1 {
            ok(&migrate_version(
                root,
                &["--config-file", big.config()],
                None,
            ));
            assert_tree(
                &tree_hash(root),
                &migrated,
                "migrated",
                &ctx,
                &big.original,
                &migrated,
            );
        } else {
            ok(&recover(root, j == 2, None));
            assert_tree(
                &tree_hash(root),
                &big.original,
                "original",
                &ctx,
                &big.original,
                &migrated,
            );
        }
        assert_no_leftovers(root, &ctx);
    }
    report_kills("batch_kills_of_a_large_migration", kills);
}

/// Every staging batch of the small sample with `batch_size = 50`: a kill there is before the
/// journal, so both recoveries give back the original and leave no staging.
#[test]
fn kill_at_every_batch_of_the_sample() {
    let r = refs();
    let config = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(config.path(), "[data_migration]\nbatch_size = 50\n").expect("write");
    let cfg = p(config.path());
    let mut kills = 0;
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 50);
        let point = format!("batch:{n}");
        let dir = sample_install();
        let root = dir.path();
        let out = migrate_version(root, &["--config-file", cfg], Some(&point));
        if !was_killed(&out) {
            ok(&out);
            assert_eq!(tree_hash(root), r.migrated);
            println!("  {} batches of 50 in the sample", n - 1);
            assert!(n > 5, "expected at least 5 batches");
            break;
        }
        kills += 1;
        assert!(
            root.join(".migrate").read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("staging-")),
            "{point}: a staging folder was being written"
        );
        let forward = n % 2 == 0;
        let text = ok(&recover(root, forward, None));
        assert!(text.contains("removed the staging"), "{point}: {text}");
        assert_tree(
            &tree_hash(root),
            &r.original,
            "original",
            &point,
            &r.original,
            &r.migrated,
        );
        assert_no_leftovers(root, &point);
    }
    report_kills("kill_at_every_batch_of_the_sample", kills);
}

/// Whether the audit trail records a completed `commit` step.
fn commit_recorded(root: &Path) -> bool {
    std::fs::read_to_string(root.join(".migrate/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|e| {
            e["action"] == "step_finished" && e["step"] == "commit" && e["status"] == "Completed"
        })
}

/// `rollback --backup-path` first recovers an interrupted migration. Refused after that (the
/// backup is the one the interrupted run took, for an installation at 2.1.0, and the recovery
/// brought it back to 0.1.0), its error says what the recovery did and that the backup was
/// not applied: "nothing was changed" would not be true.
/// A migration whose backup fails undoes its prepared swap, which renames nothing back (the
/// swap had reached no file): the installation stays as it was, with nothing left over. Killed
/// while it removes what it prepared (the originals gone, the staging and the journal not),
/// the next command removes the rest.
#[test]
fn a_migration_whose_backup_fails_removes_its_prepared_swap_even_when_killed_doing_it() {
    let r = refs();
    let dir = sample_install();
    let root = dir.path();
    let out = migrate_version(root, &[], Some("backup:1:error"));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("injected fault at backup"),
        "{}",
        describe(&out)
    );
    assert_eq!(journal_phase(root), None);
    assert_no_leftovers(root, "after the failed backup");
    assert_tree(
        &tree_hash(root),
        &r.original,
        "original",
        "after the failed backup",
        &r.original,
        &r.migrated,
    );

    let out = migrate_version(root, &[], Some("backup:1:error,cleanup:1"));
    assert!(was_killed(&out), "{}", describe(&out));
    assert_eq!(journal_phase(root).as_deref(), Some("RollingBack"));
    let staged: Vec<_> = std::fs::read_dir(root.join(".migrate"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("staging-"))
        .collect();
    assert_eq!(
        staged.len(),
        1,
        "the staging, its originals removed: {staged:?}"
    );
    let out = recover(root, false, None);
    assert!(out.status.success(), "{}", describe(&out));
    assert_no_leftovers(root, "after the recovery");
    assert_tree(
        &tree_hash(root),
        &r.original,
        "original",
        "after the kill and the recovery",
        &r.original,
        &r.migrated,
    );
}

/// A migration killed before its swap (here during its backup) swapped nothing: its recovery
/// leaves each file it would have replaced as it is, even one a writer replaced in the meantime,
/// instead of putting back the original it had kept aside.
#[test]
fn the_recovery_of_a_migration_killed_before_its_swap_keeps_a_file_replaced_since() {
    let r = refs();
    let dir = sample_install();
    let root = dir.path();
    let out = migrate_version(root, &[], Some("backup:1"));
    assert!(was_killed(&out), "{}", describe(&out));
    assert_eq!(journal_phase(root).as_deref(), Some("Prepared"));
    // A writer puts a new log in place, as an editor saves: a new file renamed over the old.
    let log = root.join("data/requests.jsonl");
    let rewritten = format!(
        "{}{{\"id\":\"written-after-the-kill\"}}\n",
        read(root, "data/requests.jsonl")
    );
    let new = root.join("data/requests.jsonl.new");
    std::fs::write(&new, &rewritten).unwrap();
    std::fs::rename(&new, &log).unwrap();

    let out = recover(root, false, None);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(journal_phase(root), None);
    assert_no_leftovers(root, "after the recovery");
    assert!(
        read(root, "data/requests.jsonl") == rewritten,
        "the recovery put the original log back over the one written since"
    );
    let mut expected = r.original.clone();
    expected.remove("data/requests.jsonl");
    let mut now = tree_hash(root);
    now.remove("data/requests.jsonl");
    assert_eq!(now, expected, "the other files are the original ones");
}

/// A rollback killed at its first swap had not yet removed the files the migration created:
/// the recovery leaves such a file as it is, even one a writer replaced in the meantime.
#[test]
fn the_recovery_of_a_rollback_killed_in_its_swap_keeps_a_file_it_had_not_removed() {
    let dir = sample_install();
    let root = dir.path();
    let out = migrate_version(root, &[], None);
    assert!(out.status.success(), "{}", describe(&out));
    let backups: Vec<PathBuf> = std::fs::read_dir(root.join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backups[0].join("metadata.json")).unwrap()).unwrap();
    let created = meta["created_files"][0]
        .as_str()
        .expect("the migration created a file")
        .to_owned();
    let out = restore(&backups[0], root, Some("swap:1"));
    assert!(was_killed(&out), "{}", describe(&out));
    let path = root.join(&created);
    let rewritten = format!("{}\n# written after the kill\n", read(root, &created));
    let new = path.with_extension("new");
    std::fs::write(&new, &rewritten).unwrap();
    std::fs::rename(&new, &path).unwrap();

    let out = recover(root, false, None);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(journal_phase(root), None);
    assert_no_leftovers(root, "after the recovery");
    assert!(
        read(root, &created) == rewritten,
        "the recovery put back the file the migration created over the one written since"
    );
}

#[test]
fn a_rollback_refused_after_a_recovery_says_what_the_recovery_did() {
    let r = refs();
    let dir = sample_install();
    let root = dir.path();
    let out = migrate_version(root, &[], Some("swap:1"));
    assert!(was_killed(&out), "{}", describe(&out));
    assert_eq!(journal_phase(root).as_deref(), Some("Prepared"));
    let backups: Vec<PathBuf> = std::fs::read_dir(root.join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    // Without --path: the restore itself finds the journal (with --path, the command
    // recovers first and says so, as `rollback --path` does).
    let out = migrate(&["rollback", "--backup-path", p(&backups[0])]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("interrupted migration 0.1.0 → 2.1.0 was found and rolled back first"),
        "{err}"
    );
    assert!(err.contains("the backup was not applied"), "{err}");
    assert!(!err.contains("nothing was changed"), "{err}");
    // Nothing was said about files changed since the migration: the half-swapped tree they
    // would have been compared with is gone once the recovery ran, and the rollback is
    // refused before any question.
    assert!(!err.contains("changed since the migration"), "{err}");
    assert_eq!(journal_phase(root), None);
    assert_eq!(
        which_tree(
            &tree_hash(root),
            &r.original,
            &r.migrated,
            "after the refused rollback"
        ),
        "original"
    );
}

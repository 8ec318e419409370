//! Runs a [`Plan`] one way through: preflight → stage (config, data, models, in a worker
//! process) → verify the staging → journal → backup → commit, recording every step in the
//! result and the audit trail. Nothing in the installation changes before the commit step,
//! and nothing is swapped in before the staging is proven good; a dry run stages into a
//! scratch folder and stops after the verification.

use std::path::Path;
use std::time::Instant;

use migrate_transaction::audit::Audit;
use migrate_transaction::journal::{self, Recovery};
use migrate_transaction::lock::InstallLock;
use migrate_transaction::recovery;
use migrate_transaction::staging::Staging;

use crate::commit;
use crate::error::{ExitCode, MigrateError, Result};
use crate::observe::Observer;
use crate::plan::{preflight, Plan, Target};
use crate::report::preview;
use crate::report::{ErrorReport, MigrationResult, OverallStatus, StepResult, StepStatus};
use crate::size::{human, peak_rss_bytes};
use crate::stage::on_disk::Syncing;
use crate::stage::snapshot::Snapshot;
use crate::verify::digests::{Digests, Pending, StagedDigests};
use crate::verify::staged;
use crate::verify::Severity;
use crate::worker::{supervise, WorkerSpec};

/// Whether the staged result is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Commit,
    /// Runs everything in a scratch folder outside the installation and throws it away.
    DryRun,
}

/// Executes `plan`, its plugin code in workers started as `worker` says; never panics on
/// user input, and reports every step. `held`: the installation's lock, when the caller took
/// it before planning (so that the version it detected cannot change under it); otherwise it
/// is taken here. The result's isolation is the staging worker's alone:
/// [`crate::VersionMigrator::execute`] adds the workers that described the plugins.
pub fn execute(
    plan: &Plan,
    mode: Mode,
    observer: &dyn Observer,
    worker: &WorkerSpec,
    held: Option<InstallLock>,
) -> MigrationResult {
    let started = Instant::now();
    let mut result = MigrationResult {
        overall_status: OverallStatus::Completed,
        from: plan.from.to_string(),
        to: plan.to.to_string(),
        path: plan.target.root.display().to_string(),
        hops: plan
            .steps
            .iter()
            .map(|s| format!("{} → {} ({})", s.from, s.to, s.plugin))
            .collect(),
        steps: Vec::new(),
        error: None,
        backup_path: None,
        exit_code: ExitCode::Ok as i32,
        preview: None,
        duration_ms: 0,
        peak_rss_bytes: 0,
        isolation: None,
    };
    let mut audit = None;
    if let Err(e) = run_steps(plan, mode, observer, worker, &mut result, &mut audit, held) {
        if let (
            Some(audit),
            MigrateError::WorkerStopped {
                cause,
                during,
                plugin,
                ..
            },
        ) = (&audit, &e)
        {
            record(
                audit,
                observer,
                "worker_stopped",
                serde_json::json!({"cause": cause.to_string(), "during": during, "plugin": plugin}),
            );
        }
        fail(&mut result, &e);
    } else if mode == Mode::DryRun {
        result.overall_status = OverallStatus::DryRun;
    } else if plan.hops.is_empty() {
        result.overall_status = OverallStatus::UpToDate;
    }
    result.backup_path = backup_of(&result).map(str::to_owned);
    result.duration_ms = started.elapsed().as_millis() as u64;
    result.peak_rss_bytes = peak_rss_bytes();
    if let Some(audit) = audit {
        record(
            &audit,
            observer,
            "migration_finished",
            finished_entry(&result),
        );
    }
    result
}

/// Marks `result` as ended by `e`, with the status and exit code `e` means.
pub fn fail(result: &mut MigrationResult, e: &MigrateError) {
    result.exit_code = e.exit_code() as i32;
    result.overall_status = match e.exit_code() {
        ExitCode::RolledBack => OverallStatus::RolledBack,
        ExitCode::Interrupted => OverallStatus::Interrupted,
        _ => OverallStatus::Failed,
    };
    result.error = Some(e.into());
}

/// Appends to the audit trail; a failure to do so is a warning, never a failed migration.
fn record(audit: &Audit, observer: &dyn Observer, action: &str, details: serde_json::Value) {
    if let Err(e) = audit.record(action, details) {
        observer.warning(&e.to_string());
    }
}

/// The `migration_finished` audit entry: what `migrate history` shows.
/// The backup a run took: its backup step reports it as `backup: PATH`.
fn backup_of(result: &MigrationResult) -> Option<&str> {
    result
        .steps
        .iter()
        .flat_map(|s| &s.warnings)
        .find_map(|w| w.strip_prefix("backup: "))
}

fn finished_entry(result: &MigrationResult) -> serde_json::Value {
    let backup = backup_of(result);
    let steps: Vec<serde_json::Value> = result
        .steps
        .iter()
        .map(|s| serde_json::json!({"step": s.name, "status": s.status, "duration_ms": s.duration_ms, "bytes": s.bytes, "records": s.records, "quarantined": s.quarantined, "warnings": s.warnings.len()}))
        .collect();
    serde_json::json!({
        "from": result.from, "to": result.to, "status": result.overall_status, "exit_code": result.exit_code,
        "duration_ms": result.duration_ms, "backup": backup, "steps": steps,
        "peak_rss_bytes": result.peak_rss_bytes, "error": result.error.as_ref().map(ErrorReport::text),
    })
}

/// Audit entries of the start of a run: the versions and every plugin it will call.
fn record_start(audit: &Audit, observer: &dyn Observer, plan: &Plan) {
    record(
        audit,
        observer,
        "migration_started",
        serde_json::json!({"from": plan.from.to_string(), "to": plan.to.to_string(), "kind": plan.target.kind}),
    );
    for hop in &plan.hops {
        record(
            audit,
            observer,
            "plugin_loaded",
            serde_json::json!({"plugin": hop.descriptor.name, "from": hop.from.to_string(), "to": hop.to.to_string(), "file": hop.path, "sha256": hop.sha256}),
        );
    }
}

fn run_steps(
    plan: &Plan,
    mode: Mode,
    observer: &dyn Observer,
    worker: &WorkerSpec,
    result: &mut MigrationResult,
    audit_slot: &mut Option<Audit>,
    held: Option<InstallLock>,
) -> Result<()> {
    if plan.hops.is_empty() {
        return Ok(());
    }
    // `timeout_seconds` bounds the whole run; the worker is killed when it passes.
    let deadline = plan
        .options
        .timeout
        .map(|limit| (Instant::now() + limit, limit));
    let scratch;
    let parent = match mode {
        Mode::Commit => plan.target.tool_dir(),
        Mode::DryRun => {
            scratch = tempfile::tempdir().map_err(|e| {
                MigrateError::io("cannot create a scratch folder for the dry run", e)
            })?;
            scratch.path().to_path_buf()
        }
    };
    let _lock = match (mode, held) {
        (Mode::Commit, Some(lock)) => Some(lock),
        (Mode::Commit, None) => Some(InstallLock::acquire(&parent)?),
        (Mode::DryRun, _) => None,
    };
    match mode {
        Mode::Commit => {
            let audit = Audit::new(&plan.target.root);
            recover_first(plan, result, observer)?;
            record_start(&audit, observer, plan);
            *audit_slot = Some(audit);
        }
        Mode::DryRun => refuse_if_interrupted(&plan.target)?,
    }
    let steps = Steps {
        audit: audit_slot.clone(),
        observer,
        held: Default::default(),
    };
    let staging_at = match mode {
        Mode::Commit => preflight::StagingAt::Installation,
        Mode::DryRun => preflight::StagingAt::Scratch(&parent),
    };
    steps.run(result, "preflight", 0, &mut |s| {
        check_preflight(plan, staging_at, s)
    })?;
    let mut staging = Staging::create(&parent)?;
    // Built before any plugin code runs, and removed once the pre-swap check is done, whatever
    // the outcome (a crash leaves it to the leftover clean-up, as it does the staging). Not
    // sooner: removing its links changes the change time of the installation's model files,
    // by which the check knows the checksums taken during staging still stand.
    let snapshot = Snapshot::build(plan, &staging)?;
    let Staged {
        removals,
        digests,
        syncing,
    } = stage_in_worker(
        plan,
        worker,
        &staging,
        snapshot.as_ref().map(Snapshot::dir),
        deadline,
        &steps,
        result,
    )?;
    // The check reads the staged data from memory while the host's sync writes it to disk
    // (and the journal, which needs it there, waits for both).
    let checked = (|| {
        for (rel, mode) in crate::stage::quarantine_modes(plan, &staging)? {
            staging.set_mode(&rel, mode);
        }
        let signal = worker.cancel.load(std::sync::atomic::Ordering::SeqCst);
        if signal != 0 {
            return Err(MigrateError::WorkerStopped {
                cause: crate::error::StopCause::Cancelled {
                    signal: signal as i32,
                },
                during: "after staging, before anything was swapped in".into(),
                plugin: None,
                step: None,
            });
        }
        let mut digests = Some(digests);
        // The checksums the check takes of the staged data files, for the backup.
        let mut staged_digests = StagedDigests::default();
        let total = staged::data_bytes(staging.dir(), plan.data_folder().as_deref());
        steps.run(result, "verify", total, &mut |s| {
            let digests = digests.take().map(Pending::wait).unwrap_or_default();
            staged_digests = verify_staging(plan, &staging, &removals, &digests, s, observer)?;
            Ok(())
        })?;
        Ok(staged_digests)
    })();
    // Whatever the check found, the data step's outcome is recorded (its record, and those held
    // after it, are written now: a run killed during the check leaves them out of the audit
    // trail, which then shows it interrupted). When both failed, the check's error is the
    // run's, and the failed sync is the data step's.
    let synced = data_on_disk(result, syncing, &steps);
    let staged_digests = checked?;
    synced?;
    drop(snapshot);
    for rel in &removals {
        staging.remove_at_commit(rel);
    }
    match mode {
        Mode::Commit => {
            let mut staging = Some(staging);
            let mut txn = None;
            steps.run(result, "journal", 0, &mut |s| {
                txn = staging
                    .take()
                    .map(|st| commit::prepare(plan, st, s))
                    .transpose()?;
                Ok(())
            })?;
            let Some(mut txn) = txn else { return Ok(()) };
            let backup_bytes = commit::replaced_bytes(plan, &txn);
            if let Err(e) = steps.run(result, "backup", backup_bytes, &mut |s| {
                commit::back_up(plan, &mut txn, &staged_digests, s, observer)
            }) {
                // Nothing was swapped yet: undoing the journal puts back exactly what was.
                return match txn.rollback() {
                    Ok(()) => Err(e),
                    Err(undo) => Err(MigrateError::Interrupted {
                        root: plan.target.root.clone(),
                        reason: format!("{e}; removing the prepared swap also failed ({undo})"),
                    }),
                };
            }
            let mut txn = Some(txn);
            steps.run(result, "commit", 0, &mut |s| match txn.take() {
                Some(t) => commit::commit(plan, t, s),
                None => Ok(()),
            })
        }
        Mode::DryRun => {
            result.preview = Some(preview::preview(plan, &staging));
            Ok(())
        }
    }
}

/// Runs steps in the supervisor, recording each in the result and the audit trail.
struct Steps<'a> {
    audit: Option<Audit>,
    observer: &'a dyn Observer,
    /// The records of steps that finished while an earlier one's end is still under way (the
    /// data step's sync, [`Syncing`]): written once it is recorded, so that the audit trail
    /// keeps the steps' order.
    held: std::cell::RefCell<Option<Vec<StepResult>>>,
}

impl Steps<'_> {
    fn run(
        &self,
        result: &mut MigrationResult,
        name: &str,
        bytes: u64,
        body: &mut dyn FnMut(&mut StepResult) -> Result<()>,
    ) -> Result<()> {
        let outcome = run_step(result, self.observer, name, bytes, body);
        if let Some(s) = result.steps.last() {
            self.record(s);
        }
        outcome
    }

    /// Holds the records of the steps that finish from now on, until [`Steps::release`].
    fn hold(&self) {
        self.held.borrow_mut().get_or_insert_with(Vec::new);
    }

    /// Writes `first` (the step whose end they waited for), then the records held since
    /// [`Steps::hold`], in their order.
    fn release(&self, first: Option<&StepResult>) {
        let held = self.held.take();
        for s in first.into_iter().chain(held.iter().flatten()) {
            self.record(s);
        }
    }

    /// The `step_finished` audit entry of a step, run here or in a worker (held while an
    /// earlier step's end is under way: see [`Steps::hold`]).
    fn record(&self, s: &StepResult) {
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.push(s.clone());
            return;
        }
        if let Some(audit) = &self.audit {
            record(
                audit,
                self.observer,
                "step_finished",
                serde_json::json!({"step": s.name, "status": s.status, "duration_ms": s.duration_ms, "bytes": s.bytes, "records": s.records, "error": s.error}),
            );
        }
    }
}

/// Config, data and models, staged by a worker process; their step results come back as the
/// worker finishes each. A worker that dies leaves a failed step naming why. The result says
/// how the worker was confined, whether or not the staging succeeded.
///
/// From the start, the host hashes the installation's model files on a thread of its own, for
/// the model rules (which then need not read them) and for the pre-swap check (the [`Pending`]
/// returned; see [`crate::verify::digests`]). And the host syncs the data step's staged files
/// while the model rules and the check run ([`Syncing`], returned for the run to wait for
/// before the journal): the worker no longer waits for them.
fn stage_in_worker(
    plan: &Plan,
    worker: &WorkerSpec,
    staging: &Staging,
    snapshot: Option<&Path>,
    deadline: Option<(Instant, std::time::Duration)>,
    steps: &Steps,
    result: &mut MigrationResult,
) -> Result<Staged> {
    // The data step's sync under way, and that step's place in `result.steps`.
    let mut syncing: Option<(Syncing, usize)> = None;
    // A run that optimizes the weights rewrites them: the check then reads the staged files,
    // and hashing the installation's would only add reads of the largest files there are.
    let model_rules = !plan.models.is_empty()
        && !plan.options.optimize
        && plan.hops.iter().any(|h| h.descriptor.rules.model);
    // The installation's model files are hashed from the start (the snapshot that gave them a
    // new change time was built just before); the worker gets them before its models step and
    // hands them to the model rules, which then do not read those files. The pre-swap check
    // compares the rules' `metadata.json` with the same checksums.
    let digests = match model_rules {
        true => Pending::start(plan.target.root.clone(), plan.model_folders()),
        false => Pending::none(),
    };
    let when_done = || digests.when_done();
    let mut isolation = None;
    let staged = supervise::stage(
        worker,
        plan,
        supervise::Folders {
            staging: staging.dir(),
            snapshot,
        },
        steps.observer,
        deadline,
        &mut isolation,
        &mut |s| {
            // The data step is recorded once its output is on disk; the steps after it are held
            // until then, so that the audit trail keeps their order.
            // Progress says it is done only then too.
            if s.name == "data" && s.status == StepStatus::Completed && !plan.data_files.is_empty()
            {
                let files = plan.data_files.iter().map(|f| f.rel.clone()).collect();
                syncing = Some((Syncing::start(staging.dir(), files), result.steps.len()));
                steps.hold();
            } else {
                let took = std::time::Duration::from_millis(s.duration_ms);
                steps
                    .observer
                    .step_finished(&s.name, s.error.is_none(), Some(took));
                steps.record(&s);
            }
            result.steps.push(s);
        },
        model_rules.then_some(&when_done as &supervise::Checksums),
    );
    result.isolation = isolation;
    // A worker that failed: the data step's record is still due, and the stopped step's after
    // it. A run that goes on waits for the data on disk after the pre-swap check.
    let sync_failed = match &staged {
        Err(_) => data_on_disk(result, syncing.take(), steps).err(),
        Ok(_) => None,
    };
    if let Err(
        e @ MigrateError::WorkerStopped {
            step: Some(name), ..
        },
    ) = &staged
    {
        let mut s = StepResult::new(name);
        s.status = StepStatus::Failed;
        s.error = Some(e.to_string());
        steps.observer.step_finished(name, false, None);
        steps.record(&s);
        result.steps.push(s);
    }
    match (staged, sync_failed) {
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(removals), None) => Ok(Staged {
            removals,
            digests,
            syncing,
        }),
    }
}

/// What the worker left for the rest of the run.
struct Staged {
    /// The installation files the commit deletes.
    removals: Vec<String>,
    /// The checksums of the installation's model files, being taken.
    digests: Pending,
    /// The data step's sync, under way, and that step's place in `result.steps`.
    syncing: Option<(Syncing, usize)>,
}

/// Waits until the data step's staged files are on disk ([`Syncing`]; nothing to do when no
/// sync is under way), and only then records that step (`at` in `result.steps`), then the
/// steps held after it: its duration runs until then, though the model rules and the check
/// ran meanwhile, and a failed sync fails it.
fn data_on_disk(
    result: &mut MigrationResult,
    syncing: Option<(Syncing, usize)>,
    steps: &Steps,
) -> Result<()> {
    let Some((syncing, at)) = syncing else {
        steps.release(None);
        return Ok(());
    };
    let synced = syncing.wait();
    let data = result.steps.get_mut(at).map(|s| {
        s.set_duration(std::time::Duration::from_millis(s.duration_ms) + synced.after);
        if let Err(e) = &synced.outcome {
            s.status = StepStatus::Failed;
            s.error = Some(e.to_string());
        }
        &*s
    });
    let took = data.map(|s| std::time::Duration::from_millis(s.duration_ms));
    steps
        .observer
        .step_finished("data", synced.outcome.is_ok(), took);
    steps.release(data);
    synced.outcome
}

/// Proves the staging good before anything in the installation changes: see
/// [`crate::verify::staged`]. A violation is the plugin's fault (exit 6), named with its file;
/// an installation file that changed while the run went on is no one's (exit 1).
/// The deletions the worker asked for are checked too, before any is accepted. Returns the
/// checksums the check took of the staged data files.
fn verify_staging(
    plan: &Plan,
    staging: &Staging,
    removals: &[String],
    digests: &Digests,
    s: &mut StepResult,
    observer: &dyn Observer,
) -> Result<StagedDigests> {
    // Test hook: a test pauses here to change an installation file after its checksum was
    // taken.
    migrate_transaction::fault::point("verify")?;
    let models = plan.model_folders();
    let data = plan.data_folder();
    let data_files: Vec<String> = plan.data_files.iter().map(|f| f.rel.clone()).collect();
    let checked = staged::check(&staged::Staged {
        staging: staging.dir(),
        root: &plan.target.root,
        version: &plan.to,
        hops: &plan.hops,
        config: plan.config.as_ref().map(|c| c.rel.as_str()),
        data: data.as_deref(),
        data_files: &data_files,
        removals,
        models: &models,
        digests,
        progress: &|checked| observer.step_progress(checked, 0),
    });
    s.files = (plan.config.is_some() as u64) + plan.data_files.len() as u64 + models.len() as u64;
    match (checked.violations.is_empty(), checked.changed.is_empty()) {
        (true, true) => Ok(checked.digests),
        (true, false) => Err(MigrateError::ChangedDuringRun {
            root: plan.target.root.clone(),
            changes: checked.changed,
        }),
        (false, _) => Err(MigrateError::StagedInvalid {
            version: plan.to.to_string(),
            violations: checked
                .violations
                .into_iter()
                .chain(checked.changed)
                .collect(),
        }),
    }
}

/// A dry run writes nothing, so it cannot recover an interrupted migration: it says so.
pub fn refuse_if_interrupted(target: &Target) -> Result<()> {
    if journal::is_interrupted(&target.tool_dir()) {
        return Err(MigrateError::usage(
            format!("{} holds an interrupted migration", target.root.display()),
            format!(
                "run `migrate recover --path {}` first (a dry run writes nothing, so it does not recover)",
                target.root.display()
            ),
        ));
    }
    Ok(())
}

fn check_preflight(
    plan: &Plan,
    staging_at: preflight::StagingAt,
    s: &mut StepResult,
) -> Result<()> {
    // Test hook: a test pauses here to change the disk between planning and the checks.
    migrate_transaction::fault::point("preflight")?;
    let report = preflight::check(plan, staging_at);
    if let Some(space) = &report.space {
        let backup = match plan.options.backup_dir {
            Some(_) => format!("the backup about {}", human(space.backup_bytes)),
            None => "no backup is taken".to_owned(),
        };
        s.warnings.push(format!(
            "disk space: staging needs about {}, {backup}; {} free",
            human(space.staging_bytes),
            human(space.available_bytes)
        ));
        if let Some(scratch) = &space.dry_run {
            s.warnings.push(format!(
                "disk space: this dry run stages in {}: about {} (model files copied), {} free",
                scratch.dir.display(),
                human(scratch.staging_bytes),
                human(scratch.available_bytes)
            ));
        }
    }
    for f in report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
    {
        s.warnings
            .push(format!("{}: {} [{}]", f.path, f.message, f.rule));
    }
    let errors: Vec<String> = report
        .errors()
        .map(|f| format!("[{:?}/{}] {}: {}", f.kind, f.rule, f.path, f.message))
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    Err(MigrateError::Invalid {
        path: plan.target.root.clone(),
        message: format!("pre-flight checks failed:\n    {}", errors.join("\n    ")),
        hint: "nothing was changed; fix the problems above and run the migration again".into(),
    })
}

/// An unfinished migration found on the installation is rolled back before anything else.
fn recover_first(plan: &Plan, result: &mut MigrationResult, observer: &dyn Observer) -> Result<()> {
    let recovered = recovery::recover_locked(&plan.target.root, false, false)?;
    announce(&plan.target.root, &recovered, observer);
    if let Some(Recovery::RolledBack { from, to }) = recovered.outcome {
        let mut s = StepResult::new("recover");
        s.warnings.push(format!(
            "an interrupted migration {from} → {to} was found and rolled back first"
        ));
        result.steps.push(s);
    }
    Ok(())
}

/// Tells the observer what a recovery did.
pub fn announce(root: &std::path::Path, recovered: &recovery::Recovered, observer: &dyn Observer) {
    for w in &recovered.warnings {
        observer.warning(w);
    }
    match &recovered.outcome {
        Some(Recovery::RolledBack { from, to }) => observer.notice(&format!(
            "an interrupted migration {from} → {to} was found in {} and rolled back",
            root.display()
        )),
        Some(Recovery::Cleaned { removed }) => observer.notice(&format!(
            "removed what a crashed run left in {} (nothing of the installation had changed): {}",
            root.display(),
            removed.join(", ")
        )),
        _ => {}
    }
}

/// Runs one step, recording its result and showing its progress; an error ends the run.
fn run_step(
    result: &mut MigrationResult,
    observer: &dyn Observer,
    name: &str,
    bytes: u64,
    body: &mut dyn FnMut(&mut StepResult) -> Result<()>,
) -> Result<()> {
    let started = Instant::now();
    let mut s = StepResult::new(name);
    tracing::info!(step = name, bytes, "step started");
    observer.step_started(name, bytes);
    let outcome = body(&mut s);
    observer.step_finished(name, outcome.is_ok(), Some(started.elapsed()));
    if let Err(e) = &outcome {
        s.status = StepStatus::Failed;
        s.error = Some(e.to_string());
    }
    tracing::info!(step = name, status = ?s.status, ms = started.elapsed().as_millis() as u64, bytes = s.bytes, "step finished");
    result.steps.push(s.finish(started.elapsed()));
    outcome
}

/// Rolls back an interrupted migration of `root`, if there is one, and tells the observer.
/// Every command that reads or writes an installation calls this first, so that it never
/// sees half a swap.
pub fn recover_if_interrupted(
    root: &std::path::Path,
    observer: &dyn Observer,
) -> Result<Option<Recovery>> {
    let recovered = recovery::roll_back_if_interrupted(root)?;
    announce(root, &recovered, observer);
    Ok(recovered.outcome)
}

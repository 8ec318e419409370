//! Runs a [`Plan`]: every kind of file through every hop into staging, then (unless this is a
//! dry run) commits. Nothing in the installation changes before the commit step.

use std::time::Instant;

use plugin_api::{ModelFolder, ModelOptions, OptimizeDtype};

use crate::audit::Audit;
use crate::backup::{self, BackupRequest};
use crate::data::DataRun;
use crate::error::{ExitCode, MigrateError, Result};
use crate::install::VERSION_FILE;
use crate::journal::{self, Action, Modes, Recovery, Transaction};
use crate::lock::InstallLock;
use crate::plan::Plan;
use crate::progress::{Counters, Progress};
use crate::registry::LoadedHop;
use crate::report::{MigrationResult, OverallStatus, StepResult, StepStatus};
use crate::settings::Dtype;
use crate::staging::Staging;
use plugin_api::ffi::CallError;

/// Whether the staged result is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Commit,
    /// Runs everything in a scratch folder outside the installation and throws it away.
    DryRun,
}

/// Executes `plan`; never panics on user input, and reports every step.
pub fn execute(plan: &Plan, mode: Mode, progress: &Progress) -> MigrationResult {
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
        exit_code: ExitCode::Ok as i32,
        preview: None,
        duration_ms: 0,
        peak_rss_bytes: 0,
    };
    let mut audit = None;
    if let Err(e) = run_steps(plan, mode, progress, &mut result, &mut audit) {
        result.overall_status = OverallStatus::Failed;
        result.exit_code = e.exit_code() as i32;
        if matches!(e, MigrateError::RolledBack(_)) {
            result.overall_status = OverallStatus::RolledBack;
        }
        result.error = Some(e.to_string());
    } else if mode == Mode::DryRun {
        result.overall_status = OverallStatus::DryRun;
    } else if plan.hops.is_empty() {
        result.overall_status = OverallStatus::UpToDate;
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    result.peak_rss_bytes = crate::progress::peak_rss_bytes();
    if let Some(audit) = audit {
        audit.record("migration_finished", finished_entry(&result));
    }
    result
}

/// The `migration_finished` audit entry: what `migrate history` shows.
fn finished_entry(result: &MigrationResult) -> serde_json::Value {
    let backup = result
        .steps
        .iter()
        .flat_map(|s| &s.warnings)
        .find_map(|w| w.strip_prefix("backup: "));
    let steps: Vec<serde_json::Value> = result
        .steps
        .iter()
        .map(|s| serde_json::json!({"step": s.name, "status": s.status, "duration_ms": s.duration_ms, "bytes": s.bytes, "records": s.records, "quarantined": s.quarantined, "warnings": s.warnings.len()}))
        .collect();
    serde_json::json!({
        "from": result.from, "to": result.to, "status": result.overall_status, "exit_code": result.exit_code,
        "duration_ms": result.duration_ms, "backup": backup, "steps": steps,
        "peak_rss_bytes": result.peak_rss_bytes, "error": result.error,
    })
}

/// Audit entries of the start of a run: the versions and every plugin it will call.
fn record_start(audit: &Audit, plan: &Plan) {
    audit.record("migration_started", serde_json::json!({"from": plan.from.to_string(), "to": plan.to.to_string(), "kind": plan.target.kind}));
    for hop in &plan.hops {
        audit.record(
            "plugin_loaded",
            serde_json::json!({"plugin": hop.descriptor.name, "from": hop.from.to_string(), "to": hop.to.to_string(), "file": hop.path, "sha256": hop.sha256}),
        );
    }
}

fn run_steps(
    plan: &Plan,
    mode: Mode,
    progress: &Progress,
    result: &mut MigrationResult,
    audit_slot: &mut Option<Audit>,
) -> Result<()> {
    if plan.hops.is_empty() {
        return Ok(());
    }
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
    let _lock = match mode {
        Mode::Commit => Some(InstallLock::acquire(&parent)?),
        Mode::DryRun => None,
    };
    match mode {
        Mode::Commit => {
            let audit = Audit::new(&plan.target.root);
            recover_first(plan, result)?;
            record_start(&audit, plan);
            *audit_slot = Some(audit);
        }
        Mode::DryRun => refuse_if_interrupted(&plan.target)?,
    }
    let audit = audit_slot.clone();
    let budget = Budget::new(plan.options.timeout);
    let mut step = |name: &str, bytes: u64, body: &mut dyn FnMut(&mut StepResult) -> Result<()>| {
        let outcome = run_step(result, progress, name, bytes, body);
        if let (Some(audit), Some(s)) = (&audit, result.steps.last()) {
            audit.record("step_finished", serde_json::json!({"step": s.name, "status": s.status, "duration_ms": s.duration_ms, "bytes": s.bytes, "records": s.records, "error": s.error}));
        }
        outcome
    };
    step("preflight", 0, &mut |s| preflight(plan, s))?;
    let mut staging = Staging::create(&parent)?;
    let config_bytes = plan.config.as_ref().map_or(0, |c| c.size);
    step("config", config_bytes, &mut |s| {
        migrate_config(plan, &staging, s)
    })?;
    budget.check("config")?;
    let counters = Counters::default();
    step("data", plan.data_bytes(), &mut |s| {
        migrate_data(plan, &mut staging, s, &budget, progress, &counters)
    })?;
    step("models", plan.model_bytes(), &mut |s| {
        migrate_models(plan, &staging, s, &budget, progress)
    })?;
    match mode {
        Mode::Commit => {
            let mut staging = Some(staging);
            let mut txn = None;
            step("journal", 0, &mut |s| {
                txn = staging.take().map(|st| prepare(plan, st, s)).transpose()?;
                Ok(())
            })?;
            let Some(txn) = txn else { return Ok(()) };
            let backup_bytes = replaced_bytes(plan, &txn);
            if let Err(e) = step("backup", backup_bytes, &mut |s| back_up_step(plan, &txn, s)) {
                txn.rollback()?;
                return Err(e);
            }
            let mut txn = Some(txn);
            step("commit", 0, &mut |s| match txn.take() {
                Some(t) => commit(plan, t, s),
                None => Ok(()),
            })
        }
        Mode::DryRun => {
            result.preview = Some(crate::preview::preview(plan, &staging));
            Ok(())
        }
    }
}

/// The operator's time limit (`timeout_seconds`), checked between batches, models and steps.
/// Past it, the staged work is thrown away: the installation has not changed.
pub struct Budget {
    deadline: Option<(Instant, std::time::Duration)>,
}

impl Budget {
    pub fn new(limit: Option<std::time::Duration>) -> Self {
        Budget {
            deadline: limit.map(|d| (Instant::now() + d, d)),
        }
    }

    pub fn check(&self, during: &str) -> Result<()> {
        match self.deadline {
            Some((at, limit)) if Instant::now() >= at => Err(MigrateError::RolledBack(format!(
                "timed out after {} s (timeout_seconds) during {during}; the staged work was discarded and the installation is as it was\n  next step: raise timeout_seconds in migration_config.toml",
                limit.as_secs()
            ))),
            _ => Ok(()),
        }
    }
}

/// A dry run writes nothing, so it cannot recover an interrupted migration: it says so.
pub fn refuse_if_interrupted(target: &crate::plan::Target) -> Result<()> {
    if target.tool_dir().join(journal::JOURNAL_FILE).exists() {
        return Err(MigrateError::Usage(format!(
            "{} holds an interrupted migration\n  next step: run `migrate recover --path {}` first (a dry run writes nothing, so it does not recover)",
            target.root.display(),
            target.root.display()
        )));
    }
    Ok(())
}

fn preflight(plan: &Plan, s: &mut StepResult) -> Result<()> {
    let report = crate::preflight::check(plan);
    if let Some(space) = &report.space {
        s.warnings.push(format!(
            "disk space: staging needs about {}, the backup about {}; {} free",
            crate::preflight::human(space.staging_bytes),
            crate::preflight::human(space.backup_bytes),
            crate::preflight::human(space.available_bytes)
        ));
    }
    for f in report
        .findings
        .iter()
        .filter(|f| f.severity == crate::validate::Severity::Warning)
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
fn recover_first(plan: &Plan, result: &mut MigrationResult) -> Result<()> {
    let recovery = journal::recover_and_report(&plan.target.root, &plan.target.tool_dir())?;
    if let Some(Recovery::RolledBack { from, to }) = recovery {
        let mut s = StepResult::new("recover");
        s.warnings.push(format!(
            "an interrupted migration {from} → {to} was found and rolled back first"
        ));
        result.steps.push(s);
    }
    Ok(())
}

/// Runs one step, recording its result and showing its progress; an error ends the run.
fn run_step(
    result: &mut MigrationResult,
    progress: &Progress,
    name: &str,
    bytes: u64,
    body: &mut dyn FnMut(&mut StepResult) -> Result<()>,
) -> Result<()> {
    let started = Instant::now();
    let mut s = StepResult::new(name);
    tracing::info!(step = name, bytes, "step started");
    progress.start(name, bytes);
    let outcome = body(&mut s);
    progress.finish(outcome.is_ok());
    if let Err(e) = &outcome {
        s.status = StepStatus::Failed;
        s.error = Some(e.to_string());
    }
    tracing::info!(step = name, status = ?s.status, ms = started.elapsed().as_millis() as u64, bytes = s.bytes, "step finished");
    result.steps.push(s.finish(started.elapsed()));
    outcome
}

fn migrate_config(plan: &Plan, staging: &Staging, s: &mut StepResult) -> Result<()> {
    for other in &plan.untouched_configs {
        s.warnings
            .push(format!("{other}: not migrated (left byte-identical)"));
    }
    let Some(item) = &plan.config else {
        s.status = StepStatus::Skipped;
        return Ok(());
    };
    let path = plan.target.root.join(&item.rel);
    let mut content = std::fs::read_to_string(&path).map_err(|e| {
        MigrateError::invalid(
            &path,
            format!("cannot read as UTF-8 text: {e}"),
            "fix the file's encoding",
        )
    })?;
    // The same warning from several hops (an unknown key each hop keeps) is shown once.
    let mut warnings: Vec<(String, Vec<String>)> = Vec::new();
    for hop in plan.hops.iter().filter(|h| h.descriptor.rules.config) {
        let outcome = hop
            .client
            .migrate_config(&content)
            .map_err(|e| rule_failure(hop, &path, e, "fix the file and run the migration again"))?;
        for w in outcome.warnings {
            let label = format!("{} → {}", hop.from, hop.to);
            match warnings.iter_mut().find(|(text, _)| *text == w) {
                Some((_, hops)) => hops.push(label),
                None => warnings.push((w, vec![label])),
            }
        }
        content = outcome.content;
    }
    s.warnings.extend(
        warnings
            .into_iter()
            .map(|(w, hops)| format!("{}: {w} (hops {})", item.rel, hops.join(", "))),
    );
    staging.write(&item.rel, content.as_bytes())?;
    s.files = 1;
    s.bytes = item.size;
    Ok(())
}

fn migrate_data(
    plan: &Plan,
    staging: &mut Staging,
    s: &mut StepResult,
    budget: &Budget,
    progress: &Progress,
    counters: &Counters,
) -> Result<()> {
    let Some(data_dir) = &plan.target.data else {
        s.status = StepStatus::Skipped;
        return Ok(());
    };
    let run = DataRun {
        hops: &plan.hops,
        on_invalid: plan.options.on_invalid,
        batch_size: plan.options.batch_size,
        data_rel: plan.target.rel(data_dir),
        budget,
        progress,
        counters,
    };
    for file in &plan.data_files {
        let stats = run.migrate_file(&plan.target.root, file, staging)?;
        s.files += 1;
        s.bytes += stats.bytes_in;
        s.records += stats.records;
        s.quarantined += stats.quarantined;
        if stats.quarantined > 0 {
            s.warnings.push(format!(
                "{}: {} records quarantined",
                file.rel, stats.quarantined
            ));
        }
    }
    Ok(())
}

fn migrate_models(
    plan: &Plan,
    staging: &Staging,
    s: &mut StepResult,
    budget: &Budget,
    progress: &Progress,
) -> Result<()> {
    if plan.target.models.is_none() {
        s.status = StepStatus::Skipped;
        return Ok(());
    }
    let options = ModelOptions {
        optimize: plan.options.optimize,
        dtype: match plan.options.dtype {
            Dtype::F16 => OptimizeDtype::F16,
            Dtype::Bf16 => OptimizeDtype::BF16,
        },
    };
    for model in &plan.models {
        budget.check(&model.rel)?;
        let folder = ModelFolder {
            name: model.name.clone(),
            source: plan.target.root.join(&model.rel),
            staging: staging.path_for(&model.rel)?,
        };
        for hop in plan.hops.iter().filter(|h| h.descriptor.rules.model) {
            let outcome = hop.client.migrate_model(&folder, &options).map_err(|e| {
                rule_failure(
                    hop,
                    &folder.source,
                    e,
                    "fix or remove the model folder and run the migration again",
                )
            })?;
            s.warnings.extend(
                outcome
                    .warnings
                    .into_iter()
                    .map(|w| format!("{}: {w}", model.rel)),
            );
        }
        s.files += 1;
        s.bytes += model.size;
        progress.update(s.bytes, 0);
    }
    Ok(())
}

/// Writes `VERSION` into staging and records the swap in the journal (originals kept).
fn prepare(plan: &Plan, staging: Staging, s: &mut StepResult) -> Result<Transaction> {
    let version = format!("{}\n", plan.to);
    let last = if plan.target.write_version {
        staging.write(VERSION_FILE, version.as_bytes())?;
        Some(VERSION_FILE)
    } else {
        None
    };
    let (from, to) = (plan.from.to_string(), plan.to.to_string());
    let txn = Transaction::prepare(
        &plan.target.root,
        &plan.target.tool_dir(),
        staging,
        &from,
        &to,
        last,
        Modes::FromTarget,
    )?;
    s.files = txn.entries().len() as u64;
    Ok(txn)
}

/// A rule that refused its input is the operator's to fix (exit 3); a rule that panicked or
/// answered nonsense is the plugin author's (exit 6).
fn rule_failure(hop: &LoadedHop, path: &std::path::Path, e: CallError, fix: &str) -> MigrateError {
    let at = format!(
        "hop {} → {}, plugin {}",
        hop.from, hop.to, hop.descriptor.name
    );
    match e {
        CallError::Rule(r) if !r.panicked => {
            MigrateError::invalid(path, format!("{r} ({at})"), format!("nothing was changed; {fix}"))
        }
        other => MigrateError::Plugin(format!(
            "{}: {other} ({at})\n  plugin file: {}\n  next step: nothing was changed; report this to the plugin's author",
            path.display(),
            hop.path.display()
        )),
    }
}

/// Bytes of the files the swap replaces or removes: what a backup must hold.
fn replaced_bytes(plan: &Plan, txn: &Transaction) -> u64 {
    txn.entries()
        .iter()
        .filter(|e| e.action != Action::Create)
        .filter_map(|e| std::fs::metadata(plan.target.root.join(&e.rel)).ok())
        .map(|m| m.len())
        .sum()
}

/// The backup, when one is wanted; taken before any file in the installation changes.
fn back_up_step(plan: &Plan, txn: &Transaction, s: &mut StepResult) -> Result<()> {
    let Some(dir) = &plan.options.backup_dir else {
        s.status = StepStatus::Skipped;
        return Ok(());
    };
    let path = back_up(plan, txn, dir)?;
    crate::fault::point("backup");
    Audit::new(&plan.target.root).record("backup_created", serde_json::json!({"backup": path, "from": plan.from.to_string(), "to": plan.to.to_string()}));
    s.files = txn
        .entries()
        .iter()
        .filter(|e| e.action != Action::Create)
        .count() as u64;
    s.bytes = replaced_bytes(plan, txn);
    s.warnings.push(format!("backup: {}", path.display()));
    Ok(())
}

/// Swaps the staged files in, validates, and makes it final (or rolls back).
fn commit(plan: &Plan, txn: Transaction, s: &mut StepResult) -> Result<()> {
    let root = &plan.target.root;
    s.files = txn.entries().len() as u64;
    if let Err(e) = txn.swap() {
        return match txn.rollback() {
            Ok(()) => Err(MigrateError::RolledBack(e.to_string())),
            Err(undo) => Err(MigrateError::io(
                format!("{e}; rolling back also failed ({undo}); run `migrate recover`"),
                std::io::Error::other("rollback failed"),
            )),
        };
    }
    s.bytes = txn
        .entries()
        .iter()
        .filter_map(|e| std::fs::metadata(root.join(&e.rel)).ok())
        .map(|m| m.len())
        .sum();
    if let Some(problems) = validation_errors(plan) {
        txn.rollback()?;
        return Err(MigrateError::RolledBack(format!(
            "the migrated installation failed validation as {}: {problems}",
            plan.to
        )));
    }
    txn.commit()
}

/// With `validate_after_migration`, checks the swapped-in installation before it is final.
fn validation_errors(plan: &Plan) -> Option<String> {
    if !(plan.options.validate_after && plan.target.write_version) {
        return None;
    }
    let report = crate::validate::validate(
        &plan.target.root,
        &plan.to,
        &plan.hops,
        crate::validate::Checksums::SizesOnly,
    );
    if report.ok() {
        return None;
    }
    let errors: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.severity == crate::validate::Severity::Error)
        .take(5)
        .map(|f| format!("{}: {}", f.path, f.message))
        .collect();
    Some(errors.join("; "))
}

/// Archives the files the swap will replace or remove, before any of them changes.
fn back_up(plan: &Plan, txn: &Transaction, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let root = plan.target.root.clone();
    let files = txn
        .entries()
        .iter()
        .filter(|e| e.action != Action::Create)
        .map(|e| e.rel.clone())
        .collect();
    let created_files = txn
        .entries()
        .iter()
        .filter(|e| e.action == Action::Create)
        .map(|e| e.rel.clone())
        .collect();
    let source_of = move |rel: &str| root.join(rel);
    backup::create(&BackupRequest {
        root: &plan.target.root,
        dir,
        kind: plan.target.kind,
        from: &plan.from.to_string(),
        to: &plan.to.to_string(),
        source_of: &source_of,
        files,
        created_files,
        created_dirs: txn.created_dirs().to_vec(),
    })
}

//! Stage: every kind of file through every hop, into the staging folder. Nothing in the
//! installation changes here; an error just drops the staging.
//!
//! - config: `config/server.toml` through each hop's config rule in turn, in memory;
//! - [`data`](mod@data): every data file streamed through all data hops at once;
//! - models: each model folder through each hop's model rule, which writes into staging.

pub mod budget;
pub mod data;
pub mod on_disk;
pub mod snapshot;
pub mod write_behind;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use migrate_transaction::confine::Root;
use migrate_transaction::staging::Staging;
use plugin_api::ffi::CallError;
use plugin_api::model::FileEntry;
use plugin_api::{ModelFolder, ModelOptions, OptimizeDtype};

use crate::discover::install::MAX_CONFIG_BYTES;
use crate::discover::registry::{HopInfo, LoadedHop};
use crate::error::{MigrateError, Result};
use crate::observe::{Observer, PluginCall};
use crate::plan::Plan;
use crate::report::{StepResult, StepStatus};
use crate::settings::Dtype;
pub use budget::Budget;
use data::{Counters, DataRun, Programs};

/// Announces a call into `hop`'s plugin, makes it, and says it returned.
fn call<T>(
    observer: &dyn Observer,
    hop: &LoadedHop,
    kind: &str,
    file: &str,
    places: Option<(u64, u64)>,
    f: impl FnOnce() -> T,
) -> T {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    observer.calling(&PluginCall {
        id,
        plugin: hop.descriptor.name.clone(),
        hop: format!("{} → {}", hop.from, hop.to),
        kind: kind.to_owned(),
        file: file.to_owned(),
        places,
    });
    let out = f();
    observer.returned(id);
    out
}

/// Stages `config/server.toml` through every hop with a config rule.
pub fn config(
    plan: &Plan,
    hops: &[LoadedHop],
    staging: &Staging,
    s: &mut StepResult,
    observer: &dyn Observer,
) -> Result<()> {
    for other in &plan.untouched_configs {
        s.warnings
            .push(format!("{other}: not migrated (left byte-identical)"));
    }
    let Some(item) = &plan.config else {
        s.status = StepStatus::Skipped;
        return Ok(());
    };
    let path = plan.target.root.join(&item.rel);
    let root = Root::open(&plan.target.root)?;
    let bytes = root.read(&item.rel, MAX_CONFIG_BYTES)?;
    let mut content = String::from_utf8(bytes).map_err(|e| {
        MigrateError::invalid(
            &path,
            format!("cannot read as UTF-8 text: {e}"),
            "fix the file's encoding",
        )
    })?;
    // The same warning from several hops (an unknown key each hop keeps) is shown once.
    let mut warnings: Vec<(String, Vec<String>)> = Vec::new();
    for hop in hops.iter().filter(|h| h.descriptor.rules.config) {
        let outcome = call(observer, hop, "config", &item.rel, None, || {
            hop.client.migrate_config(&content)
        })
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
    let mode = migrate_transaction::journal::final_mode(&root, &item.rel)?;
    staging.write(&item.rel, content.as_bytes(), mode)?;
    s.files = 1;
    s.bytes = item.size;
    Ok(())
}

/// Streams every data file of the plan through the data hops into staging.
pub fn data(
    plan: &Plan,
    hops: &[LoadedHop],
    staging: &mut Staging,
    s: &mut StepResult,
    budget: &Budget,
    observer: &dyn Observer,
) -> Result<()> {
    let Some(data_dir) = &plan.target.data else {
        s.status = StepStatus::Skipped;
        return Ok(());
    };
    let counters = Counters::default();
    let programs = Programs::compile(hops);
    let run = DataRun {
        hops,
        programs: &programs,
        from: plan.from.to_string(),
        max_invalid_records: plan.options.max_invalid_records,
        on_invalid: plan.options.on_invalid,
        batch_size: plan.options.batch_size,
        data_rel: plan.target.rel(data_dir),
        budget,
        observer,
        counters: &counters,
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
    s.records_by_program = programs.records();
    s.warnings.extend(programs.dropped());
    Ok(())
}

/// Stages every model folder through every hop with a model rule; each rule reads the
/// model's link-free snapshot (see [`snapshot`]; `snapshot` holds `models/<name>/…` as the
/// installation does) overlaid by what earlier hops staged. Messages name the installation's
/// folder, not the snapshot's. `checksums` (paths relative to the installation): the sizes
/// and sha256 the supervisor took of model files, handed to the rules so that they need not
/// read those files again (the snapshot's files are hard links to the installation's, or
/// copies of them).
#[allow(clippy::too_many_arguments)]
pub fn models(
    plan: &Plan,
    hops: &[LoadedHop],
    staging: &Staging,
    snapshot: Option<&Path>,
    checksums: &[FileEntry],
    s: &mut StepResult,
    budget: &Budget,
    observer: &dyn Observer,
) -> Result<()> {
    if plan.target.models.is_none() {
        s.status = StepStatus::Skipped;
        return Ok(());
    }
    let snapshot = match (snapshot, plan.models.is_empty()) {
        (Some(dir), _) => dir,
        (None, true) => Path::new(""),
        (None, false) => {
            return Err(MigrateError::Internal {
                detail: "the worker was asked to stage models without their snapshot".into(),
                state: "nothing was changed".into(),
            })
        }
    };
    let dtype = match plan.options.dtype {
        Dtype::F16 => OptimizeDtype::F16,
        Dtype::Bf16 => OptimizeDtype::BF16,
    };
    let options = ModelOptions::new(plan.options.optimize, dtype);
    for model in &plan.models {
        budget.check(&model.rel)?;
        let folder = ModelFolder::new(
            model.name.clone(),
            snapshot.join(&model.rel),
            staging.path_for(&model.rel)?,
        );
        let source = plan.target.root.join(&model.rel);
        let inside = format!("{}/", model.rel);
        let known: Vec<FileEntry> = checksums
            .iter()
            .filter_map(|c| {
                let rel = c.path.strip_prefix(&inside)?;
                Some(FileEntry::new(rel, c.size, c.sha256.clone()))
            })
            .collect();
        for hop in hops.iter().filter(|h| h.descriptor.rules.model) {
            let outcome = call(observer, hop, "model", &model.rel, None, || {
                hop.client.migrate_model(&folder, &options, &known)
            })
            .map_err(|e| {
                rule_failure(
                    hop,
                    &source,
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
        observer.step_progress(s.bytes, 0);
    }
    Ok(())
}

/// A rule that refused its input is the operator's to fix (exit 3); a rule that panicked or
/// answered nonsense is the plugin author's (exit 6).
fn rule_failure(hop: &LoadedHop, input: &Path, e: CallError, fix: &str) -> MigrateError {
    match e {
        CallError::Rule(r) if !r.panicked => MigrateError::invalid(
            input,
            format!(
                "{r} (hop {} → {}, plugin {})",
                hop.from, hop.to, hop.descriptor.name
            ),
            format!("nothing was changed; {fix}"),
        ),
        other => plugin_failure(hop, input, other.to_string()),
    }
}

/// The plugin author's bug, named with the plugin, its file and what it was migrating.
pub fn plugin_failure(hop: &HopInfo, input: &Path, detail: String) -> MigrateError {
    MigrateError::PluginFailed {
        plugin: hop.descriptor.name.clone(),
        hop: format!("{} → {}", hop.from, hop.to),
        plugin_file: hop.path.clone(),
        input: input.to_path_buf(),
        detail,
    }
}

/// The modes of the quarantine files the staging holds: each takes its data file's mode
/// (`data/.quarantine/<path>.rejected.jsonl` ← `data/<path>`), so a quarantine is never more
/// readable than the records it came from, whatever the umask of the process that wrote it
/// (the worker). Applied by the journal before the swap.
pub fn quarantine_modes(plan: &Plan, staging: &Staging) -> Result<Vec<(String, u32)>> {
    let Some(data_dir) = &plan.target.data else {
        return Ok(Vec::new());
    };
    let data_rel = plan.target.rel(data_dir);
    let quarantine = format!("{data_rel}/{}", crate::discover::install::QUARANTINE);
    // Listed confined: plugin code may have put a link in the staging (the check of the
    // staging names it; here it is refused rather than followed).
    let staged = Root::open(staging.dir())?;
    if !matches!(staged.stat(&quarantine)?, Some(f) if f.kind == migrate_transaction::confine::Kind::Dir)
    {
        return Ok(Vec::new());
    }
    let root = Root::open(&plan.target.root)?;
    let mut modes = Vec::new();
    for inside in staged.files_below(&quarantine)? {
        let Some(source) = inside.strip_suffix(".rejected.jsonl") else {
            continue;
        };
        let source = format!("{data_rel}/{source}");
        if let Some(found) = root.stat(&source)? {
            modes.push((format!("{quarantine}/{inside}"), found.mode & 0o666));
        }
    }
    Ok(modes)
}

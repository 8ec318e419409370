//! The check of a worker's output before anything in the installation changes. Plugin code is
//! not trusted to have written what its release looks like: the staged `config/server.toml`
//! must parse as TOML, every staged record must be a JSON object carrying the target
//! `schema_version`, and every staged `metadata.json` must have the spec's shape, with sizes
//! and checksums that match the files (the staged ones, or the installation's where the hop
//! left a file alone). A violation names the file and the plugin that wrote it last; a model
//! file of the installation that changed after its checksum was handed to the model rules is
//! named apart, as no plugin's doing ([`Checked::changed`]).
//!
//! The staging is swapped in whole, and the sandbox lets plugin code write anywhere in it: so
//! the staging must also hold nothing but this run's own output (the config, the data files
//! and their quarantine files, the model folders), all of it regular files. Anything else (a
//! file planted over one the run leaves alone, a new file, a symlink) is a violation.
//!
//! Every file is read confined, the staging's and the installation's alike
//! ([`migrate_transaction::confine::Root`]): plugin code (or a process it left running) can
//! put a link or a FIFO in the staging, and the installation may have changed since planning.

use std::collections::HashMap;
use std::path::Path;

use migrate_transaction::confine::{self, Root};
use serde_json::Value;

use super::digests::{Digests, StagedDigests};
use super::{
    check_document, check_lines, expected_schema, file_entry, open_confined, total_size, FilesRead,
    Validation, MAX_MODEL_METADATA_BYTES,
};
use crate::discover::install::{Installation, MAX_CONFIG_BYTES, QUARANTINE};
use crate::discover::registry::HopInfo;
pub use crate::error::Violation;

/// What a worker staged for one run.
pub struct Staged<'a> {
    pub staging: &'a Path,
    pub root: &'a Path,
    pub version: &'a semver::Version,
    pub hops: &'a [HopInfo],
    /// `config/server.toml`, relative, when the run migrated it.
    pub config: Option<&'a str>,
    /// The data folder, relative, when the run migrated data.
    pub data: Option<&'a str>,
    /// Each data file the run migrates, relative.
    pub data_files: &'a [String],
    /// The installation files the worker says the commit must delete.
    pub removals: &'a [String],
    /// Each model folder, relative.
    pub models: &'a [String],
    /// Checksums of the installation's model files taken during staging.
    pub digests: &'a Digests,
    /// Told the bytes of staged data files read for the check so far ([`data_bytes`] in all):
    /// read, and handed to the checkers, a few chunks ahead of what they have checked.
    pub progress: &'a (dyn Fn(u64) + Sync),
}

/// The bytes of the staged data files the check reads: what its progress goes up to.
pub fn data_bytes(staging: &Path, data: Option<&str>) -> u64 {
    data.map_or(0, |rel| total_size(&staged_data_files(staging, rel)))
}

/// The data files of the staged data folder `rel`, as the check lists them.
fn staged_data_files(staging: &Path, rel: &str) -> Vec<crate::discover::install::DataFile> {
    let staged = Installation {
        root: staging.to_path_buf(),
    };
    staged.data_files(&staging.join(rel)).unwrap_or_default()
}

/// What the check found.
pub struct Checked {
    /// Every violation in the staging; empty when it may be swapped in.
    pub violations: Vec<Violation>,
    /// Installation files that changed while the migration ran, which the staging no longer
    /// describes (a model file whose checksum the model rules were handed): no plugin's doing,
    /// but nothing may be swapped in either.
    pub changed: Vec<Violation>,
    /// The checksums of the staged `*.jsonl` files, taken as they were checked, for the backup.
    pub digests: StagedDigests,
}

/// Checks the staging: see the module's doc.
pub fn check(s: &Staged) -> Checked {
    let mut v = Validation {
        version: s.version.to_string(),
        path: s.staging.display().to_string(),
        records_checked: 0,
        files_checked: 0,
        findings: Vec::new(),
    };
    let schema = expected_schema(s.version, s.hops, &mut v);
    let last = |rule: fn(&HopInfo) -> bool| {
        s.hops
            .iter()
            .rev()
            .find(|h| rule(h))
            .map(|h| h.descriptor.name.clone())
    };
    let mut out = Vec::new();
    let (stage, install) = match (Root::open(s.staging), Root::open(s.root)) {
        (Ok(stage), Ok(install)) => (stage, install),
        (Err(e), _) | (_, Err(e)) => {
            out.push(Violation {
                file: s.staging.display().to_string(),
                place: None,
                problem: format!("the staging cannot be checked: {e}"),
                plugin: None,
            });
            return Checked {
                violations: out,
                changed: Vec::new(),
                digests: StagedDigests::default(),
            };
        }
    };
    let r = Roots {
        stage: &stage,
        install: &install,
        digests: s.digests,
    };
    // The model checks hash every weights file that has no checksum from staging (a staged
    // one, or one changed since: one core), while the record checks below keep both cores
    // busy only part of the time (their reader waits on the disk's page cache): run side by
    // side, the pre-swap check takes about the longer of the two. So does the count of the
    // installation's lines that the completeness check compares with: alone after the record
    // checks, it was one core reading the whole source log while the other waited.
    let model_plugin = last(|h| h.descriptor.rules.model);
    let mut digests = StagedDigests::default();
    let mut changed = Vec::new();
    std::thread::scope(|scope| {
        let models = scope.spawn(|| check_models(s, &r, schema, model_plugin));
        let installed = scope.spawn(|| installation_lines(s, &install));
        let staged_lines =
            check_records_and_files(s, &r, &v, schema, &last, &mut out, &mut digests);
        let installed = installed
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        out.extend(incomplete(s, &r, &staged_lines, &installed));
        match models.join() {
            Ok((found, during)) => {
                out.extend(found);
                changed = during;
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    Checked {
        violations: out,
        changed,
        digests,
    }
}

/// The staged config's syntax, every staged record, files the run does not write and removals:
/// the checks of [`check`] other than the models' and completeness. Returns each staged
/// `*.jsonl` file's line count, for the completeness check, and keeps its checksum in
/// `digests`.
fn check_records_and_files(
    s: &Staged,
    r: &Roots,
    v: &Validation,
    schema: Option<Option<u64>>,
    last: &dyn Fn(fn(&HopInfo) -> bool) -> Option<String>,
    out: &mut Vec<Violation>,
    digests: &mut StagedDigests,
) -> HashMap<String, u64> {
    let stage = r.stage;
    if let Some(rel) = s.config {
        let plugin = last(|h| h.descriptor.rules.config);
        let read = stage.file_exists(rel).and_then(|there| match there {
            true => stage.read(rel, MAX_CONFIG_BYTES).map(Some),
            false => Ok(None),
        });
        let text = read.map_err(|e| e.to_string()).and_then(|bytes| {
            bytes
                .map(|b| String::from_utf8(b).map_err(|e| e.to_string()))
                .transpose()
        });
        match text {
            Ok(None) => {}
            Ok(Some(text)) => {
                if let Err(e) = text.parse::<toml_edit::DocumentMut>() {
                    out.push(Violation {
                        file: rel.to_owned(),
                        place: None,
                        problem: format!(
                            "staged config is not valid TOML: {}",
                            e.to_string().trim_end()
                        ),
                        plugin,
                    });
                }
            }
            Err(e) => out.push(Violation {
                file: rel.to_owned(),
                place: None,
                problem: format!("staged config cannot be read as UTF-8 text: {e}"),
                plugin,
            }),
        }
    }
    // Each staged `*.jsonl` file's line count, taken by the record check as it reads the file,
    // so that the completeness check below does not read it a second time.
    let mut staged_lines = HashMap::new();
    if let Some(rel) = s.data {
        let plugin = last(|h| h.descriptor.rules.data);
        let mut files_read = FilesRead::new(s.progress);
        for file in staged_data_files(s.staging, rel) {
            let mut found = Validation {
                findings: Vec::new(),
                ..v.clone()
            };
            let read = match file.kind {
                crate::discover::install::DataKind::Lines => {
                    let progress = files_read.within(file.size);
                    let lines = check_lines(
                        stage,
                        &file.rel,
                        schema,
                        &mut found,
                        Some(&mut *digests),
                        &progress,
                    );
                    lines.map(|lines| {
                        staged_lines.insert(file.rel.clone(), lines);
                    })
                }
                crate::discover::install::DataKind::Document => {
                    check_document(stage, &file.rel, schema, &mut found)
                }
            };
            files_read.past(file.size);
            if let Err(e) = read {
                out.push(Violation {
                    file: file.rel.clone(),
                    place: None,
                    problem: e.to_string(),
                    plugin: plugin.clone(),
                });
            }
            out.extend(found.findings.into_iter().map(|f| Violation {
                place: (f.path != file.rel).then_some(f.path),
                file: file.rel.clone(),
                problem: f.message,
                plugin: plugin.clone(),
            }));
        }
    }
    out.extend(foreign(s));
    out.extend(unwarranted_removals(s, r));
    staged_lines
}

/// The staged model folders' `metadata.json` against their files (each weights file hashed).
/// `plugin`: the last hop with a model rule, named in each finding. Returns the plugins'
/// violations, then the files that changed while the migration ran (no plugin's doing).
fn check_models(
    s: &Staged,
    r: &Roots,
    schema: Option<Option<u64>>,
    plugin: Option<String>,
) -> (Vec<Violation>, Vec<Violation>) {
    let stage = r.stage;
    let (mut out, mut changed) = (Vec::new(), Vec::new());
    for rel in s.models {
        let meta_rel = format!("{rel}/metadata.json");
        let read = stage.file_exists(&meta_rel).and_then(|there| match there {
            true => stage.read(&meta_rel, MAX_MODEL_METADATA_BYTES).map(Some),
            false => Ok(None),
        });
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => {
                out.push(Violation {
                    file: meta_rel,
                    place: None,
                    problem: e.to_string(),
                    plugin: plugin.clone(),
                });
                continue;
            }
        };
        let problems = model_metadata(&bytes, r, rel, schema);
        for problem in problems {
            match problem {
                ModelProblem::Plugin(problem) => out.push(Violation {
                    file: meta_rel.clone(),
                    place: None,
                    problem,
                    plugin: plugin.clone(),
                }),
                ModelProblem::Changed { file, problem } => changed.push(Violation {
                    file,
                    place: None,
                    problem,
                    plugin: None,
                }),
            }
        }
    }
    (out, changed)
}

/// The staging and the installation, each opened once.
struct Roots<'a> {
    stage: &'a Root,
    install: &'a Root,
    digests: &'a Digests,
}

/// Whether a regular file is at `rel`; a link or special file there counts as none (the
/// staging's are named by [`foreign`]).
fn is_file(root: &Root, rel: &str) -> bool {
    root.file_exists(rel).unwrap_or(false)
}

/// Whether `rel` (relative to the staging root) is something this run writes: the config,
/// a data file or its quarantine file, or a file of a model folder.
fn expected(s: &Staged, rel: &str) -> bool {
    if s.config == Some(rel) || s.data_files.iter().any(|f| f == rel) {
        return true;
    }
    if let Some(data) = s.data {
        if s.data_files.iter().any(|f| rel == quarantine_of(data, f)) {
            return true;
        }
    }
    s.models.iter().any(|m| {
        rel.strip_prefix(m.as_str())
            .is_some_and(|r| r.starts_with('/'))
    })
}

/// The quarantine file of the data file `file`, relative.
fn quarantine_of(data: &str, file: &str) -> String {
    let inside = file.strip_prefix(&format!("{data}/")).unwrap_or(file);
    format!("{data}/{QUARANTINE}/{inside}.rejected.jsonl")
}

/// The worker's word on what the commit deletes is not taken as it is: plugin code shares the
/// worker's process and can write on its protocol pipe. A deletion is legitimate only for a
/// data file of this run that was set aside whole: its quarantine file is staged and the file
/// itself is not.
fn unwarranted_removals(s: &Staged, r: &Roots) -> Vec<Violation> {
    let plugins: Vec<&str> = s.hops.iter().map(|h| h.descriptor.name.as_str()).collect();
    s.removals
        .iter()
        .filter(|rel| {
            let set_aside = s.data.is_some_and(|data| {
                s.data_files.iter().any(|f| f == *rel)
                    && matches!(r.stage.stat(rel), Ok(None))
                    && is_file(r.stage, &quarantine_of(data, rel))
            });
            !set_aside
        })
        .map(|rel| Violation {
            file: rel.clone(),
            place: None,
            problem: format!(
                "the worker asked for it to be deleted, but it is not a data file this run set aside in the quarantine: a plugin of this run ({}) forged the worker's answer",
                plugins.join(", ")
            ),
            plugin: None,
        })
        .collect()
}

/// What the worker says it finished is not taken on its word either (a plugin can forge the
/// answer after half a file): every file the run migrates must be staged, and a `*.jsonl`
/// file must keep every line — each one either staged or added to its quarantine file.
fn incomplete(
    s: &Staged,
    r: &Roots,
    staged_lines: &HashMap<String, u64>,
    installed: &HashMap<String, u64>,
) -> Vec<Violation> {
    let plugins: Vec<&str> = s.hops.iter().map(|h| h.descriptor.name.as_str()).collect();
    let by = format!(
        "the worker reported its work done, but it is not: a plugin of this run ({}) stopped it early or forged its answer",
        plugins.join(", ")
    );
    let mut out = Vec::new();
    let mut missing = |rel: &str, what: String| {
        out.push(Violation {
            file: rel.to_owned(),
            place: None,
            problem: format!("{what}; {by}"),
            plugin: None,
        })
    };
    if let Some(rel) = s.config {
        if is_file(r.install, rel) && !is_file(r.stage, rel) {
            missing(rel, "the migrated config was never staged".into());
        }
    }
    for rel in s.data_files {
        if s.removals.contains(rel) {
            continue;
        }
        if !is_file(r.stage, rel) {
            missing(rel, "the migrated data file was never staged".into());
            continue;
        }
        if !rel.ends_with(".jsonl") {
            continue;
        }
        let quarantine = s.data.map(|data| quarantine_of(data, rel));
        let installed_lines = |rel: &str| match installed.get(rel) {
            Some(&lines) => lines,
            None => lines_of(r.install, rel),
        };
        let source = installed_lines(rel);
        let kept = match staged_lines.get(rel) {
            Some(&lines) => lines,
            None => lines_of(r.stage, rel),
        };
        let refused = quarantine.map_or(0, |q| {
            lines_of(r.stage, &q).saturating_sub(installed_lines(&q))
        });
        if kept + refused != source {
            missing(
                rel,
                format!("{source} lines in the installation, but {kept} staged and {refused} quarantined"),
            );
        }
    }
    out
}

/// The lines of each installation file [`incomplete`] compares with: every migrated `*.jsonl`
/// file and its quarantine file (0 for one that cannot be read, or is not there).
fn installation_lines(s: &Staged, install: &Root) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for rel in s.data_files {
        if s.removals.contains(rel) || !rel.ends_with(".jsonl") {
            continue;
        }
        counts.insert(rel.clone(), lines_of(install, rel));
        if let Some(q) = s.data.map(|data| quarantine_of(data, rel)) {
            let n = lines_of(install, &q);
            counts.insert(q, n);
        }
    }
    counts
}

/// Lines of the file `rel` below `root`, opened confined; 0 when it cannot be read.
fn lines_of(root: &Root, rel: &str) -> u64 {
    open_confined(root, rel).and_then(lines).unwrap_or(0)
}

/// Lines of a file, a last line without its newline included.
fn lines(mut file: std::fs::File) -> std::io::Result<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let (mut count, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        count += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        last = buf[n - 1];
    }
    Ok(count + u64::from(last != b'\n'))
}

/// Whatever is in the staging that this run does not write, and anything in it that is not a
/// regular file or a folder: the swap would put it in the installation.
fn foreign(s: &Staged) -> Vec<Violation> {
    let plugins: Vec<&str> = s.hops.iter().map(|h| h.descriptor.name.as_str()).collect();
    let by = format!("a plugin of this run ({})", plugins.join(", "));
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(s.staging).min_depth(1) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.push(Violation {
                    file: e
                        .path()
                        .map_or_else(String::new, |p| p.display().to_string()),
                    place: None,
                    problem: format!("the staging cannot be listed: {e}"),
                    plugin: None,
                });
                continue;
            }
        };
        let rel = entry
            .path()
            .strip_prefix(s.staging)
            .unwrap_or(entry.path())
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let problem = if !kind.is_file() {
            format!("not a regular file (a symlink or a special file), written by {by}")
        } else if !expected(s, &rel) {
            format!(
                "not a file this run migrates (the config, the data files, the model folders): {by} wrote it into the staging, outside its own output"
            )
        } else {
            continue;
        };
        out.push(Violation {
            file: rel,
            place: None,
            problem,
            plugin: None,
        });
    }
    out
}

/// The spec's shape of `metadata.json` and its files' sizes and checksums, each file read
/// from the staging when a hop wrote it there and from the installation otherwise.
fn model_metadata(
    bytes: &[u8],
    r: &Roots,
    model: &str,
    schema: Option<Option<u64>>,
) -> Vec<ModelProblem> {
    let meta: Value = match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => {
            return vec![ModelProblem::Plugin(
                "metadata.json is not a JSON object".into(),
            )]
        }
        Err(e) => {
            return vec![ModelProblem::Plugin(format!(
                "metadata.json is not valid JSON: {e}"
            ))]
        }
    };
    let mut problems: Vec<String> = Vec::new();
    // Problems that are no plugin's doing (the rules were handed a checksum of a file that
    // changed since).
    let mut changed: Vec<ModelProblem> = Vec::new();
    for key in ["name", "format"] {
        if !meta.get(key).is_some_and(Value::is_string) {
            problems.push(format!("`{key}` must be a string"));
        }
    }
    if let Some(Some(n)) = schema {
        if meta.get("schema_version").and_then(Value::as_u64) != Some(n) {
            problems.push(format!("schema_version is not {n}"));
        }
    }
    let Some(files) = meta.get("files").and_then(Value::as_array) else {
        problems.push("`files` must be a list".into());
        return problems.into_iter().map(ModelProblem::Plugin).collect();
    };
    for entry in files {
        let Some((path, size, sha)) = file_entry(entry) else {
            problems.push(format!("malformed files entry {entry}"));
            continue;
        };
        let p = Path::new(path);
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            problems.push(format!("files entry `{path}` is not a plain relative path"));
            continue;
        }
        let rel = confine::join(model, path);
        let found =
            [(r.stage, false), (r.install, true)]
                .into_iter()
                .find_map(|(root, installed)| match root.file_exists(&rel) {
                    Ok(true) => Some(open_confined(root, &rel).map(|f| (f, installed))),
                    Ok(false) => None,
                    Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                });
        let Some(file) = found else {
            problems.push(format!("{path}: listed but missing"));
            continue;
        };
        // A file the hops left alone is the installation's: its checksum may have been taken
        // during staging (see [`Digests`]).
        let file_was_installed = matches!(file, Ok((_, true)));
        match file.and_then(|(mut f, installed)| {
            if installed {
                r.digests.size_and_sha256(&rel, &mut f)
            } else {
                plugin_api::model::sha256_reader(&mut f)
            }
        }) {
            Ok((s, h)) if s == size && h == sha => {}
            Ok((s, h)) if file_was_installed && r.digests.taken(&rel) == Some((size, sha)) => {
                changed.push(ModelProblem::Changed {
                    file: rel.clone(),
                    problem: format!(
                        "changed while the migration ran: it is now size {s} sha256 {h}, but was size {size} sha256 {sha} when it was hashed for the model rules (is something still writing to it?)"
                    ),
                })
            }
            Ok((s, h)) => problems.push(format!(
                "{path}: size {s} sha256 {h}, metadata.json says size {size} sha256 {sha}"
            )),
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    problems
        .into_iter()
        .map(ModelProblem::Plugin)
        .chain(changed)
        .collect()
}

/// What is wrong with a staged model folder.
enum ModelProblem {
    /// Its `metadata.json`, written by the model rules.
    Plugin(String),
    /// An installation file (`file`, relative) that changed after its checksum was handed to
    /// the model rules.
    Changed { file: String, problem: String },
}

//! The check of a worker's output before anything in the installation changes. Plugin code is
//! not trusted to have written what its release looks like: the staged `config/server.toml`
//! must parse as TOML, every staged record must be a JSON object carrying the target
//! `schema_version`, and every staged `metadata.json` must have the spec's shape, with sizes
//! and checksums that match the files (the staged ones, or the installation's where the hop
//! left a file alone). A violation names the file and the plugin that wrote it last.

use std::path::Path;

use serde_json::Value;

use super::{check_document, check_lines, expected_schema, file_entry, Validation};
use crate::discover::install::Installation;
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
    /// Each model folder, relative.
    pub models: &'a [String],
}

/// Every violation in the staging; empty when it may be swapped in.
pub fn check(s: &Staged) -> Vec<Violation> {
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
    if let Some(rel) = s.config {
        let plugin = last(|h| h.descriptor.rules.config);
        match std::fs::read_to_string(s.staging.join(rel)) {
            Ok(text) => {
                if let Err(e) = text.parse::<toml_edit::DocumentMut>() {
                    out.push(Violation {
                        file: rel.to_owned(),
                        problem: format!(
                            "staged config is not valid TOML: {}",
                            e.to_string().trim_end()
                        ),
                        plugin,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => out.push(Violation {
                file: rel.to_owned(),
                problem: format!("staged config cannot be read as UTF-8 text: {e}"),
                plugin,
            }),
        }
    }
    if let Some(rel) = s.data {
        let plugin = last(|h| h.descriptor.rules.data);
        let staged = Installation {
            root: s.staging.to_path_buf(),
        };
        let files = staged.data_files(&s.staging.join(rel)).unwrap_or_default();
        for file in files {
            let path = s.staging.join(&file.rel);
            let mut found = Validation {
                findings: Vec::new(),
                ..v.clone()
            };
            let read = match file.kind {
                crate::discover::install::DataKind::Lines => {
                    check_lines(&path, &file.rel, schema, &mut found)
                }
                crate::discover::install::DataKind::Document => {
                    check_document(&path, &file.rel, schema, &mut found)
                }
            };
            if let Err(e) = read {
                out.push(Violation {
                    file: file.rel.clone(),
                    problem: e.to_string(),
                    plugin: plugin.clone(),
                });
            }
            out.extend(found.findings.into_iter().map(|f| Violation {
                file: f.path,
                problem: f.message,
                plugin: plugin.clone(),
            }));
        }
    }
    let plugin = last(|h| h.descriptor.rules.model);
    for rel in s.models {
        let staged_dir = s.staging.join(rel);
        let meta_rel = format!("{rel}/metadata.json");
        let Ok(bytes) = std::fs::read(staged_dir.join("metadata.json")) else {
            continue;
        };
        let problems = model_metadata(&bytes, &staged_dir, &s.root.join(rel), schema);
        out.extend(problems.into_iter().map(|problem| Violation {
            file: meta_rel.clone(),
            problem,
            plugin: plugin.clone(),
        }));
    }
    out
}

/// The spec's shape of `metadata.json` and its files' sizes and checksums, each file read
/// from the staging when a hop wrote it there and from the installation otherwise.
fn model_metadata(
    bytes: &[u8],
    staged: &Path,
    installed: &Path,
    schema: Option<Option<u64>>,
) -> Vec<String> {
    let meta: Value = match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => return vec!["metadata.json is not a JSON object".into()],
        Err(e) => return vec![format!("metadata.json is not valid JSON: {e}")],
    };
    let mut problems = Vec::new();
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
        return problems;
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
        let file = [staged.join(path), installed.join(path)]
            .into_iter()
            .find(|f| f.is_file());
        let Some(file) = file else {
            problems.push(format!("{path}: listed but missing"));
            continue;
        };
        match plugin_api::model::sha256_file(&file) {
            Ok((s, h)) if s == size && h == sha => {}
            Ok((s, h)) => problems.push(format!(
                "{path}: size {s} sha256 {h}, metadata.json says size {size} sha256 {sha}"
            )),
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    problems
}

//! `migrate validate`: checks an installation against a release. What a release's files look
//! like is the plugins' knowledge; the host checks what every release shares (the VERSION
//! marker, TOML syntax, one JSON object per record, metadata checksums) plus the
//! `schema_version` the hop into that release declares it writes.

use std::path::Path;

use semver::Version;
use serde::Serialize;
use serde_json::Value;

use migrate_transaction::confine::{Kind, Root};
use migrate_transaction::fsutil::{Tally, Told};

use crate::discover::install::{
    DataKind, Installation, MAX_CONFIG_BYTES, SERVER_TOML, VERSION_FILE,
};
use crate::discover::registry::HopInfo;
use crate::observe::Observer;

pub mod digests;
use digests::StagedDigests;
use migrate_transaction::stamp::FileStamp;
mod lines;
pub mod staged;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Severity {
    /// Stops a migration; makes `validate` exit non-zero.
    Error,
    /// Reported only.
    Warning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RuleKind {
    VersionMarker,
    ConfigurationSyntax,
    DataIntegrity,
    ModelCompatibility,
    DiskSpace,
    Permissions,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub kind: RuleKind,
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub version: String,
    pub path: String,
    pub records_checked: u64,
    pub files_checked: u64,
    pub findings: Vec<Finding>,
}

impl Validation {
    pub fn ok(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    fn error(
        &mut self,
        rule: &'static str,
        kind: RuleKind,
        path: &str,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            rule,
            kind,
            severity: Severity::Error,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn warning(
        &mut self,
        rule: &'static str,
        kind: RuleKind,
        path: &str,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            rule,
            kind,
            severity: Severity::Warning,
            path: path.to_owned(),
            message: message.into(),
        });
    }
}

/// How the files `metadata.json` lists are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksums {
    /// Re-hash every file (`migrate validate`).
    Verify,
    /// Check presence and size only: right after a migration, whose hop hashed these very
    /// files moments ago — weights are hashed once per migration, not twice.
    SizesOnly,
}

/// Validates the installation at `root` as release `version`; `hops` are the loaded hops
/// (the one ending at `version` says which schema_version its records carry). The reading
/// of the data files and the hashing of the model files are reported to `observer` as the
/// steps `data` and `models` (a step with nothing to read is not started): on a large
/// installation they take minutes.
pub fn validate(
    root: &Path,
    version: &Version,
    hops: &[HopInfo],
    checksums: Checksums,
    observer: &dyn Observer,
) -> Validation {
    let install = Installation {
        root: root.to_path_buf(),
    };
    let mut v = Validation {
        version: version.to_string(),
        path: root.display().to_string(),
        records_checked: 0,
        files_checked: 0,
        findings: Vec::new(),
    };
    let schema = expected_schema(version, hops, &mut v);
    check_marker(&install, version, schema, &mut v);
    check_config(&install, &mut v);
    check_data(&install, schema, &mut v, observer);
    check_models(&install, schema, checksums, &mut v, observer);
    v
}

/// A step of `validate` shown to its observer: started with the bytes it reads, ended as
/// failed when its part of the check found an error since `errors_before` (the findings say
/// which).
struct Shown<'a> {
    name: &'static str,
    observer: &'a dyn Observer,
    errors_before: usize,
    started: std::time::Instant,
}

impl<'a> Shown<'a> {
    fn start(
        name: &'static str,
        total: u64,
        errors_before: usize,
        observer: &'a dyn Observer,
    ) -> Self {
        observer.step_started(name, total);
        Shown {
            name,
            observer,
            errors_before,
            started: std::time::Instant::now(),
        }
    }

    fn end(self, v: &Validation) {
        let ok = errors(v) == self.errors_before;
        self.observer
            .step_finished(self.name, ok, Some(self.started.elapsed()));
    }
}

fn errors(v: &Validation) -> usize {
    v.findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
}

/// `Some(None)`: records carry no schema_version (a release no hop leads to, like 0.1.0);
/// `Some(Some(n))`: they carry `n`; `None`: unknown, not checked.
fn expected_schema(version: &Version, hops: &[HopInfo], v: &mut Validation) -> Option<Option<u64>> {
    if let Some(hop) = hops.iter().find(|h| &h.to == version) {
        if hop.descriptor.target_schema_version.is_none() {
            let plugin = hop.path.display().to_string();
            v.warning("schema_version", RuleKind::DataIntegrity, &plugin, format!("plugin {} does not declare the schema_version of {version}; records' schema_version not checked", hop.descriptor.name));
        }
        return hop.descriptor.target_schema_version.map(Some);
    }
    if hops.iter().any(|h| &h.from == version) {
        return Some(None);
    }
    // Named after the installation: it is what was checked only generically.
    let root = v.path.clone();
    v.warning(
        "schema_version",
        RuleKind::DataIntegrity,
        &root,
        format!("no loaded plugin knows release {version}; only generic checks were made; run `migrate plugins list` to see the releases the plugins know"),
    );
    None
}

fn check_marker(
    install: &Installation,
    version: &Version,
    schema: Option<Option<u64>>,
    v: &mut Validation,
) {
    match read_confined(install, VERSION_FILE) {
        Ok(text) if text.trim() == version.to_string() => {}
        Ok(text) => v.error(
            "version_marker",
            RuleKind::VersionMarker,
            VERSION_FILE,
            format!("says `{}`, expected {version}", text.trim()),
        ),
        Err(_) if schema == Some(None) => {}
        Err(_) => v.error(
            "version_marker",
            RuleKind::VersionMarker,
            VERSION_FILE,
            format!("missing; a {version} installation has one"),
        ),
    }
}

fn check_config(install: &Installation, v: &mut Validation) {
    match read_confined(install, SERVER_TOML) {
        Err(e) => v.error(
            "config_present",
            RuleKind::ConfigurationSyntax,
            SERVER_TOML,
            format!("cannot read: {e}"),
        ),
        Ok(text) => {
            v.files_checked += 1;
            if let Err(e) = text.parse::<toml_edit::DocumentMut>() {
                v.error(
                    "config_syntax",
                    RuleKind::ConfigurationSyntax,
                    SERVER_TOML,
                    format!("invalid TOML: {}", e.to_string().trim_end()),
                );
            }
        }
    }
}

/// A small file of the installation, read beneath its root (a link is refused, never
/// followed), as a regular file under the config size cap.
fn read_confined(install: &Installation, rel: &str) -> Result<String, String> {
    let root = Root::open(&install.root).map_err(|e| e.to_string())?;
    let bytes = root
        .read(rel, MAX_CONFIG_BYTES)
        .map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
}

fn check_data(
    install: &Installation,
    schema: Option<Option<u64>>,
    v: &mut Validation,
    observer: &dyn Observer,
) {
    let files = match install.data_files(&install.path(crate::discover::install::DATA_DIR)) {
        Ok(f) => f,
        Err(e) => {
            return v.error(
                "data_listing",
                RuleKind::DataIntegrity,
                "data",
                e.to_string(),
            )
        }
    };
    let root = match Root::open(&install.root) {
        Ok(root) => root,
        Err(e) => {
            return v.error(
                "data_readable",
                RuleKind::DataIntegrity,
                "data",
                e.to_string(),
            )
        }
    };
    if files.is_empty() {
        return;
    }
    let shown = Shown::start("data", total_size(&files), errors(v), observer);
    let progress = |n| observer.step_progress(n, 0);
    let mut files_read = FilesRead::new(&progress);
    for file in files {
        v.files_checked += 1;
        let checked = match file.kind {
            DataKind::Lines => {
                let progress = files_read.within(file.size);
                check_lines(&root, &file.rel, schema, v, None, &progress).map(drop)
            }
            DataKind::Document => check_document(&root, &file.rel, schema, v),
        };
        files_read.past(file.size);
        if let Err(e) = checked {
            v.error(
                "data_readable",
                RuleKind::DataIntegrity,
                &file.rel,
                e.to_string(),
            );
        }
    }
    shown.end(v);
}

/// The bytes of data files listed: what a step reading them all goes up to.
pub(super) fn total_size(files: &[crate::discover::install::DataFile]) -> u64 {
    files.iter().map(|f| f.size).fold(0, u64::saturating_add)
}

/// Progress over data files read one after the other: told the bytes of the files before
/// the current one plus what has been read of it, never more than its listed size (a file
/// that grew since it was listed is read whole, but the bar neither runs past its total nor
/// back when the next file starts).
pub(super) struct FilesRead<'a> {
    before: u64,
    progress: &'a dyn Fn(u64),
}

impl<'a> FilesRead<'a> {
    pub(super) fn new(progress: &'a dyn Fn(u64)) -> Self {
        FilesRead {
            before: 0,
            progress,
        }
    }

    /// The progress of reading the next file, listed at `size` bytes.
    pub(super) fn within(&self, size: u64) -> impl Fn(u64) + 'a {
        let (before, progress) = (self.before, self.progress);
        move |n| progress(before.saturating_add(n.min(size)))
    }

    /// That file is behind, whatever it held (a document is not read in chunks).
    pub(super) fn past(&mut self, size: u64) {
        self.before = self.before.saturating_add(size);
        (self.progress)(self.before);
    }
}

/// A model's `metadata.json` is read only as a regular file of at most this size.
pub(super) const MAX_MODEL_METADATA_BYTES: u64 = 64 << 20;

/// At most this many findings per file; the rest are counted.
const MAX_FINDINGS_PER_FILE: usize = 20;

/// Checks a `*.jsonl` file (in parallel chunks, see [`lines`]); returns its line count. With
/// `digests`, its checksum is taken as it is read, and kept there. `progress`: the bytes read
/// so far.
fn check_lines(
    root: &Root,
    rel: &str,
    schema: Option<Option<u64>>,
    v: &mut Validation,
    digests: Option<&mut StagedDigests>,
    progress: &dyn Fn(u64),
) -> std::io::Result<u64> {
    let file = open_confined(root, rel)?;
    let before = match digests {
        Some(_) => Some(FileStamp::of(&file)?),
        None => None,
    };
    let mut checked = lines::check_file(&file, schema, CHUNK_BYTES, before.is_some(), progress)?;
    if let (Some(digests), Some(before), Some(sha256)) = (digests, before, checked.sha256.take()) {
        digests.keep(rel, before, &file, sha256);
    }
    v.records_checked += checked.records;
    let bad = checked.problems.len();
    for (line, rule, message) in checked.problems.into_iter().take(MAX_FINDINGS_PER_FILE) {
        v.error(
            rule,
            RuleKind::DataIntegrity,
            &format!("{rel}:{line}"),
            message,
        );
    }
    if bad > MAX_FINDINGS_PER_FILE {
        v.error(
            "record_schema_version",
            RuleKind::DataIntegrity,
            rel,
            format!("{} more records with problems", bad - MAX_FINDINGS_PER_FILE),
        );
    }
    Ok(checked.lines)
}

/// Opens the regular file `rel` beneath `root` for a check ([`Root::open_read`]: a link or a
/// FIFO put there since the listing is refused, named, never followed or waited on).
pub(super) fn open_confined(root: &Root, rel: &str) -> std::io::Result<std::fs::File> {
    root.open_read(rel, None)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Read size for `*.jsonl` checks: large enough that threads rarely wait on one another.
const CHUNK_BYTES: usize = 4 << 20;

/// Checks a `*.json` document record by record, as the migration reads it
/// ([`crate::document`]): memory follows the largest record, not the file.
fn check_document(
    root: &Root,
    rel: &str,
    schema: Option<Option<u64>>,
    v: &mut Validation,
) -> std::io::Result<()> {
    use crate::document::{self, Records, Shape};
    if let Err(e) = document::check(open_confined(root, rel)?) {
        if e.is_io() {
            return Err(e.into());
        }
        v.records_checked += 1;
        check_record(rel, Err(e.to_string()), schema, v);
        return Ok(());
    }
    let mut records = Records::new(open_confined(root, rel)?)?;
    let mut text = Vec::new();
    let mut n = 0;
    while records.next_into(&mut text)? {
        n += 1;
        let place = match records.shape() {
            Shape::Array => format!("{rel} (record {n})"),
            Shape::Single => rel.to_owned(),
        };
        let record = serde_json::from_slice::<Value>(&text).map_err(|e| e.to_string());
        v.records_checked += 1;
        check_record(&place, record, schema, v);
        text.clear();
    }
    Ok(())
}

/// What is wrong with a record's schema_version, if anything.
fn schema_problem(found: Option<u64>, schema: Option<Option<u64>>) -> Option<String> {
    let expected = schema?;
    if found == expected {
        return None;
    }
    let show = |x: Option<u64>| x.map_or("none".to_owned(), |n| n.to_string());
    Some(format!(
        "schema_version is {}, expected {}",
        show(found),
        show(expected)
    ))
}

fn check_record(
    place: &str,
    record: Result<Value, String>,
    schema: Option<Option<u64>>,
    v: &mut Validation,
) {
    let record = match record {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return v.error(
                "record_is_object",
                RuleKind::DataIntegrity,
                place,
                "a record must be a JSON object",
            )
        }
        Err(e) => {
            return v.error(
                "record_json",
                RuleKind::DataIntegrity,
                place,
                format!("not valid JSON: {e}"),
            )
        }
    };
    let found = record.get("schema_version").and_then(Value::as_u64);
    if let Some(message) = schema_problem(found, schema) {
        v.error(
            "record_schema_version",
            RuleKind::DataIntegrity,
            place,
            message,
        );
    }
}

fn check_models(
    install: &Installation,
    schema: Option<Option<u64>>,
    checksums: Checksums,
    v: &mut Validation,
    observer: &dyn Observer,
) {
    let dir = install.path(crate::discover::install::MODELS_DIR);
    let names = match install.model_dirs(&dir) {
        Ok(names) => names,
        Err(e) => {
            return v.error(
                "model_listing",
                RuleKind::ModelCompatibility,
                crate::discover::install::MODELS_DIR,
                e.to_string(),
            )
        }
    };
    // One descriptor of the root for every model's metadata and files.
    let root = Root::open(&install.root);
    let errors_before = errors(v);
    // Every model's metadata.json read first, and only the files it lists kept: their sizes
    // give the step its total before any is hashed.
    let mut listed = Vec::new();
    for name in names {
        let rel = format!(
            "{}/{name}/metadata.json",
            crate::discover::install::MODELS_DIR
        );
        // A root that would not open, or metadata that cannot be read: one finding.
        let read = root.as_ref().map_err(ToString::to_string).and_then(|root| {
            root.file_exists(&rel)
                .and_then(|found| {
                    found
                        .then(|| root.read(&rel, MAX_MODEL_METADATA_BYTES))
                        .transpose()
                })
                .map_err(|e| e.to_string())
        });
        let text = match read {
            Ok(Some(text)) => text,
            Err(e) => {
                v.error("model_metadata", RuleKind::ModelCompatibility, &rel, e);
                continue;
            }
            Ok(None) => {
                if matches!(schema, Some(Some(_))) {
                    v.error(
                        "model_metadata",
                        RuleKind::ModelCompatibility,
                        &rel,
                        "missing",
                    );
                }
                continue;
            }
        };
        let meta: Value = match serde_json::from_slice(&text) {
            Ok(m) => m,
            Err(e) => {
                v.error(
                    "model_metadata",
                    RuleKind::ModelCompatibility,
                    &rel,
                    format!("not valid JSON: {e}"),
                );
                continue;
            }
        };
        if let Some(Some(n)) = schema {
            if meta.get("schema_version").and_then(Value::as_u64) != Some(n) {
                v.error(
                    "model_schema_version",
                    RuleKind::ModelCompatibility,
                    &rel,
                    format!("schema_version is not {n}"),
                );
            }
        }
        let model = format!("{}/{name}", crate::discover::install::MODELS_DIR);
        listed_files(&model, &rel, &meta, v, &mut listed);
    }
    // Without a root, every model already has its finding.
    let Ok(root) = root.as_ref() else {
        return;
    };
    // Shown only when files are hashed: what will be read is the listed files as they are
    // now, not the sizes listed.
    let total = (checksums == Checksums::Verify && !listed.is_empty()).then(|| {
        listed
            .iter()
            .filter_map(|f| match root.stat(&f.file) {
                Ok(Some(found)) if found.kind == Kind::File => Some(found.size),
                _ => None,
            })
            .fold(0, u64::saturating_add)
    });
    let shown = total.map(|total| Shown::start("models", total, errors_before, observer));
    // A file that grew since it was sized is hashed whole; the bar stops at its total.
    let progress = |n: u64| {
        if let Some(total) = total {
            observer.step_progress(n.min(total), 0);
        }
    };
    let mut tally = Tally::new(&progress);
    for file in &listed {
        check_checksum(root, file, checksums, v, &mut tally);
    }
    if let Some(shown) = shown {
        tally.end();
        shown.end(v);
    }
}

/// One file a model's `metadata.json` lists: what the check needs of that document, kept
/// while the document itself is dropped (each may be tens of MiB).
struct ListedFile {
    /// The metadata.json, relative to the root: where a finding is reported (shared by the
    /// files it lists).
    metadata: std::rc::Rc<str>,
    /// The path as listed, relative to the model folder.
    path: String,
    /// The file, relative to the root (not yet confined: [`Root`] does that).
    file: String,
    size: u64,
    sha256: String,
}

/// Adds the files `meta` (the `metadata.json` at `rel` of the model folder `model`) lists to
/// `out`; an entry without a path, size and sha256 is a finding.
fn listed_files(
    model: &str,
    rel: &str,
    meta: &Value,
    v: &mut Validation,
    out: &mut Vec<ListedFile>,
) {
    let entries = meta.get("files").and_then(Value::as_array);
    let metadata: std::rc::Rc<str> = rel.into();
    for entry in entries.map_or(&[][..], Vec::as_slice) {
        match file_entry(entry) {
            Some((path, size, sha)) => out.push(ListedFile {
                metadata: metadata.clone(),
                path: path.to_owned(),
                file: migrate_transaction::confine::join(model, path),
                size,
                sha256: sha.to_owned(),
            }),
            None => v.error(
                "model_files_entry",
                RuleKind::ModelCompatibility,
                rel,
                format!("malformed files entry {entry}"),
            ),
        }
    }
}

/// `(path, size, sha256)` of one entry of `metadata.json`'s `files`, if it has that shape.
fn file_entry(entry: &Value) -> Option<(&str, u64, &str)> {
    Some((
        entry.get("path")?.as_str()?,
        entry.get("size")?.as_u64()?,
        entry.get("sha256")?.as_str()?,
    ))
}

/// A file `metadata.json` lists must exist with the recorded size and sha256. It is reached
/// beneath `root` without following a link (a listed path with `..`, or a link, is refused
/// and reported), so no file outside the model folder is ever read or sized.
fn check_checksum(
    root: &Root,
    listed: &ListedFile,
    checksums: Checksums,
    v: &mut Validation,
    tally: &mut Tally,
) {
    let ListedFile {
        metadata,
        path,
        file,
        size,
        sha256: sha,
    } = listed;
    let size = *size;
    v.files_checked += 1;
    let problem = match checksums {
        Checksums::SizesOnly => match root.stat(file) {
            Ok(Some(f)) if f.kind == Kind::File && f.size == size => None,
            Ok(Some(f)) if f.kind == Kind::File => {
                Some(format!("size {}, metadata says size {size}", f.size))
            }
            Ok(Some(f)) => Some(format!("is {}, not a regular file", f.kind.describe())),
            Ok(None) => Some("missing".to_owned()),
            Err(e) => Some(e.to_string()),
        },
        Checksums::Verify => match open_confined(root, file).and_then(|f| {
            plugin_api::model::sha256_reader(&mut Told {
                inner: f,
                tally: &mut *tally,
            })
        }) {
            Ok((s, h)) if s == size && h == *sha => None,
            Ok((s, h)) => Some(format!(
                "size {s} sha256 {h}, metadata says size {size} sha256 {sha}"
            )),
            Err(e) => Some(e.to_string()),
        },
    };
    if let Some(problem) = problem {
        v.error(
            "model_checksum",
            RuleKind::ModelCompatibility,
            metadata,
            format!("{path}: {problem}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_findings(root: &Path, checksums: Checksums) -> Vec<String> {
        let version = Version::new(2, 1, 0);
        validate(root, &version, &[], checksums, &crate::observe::Silent)
            .findings
            .into_iter()
            .filter(|f| f.rule == "model_checksum")
            .map(|f| f.message)
            .collect()
    }

    /// A path listed in `metadata.json` that climbs out of the model folder with `..` is
    /// reported and never read or sized (it was hashed where it pointed, and matched).
    #[test]
    fn checksums_never_read_out_of_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("install");
        let model = root.join("models/m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("w.bin"), b"weights").unwrap();
        let secret = dir.path().join("secret.bin");
        std::fs::write(&secret, b"weights").unwrap();
        let (_, real) = plugin_api::model::sha256_file(&secret).unwrap();
        let meta = serde_json::json!({"files": [
            {"path": "w.bin", "size": 7, "sha256": real},
            {"path": "../../../secret.bin", "size": 7, "sha256": real}
        ]});
        std::fs::write(model.join("metadata.json"), meta.to_string()).unwrap();
        for checksums in [Checksums::Verify, Checksums::SizesOnly] {
            let found = checksum_findings(&root, checksums);
            assert_eq!(found.len(), 1, "{checksums:?} {found:?}");
            assert!(
                found[0].contains("../../../secret.bin") && found[0].contains("refused"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn validate_rehashes_weights_and_after_a_migration_sizes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("models/m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("w.bin"), b"weights").unwrap();
        let (_, real) = plugin_api::model::sha256_file(&model.join("w.bin")).unwrap();
        let meta = serde_json::json!({"files": [{"path": "w.bin", "size": 7, "sha256": real}]});
        std::fs::write(model.join("metadata.json"), meta.to_string()).unwrap();
        assert!(checksum_findings(dir.path(), Checksums::Verify).is_empty());

        std::fs::write(model.join("w.bin"), b"weightz").unwrap(); // same size, other bytes
        let found = checksum_findings(dir.path(), Checksums::Verify);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("w.bin") && found[0].contains(&real),
            "{found:?}"
        );
        assert!(checksum_findings(dir.path(), Checksums::SizesOnly).is_empty());

        std::fs::write(model.join("w.bin"), b"weight").unwrap(); // truncated
        for checksums in [Checksums::Verify, Checksums::SizesOnly] {
            let found = checksum_findings(dir.path(), checksums);
            assert_eq!(found.len(), 1, "{checksums:?} {found:?}");
            assert!(found[0].contains("size 6"), "{found:?}");
        }
    }
}

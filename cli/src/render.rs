//! How results look to a person: every text the CLI prints for a command's result, and the
//! colour of the `error:`/`warning:`/`note:` labels on stderr. `--json` prints the engine's own
//! types instead, so this file is the whole of the text interface.

use std::fmt::Write as _;
use std::path::Path;

use trustformers_migrate::discover::pins::{Pinned, VerifiedFolder};
use trustformers_migrate::discover::registry::{Registry, Status};
use trustformers_migrate::report::preview::Preview;
use trustformers_migrate::size::human;
use trustformers_migrate::status::InstallStatus;
use trustformers_migrate::transaction::audit::HistoryItem;
use trustformers_migrate::transaction::backup::BackupMetadata;
use trustformers_migrate::transaction::remote::RemoteBackup;
use trustformers_migrate::verify::Validation;
use trustformers_migrate::{MigrationInfo, MigrationResult};

const ERROR: anstyle::Style = anstyle::AnsiColor::Red.on_default().bold();
const WARNING: anstyle::Style = anstyle::AnsiColor::Yellow.on_default().bold();
const NOTE: anstyle::Style = anstyle::AnsiColor::Cyan.on_default().bold();

/// `--color`: applies to everything printed through anstream. `Auto` leaves it to anstream,
/// which colours a terminal only and honours `NO_COLOR` (and `CLICOLOR_FORCE`).
pub fn set_color(choice: anstream::ColorChoice) {
    choice.write_global();
}

/// Whether stderr gets colour under the `--color` choice: the logger writes it itself.
pub fn stderr_has_color() -> bool {
    anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never
}

pub fn eprint_error(text: &str) {
    anstream::eprintln!("{ERROR}error:{ERROR:#} {text}");
}

pub fn eprint_warning(text: &str) {
    anstream::eprintln!("{WARNING}warning:{WARNING:#} {text}");
}

pub fn eprint_note(text: &str) {
    anstream::eprintln!("{NOTE}note:{NOTE:#} {text}");
}

/// The operator-facing summary of a migration.
pub fn result(r: &MigrationResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "migration {} → {} of {}: {:?}",
        r.from, r.to, r.path, r.overall_status
    );
    if !r.hops.is_empty() {
        let _ = writeln!(out, "  hops: {}", r.hops.join(", "));
    }
    for s in &r.steps {
        let _ = write!(
            out,
            "  {:<9} {:?} in {} ms",
            s.name, s.status, s.duration_ms
        );
        // Steps that move no files (preflight, journal, commit) say only how long they took.
        if s.files > 0 || s.bytes > 0 {
            let _ = write!(out, ": {} files, {} bytes", s.files, s.bytes);
        }
        if s.records > 0 {
            let _ = write!(out, ", {} records", s.records);
        }
        if s.records_by_program > 0 {
            let _ = write!(
                out,
                " ({} by the hops' declared programs)",
                s.records_by_program
            );
        }
        if s.quarantined > 0 {
            let _ = write!(out, ", {} quarantined", s.quarantined);
        }
        if s.duration_ms >= 100 && s.bytes > 0 {
            let _ = write!(out, ", {}/s", human(s.bytes_per_sec));
        }
        out.push('\n');
        if let Some(e) = &s.error {
            let _ = writeln!(out, "    error: {}", e.replace('\n', "\n    "));
        }
    }
    // The backup has a line of its own; its step also reports it as a warning.
    let warnings: Vec<&String> = r
        .warnings()
        .filter(|w| r.backup_path.is_none() || !w.starts_with("backup: "))
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(out, "  warnings:");
        for w in warnings {
            let _ = writeln!(out, "    - {w}");
        }
    }
    if let Some(p) = &r.backup_path {
        let _ = writeln!(out, "  backup: {p}");
    }
    if let Some(p) = &r.preview {
        out.push_str(&preview(p));
    }
    if let Some(i) = &r.isolation {
        let _ = writeln!(out, "  isolation: {}", i.summary());
    }
    let _ = writeln!(
        out,
        "  total: {} ms, peak memory {}",
        r.duration_ms,
        human(r.peak_rss_bytes)
    );
    out
}

/// A dry run's config diff and sample record changes.
fn preview(p: &Preview) -> String {
    let mut out = String::new();
    if let Some(diff) = &p.config_diff {
        let _ = writeln!(out, "  config change:");
        for line in diff.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    if !p.records.is_empty() {
        let _ = writeln!(out, "  sample record changes:");
        for r in &p.records {
            let _ = writeln!(
                out,
                "    {}:{}\n    - {}\n    + {}",
                r.file, r.line, r.before, r.after
            );
        }
    }
    out
}

/// Human-readable `plugins pin` output.
pub fn pinned(pinned: &[Pinned]) -> String {
    let mut out = String::new();
    if pinned.is_empty() {
        out.push_str("no plugin folder to pin: pass one, or use --plugin-dir\n");
    }
    for p in pinned {
        out.push_str(&format!(
            "{}: pinned {} plugin(s)\n",
            p.lock.display(),
            p.plugins.len()
        ));
        for pin in &p.plugins {
            out.push_str(&format!(
                "  {}  {} {} → {}  sha256 {}\n",
                pin.file, pin.name, pin.from, pin.to, pin.sha256
            ));
        }
        for s in &p.skipped {
            out.push_str(&format!("  not pinned: {}\n", s.reason));
        }
    }
    if let Some(i) = pinned.last().and_then(|p| p.isolation.as_ref()) {
        let _ = writeln!(out, "isolation: {}", i.summary());
    }
    out
}

/// Human-readable `plugins verify` output. Without any lock (`pinned` false) a folder's
/// missing lock is a note, not a failure.
pub fn verified(folders: &[VerifiedFolder], pinned: bool) -> String {
    let mut out = String::new();
    if folders.is_empty() {
        out.push_str("no plugin folder to verify\n");
    }
    if !pinned && !folders.is_empty() {
        out.push_str("nothing is pinned (no plugins.lock): permissions checked only; `migrate plugins pin` pins the plugins found\n");
    }
    for f in folders {
        let files_ok = f.files.iter().all(|v| v.problem.is_none());
        let verdict = match (f.ok(), pinned) {
            (true, _) => "ok",
            (false, false) if files_ok => "not pinned",
            _ => "FAILED",
        };
        out.push_str(&format!("{}: {verdict}\n", f.dir.display()));
        for v in &f.files {
            match &v.problem {
                None => out.push_str(&format!("  ok       {}\n", v.path.display())),
                Some(p) => out.push_str(&format!("  REFUSED  {p}\n")),
            }
            for w in &v.warnings {
                out.push_str(&format!("  warning  {w}\n"));
            }
        }
        let label = if pinned { "PROBLEM" } else { "note   " };
        for p in &f.problems {
            out.push_str(&format!("  {label}  {p}\n"));
        }
    }
    out
}

/// `migrate history`.
pub fn history(root: &Path, items: &[HistoryItem]) -> String {
    let mut out = String::new();
    if items.is_empty() {
        let file = trustformers_migrate::transaction::audit::Audit::file(root);
        let _ = writeln!(out, "no migrations recorded in {}", file.display());
    }
    for h in items {
        let backup = h.backup.as_deref().unwrap_or("no backup");
        let _ = writeln!(
            out,
            "{}  {} → {}  {:<10} {:>8} ms  {}@{}  {backup}",
            h.time, h.from, h.to, h.status, h.duration_ms, h.user, h.host
        );
        if let Some(e) = &h.error {
            let _ = writeln!(out, "    error: {}", e.lines().next().unwrap_or(""));
        }
    }
    out
}

/// `migrate backups list`.
pub fn backups<E: std::fmt::Display>(
    dir: &Path,
    backups: &[(std::path::PathBuf, Result<BackupMetadata, E>)],
) -> String {
    let mut out = String::new();
    if backups.is_empty() {
        let _ = writeln!(out, "no backups in {}", dir.display());
    }
    for (p, m) in backups {
        let _ = match m {
            Ok(m) => writeln!(
                out,
                "{}  {} {} → {}  {} files  {}  {}",
                m.created,
                m.kind,
                m.source_version,
                m.target_version,
                m.files.len(),
                encrypted(m),
                p.display()
            ),
            Err(e) => writeln!(out, "{}  UNREADABLE: {e}", p.display()),
        };
    }
    out
}

fn encrypted(m: &BackupMetadata) -> &'static str {
    if m.encryption.is_some() {
        "encrypted"
    } else {
        "not encrypted"
    }
}

/// `migrate backups list --remote`.
pub fn remote_backups(url: &str, backups: &[RemoteBackup]) -> String {
    let mut out = String::new();
    if backups.is_empty() {
        let _ = writeln!(out, "no backups at {url}");
    }
    for b in backups {
        let _ = match (&b.metadata, &b.problem) {
            (Some(m), _) => writeln!(
                out,
                "{}  {} {} → {}  {} files  {}  {}",
                m.created,
                m.kind,
                m.source_version,
                m.target_version,
                m.files.len(),
                encrypted(m),
                b.url
            ),
            (None, problem) => writeln!(
                out,
                "{}  INCOMPLETE OR UNREADABLE: {}",
                b.url,
                problem.as_deref().unwrap_or("no metadata.json")
            ),
        };
    }
    out
}

/// `migrate info`.
pub fn info(info: &MigrationInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "migration path {} → {} ({} hops)",
        info.from,
        info.to,
        info.steps.len()
    );
    for (i, s) in info.steps.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}. {} → {}  [{}] {}",
            i + 1,
            s.from,
            s.to,
            s.plugin,
            s.description
        );
    }
    if !info.breaking_changes.is_empty() {
        let _ = writeln!(out, "breaking changes:");
        for c in &info.breaking_changes {
            let _ = writeln!(out, "  - {c}");
        }
    }
    if let Some(i) = &info.isolation {
        let _ = writeln!(out, "isolation: {}", i.summary());
    }
    let _ = match (info.estimated_duration_secs, info.data_bytes, info.model_bytes) {
        (Some(secs), Some(d), Some(m)) => writeln!(out, "estimated duration: {secs:.1} s ({d} bytes of data, {m} bytes of models)"),
        _ => writeln!(out, "estimated duration: about 25 s per GB of data and 3 s per GB of models (pass --path for this installation's sizes)"),
    };
    out
}

/// `migrate validate`.
pub fn validation(report: &Validation) -> String {
    let mut out = String::new();
    let verdict = if report.ok() { "valid" } else { "INVALID" };
    let _ = writeln!(
        out,
        "{} as {}: {verdict} ({} files, {} records checked)",
        report.path, report.version, report.files_checked, report.records_checked
    );
    for f in &report.findings {
        let _ = writeln!(
            out,
            "  {:?} [{:?}/{}] {}: {}",
            f.severity, f.kind, f.rule, f.path, f.message
        );
    }
    out
}

/// `migrate plugins list`.
pub fn plugins(registry: &Registry) -> String {
    let mut out = String::new();
    if let Some(i) = &registry.isolation {
        let _ = writeln!(out, "isolation: {}", i.summary());
    }
    let search: Vec<String> = registry
        .search_path
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let _ = writeln!(out, "search path: {}", search.join(":"));
    if registry.entries.is_empty() {
        let _ = writeln!(out, "no plugin files found");
    }
    for e in &registry.entries {
        let (name, hop, rules, abi) = match &e.descriptor {
            Some(d) => {
                let r = [
                    ("config", d.rules.config),
                    ("data", d.rules.data),
                    ("model", d.rules.model),
                ]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(",");
                (
                    d.name.clone(),
                    format!("{} → {}", d.from, d.to),
                    r,
                    d.api_version.clone(),
                )
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let status = match &e.status {
            Status::Active => "active".to_owned(),
            Status::Shadowed { by } => format!("shadowed by {}", by.display()),
            Status::Conflict { with } => format!("CONFLICT with {}", with.display()),
            Status::Invalid { reason } => format!("INVALID: {reason}"),
            Status::Refused { reason } => format!("REFUSED: {reason}"),
        };
        let status = if e.warnings.is_empty() {
            status
        } else {
            format!(
                "{status}; INSECURE, loaded because of --allow-insecure-plugins: {}",
                e.warnings.join("; ")
            )
        };
        let _ = writeln!(
            out,
            "{name:<14} {hop:<18} rules={rules:<18} abi={abi:<7} {}  [{status}]",
            e.path.display()
        );
    }
    out
}

/// `migrate status`.
pub fn status(s: &InstallStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "installation: {}", s.path.display());
    let _ = writeln!(out, "version:      {}", s.version);
    let _ = writeln!(
        out,
        "latest:       {} (the newest release the loaded plugins reach)",
        s.latest
    );
    if s.pending.is_empty() {
        let _ = writeln!(out, "pending:      none, up to date");
    } else {
        let _ = writeln!(out, "pending:      {} hop(s)", s.pending.len());
        for h in &s.pending {
            let _ = writeln!(
                out,
                "  {} → {}  [{}] {}",
                h.from,
                h.to,
                h.plugin,
                h.file.display()
            );
        }
    }
    match &s.last_migration {
        Some(m) => {
            let _ = writeln!(
                out,
                "last migration: {} → {} {} at {} by {}@{}",
                m.from, m.to, m.status, m.time, m.user, m.host
            );
        }
        None => {
            let _ = writeln!(out, "last migration: none recorded");
        }
    }
    let _ = write!(
        out,
        "backups:      {} in {}",
        s.backups.count,
        s.backups.dir.display()
    );
    match &s.backups.newest {
        Some(b) => {
            let _ = writeln!(
                out,
                "; newest: {} ({} → {}, {})",
                b.path.display(),
                b.source_version,
                b.target_version,
                b.created
            );
        }
        None => out.push('\n'),
    }
    if let Some(i) = &s.isolation {
        let _ = writeln!(out, "isolation:    {}", i.summary());
    }
    out
}

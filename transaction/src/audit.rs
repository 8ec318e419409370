//! The audit trail: `.migrate/audit.jsonl`, one JSON object per action, appended and synced
//! before the action is reported, so that a crash never loses an entry that was announced.
//! `migrate history` reads it back: the history is the audit trail, filtered.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::confine::{join, Root};
use crate::error::{io, Result};
use crate::identity;
use crate::layout::{AUDIT_FILE, TOOL_DIR};

/// One line of the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub time: String,
    pub unix: i64,
    pub action: String,
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub path: String,
    /// Action-specific fields (versions, step metrics, checksums, …).
    #[serde(flatten)]
    pub details: serde_json::Map<String, Value>,
}

/// Appends to an installation's audit trail.
#[derive(Debug, Clone)]
pub struct Audit {
    root: PathBuf,
}

impl Audit {
    pub fn new(root: &Path) -> Audit {
        Audit {
            root: root.to_path_buf(),
        }
    }

    pub fn file(root: &Path) -> PathBuf {
        root.join(TOOL_DIR).join(AUDIT_FILE)
    }

    /// Records `action`; `details` must be a JSON object. The caller decides what a failure
    /// means: a migration reports it as a warning, never turning a good migration into a failed
    /// one.
    pub fn record(&self, action: &str, details: Value) -> Result<()> {
        let now = time::OffsetDateTime::now_utc();
        let entry = Entry {
            time: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            unix: now.unix_timestamp(),
            action: action.to_owned(),
            user: identity::user_name(),
            host: identity::host_name(),
            pid: std::process::id(),
            path: self.root.display().to_string(),
            details: match details {
                Value::Object(m) => m,
                other => [("details".to_owned(), other)].into_iter().collect(),
            },
        };
        let path = Audit::file(&self.root);
        let failed = || io(format!("cannot append to {}", path.display()));
        let mut line = serde_json::to_vec(&entry).map_err(|e| failed()(e.into()))?;
        line.push(b'\n');
        // Private whatever the umask (`.migrate/` 0700, the trail 0600), and reached from the
        // root without following a link: a `.migrate` swapped for a link never redirects it.
        let root = Root::open(&self.root)?;
        root.create_dir(TOOL_DIR, 0o700)?;
        let mut file = root.open_append(&join(TOOL_DIR, AUDIT_FILE), 0o600)?;
        let meta = file.metadata().map_err(failed())?;
        if meta.uid() == identity::current_uid() && meta.mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(failed())?;
        }
        file.write_all(&line).map_err(failed())?;
        file.sync_data().map_err(failed())
    }
}

/// The most of an audit trail `history` reads (a line per run: years of them fit).
const MAX_AUDIT: u64 = 256 << 20;

/// Every entry of an installation's audit trail, oldest first. Lines that do not parse (a
/// torn write from a crash mid-append) are skipped.
pub fn read(root: &Path) -> Vec<Entry> {
    // Through the confinement layer, as every read under the installation.
    let Ok(bytes) = Root::open(root).and_then(|r| r.read(&join(TOOL_DIR, AUDIT_FILE), MAX_AUDIT))
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One past migration, as `migrate history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryItem {
    pub time: String,
    pub from: String,
    pub to: String,
    pub status: String,
    pub duration_ms: u64,
    pub backup: Option<String>,
    pub user: String,
    pub host: String,
    pub steps: Value,
    pub peak_rss_bytes: u64,
    pub error: Option<String>,
}

/// The migrations recorded in the audit trail: their `migration_finished` entries, and the
/// runs that started and never finished (killed or crashed: the next command finished or
/// undid them), shown as `Interrupted`.
pub fn history(root: &Path) -> Vec<HistoryItem> {
    let entries = read(root);
    let mut shown = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match e.action.as_str() {
            "migration_finished" => shown.push(e.clone()),
            "migration_started" => {
                let finished = entries[i + 1..]
                    .iter()
                    .take_while(|n| !(n.action == "migration_started" && n.pid != e.pid))
                    .any(|n| n.action == "migration_finished" && n.pid == e.pid);
                if !finished {
                    let mut crashed = e.clone();
                    crashed
                        .details
                        .insert("status".into(), Value::from("Interrupted"));
                    crashed.details.insert(
                        "error".into(),
                        Value::from(format!(
                            "the run (PID {}) ended without finishing: it was killed or crashed; the next migrate command on the installation finished or undid it (see the `recovery` entries in .migrate/audit.jsonl)",
                            e.pid
                        )),
                    );
                    shown.push(crashed);
                }
            }
            _ => {}
        }
    }
    shown
        .into_iter()
        .map(|e| {
            let get = |k: &str| e.details.get(k).cloned().unwrap_or(Value::Null);
            let text = |k: &str| get(k).as_str().map(str::to_owned);
            HistoryItem {
                time: e.time.clone(),
                from: text("from").unwrap_or_default(),
                to: text("to").unwrap_or_default(),
                status: text("status").unwrap_or_default(),
                duration_ms: get("duration_ms").as_u64().unwrap_or(0),
                backup: text("backup"),
                user: e.user.clone(),
                host: e.host.clone(),
                steps: get("steps"),
                peak_rss_bytes: get("peak_rss_bytes").as_u64().unwrap_or(0),
                error: text("error"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `.migrate` swapped for a link to a folder outside: the trail is neither appended to nor
    /// read through it; a real `.migrate` works as before, the trail 0600 whatever the umask.
    #[test]
    fn the_trail_is_never_written_or_read_through_a_link() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("install");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(
            outside.join(AUDIT_FILE),
            "{\"time\":\"t\",\"unix\":1,\"action\":\"forged\",\"user\":\"u\",\"host\":\"h\",\"pid\":1,\"path\":\"p\",\"details\":{}}\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, root.join(TOOL_DIR)).unwrap();
        let audit = Audit::new(&root);
        let e = audit
            .record("migrate", serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains(TOOL_DIR) && e.contains("link"), "{e}");
        assert_eq!(
            std::fs::read_to_string(outside.join(AUDIT_FILE))
                .unwrap()
                .lines()
                .count(),
            1,
            "appended through the link"
        );
        assert!(read(&root).is_empty(), "read through the link");

        std::fs::remove_file(root.join(TOOL_DIR)).unwrap();
        audit
            .record("migrate", serde_json::json!({"n": 1}))
            .unwrap();
        audit
            .record("rollback", serde_json::json!({"n": 2}))
            .unwrap();
        let entries = read(&root);
        assert_eq!(
            entries
                .iter()
                .map(|e| e.action.as_str())
                .collect::<Vec<_>>(),
            ["migrate", "rollback"]
        );
        let mode = std::fs::metadata(Audit::file(&root))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

//! Names of what the tool keeps inside an installation. One place, so that the journal, the
//! lock, the audit trail and the engine agree on where things are.

/// Owned by the tool: lock, journal, staging, audit trail. Never migrated.
pub const TOOL_DIR: &str = ".migrate";
/// The commit journal inside [`TOOL_DIR`].
pub const JOURNAL_FILE: &str = "journal.json";
/// The audit trail inside [`TOOL_DIR`].
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The lock file inside [`TOOL_DIR`].
pub const LOCK_FILE: &str = "lock";
/// Default backup folder, below the installation root.
pub const BACKUPS_DIR: &str = "backups";
/// The release marker at the root of an installation.
pub const VERSION_FILE: &str = "VERSION";

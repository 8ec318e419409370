//! How the engine tells its user what is happening without printing: progress, notices and
//! warnings go to an [`Observer`] that the caller supplies. The `migrate` binary draws bars or
//! plain lines from it; an embedding program may log, forward or ignore it ([`Silent`]).

/// Receives what a run has to say while it runs. Every method has an empty default, so an
/// implementation only overrides what it shows. Called from worker threads: keep it cheap.
pub trait Observer: Send + Sync {
    /// A step (`preflight`, `config`, `data`, `models`, `verify`, `journal`, `backup`,
    /// `commit`; a rollback's `restore`; `validate`'s `data` and `models`) starts;
    /// `total_bytes` is what it will read, 0 when unknown.
    fn step_started(&self, _step: &str, _total_bytes: u64) {}
    /// The totals so far of the step started last. The steps that read the data report as
    /// they go: `data` (bytes of the installation's data files, and records), `models` (after
    /// each model), `verify` (bytes of the staged data files) and `backup` (bytes of the files
    /// archived), each up to the `total_bytes` it started with. `validate` reports the bytes
    /// of the data files read and of the model files hashed (no records).
    fn step_progress(&self, _done_bytes: u64, _records: u64) {}
    /// `step` ended, `ok` or failed, after `took` (the duration the report gives it; `None`
    /// for a step the worker was stopped in, which nobody timed to its end). Steps end in the
    /// order they started but one: the data step ends when its output is on disk, which the
    /// host sees to while the `models` and `verify` steps run, so in a run that goes on its
    /// end comes after theirs.
    fn step_finished(&self, _step: &str, _ok: bool, _took: Option<std::time::Duration>) {}
    /// Something the operator should know that is not a problem (a recovery that happened).
    fn notice(&self, _message: &str) {}
    /// Something went wrong without failing the run (an audit entry that was not written).
    fn warning(&self, _message: &str) {}
    /// Plugin code is about to run.
    fn calling(&self, _call: &PluginCall) {}
    /// The call announced with this id returned.
    fn returned(&self, _id: u64) {}
    /// A line the plugin worker wrote to its stderr (a plugin's own messages, a panic).
    fn worker_output(&self, _line: &str) {}
}

/// Shows nothing: the default of [`crate::VersionMigrator`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

/// A call into plugin code, announced before it is made so that, if the plugin takes its
/// process down, the supervisor can say exactly what it was doing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginCall {
    /// Unique within a run; [`Observer::returned`] names it again.
    pub id: u64,
    pub plugin: String,
    /// `1.0.0 → 2.0.0`.
    pub hop: String,
    /// `config`, `data` or `model`.
    pub kind: String,
    /// The file or folder being migrated, relative to the installation root.
    pub file: String,
    /// For data: the first and last line (or record, in a `*.json` document) of the batch.
    pub places: Option<(u64, u64)>,
}

//! The three rule interfaces a hop plugin implements, in plain Rust, and the [`Hop`] that bundles
//! them for [`export_hop!`](crate::export_hop).
//!
//! Rules are synchronous and take no host types: each plugin links its own std, tokio and
//! tracing, so anything shared with the host travels as data.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::descriptor::HopDescriptor;
use crate::model::{ModelFolder, ModelOptions, ModelOutcome};
use crate::raw::RawRecord;
use crate::view::{Edits, RecordView};

/// Defined in [`crate::error`], which every helper module imports; re-exported here, where they
/// were until 1.4.0.
pub use crate::error::{FieldError, RuleError};

/// Moved to `batch` in 1.4.0; the host uses this path. Not for plugin authors.
#[doc(hidden)]
pub use crate::batch::split_records;

/// A migrated config file and what the operator should know about it:
/// `ConfigOutcome::new(doc.to_string()).warning("…")`.
///
/// Exhaustive within major 1 (plugins built against 1.x build it with a literal); build it
/// with [`ConfigOutcome::new`], which keeps working when it gains a field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOutcome {
    pub content: String,
    /// E.g. keys the hop does not know and kept as they were.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl ConfigOutcome {
    /// The migrated file, without warnings. Since 1.4.0.
    pub fn new(content: impl Into<String>) -> Self {
        ConfigOutcome {
            content: content.into(),
            warnings: Vec::new(),
        }
    }

    /// Adds a warning for the operator. Since 1.4.0.
    pub fn warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Adds warnings for the operator. Since 1.4.0.
    pub fn warnings(mut self, warnings: impl IntoIterator<Item = String>) -> Self {
        self.warnings.extend(warnings);
        self
    }
}

/// Rewrites `config/server.toml` from one release's format to the next.
pub trait ConfigMigrationRule: Send + Sync {
    /// Edit the document, do not re-serialise it: comments and layout must survive.
    fn migrate(&self, content: &str) -> Result<ConfigOutcome, RuleError>;
    fn description(&self) -> String;
}

/// Rewrites one data record (a JSON object) in place.
///
/// Implement [`migrate_record`](Self::migrate_record) for simplicity, or
/// [`migrate_raw`](Self::migrate_raw) for speed (values the rule does not touch are then never
/// parsed); each has a default in terms of the other, so implement at least one.
pub trait DataMigrationRule: Send + Sync {
    /// A refused record is left as the caller gave it.
    fn migrate_record(&self, record: &mut Map<String, Value>) -> Result<(), FieldError> {
        let mut raw = RawRecord::from_map(record.clone());
        self.migrate_raw(&mut raw)?;
        *record = raw.to_map()?;
        Ok(())
    }

    fn migrate_raw(&self, record: &mut RawRecord<'_>) -> Result<(), FieldError> {
        let mut map = record.to_map()?;
        self.migrate_record(&mut map)?;
        *record = RawRecord::from_map(map);
        Ok(())
    }

    fn description(&self) -> String;
}

/// Rewrites data records by returning edits of a view of each record the host has parsed and
/// validated once, rather than text: see [`crate::view`]. The interface the host runs fastest
/// (one read and one write of each record however many hops there are). Since 1.5.0.
///
/// ```ignore
/// impl DataEditRule for AddFlag {
///     fn edit(&self, record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError> {
///         record.expect_schema_version(Some(3))?;
///         edits.set("schema_version", "4");
///         Ok(())
///     }
///     fn description(&self) -> String { "schema_version 3 → 4".into() }
/// }
/// ```
pub trait DataEditRule: Send + Sync {
    /// Reads `record` and says what changes in `edits`. A refused record (an error) is left
    /// as it was: its edits are dropped.
    fn edit(&self, record: &RecordView<'_>, edits: &mut Edits) -> Result<(), FieldError>;

    fn description(&self) -> String;

    /// Runs the rule on a parsed record (tests, tools): printed, edited, read back. A refused
    /// record is left as it was.
    fn edit_map(&self, record: &mut Map<String, Value>) -> Result<(), FieldError> {
        crate::view::edit_map(&|view, edits| self.edit(view, edits), record)
    }
}

/// Migrates one model folder. Reads through `model` and writes only via `model.write*`,
/// which land in the staging folder the host owns.
pub trait ModelMigrationRule: Send + Sync {
    fn migrate(
        &self,
        model: &ModelFolder,
        options: &ModelOptions,
    ) -> Result<ModelOutcome, RuleError>;
    fn description(&self) -> String;
}

/// Everything one plugin provides; built by the plugin and handed to [`crate::export_hop!`].
pub struct Hop {
    pub(crate) descriptor: HopDescriptor,
    pub(crate) config: Option<Box<dyn ConfigMigrationRule>>,
    pub(crate) data: Option<Box<dyn DataMigrationRule>>,
    pub(crate) data_edits: Option<Box<dyn DataEditRule>>,
    pub(crate) model: Option<Box<dyn ModelMigrationRule>>,
}

impl Hop {
    pub fn new(descriptor: HopDescriptor) -> Self {
        Hop {
            descriptor,
            config: None,
            data: None,
            data_edits: None,
            model: None,
        }
    }

    pub fn config(mut self, rule: impl ConfigMigrationRule + 'static) -> Self {
        self.config = Some(Box::new(rule));
        self
    }

    pub fn data(mut self, rule: impl DataMigrationRule + 'static) -> Self {
        self.data = Some(Box::new(rule));
        self
    }

    /// The data rule, as edits of the host's view of each record (since 1.5.0). It replaces a
    /// [`data`](Self::data) rule given too: a hop has one data rule.
    pub fn data_edits(mut self, rule: impl DataEditRule + 'static) -> Self {
        self.data_edits = Some(Box::new(rule));
        self
    }

    /// Declares what the [`data_edits`](Self::data_edits) rule does to the common record, for
    /// hosts (1.7 and later) to run natively with every other hop's declaration in one pass;
    /// the rule still decides every record the program leaves to it, and runs in older hosts.
    /// See the [`program`](crate::program) module. Since 1.7.0.
    pub fn data_program(mut self, program: crate::program::DataProgram) -> Self {
        // A program serialises to JSON whatever its steps; `None` would only drop it.
        self.descriptor.data_program = serde_json::to_value(program).ok();
        self
    }

    pub fn model(mut self, rule: impl ModelMigrationRule + 'static) -> Self {
        self.model = Some(Box::new(rule));
        self
    }

    /// The descriptor as the host sees it, with the rule flags filled in.
    pub fn descriptor(&self) -> HopDescriptor {
        let mut d = self.descriptor.clone();
        d.rules.config = self.config.is_some();
        d.rules.data = self.data.is_some() || self.data_edits.is_some();
        d.rules.data_edits = self.data_edits.is_some();
        d.rules.model = self.model.is_some();
        d
    }

    pub fn config_rule(&self) -> Option<&dyn ConfigMigrationRule> {
        self.config.as_deref()
    }

    pub fn data_rule(&self) -> Option<&dyn DataMigrationRule> {
        self.data.as_deref()
    }

    pub fn data_edit_rule(&self) -> Option<&dyn DataEditRule> {
        self.data_edits.as_deref()
    }

    pub fn model_rule(&self) -> Option<&dyn ModelMigrationRule> {
        self.model.as_deref()
    }

    /// Runs the data rule over newline-separated records, as the host does through the ABI.
    /// Records that fail are left out of `out` and listed in the returned failures.
    /// An edit rule runs as the host runs it: each record indexed once, edited, written once.
    pub fn migrate_data_batch(&self, batch: &[u8], out: &mut Vec<u8>) -> Vec<(u64, RuleError)> {
        if let Some(rule) = self.data_edit_rule() {
            return crate::batch::run_edits(batch, out, &|view, edits| rule.edit(view, edits));
        }
        match self.data_rule() {
            Some(rule) => crate::batch::run(batch, out, &|record| rule.migrate_raw(record)),
            None => {
                out.extend_from_slice(batch);
                Vec::new()
            }
        }
    }
}

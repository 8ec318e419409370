//! The three rule interfaces a hop plugin implements, in plain Rust.
//!
//! Rules are synchronous and take no host types: each plugin links its own std, tokio and
//! tracing, so anything shared with the host travels as data.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::descriptor::HopDescriptor;
use crate::model::{ModelFolder, ModelOptions, ModelOutcome};

/// Why a rule refused its input. Serialised across the ABI; the host adds the file name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", self.render())]
pub struct RuleError {
    pub message: String,
    /// The key or field concerned, e.g. `port` or `usage.output_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// 1-based line in the input, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// True when the plugin panicked rather than refused the input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub panicked: bool,
}

impl RuleError {
    pub fn new(message: impl Into<String>) -> Self {
        RuleError {
            message: message.into(),
            field: None,
            line: None,
            panicked: false,
        }
    }

    pub fn at_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        RuleError {
            field: Some(field.into()),
            ..RuleError::new(message)
        }
    }

    pub fn with_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(line) = self.line {
            out.push_str(&format!("line {line}: "));
        }
        if let Some(field) = &self.field {
            out.push_str(&format!("`{field}`: "));
        }
        out.push_str(&self.message);
        out
    }
}

impl From<FieldError> for RuleError {
    fn from(e: FieldError) -> Self {
        RuleError::at_field(e.field, e.message)
    }
}

impl From<std::io::Error> for RuleError {
    fn from(e: std::io::Error) -> Self {
        RuleError::new(e.to_string())
    }
}

/// A record refused by a data rule: which field, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A migrated config file and what the operator should know about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOutcome {
    pub content: String,
    /// E.g. keys the hop does not know and kept as they were.
    #[serde(default)]
    pub warnings: Vec<String>,
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
        let mut raw = crate::raw::RawRecord::from_map(record.clone());
        self.migrate_raw(&mut raw)?;
        *record = raw.to_map()?;
        Ok(())
    }

    fn migrate_raw(&self, record: &mut crate::raw::RawRecord<'_>) -> Result<(), FieldError> {
        let mut map = record.to_map()?;
        self.migrate_record(&mut map)?;
        *record = crate::raw::RawRecord::from_map(map);
        Ok(())
    }

    fn description(&self) -> String;
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
    pub(crate) model: Option<Box<dyn ModelMigrationRule>>,
}

impl Hop {
    pub fn new(descriptor: HopDescriptor) -> Self {
        Hop {
            descriptor,
            config: None,
            data: None,
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

    pub fn model(mut self, rule: impl ModelMigrationRule + 'static) -> Self {
        self.model = Some(Box::new(rule));
        self
    }

    /// The descriptor as the host sees it, with the rule flags filled in.
    pub fn descriptor(&self) -> HopDescriptor {
        let mut d = self.descriptor.clone();
        d.rules.config = self.config.is_some();
        d.rules.data = self.data.is_some();
        d.rules.model = self.model.is_some();
        d
    }

    pub fn config_rule(&self) -> Option<&dyn ConfigMigrationRule> {
        self.config.as_deref()
    }

    pub fn data_rule(&self) -> Option<&dyn DataMigrationRule> {
        self.data.as_deref()
    }

    pub fn model_rule(&self) -> Option<&dyn ModelMigrationRule> {
        self.model.as_deref()
    }

    /// Runs the data rule over newline-separated records, as the host does through the ABI.
    /// Records that fail are left out of `out` and listed in the returned failures.
    pub fn migrate_data_batch(&self, batch: &[u8], out: &mut Vec<u8>) -> Vec<(u64, RuleError)> {
        let mut failures = Vec::new();
        let Some(rule) = self.data_rule() else {
            out.extend_from_slice(batch);
            return failures;
        };
        out.reserve(batch.len() + batch.len() / 4);
        // One UTF-8 check for the whole batch costs ~1/50 of one per record; only a batch
        // with a bad byte pays for the per-record check (which names the record).
        let text = std::str::from_utf8(batch).ok();
        let mut record = crate::raw::RawRecord::default();
        for (index, line) in split_records(batch).enumerate() {
            let mark = out.len();
            // Lines split at `\n` (ASCII) from valid UTF-8 are valid UTF-8: slice the text.
            let start = line.as_ptr() as usize - batch.as_ptr() as usize;
            let line_text = text.and_then(|t| t.get(start..start + line.len()));
            if let Err(e) = migrate_line_into(rule, &mut record, line, line_text, out) {
                out.truncate(mark);
                failures.push((index as u64, e));
            }
        }
        failures
    }
}

/// Splits a batch into records: one per `\n`, a trailing `\n` does not start a new record.
pub fn split_records(batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = batch.strip_suffix(b"\n").unwrap_or(batch);
    let mut rest = (!batch.is_empty()).then_some(trimmed);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b'\n', current) {
            Some(i) => {
                rest = Some(&current[i + 1..]);
                Some(&current[..i])
            }
            None => rest.take(),
        }
    })
}

/// Reads one record into `record` (storage shared by a batch), applies the rule and appends
/// the result plus `\n` to `out`. `text`: the line as text, when its batch was checked whole.
fn migrate_line_into<'a>(
    rule: &dyn DataMigrationRule,
    record: &mut crate::raw::RawRecord<'a>,
    line: &'a [u8],
    text: Option<&'a str>,
    out: &mut Vec<u8>,
) -> Result<(), RuleError> {
    match text {
        Some(text) => record.read(text)?,
        None => *record = crate::raw::RawRecord::parse(line)?,
    }
    rule.migrate_raw(record)?;
    record.write(out)?;
    out.push(b'\n');
    Ok(())
}

//! The Map-based rule this hop had before it worked on raw records, kept verbatim as the
//! reference the raw rule must agree with (see `equivalence`).

use plugin_api::json::{expect_schema_version, opt_f64, opt_str, opt_u64, wrong_type};
use plugin_api::{DataMigrationRule, FieldError};
use serde_json::{Map, Value};

use crate::SCHEMA_VERSION;

/// The data rule of this hop, as it was.
pub struct AddSchemaVersion;

impl DataMigrationRule for AddSchemaVersion {
    fn migrate_record(&self, record: &mut Map<String, Value>) -> Result<(), FieldError> {
        expect_schema_version(record, None)?;
        check_known_fields(record)?;
        record.insert("schema_version".to_owned(), Value::from(SCHEMA_VERSION));
        Ok(())
    }

    fn description(&self) -> String {
        "every record gets \"schema_version\": 1 as its last key".to_owned()
    }
}

/// Type-checks the known fields of a 0.1.0 request-log record that are present.
fn check_known_fields(record: &Map<String, Value>) -> Result<(), FieldError> {
    opt_str(record, "id")?;
    opt_str(record, "model")?;
    opt_u64(record, "prompt_tokens")?;
    opt_u64(record, "completion_tokens")?;
    opt_f64(record, "latency_ms")?;
    check_timestamp(record)
}

/// `timestamp` is unix seconds (an integer), already a string, or null; the 1.0.0 → 2.0.0 hop
/// converts the first and keeps the others.
fn check_timestamp(record: &Map<String, Value>) -> Result<(), FieldError> {
    match record.get("timestamp") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
        Some(other) => Err(wrong_type(
            "timestamp",
            "an integer, a string or null",
            other,
        )),
    }
}

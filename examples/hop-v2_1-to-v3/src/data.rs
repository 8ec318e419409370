//! Data records 2.1.0 → 3.0.0.
//!
//! * `schema_version` must be 3 and becomes 4, keeping its position.
//! * `metrics.tokens_per_second` is renamed `metrics.output_tokens_per_second` (3.0.0 also
//!   reports input throughput), keeping its value and position. `metrics`, when present, must
//!   be an object. Records without `metrics` (API key documents, for one) only get the new
//!   `schema_version`.

use plugin_api::json::{expect_schema_version, rename_key, type_name};
use plugin_api::serde_json::{Map, Value};
use plugin_api::{DataMigrationRule, FieldError};

use crate::{SCHEMA_VERSION, SOURCE_SCHEMA_VERSION};

/// The data rule of this hop.
pub struct OutputThroughput;

impl DataMigrationRule for OutputThroughput {
    fn migrate_record(&self, record: &mut Map<String, Value>) -> Result<(), FieldError> {
        expect_schema_version(record, Some(SOURCE_SCHEMA_VERSION))?;
        match record.get_mut("metrics") {
            None => {}
            Some(Value::Object(metrics)) => {
                rename_key(metrics, "tokens_per_second", "output_tokens_per_second").map_err(
                    |mut e| {
                        e.field = format!("metrics.{}", e.field);
                        e
                    },
                )?;
            }
            Some(other) => {
                return Err(FieldError::new(
                    "metrics",
                    format!("expected an object, found {}", type_name(other)),
                ))
            }
        }
        record.insert("schema_version".to_owned(), Value::from(SCHEMA_VERSION));
        Ok(())
    }

    fn description(&self) -> String {
        "metrics.tokens_per_second → metrics.output_tokens_per_second; schema_version 3 → 4"
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::serde_json::{self, json};

    fn run(record: Value) -> Result<String, FieldError> {
        let Value::Object(mut record) = record else {
            panic!("not an object")
        };
        OutputThroughput.migrate_record(&mut record)?;
        Ok(serde_json::to_string(&record).unwrap())
    }

    #[test]
    fn renames_the_throughput_and_bumps_the_schema_in_place() {
        let out = run(json!({
            "id": "r1",
            "metrics": {"latency_ms": 120, "tokens_per_second": 250.0},
            "schema_version": 3,
            "timestamp": "2022-01-01T00:00:00Z"
        }))
        .unwrap();
        assert_eq!(
            out,
            r#"{"id":"r1","metrics":{"latency_ms":120,"output_tokens_per_second":250.0},"schema_version":4,"timestamp":"2022-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn records_without_metrics_only_change_schema_version() {
        let out = run(json!({"keys": [], "schema_version": 3})).unwrap();
        assert_eq!(out, r#"{"keys":[],"schema_version":4}"#);
    }

    #[test]
    fn a_record_of_another_release_is_refused() {
        let e = run(json!({"id": "r1", "schema_version": 2})).unwrap_err();
        assert_eq!(e.field, "schema_version");
    }

    #[test]
    fn metrics_must_be_an_object() {
        let e = run(json!({"metrics": 3, "schema_version": 3})).unwrap_err();
        assert_eq!(e.field, "metrics");
    }

    #[test]
    fn both_names_present_is_refused() {
        let record = json!({
            "metrics": {"tokens_per_second": 1, "output_tokens_per_second": 2},
            "schema_version": 3
        });
        assert_eq!(
            run(record).unwrap_err().field,
            "metrics.output_tokens_per_second"
        );
    }
}

//! Example hop plugin 2.1.0 → 3.0.0, written as a third party would write one.
//!
//! * `config/server.toml`: `[rate_limit] requests_per_minute` is renamed to `rpm`, keeping its
//!   value, its comments and its place ([`config`]).
//! * data records: `metrics.tokens_per_second` becomes `metrics.output_tokens_per_second`, and
//!   `schema_version` goes from 3 to 4 ([`data`]).
//! * models: `metadata.json` `schema_version` goes from 3 to 4 ([`model`]), so that
//!   `migrate validate --version 3.0.0` can check model folders too.
//!
//! See README.md for how to build, test and install it, and docs/plugins.md in the
//! trustformers-migrate repository for the whole guide.

pub mod config;
pub mod data;
pub mod model;

use plugin_api::{Hop, HopDescriptor};

/// Plugin name, as `migrate plugins list` shows it.
pub const NAME: &str = "v2_1_to_v3";
/// Release this hop migrates from.
pub const FROM: &str = "2.1.0";
/// Release this hop migrates to.
pub const TO: &str = "3.0.0";
/// `schema_version` of 2.1.0 records and `metadata.json`, the only one this hop accepts.
pub const SOURCE_SCHEMA_VERSION: u64 = 3;
/// `schema_version` this hop writes.
pub const SCHEMA_VERSION: u64 = 4;

/// The hop with its three rules; `export_hop!` exports it, and the tests drive it directly.
pub fn hop() -> Hop {
    let descriptor = HopDescriptor::new(
        NAME,
        FROM,
        TO,
        "Renames [rate_limit] requests_per_minute to rpm in server.toml, renames records' \
         metrics.tokens_per_second to output_tokens_per_second, and moves records and model \
         metadata to schema_version 4",
    )
    .target_schema_version(SCHEMA_VERSION)
    .breaking_change("server.toml: [rate_limit] requests_per_minute → [rate_limit] rpm")
    .breaking_change("data records: metrics.tokens_per_second → metrics.output_tokens_per_second");
    Hop::new(descriptor)
        .config(config::RenameRpm)
        .data(data::OutputThroughput)
        .model(model::SchemaVersion4)
}

plugin_api::export_hop!(hop());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_declares_the_hop_and_its_schema() {
        let d = hop().descriptor();
        assert_eq!(
            (d.name.as_str(), d.from.as_str(), d.to.as_str()),
            (NAME, FROM, TO)
        );
        assert!(d.rules.config && d.rules.data && d.rules.model);
        assert_eq!(d.target_schema_version, Some(SCHEMA_VERSION));
        assert_eq!(d.breaking_changes.len(), 2);
    }

    #[test]
    fn a_batch_reports_bad_records_by_index_and_migrates_the_rest() {
        let batch = concat!(
            "{\"id\":\"a\",\"metrics\":{\"latency_ms\":5,\"tokens_per_second\":2.5},\"schema_version\":3}\n",
            "{\"id\":\"b\",\"schema_version\":2}\n",
        );
        let mut out = Vec::new();
        let failures = hop().migrate_data_batch(batch.as_bytes(), &mut out);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, 1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":\"a\",\"metrics\":{\"latency_ms\":5,\"output_tokens_per_second\":2.5},\"schema_version\":4}\n"
        );
    }
}

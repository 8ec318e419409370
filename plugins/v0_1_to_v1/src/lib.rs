//! Hop plugin 0.1.0 → 1.0.0: the first versioned release of TrustformeRS Serve.
//!
//! * `config/server.toml`: the flat 0.1.0 keys are renamed in place and the worker settings
//!   move into a new `[workers]` table (`config`).
//! * data records: every record gets `"schema_version": 1` as its last key (`data`).
//! * models: every model folder gets a `metadata.json` listing its files (`model`).

mod config;
mod data;
mod model;

use plugin_api::{Hop, HopDescriptor};

/// Plugin name, as `migrate plugins list` shows it.
pub const NAME: &str = "v0_1_to_v1";
/// Release this hop migrates from.
pub const FROM: &str = "0.1.0";
/// Release this hop migrates to.
pub const TO: &str = "1.0.0";
/// `schema_version` this hop writes on records and `metadata.json`.
pub const SCHEMA_VERSION: u64 = 1;

/// The hop with its three rules; also what tests drive.
pub fn hop() -> Hop {
    let descriptor = HopDescriptor::new(
        NAME,
        FROM,
        TO,
        "Renames the flat 0.1.0 server.toml keys to their 1.0.0 names and adds a [workers] \
         table, stamps every data record with schema_version 1, and writes metadata.json \
         (format, architecture, file checksums) into every model folder",
    )
    .target_schema_version(SCHEMA_VERSION)
    .breaking_change(
        "server.toml: host → bind_address, batch_size → max_batch_size, \
         model_path → model_dir + default_model; a 0.1.0 server cannot read the result",
    )
    .breaking_change("server.toml: timeout (seconds) → request_timeout_ms (milliseconds)")
    .breaking_change(
        "server.toml: num_threads → [workers] count; [workers] max_queue = 1024 added",
    );
    Hop::new(descriptor)
        .config(config::ServerToml)
        .data_edits(data::AddSchemaVersion)
        .data_program(data::program())
        .model(model::CreateMetadata)
}

plugin_api::export_hop!(hop());

#[cfg(test)]
mod tests;

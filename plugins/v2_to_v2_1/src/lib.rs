//! Hop plugin 2.0.0 → 2.1.0: streaming, rate limiting, performance metrics, hashed API keys.
//!
//! * `config/server.toml`: `[streaming]` and `[rate_limit]` are added with their defaults, an
//!   existing table only gets its missing keys (`config`).
//! * data records: `latency_ms` moves into a `metrics` object with `tokens_per_second`, API keys
//!   lose their plaintext for a sha256 and a prefix, `schema_version` becomes 3 (`data`).
//! * models: `metadata.json` gets the `serving` settings and `schema_version` 3 (`model`).

mod config;
mod data;
mod model;

use plugin_api::{Hop, HopDescriptor};

/// Plugin name, as `migrate plugins list` shows it.
pub const NAME: &str = "v2_to_v2_1";
/// Release this hop migrates from.
pub const FROM: &str = "2.0.0";
/// Release this hop migrates to.
pub const TO: &str = "2.1.0";
/// `schema_version` of 2.0.0 records and `metadata.json`, the only one this hop accepts.
pub const SOURCE_SCHEMA_VERSION: u64 = 2;
/// `schema_version` this hop writes on records and `metadata.json`.
pub const SCHEMA_VERSION: u64 = 3;

/// The hop with its three rules; also what tests drive.
pub fn hop() -> Hop {
    let descriptor = HopDescriptor::new(
        NAME,
        FROM,
        TO,
        "Adds [streaming] and [rate_limit] to server.toml, moves records' latency_ms into a \
         metrics object with tokens_per_second, replaces plaintext API keys by their sha256 and \
         an 8-character prefix, and adds serving settings (streaming, KV cache) to model metadata",
    )
    .target_schema_version(SCHEMA_VERSION)
    .irreversible_change(
        "API keys: the plaintext `key` is removed irreversibly and replaced by key_sha256 and \
         key_prefix; only a backup brings the plaintext back",
    )
    .breaking_change("data records: top-level latency_ms moves to metrics.latency_ms");
    Hop::new(descriptor)
        .config(config::ServerToml)
        .data_edits(data::MetricsAndHashedKeys)
        .data_program(data::program())
        .model(model::ServingMetadata)
}

plugin_api::export_hop!(hop());

#[cfg(test)]
mod tests;

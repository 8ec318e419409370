//! Hop plugin 1.0.0 → 2.0.0: the breaking release that restructures `server.toml` into tables,
//! turns unix-second timestamps into RFC 3339 strings, moves token counts under `usage`, and
//! records optimization settings (optionally converting F32 weights to F16/BF16) in each
//! model's `metadata.json`.
//!
//! Each kind of file has its own module; this file only wires them into the [`Hop`].

use plugin_api::{Hop, HopDescriptor};

mod config;
mod data;
mod model;
mod optimize;

#[cfg(test)]
mod test_support;

pub use config::ConfigRule;
pub use data::DataRule;
pub use model::ModelRule;

/// What `migrate plugins list` shows for this hop.
const DESCRIPTION: &str = "restructure server.toml into tables, convert timestamps to RFC 3339, \
                           group token counts under `usage`, add optimization settings to models";

/// The `schema_version` this hop writes on records and `metadata.json`.
const TARGET_SCHEMA_VERSION: u64 = 2;

/// Builds the hop with its three rules.
pub fn hop() -> Hop {
    let descriptor = HopDescriptor::new("v1_to_v2", "1.0.0", "2.0.0", DESCRIPTION)
        .target_schema_version(TARGET_SCHEMA_VERSION)
        .breaking_change(
            "config/server.toml is restructured into [server], [models], [batching], [workers] \
             and [logging] tables; 1.0.0 top-level keys are renamed or moved",
        )
        .breaking_change(
            "timestamps (`timestamp`, `*_at`) become RFC 3339 UTC strings instead of unix seconds",
        )
        .breaking_change(
            "`prompt_tokens` and `completion_tokens` move under `usage` as `input_tokens` and \
             `output_tokens`",
        );
    Hop::new(descriptor)
        .config(ConfigRule)
        .data_edits(DataRule)
        .data_program(data::program())
        .model(ModelRule)
}

plugin_api::export_hop!(hop());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_names_the_hop_and_its_rules() {
        let d = hop().descriptor();
        assert_eq!(
            (d.name.as_str(), d.from.as_str(), d.to.as_str()),
            ("v1_to_v2", "1.0.0", "2.0.0")
        );
        assert_eq!(d.target_schema_version, Some(2));
        assert_eq!(d.breaking_changes.len(), 3);
        assert!(d.rules.config && d.rules.data && d.rules.model);
    }
}

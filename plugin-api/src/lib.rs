//! The contract between the `migrate` host and its version-hop plugins.
//!
//! A hop plugin is a `cdylib` that implements up to three rules — one per kind of file an
//! installation holds — and exports them with [`export_hop!`]. Everything that crosses the
//! library boundary is defined in [`ffi`]; plugin authors never touch it. The other modules
//! are helpers every hop needs, kept here so that each is written once.
#![allow(non_local_definitions, non_camel_case_types)]

pub mod descriptor;
pub mod ffi;
pub mod json;
pub mod model;
pub mod raw;
pub mod rules;
pub mod safetensors;
pub mod toml;

mod export;

pub use descriptor::{HopDescriptor, RuleKinds};
pub use model::{ModelFolder, ModelOptions, ModelOutcome, OptimizeDtype};
pub use rules::{
    ConfigMigrationRule, ConfigOutcome, DataMigrationRule, FieldError, Hop, ModelMigrationRule,
    RuleError,
};

/// Re-exported so that [`export_hop!`] expands in plugin crates without naming versions.
pub use abi_stable;
pub use serde_json;
pub use toml_edit;

/// Version of this crate a plugin was compiled against; reported in its descriptor.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the JSON payloads exchanged over the ABI. Bumped only when a payload changes in a
/// way an older host or plugin cannot read; additive fields keep it.
pub const PAYLOAD_VERSION: u32 = 1;

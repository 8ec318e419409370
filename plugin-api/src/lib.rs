//! The contract between the `migrate` host and its version-hop plugins.
//!
//! A hop plugin is a `cdylib` that implements up to three rules — one per kind of file an
//! installation holds — and exports them with [`export_hop!`], which owns everything that
//! crosses the library boundary: plugin authors never touch the ABI. The modules are the
//! helpers every hop needs, kept here so that each is written once.
//!
//! ```ignore
//! use plugin_api::{Hop, HopDescriptor};
//!
//! pub fn hop() -> Hop {
//!     Hop::new(HopDescriptor::new("v2_1_to_v3", "2.1.0", "3.0.0", "what it does"))
//!         .config(MyConfigRule) // ConfigMigrationRule: server.toml, edited in place
//!         .data(MyDataRule)     // DataMigrationRule: one record at a time
//!         .model(MyModelRule)   // ModelMigrationRule: one model folder, writes into staging
//! }
//!
//! plugin_api::export_hop!(hop());
//! ```
//!
//! The crate is `cdylib` + `rlib` in a plugin, and depends on `abi_stable` too (the macro
//! expands to its attribute). Use the re-exports [`serde_json`] and [`toml_edit`]: the helpers
//! take their types. The guide is `docs/plugins.md` in the repository, with a complete example
//! in `examples/hop-v2_1-to-v3`.
//!
//! # What a plugin author uses
//!
//! * the rule traits [`ConfigMigrationRule`], [`DataMigrationRule`], [`ModelMigrationRule`],
//!   their outcomes ([`ConfigOutcome`], [`ModelOutcome`]) and errors ([`RuleError`],
//!   [`FieldError`]);
//! * the [`Hop`] that bundles them, its [`HopDescriptor`], and [`export_hop!`];
//! * the helpers: [`toml`] for config rules, [`json`] and [`raw`] ([`raw::RawRecord`], the fast
//!   path) for data rules, [`model`] and [`safetensors`] for model rules.
//!
//! Build outcomes, errors and descriptors with their constructors and builder methods
//! ([`ConfigOutcome::new`], [`ModelOutcome::new`], [`RuleError::at_field`],
//! [`HopDescriptor::new`], …) rather than struct literals: they keep compiling when a struct
//! gains a field. Structs plugins never build are `#[non_exhaustive]`; the ones 1.x plugins
//! built with literals stay exhaustive until a major release.
//!
//! The ABI and the host's side of it live in a module that is public only because the macro's
//! expansion and the host must name it; it is hidden from this documentation and not for
//! authors, and so are the few host-only helpers elsewhere.
//!
//! # Compatibility promise
//!
//! This crate's version is the plugin ABI version. Within major 1, a plugin built against
//! plugin-api 1.x loads in any host built against 1.y with y ≥ x: the root module (the hidden
//! `ffi::HopModule`) is frozen at 1.0.0, everything that evolves crosses as JSON versioned by
//! [`PAYLOAD_VERSION`], and minor releases only add (helpers, optional fields, defaulted trait
//! methods); what they replace stays, deprecated. A plugin built against another major is listed
//! as invalid by the host, never loaded further. Details in the crate's README.
//!
//! Since 1.1.0: [`toml::rename_key`], [`json::rename_key`], [`raw::RawRecord`] and
//! [`DataMigrationRule::migrate_raw`]. Since 1.2.0: `RawRecord::set_json`,
//! `RawRecord::replace_key_json` (both deprecated since 1.4.0), [`model::Sha256Reader`] and
//! [`model::Sha256Writer`]. Since 1.3.0: `ffi::load`, which `export_hop!` expands to.
//! Since 1.4.0: [`raw::RawRecord::insert`] and [`raw::RawRecord::replace`] with
//! [`raw::FieldValue`], the one way to set and to replace a key (the older setters, replacers
//! and `for_each_container*` visitors are deprecated wrappers;
//! [`raw::RawRecord::walk_objects_if`] is the one visitor); constructors and builders for the
//! outcomes, [`ModelFolder`], [`ModelOptions`], [`model::FileEntry`] and [`RuleError`];
//! `#[non_exhaustive]` on [`HopDescriptor`], [`RuleKinds`], [`safetensors::Header`] and
//! [`safetensors::TensorInfo`]; the [`error`] module, where the two error types now live
//! (still re-exported from [`rules`]). Since 1.5.0: [`DataEditRule`] with [`Hop::data_edits`],
//! the [`view`] module ([`RecordView`], [`Edits`]): the host parses each record once and hops
//! return edits; `RuleKinds::data_edits` tells the host a plugin has such a rule. Since
//! 1.6.0: [`HopDescriptor::irreversible_change`] and the descriptor's `irreversible` flag, which
//! the host reads (through [`HopDescriptor::is_irreversible`]) instead of the text of a
//! breaking change; [`toml::rename_unit`]. Since 1.7.0: the [`program`] module and
//! [`Hop::data_program`]: a hop declares what its edit rule does to the common record, and the
//! host runs every hop's declaration in one fused pass, leaving the rest to the rules. Since
//! 1.8.0: [`ModelFolder::file_entry`] takes the size and sha256 of a file no hop staged from
//! the checksums the host took of it, when the host handed them over with the call. Since
//! 1.8.1: [`ModelFolder::write`] writes a file an earlier hop staged anew, never truncating it.
#![allow(non_local_definitions, non_camel_case_types)]

pub mod descriptor;
pub mod error;
#[doc(hidden)]
pub mod ffi;
pub mod json;
pub mod model;
pub mod program;
pub mod raw;
pub mod rules;
pub mod safetensors;
pub mod toml;
pub mod view;

mod batch;
mod export;

pub use descriptor::{HopDescriptor, RuleKinds};
pub use error::{FieldError, RuleError};
pub use model::{ModelFolder, ModelOptions, ModelOutcome, OptimizeDtype};
pub use rules::{
    ConfigMigrationRule, ConfigOutcome, DataEditRule, DataMigrationRule, Hop, ModelMigrationRule,
};
pub use view::{Edits, RecordView};

/// Re-exported so that [`export_hop!`] expands in plugin crates without naming versions; not
/// for authors, who depend on `abi_stable` themselves.
#[doc(hidden)]
pub use abi_stable;
pub use serde_json;
pub use toml_edit;

/// Version of this crate a plugin was compiled against; reported in its descriptor.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the JSON payloads exchanged over the ABI. Bumped only when a payload changes in a
/// way an older host or plugin cannot read; additive fields keep it.
pub const PAYLOAD_VERSION: u32 = 1;

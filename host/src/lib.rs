//! `migrate`: upgrades a TrustformeRS Serve installation from one release to the next.
//!
//! Data flows one way: [`registry`] discovers and loads hop plugins, [`graph`] finds the path
//! between two releases, [`plan`] lists what a migration will touch, [`execute`] runs the hops
//! into a [`staging`] area under the installation's [`lock`], and the [`journal`] swaps it into
//! the installation so that a crash at any point can be undone or finished. [`report`] says
//! what happened. [`migrator`] is the programmatic API over all of it; the `migrate` binary
//! ([`cli`]) is a thin shell over the same API.
#![allow(non_local_definitions, non_camel_case_types)]

pub mod audit;
pub mod backup;
pub mod cli;
pub mod data;
pub mod error;
pub mod execute;
pub mod fault;
pub mod graph;
pub mod install;
pub mod journal;
pub mod lock;
pub mod migrator;
pub mod pins;
pub mod plan;
pub mod preflight;
pub mod preview;
pub mod progress;
pub mod registry;
pub mod report;
pub mod restore;
pub mod settings;
pub mod staging;
pub mod trust;
pub mod validate;

pub use error::{ExitCode, MigrateError};
pub use migrator::{MigrationInfo, VersionMigrator};
pub use report::{MigrationResult, OverallStatus, StepResult};

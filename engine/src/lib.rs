//! The trustformers-migrate engine: upgrades a TrustformeRS Serve installation from one release
//! to the next through hop plugins. It never prints: progress and messages go to an
//! [`Observer`]; the `migrate` binary is one such caller, [`VersionMigrator`] the API for all.
//!
//! Data flows one way, and the modules follow it:
//! [`discover`] (the installation and the plugins) → [`plan`] (source version, hop path, files,
//! preflight) → [`stage`] (every file through every hop into staging) → [`verify`] (an
//! installation against a release) → [`commit`] (journal, backup, swap) → [`report`].
//! [`run`] drives one migration through them. How files change on disk — staging, journal,
//! backup, restore, lock, audit — is the `migrate_transaction` crate's, re-exported as
//! [`transaction`].
#![allow(non_local_definitions, non_camel_case_types)]

pub mod commit;
pub mod discover;
pub mod document;
pub mod error;
pub mod isolation;
pub mod migrator;
pub mod observe;
pub mod plan;
pub mod report;
pub mod run;
pub mod settings;
pub mod size;
pub mod stage;
pub mod verify;
pub mod worker;

pub use migrate_transaction as transaction;

pub use error::{ExitCode, MigrateError};
pub use migrator::{MigrationInfo, VersionMigrator};
pub use observe::{Observer, Silent};
pub use report::{MigrationResult, OverallStatus, StepResult};
pub use run::{recover_if_interrupted, Mode};

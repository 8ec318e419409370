//! How an installation's files change without losing a byte: everything the migrate engine
//! writes goes through here, and nothing here knows about plugins, versions' formats or hops.
//!
//! - [`staging`]: new files are written beside the installation first, on its filesystem;
//! - [`journal`]: the swap into place, recorded so that a crash at any instant can be finished
//!   or undone ([`journal::recover`]);
//! - [`backup`]: a verified archive of exactly the files a swap replaces or removes;
//!   [`restore`] brings it back through the same journal;
//! - [`encrypt`]: backups written as age files, readable by the `age` tool; [`remote`]: their
//!   copies on S3-compatible storage, uploaded and read back before the swap;
//! - [`lock`]: one writer per installation; [`recovery`] finishes or undoes an interrupted run;
//! - [`audit`]: the append-only trail of what was done, by whom;
//! - [`fsutil`], [`identity`], [`layout`]: the small pieces they share.
//!
//! [`fault`] is a test hook that exists only with the `fault-injection` feature.

pub mod audit;
pub mod backup;
pub mod confine;
pub mod encrypt;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod identity;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod recovery;
pub mod remote;
pub mod restore;
pub mod staging;
pub mod stamp;

pub use error::{Error, Result};

//! Discover: what is there before anything is planned — the installation on disk and its
//! release ([`install`]), and the hop plugins that may run ([`registry`]), each checked before
//! it is loaded ([`trust`], [`lockfile`]). [`pins`] writes and checks the locks.

pub mod install;
pub mod lockfile;
pub mod pins;
pub mod registry;
pub mod trust;

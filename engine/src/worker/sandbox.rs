//! The worker confines itself before it loads any plugin: Landlock (read the installation, the
//! plugin files and the system's libraries; write only the staging folder; no TCP), and a
//! memory limit. What the kernel enforced is reported, never assumed: on a kernel without
//! Landlock the worker runs unsandboxed and says so.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

use super::protocol::Confinement;
use crate::isolation::{Isolation, SandboxStatus};

/// What every process needs to read to run at all: the dynamic loader's libraries and
/// configuration, the process's own view in /proc and /sys (CPU counts), and /dev/null.
const SYSTEM_READ: &[&str] = &["/usr", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev"];

/// The highest Landlock ABI this code asks for; the crate degrades to what the kernel has.
const ABI_WANTED: ABI = ABI::V7;

/// Applies `c` to this process (and its threads created later); returns what was enforced.
pub fn confine(c: &Confinement) -> Isolation {
    let memory_limit_bytes = c.memory_limit.filter(|&limit| set_memory_limit(limit));
    let mut isolation = Isolation {
        worker_process: true,
        sandbox: SandboxStatus::Disabled,
        landlock_abi: kernel_abi(),
        network_denied: false,
        memory_limit_bytes,
        reason: None,
    };
    if !c.sandbox {
        return isolation;
    }
    match landlock(&c.read, &c.write) {
        Ok((status, network)) => {
            isolation.sandbox = match status {
                RulesetStatus::FullyEnforced => SandboxStatus::FullyEnforced,
                RulesetStatus::PartiallyEnforced => SandboxStatus::PartiallyEnforced,
                RulesetStatus::NotEnforced => SandboxStatus::NotEnforced,
            };
            isolation.network_denied = network && status != RulesetStatus::NotEnforced;
            if status == RulesetStatus::NotEnforced {
                isolation.reason = Some("this kernel does not enforce Landlock".into());
            }
        }
        Err(e) => {
            isolation.sandbox = SandboxStatus::NotEnforced;
            isolation.reason = Some(format!("Landlock could not be applied: {e}"));
        }
    }
    isolation
}

/// The Landlock ABI of the running kernel, if it has Landlock.
fn kernel_abi() -> Option<i32> {
    // SAFETY: landlock_create_ruleset with a NULL attribute, size 0 and the VERSION flag only
    // returns the ABI version (or -1); it touches no memory of ours.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    (v > 0).then_some(v as i32)
}

fn landlock(read: &[PathBuf], write: &[PathBuf]) -> Result<(RulesetStatus, bool), String> {
    let network = AccessNet::from_all(ABI_WANTED);
    let system: Vec<&Path> = SYSTEM_READ
        .iter()
        .map(Path::new)
        .filter(|p| p.exists())
        .collect();
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(network))
        .and_then(|r| r.scope(Scope::from_all(ABI_WANTED)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(&system, AccessFs::from_read(ABI_WANTED))))
        .and_then(|r| r.add_rules(path_beneath_rules(read, AccessFs::from_read(ABI_WANTED))))
        .and_then(|r| r.add_rules(path_beneath_rules(write, AccessFs::from_all(ABI_WANTED))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    Ok((status.ruleset, !network.is_empty()))
}

/// `RLIMIT_DATA`: the worker's heap and other private writable memory. Address space that is
/// only reserved (thread arenas, mapped files) does not count, so the limit means what an
/// operator expects. Returns whether it was set.
fn set_memory_limit(bytes: u64) -> bool {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct we pass; RLIMIT_DATA is a valid resource.
    unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) == 0 }
}

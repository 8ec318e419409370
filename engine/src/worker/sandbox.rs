//! The worker confines itself before it loads any plugin: Landlock (read the installation, the
//! plugin files and the system's libraries; write only the staging folder; no TCP), a seccomp
//! filter (no socket of any kind, no new process), and a memory limit. What the kernel enforced
//! is reported, never assumed: on a kernel without Landlock the file rules are not enforced and
//! the worker says so (the seccomp filter still applies where the kernel has seccomp).
//!
//! Landlock binds the calling thread and the threads it starts later, never threads already
//! running: the worker must confine itself while it is the process's only thread (`migrate`
//! serves it before it starts its async runtime), and a worker that finds other threads
//! running reports its sandbox as partially enforced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
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
        sockets_denied: false,
        processes_denied: false,
        memory_limit_bytes,
        reason: None,
    };
    if !c.sandbox {
        return isolation;
    }
    // Counted before Landlock: threads running now stay outside it.
    let threads = thread_count();
    match landlock(&c.read, &c.write) {
        Ok((status, network)) => {
            isolation.sandbox = match status {
                RulesetStatus::FullyEnforced => SandboxStatus::FullyEnforced,
                RulesetStatus::PartiallyEnforced => SandboxStatus::PartiallyEnforced,
                RulesetStatus::NotEnforced => SandboxStatus::NotEnforced,
            };
            // TCP rules came with ABI 4: an older Landlock enforces the file rules alone.
            isolation.network_denied = network
                && status != RulesetStatus::NotEnforced
                && isolation.landlock_abi >= Some(4);
            if status == RulesetStatus::NotEnforced {
                isolation.reason = Some("this kernel does not enforce Landlock".into());
            } else if threads != Some(1) {
                isolation.sandbox = SandboxStatus::PartiallyEnforced;
                isolation.reason = Some(format!(
                    "{} threads were running before Landlock was applied, and it does not bind them",
                    threads.map_or_else(|| "an unknown number of".to_owned(), |n| n.to_string())
                ));
            }
        }
        Err(e) => {
            isolation.sandbox = SandboxStatus::NotEnforced;
            isolation.reason = Some(format!("Landlock could not be applied: {e}"));
        }
    }
    // After Landlock: the filter is the last thing applied, so nothing above needs a socket or
    // a process.
    let filtered = match seccomp_turned_off() {
        true => Err("turned off by the test build's switch".to_owned()),
        false => deny_calls(),
    };
    let not_denied = match filtered {
        Ok(Denied { processes: Ok(()) }) => {
            isolation.sockets_denied = true;
            isolation.processes_denied = true;
            None
        }
        Ok(Denied { processes: Err(e) }) => {
            isolation.sockets_denied = true;
            Some(format!(
                "clone3 could not be answered ({e}): new processes can be started"
            ))
        }
        Err(e) => Some(format!(
            "no seccomp filter ({e}): UDP, raw and Unix sockets are allowed, and so are new \
             processes"
        )),
    };
    if let Some(why) = not_denied {
        isolation.reason = Some(match isolation.reason.take() {
            Some(reason) => format!("{reason}; {why}"),
            None => why,
        });
    }
    isolation
}

/// Test builds only (the `fault-injection` feature): with `TRUSTFORMERS_MIGRATE_FAULT_NO_SECCOMP`
/// set, the worker applies no seccomp filter, so that a test can check Landlock's own TCP rule
/// (the only network rule on a kernel without seccomp), which the filter would answer first. A
/// release build has no such switch: CI checks that no `TRUSTFORMERS_MIGRATE_FAULT` name is in
/// it.
#[cfg(feature = "fault-injection")]
fn seccomp_turned_off() -> bool {
    std::env::var_os("TRUSTFORMERS_MIGRATE_FAULT_NO_SECCOMP").is_some()
}

#[cfg(not(feature = "fault-injection"))]
fn seccomp_turned_off() -> bool {
    false
}

/// This process's thread count, from /proc (`None` when it cannot be read).
fn thread_count() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line["Threads:".len()..].trim().parse().ok()
}

/// Makes the calls that open a socket, reach one another process holds, or start a process,
/// fail with EACCES ("Permission denied") in every thread of the worker, now and later. Returns
/// what was denied: sockets (and other processes' descriptors), and whether new processes were.
///
/// Sockets. Landlock denies TCP only. Through a UDP datagram (a DNS query is one) a plugin could
/// send the installation's API keys anywhere, and through a Unix socket it could ask a local
/// daemon (a container engine's, say) to do what the sandbox forbids: connecting to one is not
/// a file access, so Landlock does not see it. The worker needs no socket at all (its protocol
/// is the pipes it was started with), so none may be opened: not by `socket()`, not by
/// `socketpair()` (a datagram pair can still send to any socket with a path), not through an
/// io_uring ring (which opens sockets without either call). Nor may it take or drive another
/// process's descriptors (`pidfd_getfd`, `ptrace`, `process_vm_writev`, and their reading
/// twin), which Landlock forbids only where it is enforced.
///
/// Processes. The supervisor stops the worker (it exits, or is killed) once its request is
/// answered, before the pre-swap check; a process that plugin code forked would outlive it (the parent-death signal
/// is not inherited) with the worker's descriptors of the staged files, and could write into
/// them after the check, even after the swap has made them the installation's. The worker
/// starts no process, so `fork`, `vfork` and a `clone` without `CLONE_THREAD` are refused;
/// threads (which die with the worker) still start. `clone3` passes its flags in memory, where
/// a filter cannot read them, so it answers "not implemented" (ENOSYS) from a second filter:
/// the C library then starts its threads with `clone`, which the first filter checks.
///
/// A call in another ABI (the 32-bit one, through `int 0x80`) kills the worker: the filter
/// checks the architecture first. The x32 numbers (x86-64 ABI, bit 30 set, some calls with
/// numbers of their own) are listed too, for kernels built with it.
fn deny_calls() -> Result<Denied, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let mut denied = Rules::default();
    for nr in [
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_io_uring_setup,
        libc::SYS_pidfd_getfd,
    ] {
        denied.common(nr, vec![]);
    }
    // ptrace and process_vm_readv/writev have x32 numbers of their own
    // (arch/x86/entry/syscalls/syscall_64.tbl).
    for (nr, x32) in [
        (libc::SYS_ptrace, 521),
        (libc::SYS_process_vm_readv, 539),
        (libc::SYS_process_vm_writev, 540),
    ] {
        denied.own(nr, x32);
    }
    #[cfg(target_arch = "x86_64")]
    for nr in [libc::SYS_fork, libc::SYS_vfork] {
        denied.common(nr, vec![]);
    }
    // clone(flags, …): the flags are its first argument; without CLONE_THREAD it is a process.
    let no_thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(|e| e.to_string())?;
    denied.common(libc::SYS_clone, vec![no_thread]);
    let mut not_implemented = Rules::default();
    not_implemented.common(libc::SYS_clone3, vec![]);

    let program = |rules: Rules, errno: i32| -> Result<BpfProgram, String> {
        SeccompFilter::new(
            rules.0,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
    };
    let denied = program(denied, libc::EACCES)?;
    let not_implemented = program(not_implemented, libc::ENOSYS)?;
    // clone3's answer first: applied alone it only sends thread starts to `clone`.
    let clone3 = seccompiler::apply_filter_all_threads(&not_implemented).map_err(|e| e.to_string());
    seccompiler::apply_filter_all_threads(&denied).map_err(|e| e.to_string())?;
    Ok(Denied { processes: clone3 })
}

/// What [`deny_calls`] denied beyond sockets.
struct Denied {
    /// New processes: `fork`, `vfork` and `clone` without `CLONE_THREAD` are always refused
    /// with the sockets; this says whether `clone3`, which starts them as well, was refused
    /// too, or why not.
    processes: Result<(), String>,
}

/// The filter's rules by call number; an empty rule list matches the call whatever its
/// arguments.
#[derive(Default)]
struct Rules(BTreeMap<i64, Vec<SeccompRule>>);

impl Rules {
    /// Call `nr`, at its own number and (x86-64) at x32's, which is the same with bit 30 set.
    fn common(&mut self, nr: libc::c_long, rules: Vec<SeccompRule>) {
        if cfg!(target_arch = "x86_64") {
            self.0.insert(X32 | nr, rules.clone());
        }
        self.0.insert(nr, rules);
    }

    /// Call `nr`, which x32 has at a number of its own, `x32` without bit 30.
    fn own(&mut self, nr: libc::c_long, x32: libc::c_long) {
        if cfg!(target_arch = "x86_64") {
            self.0.insert(X32 | x32, vec![]);
        }
        self.0.insert(nr, vec![]);
    }
}

/// x32's call numbers: the x86-64 ones with bit 30 set.
const X32: libc::c_long = 0x4000_0000;

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

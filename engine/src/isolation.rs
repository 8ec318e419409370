//! How plugin code was confined in a run, as every output that ran plugins reports it
//! (`plugins list --json`, `info --json`, a migration's result). The worker applies the
//! sandbox and says what the kernel actually enforced; nothing here assumes it.

use serde::{Deserialize, Serialize};

/// What confined the worker process that ran plugin code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// Plugin code ran in a separate worker process (always, today).
    pub worker_process: bool,
    /// `fully_enforced`, `partially_enforced`, `not_enforced` (the kernel lacks Landlock or
    /// refused it), or `disabled` (`--no-sandbox`).
    pub sandbox: SandboxStatus,
    /// The Landlock ABI the kernel offers, when it has one.
    pub landlock_abi: Option<i32>,
    /// Whether TCP connect and bind were denied (Landlock ABI 4 and later). Landlock alone does
    /// not restrict UDP, raw or Unix sockets: [`Isolation::sockets_denied`] does.
    pub network_denied: bool,
    /// Whether a seccomp filter made every `socket()` and `socketpair()` call fail, whatever
    /// its family (UDP, raw, packet, netlink, Unix: a connect to a Unix socket such as a
    /// container daemon's is not a file access, so Landlock does not see it), with
    /// `io_uring_setup` (a ring opens sockets without those calls) and the calls that take or
    /// drive another process's descriptors (`ptrace`, `process_vm_writev`, `pidfd_getfd`).
    /// Absent from an older worker's report: false.
    #[serde(default)]
    pub sockets_denied: bool,
    /// Whether the seccomp filter refused every new process (`fork`, `vfork`, a `clone` that
    /// is not a thread, `clone3`): a process forked by plugin code would outlive the worker
    /// with its descriptors of the staged files, and could write into them after the pre-swap
    /// check. Absent from an older worker's report: false.
    #[serde(default)]
    pub processes_denied: bool,
    /// The worker's memory limit (`max_worker_memory_mb`), in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// What was not enforced, when something was not: Landlock (wholly or in part), or the
    /// seccomp filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    FullyEnforced,
    PartiallyEnforced,
    NotEnforced,
    Disabled,
}

impl SandboxStatus {
    /// How much it confines: the order [`Isolation::weakest`] compares in.
    fn strength(self) -> u8 {
        match self {
            SandboxStatus::FullyEnforced => 3,
            SandboxStatus::PartiallyEnforced => 2,
            SandboxStatus::NotEnforced => 1,
            SandboxStatus::Disabled => 0,
        }
    }
}

impl Isolation {
    /// What held for both of two workers: each guarantee only where both had it, the weaker
    /// sandbox, the higher memory limit (none when one had none), both reasons. A command that
    /// loads several plugin files describes each in a worker of its own: what it reports must
    /// not be whichever worker happened to finish last, which could hide one confined less.
    pub fn weakest(self, other: Isolation) -> Isolation {
        // Each reason once, in the order first seen, however many workers are folded in.
        let mut reasons: Vec<&str> = Vec::new();
        for part in [&self.reason, &other.reason]
            .into_iter()
            .flatten()
            .flat_map(|r| r.split("; "))
        {
            if !reasons.contains(&part) {
                reasons.push(part);
            }
        }
        let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        Isolation {
            worker_process: self.worker_process && other.worker_process,
            sandbox: if self.sandbox.strength() <= other.sandbox.strength() {
                self.sandbox
            } else {
                other.sandbox
            },
            landlock_abi: self.landlock_abi.min(other.landlock_abi),
            network_denied: self.network_denied && other.network_denied,
            sockets_denied: self.sockets_denied && other.sockets_denied,
            processes_denied: self.processes_denied && other.processes_denied,
            memory_limit_bytes: self
                .memory_limit_bytes
                .zip(other.memory_limit_bytes)
                .map(|(a, b)| a.max(b)),
            reason,
        }
    }

    /// Folds `next` into what `slot` holds ([`Isolation::weakest`]), or puts it there when it
    /// is empty: how every place that hears from several workers, or several reports, keeps
    /// one.
    pub fn fold(slot: &mut Option<Isolation>, next: Isolation) {
        *slot = Some(match slot.take() {
            Some(held) => held.weakest(next),
            None => next,
        });
    }

    /// One line for the text outputs.
    pub fn summary(&self) -> String {
        let sandbox = match self.sandbox {
            SandboxStatus::FullyEnforced => "Landlock sandbox fully enforced",
            SandboxStatus::PartiallyEnforced => "Landlock sandbox partially enforced",
            SandboxStatus::NotEnforced => "UNSANDBOXED (the kernel does not enforce Landlock)",
            SandboxStatus::Disabled => "UNSANDBOXED (--no-sandbox)",
        };
        let mut text = format!("plugins ran in a worker process; {sandbox}");
        if self.sockets_denied {
            text.push_str(", no network (no socket can be opened)");
        } else if self.network_denied {
            text.push_str(", TCP denied (UDP, raw and Unix sockets are not)");
        }
        if self.processes_denied {
            text.push_str(", no new process (threads only)");
        }
        if let Some(limit) = self.memory_limit_bytes {
            text.push_str(&format!(", memory limit {}", crate::size::human(limit)));
        }
        if let Some(reason) = &self.reason {
            text.push_str(&format!(" ({reason})"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confined() -> Isolation {
        Isolation {
            worker_process: true,
            sandbox: SandboxStatus::FullyEnforced,
            landlock_abi: Some(7),
            network_denied: true,
            sockets_denied: true,
            processes_denied: true,
            memory_limit_bytes: Some(512 << 20),
            reason: None,
        }
    }

    #[test]
    fn the_weakest_of_two_workers_keeps_only_what_both_had() {
        assert_eq!(confined().weakest(confined()), confined());
        let less = Isolation {
            sandbox: SandboxStatus::PartiallyEnforced,
            sockets_denied: false,
            processes_denied: false,
            memory_limit_bytes: Some(1 << 30),
            reason: Some("no seccomp filter".into()),
            ..confined()
        };
        // Whichever comes last, the weaker worker is what is reported.
        for (a, b) in [(confined(), less.clone()), (less.clone(), confined())] {
            let w = a.weakest(b);
            assert_eq!(w.sandbox, SandboxStatus::PartiallyEnforced);
            assert!(w.network_denied && !w.sockets_denied && !w.processes_denied);
            assert_eq!(w.memory_limit_bytes, Some(1 << 30));
            assert_eq!(w.reason.as_deref(), Some("no seccomp filter"));
        }
        let unlimited = Isolation {
            memory_limit_bytes: None,
            sandbox: SandboxStatus::Disabled,
            reason: Some("--no-sandbox".into()),
            ..confined()
        };
        let w = less.clone().weakest(unlimited);
        assert_eq!(w.sandbox, SandboxStatus::Disabled);
        assert_eq!(w.memory_limit_bytes, None);
        assert_eq!(w.reason.as_deref(), Some("no seccomp filter; --no-sandbox"));
        // Folding the same worker in again repeats no reason.
        let again = w.weakest(less);
        assert_eq!(
            again.reason.as_deref(),
            Some("no seccomp filter; --no-sandbox")
        );
    }
}

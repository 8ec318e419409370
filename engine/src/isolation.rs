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
    /// Whether a seccomp filter made every `socket()` call fail, whatever its family (UDP,
    /// raw, packet, netlink, Unix: a connect to a Unix socket such as a container daemon's is
    /// not a file access, so Landlock does not see it), and `io_uring_setup` with it (a ring
    /// opens sockets without the `socket()` call).
    pub sockets_denied: bool,
    /// The worker's memory limit (`max_worker_memory_mb`), in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Why the sandbox is not fully enforced, when it is not.
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

impl Isolation {
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
            text.push_str(", TCP denied (UDP is not restricted)");
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

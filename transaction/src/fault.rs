//! A test-only fault hook. With the `fault-injection` feature,
//! `TRUSTFORMERS_MIGRATE_FAULT=<point>:<n>[:<action>]` acts the n-th time (1-based) the process
//! reaches `<point>` (several faults: separate them with commas):
//!
//! - `kill` (the default): SIGKILL itself, so crash tests can stop a real migration at an exact
//!   journal step;
//! - `error`: return an I/O error from that point, as a full disk or a failing device would;
//! - `panic`: panic there, as a bug in the host would;
//! - `stop`: SIGSTOP itself, so a test can change the disk at an exact point (plant a link
//!   between planning and reading) and then let it go on with SIGCONT;
//! - `slow<ms>` (`slow2500`): wait that long on that thread alone, as a slow disk would.
//!
//! Without the feature (every release build) [`point`] is an empty function and the variable
//! is never read: the hook does not ship to operators.

use crate::error::Result;

/// Marks a fault point; see the module docs.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) -> Result<()> {
    Ok(())
}

/// Marks a fault point; see the module docs.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) -> Result<()> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    static TARGETS: OnceLock<Vec<(String, u64, String)>> = OnceLock::new();
    static HITS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    let targets = TARGETS.get_or_init(|| {
        let spec = std::env::var("TRUSTFORMERS_MIGRATE_FAULT").unwrap_or_default();
        spec.split(',')
            .filter_map(|one| {
                let mut parts = one.splitn(3, ':');
                let point = parts.next()?.to_owned();
                let n = parts.next()?.parse().ok()?;
                let action = parts.next().unwrap_or("kill").to_owned();
                Some((point, n, action))
            })
            .collect()
    });
    if !targets.iter().any(|(p, _, _)| p == name) {
        return Ok(());
    }
    let hit = {
        let mut hits = HITS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = hits.entry(name.to_owned()).or_insert(0);
        *n += 1;
        *n
    };
    let Some((_, _, action)) = targets.iter().find(|(p, n, _)| p == name && *n == hit) else {
        return Ok(());
    };
    match action.as_str() {
        "error" => Err(crate::error::io(format!("injected fault at {name}"))(
            std::io::Error::other("TRUSTFORMERS_MIGRATE_FAULT"),
        )),
        "panic" => panic!("injected panic at {name} (TRUSTFORMERS_MIGRATE_FAULT)"),
        slow if slow.starts_with("slow") => {
            let ms = slow["slow".len()..].parse().unwrap_or(1000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        "stop" => {
            // Sent to this very thread (tgkill), not to the process: the thread then stops on
            // its way out of the system call, before it runs one more line. A signal sent to
            // the process may be taken by another thread while this one goes on for a while.
            // SAFETY: tgkill(2) on our own process and thread with a constant signal has no
            // memory-safety concern; the thread resumes here on SIGCONT.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::gettid(),
                    libc::SIGSTOP,
                );
            }
            Ok(())
        }
        _ => {
            // SAFETY: kill(2) on our own PID with a constant signal has no memory-safety
            // concern.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        }
    }
}

/// Faults for a child process (a plugin worker): without the feature, nothing. With it, the
/// child does not inherit this process's faults (a `batch` point meant for the supervisor
/// would fire in the worker); `TRUSTFORMERS_MIGRATE_WORKER_FAULT` becomes the child's
/// `TRUSTFORMERS_MIGRATE_FAULT` instead.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn route_to_child(_command: &mut std::process::Command) {}

/// See the other definition.
#[cfg(feature = "fault-injection")]
pub fn route_to_child(command: &mut std::process::Command) {
    command.env_remove("TRUSTFORMERS_MIGRATE_FAULT");
    if let Some(spec) = std::env::var_os("TRUSTFORMERS_MIGRATE_WORKER_FAULT") {
        command
            .env("TRUSTFORMERS_MIGRATE_FAULT", spec)
            .env_remove("TRUSTFORMERS_MIGRATE_WORKER_FAULT");
    }
}

//! A test-only fault hook: with the `fault-injection` feature, `TRUSTFORMERS_MIGRATE_FAULT=
//! <point>:<n>` makes the process kill itself with SIGKILL the n-th time it reaches `<point>`
//! (1-based), so crash tests can stop a real migration at an exact journal step. Without the
//! feature (every release build) [`point`] is empty and the variable is never read: the hook
//! does not ship to operators.

/// A write that fails with ENOSPC: with the feature, `TRUSTFORMERS_MIGRATE_ENOSPC=<point>:<n>`
/// makes the n-th call at `<point>` fail as a full disk would. Without it, always `Ok`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn disk_full(_name: &str) -> std::io::Result<()> {
    Ok(())
}

/// A write that fails with ENOSPC; see [`disk_full`] without the feature.
#[cfg(feature = "fault-injection")]
pub fn disk_full(name: &str) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static HITS: AtomicU64 = AtomicU64::new(0);
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("TRUSTFORMERS_MIGRATE_ENOSPC").ok()?;
        let (point, n) = spec.rsplit_once(':')?;
        Some((point.to_owned(), n.parse().ok()?))
    });
    match target {
        Some((point, n)) if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n => {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        _ => Ok(()),
    }
}

/// Marks a crash point; see the module docs.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Marks a crash point; see the module docs.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static HITS: AtomicU64 = AtomicU64::new(0);
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("TRUSTFORMERS_MIGRATE_FAULT").ok()?;
        let (point, n) = spec.rsplit_once(':')?;
        Some((point.to_owned(), n.parse().ok()?))
    });
    let Some((point, n)) = target else { return };
    if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        // SAFETY: kill(2) on our own PID with a constant signal has no memory-safety concern.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

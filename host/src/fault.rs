//! A test-only fault hook: `TRUSTFORMERS_MIGRATE_FAULT=<point>:<n>` makes the process kill
//! itself with SIGKILL the n-th time it reaches `<point>` (1-based), so crash tests can stop a
//! real migration at an exact journal step. Inert when the variable is unset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static HITS: AtomicU64 = AtomicU64::new(0);

fn target() -> Option<&'static (String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let spec = std::env::var("TRUSTFORMERS_MIGRATE_FAULT").ok()?;
            let (point, n) = spec.rsplit_once(':')?;
            Some((point.to_owned(), n.parse().ok()?))
        })
        .as_ref()
}

/// Marks a crash point; see the module docs.
pub fn point(name: &str) {
    let Some((point, n)) = target() else { return };
    if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        // SAFETY: kill(2) on our own PID with a constant signal has no memory-safety concern.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

//! Plugin code runs only in worker processes: the process the operator started (the
//! supervisor) never loads a third-party library. A worker is this same program started as
//! `migrate worker` ([`serve`](mod@serve)); it confines itself ([`sandbox`]: Landlock, a seccomp
//! filter and a memory limit), then answers one request over the [`protocol`]: describe a plugin file, or stage a
//! whole plan. The supervisor side ([`supervise`]) watches it: deadline, stall limit,
//! cancellation, and a report naming the plugin and the file when a worker dies.

pub mod protocol;
pub mod sandbox;
pub mod serve;
pub mod supervise;

pub use serve::serve;
pub use supervise::{WorkerLoader, WorkerSpec};

/// For a program that embeds the engine: when this process was started as a plugin worker
/// (its first argument is `worker`), serves the request and exits; otherwise returns. Call it
/// first thing in `main`, before anything starts a thread (an async runtime does): the
/// worker's Landlock sandbox binds the thread that applies it and the threads it starts
/// later, never those already running (a worker that finds others reports its sandbox as
/// partially enforced).
pub fn serve_if_worker() {
    if started_as_worker() {
        std::process::exit(serve());
    }
}

/// Whether this process was started as a plugin worker: its first argument is `worker`, as
/// the supervisor starts it ([`WorkerSpec`]). For a `main` that sets something up (logging)
/// before it serves the worker itself.
pub fn started_as_worker() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == "worker")
}

//! The worker side: what `migrate worker` runs. It takes its stdin and stdout for the
//! protocol (a plugin's prints go to stderr instead), answers the handshake, confines itself,
//! and only then loads plugin code. One request per process: the supervisor starts a fresh
//! worker for each, so a crash takes down one request and nothing else.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use migrate_transaction::staging::Staging;
use plugin_api::model::FileEntry;

use super::protocol::{self, Confinement, Reply, Request, WireCause, WireError};
use super::sandbox;
use crate::discover::registry::{load_verified, LoadedHop};
use crate::error::MigrateError;
use crate::observe::{Observer, PluginCall};
use crate::plan::Plan;
use crate::report::StepResult;
use crate::stage::{self, Budget};

/// Runs the worker; returns the process exit status (0: the request was answered, even when
/// the answer is an error; 2: the protocol itself failed).
pub fn serve() -> i32 {
    let (input, output) = match take_stdio() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("migrate worker: cannot set up its protocol channel: {e}");
            return 2;
        }
    };
    let mut input = BufReader::new(input);
    // Lives as long as the process: the heartbeat thread shares it.
    let out: &'static Channel = Box::leak(Box::new(Channel::new(output)));
    match protocol::read_frame::<Request>(&mut input) {
        Ok(Some(Request::Hello { protocol, version }))
            if protocol::compatible(&protocol, &version) => {}
        other => {
            eprintln!("migrate worker: expected a compatible hello, got {other:?}");
            return 2;
        }
    }
    out.send(&Reply::Hello {
        protocol: protocol::PROTOCOL.into(),
        version: protocol::VERSION.into(),
    });
    match protocol::read_frame::<Request>(&mut input) {
        Ok(Some(Request::Describe {
            path,
            sha256,
            confinement,
        })) => {
            confine(out, &confinement);
            let result = load_verified(&path, &sha256)
                .map(|(_, descriptor)| descriptor)
                .map_err(|e| e.to_string());
            out.send(&Reply::Described { result });
        }
        Ok(Some(Request::Stage {
            plan,
            staging,
            snapshot,
            confinement,
            checksums,
        })) => {
            confine(out, &confinement);
            // Staged files the host creates get their final mode on creation; those plugin
            // code creates are private until the journal gives them theirs.
            migrate_transaction::fsutil::private_umask();
            heartbeat(out);
            // Plugin panics are caught at the ABI; a panic that reaches here is the host's own
            // bug, and is reported as such, never as the plugin's.
            let staged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let asked = checksums.then_some(&mut input);
                stage_all(&plan, &staging, snapshot.as_deref(), out, asked)
            }));
            let result = match staged {
                Ok(done) => done.map_err(|e| WireError::from(&e)),
                Err(panic) => Err(WireError {
                    exit_code: crate::error::ExitCode::Internal as i32,
                    message: format!(
                        "internal error in migrate's plugin worker: {}\n  next step: report this bug with the command you ran; nothing was swapped into the installation",
                        panic_text(panic.as_ref())
                    ),
                    cause: WireCause::Other { file: None },
                }),
            };
            out.send(&Reply::Staged { result });
        }
        other => {
            eprintln!("migrate worker: expected a request, got {other:?}");
            return 2;
        }
    }
    0
}

/// Moves stdin and stdout to new descriptors for the protocol, then points fd 0 at
/// /dev/null and fd 1 at stderr: whatever plugin code prints can no longer reach the stream.
fn take_stdio() -> std::io::Result<(File, File)> {
    let null = File::open("/dev/null")?;
    // SAFETY: dup/dup2 on the process's own standard descriptors; each returned descriptor is
    // checked and then owned by exactly one File.
    unsafe {
        let input = libc::dup(0);
        let output = libc::dup(1);
        if input < 0 || output < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let input = File::from(OwnedFd::from_raw_fd(input));
        let output = File::from(OwnedFd::from_raw_fd(output));
        if libc::dup2(null.into_raw_fd(), 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((input, output))
    }
}

fn confine(out: &Channel, confinement: &Confinement) {
    let isolation = sandbox::confine(confinement);
    out.send(&Reply::Isolation { isolation });
}

/// The protocol's write side, shared by the pipeline's threads; also the engine's observer
/// in the worker, so that progress and plugin calls reach the supervisor as they happen.
struct Channel {
    out: Mutex<BufWriter<File>>,
    /// Bytes this channel wrote: not the plugin's I/O, so not a sign that it is alive.
    sent: AtomicU64,
}

impl Channel {
    fn new(out: File) -> Self {
        Channel {
            out: Mutex::new(BufWriter::new(out)),
            sent: AtomicU64::new(0),
        }
    }

    /// Sends a message; if the supervisor has gone, there is no one left to tell.
    fn send(&self, reply: &Reply) {
        if let Ok(mut out) = self.out.lock() {
            if let Ok(n) = protocol::write_frame(&mut *out, reply) {
                self.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// How often the worker looks at its own I/O counters.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// Tells the supervisor the worker is alive whenever it did file I/O since the last look: a
/// long model conversion reports no batches but reads and writes all the time, while a plugin
/// stuck in a loop does neither, and is stopped after `stall_seconds`.
fn heartbeat(out: &'static Channel) {
    std::thread::spawn(move || {
        let mut last = io_bytes(out, PROCESS_IO);
        loop {
            std::thread::sleep(HEARTBEAT);
            let now = io_bytes(out, PROCESS_IO);
            if now != last {
                last = now;
                out.send(&Reply::Alive { io_bytes: now });
            }
        }
    });
}

/// The whole process's I/O counters (all the pipeline's threads).
const PROCESS_IO: &str = "/proc/self/io";

/// Reads and writes (`rchar` + `wchar` of `counters`), less what the protocol itself wrote
/// and what reading these counters read.
fn io_bytes(out: &Channel, counters: &str) -> u64 {
    static SELF_READS: AtomicU64 = AtomicU64::new(0);
    let text = std::fs::read_to_string(counters).unwrap_or_default();
    let before = SELF_READS.fetch_add(text.len() as u64, Ordering::Relaxed);
    let total: u64 = text
        .lines()
        .filter(|l| l.starts_with("rchar:") || l.starts_with("wchar:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    total
        .saturating_sub(out.sent.load(Ordering::Relaxed))
        .saturating_sub(before)
}

impl Observer for Channel {
    fn step_started(&self, step: &str, total_bytes: u64) {
        self.send(&Reply::StepStarted {
            step: step.to_owned(),
            total_bytes,
        });
    }

    fn step_progress(&self, bytes: u64, records: u64) {
        self.send(&Reply::Progress { bytes, records });
    }

    fn notice(&self, message: &str) {
        self.send(&Reply::Notice {
            message: message.to_owned(),
        });
    }

    fn warning(&self, message: &str) {
        self.send(&Reply::Warning {
            message: message.to_owned(),
        });
    }

    fn calling(&self, call: &PluginCall) {
        self.send(&Reply::Calling { call: call.clone() });
    }

    fn returned(&self, id: u64) {
        self.send(&Reply::Returned { id });
    }
}

/// Loads the plan's hops and stages config, data and models, reporting each step. With
/// `supervisor` (the request's channel, when the supervisor hashes the model files), the
/// checksums it took by then are asked for before the models step.
fn stage_all(
    plan: &Plan,
    staging_dir: &Path,
    snapshot: Option<&Path>,
    out: &Channel,
    supervisor: Option<&mut BufReader<File>>,
) -> Result<Vec<String>, MigrateError> {
    let hops = plan
        .hops
        .iter()
        .map(|h| {
            LoadedHop::load(h.clone()).map_err(|e| {
                stage::plugin_failure(h, &h.path, format!("cannot be loaded in the worker: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut staging = Staging::adopt(staging_dir)?;
    let budget = Budget::new(plan.options.timeout);
    let config_bytes = plan.config.as_ref().map_or(0, |c| c.size);
    step(out, "config", config_bytes, |s| {
        stage::config(plan, &hops, &staging, s, out)
    })?;
    budget.check("config")?;
    step(out, "data", plan.data_bytes(), |s| {
        stage::data(plan, &hops, &mut staging, s, &budget, out)
    })?;
    let checksums = match supervisor {
        Some(input) => checksums(out, input)?,
        None => Vec::new(),
    };
    step(out, "models", plan.model_bytes(), |s| {
        stage::models(plan, &hops, &staging, snapshot, &checksums, s, &budget, out)
    })?;
    Ok(staging.into_parts().removals)
}

/// Asks the supervisor for the checksums of the installation's model files it took so far.
fn checksums(out: &Channel, input: &mut BufReader<File>) -> Result<Vec<FileEntry>, MigrateError> {
    out.send(&Reply::WantChecksums);
    match protocol::read_frame::<Request>(input) {
        Ok(Some(Request::Checksums { files })) => {
            // Test hook: a test pauses the worker here to change a model file after its
            // checksum was handed over.
            migrate_transaction::fault::point("model_checksums")?;
            Ok(files)
        }
        other => Err(MigrateError::Internal {
            detail: format!(
                "the supervisor answered the worker's request for checksums with {other:?}"
            ),
            state: "nothing was swapped into the installation".into(),
        }),
    }
}

/// Runs one step and sends its result, figures and error included.
fn step(
    out: &Channel,
    name: &str,
    bytes: u64,
    body: impl FnOnce(&mut StepResult) -> Result<(), MigrateError>,
) -> Result<(), MigrateError> {
    let started = std::time::Instant::now();
    let mut s = StepResult::new(name);
    out.step_started(name, bytes);
    let outcome = body(&mut s);
    if let Err(e) = &outcome {
        s.status = crate::report::StepStatus::Failed;
        s.error = Some(e.to_string());
    }
    out.send(&Reply::Step {
        result: s.finish(started.elapsed()),
    });
    outcome
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Looking at the counters is not I/O of the plugin's: with nothing else happening the
    /// heartbeat sees no change, and a real write shows. (This thread's own counters: other
    /// tests run in parallel in this process.)
    #[test]
    fn the_heartbeat_counts_only_real_io() {
        let io = |out: &Channel| io_bytes(out, "/proc/thread-self/io");
        let file = tempfile::tempfile().unwrap();
        let out = Channel::new(file);
        let first = io(&out);
        let second = io(&out);
        let third = io(&out);
        assert_eq!(first, second);
        assert_eq!(second, third);
        out.send(&Reply::Returned { id: 1 });
        let _ = out.out.lock().map(|mut o| o.flush());
        assert_eq!(io(&out), third, "protocol writes are not the plugin's I/O");
        let mut scratch = tempfile::tempfile().unwrap();
        scratch.write_all(&[7u8; 4096]).unwrap();
        assert!(io(&out) >= third + 4096, "a real write shows");
    }
}

//! The supervisor side: start a worker (this same program, `migrate worker`), hand it one
//! request, and watch it. The supervisor never loads plugin code; it relays the worker's
//! progress to the observer, enforces the deadline (`timeout_seconds`), the stall limit
//! (`stall_seconds`) and a cancellation (SIGINT/SIGTERM) by killing the worker, and when the
//! worker dies it says which plugin was running on what.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugin_api::model::FileEntry;
use plugin_api::HopDescriptor;

use super::protocol::{self, Confinement, Reply, Request};
use crate::discover::registry::{HopInfo, Loader};
use crate::error::{MigrateError, StopCause};
use crate::isolation::Isolation;
use crate::observe::{Observer, PluginCall};
use crate::plan::Plan;
use crate::report::StepResult;

/// How workers are started and watched.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The program to run as a worker, with its arguments: by default this very executable
    /// with the `worker` subcommand.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Apply the sandbox, Landlock and the seccomp filter (off only with `--no-sandbox`, for
    /// debugging).
    pub sandbox: bool,
    /// The worker's memory limit (`max_worker_memory_mb`).
    pub memory_limit: Option<u64>,
    /// A worker that reports nothing for this long is stopped (`stall_seconds`).
    pub stall: Duration,
    /// Set to a signal number (SIGINT, SIGTERM) to stop the worker and discard its work.
    pub cancel: Arc<AtomicUsize>,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("migrate")),
            args: vec!["worker".into()],
            sandbox: true,
            memory_limit: Some(half_of_physical_memory()),
            stall: Duration::from_secs(300),
            cancel: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// The default memory limit: half of this machine's memory.
pub fn half_of_physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64).saturating_mul(size.max(0) as u64) / 2
}

/// What a worker sent, or that it closed its side.
enum Event {
    /// Boxed: a reply carries a step result, several times the size of the other events.
    Reply(Box<Reply>),
    Stderr(String),
    /// The worker's stderr reached its end: every line it wrote has been delivered.
    StderrClosed,
    Closed(Option<String>),
}

/// How long the supervisor waits, once the worker is gone, for the last lines of its stderr.
/// Bounded: a plugin may have started a process of its own that keeps the pipe open.
const STDERR_GRACE: Duration = Duration::from_secs(2);

struct Worker {
    child: Child,
    /// The worker's request channel, kept open while it may still be answered ([`Next::Answer`],
    /// at most once: plugin code can write requests for answers on the protocol pipe too).
    input: Option<BufWriter<ChildStdin>>,
    events: Receiver<Event>,
    /// A Rust "memory allocation of N bytes failed" was seen on stderr: the only word an
    /// out-of-memory abort leaves. Remembered as the line arrives, not looked for in the last
    /// lines: a backtrace (RUST_BACKTRACE=1) follows it with dozens more.
    out_of_memory: bool,
    stderr_open: bool,
}

/// Set in every worker's environment: a worker that starts workers of its own is a program
/// that forgot to serve (see [`super::serve_if_worker`]), and would recurse.
const WORKER_ENV: &str = "TRUSTFORMERS_MIGRATE_WORKER";

impl Worker {
    fn start(spec: &WorkerSpec, request: &Request) -> Result<Worker, MigrateError> {
        if std::env::var_os(WORKER_ENV).is_some() {
            return Err(MigrateError::usage(
                format!(
                    "{} was started as a plugin worker but did not serve the request",
                    spec.program.display()
                ),
                "call trustformers_migrate::worker::serve_if_worker() first thing in main, or set the worker program with VersionMigrator::worker",
            ));
        }
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .env(WORKER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        migrate_transaction::fault::route_to_child(&mut command);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory: a worker
        // must not outlive a supervisor that was killed.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| {
            MigrateError::io(
                format!("cannot start the plugin worker {}", spec.program.display()),
                e,
            )
        })?;
        let (tx, events) = mpsc::channel();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three standard streams are piped")
        };
        spawn_reader(stdout, tx.clone());
        spawn_stderr(stderr, tx);
        let mut input = BufWriter::new(stdin);
        let hello = Request::Hello {
            protocol: protocol::PROTOCOL.into(),
            version: protocol::VERSION.into(),
        };
        let sent = protocol::write_frame(&mut input, &hello)
            .and_then(|_| protocol::write_frame(&mut input, request));
        if let Err(e) = sent {
            let _ = child.kill();
            let _ = child.wait();
            return Err(MigrateError::io("cannot talk to the plugin worker", e));
        }
        Ok(Worker {
            child,
            input: Some(input),
            events,
            out_of_memory: false,
            stderr_open: true,
        })
    }

    fn stop(&mut self, observer: &dyn Observer) -> Option<ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.drain_stderr(observer);
        status
    }

    /// After the worker's final answer: it exits at once, so it is given [`STDERR_GRACE`] and
    /// then killed. Waiting for it unbounded would let plugin code (which can write on the
    /// protocol pipe too) hold the supervisor, and the installation's lock, forever.
    ///
    /// The wait polls from 0.1 ms up, doubling to 10 ms: a worker is usually gone within a
    /// millisecond or two of its answer, and a flat 10 ms sleep cost every plugin described or
    /// run about 9 ms (three hops described: a quarter of a small `migrate validate`).
    fn reap(&mut self, observer: &dyn Observer) {
        let until = Instant::now() + STDERR_GRACE;
        let mut pause = Duration::from_micros(100);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        self.stop(observer);
    }

    /// Relays a line of the worker's stderr.
    fn stderr_line(&mut self, observer: &dyn Observer, line: &str) {
        observer.worker_output(line);
        if line.contains("memory allocation of") && line.contains("failed") {
            self.out_of_memory = true;
        }
    }

    /// Once the worker has exited: relays what is left of its stderr, up to its end (or
    /// [`STDERR_GRACE`]). Its stderr travels on a pipe of its own, so its last lines (a
    /// plugin's diagnostics, Rust's out-of-memory message) may still be on the way after its
    /// answer or its end of stdout has arrived.
    fn drain_stderr(&mut self, observer: &dyn Observer) {
        let until = Instant::now() + STDERR_GRACE;
        while self.stderr_open {
            let left = until.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Stderr(line)) => self.stderr_line(observer, &line),
                Ok(Event::StderrClosed) => self.stderr_open = false,
                Ok(Event::Reply(_) | Event::Closed(_)) => {}
                Err(_) => return,
            }
        }
    }
}

/// A worker never outlives the request it was started for: whatever ends the supervisor's
/// wait (an answer, an error, a panic), the worker is killed and reaped.
impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_reader(stdout: std::process::ChildStdout, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let mut input = BufReader::new(stdout);
        loop {
            match protocol::read_frame::<Reply>(&mut input) {
                Ok(Some(reply)) => {
                    if tx.send(Event::Reply(Box::new(reply))).is_err() {
                        return;
                    }
                }
                Ok(None) => return drop(tx.send(Event::Closed(None))),
                Err(e) => return drop(tx.send(Event::Closed(Some(e.to_string())))),
            }
        }
    });
}

fn spawn_stderr(stderr: std::process::ChildStderr, tx: Sender<Event>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(Event::Stderr(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::StderrClosed);
    });
}

/// How often the watchdog looks at the clock and the cancel flag while waiting.
const TICK: Duration = Duration::from_millis(100);

/// What the supervisor does after a reply it handled: wait for more, stop (the final answer
/// came), answer the worker (with what the function, run on a thread of its own, returns), or
/// stop it for a reply it had no business sending.
enum Next {
    Wait,
    Done,
    Answer(Box<dyn FnOnce() -> Request + Send>),
    Refuse(String),
}

/// What gives the model checksums the worker asks for ([`stage`]): a function that waits for
/// them on the thread answering the worker.
pub type Checksums<'a> = dyn Fn() -> Box<dyn FnOnce() -> Vec<FileEntry> + Send> + 'a;

/// Runs `request` in a worker and feeds every reply to `on_reply` until it returns
/// [`Next::Done`] (the final answer), sending the worker what it answers. Stops the worker on
/// the deadline, a stall, a cancellation or a reply it refuses, and explains a worker that
/// died. What confined the worker is put in `isolation` as soon as the worker says, so that a
/// run that fails afterwards still reports it.
fn run(
    spec: &WorkerSpec,
    request: &Request,
    deadline: Option<(Instant, Duration)>,
    observer: &dyn Observer,
    hops: &[HopInfo],
    isolation: &mut Option<Isolation>,
    on_reply: &mut dyn FnMut(Reply) -> Next,
) -> Result<(), MigrateError> {
    let mut worker = Worker::start(spec, request)?;
    let mut in_flight: BTreeMap<u64, PluginCall> = BTreeMap::new();
    let mut last_heard = Instant::now();
    let mut step: Option<String> = None;
    // The thread answering the worker, once it asked.
    let mut answering: Option<std::thread::JoinHandle<()>> = None;
    let stop = |worker: &mut Worker,
                cause: StopCause,
                in_flight: &BTreeMap<u64, PluginCall>,
                step: &Option<String>| {
        let status = worker.stop(observer);
        stopped(cause, status, worker, in_flight, step, hops)
    };
    loop {
        let signal = spec.cancel.load(Ordering::SeqCst);
        if signal != 0 {
            let cause = StopCause::Cancelled {
                signal: signal as i32,
            };
            return Err(stop(&mut worker, cause, &in_flight, &step));
        }
        if let Some((at, limit)) = deadline {
            if Instant::now() >= at {
                let cause = StopCause::Deadline {
                    secs: limit.as_secs(),
                };
                return Err(stop(&mut worker, cause, &in_flight, &step));
            }
        }
        // A worker waiting for the supervisor's answer is not silent on its own account.
        if answering.as_ref().is_some_and(|a| !a.is_finished()) {
            last_heard = Instant::now();
        }
        if last_heard.elapsed() >= spec.stall {
            let cause = StopCause::Stalled {
                secs: spec.stall.as_secs(),
            };
            return Err(stop(&mut worker, cause, &in_flight, &step));
        }
        let event = match worker.events.recv_timeout(TICK) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => Event::Closed(None),
        };
        match event {
            Event::Stderr(line) => worker.stderr_line(observer, &line),
            Event::StderrClosed => worker.stderr_open = false,
            Event::Closed(problem) => {
                let status = worker.child.wait().ok();
                worker.drain_stderr(observer);
                // Ctrl-C reaches the worker too (same process group): that is a cancellation.
                let signal = spec.cancel.load(Ordering::SeqCst);
                let cause = match problem {
                    _ if signal != 0 => StopCause::Cancelled {
                        signal: signal as i32,
                    },
                    Some(detail) => StopCause::Protocol { detail },
                    None => StopCause::Died,
                };
                return Err(stopped(cause, status, &worker, &in_flight, &step, hops));
            }
            Event::Reply(reply) => {
                last_heard = Instant::now();
                match *reply {
                    Reply::Hello { protocol, version } => {
                        if !protocol::compatible(&protocol, &version) {
                            let detail = format!(
                                "the worker speaks {protocol} {version}, this supervisor {} {}",
                                protocol::PROTOCOL,
                                protocol::VERSION
                            );
                            return Err(stop(
                                &mut worker,
                                StopCause::Protocol { detail },
                                &in_flight,
                                &step,
                            ));
                        }
                    }
                    // Plugin code can write on this pipe too: a later report can only weaken
                    // the first, never claim more than the worker's own confinement said.
                    Reply::Isolation { isolation: i } => Isolation::fold(isolation, i),
                    Reply::StepStarted {
                        step: name,
                        total_bytes,
                    } => {
                        observer.step_started(&name, total_bytes);
                        step = Some(name);
                    }
                    Reply::Progress { bytes, records } => {
                        // The crash tests' `batch` point: the supervisor, as each batch lands.
                        migrate_transaction::fault::point("batch")
                            .map_err(|e| stop_for(&mut worker, observer, e))?;
                        observer.step_progress(bytes, records)
                    }
                    Reply::Calling { call } => {
                        in_flight.insert(call.id, call);
                    }
                    Reply::Returned { id } => {
                        in_flight.remove(&id);
                    }
                    Reply::Notice { message } => observer.notice(&message),
                    Reply::Warning { message } => observer.warning(&message),
                    other => {
                        // Its end is the caller's to show: a step's output may still be on its
                        // way to disk (the data step's, synced by the host).
                        if let Reply::Step { .. } = &other {
                            step = None;
                        }
                        match on_reply(other) {
                            Next::Wait => {}
                            Next::Done => {
                                worker.reap(observer);
                                return Ok(());
                            }
                            Next::Answer(answer) => {
                                let Some(input) = worker.input.take() else {
                                    let detail =
                                        "the worker asked again for an answer it had been given (the model checksums)"
                                            .into();
                                    let cause = StopCause::Protocol { detail };
                                    return Err(stop(&mut worker, cause, &in_flight, &step));
                                };
                                answering = answer_on_a_thread(input, answer);
                            }
                            Next::Refuse(detail) => {
                                let cause = StopCause::Protocol { detail };
                                return Err(stop(&mut worker, cause, &in_flight, &step));
                            }
                        }
                        // The time the supervisor's own handling took is not the worker's
                        // silence.
                        last_heard = Instant::now();
                    }
                }
            }
        }
    }
}

/// Works out `answer` and writes it to the worker on a thread of its own, then closes the
/// channel: the answer may wait (for the model checksums), and a worker that does not read it
/// (plugin code asked in its name) can fill the pipe; either would otherwise hold the
/// supervisor, its deadline and its stall limit with it. The thread ends with the worker at
/// the latest (the write then fails); a failed write leaves the worker without its answer,
/// which it reports, or the stall limit stops it.
fn answer_on_a_thread(
    mut input: BufWriter<ChildStdin>,
    answer: Box<dyn FnOnce() -> Request + Send>,
) -> Option<std::thread::JoinHandle<()>> {
    let written = std::thread::Builder::new()
        .name("worker-answer".into())
        .spawn(move || {
            if let Err(e) = protocol::write_frame(&mut input, &answer()) {
                tracing::debug!("cannot answer the worker: {e}");
            }
        });
    written
        .map_err(|e| tracing::debug!("cannot start the thread answering the worker: {e}"))
        .ok()
}

/// Stops the worker because the supervisor itself failed.
fn stop_for(
    worker: &mut Worker,
    observer: &dyn Observer,
    e: migrate_transaction::Error,
) -> MigrateError {
    worker.stop(observer);
    e.into()
}

/// The error for a worker that is gone: why, and what it was doing.
fn stopped(
    cause: StopCause,
    status: Option<ExitStatus>,
    worker: &Worker,
    in_flight: &BTreeMap<u64, PluginCall>,
    step: &Option<String>,
    hops: &[HopInfo],
) -> MigrateError {
    let cause = match cause {
        StopCause::Died if worker.out_of_memory => StopCause::MemoryLimit,
        StopCause::Died => match status {
            Some(s) => match s.signal() {
                Some(signal) => StopCause::Signal { signal },
                None => StopCause::Exit {
                    code: s.code().unwrap_or(-1),
                },
            },
            None => StopCause::Died,
        },
        other => other,
    };
    let calls: Vec<String> = in_flight.values().map(|c| describe_call(c, hops)).collect();
    let during = match (calls.as_slice(), step) {
        ([], Some(step)) => format!("during the {step} step, between plugin calls"),
        ([], None) => "before any plugin call".to_owned(),
        _ => format!("while {}", calls.join("; and while ")),
    };
    let plugin = in_flight.values().next().map(|c| c.plugin.clone());
    MigrateError::WorkerStopped {
        cause,
        during,
        plugin,
        step: step.clone(),
    }
}

/// `plugin X (hop A → B; file F, sha256 S) was migrating data data/x.jsonl, lines 1–4096`.
fn describe_call(call: &PluginCall, hops: &[HopInfo]) -> String {
    let file = hops
        .iter()
        .find(|h| h.descriptor.name == call.plugin)
        .map(|h| format!("; file {}, sha256 {}", h.path.display(), h.sha256))
        .unwrap_or_default();
    let places = match call.places {
        Some((a, b)) if call.kind == "data" => format!(", lines/records {a}–{b}"),
        _ => String::new(),
    };
    format!(
        "plugin {} (hop {}{file}) was migrating the {} {}{places}",
        call.plugin, call.hop, call.kind, call.file
    )
}

/// Where a worker stages: the staging folder it writes, and the model snapshot it reads
/// ([`crate::stage::snapshot`]; `None` without model folders).
pub struct Folders<'a> {
    pub staging: &'a Path,
    pub snapshot: Option<&'a Path>,
}

/// Stages `plan` into `staging` in a worker. Each finished step's result is pushed to
/// `steps` as it arrives; returns the installation files the commit must delete. What
/// confined the worker is put in `isolation` whatever the outcome: a run that failed ran
/// plugin code too, and its report says how it was confined. `checksums`, when the
/// supervisor hashes the installation's model files: what the worker asks for before its
/// models step, and hands to the model rules, answered once they are all taken.
#[allow(clippy::too_many_arguments)]
pub fn stage(
    spec: &WorkerSpec,
    plan: &Plan,
    Folders { staging, snapshot }: Folders,
    observer: &dyn Observer,
    deadline: Option<(Instant, Duration)>,
    isolation: &mut Option<Isolation>,
    steps: &mut dyn FnMut(StepResult),
    checksums: Option<&Checksums<'_>>,
) -> Result<Vec<String>, MigrateError> {
    let confinement = Confinement {
        sandbox: spec.sandbox,
        read: std::iter::once(plan.target.root.clone())
            .chain(snapshot.map(Path::to_path_buf))
            .chain(
                plan.hops
                    .iter()
                    .filter_map(|h| h.path.parent().map(Path::to_path_buf)),
            )
            .collect(),
        write: vec![staging.to_path_buf()],
        memory_limit: spec.memory_limit,
    };
    let request = Request::Stage {
        plan: Box::new(plan.clone()),
        staging: staging.to_path_buf(),
        snapshot: snapshot.map(Path::to_path_buf),
        confinement,
        checksums: checksums.is_some(),
    };
    let mut outcome = None;
    run(
        spec,
        &request,
        deadline,
        observer,
        &plan.hops,
        isolation,
        &mut |reply| match reply {
            Reply::Step { result } => {
                steps(result);
                Next::Wait
            }
            Reply::WantChecksums => match checksums {
                Some(taken) => {
                    let taken = taken();
                    Next::Answer(Box::new(move || {
                        let files = within_a_frame(taken());
                        tracing::debug!(
                            files = files.len(),
                            "model checksums handed to the worker"
                        );
                        Request::Checksums { files }
                    }))
                }
                None => Next::Refuse("the worker asked for checksums it was not offered".into()),
            },
            Reply::Staged { result } => {
                outcome = Some(result);
                Next::Done
            }
            _ => Next::Wait,
        },
    )?;
    match outcome {
        Some(Ok(removals)) => Ok(removals),
        Some(Err(e)) => Err(e.into()),
        None => unreachable!("run returns Ok only after the final reply"),
    }
}

/// As many of `files` as a protocol frame surely holds (the first ones; the rules hash the
/// others themselves): the checksums are an optimisation, never a reason to fail a run.
fn within_a_frame(mut files: Vec<FileEntry>) -> Vec<FileEntry> {
    let mut bytes = 0;
    let fit = files
        .iter()
        .take_while(|f| {
            // A generous bound on the entry's JSON: its path escaped, the digest, the size.
            bytes += 6 * f.path.len() + f.sha256.len() + 64;
            bytes <= protocol::MAX_FRAME / 2
        })
        .count();
    files.truncate(fit);
    files
}

/// Describes plugin files by loading each in a worker of its own, so that a plugin that
/// crashes while it loads takes down only its own worker and is listed as invalid.
pub struct WorkerLoader {
    spec: WorkerSpec,
    isolation: Mutex<Option<Isolation>>,
}

impl WorkerLoader {
    pub fn new(spec: WorkerSpec) -> Self {
        WorkerLoader {
            spec,
            isolation: Mutex::new(None),
        }
    }
}

impl Loader for WorkerLoader {
    /// What confined the workers that loaded plugins, once one has run: what held for all of
    /// them ([`Isolation::weakest`]).
    fn isolation(&self) -> Option<Isolation> {
        self.isolation.lock().ok().and_then(|i| i.clone())
    }

    fn describe(&self, path: &Path, sha256: &str) -> Result<HopDescriptor, String> {
        let confinement = Confinement {
            sandbox: self.spec.sandbox,
            read: path.parent().map(Path::to_path_buf).into_iter().collect(),
            write: Vec::new(),
            memory_limit: self.spec.memory_limit,
        };
        let request = Request::Describe {
            path: path.to_path_buf(),
            sha256: sha256.to_owned(),
            confinement,
        };
        let mut described = None;
        let silent = crate::observe::Silent;
        let deadline = Some((Instant::now() + DESCRIBE_LIMIT, DESCRIBE_LIMIT));
        let mut isolation = None;
        let ran = run(
            &self.spec,
            &request,
            deadline,
            &silent,
            &[],
            &mut isolation,
            &mut |reply| {
                if let Reply::Described { result } = reply {
                    described = Some(result);
                    return Next::Done;
                }
                Next::Wait
            },
        );
        if let (Ok(mut slot), Some(i)) = (self.isolation.lock(), isolation) {
            Isolation::fold(&mut slot, i);
        }
        ran.map_err(|e| format!("loading it in a worker failed: {e}"))?;
        described.unwrap_or_else(|| Err("the worker gave no descriptor".into()))
    }
}

/// Loading a plugin and reading its descriptor takes milliseconds; one that takes longer is
/// stuck in its initialisers.
const DESCRIBE_LIMIT: Duration = Duration::from_secs(30);

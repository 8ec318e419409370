//! Finding hop plugins, deciding which may run, and — in the worker process only — loading
//! them. The supervisor (the process the operator started) never maps a plugin: it inspects
//! each file (trust checks, `plugins.lock`, sha256) and asks a [`Loader`] (a sandboxed worker
//! process) for the descriptor of each file that passed; the worker verifies that the file it
//! opens still has that sha256 before it loads it.
//!
//! Each candidate file is opened once, hashed from the open descriptor, and loaded through
//! `/proc/self/fd/N`, so the bytes hashed are the bytes loaded. Each plugin is loaded on its own
//! with `lib_header_from_path` + `init_root_module` (abi_stable's `load_from_file` caches one
//! module per type and would hand back the first plugin for every path). A file that is not a
//! valid plugin is reported with its reason, never fatal.
//!
//! Before anything is loaded, each file passes the [`trust`] checks (owner and
//! permissions of the file and its folder) and, when its folder has a `plugins.lock`, the
//! [`lockfile`] check of its sha256 — both on the open descriptor, because
//! dlopen runs a library's initialisers before any other check could. A refused file is never
//! loaded.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModuleError};
use plugin_api::ffi::{HopClient, HopModule_Ref};
use plugin_api::HopDescriptor;
use semver::Version;
use serde::Serialize;

use super::lockfile::{self, Lock};
use super::trust::{self, TrustProblem};
use crate::error::{MigrateError, Result};

/// Where plugins are looked for, in precedence order.
#[derive(Debug, Clone, Default)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
}

/// Options that shape discovery.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// `--plugin-dir`, in the order given.
    pub plugin_dirs: Vec<PathBuf>,
    /// Skip the environment variable and the default folders.
    pub no_default_dirs: bool,
    /// `--use-plugin NAME|PATH`: wins a conflict between two plugins for one hop.
    pub preferred: Vec<String>,
    /// `--allow-insecure-plugins`: load files that fail the owner/permission checks, with a
    /// warning, instead of refusing them.
    pub allow_insecure: bool,
    /// Do not enforce `plugins.lock` (only `migrate plugins pin`, which rewrites the locks).
    pub ignore_locks: bool,
}

impl Discovery {
    /// `--plugin-dir`s, then `TRUSTFORMERS_PLUGIN_DIR`, then the executable's folder and its
    /// `plugins/`, then the per-user and the system folder.
    pub fn search_path(&self) -> SearchPath {
        let mut dirs = self.plugin_dirs.clone();
        if !self.no_default_dirs {
            if let Some(env) = std::env::var_os("TRUSTFORMERS_PLUGIN_DIR") {
                dirs.extend(std::env::split_paths(&env));
            }
            if let Some(exe_dir) = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            {
                dirs.push(exe_dir.join("plugins"));
                dirs.push(exe_dir);
            }
            dirs.push(user_plugin_dir());
            dirs.push(PathBuf::from("/usr/lib/trustformers-migrate/plugins"));
        }
        let mut seen = Vec::new();
        dirs.retain(|d| {
            let key = d.canonicalize().unwrap_or_else(|_| d.clone());
            let fresh = !seen.contains(&key);
            seen.push(key);
            fresh
        });
        SearchPath { dirs }
    }
}

fn user_plugin_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from(".local/share"));
    base.join("trustformers-migrate/plugins")
}

/// What became of one candidate file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Loaded and part of the version graph.
    Active,
    /// A plugin for the same hop in a folder of higher precedence is used instead.
    Shadowed { by: PathBuf },
    /// Another plugin in a folder of the same precedence claims the same hop.
    Conflict { with: PathBuf },
    /// Not usable: the reason says why.
    Invalid { reason: String },
    /// Never loaded: the file failed the trust checks (owner, permissions) or its folder's
    /// `plugins.lock`. The reason names the path and the fix.
    Refused { reason: String },
}

/// A plugin file and what we know about it.
#[derive(Clone, Serialize)]
pub struct PluginEntry {
    pub path: PathBuf,
    pub sha256: String,
    pub descriptor: Option<HopDescriptor>,
    pub status: Status,
    /// Checks that failed but were overridden by `--allow-insecure-plugins`.
    pub warnings: Vec<String>,
    /// Whether the file was handed to dlopen (its code ran). With `path` and `sha256`, what an
    /// audit log of loaded plugins records.
    pub loaded: bool,
    /// The file's name in its plugin folder (before symlinks): what `plugins.lock` lists.
    #[serde(skip)]
    pub file_name: String,
    /// Index of the folder in the search path (0 = highest precedence).
    #[serde(skip)]
    pub rank: usize,
}

/// Loads a plugin file somewhere safe and returns what it says about itself. The engine's
/// worker module implements it with a sandboxed worker process; the file must still have
/// `sha256` when it is opened there, or it is refused.
pub trait Loader: Sync {
    fn describe(&self, path: &Path, sha256: &str) -> std::result::Result<HopDescriptor, String>;

    /// What confined the plugin code that `describe` ran, once some has run: what held for
    /// all of it. `None` when no plugin code ran, or for a loader that does not say.
    fn isolation(&self) -> Option<crate::isolation::Isolation> {
        None
    }
}

impl std::fmt::Debug for PluginEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEntry")
            .field("path", &self.path)
            .field("status", &self.status)
            .finish()
    }
}

/// A usable hop: its versions, what its plugin says, and which file (by content) it is.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HopInfo {
    pub from: Version,
    pub to: Version,
    pub descriptor: HopDescriptor,
    pub path: PathBuf,
    /// Of the file that was inspected, and that the worker checks again before loading it.
    pub sha256: String,
}

/// A hop whose plugin is mapped into this process (a worker's) and can be called.
#[derive(Clone)]
pub struct LoadedHop {
    pub info: HopInfo,
    pub client: HopClient,
}

impl std::ops::Deref for LoadedHop {
    type Target = HopInfo;

    fn deref(&self) -> &HopInfo {
        &self.info
    }
}

impl LoadedHop {
    /// Loads the hop's plugin file into this process, refusing it unless the file opened has
    /// the sha256 the supervisor inspected. Only a worker process calls this.
    pub fn load(info: HopInfo) -> std::result::Result<LoadedHop, LoadFailure> {
        let (client, descriptor) = load_verified(&info.path, &info.sha256)?;
        if descriptor != info.descriptor {
            return Err(LoadFailure::Descriptor(format!(
                "{} describes itself differently than when it was inspected",
                info.path.display()
            )));
        }
        Ok(LoadedHop { info, client })
    }
}

/// Opens `path`, checks its content against `sha256`, and loads that very file (through its
/// descriptor). Returns the client and the descriptor the plugin gives.
pub fn load_verified(
    path: &Path,
    sha256: &str,
) -> std::result::Result<(HopClient, HopDescriptor), LoadFailure> {
    let unreadable = |action| {
        move |e: std::io::Error| LoadFailure::Unreadable {
            action,
            detail: e.to_string(),
        }
    };
    let mut file = File::open(path).map_err(unreadable("open"))?;
    let found = plugin_api::model::sha256_reader(&mut file)
        .map(|(_, hex)| hex)
        .map_err(unreadable("read"))?;
    if found != sha256 {
        return Err(LoadFailure::Changed {
            expected: sha256.to_owned(),
            found,
        });
    }
    load_open(file, path)
}

/// Every plugin found, usable or not.
#[derive(Default)]
pub struct Registry {
    pub search_path: Vec<PathBuf>,
    pub entries: Vec<PluginEntry>,
    /// What confined the workers that described the plugin files ([`Loader::isolation`]).
    /// Plugin code ran there too: a migration's result reports what held for them and for
    /// its own worker, whoever embeds the engine.
    pub isolation: Option<crate::isolation::Isolation>,
}

impl Registry {
    /// Scans the search path, inspects every candidate and has `loader` describe each one that
    /// passed the checks.
    pub fn discover(discovery: &Discovery, loader: &dyn Loader) -> Result<Registry> {
        let search = discovery.search_path();
        let mut entries = Vec::new();
        for (rank, dir) in search.dirs.iter().enumerate() {
            let files = candidates(dir);
            if files.is_empty() {
                continue;
            }
            let folder = Folder::inspect(dir, discovery);
            entries.extend(load_entries(&files, rank, &folder, loader));
        }
        resolve_duplicates(&mut entries, &discovery.preferred);
        warn_about_trust(&entries);
        Ok(Registry {
            search_path: search.dirs,
            entries,
            isolation: loader.isolation(),
        })
    }

    /// The hops that take part in path finding.
    pub fn active_hops(&self) -> Vec<HopInfo> {
        self.entries
            .iter()
            .filter(|e| e.status == Status::Active)
            .filter_map(|e| {
                let d = e.descriptor.clone()?;
                Some(HopInfo {
                    from: Version::parse(&d.from).ok()?,
                    to: Version::parse(&d.to).ok()?,
                    descriptor: d,
                    path: e.path.clone(),
                    sha256: e.sha256.clone(),
                })
            })
            .collect()
    }

    /// Hops claimed by two plugins of equal precedence; migration refuses to guess.
    pub fn conflicts(&self) -> Vec<(PathBuf, PathBuf, String)> {
        self.entries
            .iter()
            .filter_map(|e| match &e.status {
                Status::Conflict { with } => {
                    let hop = e
                        .descriptor
                        .as_ref()
                        .map(|d| format!("{} → {}", d.from, d.to))
                        .unwrap_or_default();
                    Some((e.path.clone(), with.clone(), hop))
                }
                _ => None,
            })
            .collect()
    }

    /// An error if any hop is claimed twice; checked before planning a migration.
    pub fn ensure_no_conflicts(&self) -> Result<()> {
        let conflicts = self.conflicts();
        let Some((a, b, hop)) = conflicts.into_iter().next() else {
            return Ok(());
        };
        Err(MigrateError::PluginConflict {
            hop,
            first: a,
            second: b,
        })
    }
}

/// Says on stderr (log level warn) which files were refused or loaded despite failed checks:
/// a migration that then finds no path shows why.
fn warn_about_trust(entries: &[PluginEntry]) {
    for e in entries {
        if let Status::Refused { reason } = &e.status {
            tracing::warn!("plugin not loaded: {reason}");
        }
        for w in &e.warnings {
            tracing::warn!("insecure plugin loaded (--allow-insecure-plugins): {w}");
        }
    }
}

/// Library files in `dir`, sorted for deterministic output. A missing folder has none.
pub(crate) fn candidates(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = read
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_library(p))
        .collect();
    out.sort();
    out
}

fn is_library(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

/// What is known about a plugin folder before any of its files is opened: failed trust checks
/// of the folder and of its `plugins.lock`, and the lock itself.
pub(crate) struct Folder {
    dir: PathBuf,
    problems: Vec<TrustProblem>,
    lock: Option<Lock>,
    allow_insecure: bool,
}

impl Folder {
    pub(crate) fn inspect(dir: &Path, discovery: &Discovery) -> Folder {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let lock = (!discovery.ignore_locks)
            .then(|| lockfile::read(&dir))
            .flatten();
        let problems = trust::check_dir(&dir)
            .err()
            .into_iter()
            .chain(lock.as_ref().and_then(|l| l.insecure.clone()))
            .collect();
        Folder {
            dir,
            problems,
            lock,
            allow_insecure: discovery.allow_insecure,
        }
    }

    pub(crate) fn lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }
}

/// A candidate file opened and hashed, with the verdict of the checks made before loading.
pub(crate) struct Inspected {
    pub sha256: String,
    /// Why the file must not be loaded, if it must not.
    pub refusal: Option<String>,
    /// Failed trust checks overridden by `--allow-insecure-plugins`.
    pub warnings: Vec<String>,
}

/// Why a candidate file is not a usable plugin (listed as `invalid`, never fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadFailure {
    #[error("cannot {action}: {detail}")]
    Unreadable {
        action: &'static str,
        detail: String,
    },
    /// abi_stable or dlopen refused the library; the text is already one readable line.
    #[error("{0}")]
    NotLoadable(String),
    #[error("descriptor failed: {0}")]
    Descriptor(String),
    #[error("hop source `{0}` is not semver: {1}")]
    BadFrom(String, String),
    #[error("hop target `{0}` is not semver: {1}")]
    BadTo(String, String),
    #[error("hop {from} → {to} does not go forward: a hop must lead to a newer release (so hops can never form a cycle); the plugin's HopDescriptor needs fixing")]
    Backwards { from: Version, to: Version },
    #[error("speaks payload version {0}, this host understands up to {max}: upgrade migrate", max = plugin_api::PAYLOAD_VERSION)]
    NewerPayload(u32),
    #[error("changed since it was inspected (sha256 {found}, inspected {expected}): refused")]
    Changed { expected: String, found: String },
}

/// Opens `path` (canonical) and hashes it; trust and lock checks use the open descriptor.
/// `name` is the file's name in `folder`. Loads nothing.
pub(crate) fn inspect(
    path: &Path,
    name: &str,
    folder: &Folder,
) -> std::result::Result<Inspected, LoadFailure> {
    let unreadable = |action| {
        move |e: std::io::Error| LoadFailure::Unreadable {
            action,
            detail: e.to_string(),
        }
    };
    let mut file = File::open(path).map_err(unreadable("open"))?;
    let meta = file.metadata().map_err(unreadable("inspect"))?;
    let sha256 = plugin_api::model::sha256_reader(&mut file)
        .map(|(_, hex)| hex)
        .map_err(unreadable("read"))?;
    let (refusal, warnings) = verdict(path, name, &meta, &sha256, folder);
    Ok(Inspected {
        sha256,
        refusal,
        warnings,
    })
}

/// Trust checks (folder, its lock, the file's real folder, the file), then the lock check.
/// Returns the refusal, if any, and the trust failures `--allow-insecure-plugins` overrode.
fn verdict(
    path: &Path,
    name: &str,
    meta: &std::fs::Metadata,
    sha256: &str,
    folder: &Folder,
) -> (Option<String>, Vec<String>) {
    let mut insecure = folder.problems.clone();
    if let Some(parent) = path.parent().filter(|p| *p != folder.dir) {
        insecure.extend(trust::check_dir(parent).err());
    }
    insecure.extend(trust::check(path, meta, "plugin").err());
    let insecure: Vec<String> = insecure.iter().map(ToString::to_string).collect();
    if !insecure.is_empty() && !folder.allow_insecure {
        let reason = format!(
            "{}; or pass --allow-insecure-plugins to load it anyway",
            insecure.join("; ")
        );
        return (Some(reason), Vec::new());
    }
    let pin = folder
        .lock
        .as_ref()
        .and_then(|l| l.check(path, name, sha256).err())
        .map(|p| p.to_string());
    (pin, insecure)
}

/// [`load_entry`] for each of a folder's `files`, in their order, several at once: each is
/// hashed and then described by a worker process of its own (about 50 ms a plugin here,
/// mostly starting the worker and loading the library), so that every command's discovery
/// takes about as long as its slowest plugin rather than the sum of all. At most as many run
/// at once as there are cores, so a folder of many plugins does not start a worker for each
/// at the same moment.
fn load_entries(
    files: &[PathBuf],
    rank: usize,
    folder: &Folder,
    loader: &dyn Loader,
) -> Vec<PluginEntry> {
    let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut entries = Vec::with_capacity(files.len());
    for wave in files.chunks(at_once.max(1)) {
        std::thread::scope(|scope| {
            let loading: Vec<_> = wave
                .iter()
                .map(|path| scope.spawn(move || load_entry(path, rank, folder, loader)))
                .collect();
            // A panic while loading is a bug of the host's own (plugin code runs in the
            // worker); it is raised here as it would have been without the threads.
            entries.extend(loading.into_iter().map(|l| match l.join() {
                Ok(entry) => entry,
                Err(panic) => std::panic::resume_unwind(panic),
            }));
        });
    }
    entries
}

fn load_entry(listed: &Path, rank: usize, folder: &Folder, loader: &dyn Loader) -> PluginEntry {
    let mut entry = PluginEntry::new(listed, rank);
    match inspect(&entry.path, &entry.file_name, folder) {
        Err(e) => {
            entry.status = Status::Invalid {
                reason: e.to_string(),
            }
        }
        Ok(inspected) => {
            entry.sha256 = inspected.sha256;
            entry.warnings = inspected.warnings;
            match inspected.refusal {
                Some(reason) => entry.status = Status::Refused { reason },
                None => entry.describe(loader),
            }
        }
    }
    entry
}

impl PluginEntry {
    /// A candidate not looked at yet; `listed` is its path in the plugin folder.
    fn new(listed: &Path, rank: usize) -> PluginEntry {
        let file_name = listed.file_name().unwrap_or_default().to_string_lossy();
        PluginEntry {
            path: listed
                .canonicalize()
                .unwrap_or_else(|_| listed.to_path_buf()),
            sha256: String::new(),
            descriptor: None,
            status: Status::Active,
            warnings: Vec::new(),
            loaded: false,
            file_name: file_name.into_owned(),
            rank,
        }
    }

    /// Has the inspected file loaded by `loader` and checks the descriptor it gives.
    fn describe(&mut self, loader: &dyn Loader) {
        self.loaded = true;
        self.status = match loader.describe(&self.path, &self.sha256) {
            Ok(descriptor) => {
                let status = match check_descriptor(&descriptor) {
                    Ok(()) => Status::Active,
                    Err(e) => Status::Invalid {
                        reason: e.to_string(),
                    },
                };
                self.descriptor = Some(descriptor);
                status
            }
            Err(reason) => Status::Invalid { reason },
        };
    }
}

/// Loads the file that was hashed, through its descriptor.
fn load_open(
    file: File,
    path: &Path,
) -> std::result::Result<(HopClient, HopDescriptor), LoadFailure> {
    let load_path = fd_path(&file).unwrap_or_else(|| path.to_path_buf());
    let loaded = load(&load_path);
    // From here dlopen may have mapped the file under `load_path`, even on failure.
    keep_open(file);
    loaded
}

fn load(load_path: &Path) -> std::result::Result<(HopClient, HopDescriptor), LoadFailure> {
    let refused = |e: LibraryError| LoadFailure::NotLoadable(describe_load_error(&e));
    let header = lib_header_from_path(load_path).map_err(refused)?;
    let module = header
        .init_root_module::<HopModule_Ref>()
        .map_err(refused)?;
    let client = HopClient::new(module);
    let descriptor = client
        .descriptor()
        .map_err(|e| LoadFailure::Descriptor(e.to_string()))?;
    Ok((client, descriptor))
}

/// dlopen recognises an already-loaded library by its path string: if this descriptor were
/// closed, the next plugin could get the same number, the same `/proc/self/fd/N` path, and
/// dlopen would hand back *this* library. Plugins are never unloaded, so neither is their fd.
fn keep_open(file: File) {
    #[cfg(unix)]
    {
        use std::os::fd::IntoRawFd;
        let _ = file.into_raw_fd();
    }
    #[cfg(not(unix))]
    drop(file);
}

#[cfg(target_os = "linux")]
fn fd_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    Some(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())))
}

#[cfg(not(target_os = "linux"))]
fn fd_path(_file: &File) -> Option<PathBuf> {
    None
}

/// One line a human can act on, for each way abi_stable can refuse a library (its layout
/// errors alone run to thousands of lines).
fn describe_load_error(e: &LibraryError) -> String {
    let api = plugin_api::API_VERSION;
    let major = api.split('.').next().unwrap_or("1");
    match e {
        LibraryError::OpenError { err, .. } => {
            format!("not a loadable library: {}", strip_fd_path(&err.to_string()))
        }
        LibraryError::GetSymbolError { .. } => {
            "not a trustformers-migrate plugin (no plugin root module symbol)".to_owned()
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => format!(
            "built against plugin-api {actual_version}, which this host cannot load: it loads plugins built against plugin-api {major}.x (it has {api}); rebuild the plugin against plugin-api {major}.x"
        ),
        // Plugins built against plugin-api 1.0–1.2: their constructor lets abi_stable catch
        // the panic, and its message stays in the plugin. From 1.3 it comes as `Returned`.
        LibraryError::RootModule { err: RootModuleError::Unwound, .. } => {
            "the plugin panicked while it was being loaded (in the code given to export_hop!)"
                .to_owned()
        }
        LibraryError::RootModule { err: RootModuleError::Returned(why), .. } => {
            format!("the plugin failed to load: {why}")
        }
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => format!(
            "built with an abi_stable or Rust C ABI this host cannot load; rebuild it with abi_stable 0.11 against plugin-api {major}.x"
        ),
        other => format!(
            "not loadable as a plugin built for this host (plugin-api {api}): {}",
            layout_summary(&other.to_string())
        ),
    }
}

/// libloading names the file it opened, here `/proc/self/fd/N`: noise for the operator.
fn strip_fd_path(text: &str) -> String {
    let text = text.trim();
    match text.strip_prefix("/proc/self/fd/") {
        Some(rest) => rest
            .split_once(": ")
            .map_or(text, |(_, why)| why)
            .to_owned(),
        None => text.to_owned(),
    }
}

/// The `Error:` lines of a layout error with the `Expected:`/`Found:` lines after them.
fn layout_summary(text: &str) -> String {
    let keep: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("Error:") || l.starts_with("Expected:") || l.starts_with("Found:")
        })
        .take(6)
        .collect();
    if !keep.is_empty() {
        return keep.join("; ");
    }
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    first.unwrap_or("unknown error").chars().take(300).collect()
}

/// A hop must be two semver versions going forward.
fn check_descriptor(d: &HopDescriptor) -> std::result::Result<(), LoadFailure> {
    let from =
        Version::parse(&d.from).map_err(|e| LoadFailure::BadFrom(d.from.clone(), e.to_string()))?;
    let to = Version::parse(&d.to).map_err(|e| LoadFailure::BadTo(d.to.clone(), e.to_string()))?;
    if to <= from {
        return Err(LoadFailure::Backwards { from, to });
    }
    if d.payload_version > plugin_api::PAYLOAD_VERSION {
        return Err(LoadFailure::NewerPayload(d.payload_version));
    }
    Ok(())
}

/// Marks hops claimed twice: a higher-precedence folder shadows a lower one; within one
/// precedence, a `--use-plugin` choice wins, otherwise both are in conflict.
fn resolve_duplicates(entries: &mut [PluginEntry], preferred: &[String]) {
    let mut by_hop: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let (Status::Active, Some(d)) = (&e.status, &e.descriptor) {
            by_hop
                .entry((d.from.clone(), d.to.clone()))
                .or_default()
                .push(i);
        }
    }
    for indices in by_hop.values().filter(|v| v.len() > 1) {
        let chosen: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| is_preferred(&entries[i], preferred))
            .collect();
        let winner = match chosen.as_slice() {
            [one] => Some(*one),
            _ => {
                let best = indices.iter().map(|&i| entries[i].rank).min().unwrap_or(0);
                let top: Vec<usize> = indices
                    .iter()
                    .copied()
                    .filter(|&i| entries[i].rank == best)
                    .collect();
                if top.len() == 1 {
                    Some(top[0])
                } else {
                    let (a, b) = (top[0], top[1]);
                    let (pa, pb) = (entries[a].path.clone(), entries[b].path.clone());
                    for &i in &top {
                        let with = if i == a { pb.clone() } else { pa.clone() };
                        entries[i].status = Status::Conflict { with };
                    }
                    for &i in indices.iter().filter(|i| !top.contains(i)) {
                        entries[i].status = Status::Shadowed { by: pa.clone() };
                    }
                    None
                }
            }
        };
        if let Some(w) = winner {
            let by = entries[w].path.clone();
            for &i in indices.iter().filter(|&&i| i != w) {
                entries[i].status = Status::Shadowed { by: by.clone() };
            }
        }
    }
}

fn is_preferred(entry: &PluginEntry, preferred: &[String]) -> bool {
    preferred.iter().any(|p| entry.is_named(p))
}

impl PluginEntry {
    /// Whether `--use-plugin CHOICE` names this plugin: by its descriptor's name, its file
    /// name in its folder (`libdup.so`), or its path.
    pub fn is_named(&self, choice: &str) -> bool {
        self.descriptor.as_ref().is_some_and(|d| d.name == choice)
            || self.file_name == choice
            || Path::new(choice)
                .canonicalize()
                .is_ok_and(|c| c == self.path)
    }
}

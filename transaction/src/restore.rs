//! `migrate rollback`: brings an installation back to the state a backup recorded. The backup
//! is extracted into staging and verified entry by entry first, so a damaged or malicious
//! backup is refused before the installation is touched; the swap then goes through the same
//! journal as a migration, so a crash during the restore is recoverable too.
//!
//! A rollback never destroys what the migration did not write: a file it would replace or
//! remove is compared with the sha256 the backup recorded of what the migration wrote. A file
//! changed since (a record appended after the migration, a file a damaged `created_files`
//! names) is first saved into a `pre_rollback` backup, and the report names it; a created
//! file that changed since is kept where it is. Those files are found through the
//! installation's [`Root`] (no link followed), under the lock, after the recovery and the
//! release check, so that the caller's question ([`RestoreRequest::confirm`]) is about the
//! installation as the restore finds it, and reads nothing outside it. They are looked at
//! again once the backup is extracted (a file changed since is saved too), and their status
//! once more just before the swap: one that moved in between stops the restore, which swaps
//! nothing. A writer still running through the swap itself can still lose what it writes into
//! the replaced file: the server must be stopped.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::audit::Audit;
use crate::backup::{self, BackupMetadata, BackupRequest};
use crate::confine::Root;
use crate::encrypt::{self, Identities, Recipients};
use crate::error::{io, Error, Result};
use crate::journal::{self, Modes, Transaction};
use crate::layout::{BACKUPS_DIR, TOOL_DIR};
use crate::lock::InstallLock;
use crate::staging::Staging;
use crate::stamp::FileStamp;

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup: PathBuf,
    pub root: PathBuf,
    pub restored_files: usize,
    pub removed_files: usize,
    /// The release the installation is back at (what its `VERSION` says after the restore,
    /// else the backup's source version).
    pub version: String,
    /// Files that changed after the migration, saved here before they were replaced.
    pub pre_rollback_backup: Option<PathBuf>,
    /// Files that changed after the migration and were saved into the pre-rollback backup.
    pub saved_files: Vec<String>,
    /// Files the migration created that changed since: kept where they are.
    pub kept_files: Vec<String>,
    /// What went wrong without undoing the restore (an audit entry that could not be written).
    pub warnings: Vec<String>,
}

/// What the operator asked for.
pub struct RestoreRequest<'a> {
    pub backup: &'a Path,
    /// `--path`; without it the backup's recorded root, when the backup lies under it.
    pub root: Option<&'a Path>,
    /// Restore even when the installation's `VERSION` is not the backup's target version.
    pub force: bool,
    /// Told the bytes of the archived files extracted so far (the sizes of the metadata's
    /// `files` in all): see [`backup::extract_at`]. First told 0 as the extraction begins,
    /// once the backup, the lock and the installation's release have been checked.
    pub progress: &'a dyn Fn(u64),
    /// Asked, when the restore would replace files that changed since the migration, whether to
    /// go on: under the lock, after the recovery and the release check, before anything is
    /// extracted. `Ok(false)` stops the restore ([`Error::Cancelled`]); an error (the answer
    /// could not be read) stops it too. The files are looked at again after the extraction: one
    /// changed after the question is saved too, and the report's warnings name it.
    pub confirm: &'a dyn Fn(&Changed) -> std::io::Result<bool>,
    /// The folder the pre-rollback backup goes into; `None`: the one holding the backup. A
    /// backup downloaded into a scratch folder names the installation's backup folder here,
    /// where `backups list` shows the saved files and nothing removes them with the download.
    pub save_into: Option<&'a Path>,
    /// Where the backup came from when `backup` is a copy that goes away after the restore
    /// (the `s3://` URL of a download): the audit trail names it instead of the copy.
    pub origin: Option<&'a str>,
}

/// What a restore will do with the installation's files that the migration wrote or created,
/// by whether each is still what the migration wrote (or was edited by the operator, appended
/// to by the server since).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Files the backup replaces: their current content is saved first into a pre-rollback
    /// backup.
    pub saved: Vec<String>,
    /// Files the migration created that changed since: kept where they are.
    pub kept: Vec<String>,
    /// Files the migration created, unchanged since: removed.
    pub removed: Vec<String>,
}

/// A file is at most this large to be read as `VERSION`.
const MAX_VERSION_BYTES: u64 = 4096;

/// The `kind` of the backup a rollback saves the changed files into: a few files, not what a
/// migration took, so never the backup to roll an installation back with.
pub const PRE_ROLLBACK_KIND: &str = "pre_rollback";

/// Restores the backup into its installation.
pub fn restore(req: &RestoreRequest) -> Result<RestoreReport> {
    restore_with(req, None)
}

/// [`restore`], decrypting an encrypted backup with `keys`. Without them, or with keys that do
/// not open it, it is refused before the installation is locked or anything is written.
pub fn restore_with(req: &RestoreRequest, keys: Option<&Identities>) -> Result<RestoreReport> {
    let backup_path = req.backup;
    // Below the installation, reached from it without following a link; elsewhere the
    // backup folder (and the folder holding it) must not be a link.
    let held = backup::open_backup(req.root, backup_path)?;
    let meta = backup::read_metadata_at(&held)?;
    if meta.kind == PRE_ROLLBACK_KIND && !req.force {
        return Err(pre_rollback_refused(backup_path, &meta));
    }
    encrypt::check_opens(&held, &meta.archive, meta.encryption.as_ref(), keys)?;
    let root = Root::open(&target_root(req, &meta)?)?;
    root.private_dir(TOOL_DIR)?;
    let _lock = InstallLock::acquire(&root.join(TOOL_DIR))?;
    let recovered = journal::recover(root.path(), false)?;
    let recovery = recovered.as_ref().and_then(recovery_note);
    let noted = |e| after_recovery(e, recovery.as_deref());
    if meta.kind == "full" && !req.force {
        check_version(&root, &meta).map_err(noted)?;
    }
    let (asked, looked) = changed_since(&root, &meta, None).map_err(noted)?;
    if !asked.saved.is_empty()
        && !(req.confirm)(&asked).map_err(io("cannot read the answer to the question"))?
    {
        return Err(Error::Cancelled {
            done: untouched(recovery.as_deref()),
        });
    }
    let mut staging = Staging::create(&root.join(TOOL_DIR)).map_err(noted)?;
    backup::extract_as(&held, &meta, &staging, keys, req.progress).map_err(noted)?;
    // Looked at again: a file written to while the operator was asked or the backup was
    // extracted (a server appending a record) is saved too. Only the files changed since the
    // first look are read again.
    let (
        Changed {
            saved: changed,
            kept,
            removed,
        },
        looked,
    ) = changed_since(&root, &meta, Some(&looked)).map_err(noted)?;
    let meanwhile: Vec<&str> = changed
        .iter()
        .chain(&kept)
        .filter(|rel| !asked.saved.contains(rel) && !asked.kept.contains(rel))
        .map(String::as_str)
        .collect();
    for rel in &removed {
        staging.remove_at_commit(rel);
    }
    let removed = removed.len();
    let pre_rollback = if changed.is_empty() {
        None
    } else {
        let saved = save_changed(&root, backup_path, req.save_into, &meta, &changed, keys);
        Some(saved.map_err(noted)?)
    };
    let txn = Transaction::prepare(
        root.path(),
        staging,
        &meta.target_version,
        &meta.source_version,
        None,
        Modes::Staged,
        None,
    )
    .map_err(noted)?;
    // The last look, a stat of each file: one written to while the changed files were saved
    // and the swap prepared (a server still running) stops the restore before any swap.
    let moved = crate::fault::point("restore_prepared")
        .and_then(|()| unmoved_since(&root, &looked, &kept, pre_rollback.as_deref()))
        .map_err(noted);
    if let Err(e) = moved.and_then(|()| txn.swap()) {
        return Err(match txn.rollback() {
            Ok(()) => e,
            Err(undo) => Error::Interrupted {
                root: root.path().to_path_buf(),
                reason: format!("{e}; undoing the partial restore also failed ({undo})"),
            },
        });
    }
    txn.commit().map_err(|e| Error::Interrupted {
        root: root.path().to_path_buf(),
        reason: format!(
            "every file is restored, but the end of the restore could not be recorded: {e}"
        ),
    })?;
    for dir in meta.created_dirs.iter().rev() {
        let _ = root.remove_empty_dir(dir);
    }
    let version = match meta.kind.as_str() {
        "full" => read_version(&root)?.unwrap_or_else(|| meta.source_version.clone()),
        _ => meta.source_version.clone(),
    };
    let named = req.origin.map_or_else(
        || serde_json::json!(backup_path),
        |url| serde_json::json!(url),
    );
    let recorded = Audit::new(root.path()).record(
        "rollback",
        serde_json::json!({"backup": named, "to_version": version, "from_version": meta.target_version, "restored_files": meta.files.len(), "removed_files": removed, "archive_sha256": meta.archive_sha256, "pre_rollback_backup": pre_rollback, "saved_files": changed, "kept_files": kept}),
    );
    let mut warnings: Vec<String> = recorded.err().map(|e| e.to_string()).into_iter().collect();
    if !meanwhile.is_empty() {
        warnings.insert(
            0,
            format!(
                "{} changed while the rollback ran (after its first look at the files): saved into the pre-rollback backup, or kept when the migration created it",
                meanwhile.join(", ")
            ),
        );
    }
    if let Some(note) = recovery {
        warnings.insert(0, note);
    }
    Ok(RestoreReport {
        warnings,
        backup: backup_path.to_path_buf(),
        root: root.path().to_path_buf(),
        restored_files: meta.files.len(),
        removed_files: removed,
        version,
        pre_rollback_backup: pre_rollback,
        saved_files: changed,
        kept_files: kept,
    })
}

/// `--path`, or the recorded root when the backup lies under it (the default layout): a
/// backup copied elsewhere, or a recorded root that is not absolute, must be told where to go.
fn target_root(req: &RestoreRequest, meta: &BackupMetadata) -> Result<PathBuf> {
    if let Some(root) = req.root {
        return Ok(root.to_path_buf());
    }
    let recorded = Path::new(&meta.root);
    let backup = req.backup.canonicalize().ok();
    let under = recorded.is_absolute()
        && recorded
            .canonicalize()
            .ok()
            .zip(backup)
            .is_some_and(|(r, b)| b.starts_with(&r));
    if under {
        Ok(recorded.to_path_buf())
    } else {
        Err(Error::Usage {
            message: format!(
                "{}: the backup does not lie under the installation it records (`{}`), so which installation to restore is not certain",
                req.backup.display(),
                meta.root
            ),
            hint: format!(
                "pass --path with the installation to restore into (it must be at {})",
                meta.target_version
            ),
        })
    }
}

/// What the recovery at the start of a restore changed, if anything: said in the report, and in
/// the error of a restore refused after it.
fn recovery_note(recovered: &journal::Recovery) -> Option<String> {
    match recovered {
        journal::Recovery::RolledBack { from, to } => Some(format!(
            "an interrupted migration {from} → {to} was found and rolled back first"
        )),
        journal::Recovery::Cleaned { removed } => Some(format!(
            "removed what a crashed run left: {}",
            removed.join(", ")
        )),
        journal::Recovery::Finished { .. } => None,
    }
}

/// What a restore stopped before its swap leaves: nothing changed, or what the recovery that
/// ran first did.
fn untouched(recovery: Option<&str>) -> String {
    match recovery {
        None => "nothing was changed".to_owned(),
        Some(note) => format!("the backup was not applied (before this, {note})"),
    }
}

/// The files a restore to `meta` would replace or remove, compared (through `root`: no link
/// followed, nothing outside it) with the sha256 the backup recorded of what the migration
/// wrote. A backup without those records (format 1) counts every file it would touch as
/// changed: saved first, or kept. With `before`, an earlier look, a file that is the very one
/// stamped then and unchanged since ([`FileStamp`]) keeps its verdict without being read again.
/// Returns the verdicts and this look.
fn changed_since(
    root: &Root,
    meta: &BackupMetadata,
    before: Option<&Look>,
) -> Result<(Changed, Look)> {
    let written = |rel: &str| meta.written.iter().find(|w| w.path == rel);
    let mut changed = Changed::default();
    let mut look = Look::default();
    for (rel, created) in meta
        .files
        .iter()
        .map(|f| (&f.path, false))
        .chain(meta.created_files.iter().map(|rel| (rel, true)))
    {
        let earlier = before.and_then(|b| b.0.iter().find(|(r, ..)| r == rel));
        let (verdict, seen) = judge(root, rel, written(rel), earlier.map(|(_, v, s)| (*v, *s)))?;
        match (verdict, created) {
            (Verdict::Absent, _) | (Verdict::Written, false) => {}
            (Verdict::Changed, false) => changed.saved.push(rel.clone()),
            (Verdict::Written, true) => changed.removed.push(rel.clone()),
            (Verdict::Changed, true) => changed.kept.push(rel.clone()),
        }
        look.0.push((rel.clone(), verdict, seen));
    }
    Ok((changed, look))
}

/// Whether a file is still what the migration wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Absent,
    Written,
    Changed,
}

/// One look at the files a restore touches: each one's verdict, and what was there.
#[derive(Debug, Default)]
struct Look(Vec<(String, Verdict, Seen)>);

/// What a look found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// No file.
    Absent,
    /// A file, settled when it was stamped: a later stamp tells whether it changed since.
    Stamped(FileStamp),
    /// A file still changing when it was looked at: no later look can tell it unchanged.
    Changing,
}

/// The verdict on the file at `rel`: the one of `earlier` when it is the file stamped then and
/// unchanged since, else read and compared with `written`, the sha256 the backup recorded. A
/// file that changes while it is read, or keeps changing, is counted as changed.
fn judge(
    root: &Root,
    rel: &str,
    written: Option<&backup::FileRecord>,
    earlier: Option<(Verdict, Seen)>,
) -> Result<(Verdict, Seen)> {
    let Some(file) = open_file(root, rel)? else {
        return Ok((Verdict::Absent, Seen::Absent));
    };
    let path = || root.join(rel).display().to_string();
    let stamp = FileStamp::settled(&file).map_err(io(format!("cannot stat {}", path())))?;
    let seen = stamp.map_or(Seen::Changing, Seen::Stamped);
    if let (Some((verdict, Seen::Stamped(then))), Seen::Stamped(now)) = (earlier, seen) {
        if then == now {
            return Ok((verdict, seen));
        }
    }
    let Some(w) = written else {
        return Ok((Verdict::Changed, seen));
    };
    let mut hashing = crate::fsutil::Hashing::new(std::io::BufReader::new(&file));
    std::io::copy(&mut hashing, &mut std::io::sink())
        .map_err(io(format!("cannot read {}", path())))?;
    let same = hashing.count() == w.size && hashing.hex() == w.sha256;
    let after = FileStamp::of(&file).map_err(io(format!("cannot stat {}", path())))?;
    let verdict = if same && stamp == Some(after) {
        Verdict::Written
    } else {
        Verdict::Changed
    };
    Ok((verdict, seen))
}

/// The file at `rel`, opened through `root`; `None` when there is none.
fn open_file(root: &Root, rel: &str) -> Result<Option<std::fs::File>> {
    if !root.file_exists(rel)? {
        return Ok(None);
    }
    root.open_read(rel, None).map(Some)
}

/// Refuses the restore (before its swap, which the caller undoes) when a file of `look` moved
/// since ([`moved_since`]): something still writes to the installation.
fn unmoved_since(
    root: &Root,
    look: &Look,
    kept: &[String],
    pre_rollback: Option<&Path>,
) -> Result<()> {
    let moved = moved_since(root, look, kept)?;
    let Some(first) = moved.first() else {
        return Ok(());
    };
    let kept = pre_rollback.map_or_else(String::new, |p| {
        format!(" (the pre-rollback backup {} is kept)", p.display())
    });
    Err(Error::invalid(
        root.join(first),
        format!(
            "{} changed while the rollback saved what had changed and prepared its swap: refused, nothing was changed{kept}",
            moved.join(", ")
        ),
        "something still writes to the installation: stop the server (and anything else writing there), then run the rollback again",
    ))
}

/// The files of `look` that are no longer what it saw (written to, replaced, come or gone),
/// once the swap is prepared; those `kept` (the swap leaves them as they are) do not count.
/// Preparing the swap linked each original aside, which moved its change time; so the change
/// time is left out here ([`FileStamp::unwritten_in`]), and a write shows by the size or the
/// modification time. A file that was still changing at the look counts as moved.
fn moved_since(root: &Root, look: &Look, kept: &[String]) -> Result<Vec<String>> {
    let mut moved = Vec::new();
    for (rel, _, seen) in look.0.iter().filter(|(rel, ..)| !kept.contains(rel)) {
        let now = match open_file(root, rel)? {
            None => None,
            Some(file) => Some(
                FileStamp::of(&file)
                    .map_err(io(format!("cannot stat {}", root.join(rel).display())))?,
            ),
        };
        let same = match (seen, now) {
            (Seen::Absent, None) => true,
            (Seen::Stamped(then), Some(now)) => then.unwritten_in(&now),
            _ => false,
        };
        if !same {
            moved.push(rel.clone());
        }
    }
    Ok(moved)
}

/// A refusal after the recovery changed something: "nothing was changed" would not be true,
/// so it says that the backup was not applied, and what the recovery did.
fn after_recovery(e: Error, recovery: Option<&str>) -> Error {
    match (e, recovery) {
        (
            Error::Invalid {
                path,
                message,
                hint,
            },
            Some(note),
        ) => {
            let undone =
                |text: &str| text.replace("nothing was changed", "the backup was not applied");
            Error::Invalid {
                path,
                message: format!("{} (before this, {note})", undone(&message)),
                hint: undone(&hint),
            }
        }
        (e, _) => e,
    }
}

/// A full backup restores an installation at its target version only.
fn check_version(root: &Root, meta: &BackupMetadata) -> Result<()> {
    let found = read_version(root)?;
    if found.as_deref() == Some(meta.target_version.as_str()) {
        return Ok(());
    }
    Err(Error::invalid(
        root.join(crate::layout::VERSION_FILE),
        format!(
            "the installation is at {}, but the backup restores an installation at {} (to {}): refused, nothing was changed",
            found.as_deref().unwrap_or("an unknown version (no VERSION)"),
            meta.target_version,
            meta.source_version
        ),
        "check that --path and --backup-path are the ones you mean; pass --force only if you are sure",
    ))
}

/// A pre-rollback backup holds the files a rollback replaced, as they were at the newer release
/// (`source_version`): restored, they would sit in an installation at the older one
/// (`target_version`), its check passing since that is the release the rollback went back to.
fn pre_rollback_refused(backup_path: &Path, meta: &BackupMetadata) -> Error {
    let files: Vec<&str> = meta.files.iter().map(|f| f.path.as_str()).collect();
    let archive = backup_path.join(&meta.archive);
    let extract = match meta.encryption {
        Some(_) => format!(
            "age -d -i IDENTITY {} | tar -I zstd -xf - -C DIR",
            archive.display()
        ),
        None => format!("tar -I zstd -xf {} -C DIR", archive.display()),
    };
    Error::invalid(
        backup_path,
        format!(
            "a pre-rollback backup: it holds {} as they were at {} before a rollback to {} replaced them, not an installation; restored, they would mix the two releases: refused, nothing was changed",
            files.join(", "),
            meta.source_version,
            meta.target_version
        ),
        format!(
            "to read a saved file, extract it elsewhere: `{extract}`; pass --force only to put those files back as they were"
        ),
    )
}

fn read_version(root: &Root) -> Result<Option<String>> {
    let rel = crate::layout::VERSION_FILE;
    if !root.file_exists(rel)? {
        return Ok(None);
    }
    let bytes = root.read(rel, MAX_VERSION_BYTES)?;
    Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned()))
}

/// Archives `changed` (as they are now) into a `pre_rollback_backup_<ts>/` in `into`, else
/// beside the backup; encrypted to the same recipients when the backup was (`keys` opened it,
/// so they open this).
fn save_changed(
    root: &Root,
    backup_path: &Path,
    into: Option<&Path>,
    meta: &BackupMetadata,
    changed: &[String],
    keys: Option<&Identities>,
) -> Result<PathBuf> {
    let to = match &meta.encryption {
        Some(e) => Some(Recipients::parse(&e.recipients).map_err(|why| {
            Error::invalid(
                backup_path.join(backup::METADATA),
                why,
                "the backup's metadata is damaged; nothing was changed; use another backup",
            )
        })?),
        None => None,
    };
    let dir = match into {
        Some(into) => into.to_path_buf(),
        None => backup_path
            .canonicalize()
            .ok()
            .and_then(|b| b.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| root.join(BACKUPS_DIR)),
    };
    let open = |rel: &str| root.open_read(rel, None);
    let path = backup::create(&BackupRequest {
        root: root.path(),
        dir: &dir,
        kind: PRE_ROLLBACK_KIND,
        from: &meta.target_version,
        to: &meta.source_version,
        open_source: &open,
        files: changed.to_vec(),
        created_files: Vec::new(),
        created_dirs: Vec::new(),
        written: Vec::new(),
        open_written: &open,
        known_written: None,
        progress: &|_| {},
        encrypt_to: to.as_ref(),
    })?;
    // `create` read the archive back as it wrote it (its zstd stream, frame checksums, entries
    // and sizes) but never checks that the age layer decrypts: here the identity is at hand,
    // so an encrypted one is decrypted and every entry's sha256 checked.
    if to.is_some() {
        backup::verify_with(&path, keys)?;
    }
    Ok(path)
}

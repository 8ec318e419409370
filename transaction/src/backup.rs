//! Backups: a zstd-compressed tar of every file a migration replaces or removes, plus
//! `metadata.json` (versions, time, host, and each archived file's path, size, mode and sha256,
//! and the files and folders the migration creates).
//!
//! Why that is enough to restore: a migration only ever replaces, removes or creates the files
//! its journal lists; every other file is left untouched. Restoring the archived files and
//! deleting the created ones therefore gives back the tree as it was, byte for byte.
//!
//! The metadata also records the sha256 of every file the migration wrote (`written`), so that
//! a rollback can tell what changed since and never destroys what the migration did not write.
//! Backups hold secrets (API keys in plaintext): folders are 0700 and files 0600 whatever the
//! umask. Reading one is bounded: `metadata.json` is a regular file under [`MAX_METADATA`], an
//! archive entry is refused as soon as it passes the size the metadata declares.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::confine::{self, Kind, Root};
use crate::encrypt::{self, Encryption, Identities, Recipients, Sealed};
use crate::error::{io as io_err, Error, Result};
use crate::fsutil::{self, Ahead, Hashing, Spare, Tally, Told};
use crate::identity::{host_name, user_name};
use crate::staging::Staging;

pub const ARCHIVE: &str = "backup.tar.zst";
pub const METADATA: &str = "metadata.json";
const FORMAT: u32 = 2;
/// `metadata.json` is refused past this size, before it is read.
pub const MAX_METADATA: u64 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupMetadata {
    pub format: u32,
    /// `full`, `config`, `data` or `model`.
    pub kind: String,
    pub source_version: String,
    pub target_version: String,
    pub created_unix: u64,
    pub created: String,
    pub host: String,
    pub user: String,
    /// The installation it was taken from.
    pub root: String,
    pub archive: String,
    pub archive_sha256: String,
    pub files: Vec<FileRecord>,
    /// Files the migration created (deleted again on restore).
    pub created_files: Vec<String>,
    /// Folders the migration created, parents first.
    pub created_dirs: Vec<String>,
    /// What the migration wrote: every file it replaced or created, with the sha256 of the new
    /// content. A rollback replaces or removes a file only while it is still this; format 1
    /// backups have none, and every file they would touch counts as changed since.
    #[serde(default)]
    pub written: Vec<FileRecord>,
    /// Set when the archive is an age file (`backup.tar.zst.age`): to whom it is encrypted.
    /// Absent in older backups, which read as unencrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// What to back up.
pub struct BackupRequest<'a> {
    /// The installation, canonical (what `metadata.json` records as `root`).
    pub root: &'a Path,
    /// The folder that holds backups (`<root>/backups`, `TRUSTFORMERS_BACKUP_DIR`, `--backup-dir`).
    pub dir: &'a Path,
    pub kind: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// Opens the content of `rel` to archive (confined: the journal's kept originals).
    pub open_source: &'a dyn Fn(&str) -> Result<File>,
    pub files: Vec<String>,
    pub created_files: Vec<String>,
    pub created_dirs: Vec<String>,
    /// Encrypt the archive to these age recipients (`[backup] encrypt_to`).
    pub encrypt_to: Option<&'a Recipients>,
    /// Files the migration writes, and how to open their new content (to record its sha256).
    pub written: Vec<String>,
    /// `Sync`: the files are opened and hashed on a thread of their own, one at a time.
    pub open_written: &'a (dyn Fn(&str) -> Result<File> + Sync),
    /// The size and sha256 of a written file (`rel`, opened) already known to the caller, if
    /// it still stands for the file: that file is then not read again. `None`: every written
    /// file is hashed.
    pub known_written: Option<&'a KnownDigest<'a>>,
    /// Told the bytes of `files` archived so far, about every MiB and once at the end: an
    /// archive of a large log takes minutes, and a progress bar that stands still for that
    /// long looks hung.
    pub progress: &'a dyn Fn(u64),
}

/// See [`BackupRequest::known_written`]: the caller's size and sha256 of the file `rel`, opened,
/// when it knows them for that very file.
pub type KnownDigest<'a> = dyn Fn(&str, &File) -> Option<(u64, String)> + Sync + 'a;

/// Opens the backup folder `req.dir` as a [`Root`], creating it and its missing parents with
/// mode 0700. Below the installation (the default `<root>/backups`), every component from the
/// installation down is opened without following a link: a link planted there is refused and
/// named. Elsewhere (`--backup-dir`, `TRUSTFORMERS_BACKUP_DIR`: a folder the operator chose),
/// its parent is opened as given and the folder itself must be a real folder, not a link.
fn open_dir(req: &BackupRequest) -> Result<Root> {
    let (base, rel) = locate(req.root, req.dir, true)?;
    let Some(rel) = rel else { return Ok(base) };
    let parts = confine::components(&rel).map_err(|why| {
        Error::invalid(
            req.dir,
            format!("{why}: refused"),
            "pass --backup-dir with a plain folder path",
        )
    })?;
    let mut at = String::new();
    for part in &parts[..parts.len() - 1] {
        at = confine::join(&at, part);
        base.create_dir(&at, 0o700)?;
    }
    private_dir(&base, &rel)?;
    base.subroot(&rel)
}

/// The already existing backup folder `dir` as a [`Root`] (reached as [`open_dir`] does);
/// `None` when it does not exist.
fn open_existing(root: &Path, dir: &Path) -> Result<Option<Root>> {
    let (base, rel) = locate(root, dir, false)?;
    let Some(rel) = rel else {
        return Ok(Some(base));
    };
    match base.stat(&rel)? {
        None => Ok(None),
        Some(_) => base.subroot(&rel).map(Some),
    }
}

/// Where the backup folder `dir` is reached from: the installation `root` and the path below
/// it, or (outside the installation) `dir`'s parent and its name; the folder itself when it
/// has no plain name. `create` makes the missing parents of a folder outside the installation.
fn locate(root: &Path, dir: &Path, create: bool) -> Result<(Root, Option<String>)> {
    if let Some(rel) = confine::below(root, dir) {
        return Ok((Root::open(root)?, Some(rel.to_owned())));
    }
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return Ok((Root::open(dir)?, None));
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if create {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_err(format!(
                "cannot create the backup folder {}",
                parent.display()
            )))?;
    }
    Ok((Root::open(parent)?, Some(name.to_owned())))
}

/// Creates the folder `rel` of `root` with mode 0700 whatever the umask; an existing folder is
/// tightened to 0700 when it is ours (one owned by another user is left as it is). A link or
/// anything but a folder there is refused, named.
fn private_dir(root: &Root, rel: &str) -> Result<()> {
    match root.stat(rel)? {
        None => root.create_dir(rel, 0o700),
        Some(f) if f.kind != Kind::Dir => Err(Error::invalid(
            root.join(rel),
            format!(
                "is {}, not a folder: refused (a backup is never written through a link)",
                f.kind.describe()
            ),
            "nothing was changed; replace it by a real folder (or pass --backup-dir with one) and run the command again",
        )),
        Some(f) => {
            if f.uid == crate::identity::current_uid() && f.mode & 0o077 != 0 {
                root.set_mode(rel, 0o700)?;
            }
            Ok(())
        }
    }
}

/// Writes the backup into a new `<kind>_backup_<unix-ts>/` folder; returns its path.
///
/// Every access goes through a [`Root`] opened at the backup folder: the `.partial` folder is
/// created there (a leftover of that name, even a link, is removed without being followed),
/// then opened once, and the archive and `metadata.json` are written from that descriptor;
/// the final rename is checked to have moved that very folder.
pub fn create(req: &BackupRequest) -> Result<PathBuf> {
    let dir = open_dir(req)?;
    let now = time::OffsetDateTime::now_utc();
    let ts = now.unix_timestamp().max(0) as u64;
    let final_name = unique_name(&dir, &format!("{}_backup_{ts}", req.kind))?;
    // The writer's PID in the name: the recovery of a run killed while writing it finds its
    // own half-written backup (and no one else's) in a shared backup folder.
    let partial = format!("{final_name}.{}.partial", std::process::id());
    dir.remove_all(&partial)?;
    private_dir(&dir, &partial)?;
    let filled = dir
        .subroot(&partial)
        .and_then(|p| fill(req, &p, now).map(|()| p));
    let held = match filled {
        Ok(p) => p,
        Err(e) => {
            // A full backup disk must not keep half a backup.
            let _ = dir.remove_all(&partial);
            return Err(e);
        }
    };
    dir.rename(&partial, &final_name)?;
    let moved = dir.subroot(&final_name);
    if !moved.as_ref().map_or(Ok(false), |m| m.same_dir(&held))? {
        if dir.stat(&final_name)?.is_some_and(|f| f.kind != Kind::Dir) {
            let _ = dir.remove_file(&final_name);
        }
        return Err(Error::invalid(
            dir.join(&partial),
            "was replaced (by a link or another folder) while the backup was written into it: refused",
            "the backup folder is writable by someone else: make it writable by you only (or pass --backup-dir with a private folder) and run the command again",
        ));
    }
    Ok(req.dir.join(final_name))
}

/// Writes the archive and `metadata.json` into the `.partial` folder, then reads them back.
fn fill(req: &BackupRequest, partial: &Root, now: time::OffsetDateTime) -> Result<()> {
    let ts = now.unix_timestamp().max(0) as u64;
    let archive = match req.encrypt_to {
        Some(_) => encrypt::ENCRYPTED_ARCHIVE,
        None => ARCHIVE,
    };
    // The files this run wrote are hashed on a thread of their own while the archive is
    // written: the archive keeps both cores busy only while zstd has work, and the hashing
    // would otherwise be a second pass, alone on one core, after it. One file is open at a
    // time there, however many the run wrote. Those whose checksum the caller already has
    // (`known_written`) are not read at all.
    let (rels, open, known) = (&req.written, req.open_written, req.known_written);
    let (archived, written) = std::thread::scope(|scope| {
        let hashing = scope.spawn(move || hash_written(rels, open, known));
        let archived = write_archive(req, partial, archive);
        let written = hashing.join().unwrap_or_else(|_| {
            Err(io_err("cannot hash the files this run wrote")(
                io::Error::other("the hashing thread panicked"),
            ))
        });
        (archived, written)
    });
    let (files, archive_sha256) = archived?;
    let written = written?;
    let meta = BackupMetadata {
        format: FORMAT,
        kind: req.kind.to_owned(),
        source_version: req.from.to_owned(),
        target_version: req.to.to_owned(),
        created_unix: ts,
        created: now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        host: host_name(),
        user: user_name(),
        root: req.root.display().to_string(),
        archive: archive.to_owned(),
        archive_sha256,
        files,
        created_files: req.created_files.clone(),
        created_dirs: req.created_dirs.clone(),
        written,
        encryption: req.encrypt_to.map(Recipients::describe),
    };
    let bytes = serde_json::to_vec_pretty(&meta)
        .map_err(|e| io_err("cannot encode backup metadata")(e.into()))?;
    let mut file = partial.create_new(METADATA, 0o600)?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(io_err(format!(
            "cannot write {}",
            partial.join(METADATA).display()
        )))?;
    partial.sync();
    read_back(partial, &meta, &bytes)
}

/// Reads the backup just written back from the disk: `metadata.json` must hold the very bytes
/// written (`written`), and the archive must hash to the sha256 taken as it was written. (That
/// those bytes decompress into the entries written was checked as they were written:
/// [`write_archive`].)
fn read_back(partial: &Root, meta: &BackupMetadata, written: &[u8]) -> Result<()> {
    let failing = |path: &Path, what: String| {
        Error::invalid(
            path,
            what,
            "the backup disk is failing; nothing in the installation changed and the backup was not kept; check that disk (or use another backup folder) and run the command again",
        )
    };
    let on_disk = partial.read(METADATA, MAX_METADATA)?;
    if on_disk != written {
        return Err(failing(
            &partial.join(METADATA),
            "does not read back as written".into(),
        ));
    }
    let path = partial.join(&meta.archive);
    let mut file = Hashing::new(partial.open_read(&meta.archive, None)?);
    io::copy(&mut file, &mut io::sink())
        .map_err(io_err(format!("cannot read {}", path.display())))?;
    if file.hex() != meta.archive_sha256 {
        return Err(failing(
            &path,
            format!(
                "the archive on disk (sha256 {}) is not the one just written ({})",
                file.hex(),
                meta.archive_sha256
            ),
        ));
    }
    Ok(())
}

/// The size, mode and sha256 of each file this run wrote, for a rollback to tell them from
/// what changed since: from `known` where it has them (the mode is always the file's now),
/// else read.
fn hash_written(
    rels: &[String],
    open: &(dyn Fn(&str) -> Result<File> + Sync),
    known: Option<&KnownDigest<'_>>,
) -> Result<Vec<FileRecord>> {
    let mut written = Vec::with_capacity(rels.len());
    for rel in rels {
        let file = open(rel)?;
        let mode = file
            .metadata()
            .map_err(io_err(format!("cannot stat the new {rel}")))?
            .permissions()
            .mode()
            & 0o7777;
        let (size, sha256) = match known.and_then(|known| known(rel, &file)) {
            Some(digest) => digest,
            None => {
                let mut reader = Hashing::new(BufReader::with_capacity(1 << 20, file));
                io::copy(&mut reader, &mut io::sink())
                    .map_err(io_err(format!("cannot read the new {rel}")))?;
                (reader.count(), reader.hex())
            }
        };
        written.push(FileRecord {
            path: rel.clone(),
            size,
            mode,
            sha256,
        });
    }
    Ok(written)
}

/// `name`, or `name-2`, `name-3`… : the first name that nothing (not even a link) holds in
/// the backup folder.
fn unique_name(dir: &Root, name: &str) -> Result<String> {
    let mut candidate = name.to_owned();
    let mut n = 2;
    while dir.stat(&candidate)?.is_some() {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    Ok(candidate)
}

/// Writes the archive `name` into `partial` and syncs it; returns what it holds and the sha256
/// of its bytes.
///
/// The archive is read back as it is written: a copy of the zstd stream (before any
/// encryption) goes to a thread that decompresses it, every frame's 32-bit content checksum
/// holding, into exactly the entries written, of their sizes (see [`entries_in`]). Read back
/// after the writing, the decompression was a step of its own on one core (zstd decompresses a
/// frame serially); here it fills the time that zstd's workers and the reading of the files
/// leave idle. That the file holds these very bytes is checked by [`read_back`], once synced.
fn write_archive(
    req: &BackupRequest,
    partial: &Root,
    name: &str,
) -> Result<(Vec<FileRecord>, String)> {
    let spare = Spare::new(TEE_DEPTH + 2);
    let hung_up = std::cell::Cell::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(TEE_DEPTH);
        let spare = &spare;
        let reading = scope.spawn(move || entries_in(Ahead::new(rx, spare)));
        let copies = Copies {
            to: Some(tx),
            spare,
            hung_up: &hung_up,
        };
        let written = write_entries(req, partial, name, copies);
        let Ok(found) = reading.join() else {
            return Err(Error::invalid(
                req.dir,
                "the thread reading the archive back as it was written panicked",
                "a bug in migrate, not your data: nothing in the installation changed and the backup was not kept; report it, and run the command again",
            ));
        };
        // Once the reading stopped, so did the writing: its error then only says that.
        let ((records, sha), found) = match (written, found) {
            (Err(_), Err(why)) if hung_up.get() => return Err(unreadable(req, None, why)),
            (written, found) => (written?, found.map_err(|why| unreadable(req, None, why))?),
        };
        same_entries(req, &records, &found)?;
        Ok((records, sha))
    })
}

/// Compressed pieces that may wait for the thread reading the archive back (each at most what
/// the zstd encoder writes at once, about 128 KiB): the writer waits when it is that far ahead.
const TEE_DEPTH: usize = 32;

/// The archive just written does not read back as written: named by the installation file
/// whose entry differs (`rel`), or else the backup folder.
fn unreadable(req: &BackupRequest, rel: Option<&str>, why: String) -> Error {
    let file = rel.map_or_else(|| req.dir.to_path_buf(), |rel| req.root.join(rel));
    Error::invalid(
        file,
        format!("the backup's archive does not read back as written: {why}"),
        "nothing in the installation changed and the backup was not kept; a file that changes while it is archived does this (is the server still writing to it? stop it), else the disk holding the backups is failing; then run the command again",
    )
}

/// The entries read back (`found`: path and size, in order) must be those written.
fn same_entries(
    req: &BackupRequest,
    written: &[FileRecord],
    found: &[(String, u64)],
) -> Result<()> {
    let differs = written
        .iter()
        .zip(found)
        .position(|(w, (path, size))| w.path != *path || w.size != *size);
    let Some(at) =
        differs.or((written.len() != found.len()).then(|| written.len().min(found.len())))
    else {
        return Ok(());
    };
    Err(match (written.get(at), found.get(at)) {
        (Some(w), Some((path, size))) if w.path == *path => unreadable(
            req,
            Some(&w.path),
            format!("{} bytes were archived, {size} read back", w.size),
        ),
        (Some(w), Some((path, _))) => unreadable(
            req,
            Some(&w.path),
            format!("entry {} reads back as `{path}`", at + 1),
        ),
        (Some(w), None) => unreadable(
            req,
            Some(&w.path),
            format!(
                "{} entries were written, {} read back",
                written.len(),
                found.len()
            ),
        ),
        (None, extra) => unreadable(
            req,
            None,
            format!(
                "{} entries were written, {} read back (the first extra one `{}`)",
                written.len(),
                found.len(),
                extra.map_or("", |(p, _)| p.as_str())
            ),
        ),
    })
}

/// [`write_archive`]'s writing: each file of the request into the tar stream, compressed (and
/// encrypted when asked), a copy of the zstd stream going to `copies`. Returning drops their
/// sender, which ends the stream the reading thread sees.
fn write_entries(
    req: &BackupRequest,
    partial: &Root,
    name: &str,
    copies: Copies<'_>,
) -> Result<(Vec<FileRecord>, String)> {
    let path = partial.join(name);
    let err = |e: io::Error| {
        io_err(format!(
            "cannot write the backup archive {}",
            path.display()
        ))(e)
    };
    let out = Hashing::new(BufWriter::with_capacity(
        1 << 20,
        partial.create_new(name, 0o600)?,
    ));
    // The zstd stream goes into the age stream, if any: no plaintext reaches the file.
    let out = Tee {
        inner: Sealed::new(out, req.encrypt_to).map_err(err)?,
        copies,
    };
    let mut builder = tar::Builder::new(Frames::new(out, LEVEL).map_err(err)?);
    let mut records = Vec::with_capacity(req.files.len());
    let mut tally = Tally::new(req.progress);
    for rel in &req.files {
        let file = (req.open_source)(rel)?;
        let meta = file
            .metadata()
            .map_err(io_err(format!("cannot stat {rel} for the backup")))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(meta.len());
        header.set_mode(meta.permissions().mode() & 0o7777);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        let level = if compresses(&file) {
            LEVEL
        } else {
            INCOMPRESSIBLE_LEVEL
        };
        builder.get_mut().set_level(level).map_err(err)?;
        let mut reader = Hashing::new(Told {
            inner: BufReader::with_capacity(1 << 20, file),
            tally: &mut tally,
        });
        builder
            .append_data(&mut header, rel, &mut reader)
            .map_err(err)?;
        crate::fault::point("backup_entry")?;
        records.push(FileRecord {
            path: rel.clone(),
            size: reader.count(),
            mode: meta.permissions().mode() & 0o7777,
            sha256: reader.hex(),
        });
    }
    tally.end();
    let encoder = builder.into_inner().map_err(err)?;
    let out = encoder.finish().map_err(err)?.inner.finish().map_err(err)?;
    let sha = out.hex();
    let file = out
        .into_inner()
        .into_inner()
        .map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(err)?;
    Ok((records, sha))
}

/// The zstd stream on its way to the file (through the age stream, if any), with a copy of
/// every byte sent to the thread reading the archive back.
struct Tee<'a, W: Write> {
    inner: W,
    copies: Copies<'a>,
}

/// Where [`Tee`] sends its copies. Should the reading thread stop (it found the stream
/// damaged), the writing stops too: the next write fails, and `hung_up` says why.
struct Copies<'a> {
    to: Option<std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>>,
    /// Where the copies' buffers come from, and go back to once read.
    spare: &'a Spare,
    hung_up: &'a std::cell::Cell<bool>,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let copies = &mut self.copies;
        if let Some(to) = &copies.to {
            let mut piece = copies.spare.take(n);
            piece.extend_from_slice(&buf[..n]);
            if to.send(Ok(piece)).is_err() {
                copies.to = None;
                copies.hung_up.set(true);
                return Err(io::Error::other(
                    "stopped: the archive does not read back as written",
                ));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decompresses the archive stream `compressed` to its end (every frame's content checksum is
/// checked as its end is read) and lists its entries, path and size, in order; each must be a
/// regular file with a safe path. An error names the last entry read whole.
fn entries_in(compressed: impl Read) -> std::result::Result<Vec<(String, u64)>, String> {
    let mut decoder = zstd::Decoder::new(compressed).map_err(|e| format!("not zstd: {e}"))?;
    let mut seen: Vec<(String, u64)> = Vec::new();
    let after = |seen: &[(String, u64)], why: String| match seen.last() {
        Some((last, _)) => format!("after the entry `{last}`, {why}"),
        None => why,
    };
    for entry in tar::Archive::new(&mut decoder)
        .entries()
        .map_err(|e| format!("unreadable tar: {e}"))?
    {
        let mut entry = entry.map_err(|e| after(&seen, format!("unreadable tar entry: {e}")))?;
        let rel = safe_entry_path(&entry).map_err(|why| after(&seen, why))?;
        if !matches!(entry.header().entry_type(), tar::EntryType::Regular) {
            return Err(link_refusal(&entry, &rel));
        }
        let size = io::copy(&mut entry, &mut io::sink())
            .map_err(|e| format!("`{rel}`: truncated or corrupt data ({e})"))?;
        seen.push((rel, size));
    }
    // To the end of the stream: the last frame's checksum comes after the tar's end.
    io::copy(&mut decoder, &mut io::sink())
        .map_err(|e| after(&seen, format!("corrupt data after the last entry ({e})")))?;
    Ok(seen)
}

/// zstd level for what compresses: level 3 is the `zstd -3` the benchmark compares with.
const LEVEL: i32 = 3;
/// zstd's fastest level, for weights and other data that does not compress: the archive stays
/// one stream, but no time is spent looking for matches that are not there.
const INCOMPRESSIBLE_LEVEL: i32 = -7;
/// Bytes sampled to decide whether a file compresses.
const SAMPLE: usize = 1 << 20;

/// Whether `file` is worth compressing: a 1 MiB sample from its middle must shrink by 10% at
/// zstd level 1. Small files always are. Reads with `pread`: the file's offset stays at 0.
fn compresses(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_or(0, |m| m.len());
    if len < 2 * SAMPLE as u64 {
        return true;
    }
    let mut sample = vec![0u8; SAMPLE];
    if file.read_exact_at(&mut sample, len / 2).is_err() {
        return true;
    }
    zstd::bulk::compress(&sample, 1).map_or(true, |c| c.len() < SAMPLE * 9 / 10)
}

/// A zstd stream made of frames whose level can change between tar entries; any zstd reader
/// reads concatenated frames as one stream.
struct Frames<W: Write> {
    encoder: Option<zstd::Encoder<'static, W>>,
    level: i32,
}

impl<W: Write> Frames<W> {
    fn new(out: W, level: i32) -> io::Result<Self> {
        Ok(Frames {
            encoder: Some(Self::encoder(out, level)?),
            level,
        })
    }

    /// Each frame carries the checksum of its content (32 bits of its XXH64), which zstd
    /// readers check by default: the read-back as the archive is written relies on it (see
    /// [`write_archive`]), and a restore gets it on top of the entries' sha256.
    fn encoder(out: W, level: i32) -> io::Result<zstd::Encoder<'static, W>> {
        let mut encoder = zstd::Encoder::new(out, level)?;
        encoder.include_checksum(true)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        encoder.multithread(threads)?;
        Ok(encoder)
    }

    fn active(&mut self) -> io::Result<&mut zstd::Encoder<'static, W>> {
        self.encoder
            .as_mut()
            .ok_or_else(|| io::Error::other("backup stream already finished"))
    }

    /// Ends the current frame and starts one at `level`, if it differs.
    fn set_level(&mut self, level: i32) -> io::Result<()> {
        if level == self.level {
            return Ok(());
        }
        let out = self.finish_frame()?;
        self.encoder = Some(Self::encoder(out, level)?);
        self.level = level;
        Ok(())
    }

    fn finish_frame(&mut self) -> io::Result<W> {
        self.encoder
            .take()
            .ok_or_else(|| io::Error::other("backup stream already finished"))?
            .finish()
    }

    fn finish(mut self) -> io::Result<W> {
        self.finish_frame()
    }
}

impl<W: Write> Write for Frames<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.active()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.active()?.flush()
    }
}

/// Opens the backup folder `backup` as a [`Root`], never following a link on the way the
/// installation controls. Below the installation `root` (when given), every component from the
/// installation down is opened without following a link. Elsewhere (a backup named on the
/// command line, a `--backup-dir` of the operator's choosing), the folder holding it is reached
/// as given from its own parent, and neither that folder nor the backup folder may be a link
/// (the way [`create`] writes there): a link is refused, named.
pub fn open_backup(root: Option<&Path>, backup: &Path) -> Result<Root> {
    if let Some((root, rel)) = root.and_then(|root| Some((root, confine::below(root, backup)?))) {
        return Root::open(root)?.subroot(rel);
    }
    let named = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    let parent_of = |p: &Path| -> PathBuf {
        match p.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let Some(name) = named(backup) else {
        return Root::open(backup);
    };
    let folder = parent_of(backup);
    match named(&folder) {
        Some(held) => Root::open(&parent_of(&folder))?.subroot(&confine::join(&held, &name)),
        None => Root::open(&folder)?.subroot(&name),
    }
}

/// Reads `metadata.json` of a backup folder (opened as [`open_backup`] does without an
/// installation root).
pub fn read_metadata(backup: &Path) -> Result<BackupMetadata> {
    read_metadata_at(&open_backup(None, backup)?)
}

/// Reads `metadata.json` of the backup folder `backup`: a regular file of at most 64 MiB, not
/// a link, opened from the folder's descriptor.
pub fn read_metadata_at(backup: &Root) -> Result<BackupMetadata> {
    let path = backup.join(METADATA);
    let bytes = backup.read(METADATA, MAX_METADATA).map_err(|e| {
        Error::invalid(
            &path,
            format!("cannot read ({e})"),
            "pass the folder of a backup (it holds metadata.json and backup.tar.zst)",
        )
    })?;
    let meta: BackupMetadata = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(
            &path,
            format!("not valid backup metadata ({e})"),
            "the backup is damaged; use another one",
        )
    })?;
    check_metadata_paths(&meta).map_err(|why| {
        Error::invalid(
            &path,
            why,
            "the backup is damaged or malicious; nothing was changed; use another backup",
        )
    })?;
    Ok(meta)
}

/// Every path a backup names — archived, created, or folder — must stay inside the
/// installation, like the archive's own entries.
fn check_metadata_paths(meta: &BackupMetadata) -> std::result::Result<(), String> {
    let listed = meta.files.iter().map(|f| f.path.as_str());
    for p in listed
        .chain(meta.written.iter().map(|f| f.path.as_str()))
        .chain(meta.created_files.iter().map(String::as_str))
        .chain(meta.created_dirs.iter().map(String::as_str))
    {
        let clean = check_relative(Path::new(p)).map_err(|e| format!("metadata.json: {e}"))?;
        if clean != p {
            return Err(format!(
                "metadata.json: path `{p}` is not in normal form: refused"
            ));
        }
    }
    // A path both restored and removed would be put back, then deleted.
    let mut touched = std::collections::HashSet::new();
    if let Some(twice) = meta
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(meta.created_files.iter().map(String::as_str))
        .find(|p| !touched.insert(*p))
    {
        return Err(format!(
            "metadata.json: `{twice}` is listed twice among the files the backup restores or removes: refused"
        ));
    }
    if meta.format >= 2 {
        if let Some(c) = meta
            .created_files
            .iter()
            .find(|c| !meta.written.iter().any(|w| &w.path == *c))
        {
            return Err(format!(
                "metadata.json: created file `{c}` has no sha256 of what the migration wrote: refused"
            ));
        }
    }
    Ok(())
}

/// Checks every entry of the archive against the metadata; nothing is written.
pub fn verify(backup: &Path) -> Result<BackupMetadata> {
    verify_with(backup, None)
}

/// [`verify`], decrypting an encrypted archive with `keys` (refused without them).
pub fn verify_with(backup: &Path, keys: Option<&Identities>) -> Result<BackupMetadata> {
    verify_at(&open_backup(None, backup)?, keys)
}

/// [`verify_with`] on a backup folder already opened ([`open_backup`]).
pub fn verify_at(backup: &Root, keys: Option<&Identities>) -> Result<BackupMetadata> {
    let meta = read_metadata_at(backup)?;
    read_archive(backup, &meta, None, keys, &|_| {})?;
    Ok(meta)
}

/// Extracts a verified backup into `staging`; any damaged, unexpected or unsafe entry refuses
/// the whole backup, and the staging (never the installation) is all that was written.
pub fn extract(backup: &Path, staging: &Staging) -> Result<BackupMetadata> {
    extract_with(backup, staging, None)
}

/// [`extract`], decrypting an encrypted archive with `keys` (refused without them).
pub fn extract_with(
    backup: &Path,
    staging: &Staging,
    keys: Option<&Identities>,
) -> Result<BackupMetadata> {
    extract_at(&open_backup(None, backup)?, staging, keys, &|_| {})
}

/// [`extract_with`] from a backup folder already opened ([`open_backup`]), telling `progress`
/// the bytes extracted so far (0 as it begins, then about every MiB, and at the end): a
/// rollback from the backup of a large log takes minutes.
pub fn extract_at(
    backup: &Root,
    staging: &Staging,
    keys: Option<&Identities>,
    progress: &dyn Fn(u64),
) -> Result<BackupMetadata> {
    let meta = read_metadata_at(backup)?;
    extract_as(backup, &meta, staging, keys, progress)?;
    Ok(meta)
}

/// [`extract_at`] against `meta`, the backup's metadata already read ([`read_metadata_at`]):
/// a caller that acted on it before extracting (a rollback that asked about the files it
/// replaces) extracts against the very metadata it acted on, not a second reading.
pub fn extract_as(
    backup: &Root,
    meta: &BackupMetadata,
    staging: &Staging,
    keys: Option<&Identities>,
    progress: &dyn Fn(u64),
) -> Result<()> {
    read_archive(backup, meta, Some(staging), keys, progress)
}

fn read_archive(
    backup: &Root,
    meta: &BackupMetadata,
    staging: Option<&Staging>,
    keys: Option<&Identities>,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let path = backup.join(&meta.archive);
    let damaged = |what: String| {
        Error::invalid(&path, what, "the backup is damaged or not one made by migrate; nothing was changed; use another backup")
    };
    if Path::new(&meta.archive).components().count() != 1 {
        return Err(damaged(format!(
            "archive name `{}` is not a plain file name",
            meta.archive
        )));
    }
    let file = backup
        .open_read(&meta.archive, None)
        .map_err(|e| damaged(format!("cannot open: {e}")))?;
    let plain = encrypt::open(
        &path,
        BufReader::with_capacity(1 << 20, file),
        meta.encryption.as_ref(),
        keys,
    )?;
    let decoder = zstd::Decoder::new(plain).map_err(|e| damaged(format!("not zstd: {e}")))?;
    // Decompression runs a little ahead on a thread of its own, and the hashing here: the
    // read-back takes half the time it takes on one core.
    let seen = fsutil::read_ahead(decoder, |plain| -> Result<_> {
        let mut archive = tar::Archive::new(plain);
        let mut seen = std::collections::BTreeSet::new();
        let mut tally = Tally::new(progress);
        tally.begin();
        let entries = archive
            .entries()
            .map_err(|e| damaged(format!("unreadable tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| damaged(format!("unreadable tar entry: {e}")))?;
            let rel = safe_entry_path(&entry).map_err(&damaged)?;
            let record =
                meta.files.iter().find(|r| r.path == rel).ok_or_else(|| {
                    damaged(format!("entry `{rel}` is not listed in metadata.json"))
                })?;
            if !matches!(entry.header().entry_type(), tar::EntryType::Regular) {
                return Err(damaged(link_refusal(&entry, &rel)));
            }
            if seen.contains(&rel) {
                return Err(damaged(format!("entry `{rel}` appears twice: refused")));
            }
            // Bounded: an entry is never read past the size metadata.json declares for it, so
            // the whole extraction is capped at the declared total.
            let declared = entry.size();
            if declared > record.size {
                return Err(damaged(format!(
                    "entry `{rel}` declares {declared} bytes, larger than the {} bytes metadata.json lists: refused before reading it",
                    record.size
                )));
            }
            // Created with the recorded mode before a byte is written. No set-id or sticky bit
            // from a backup: a crafted one must not plant a setuid file.
            let mut sink: Box<dyn Write> = match staging {
                Some(s) => Box::new(BufWriter::new(s.create_file(&rel, record.mode & 0o777)?)),
                None => Box::new(io::sink()),
            };
            let mut hashing = Hashing::new(Told {
                inner: (&mut entry).take(record.size + 1),
                tally: &mut tally,
            });
            io::copy(&mut hashing, &mut sink)
                .map_err(|e| damaged(format!("`{rel}`: truncated or corrupt data ({e})")))?;
            sink.flush()
                .map_err(io_err(format!("cannot write staged {rel}")))?;
            drop(sink);
            if hashing.count() != record.size || hashing.hex() != record.sha256 {
                return Err(damaged(format!(
                    "`{rel}`: checksum mismatch (size {}, sha256 {}; metadata says size {}, sha256 {})",
                    hashing.count(),
                    hashing.hex(),
                    record.size,
                    record.sha256
                )));
            }
            seen.insert(rel);
        }
        tally.end();
        Ok(seen)
    })?;
    if let Some(missing) = meta.files.iter().find(|r| !seen.contains(&r.path)) {
        return Err(damaged(format!(
            "`{}` is listed in metadata.json but missing from the archive",
            missing.path
        )));
    }
    Ok(())
}

/// The entry's path if it is relative and stays inside the installation.
fn safe_entry_path<R: Read>(entry: &tar::Entry<R>) -> std::result::Result<String, String> {
    let path = entry
        .path()
        .map_err(|e| format!("entry with an unreadable path: {e}"))?;
    check_relative(&path)
}

fn check_relative(path: &Path) -> std::result::Result<String, String> {
    let shown = path.display().to_string();
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("entry `{shown}` contains `..`: refused")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry `{shown}` is an absolute path: refused"))
            }
        }
    }
    if parts.is_empty() {
        return Err(format!("entry `{shown}` has an empty path: refused"));
    }
    Ok(parts.join("/"))
}

/// Our backups hold only regular files: a link entry is refused, and the message says whether
/// it points outside the installation.
fn link_refusal<R: Read>(entry: &tar::Entry<R>, rel: &str) -> String {
    let target = entry
        .link_name()
        .ok()
        .flatten()
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    let escapes = Path::new(&target).is_absolute() || {
        let base = Path::new(rel).parent().unwrap_or(Path::new(""));
        normalized_depth(&base.join(&target)) < 0
    };
    if escapes {
        format!("entry `{rel}` is a link to `{target}`, outside the installation: refused")
    } else {
        format!(
            "entry `{rel}` is a {:?} entry; a migrate backup holds only regular files: refused",
            entry.header().entry_type()
        )
    }
}

/// How deep a relative path ends up, counting `..`; negative means it escapes its base.
fn normalized_depth(path: &Path) -> i64 {
    let mut depth = 0i64;
    for c in path.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::RootDir | Component::Prefix(_) => return -1,
            Component::CurDir => {}
        }
        if depth < 0 {
            return depth;
        }
    }
    depth
}

/// Removes the half-written backups that the process `pid` left in the backup folder `dir` of
/// the installation `root` (it was killed while writing them); returns them. Reached through a
/// [`Root`]: a link in the way of `dir` is not followed (nothing is removed), and a `.partial`
/// entry that is a link is removed as a link, never followed.
pub fn remove_partials(root: &Path, dir: &Path, pid: u32) -> Vec<PathBuf> {
    let suffix = format!(".{pid}.partial");
    let Ok(Some(backups)) = open_existing(root, dir) else {
        return Vec::new();
    };
    let Ok(Some(names)) = backups.list("") else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter_map(|(name, _)| String::from_utf8(name).ok())
        .filter(|name| name.contains("_backup_") && name.ends_with(&suffix))
        .filter(|name| backups.remove_all(name).is_ok_and(|removed| removed))
        .map(|name| dir.join(name))
        .collect()
}

/// Backups with their metadata (or why it does not read), as [`list`] finds them.
pub type Listed = Vec<(PathBuf, Result<BackupMetadata>)>;

/// Backups in the backup folder `dir` of the installation `root`, oldest first; an absent
/// folder holds none. Reached as [`create`] writes there: below the installation, no link is
/// followed on the way from `root`; elsewhere the folder itself must not be a link. A link
/// there is refused, named; a link in place of a backup is not one (skipped, never followed).
pub fn list(root: &Path, dir: &Path) -> Result<Listed> {
    let Some(backups) = open_existing(root, dir)? else {
        return Ok(Vec::new());
    };
    let names = backups.list("")?.unwrap_or_default();
    let mut out: Listed = names
        .into_iter()
        .filter(|(_, kind)| *kind == Kind::Dir)
        .filter_map(|(name, _)| String::from_utf8(name).ok())
        .filter(|name| name.contains("_backup_") && !name.ends_with(".partial"))
        .map(|name| {
            let m = backups.subroot(&name).and_then(|b| read_metadata_at(&b));
            (dir.join(name), m)
        })
        .collect();
    out.sort_by_key(|(p, m)| (m.as_ref().map(|m| m.created_unix).unwrap_or(0), p.clone()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(check_relative(Path::new("../etc/passwd"))
            .unwrap_err()
            .contains(".."));
        assert!(check_relative(Path::new("/etc/passwd"))
            .unwrap_err()
            .contains("absolute"));
        assert!(check_relative(Path::new("data/../../x")).is_err());
        assert_eq!(
            check_relative(Path::new("./data/a.jsonl")).unwrap(),
            "data/a.jsonl"
        );
    }

    /// `len` bytes that do not compress (xorshift), as weights are.
    fn random_bytes(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A backup of `a.jsonl`, random weights and `z.jsonl` under `root`: the stream switches
    /// level twice (three frames, the middle one of data that does not compress). Returns the
    /// backup folder, the text of both logs and the weights.
    fn mixed_backup(root: &Path) -> (PathBuf, String, Vec<u8>) {
        let text = "{\"id\":\"req\",\"latency_ms\":1}\n".repeat(100_000);
        let weights = random_bytes(3 << 20);
        std::fs::write(root.join("a.jsonl"), &text).unwrap();
        std::fs::write(root.join("w.safetensors"), &weights).unwrap();
        std::fs::write(root.join("z.jsonl"), &text).unwrap();
        let compresses_at = |rel: &str| compresses(&File::open(root.join(rel)).unwrap());
        assert!(compresses_at("a.jsonl"));
        assert!(!compresses_at("w.safetensors"));
        let r = root.to_path_buf();
        let open = move |rel: &str| confine::open_regular(&r.join(rel), None);
        let dir = root.join("backups");
        let files: Vec<String> = ["a.jsonl", "w.safetensors", "z.jsonl"]
            .map(String::from)
            .to_vec();
        let backup = create(&BackupRequest {
            root,
            dir: &dir,
            kind: "full",
            from: "0.1.0",
            to: "1.0.0",
            open_source: &open,
            files,
            created_files: vec![],
            created_dirs: vec![],
            written: vec![],
            open_written: &open,
            known_written: None,
            progress: &|_| {},
            encrypt_to: None,
        })
        .unwrap();
        (backup, text, weights)
    }

    /// The zstd frames of `archive`, in order.
    fn frames(archive: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < archive.len() {
            let n = zstd::zstd_safe::find_frame_compressed_size(&archive[at..]).unwrap();
            out.push(at..at + n);
            at += n;
        }
        out
    }

    /// Random weights between two compressible files: the archive still verifies and
    /// extracts byte for byte.
    #[test]
    fn incompressible_files_get_their_own_frame_and_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let (backup, text, weights) = mixed_backup(root.path());
        let meta = verify(&backup).unwrap();
        assert_eq!(meta.files.len(), 3);
        let archive = std::fs::read(backup.join(ARCHIVE)).unwrap();
        assert_eq!(frames(&archive).len(), 3, "a frame per level");
        assert!(
            archive.len() < weights.len() + text.len(),
            "text compressed: {}",
            archive.len()
        );
        let staging = Staging::create(&root.path().join(".migrate")).unwrap();
        extract(&backup, &staging).unwrap();
        assert_eq!(
            std::fs::read(staging.dir().join("w.safetensors")).unwrap(),
            weights
        );
        assert_eq!(
            std::fs::read_to_string(staging.dir().join("z.jsonl")).unwrap(),
            text
        );
    }

    /// The read-back as the archive is written hashes no entry: it rests on every frame
    /// carrying the checksum of its content (the header's Content_Checksum_flag, bit 2 of
    /// the byte after the magic number), which decompression checks.
    #[test]
    fn every_frame_carries_the_checksum_of_its_content() {
        let root = tempfile::tempdir().unwrap();
        let (backup, _, _) = mixed_backup(root.path());
        let archive = std::fs::read(backup.join(ARCHIVE)).unwrap();
        let frames = frames(&archive);
        assert_eq!(frames.len(), 3, "a frame per level");
        for frame in frames {
            let header = &archive[frame.start..frame.start + 5];
            assert_eq!(
                header[..4],
                [0x28, 0xb5, 0x2f, 0xfd],
                "zstd magic at {frame:?}"
            );
            assert_ne!(
                header[4] & 0b100,
                0,
                "no content checksum in the frame at {frame:?}"
            );
        }
    }

    /// What the read-back as the archive is written finds: the entries of an intact stream,
    /// in order with their sizes; an error for a byte flipped in the stored weights (the
    /// middle frame holds them as written, so that only its checksum can tell), a byte
    /// flipped in the last frame's checksum (after the tar's end: the stream is read to its
    /// end), a stream cut short in a frame or at the end of one.
    #[test]
    fn the_stream_read_back_lists_its_entries_and_refuses_a_damaged_one() {
        let root = tempfile::tempdir().unwrap();
        let (backup, text, weights) = mixed_backup(root.path());
        let archive = std::fs::read(backup.join(ARCHIVE)).unwrap();
        let listed = |names: [&str; 3], sizes: [usize; 3]| -> Vec<(String, u64)> {
            names
                .iter()
                .zip(sizes)
                .map(|(n, s)| (n.to_string(), s as u64))
                .collect()
        };
        assert_eq!(
            entries_in(&archive[..]).unwrap(),
            listed(
                ["a.jsonl", "w.safetensors", "z.jsonl"],
                [text.len(), weights.len(), text.len()]
            )
        );
        let frames = frames(&archive);
        let flipped = |at: usize| {
            let mut bad = archive.clone();
            bad[at] ^= 0x10;
            entries_in(&bad[..]).unwrap_err()
        };
        let middle = &frames[1];
        let stored = flipped((middle.start + middle.end) / 2);
        assert!(stored.contains("checksum"), "{stored}");
        let last = flipped(archive.len() - 1);
        assert!(last.contains("checksum"), "{last}");
        let cut = entries_in(&archive[..archive.len() - 100]).unwrap_err();
        assert!(
            cut.contains("`z.jsonl`: truncated or corrupt data"),
            "{cut}"
        );
        // Cut where a frame ends, the stream reads as the entries before the cut: what tells
        // is the comparison with the entries written.
        let at_frame_end = entries_in(&archive[..middle.end]).unwrap();
        assert_eq!(
            at_frame_end,
            listed(
                ["a.jsonl", "w.safetensors", ""],
                [text.len(), weights.len(), 0]
            )[..2]
        );
        let meta = read_metadata(&backup).unwrap();
        let open = |_: &str| -> Result<File> { unreachable!("nothing is opened") };
        let dir = root.path().join("backups");
        let req = request(root.path(), &dir, &open);
        let e = same_entries(&req, &meta.files, &at_frame_end).unwrap_err();
        assert!(
            e.to_string()
                .contains("3 entries were written, 2 read back"),
            "{e}"
        );
    }

    /// A file that reads longer than its size says, as a log still written to does, makes a
    /// stream that does not read back: the backup is refused and nothing of it is kept. The
    /// reading stops at the first damage, and the writing stops with it: the 8 MiB of weights
    /// after it (more pieces than may wait for the reader) end the run rather than hang it.
    #[test]
    fn a_file_longer_than_its_size_is_refused_and_nothing_kept() {
        let (_base, root, _) = tree();
        let weights = random_bytes(8 << 20);
        fs::write(root.join("w.bin"), &weights).unwrap();
        let r = root.clone();
        let open = move |rel: &str| match rel {
            // Its size is 0, its content a kilobyte or so.
            "a.jsonl" => confine::open_regular(Path::new("/proc/self/status"), None),
            _ => confine::open_regular(&r.join(rel), None),
        };
        let dir = root.join("backups");
        let mut req = request(&root, &dir, &open);
        req.files.push("w.bin".into());
        let e = create(&req).unwrap_err().to_string();
        assert!(e.contains("does not read back as written"), "{e}");
        assert!(e.contains("after the entry `a.jsonl`"), "{e}");
        assert!(e.contains("nothing in the installation changed"), "{e}");
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    }

    /// The entries read back are compared with those written: a different size, another path,
    /// a missing or an extra entry is refused, named.
    #[test]
    fn entries_read_back_must_be_those_written() {
        let (_base, root, _) = tree();
        let dir = root.join("backups");
        let r = root.clone();
        let open = move |rel: &str| confine::open_regular(&r.join(rel), None);
        let req = request(&root, &dir, &open);
        let record = |path: &str, size| FileRecord {
            path: path.into(),
            size,
            mode: 0o600,
            sha256: String::new(),
        };
        let written = [record("data/a.jsonl", 10), record("config/server.toml", 5)];
        let found = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
            list.iter().map(|(p, n)| (p.to_string(), *n)).collect()
        };
        let same = found(&[("data/a.jsonl", 10), ("config/server.toml", 5)]);
        same_entries(&req, &written, &same).unwrap();
        let cases: [(&[(&str, u64)], &str); 4] = [
            (
                &[("data/a.jsonl", 10), ("config/server.toml", 4)],
                "5 bytes were archived, 4 read back",
            ),
            (
                &[("data/a.jsonl", 10), ("config/other.toml", 5)],
                "entry 2 reads back as `config/other.toml`",
            ),
            (
                &[("data/a.jsonl", 10)],
                "2 entries were written, 1 read back",
            ),
            (
                &[("data/a.jsonl", 10), ("config/server.toml", 5), ("x", 1)],
                "the first extra one `x`",
            ),
        ];
        for (read, says) in cases {
            let e = same_entries(&req, &written, &found(read))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
        let e = same_entries(&req, &written, &found(&[("data/a.jsonl", 9)]))
            .unwrap_err()
            .to_string();
        let named = root.join("data/a.jsonl").display().to_string();
        assert!(e.contains(&named), "{e}");
    }

    /// The backup on disk must be the bytes written: `metadata.json` other than written, or a
    /// byte of the archive changed after the writing, is refused by the read-back from the
    /// disk, which names the file.
    #[test]
    fn a_backup_changed_on_disk_is_refused_by_the_read_back() {
        let root = tempfile::tempdir().unwrap();
        let (backup, _, _) = mixed_backup(root.path());
        let path = backup.join(ARCHIVE);
        let folder = Root::open(&backup).unwrap();
        let meta = read_metadata_at(&folder).unwrap();
        let written = std::fs::read(backup.join(METADATA)).unwrap();
        read_back(&folder, &meta, &written).unwrap();
        let e = read_back(&folder, &meta, &written[1..])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metadata.json: does not read back as written"),
            "{e}"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_back(&folder, &meta, &written).unwrap_err().to_string();
        assert!(e.contains("is not the one just written"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    /// A request backing up `a.jsonl` of `root` into `dir`.
    fn request<'a>(
        root: &'a Path,
        dir: &'a Path,
        open: &'a (dyn Fn(&str) -> Result<File> + Sync),
    ) -> BackupRequest<'a> {
        BackupRequest {
            root,
            dir,
            kind: "full",
            from: "0.1.0",
            to: "1.0.0",
            open_source: open,
            files: vec!["a.jsonl".into()],
            created_files: vec![],
            created_dirs: vec![],
            written: vec![],
            open_written: open,
            known_written: None,
            progress: &|_| {},
            encrypt_to: None,
        }
    }

    /// A written file whose size and sha256 the caller already knows is recorded with them,
    /// its mode read from the file; any other is read and hashed.
    #[test]
    fn known_checksums_of_written_files_are_recorded_without_reading_them() {
        let (_base, root, _) = tree();
        fs::write(root.join("b.jsonl"), "{\"b\":1}\n").unwrap();
        fs::set_permissions(root.join("a.jsonl"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(root.join("b.jsonl"), fs::Permissions::from_mode(0o600)).unwrap();
        let r = root.clone();
        let open = move |rel: &str| confine::open_regular(&r.join(rel), None);
        let known = |rel: &str, file: &File| {
            assert!(file.metadata().unwrap().is_file());
            (rel == "a.jsonl").then(|| (3, "planted".to_owned()))
        };
        let dir = root.join("backups");
        let mut req = request(&root, &dir, &open);
        req.written = vec!["a.jsonl".into(), "b.jsonl".into()];
        req.known_written = Some(&known);
        let backup = create(&req).unwrap();
        let meta = read_metadata(&backup).unwrap();
        let got: Vec<_> = meta
            .written
            .iter()
            .map(|w| (w.path.as_str(), w.size, w.mode, w.sha256.as_str()))
            .collect();
        let b_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"{\"b\":1}\n"));
        assert_eq!(
            got,
            [
                ("a.jsonl", 3, 0o640, "planted"),
                ("b.jsonl", 8, 0o600, b_sha.as_str())
            ]
        );
    }

    /// Progress counts the bytes archived, from the first file to the last, about every MiB,
    /// and so does the extraction's: it only grows, and it ends at the size of every file
    /// archived.
    #[test]
    fn progress_counts_every_archived_and_extracted_byte_once() {
        let (_base, root, _) = tree();
        let line = "{\"k\":\"0123456789abcdef\"}\n";
        fs::write(root.join("a.jsonl"), line.repeat(200_000)).unwrap();
        fs::write(root.join("w.bin"), random_bytes(1_500_000)).unwrap();
        // Files under a MiB each, 3.6 MB together: they count as much as one large file.
        let small: Vec<String> = (0..12).map(|i| format!("s{i:02}.jsonl")).collect();
        for name in &small {
            fs::write(root.join(name), line.repeat(12_000)).unwrap();
        }
        let total = ((200_000 + 12 * 12_000) * line.len() + 1_500_000) as u64;
        let r = root.clone();
        let open = move |rel: &str| confine::open_regular(&r.join(rel), None);
        let told = std::cell::RefCell::new(Vec::new());
        let progress = |bytes: u64| told.borrow_mut().push(bytes);
        let dir = root.join("backups");
        let mut req = request(&root, &dir, &open);
        req.files = ["a.jsonl".to_owned(), "w.bin".to_owned()]
            .into_iter()
            .chain(small)
            .collect();
        req.progress = &progress;
        let made = create(&req).unwrap();
        let archived = told.take();
        let staging = Staging::create(&root.join(".migrate")).unwrap();
        extract_at(
            &open_backup(None, &made).unwrap(),
            &staging,
            None,
            &progress,
        )
        .unwrap();
        let extracted = told.take();
        for told in [archived, extracted] {
            // Told after each MiB, whichever files it came from, then at the end.
            assert!(told.len() as u64 > total >> 20, "{told:?}");
            assert!(told.windows(2).all(|w| w[0] <= w[1]), "{told:?}");
            let steps = told.windows(2).rev().skip(1);
            assert!(
                steps.into_iter().all(|w| w[1] - w[0] >= 1 << 20),
                "{told:?}"
            );
            assert_eq!(told.last(), Some(&total), "{told:?}");
        }
    }

    /// An installation with `a.jsonl`, and an empty folder `outside` next to it.
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("root")).unwrap();
        let root = base.path().join("root").canonicalize().unwrap();
        let outside = base.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(root.join("a.jsonl"), "{}\n").unwrap();
        (base, root, outside)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A `.partial` name planted in advance as a link to a folder outside: the link is removed
    /// (never followed; the name carries our PID, so a leftover there is ours to clear, as a
    /// half-written backup of a former process with that PID would be) and the backup is
    /// written into a real folder. Nothing reaches the outside folder.
    #[test]
    fn a_planted_partial_link_is_removed_not_followed() {
        let (_base, root, outside) = tree();
        let dir = root.join("backups");
        fs::create_dir(&dir).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for ts in now - 1..now + 30 {
            let name = format!("full_backup_{ts}.{}.partial", std::process::id());
            std::os::unix::fs::symlink(&outside, dir.join(name)).unwrap();
        }
        let r = root.clone();
        let open = move |rel: &str| confine::open_regular(&r.join(rel), None);
        let made = create(&request(&root, &dir, &open)).unwrap();
        assert!(fs::symlink_metadata(&made).unwrap().is_dir());
        assert_eq!(names(&made), vec![ARCHIVE.to_owned(), METADATA.to_owned()]);
        assert!(
            names(&outside).is_empty(),
            "wrote outside: {:?}",
            names(&outside)
        );
        verify(&made).unwrap();
    }

    /// The `.partial` folder swapped for a link to a folder outside while the archive is being
    /// written (here from the callback that opens a source file): nothing is written outside,
    /// the backup is refused, naming the `.partial` folder, and no link is left as a backup.
    #[test]
    fn a_partial_swapped_for_a_link_mid_write_is_not_followed() {
        let (base, root, outside) = tree();
        let dir = root.join("backups");
        let (r, d, o, aside) = (
            root.clone(),
            dir.clone(),
            outside.clone(),
            base.path().join("aside"),
        );
        let open = move |rel: &str| {
            let partial = names(&d)
                .into_iter()
                .find(|n| n.ends_with(".partial"))
                .expect("a .partial folder");
            if !aside.exists() {
                fs::rename(d.join(&partial), &aside).unwrap();
                std::os::unix::fs::symlink(&o, d.join(&partial)).unwrap();
            }
            confine::open_regular(&r.join(rel), None)
        };
        let e = create(&request(&root, &dir, &open))
            .unwrap_err()
            .to_string();
        assert!(e.contains(".partial") && e.contains("replaced"), "{e}");
        assert!(
            names(&outside).is_empty(),
            "wrote outside: {:?}",
            names(&outside)
        );
        for n in names(&dir) {
            assert!(
                fs::symlink_metadata(dir.join(&n)).unwrap().is_dir(),
                "{n} is left as a link"
            );
        }
    }

    /// A link in an intermediate component of a backup folder below the installation
    /// (`<root>/var/backups`, `var -> outside`): refused, naming it; nothing is written outside.
    #[test]
    fn a_link_on_the_way_to_the_backup_folder_is_refused() {
        let (_base, root, outside) = tree();
        std::os::unix::fs::symlink(&outside, root.join("var")).unwrap();
        let dir = root.join("var/backups");
        let r = root.clone();
        let open = move |rel: &str| confine::open_regular(&r.join(rel), None);
        let e = create(&request(&root, &dir, &open))
            .unwrap_err()
            .to_string();
        assert!(e.contains("var") && e.contains("symbolic link"), "{e}");
        assert!(
            names(&outside).is_empty(),
            "wrote outside: {:?}",
            names(&outside)
        );
    }

    /// Reading backups: a valid backup moved to a folder outside, `<root>/backups` made a link
    /// to it. Listing, reading the metadata, verifying and extracting through the link are
    /// refused, naming `backups`; the same backup named as given (outside) still reads, and a
    /// backup folder that is itself a link is refused there too.
    #[test]
    fn reading_a_backup_through_a_link_is_refused() {
        let (_base, root, outside) = tree();
        let dir = root.join("backups");
        let r = root.clone();
        let open = move |rel: &str| confine::open_regular(&r.join(rel), None);
        let made = create(&request(&root, &dir, &open)).unwrap();
        let name = made.file_name().unwrap().to_owned();
        fs::rename(&dir, outside.join("backups")).unwrap();
        std::os::unix::fs::symlink(outside.join("backups"), &dir).unwrap();
        let refused = |e: Error| {
            let e = e.to_string();
            assert!(e.contains("backups") && e.contains("symbolic link"), "{e}");
        };
        refused(list(&root, &dir).unwrap_err());
        refused(open_backup(Some(&root), &made).unwrap_err());
        refused(read_metadata(&made).unwrap_err());
        refused(verify(&made).unwrap_err());
        let staging = Staging::create(&root.join(".migrate")).unwrap();
        refused(extract(&made, &staging).unwrap_err());
        // Outside, as given: it reads.
        let real = outside.join("backups").join(&name);
        verify(&real).unwrap();
        assert_eq!(list(&outside, &outside.join("backups")).unwrap().len(), 1);
        // A backup folder that is itself a link is refused, even named as given.
        let link = outside.join("backups/full_backup_link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        refused(verify(&link).unwrap_err());
        refused(open_backup(Some(&root), &link).unwrap_err());
    }

    /// `remove_partials` given a `.partial` entry that is a link to a folder outside with files
    /// in it: the link goes, the files outside stay.
    #[test]
    fn remove_partials_removes_a_partial_link_not_its_target() {
        let (_base, root, outside) = tree();
        let dir = root.join("backups");
        fs::create_dir(&dir).unwrap();
        fs::write(outside.join("keep.txt"), "outside").unwrap();
        let link = dir.join("full_backup_1.4242.partial");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        fs::create_dir(dir.join("full_backup_2.4242.partial")).unwrap();
        fs::write(dir.join("full_backup_2.4242.partial/x"), "half").unwrap();
        let removed = remove_partials(&root, &dir, 4242);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(fs::symlink_metadata(&link).is_err(), "the link is left");
        assert!(names(&dir).is_empty());
        assert_eq!(names(&outside), vec!["keep.txt".to_owned()]);
    }

    /// `remove_partials` on a backup folder below the installation reached through a link
    /// (`backups -> outside`, holding what looks like a `.partial` of that PID): nothing
    /// outside the installation is removed.
    #[test]
    fn remove_partials_does_not_follow_a_link_to_the_backup_folder() {
        let (_base, root, outside) = tree();
        let half = outside.join("full_backup_1.4242.partial");
        fs::create_dir(&half).unwrap();
        fs::write(half.join("precious"), "outside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("backups")).unwrap();
        let removed = remove_partials(&root, &root.join("backups"), 4242);
        assert!(removed.is_empty(), "{removed:?}");
        assert!(
            half.join("precious").exists(),
            "removed outside the installation"
        );
    }

    #[test]
    fn escaping_links_are_detected() {
        assert!(normalized_depth(Path::new("data/../../x")) < 0);
        assert!(normalized_depth(Path::new("data/../config/x")) >= 0);
    }
}

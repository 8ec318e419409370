//! Confinement: every access under an installation goes through a [`Root`], which opens each
//! component of a relative path beneath the installation's own folder without following links
//! (a walk of `openat(…, O_NOFOLLOW | O_DIRECTORY)`, then `*at` calls on the last folder).
//!
//! Why: the installation may be writable by a service user while `migrate` runs as root. A
//! link planted inside it (`data/ext -> /etc`), or a journal or backup that names a path, must
//! never make `migrate` read, write, rename or delete anything outside the installation. So
//! paths are relative with no `..`, a link in the way is refused and named (never followed),
//! and files that are read are regular files (checked with `fstat` on the open descriptor,
//! opened `O_NONBLOCK` so that a FIFO cannot hang the reader) under a size cap.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::error::{Error, Result};

/// An installation's root folder, opened once; every path below it is resolved from this
/// descriptor.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    dir: OwnedFd,
}

/// A folder's entries: each name (bytes: it may not be UTF-8) and what it is.
pub type Listing = Vec<(Vec<u8>, Kind)>;

/// What [`Root::stat`] found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
    /// FIFO, socket, device.
    Special,
}

impl Kind {
    fn of(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode as _) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Link,
            _ => Kind::Special,
        }
    }

    /// How a refusal names it.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Dir => "a folder",
            Kind::Link => "a symbolic link",
            Kind::Special => "a special file (FIFO, socket or device)",
        }
    }
}

/// The components of a relative path, checked: not empty, not absolute, no `.` or `..`, no
/// empty component, valid UTF-8 (every path the tool stores is a `String`).
pub fn components(rel: &str) -> std::result::Result<Vec<&str>, String> {
    if rel.is_empty() {
        return Err("an empty path".into());
    }
    if rel.starts_with('/') {
        return Err(format!("`{rel}` is an absolute path"));
    }
    if rel.contains('\0') {
        return Err(format!("`{}` contains a NUL byte", rel.escape_debug()));
    }
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts {
        match *p {
            "" => return Err(format!("`{rel}` has an empty component")),
            "." => return Err(format!("`{rel}` contains `.`")),
            ".." => return Err(format!("`{rel}` contains `..`")),
            _ => {}
        }
    }
    Ok(parts)
}

/// Whether `rel` is a relative path without `..` (see [`components`]).
pub fn is_clean(rel: &str) -> bool {
    components(rel).is_ok()
}

impl Root {
    /// Opens `path` (made canonical and absolute) as the root of every later access.
    pub fn open(path: &Path) -> Result<Root> {
        let canonical = path.canonicalize().map_err(|e| {
            Error::invalid(
                path,
                format!("cannot open the installation ({e})"),
                "pass --path with the folder of the installation",
            )
        })?;
        let dir = rustix::fs::open(
            &canonical,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            Error::invalid(
                &canonical,
                format!("not a folder ({e})"),
                "pass --path with the folder of the installation",
            )
        })?;
        Ok(Root {
            path: canonical,
            dir,
        })
    }

    /// The canonical absolute path of the root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` as a path, for messages and for the few callers that hand a path to code outside
    /// this crate (plugins reading a model folder the engine checked).
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    fn refused(&self, rel: &str, why: String) -> Error {
        Error::invalid(
            self.join(rel),
            why,
            "nothing was changed; migrate never follows links or names outside the installation: replace the link by the real file or folder (or move it out of the installation) and run the command again",
        )
    }

    fn io(&self, what: &str, rel: &str) -> impl FnOnce(rustix::io::Errno) -> Error + '_ {
        let context = format!("cannot {what} {}", self.join(rel).display());
        move |e| Error::Io {
            context,
            source: e.into(),
        }
    }

    /// Opens the folder `parts` beneath the root, one component at a time with `O_NOFOLLOW`.
    /// `Ok(None)` when a component does not exist; a link or non-folder in the way is refused.
    fn walk(&self, rel: &str, parts: &[&str]) -> Result<Option<OwnedFd>> {
        let mut dir: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let at: BorrowedFd = dir.as_ref().map_or(self.dir.as_fd(), |d| d.as_fd());
            let opened = rustix::fs::openat(
                at,
                *part,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            match opened {
                Ok(fd) => dir = Some(fd),
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    let here = parts[..=i].join("/");
                    let kind = rustix::fs::statat(at, *part, AtFlags::SYMLINK_NOFOLLOW)
                        .map(|s| Kind::of(s.st_mode))
                        .unwrap_or(Kind::Special);
                    return Err(self.refused(
                        &here,
                        format!("is {} on the way to `{rel}`: refused", kind.describe()),
                    ));
                }
                Err(e) => return Err(self.io("open the folder", &parts[..=i].join("/"))(e)),
            }
        }
        Ok(Some(match dir {
            Some(d) => d,
            None => rustix::io::dup(&self.dir).map_err(self.io("open", ""))?,
        }))
    }

    /// The folder holding `rel`, and `rel`'s last component.
    fn parent<'a>(&self, rel: &'a str) -> Result<(Option<OwnedFd>, &'a str)> {
        let parts = components(rel).map_err(|why| self.refused(rel, why + ": refused"))?;
        let (name, dirs) = parts.split_last().expect("components are never empty");
        Ok((self.walk(rel, dirs)?, name))
    }

    fn parent_existing<'a>(&self, rel: &'a str) -> Result<(OwnedFd, &'a str)> {
        match self.parent(rel)? {
            (Some(d), name) => Ok((d, name)),
            (None, _) => Err(Error::Io {
                context: format!("cannot reach {}", self.join(rel).display()),
                source: std::io::ErrorKind::NotFound.into(),
            }),
        }
    }

    /// What is at `rel`, without following a link there; `None` when nothing is.
    pub fn stat(&self, rel: &str) -> Result<Option<Found>> {
        let (Some(dir), name) = self.parent(rel)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(Found {
                kind: Kind::of(s.st_mode),
                mode: s.st_mode & 0o7777,
                uid: s.st_uid,
                size: s.st_size as u64,
            })),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io("stat", rel)(e)),
        }
    }

    /// Whether a regular file is at `rel`; a link or special file there is refused.
    pub fn file_exists(&self, rel: &str) -> Result<bool> {
        self.exists_as(rel, Kind::File, "a regular file")
    }

    /// Whether a folder is at `rel` (a link there is refused).
    pub fn dir_exists(&self, rel: &str) -> Result<bool> {
        self.exists_as(rel, Kind::Dir, "a folder")
    }

    /// Whether `rel` exists as `kind`; anything else there is refused, named.
    fn exists_as(&self, rel: &str, kind: Kind, expected: &str) -> Result<bool> {
        match self.stat(rel)? {
            None => Ok(false),
            Some(f) if f.kind == kind => Ok(true),
            Some(f) => Err(self.refused(
                rel,
                format!(
                    "is {}, where {expected} was expected: refused",
                    f.kind.describe()
                ),
            )),
        }
    }

    /// Opens the regular file `rel` for reading: `O_NOFOLLOW | O_NONBLOCK` (a FIFO cannot
    /// block the open), then `fstat` on the descriptor: it must be a regular file of at most
    /// `cap` bytes.
    pub fn open_read(&self, rel: &str, cap: Option<u64>) -> Result<File> {
        let (dir, name) = self.parent_existing(rel)?;
        let fd = self.open_nofollow(&dir, name, rel)?;
        checked_regular(fd, &self.join(rel), cap, OFlags::empty())
    }

    /// Opens the last component `name` of `rel` in `dir` read-only without following a link
    /// there (`O_NOFOLLOW | O_NONBLOCK`: neither a link nor a FIFO can redirect or block it).
    /// The one open behind [`Root::open_read`], [`Root::set_mode`] and [`Root::snapshot_file`],
    /// so that all of them refuse a link the same way.
    fn open_nofollow(&self, dir: &OwnedFd, name: &str, rel: &str) -> Result<OwnedFd> {
        self.open_nofollow_as(dir, name, rel, OFlags::RDONLY, 0)
    }

    /// [`Self::open_nofollow`] with `access` (and `mode` for a file it creates) in place of
    /// read-only: `O_NOFOLLOW | O_NONBLOCK` whatever the access, a link refused and named.
    fn open_nofollow_as(
        &self,
        dir: &OwnedFd,
        name: &str,
        rel: &str,
        access: OFlags,
        mode: u32,
    ) -> Result<OwnedFd> {
        rustix::fs::openat(
            dir,
            name,
            access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode as _),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => self.refused(rel, "is a symbolic link: refused".into()),
            e => self.io("open", rel)(e),
        })
    }

    /// Reads the whole regular file `rel`, at most `cap` bytes.
    pub fn read(&self, rel: &str, cap: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_read(rel, Some(cap))?
            .take(cap + 1)
            .read_to_end(&mut out)
            .map_err(crate::error::io(format!(
                "cannot read {}",
                self.join(rel).display()
            )))?;
        if out.len() as u64 > cap {
            return Err(too_large(&self.join(rel), cap));
        }
        Ok(out)
    }

    /// Creates the new file `rel` (which must not exist) with exactly `mode`, whatever the
    /// umask.
    pub fn create_new(&self, rel: &str, mode: u32) -> Result<File> {
        let (dir, name) = self.parent_existing(rel)?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(self.io("create", rel))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as _)).map_err(self.io("chmod", rel))?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `rel` to append to it, created with exactly `mode` (whatever the
    /// umask) when absent: a link is refused, and so is anything but a regular file (a FIFO
    /// cannot block the open). For the audit trail, which every run appends to.
    pub fn open_append(&self, rel: &str, mode: u32) -> Result<File> {
        let (dir, name) = self.parent_existing(rel)?;
        let append = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE;
        let fd = self.open_nofollow_as(&dir, name, rel, append, mode)?;
        checked_regular(fd, &self.join(rel), None, OFlags::APPEND)
    }

    /// Creates the folder `rel` with exactly `mode`; an existing folder is left as it is.
    pub fn create_dir(&self, rel: &str, mode: u32) -> Result<()> {
        let (dir, name) = self.parent_existing(rel)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.io("open", rel))?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as _))
                    .map_err(self.io("chmod", rel))
            }
            Err(rustix::io::Errno::EXIST) => self.dir_exists(rel).map(|_| ()),
            Err(e) => Err(self.io("create", rel)(e)),
        }
    }

    /// Creates the folders holding `rel` that are missing, each with exactly `mode`.
    pub fn create_parents(&self, rel: &str, mode: u32) -> Result<()> {
        let parts = components(rel).map_err(|why| self.refused(rel, why + ": refused"))?;
        let mut at = String::new();
        for part in &parts[..parts.len() - 1] {
            at = join(&at, part);
            self.create_dir(&at, mode)?;
        }
        Ok(())
    }

    /// Makes sure the folder `rel` (the tool's `.migrate/`) is private: created 0700 when
    /// absent; when present, a real folder owned by this user or root and writable by nobody
    /// else (like ssh's StrictModes), tightened to 0700 when it is ours. Anything else is
    /// refused with the fix: another user could have planted a journal or links in it.
    pub fn private_dir(&self, rel: &str) -> Result<()> {
        match self.stat(rel)? {
            None => return self.create_dir(rel, 0o700),
            Some(f) if f.kind != Kind::Dir => {
                return Err(self.refused(
                    rel,
                    format!("is {}, not a folder: refused", f.kind.describe()),
                ))
            }
            Some(f) => {
                let me = crate::identity::current_uid();
                if f.uid != me && f.uid != 0 {
                    return Err(Error::invalid(
                        self.join(rel),
                        format!("belongs to uid {}, not to you (uid {me}) or root: refused (another user could have planted a journal or links in it)", f.uid),
                        format!("check what is in it, then `chown -R {me} {}`", self.join(rel).display()),
                    ));
                }
                if f.mode & 0o022 != 0 {
                    return Err(Error::invalid(
                        self.join(rel),
                        format!("is writable by group or others (mode {:o}): refused (another user could have planted a journal or links in it)", f.mode),
                        format!("check what is in it, then `chmod 700 {}`", self.join(rel).display()),
                    ));
                }
                if f.mode & 0o077 != 0 && f.uid == me {
                    self.set_mode(rel, f.mode & 0o7700)?;
                }
            }
        }
        Ok(())
    }

    /// Sets the permission bits of the file or folder at `rel` (never through a link).
    pub fn set_mode(&self, rel: &str, mode: u32) -> Result<()> {
        let (dir, name) = self.parent_existing(rel)?;
        let fd = self.open_nofollow(&dir, name, rel)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as _)).map_err(self.io("chmod", rel))
    }

    /// Renames `from` to `to`, both beneath the root; a link in the way of either is refused.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (fdir, fname) = self.parent_existing(from)?;
        let (tdir, tname) = self.parent_existing(to)?;
        if let Some(f) = self.stat(to)? {
            if f.kind == Kind::Link || f.kind == Kind::Special {
                return Err(self.refused(to, format!("is {}: refused", f.kind.describe())));
            }
        }
        rustix::fs::renameat(&fdir, fname, &tdir, tname).map_err(|e| Error::Io {
            context: format!(
                "cannot move {} to {}",
                self.join(from).display(),
                self.join(to).display()
            ),
            source: e.into(),
        })?;
        sync_fd(&tdir);
        Ok(())
    }

    /// Hard-links `from` to the new name `to` (never following a link at `from`).
    pub fn hard_link(&self, from: &str, to: &str) -> Result<()> {
        let (fdir, fname) = self.parent_existing(from)?;
        let (tdir, tname) = self.parent_existing(to)?;
        rustix::fs::linkat(&fdir, fname, &tdir, tname, AtFlags::empty()).map_err(|e| Error::Io {
            context: format!("cannot link {}", self.join(from).display()),
            source: e.into(),
        })
    }

    /// Removes the file (or link: the link itself) at `rel`; `false` when nothing was there.
    pub fn remove_file(&self, rel: &str) -> Result<bool> {
        let (Some(dir), name) = self.parent(rel)? else {
            return Ok(false);
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => {
                sync_fd(&dir);
                Ok(true)
            }
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(self.io("remove", rel)(e)),
        }
    }

    /// Removes the folder `rel` if it is empty; a folder that is not is kept (`false`).
    pub fn remove_empty_dir(&self, rel: &str) -> Result<bool> {
        let (Some(dir), name) = self.parent(rel)? else {
            return Ok(false);
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTEMPTY) => Ok(false),
            Err(rustix::io::Errno::NOTDIR) => Err(self.refused(rel, "is not a folder".into())),
            Err(e) => Err(self.io("remove", rel)(e)),
        }
    }

    /// Removes `rel` and everything below it, descending by descriptor: a link inside is
    /// removed, never followed. `false` when nothing was there.
    pub fn remove_all(&self, rel: &str) -> Result<bool> {
        let (Some(dir), name) = self.parent(rel)? else {
            return Ok(false);
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io("stat", rel)(e)),
            Ok(s) if Kind::of(s.st_mode) != Kind::Dir => return self.remove_file(rel),
            Ok(_) => {}
        }
        remove_tree(&dir, name).map_err(|e| Error::Io {
            context: format!("cannot remove {}", self.join(rel).display()),
            source: e.into(),
        })?;
        sync_fd(&dir);
        Ok(true)
    }

    /// Names in the folder `rel` with what each is (links not followed); `None` when absent.
    pub fn list(&self, rel: &str) -> Result<Option<Listing>> {
        let dir = if rel.is_empty() {
            rustix::io::dup(&self.dir).map_err(self.io("open", rel))?
        } else {
            let parts = components(rel).map_err(|why| self.refused(rel, why))?;
            match self.walk(rel, &parts)? {
                Some(d) => d,
                None => return Ok(None),
            }
        };
        list_fd(dir).map(Some).map_err(|e| self.io("list", rel)(e))
    }

    /// Every regular file below the folder `rel` (relative to `rel`, sorted). Links, special
    /// files and names that are not UTF-8 are refused, named: nothing is skipped in silence.
    pub fn files_below(&self, rel: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.collect(rel, "", &mut out)?;
        out.sort();
        Ok(out)
    }

    fn collect(&self, base: &str, sub: &str, out: &mut Vec<String>) -> Result<()> {
        let here = join(base, sub);
        let Some(names) = self.list(&here)? else {
            return Ok(());
        };
        for (name, kind) in names {
            let name = utf8_name(&name).map_err(|why| self.refused(&here, why))?;
            let rel = join(sub, name);
            match kind {
                Kind::File => out.push(rel),
                Kind::Dir => self.collect(base, &rel, out)?,
                other => {
                    return Err(self.refused(
                        &join(base, &rel),
                        format!("is {}: refused", other.describe()),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Total size of the regular files below the folder `rel` (0 when it is absent), reached
    /// the way [`Root::files_below`] reaches them: a link or special file below is refused.
    pub fn size_below(&self, rel: &str) -> Result<u64> {
        let mut total = 0;
        for inside in self.files_below(rel)? {
            total += self.stat(&join(rel, &inside))?.map_or(0, |f| f.size);
        }
        Ok(total)
    }

    /// Puts the regular file `from` (beneath this root) at the new name `to` beneath `dest` (a
    /// private folder of the tool's) so that what is at `to` is, for certain, the file that
    /// was reached confined at `from`: `from` is
    /// opened without following a link and checked with `fstat`; then it is hard-linked from
    /// the same folder descriptor (never following a link), and the new entry's device and
    /// inode must be those of the open descriptor, so a link or file swapped in between the
    /// open and the link is caught. Where a hard link cannot be made (another filesystem,
    /// `protected_hardlinks`), the open descriptor is copied instead, into a file created
    /// with `from`'s mode.
    pub fn snapshot_file(&self, from: &str, dest: &Root, to: &str) -> Result<()> {
        let (fdir, fname) = self.parent_existing(from)?;
        let fd = self.open_nofollow(&fdir, fname, from)?;
        let mut src = checked_regular(fd, &self.join(from), None, OFlags::empty())?;
        let opened = rustix::fs::fstat(&src).map_err(self.io("stat", from))?;
        let (tdir, tname) = dest.parent_existing(to)?;
        match rustix::fs::linkat(&fdir, fname, &tdir, tname, AtFlags::empty()) {
            Ok(()) => {
                let linked = rustix::fs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(dest.io("stat", to))?;
                if (linked.st_dev, linked.st_ino) != (opened.st_dev, opened.st_ino) {
                    let _ = rustix::fs::unlinkat(&tdir, tname, AtFlags::empty());
                    return Err(self.refused(
                        from,
                        "was replaced (by a link or another file) while it was being read: refused"
                            .into(),
                    ));
                }
                Ok(())
            }
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::PERM
                | rustix::io::Errno::MLINK
                | rustix::io::Errno::NOTSUP,
            ) => {
                let mut dst = dest.create_new(to, opened.st_mode & 0o7777)?;
                std::io::copy(&mut src, &mut dst)
                    .map(|_| ())
                    .map_err(crate::error::io(format!(
                        "cannot copy {} to {}",
                        self.join(from).display(),
                        dest.join(to).display()
                    )))
            }
            Err(e) => Err(Error::Io {
                context: format!(
                    "cannot link {} to {}",
                    self.join(from).display(),
                    dest.join(to).display()
                ),
                source: e.into(),
            }),
        }
    }

    /// The folder `rel` beneath this root, opened the way every access is (each component
    /// without following a link), as a root of its own: what is below it is then reached from
    /// that descriptor, even if `rel` is renamed or replaced by a link afterwards.
    pub fn subroot(&self, rel: &str) -> Result<Root> {
        let parts = components(rel).map_err(|why| self.refused(rel, why + ": refused"))?;
        match self.walk(rel, &parts)? {
            Some(dir) => Ok(Root {
                path: self.join(rel),
                dir,
            }),
            None => Err(Error::Io {
                context: format!("cannot reach {}", self.join(rel).display()),
                source: std::io::ErrorKind::NotFound.into(),
            }),
        }
    }

    /// Whether `other` is the very folder this root is (same device and inode).
    pub fn same_dir(&self, other: &Root) -> Result<bool> {
        let a = rustix::fs::fstat(&self.dir).map_err(self.io("stat", ""))?;
        let b = rustix::fs::fstat(&other.dir).map_err(other.io("stat", ""))?;
        Ok((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
    }

    /// Syncs this root's own folder. Best effort.
    pub fn sync(&self) {
        sync_fd(&self.dir);
    }

    /// Syncs the folder holding `rel` (makes a rename or unlink there durable). Best effort.
    pub fn sync_parent(&self, rel: &str) {
        if let Ok((Some(dir), _)) = self.parent(rel) {
            sync_fd(&dir);
        }
    }
}

/// `path` relative to `root` when it lies strictly below it (as a `Root` of `root` would name
/// it), else `None`: whether a folder the operator named is inside the installation, and so
/// must be reached from the installation's root.
pub fn below<'a>(root: &Path, path: &'a Path) -> Option<&'a str> {
    path.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.to_str())
        .map(|rel| rel.trim_end_matches('/'))
        .filter(|rel| !rel.is_empty())
}

/// `a/b`, or either alone when the other is empty.
pub fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

/// A file name as UTF-8, or the refusal showing its bytes.
pub fn utf8_name(name: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(name).map_err(|_| {
        format!(
            "holds a name that is not valid UTF-8 (bytes: {}): refused; rename it",
            name.iter()
                .map(|b| if b.is_ascii_graphic() {
                    (*b as char).to_string()
                } else {
                    format!("\\x{b:02x}")
                })
                .collect::<String>()
        )
    })
}

/// Opens `path` for reading the way [`Root::open_read`] does a path beneath a root: for the
/// files named on the command line (a backup's `metadata.json`).
pub fn open_regular(path: &Path, cap: Option<u64>) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => Error::invalid(
            path,
            "is a symbolic link: refused",
            "pass the real file, not a link to it",
        ),
        e => Error::Io {
            context: format!("cannot open {}", path.display()),
            source: e.into(),
        },
    })?;
    checked_regular(fd, path, cap, OFlags::empty())
}

/// Reads all of the regular file `path` ([`open_regular`]), at most `cap` bytes.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open_regular(path, Some(cap))?
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(crate::error::io(format!("cannot read {}", path.display())))?;
    if out.len() as u64 > cap {
        return Err(too_large(path, cap));
    }
    Ok(out)
}

fn too_large(path: &Path, cap: u64) -> Error {
    Error::invalid(
        path,
        format!(
            "is larger than {} MiB: refused without reading it",
            cap >> 20
        ),
        "this is not a file migrate wrote; check where it came from",
    )
}

/// Checks on the open descriptor that it is a regular file within `cap`, and makes it
/// blocking again.
/// Refuses a file the tool trusts (its journal) when another user could have written it:
/// owned by someone else than this user or root, or writable by group or others.
pub fn check_private_file(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file
        .metadata()
        .map_err(crate::error::io(format!("cannot stat {}", path.display())))?;
    let me = crate::identity::current_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Error::invalid(
            path,
            format!("belongs to uid {}, not to you (uid {me}) or root: refused, it is not trusted", meta.uid()),
            "a journal migrate did not write must not be acted on: look at it, and remove it if it is not yours",
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::invalid(
            path,
            format!(
                "is writable by group or others (mode {:o}): refused, it is not trusted",
                meta.mode() & 0o7777
            ),
            format!("check it, then `chmod 600 {}`", path.display()),
        ));
    }
    Ok(())
}

/// `fd` as a [`File`] if it is a regular file (of at most `cap` bytes), blocking again
/// (`O_NONBLOCK` only kept a FIFO from blocking the open) with the status flags `keep` (an
/// appender keeps `O_APPEND`).
fn checked_regular(fd: OwnedFd, path: &Path, cap: Option<u64>, keep: OFlags) -> Result<File> {
    let stat = rustix::fs::fstat(&fd).map_err(|e| Error::Io {
        context: format!("cannot stat {}", path.display()),
        source: e.into(),
    })?;
    let kind = Kind::of(stat.st_mode as u32);
    if kind != Kind::File {
        return Err(Error::invalid(
            path,
            format!("is {}, not a regular file: refused", kind.describe()),
            "replace it with the regular file it should be",
        ));
    }
    if let Some(cap) = cap {
        if stat.st_size as u64 > cap {
            return Err(too_large(path, cap));
        }
    }
    rustix::fs::fcntl_setfl(&fd, keep).map_err(|e| Error::Io {
        context: format!("cannot open {}", path.display()),
        source: e.into(),
    })?;
    Ok(File::from(fd))
}

fn list_fd(dir: OwnedFd) -> rustix::io::Result<Listing> {
    let mut out = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(&dir)?;
    for entry in entries.by_ref() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => {
                rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| Kind::of(s.st_mode))?
            }
            t => Kind::of(t.as_raw_mode()),
        };
        out.push((name.to_vec(), kind));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn remove_tree(parent: &OwnedFd, name: &str) -> rustix::io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for (child, kind) in list_fd(rustix::io::dup(&dir)?)? {
        let child = std::ffi::OsStr::from_bytes(&child);
        if kind == Kind::Dir {
            let child = child.to_str().ok_or(rustix::io::Errno::ILSEQ);
            match child {
                Ok(c) => remove_tree(&dir, c)?,
                Err(e) => return Err(e),
            }
        } else {
            rustix::fs::unlinkat(&dir, child, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

use std::os::unix::ffi::OsStrExt;

fn sync_fd(fd: &OwnedFd) {
    let _ = rustix::fs::fsync(fd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_only() {
        assert!(components("data/a.jsonl").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "data/../../x",
            "a//b",
            "./a",
            "a/.",
        ] {
            assert!(components(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_link_in_the_way_is_refused_and_named() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("x.jsonl"), "{}\n").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("data/ext")).unwrap();
        let r = Root::open(&root).unwrap();
        let e = r.remove_file("data/ext/x.jsonl").unwrap_err().to_string();
        assert!(e.contains("data/ext") && e.contains("symbolic link"), "{e}");
        assert!(outside.join("x.jsonl").exists());
        let e = r.files_below("data").unwrap_err().to_string();
        assert!(e.contains("data/ext") && e.contains("symbolic link"), "{e}");
        let e = r.open_read("data/ext", None).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(r.rename("data/ext/x.jsonl", "data/y").is_err());
        assert!(r.remove_all("data").unwrap());
        assert!(
            outside.join("x.jsonl").exists(),
            "remove_all followed a link"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let base = tempfile::tempdir().unwrap();
        let fifo = base.path().join("metadata.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = read_regular(&fifo, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("special file"), "{e}");
    }

    /// The model snapshot's building block: a regular file is hard-linked (the same inode,
    /// so nothing is copied), a link or a FIFO at the source is refused, named, without
    /// blocking, and nothing is left at the destination.
    #[test]
    fn a_snapshot_takes_only_the_regular_file_it_opened() {
        use std::os::unix::fs::MetadataExt;
        let base = tempfile::tempdir().unwrap();
        let (root, snap) = (base.path().join("root"), base.path().join("snap"));
        std::fs::create_dir_all(root.join("m")).unwrap();
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(root.join("m/w.bin"), "weights").unwrap();
        std::fs::write(base.path().join("secret"), "outside").unwrap();
        std::os::unix::fs::symlink(base.path().join("secret"), root.join("m/link.json")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("m/fifo.json"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (r, s) = (Root::open(&root).unwrap(), Root::open(&snap).unwrap());
        s.create_dir("m", 0o700).unwrap();
        r.snapshot_file("m/w.bin", &s, "m/w.bin").unwrap();
        let (a, b) = (
            std::fs::metadata(root.join("m/w.bin")).unwrap(),
            std::fs::metadata(snap.join("m/w.bin")).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "not a hard link");
        let e = r
            .snapshot_file("m/link.json", &s, "m/link.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/link.json") && e.contains("symbolic link"),
            "{e}"
        );
        let e = r
            .snapshot_file("m/fifo.json", &s, "m/fifo.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("special file"), "{e}");
        assert_eq!(s.files_below("m").unwrap(), vec!["w.bin".to_owned()]);
    }

    /// Where no hard link can be made (another filesystem: /dev/shm against the temporary
    /// folder), the opened file is copied, with its mode.
    #[test]
    fn a_snapshot_across_filesystems_is_a_copy_with_the_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let shm = Path::new("/dev/shm");
        let base = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir_in(shm).unwrap();
        if std::fs::metadata(base.path()).unwrap().dev()
            == std::fs::metadata(other.path()).unwrap().dev()
        {
            eprintln!("/dev/shm is on the same filesystem as the temporary folder: skipped");
            return;
        }
        std::fs::write(base.path().join("w.bin"), "weights").unwrap();
        std::fs::set_permissions(
            base.path().join("w.bin"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let (r, s) = (
            Root::open(base.path()).unwrap(),
            Root::open(other.path()).unwrap(),
        );
        r.snapshot_file("w.bin", &s, "w.bin").unwrap();
        let copied = other.path().join("w.bin");
        assert_eq!(std::fs::read_to_string(&copied).unwrap(), "weights");
        assert_eq!(
            std::fs::metadata(&copied).unwrap().permissions().mode() & 0o7777,
            0o640
        );
    }

    #[test]
    fn created_files_and_folders_get_exactly_their_mode() {
        let base = tempfile::tempdir().unwrap();
        let r = Root::open(base.path()).unwrap();
        r.create_dir("d", 0o700).unwrap();
        drop(r.create_new("d/f", 0o600).unwrap());
        assert_eq!(r.stat("d").unwrap().unwrap().mode, 0o700);
        assert_eq!(r.stat("d/f").unwrap().unwrap().mode, 0o600);
        assert!(r.create_new("d/f", 0o600).is_err(), "create_new overwrote");
    }
}

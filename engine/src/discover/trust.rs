//! Who may have written a plugin: the checks made before a plugin file is loaded, in the
//! spirit of ssh's `StrictModes`.
//!
//! A plugin runs with the operator's rights, so its file and the folder holding it must not be
//! writable by group or others, and must be owned by the user running `migrate` or by root.
//! `--allow-insecure-plugins` turns a refusal into a warning (see `registry::inspect`). The
//! checks read the mode and owner of the *open* file (`fstat`), so they describe the bytes that
//! are hashed and loaded.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use migrate_transaction::identity::current_uid;

/// Why a plugin file, its folder or its lock may not be trusted; each names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustProblem {
    #[error("cannot inspect plugin folder {}: {detail}", path.display())]
    Uninspectable { path: PathBuf, detail: String },
    #[error("{what} {} is writable by {} (mode {mode:04o}): anyone who can write it could run code as you; fix: chmod go-w {}", path.display(), who(*mode), path.display())]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} {} is owned by uid {owner}, not by you (uid {me}) or root; fix: chown {me} {}", path.display(), path.display())]
    ForeignOwner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
}

/// Who besides the owner may write, from the mode's group and other write bits.
fn who(mode: u32) -> &'static str {
    match mode & 0o022 {
        0o022 => "group and others",
        0o020 => "its group",
        _ => "others",
    }
}

/// Checks a plugin folder.
pub fn check_dir(dir: &Path) -> Result<(), TrustProblem> {
    let meta = std::fs::metadata(dir).map_err(|e| TrustProblem::Uninspectable {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    check(dir, &meta, "plugin folder")
}

/// Checks `path` (`what`: "plugin", "plugins.lock", …) from its metadata — for a file, the
/// metadata of the open descriptor.
pub fn check(path: &Path, meta: &Metadata, what: &'static str) -> Result<(), TrustProblem> {
    if meta.mode() & 0o022 != 0 {
        return Err(TrustProblem::Writable {
            what,
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    let (owner, me) = (meta.uid(), current_uid());
    if owner != me && owner != 0 {
        return Err(TrustProblem::ForeignOwner {
            what,
            path: path.to_path_buf(),
            owner,
            me,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn with_mode(mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libx.so");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, file)
    }

    fn verdict(mode: u32) -> Result<(), TrustProblem> {
        let (_dir, file) = with_mode(mode);
        check(&file, &std::fs::metadata(&file).unwrap(), "plugin")
    }

    #[test]
    fn owner_only_write_is_fine() {
        for mode in [0o644, 0o755, 0o600, 0o444] {
            assert_eq!(verdict(mode), Ok(()), "{mode:o}");
        }
    }

    #[test]
    fn group_or_world_write_is_refused_with_the_fix() {
        for (mode, who) in [
            (0o664, "its group"),
            (0o646, "others"),
            (0o666, "group and others"),
        ] {
            let e = verdict(mode).unwrap_err().to_string();
            assert!(e.contains(who) && e.contains("chmod go-w"), "{e}");
            assert!(e.contains("libx.so"), "{e}");
        }
    }

    #[test]
    fn a_private_tempdir_is_a_fine_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_dir(dir.path()), Ok(()));
    }
}

//! A model folder as a model rule sees it: the installation's files overlaid by what earlier
//! hops of the same run already staged. Rules read through it and write only into staging.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::RuleError;

/// Target dtype of `--optimize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizeDtype {
    #[default]
    F16,
    BF16,
}

impl OptimizeDtype {
    /// The safetensors dtype name.
    pub fn name(self) -> &'static str {
        match self {
            OptimizeDtype::F16 => "F16",
            OptimizeDtype::BF16 => "BF16",
        }
    }
}

// ModelOptions, ModelOutcome, ModelFolder and FileEntry stay exhaustive within major 1:
// plugins built against 1.x (and the host) build them with literals, and the crate promises
// that such code keeps compiling. Their constructors (since 1.4.0) are the way to build them
// that survives a new field.

/// Options the operator chose for models.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOptions {
    pub optimize: bool,
    #[serde(default)]
    pub dtype: OptimizeDtype,
}

impl ModelOptions {
    /// Since 1.4.0.
    pub fn new(optimize: bool, dtype: OptimizeDtype) -> Self {
        ModelOptions { optimize, dtype }
    }
}

/// What a model rule did: `ModelOutcome::new().written("metadata.json").warning("…")`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOutcome {
    /// Relative paths written into staging.
    pub written: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl ModelOutcome {
    /// Nothing written, no warnings. Since 1.4.0.
    pub fn new() -> Self {
        ModelOutcome::default()
    }

    /// Adds `rel`, a path relative to the model folder, to the files written. Since 1.4.0.
    pub fn written(mut self, rel: impl Into<String>) -> Self {
        self.written.push(rel.into());
        self
    }

    /// Adds a warning for the operator. Since 1.4.0.
    pub fn warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Adds warnings for the operator. Since 1.4.0.
    pub fn warnings(mut self, warnings: impl IntoIterator<Item = String>) -> Self {
        self.warnings.extend(warnings);
        self
    }
}

/// One model folder: `source` is read-only, `staging` receives every write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFolder {
    pub name: String,
    pub source: PathBuf,
    pub staging: PathBuf,
}

/// A file of a model folder, as listed in `metadata.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl FileEntry {
    /// Since 1.4.0.
    pub fn new(path: impl Into<String>, size: u64, sha256: impl Into<String>) -> Self {
        FileEntry {
            path: path.into(),
            size,
            sha256: sha256.into(),
        }
    }
}

impl ModelFolder {
    /// The folder `name`, read from `source`, written into `staging`. Since 1.4.0.
    pub fn new(name: impl Into<String>, source: PathBuf, staging: PathBuf) -> Self {
        ModelFolder {
            name: name.into(),
            source,
            staging,
        }
    }

    /// Where `rel` currently lives: the staged copy if an earlier hop wrote one.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        let staged = self.staging.join(rel);
        if staged.is_file() {
            staged
        } else {
            self.source.join(rel)
        }
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.resolve(rel).is_file()
    }

    /// Reads a small side file (`config.json`, `metadata.json`), `None` if absent.
    pub fn read_json(&self, rel: &str) -> Result<Option<Value>, RuleError> {
        let path = self.resolve(rel);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RuleError::new(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            RuleError::at_field(rel, format!("{} is not valid JSON: {e}", path.display()))
        })
    }

    /// Path in staging for `rel`, with its parent folders created; for streaming writers.
    pub fn staged_path(&self, rel: &str) -> io::Result<PathBuf> {
        let path = self.staging.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        Ok(path)
    }

    /// Writes `rel` into staging. Durability is the host's: it syncs every staged file before
    /// anything is swapped in. (Until 1.8.0 this synced the file too: on ext4 that commits the
    /// file system's journal, which waits for all the data the run wrote before it.)
    ///
    /// A file an earlier hop staged is removed and written anew, never truncated (since
    /// 1.8.1): ext4 starts writing out a file truncated to nothing as soon as it is closed, and
    /// truncating it again then waits for that write, queued behind the data the run is
    /// syncing at that moment (up to 0.6 s per `metadata.json`, measured in a 0.5× run). A
    /// file created under a free name is not written out early. Nor is anything at that path
    /// followed: a link there is replaced, its target untouched.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.staged_path(rel)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = File::create_new(&path)?;
        file.write_all(bytes)
    }

    /// Writes pretty JSON with a trailing newline (the form `metadata.json` takes).
    pub fn write_json(&self, rel: &str, value: &Value) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.write(rel, &bytes)
    }

    /// Every regular file of the folder (source and staging merged), relative with `/`
    /// separators, sorted by byte order.
    pub fn files(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        list_files(&self.source, &self.source, &mut out)?;
        if self.staging.is_dir() {
            list_files(&self.staging, &self.staging, &mut out)?;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Size and sha256 of `rel`, streamed. Since 1.8.0, a file no hop staged is not read
    /// when the host already hashed it for this call (hosts from 1.8.0 hash the installation's
    /// model files while the data is migrated, and check every `metadata.json` checksum against
    /// their own): its size and sha256 are the host's, provided the file still has that size.
    pub fn file_entry(&self, rel: &str) -> io::Result<FileEntry> {
        let path = self.resolve(rel);
        if path == self.source.join(rel) {
            if let Some(known) = host_checksum(&self.source, rel) {
                if fs::metadata(&path)?.len() == known.size {
                    return Ok(known);
                }
            }
        }
        let (size, sha256) = sha256_file(&path)?;
        Ok(FileEntry {
            path: rel.to_owned(),
            size,
            sha256,
        })
    }
}

thread_local! {
    /// The checksums the host handed over with the model call under way on this thread: the
    /// folder's source, and its files' entries (paths relative to it).
    static HOST_CHECKSUMS: std::cell::RefCell<Option<(PathBuf, Vec<FileEntry>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a model rule's call) with the host's checksums of files of the folder read from
/// `source` available to [`ModelFolder::file_entry`]; they are gone once it returns, or
/// panics.
pub(crate) fn with_host_checksums<T>(
    source: &Path,
    checksums: Vec<FileEntry>,
    f: impl FnOnce() -> T,
) -> T {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            HOST_CHECKSUMS.with(|c| c.borrow_mut().take());
        }
    }
    HOST_CHECKSUMS.with(|c| *c.borrow_mut() = Some((source.to_path_buf(), checksums)));
    let _clear = Clear;
    f()
}

/// The host's checksum of `rel` in the folder read from `source`, if it handed one over.
fn host_checksum(source: &Path, rel: &str) -> Option<FileEntry> {
    HOST_CHECKSUMS.with(|c| {
        let held = c.borrow();
        let (from, entries) = held.as_ref()?;
        (from == source)
            .then(|| entries.iter().find(|e| e.path == rel).cloned())
            .flatten()
    })
}

/// Streams a file through sha256; returns its size and hex digest.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    sha256_reader(&mut File::open(path)?)
}

/// Streams a reader through sha256 to its end; returns the bytes read and the hex digest.
pub fn sha256_reader(reader: &mut impl Read) -> io::Result<(u64, String)> {
    let mut hashing = Sha256Reader::new(reader);
    let mut buf = vec![0u8; 1 << 20];
    while hashing.read(&mut buf)? != 0 {}
    Ok((hashing.bytes_read(), hashing.hex()))
}

/// A reader that hashes (sha256) and counts what is read through it: a file streamed for
/// another purpose is hashed on the way, not read a second time. Since 1.2.0.
pub struct Sha256Reader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> Sha256Reader<R> {
    pub fn new(inner: R) -> Self {
        Sha256Reader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// Hex sha256 of the bytes read so far.
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that hashes (sha256) and counts what is written through it: a file is hashed as
/// it is written, not read back. Since 1.2.0.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Hex sha256 of the bytes written so far.
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            list_files(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).map_err(io::Error::other)?;
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("abc"), FIPS 180-2 appendix B.1.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    /// Writing a file an earlier hop staged replaces it with a new file: the old one is not
    /// truncated (ext4 would write it out early, and a second truncation waits for that), and
    /// a link at the staged path is replaced, its target left as it was.
    #[test]
    fn a_staged_file_written_again_is_a_new_file_and_no_link_is_followed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (source, staging) = (dir.path().join("src"), dir.path().join("stage"));
        fs::create_dir_all(&source).unwrap();
        let folder = ModelFolder::new("m", source, staging.clone());
        folder
            .write("metadata.json", b"first hop, a longer text\n")
            .unwrap();
        let first = fs::metadata(staging.join("metadata.json")).unwrap().ino();
        // A reader of the first version keeps what it read, as with a rename.
        let held = File::open(staging.join("metadata.json")).unwrap();
        folder.write("metadata.json", b"second hop\n").unwrap();
        let second = fs::metadata(staging.join("metadata.json")).unwrap();
        assert_ne!(second.ino(), first, "written anew, not truncated");
        assert_eq!(
            fs::read(staging.join("metadata.json")).unwrap(),
            b"second hop\n"
        );
        assert_eq!(
            io::read_to_string(held).unwrap(),
            "first hop, a longer text\n"
        );

        let outside = dir.path().join("outside.txt");
        fs::write(&outside, b"not the plugin's").unwrap();
        std::os::unix::fs::symlink(&outside, staging.join("tokenizer.json")).unwrap();
        folder.write("tokenizer.json", b"{}\n").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"not the plugin's");
        let staged = fs::symlink_metadata(staging.join("tokenizer.json")).unwrap();
        assert!(staged.is_file(), "the link was replaced by a file");
        assert_eq!(fs::read(staging.join("tokenizer.json")).unwrap(), b"{}\n");
    }

    /// During a model call with the host's checksums, `file_entry` answers a source file of
    /// the size the host hashed from them; a staged file, a file of another size, a file they
    /// do not list and any call outside that one are hashed.
    #[test]
    fn file_entries_come_from_the_hosts_checksums_while_they_stand() {
        let dir = tempfile::tempdir().unwrap();
        let (source, staging) = (dir.path().join("src"), dir.path().join("stage"));
        fs::create_dir_all(&source).unwrap();
        fs::create_dir_all(&staging).unwrap();
        for name in ["w.bin", "grown.bin", "unlisted.bin", "staged.bin"] {
            fs::write(source.join(name), b"abc").unwrap();
        }
        fs::write(staging.join("staged.bin"), b"abc").unwrap();
        let folder = ModelFolder::new("m", source.clone(), staging);
        let host = |path: &str, size| FileEntry::new(path, size, "from the host");
        let checksums = vec![
            host("w.bin", 3),
            host("grown.bin", 2),
            host("staged.bin", 3),
        ];
        let entries = with_host_checksums(&source, checksums.clone(), || {
            ["w.bin", "grown.bin", "unlisted.bin", "staged.bin"]
                .map(|f| folder.file_entry(f).unwrap())
        });
        let hashed = |path: &str| FileEntry::new(path, 3, ABC);
        assert_eq!(
            entries,
            [
                host("w.bin", 3),
                hashed("grown.bin"),
                hashed("unlisted.bin"),
                hashed("staged.bin")
            ]
        );
        // Another folder's source, and after the call: hashed.
        let other = with_host_checksums(&dir.path().join("elsewhere"), checksums, || {
            folder.file_entry("w.bin").unwrap()
        });
        assert_eq!(other, hashed("w.bin"));
        assert_eq!(folder.file_entry("w.bin").unwrap(), hashed("w.bin"));
    }

    #[test]
    fn hashing_reader_and_writer_count_and_hash_what_passes() {
        let mut reader = Sha256Reader::new(&b"abc"[..]);
        let mut copy = Sha256Writer::new(Vec::new());
        assert_eq!(io::copy(&mut reader, &mut copy).unwrap(), 3);
        assert_eq!((reader.bytes_read(), reader.hex().as_str()), (3, ABC));
        assert_eq!((copy.bytes_written(), copy.hex().as_str()), (3, ABC));
        assert_eq!(copy.into_inner(), b"abc");
        assert_eq!(
            sha256_reader(&mut &b"abc"[..]).unwrap(),
            (3, ABC.to_owned())
        );
    }
}

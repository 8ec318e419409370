//! Remote copies of backups on S3-compatible storage: a backup on the same disk as the
//! installation is lost with that disk, so with `[backup] remote = "s3://bucket/prefix"` every
//! backup also goes to `<remote>/<backup folder name>/`, after it is written and before the
//! swap, and `rollback --backup-path s3://…` brings one back.
//!
//! Why `object_store` (the crate behind Arrow and DataFusion's storage): one small, well-kept
//! client for every S3-compatible store, with multipart uploads, request signing, retries and
//! the standard `AWS_*` environment variables, and without the whole AWS SDK. The transaction
//! layer is synchronous; each [`Remote`] owns a small tokio runtime driven from a thread of its
//! own, so it can be called from the engine's blocking thread and the CLI's async one alike.
//!
//! What is trusted: nothing we did not read back. The archive goes up with an
//! `x-amz-checksum-sha256` on every request (the store refuses bytes that differ from what we
//! hashed), the archive's bytes are hashed on the way and must be those `metadata.json`
//! records, the stored object's size is read back, and `metadata.json` (written last, so that
//! its presence marks a complete copy) is read back in full and compared.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, Checksum};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backup::{BackupMetadata, METADATA};
use crate::confine::Root;
pub use crate::error::{Place, RemoteError};

/// Parts of a multipart upload: S3 wants at least 5 MiB (but for the last) and at most
/// 10 000 parts; 8 MiB parts cover 80 GB, and larger archives get larger parts.
const PART: usize = 8 << 20;
const MAX_PARTS: u64 = 9_000;
/// Parts in flight at once: enough to fill a link, little enough for a production box's RAM.
const CONCURRENCY: usize = 4;

/// Where remote backups live: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl Location {
    pub fn parse(url: &str) -> Result<Location, RemoteError> {
        let bad = |why: &str| RemoteError::BadUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("it names no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(bad("`.` and `..` are not allowed in the prefix"));
        }
        Ok(Location {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// `name` below this location.
    pub fn child(&self, name: &str) -> Location {
        Location {
            bucket: self.bucket.clone(),
            prefix: self.key(name),
        }
    }

    /// The last part of the prefix: a backup folder's name, for `rollback --backup-path`.
    pub fn name(&self) -> &str {
        self.prefix.rsplit('/').next().unwrap_or("")
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// An open connection to one S3 bucket.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    location: Location,
    endpoint: String,
    /// Always `Some` until dropped: see the `Drop` impl.
    runtime: Option<tokio::runtime::Runtime>,
    /// Appended to every error: what the operator can do, given what the caller was doing.
    hint: String,
}

impl Drop for Remote {
    /// A runtime's ordinary drop waits for its tasks, which tokio forbids inside another
    /// runtime (the CLI's); every request has finished by now, so nothing is lost.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What [`Remote::upload`] put where.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    /// `s3://bucket/prefix/<backup folder name>`.
    pub url: String,
    pub archive_bytes: u64,
    /// 1 for a single PUT.
    pub parts: u64,
}

/// One backup found by [`Remote::list`].
#[derive(Debug, Clone, Serialize)]
pub struct RemoteBackup {
    pub url: String,
    pub metadata: Option<BackupMetadata>,
    /// Why `metadata` is missing: an incomplete upload, or a damaged file.
    pub problem: Option<String>,
}

/// The endpoint requests go to, for messages: `AWS_ENDPOINT_URL`, else AWS's own for the
/// region.
pub fn endpoint() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var("AWS_ENDPOINT_URL")
        .or_else(|| var("AWS_ENDPOINT"))
        .unwrap_or_else(|| {
            let region = var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into());
            format!("https://s3.{region}.amazonaws.com")
        })
}

/// Removes every credential the environment holds from `text`: a store's error message must
/// never carry one to a terminal or a log.
fn scrub(text: &str) -> String {
    let mut out = text.to_owned();
    for k in [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SESSION_TOKEN",
    ] {
        if let Some(v) = std::env::var(k).ok().filter(|v| v.len() >= 4) {
            out = out.replace(&v, "<redacted>");
        }
    }
    out
}

impl Remote {
    /// Connects with the standard `AWS_*` variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …). `hint` ends every error.
    pub fn connect(location: &Location, hint: &str) -> Result<Remote, RemoteError> {
        let endpoint = endpoint();
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(300))
            .with_allow_http(endpoint.starts_with("http://"));
        // A dead endpoint is reported within seconds, not after object_store's default three
        // minutes of retries: the operator is in a maintenance window.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| RemoteError::Local {
                context: "cannot start the S3 client".into(),
                source,
            })?;
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_checksum_algorithm(Checksum::SHA256)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| RemoteError::Store {
                action: "connect to",
                at: Box::new(Place {
                    endpoint: endpoint.clone(),
                    bucket: location.bucket.clone(),
                    key: location.prefix.clone(),
                    hint: hint.to_owned(),
                }),
                detail: scrub(&e.to_string()),
            })?;
        Ok(Remote {
            store: Arc::new(store),
            location: location.clone(),
            endpoint,
            runtime: Some(runtime),
            hint: hint.to_owned(),
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn place(&self, key: &str) -> Box<Place> {
        Box::new(Place {
            endpoint: self.endpoint.clone(),
            bucket: self.location.bucket.clone(),
            key: key.to_owned(),
            hint: self.hint.clone(),
        })
    }

    fn store_error(&self, action: &'static str, key: &str, e: object_store::Error) -> RemoteError {
        RemoteError::Store {
            action,
            at: self.place(key),
            detail: scrub(&e.to_string()),
        }
    }

    fn unverified(&self, key: &str, detail: String) -> RemoteError {
        RemoteError::Unverified {
            at: self.place(key),
            detail,
        }
    }

    /// Runs `f` to completion on this remote's runtime, from a thread of its own: a tokio
    /// runtime cannot be blocked on from inside another one, and the caller may be in one.
    fn block_on<F, T>(&self, f: F) -> T
    where
        F: Future<Output = T> + Send,
        T: Send,
    {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Uploads the backup folder `backup` to `<location>/<its name>/`: the archive (in parts
    /// when large), then `metadata.json`, each verified.
    pub fn upload(&self, backup: &Path, meta: &BackupMetadata) -> Result<Uploaded, RemoteError> {
        let name = backup
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = self.location.child(&name);
        // The backup folder is opened as every backup is read (no link followed on the way):
        // the upload reads the files just written, never what a swapped folder holds.
        let refused =
            |what: &Path, e| confined(format!("cannot read {} for the upload", what.display()), e);
        let folder = crate::backup::open_backup(None, backup).map_err(|e| refused(backup, e))?;
        let archive_path = backup.join(&meta.archive);
        let archive = folder
            .open_read(&meta.archive, None)
            .map_err(|e| refused(&archive_path, e))?;
        let metadata = backup.join(METADATA);
        let json = folder
            .read(METADATA, crate::backup::MAX_METADATA)
            .map_err(|e| refused(&metadata, e))?;
        self.block_on(async {
            let archive_key = target.key(&meta.archive);
            let (bytes, parts) = self
                .put_file(archive, &archive_path, &archive_key, &meta.archive_sha256)
                .await?;
            let meta_key = target.key(METADATA);
            let key = Key::from(meta_key.as_str());
            self.store
                .put(&key, PutPayload::from(json.clone()))
                .await
                .map_err(|e| self.store_error("upload", &meta_key, e))?;
            let stored = self
                .store
                .get(&key)
                .await
                .map_err(|e| self.store_error("read back", &meta_key, e))?
                .bytes()
                .await
                .map_err(|e| self.store_error("read back", &meta_key, e))?;
            if stored.as_ref() != json.as_slice() {
                return Err(self.unverified(
                    &meta_key,
                    format!(
                        "{} bytes read back differ from the {} uploaded",
                        stored.len(),
                        json.len()
                    ),
                ));
            }
            Ok(Uploaded {
                url: target.url(),
                archive_bytes: bytes,
                parts,
            })
        })
    }

    /// Uploads one file, hashing it on the way: its sha256 must be `sha256` (the file has not
    /// changed since it was recorded), and the stored object's size must be the file's.
    async fn put_file(
        &self,
        mut file: File,
        path: &Path,
        key_text: &str,
        sha256: &str,
    ) -> Result<(u64, u64), RemoteError> {
        let local = |source| RemoteError::Local {
            context: format!("cannot read {} for the upload", path.display()),
            source,
        };
        let size = file.metadata().map_err(local)?.len();
        let key = Key::from(key_text);
        let part = PART.max(size.div_ceil(MAX_PARTS) as usize);
        let mut hasher = Sha256::new();
        let mut parts = 1;
        if size <= part as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).map_err(local)?;
            hasher.update(&bytes);
            self.store
                .put(&key, PutPayload::from(bytes))
                .await
                .map_err(|e| self.store_error("upload", key_text, e))?;
        } else {
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| self.store_error("start a multipart upload of", key_text, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
            let mut buf = vec![0u8; 1 << 20];
            let sent: Result<(), RemoteError> = async {
                loop {
                    let n = file.read(&mut buf).map_err(local)?;
                    if n == 0 {
                        return Ok(());
                    }
                    hasher.update(&buf[..n]);
                    writer
                        .wait_for_capacity(CONCURRENCY)
                        .await
                        .map_err(|e| self.store_error("upload", key_text, e))?;
                    writer.write(&buf[..n]);
                }
            }
            .await;
            if let Err(e) = sent {
                // Best effort: a store that is gone cannot be told to drop the parts.
                let _ = writer.abort().await;
                return Err(e);
            }
            writer
                .finish()
                .await
                .map_err(|e| self.store_error("complete the multipart upload of", key_text, e))?;
            parts = size.div_ceil(part as u64);
        }
        let sent_sha = hex::encode(hasher.finalize());
        if sent_sha != sha256 {
            return Err(self.unverified(
                key_text,
                format!("{} changed on disk while it was uploaded (sha256 {sent_sha}, metadata.json says {sha256})", path.display()),
            ));
        }
        let head = self
            .store
            .head(&key)
            .await
            .map_err(|e| self.store_error("read back the size of", key_text, e))?;
        if head.size != size {
            return Err(self.unverified(
                key_text,
                format!("the store holds {} bytes, {size} were sent", head.size),
            ));
        }
        Ok((size, parts))
    }

    /// The backups below this location, by folder name; a folder without a readable
    /// `metadata.json` (an upload that did not finish) is listed with its problem.
    pub fn list(&self) -> Result<Vec<RemoteBackup>, RemoteError> {
        self.block_on(async {
            let prefix = (!self.location.prefix.is_empty())
                .then(|| Key::from(self.location.prefix.as_str()));
            let listed = self
                .store
                .list_with_delimiter(prefix.as_ref())
                .await
                .map_err(|e| self.store_error("list", &self.location.prefix, e))?;
            let mut out = Vec::new();
            for dir in listed.common_prefixes {
                let name = dir.filename().unwrap_or_default().to_owned();
                let child = self.location.child(&name);
                let (metadata, problem) = match self.metadata_at(&child).await {
                    Ok(m) => (Some(m), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                out.push(RemoteBackup {
                    url: child.url(),
                    metadata,
                    problem,
                });
            }
            out.sort_by_key(|b| {
                (
                    b.metadata.as_ref().map_or(0, |m| m.created_unix),
                    b.url.clone(),
                )
            });
            Ok(out)
        })
    }

    async fn metadata_at(&self, at: &Location) -> Result<BackupMetadata, RemoteError> {
        let key = at.key(METADATA);
        let bytes = self
            .store
            .get(&Key::from(key.as_str()))
            .await
            .map_err(|e| self.store_error("read", &key, e))?
            .bytes()
            .await
            .map_err(|e| self.store_error("read", &key, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.unverified(&key, format!("not valid backup metadata ({e})")))
    }

    /// `metadata.json` of the backup this location names (`s3://bucket/prefix/<name>`).
    pub fn metadata(&self) -> Result<BackupMetadata, RemoteError> {
        self.block_on(self.metadata_at(&self.location))
    }

    /// Downloads the backup this location names into the new folder `into` (mode 0700, files
    /// 0600: a backup holds the installation's secrets), through `<into>.partial`. Nothing is
    /// trusted here: the caller verifies the copy in full as for a local backup.
    pub fn download(
        &self,
        meta: &BackupMetadata,
        dir: &Root,
        name: &str,
    ) -> Result<PathBuf, RemoteError> {
        if Path::new(&meta.archive).components().count() != 1 {
            return Err(self.unverified(
                &self.location.key(METADATA),
                format!("archive name `{}` is not a plain file name", meta.archive),
            ));
        }
        // The `.partial` folder and what is written into it are reached through `dir`, the
        // folder that holds the download, opened by the caller without following links: a
        // link planted or swapped in at `.partial` is removed or refused, never followed.
        let into = dir.join(name);
        let partial = Path::new(name).with_extension("partial");
        let partial = partial.to_str().unwrap_or(name).to_owned();
        let local = |what: &Path| {
            let context = format!("cannot write {}", what.display());
            move |source| RemoteError::Local { context, source }
        };
        let confined = |what: &Path| {
            let context = format!("cannot write {}", what.display());
            move |e| confined(context, e)
        };
        let held = dir
            .remove_all(&partial)
            .and_then(|_| dir.create_dir(&partial, 0o700))
            .and_then(|()| dir.subroot(&partial))
            .map_err(confined(&dir.join(&partial)))?;
        let got = self.block_on(async {
            for name in [meta.archive.as_str(), METADATA] {
                let key = self.location.key(name);
                let stream = self
                    .store
                    .get(&Key::from(key.as_str()))
                    .await
                    .map_err(|e| self.store_error("download", &key, e))?
                    .into_stream();
                let dest = held.join(name);
                let mut out = held.create_new(name, 0o600).map_err(confined(&dest))?;
                let mut stream = stream;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| self.store_error("download", &key, e))?;
                    out.write_all(&chunk).map_err(local(&dest))?;
                }
                out.sync_all().map_err(local(&dest))?;
            }
            Ok(())
        });
        if let Err(e) = got {
            let _ = dir.remove_all(&partial);
            return Err(e);
        }
        dir.remove_all(name)
            .and_then(|_| dir.rename(&partial, name))
            .map_err(confined(&into))?;
        Ok(into)
    }
}

/// A refusal of the confinement layer on the local side of a remote copy (a link where the
/// backup or the download should be), as a local error naming what was being read or written.
fn confined(context: String, e: crate::error::Error) -> RemoteError {
    RemoteError::Local {
        context,
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A remote on an in-memory store at `location`.
    fn in_memory(
        store: Arc<dyn ObjectStore>,
        location: &str,
        runtime: tokio::runtime::Runtime,
    ) -> Remote {
        Remote {
            store,
            location: Location::parse(location).unwrap(),
            endpoint: "memory".into(),
            runtime: Some(runtime),
            hint: String::new(),
        }
    }

    /// The metadata of an empty backup: what an upload or a download needs of it.
    fn minimal_meta() -> BackupMetadata {
        serde_json::from_value(serde_json::json!({
            "format": 2, "kind": "full", "source_version": "0.1.0", "target_version": "1.0.0",
            "created_unix": 1, "created": "", "host": "", "user": "", "root": "/x",
            "archive": "backup.tar.zst", "archive_sha256": "", "files": [],
            "created_files": [], "created_dirs": []
        }))
        .unwrap()
    }

    /// The download's `.partial` folder planted in advance as a link to a folder outside:
    /// the link is removed, never followed; the files land in a real folder, 0600 in 0700.
    #[test]
    fn a_planted_partial_link_is_not_followed_by_a_download() {
        use object_store::{memory::InMemory, PutPayload};
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        let downloads = base.path().join("downloads");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(&downloads).unwrap();
        std::os::unix::fs::symlink(&outside, downloads.join("full_backup_1.partial")).unwrap();
        let store = InMemory::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            for (name, body) in [("backup.tar.zst", "archive"), (METADATA, "{}")] {
                store
                    .put(
                        &Key::from(format!("fleet/full_backup_1/{name}").as_str()),
                        PutPayload::from(body.as_bytes().to_vec()),
                    )
                    .await
                    .unwrap();
            }
        });
        let remote = in_memory(Arc::new(store), "s3://b/fleet/full_backup_1", runtime);
        let meta = minimal_meta();
        let into = downloads.join("full_backup_1");
        let holder = Root::open(&downloads).unwrap();
        remote.download(&meta, &holder, "full_backup_1").unwrap();
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "written outside"
        );
        assert!(fs::symlink_metadata(&into).unwrap().is_dir());
        assert!(fs::symlink_metadata(downloads.join("full_backup_1.partial")).is_err());
        assert_eq!(
            fs::read_to_string(into.join("backup.tar.zst")).unwrap(),
            "archive"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&into), 0o700);
        assert_eq!(mode(&into.join(METADATA)), 0o600);
    }

    /// The upload reads the backup just written through the confinement layer: an archive
    /// swapped for a link to a file outside, or a backup folder swapped for a link, is refused
    /// and nothing is uploaded.
    #[test]
    fn an_upload_never_reads_through_a_link() {
        use object_store::memory::InMemory;
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        let backups = base.path().join("backups");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "not the archive").unwrap();
        let backup = backups.join("full_backup_1");
        fs::create_dir_all(&backup).unwrap();
        fs::write(backup.join(METADATA), "{}").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), backup.join("backup.tar.zst")).unwrap();
        let store = Arc::new(InMemory::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let remote = in_memory(store.clone(), "s3://b/fleet", runtime);
        let meta = minimal_meta();
        let e = remote.upload(&backup, &meta).unwrap_err().to_string();
        assert!(e.contains("backup.tar.zst") && e.contains("link"), "{e}");
        // The backup folder itself swapped for a link to a folder holding a real archive.
        let elsewhere = base.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(elsewhere.join("backup.tar.zst"), "archive").unwrap();
        fs::write(elsewhere.join(METADATA), "{}").unwrap();
        fs::remove_dir_all(&backup).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &backup).unwrap();
        let e = remote.upload(&backup, &meta).unwrap_err().to_string();
        assert!(e.contains("full_backup_1") && e.contains("link"), "{e}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let listed = runtime.block_on(async { store.list(None).collect::<Vec<_>>().await.len() });
        assert_eq!(listed, 0, "something was uploaded");
    }

    #[test]
    fn locations_parse_and_refuse() {
        let l = Location::parse("s3://backups/fleet/a/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("backups", "fleet/a")
        );
        assert_eq!(
            l.child("full_backup_1").url(),
            "s3://backups/fleet/a/full_backup_1"
        );
        assert_eq!(l.child("full_backup_1").name(), "full_backup_1");
        assert_eq!(Location::parse("s3://b").unwrap().key("x"), "x");
        for bad in [
            "https://b/p",
            "s3://",
            "s3:///p",
            "s3://b/../p",
            "/srv/backups",
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("s3://bucket/prefix"), "{e}");
        }
    }

    #[test]
    fn credentials_are_scrubbed_from_messages() {
        // The variables are read, never set, by the code under test; this test sets one that
        // no other test in this crate reads.
        std::env::set_var("AWS_SESSION_TOKEN", "tok-SECRET-123");
        let s = scrub("denied for tok-SECRET-123 at http://x");
        std::env::remove_var("AWS_SESSION_TOKEN");
        assert_eq!(s, "denied for <redacted> at http://x");
    }
}

//! Encrypted backups, with age (<https://age-encryption.org/v1>): after a 0.1.0 → 2.1.0
//! migration the backup is the only place the API keys still exist in plaintext, so with
//! `[backup] encrypt_to` set the archive is written as `backup.tar.zst.age`.
//!
//! Why age, through the `age` crate: the file is the one the `age` command line tool reads, so
//! an operator can open a backup without this tool, and the recipients are public keys, so
//! the box that migrates never holds what decrypts its backups. The zstd stream goes straight
//! into the age stream: no plaintext copy of the archive ever touches the disk.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The archive's name when it is encrypted.
pub const ENCRYPTED_ARCHIVE: &str = "backup.tar.zst.age";
/// The `scheme` written in `metadata.json`.
pub const SCHEME: &str = "age";

/// What `metadata.json` says about an encrypted archive: public facts only (the recipients
/// are public keys), so that an operator knows which identity opens it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Encryption {
    /// Always `age`.
    pub scheme: String,
    /// The public keys (`age1…`) the archive is encrypted to.
    pub recipients: Vec<String>,
}

/// The recipients of `[backup] encrypt_to`, parsed once when the settings are read, so a
/// mistyped key is refused before a migration starts rather than after it staged everything.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
}

impl Recipients {
    /// Parses `age1…` public keys; `Err` names the one that is not a key.
    pub fn parse(keys: &[String]) -> std::result::Result<Recipients, String> {
        if keys.is_empty() {
            return Err("encrypt_to lists no recipient".into());
        }
        let keys = keys
            .iter()
            .map(|k| {
                age::x25519::Recipient::from_str(k.trim())
                    .map_err(|e| format!("`{k}` is not an age public key (age1…): {e}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Recipients { keys })
    }

    /// The keys as written (`age1…`), for `metadata.json` and the report.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().map(ToString::to_string).collect()
    }

    pub fn describe(&self) -> Encryption {
        Encryption {
            scheme: SCHEME.into(),
            recipients: self.public_keys(),
        }
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.public_keys()).finish()
    }
}

impl PartialEq for Recipients {
    fn eq(&self, other: &Self) -> bool {
        self.public_keys() == other.public_keys()
    }
}

impl Serialize for Recipients {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.public_keys().serialize(s)
    }
}

/// The public keys, parsed again: a plan sent to the plugin worker keeps its recipients
/// rather than silently losing them.
impl<'de> Deserialize<'de> for Recipients {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let keys = Vec::<String>::deserialize(d)?;
        Recipients::parse(&keys).map_err(serde::de::Error::custom)
    }
}

/// The sink a backup archive is written to: the file itself, or an age stream over it.
pub enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    /// Encrypts to `to` when given; everything written goes through the age stream, which
    /// holds at most one 64 KiB chunk of plaintext in memory.
    pub fn new(out: W, to: Option<&Recipients>) -> io::Result<Sealed<W>> {
        let Some(to) = to else {
            return Ok(Sealed::Plain(out));
        };
        let encryptor =
            age::Encryptor::with_recipients(to.keys.iter().map(|r| r as &dyn age::Recipient))
                .map_err(io::Error::other)?;
        Ok(Sealed::Age(encryptor.wrap_output(out)?))
    }

    /// Ends the age stream (its last chunk and tag) and gives back the file's writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

/// The identities of an age identity file (`age-keygen -o key.txt`), for `rollback` and
/// `backups verify --identity FILE`.
pub struct Identities {
    file: PathBuf,
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl Identities {
    /// Reads an identity file; a file that is not one is refused, naming it.
    pub fn from_file(path: &Path) -> Result<Identities> {
        let refused = |why: String| {
            Error::invalid(
                path,
                why,
                "pass the age identity file (AGE-SECRET-KEY-1…) whose public key the backup was encrypted to; nothing was changed",
            )
        };
        let file = File::open(path).map_err(|e| refused(format!("cannot read: {e}")))?;
        let parsed = age::IdentityFile::from_buffer(BufReader::new(file))
            .map_err(|e| refused(format!("not an age identity file: {e}")))?;
        let keys = parsed
            .into_identities()
            .map_err(|e| refused(format!("not an age identity file: {e}")))?;
        if keys.is_empty() {
            return Err(refused("holds no age identity".into()));
        }
        Ok(Identities {
            file: path.to_path_buf(),
            keys,
        })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Opens an archive for reading: decrypts it when `metadata.json` says it is encrypted.
///
/// Refuses (touching nothing) when an encrypted archive comes without identities, when none
/// of them opens it (naming the identity file), or when its header is damaged.
pub fn open<'a, R: BufRead + Send + 'a>(
    archive: &Path,
    input: R,
    encryption: Option<&Encryption>,
    keys: Option<&Identities>,
) -> Result<Box<dyn Read + Send + 'a>> {
    let Some(encryption) = encryption else {
        return Ok(Box::new(input));
    };
    if encryption.scheme != SCHEME {
        return Err(Error::invalid(
            archive,
            format!(
                "encrypted with `{}`, which migrate cannot read",
                encryption.scheme
            ),
            "use a backup made by migrate; nothing was changed",
        ));
    }
    let Some(keys) = keys else {
        return Err(Error::invalid(
            archive,
            format!(
                "this backup is encrypted with age (to {})",
                encryption.recipients.join(", ")
            ),
            "pass --identity FILE with the age identity file of one of those recipients; nothing was changed",
        ));
    };
    let decryptor = age::Decryptor::new_buffered(input).map_err(|e| {
        Error::invalid(
            archive,
            format!("not a readable age file: {e}"),
            "the backup is damaged; use another one (or its remote copy); nothing was changed",
        )
    })?;
    let reader = decryptor
        .decrypt(keys.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::invalid(
                &keys.file,
                format!(
                    "no identity in this file opens {} (it is encrypted to {})",
                    archive.display(),
                    encryption.recipients.join(", ")
                ),
                "pass the identity file of one of those recipients; nothing was changed",
            ),
            other => Error::invalid(
                archive,
                format!("cannot decrypt: {other}"),
                "the backup is damaged; use another one (or its remote copy); nothing was changed",
            ),
        })?;
    Ok(Box::new(reader))
}

/// Checks, before anything is locked or staged, that `keys` open the archive at `archive`:
/// a rollback with the wrong identity is refused without touching the installation.
pub fn check_opens(
    backup: &crate::confine::Root,
    archive: &str,
    encryption: Option<&Encryption>,
    keys: Option<&Identities>,
) -> Result<()> {
    if encryption.is_none() {
        return Ok(());
    }
    let path = backup.join(archive);
    let file = backup.open_read(archive, None).map_err(|e| {
        Error::invalid(
            &path,
            format!("cannot open: {e}"),
            "the backup is incomplete; use another one; nothing was changed",
        )
    })?;
    open(&path, BufReader::new(file), encryption, keys).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (age::x25519::Identity, Recipients) {
        let id = age::x25519::Identity::generate();
        let to = Recipients::parse(&[id.to_public().to_string()]).unwrap();
        (id, to)
    }

    #[test]
    fn a_mistyped_recipient_is_refused_naming_it() {
        let e = Recipients::parse(&["age1notakey".into()]).unwrap_err();
        assert!(e.contains("age1notakey"), "{e}");
        assert!(Recipients::parse(&[]).is_err());
    }

    #[test]
    fn sealed_round_trips_and_holds_no_plaintext() {
        let (id, to) = key();
        let secret = b"sk-live-0123456789abcdef".repeat(100);
        let mut sealed = Sealed::new(Vec::new(), Some(&to)).unwrap();
        sealed.write_all(&secret).unwrap();
        let bytes = sealed.finish().unwrap();
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
        assert!(!bytes.windows(11).any(|w| w == &secret[..11]));
        let dir = tempfile::tempdir().unwrap();
        let idf = dir.path().join("key.txt");
        std::fs::write(
            &idf,
            format!(
                "{}\n",
                age::secrecy::ExposeSecret::expose_secret(&id.to_string())
            ),
        )
        .unwrap();
        let keys = Identities::from_file(&idf).unwrap();
        let mut out = Vec::new();
        open(
            Path::new("a.age"),
            &bytes[..],
            Some(&to.describe()),
            Some(&keys),
        )
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out, secret);
    }

    #[test]
    fn a_wrong_identity_is_refused_naming_its_file() {
        let (_, to) = key();
        let (other, _) = key();
        let mut sealed = Sealed::new(Vec::new(), Some(&to)).unwrap();
        sealed.write_all(b"x").unwrap();
        let bytes = sealed.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let idf = dir.path().join("wrong.txt");
        std::fs::write(
            &idf,
            age::secrecy::ExposeSecret::expose_secret(&other.to_string()),
        )
        .unwrap();
        let keys = Identities::from_file(&idf).unwrap();
        let e = open(
            Path::new("a.age"),
            &bytes[..],
            Some(&to.describe()),
            Some(&keys),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("wrong.txt"), "{e}");
        let none = open(Path::new("a.age"), &bytes[..], Some(&to.describe()), None)
            .err()
            .unwrap()
            .to_string();
        assert!(none.contains("--identity"), "{none}");
    }

    /// A backup written with recipients is an age file whose metadata names them; it
    /// verifies and extracts with the identity, and is refused without it.
    #[test]
    fn an_encrypted_backup_round_trips_through_create_verify_and_extract() {
        use crate::backup::{self, BackupRequest};
        let (id, to) = key();
        let root = tempfile::tempdir().unwrap();
        let secret = "api_key = \"tfk_0123456789\"\n".repeat(1000);
        std::fs::write(root.path().join("keys.toml"), &secret).unwrap();
        let r = root.path().to_path_buf();
        let open = move |rel: &str| crate::confine::open_regular(&r.join(rel), None);
        let made = backup::create(&BackupRequest {
            root: root.path(),
            dir: &root.path().join("backups"),
            kind: "full",
            from: "0.1.0",
            to: "2.1.0",
            open_source: &open,
            files: vec!["keys.toml".into()],
            created_files: vec![],
            created_dirs: vec![],
            written: vec![],
            open_written: &open,
            known_written: None,
            progress: &|_| {},
            encrypt_to: Some(&to),
        })
        .unwrap();
        let archive = std::fs::read(made.join(ENCRYPTED_ARCHIVE)).unwrap();
        assert!(archive.starts_with(b"age-encryption.org/v1\n"));
        assert!(!made.join(backup::ARCHIVE).exists(), "no plaintext archive");
        let meta = backup::read_metadata(&made).unwrap();
        assert_eq!(meta.encryption, Some(to.describe()));
        assert!(backup::verify(&made).is_err(), "refused without identities");
        let dir = tempfile::tempdir().unwrap();
        let idf = dir.path().join("key.txt");
        std::fs::write(
            &idf,
            age::secrecy::ExposeSecret::expose_secret(&id.to_string()),
        )
        .unwrap();
        let keys = Identities::from_file(&idf).unwrap();
        backup::verify_with(&made, Some(&keys)).unwrap();
        let staging = crate::staging::Staging::create(&root.path().join(".migrate")).unwrap();
        backup::extract_with(&made, &staging, Some(&keys)).unwrap();
        assert_eq!(
            std::fs::read_to_string(staging.dir().join("keys.toml")).unwrap(),
            secret
        );
    }

    #[test]
    fn a_file_that_is_not_an_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let idf = dir.path().join("notes.txt");
        std::fs::write(&idf, "hello\n").unwrap();
        let e = Identities::from_file(&idf).err().unwrap().to_string();
        assert!(e.contains("notes.txt"), "{e}");
    }
}

//! The supervisor ↔ worker protocol: framed, versioned JSON messages over the worker's stdin
//! and stdout (the worker moves its own stdout aside first, so that a plugin's prints cannot
//! corrupt the stream). Each frame is a little-endian `u32` length and that many bytes of JSON;
//! a frame over [`MAX_FRAME`] is refused. Both sides open with [`Request::Hello`] /
//! [`Reply::Hello`], and a worker of another major protocol version is refused. There is no
//! per-record traffic: the worker runs the whole pipeline and writes staging files; it reports
//! progress, each step's figures, plugin calls (so a crash can be pinned on one) and a result.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use plugin_api::model::FileEntry;
use plugin_api::HopDescriptor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::MigrateError;
use crate::isolation::Isolation;
use crate::observe::PluginCall;
use crate::plan::Plan;
use crate::report::StepResult;

/// Names the protocol in the handshake.
pub const PROTOCOL: &str = "trustformers-migrate-worker";
/// Semver of the protocol: a peer whose major differs is refused. 1.1.0: a worker's error
/// carries its typed cause ([`WireCause`]); a 1.0 answer without one still reads. 1.2.0: the
/// isolation a worker reports says whether sockets were denied (absent from an older worker's:
/// false). 1.3.0: a `Stage` request may say the supervisor hashes the model files; the worker
/// then asks for the checksums before its models step (an older worker never asks, and is
/// never answered).
pub const VERSION: &str = "1.3.0";
/// Largest frame either side accepts: a plan or a step result is far smaller.
pub const MAX_FRAME: usize = 16 << 20;

/// What the worker may touch: read below `read`, write below `write`, no network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Confinement {
    /// Apply the sandbox (`false` with `--no-sandbox`).
    pub sandbox: bool,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    /// `RLIMIT_DATA` for the worker, in bytes.
    pub memory_limit: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello {
        protocol: String,
        version: String,
    },
    /// Load one plugin file (which must still have `sha256`) and return its descriptor.
    Describe {
        path: PathBuf,
        sha256: String,
        confinement: Confinement,
    },
    /// Run config, data and models of `plan` through its hops into `staging`.
    Stage {
        plan: Box<Plan>,
        staging: PathBuf,
        /// The link-free copy of the model folders that model rules read
        /// ([`crate::stage::snapshot`]); `None` when the plan has no model folder.
        snapshot: Option<PathBuf>,
        confinement: Confinement,
        /// The supervisor is hashing the installation's model files: before the models step,
        /// the worker asks for the checksums ([`Reply::WantChecksums`]), to hand them to the
        /// model rules.
        #[serde(default)]
        checksums: bool,
    },
    /// The answer to [`Reply::WantChecksums`], once the supervisor's hashing is over: size and
    /// sha256 of installation model files (paths relative to the installation), those it
    /// could hash.
    Checksums {
        files: Vec<FileEntry>,
    },
}

/// An error the worker met and reported. `cause` carries what the supervisor needs to
/// rebuild the very [`MigrateError`] the worker raised, so that its exit code, next step and
/// file are what the same error raised in the supervisor would have; `exit_code` and
/// `message` are its code and text, which is all a 1.0 worker sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub exit_code: i32,
    pub message: String,
    /// Absent from a 1.0 worker's answer: read as [`WireCause::Other`] without a file.
    #[serde(default)]
    pub cause: WireCause,
}

/// The errors the worker raises that a caller acts on, with the fields of their
/// [`MigrateError`] variant. Paths are as the error names them: relative to the installation
/// for the files being migrated, absolute for plugin files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireCause {
    /// [`MigrateError::Invalid`].
    Invalid {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// [`MigrateError::RecordRefused`].
    RecordRefused {
        file: PathBuf,
        place: String,
        message: String,
        hint: String,
    },
    /// [`MigrateError::WrongVersion`].
    WrongVersion {
        file: PathBuf,
        place: String,
        schema: u64,
        detected: String,
        from: String,
    },
    /// [`MigrateError::PluginFailed`].
    PluginFailed {
        plugin: String,
        hop: String,
        plugin_file: PathBuf,
        input: PathBuf,
        detail: String,
    },
    /// [`MigrateError::TimedOut`].
    TimedOut { limit_secs: u64, during: String },
    /// Anything else (I/O, the transaction layer, a bug in the worker): rebuilt as
    /// [`MigrateError::Staged`] from the code and the text, with the file the error named.
    Other { file: Option<PathBuf> },
}

impl Default for WireCause {
    fn default() -> Self {
        WireCause::Other { file: None }
    }
}

impl From<&MigrateError> for WireError {
    fn from(e: &MigrateError) -> WireError {
        let cause = match e {
            MigrateError::Invalid {
                path,
                message,
                hint,
            } => WireCause::Invalid {
                path: path.clone(),
                message: message.clone(),
                hint: hint.clone(),
            },
            MigrateError::RecordRefused {
                file,
                place,
                message,
                hint,
            } => WireCause::RecordRefused {
                file: file.clone(),
                place: place.clone(),
                message: message.clone(),
                hint: hint.clone(),
            },
            MigrateError::WrongVersion {
                file,
                place,
                schema,
                detected,
                from,
            } => WireCause::WrongVersion {
                file: file.clone(),
                place: place.clone(),
                schema: *schema,
                detected: detected.clone(),
                from: from.clone(),
            },
            MigrateError::PluginFailed {
                plugin,
                hop,
                plugin_file,
                input,
                detail,
            } => WireCause::PluginFailed {
                plugin: plugin.clone(),
                hop: hop.clone(),
                plugin_file: plugin_file.clone(),
                input: input.clone(),
                detail: detail.clone(),
            },
            MigrateError::TimedOut { limit_secs, during } => WireCause::TimedOut {
                limit_secs: *limit_secs,
                during: during.clone(),
            },
            other => WireCause::Other {
                file: other.file().map(Path::to_path_buf),
            },
        };
        WireError {
            exit_code: e.exit_code() as i32,
            message: e.to_string(),
            cause,
        }
    }
}

impl From<WireError> for MigrateError {
    fn from(e: WireError) -> MigrateError {
        match e.cause {
            WireCause::Invalid {
                path,
                message,
                hint,
            } => MigrateError::Invalid {
                path,
                message,
                hint,
            },
            WireCause::RecordRefused {
                file,
                place,
                message,
                hint,
            } => MigrateError::RecordRefused {
                file,
                place,
                message,
                hint,
            },
            WireCause::WrongVersion {
                file,
                place,
                schema,
                detected,
                from,
            } => MigrateError::WrongVersion {
                file,
                place,
                schema,
                detected,
                from,
            },
            WireCause::PluginFailed {
                plugin,
                hop,
                plugin_file,
                input,
                detail,
            } => MigrateError::PluginFailed {
                plugin,
                hop,
                plugin_file,
                input,
                detail,
            },
            WireCause::TimedOut { limit_secs, during } => {
                MigrateError::TimedOut { limit_secs, during }
            }
            WireCause::Other { file } => MigrateError::Staged {
                exit_code: e.exit_code,
                message: e.message,
                file,
            },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        protocol: String,
        version: String,
    },
    /// What the sandbox enforced, sent before any plugin is loaded.
    Isolation {
        isolation: Isolation,
    },
    Described {
        result: Result<HopDescriptor, String>,
    },
    StepStarted {
        step: String,
        total_bytes: u64,
    },
    Progress {
        bytes: u64,
        records: u64,
    },
    /// The models step is next, and the `Stage` request said the supervisor hashes model
    /// files: the worker waits for [`Request::Checksums`].
    WantChecksums,
    /// A finished step (config, data, models) with its figures.
    Step {
        result: StepResult,
    },
    Calling {
        call: PluginCall,
    },
    Returned {
        id: u64,
    },
    /// The worker did I/O since its last message (a long model conversion is alive even
    /// though no batch completes); `io_bytes` is its running total of file reads and writes.
    Alive {
        io_bytes: u64,
    },
    Notice {
        message: String,
    },
    Warning {
        message: String,
    },
    /// The end of a `Stage` request; `removals` are installation files the commit deletes
    /// (documents moved to the quarantine as a whole).
    Staged {
        result: Result<Vec<String>, WireError>,
    },
}

/// Writes one frame; returns its size in bytes.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<usize> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a protocol message of {} bytes is over the {MAX_FRAME}-byte limit",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    out.write_all(&frame)?;
    out.flush()?;
    Ok(frame.len())
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a protocol frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::other(format!("malformed protocol message: {e}")))
}

/// Whether a peer speaking `version` of `protocol` can be talked to.
pub fn compatible(protocol: &str, version: &str) -> bool {
    let major = |v: &str| v.split('.').next().map(str::to_owned);
    protocol == PROTOCOL && major(version) == major(VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_frames_are_refused() {
        let mut buf = Vec::new();
        let hello = Request::Hello {
            protocol: PROTOCOL.into(),
            version: VERSION.into(),
        };
        write_frame(&mut buf, &hello).unwrap();
        write_frame(&mut buf, &Reply::Returned { id: 7 }).unwrap();
        let mut input = buf.as_slice();
        let back: Request = read_frame(&mut input).unwrap().unwrap();
        assert!(matches!(back, Request::Hello { ref version, .. } if version == VERSION));
        let back: Reply = read_frame(&mut input).unwrap().unwrap();
        assert!(matches!(back, Reply::Returned { id: 7 }));
        assert!(read_frame::<Reply>(&mut input).unwrap().is_none());

        let mut huge = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let e = read_frame::<Reply>(&mut huge.as_slice()).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
    }

    /// The worker's error, sent and read back as the supervisor reads it.
    fn across(e: &MigrateError) -> MigrateError {
        let mut buf = Vec::new();
        let reply = Reply::Staged {
            result: Err(WireError::from(e)),
        };
        write_frame(&mut buf, &reply).unwrap();
        match read_frame::<Reply>(&mut buf.as_slice()).unwrap().unwrap() {
            Reply::Staged { result: Err(w) } => w.into(),
            other => panic!("{other:?}"),
        }
    }

    /// What a caller sees of an error: its code, its text (next step included) and its file.
    fn seen(e: &MigrateError) -> (crate::error::ExitCode, String, Option<PathBuf>) {
        (
            e.exit_code(),
            e.to_string(),
            e.file().map(Path::to_path_buf),
        )
    }

    #[test]
    fn a_workers_error_comes_back_as_the_same_error_with_its_file() {
        let errors = [
            MigrateError::RecordRefused {
                file: "data/requests.jsonl".into(),
                place: "data/requests.jsonl:3".into(),
                message: "not valid JSON (hop reading)".into(),
                hint: "fix the record".into(),
            },
            MigrateError::invalid("config/server.toml", "refused", "fix it"),
            MigrateError::WrongVersion {
                file: "data/x.json".into(),
                place: "data/x.json (record 2)".into(),
                schema: 3,
                detected: "2.1.0".into(),
                from: "1.0.0".into(),
            },
            MigrateError::PluginFailed {
                plugin: "p".into(),
                hop: "1.0.0 → 2.0.0".into(),
                plugin_file: "/plugins/libp.so".into(),
                input: "data/requests.jsonl".into(),
                detail: "panicked".into(),
            },
            MigrateError::Transaction(migrate_transaction::Error::Invalid {
                path: "data/requests.jsonl".into(),
                message: "a link".into(),
                hint: "remove it".into(),
            }),
        ];
        for e in &errors {
            let back = across(e);
            assert_eq!(seen(&back), seen(e), "{e:?} came back as {back:?}");
            assert!(back.file().is_some(), "{back:?}");
        }
        // Typed causes come back as their own variant, not as text.
        assert!(matches!(
            across(&errors[0]),
            MigrateError::RecordRefused { .. }
        ));
        assert!(matches!(
            across(&errors[3]),
            MigrateError::PluginFailed { .. }
        ));
        // Those without a file come back the same too.
        let timeout = MigrateError::TimedOut {
            limit_secs: 5,
            during: "data".into(),
        };
        assert_eq!(seen(&across(&timeout)), seen(&timeout));
        assert!(matches!(across(&timeout), MigrateError::TimedOut { .. }));
        let io = MigrateError::io("cannot read x", std::io::Error::other("gone"));
        assert_eq!(seen(&across(&io)), seen(&io));
    }

    /// A 1.0 worker sent no cause: its error still reads, as text with its exit code.
    #[test]
    fn an_error_without_a_cause_still_reads() {
        let old = br#"{"type":"staged","result":{"Err":{"exit_code":6,"message":"boom"}}}"#;
        let mut frame = (old.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(old);
        let Some(Reply::Staged { result: Err(w) }) = read_frame(&mut frame.as_slice()).unwrap()
        else {
            panic!("not a staged error");
        };
        let e = MigrateError::from(w);
        assert_eq!(e.exit_code(), crate::error::ExitCode::Plugin);
        assert_eq!(e.to_string(), "boom");
        assert_eq!(e.file(), None);
    }

    #[test]
    fn only_the_same_major_of_the_same_protocol_is_compatible() {
        assert!(compatible(PROTOCOL, VERSION));
        assert!(compatible(PROTOCOL, "1.9.3"));
        assert!(!compatible(PROTOCOL, "2.0.0"));
        assert!(!compatible("another-protocol", VERSION));
    }
}

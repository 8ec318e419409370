//! The supervisor ↔ worker protocol: framed, versioned JSON messages over the worker's stdin
//! and stdout (the worker moves its own stdout aside first, so that a plugin's prints cannot
//! corrupt the stream). Each frame is a little-endian `u32` length and that many bytes of JSON;
//! a frame over [`MAX_FRAME`] is refused. Both sides open with [`Request::Hello`] /
//! [`Reply::Hello`], and a worker of another major protocol version is refused. There is no
//! per-record traffic: the worker runs the whole pipeline and writes staging files; it reports
//! progress, each step's figures, plugin calls (so a crash can be pinned on one) and a result.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use plugin_api::HopDescriptor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::isolation::Isolation;
use crate::observe::PluginCall;
use crate::plan::Plan;
use crate::report::StepResult;

/// Names the protocol in the handshake.
pub const PROTOCOL: &str = "trustformers-migrate-worker";
/// Semver of the protocol: a peer whose major differs is refused.
pub const VERSION: &str = "1.0.0";
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
    },
}

/// An error the worker met and reported, typed by the exit code it means.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub exit_code: i32,
    pub message: String,
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

    #[test]
    fn only_the_same_major_of_the_same_protocol_is_compatible() {
        assert!(compatible(PROTOCOL, VERSION));
        assert!(compatible(PROTOCOL, "1.9.3"));
        assert!(!compatible(PROTOCOL, "2.0.0"));
        assert!(!compatible("another-protocol", VERSION));
    }
}

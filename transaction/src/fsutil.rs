//! File-system steps every part of a transaction takes the same way: write-and-sync, make a
//! rename durable, list a staged tree, hash a stream on its way through, count it for a
//! progress bar.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{io, Result};

/// Makes a rename or unlink durable. Best effort: some filesystems refuse to sync a folder.
pub fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

/// Syncs every folder below `dir` (new entries are durable only once their folder is).
pub fn sync_tree(dir: &Path) {
    for entry in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if entry.file_type().is_dir() {
            if let Ok(d) = File::open(entry.path()) {
                let _ = d.sync_all();
            }
        }
    }
}

/// Every regular file below `dir`, relative with `/` separators, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| io(format!("cannot list {}", dir.display()))(e.into()))?;
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(out)
}

/// A reader or writer that hashes (sha256) and counts the bytes going through it, so that a
/// file streamed into or out of a backup is hashed on the way rather than read twice.
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes that went through so far.
    pub fn count(&self) -> u64 {
        self.bytes
    }

    /// Hex sha256 of the bytes that went through so far.
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    fn saw(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.saw(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.saw(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The bytes gone through so far, from the first file of a step on, and the last figure
/// `progress` was told: it is told again each time another MiB has gone through, whatever
/// the files' sizes (many small files add up too), and once at [`Tally::end`]. A bar fed
/// per file would stand still through a large one and flood through many small ones.
pub struct Tally<'a> {
    done: u64,
    told: u64,
    progress: &'a dyn Fn(u64),
}

impl<'a> Tally<'a> {
    pub fn new(progress: &'a dyn Fn(u64)) -> Self {
        Tally {
            done: 0,
            told: 0,
            progress,
        }
    }

    /// Counts `n` more bytes.
    pub fn add(&mut self, n: usize) {
        self.done += n as u64;
        if self.done - self.told >= 1 << 20 {
            self.told = self.done;
            (self.progress)(self.done);
        }
    }

    /// Tells 0, before the first byte: a step shown from here starts past the checks
    /// before it.
    pub fn begin(&self) {
        (self.progress)(0);
    }

    /// Tells the total so far, whatever was told last.
    pub fn end(&self) {
        (self.progress)(self.done);
    }
}

/// A reader whose bytes are counted in a [`Tally`] as they are read.
pub struct Told<'t, 'a, R> {
    pub inner: R,
    pub tally: &'t mut Tally<'a>,
}

impl<R: Read> Read for Told<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.add(n);
        Ok(n)
    }
}

/// Runs `consume` on a reader of `inner` that a thread of its own reads ahead, a few pieces
/// in front of the consumer. Reading a backup back is two costly steps in a row, zstd
/// decompression and the sha256 of what comes out, about equal in time: this puts them on two
/// cores. The producer stops when `inner` ends or fails (the consumer gets the error at that
/// point of the stream) or when `consume` returns, whatever it read.
pub fn read_ahead<R: Read + Send, T>(inner: R, consume: impl FnOnce(&mut dyn Read) -> T) -> T {
    /// Piece size and how many may wait: at most about 2 MiB ahead of the consumer.
    const PIECE: usize = 256 << 10;
    const DEPTH: usize = 8;
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    // Pieces the consumer is done with come back to be filled again: a fresh zeroed piece
    // each time was 1 % of a whole migration's CPU, faulting pages in only to overwrite them.
    // (A piece taken back is still zeroed before it is read into, as `read` needs initialized
    // bytes, but in memory already mapped.)
    let spare = Spare::new(DEPTH + 2);
    std::thread::scope(|scope| {
        let spare = &spare;
        scope.spawn(move || {
            let mut inner = inner;
            loop {
                let mut piece = spare.take(PIECE);
                piece.resize(PIECE, 0);
                let mut filled = 0;
                let end = loop {
                    match inner.read(&mut piece[filled..]) {
                        Ok(0) => break Ok(true),
                        Ok(n) => {
                            filled += n;
                            if filled == PIECE {
                                break Ok(false);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                piece.truncate(filled);
                if filled > 0 && tx.send(Ok(piece)).is_err() {
                    return;
                }
                match end {
                    Ok(false) => {}
                    Ok(true) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        let mut reader = Ahead::new(rx, spare);
        // `reader` (and with it the channel) is dropped on return: a producer still running
        // sees its next send fail and stops.
        consume(&mut reader)
    })
}

/// The consumer's side of [`read_ahead`], or of any producer that sends pieces taken from
/// `spare` down a channel: their bytes in order, a piece's error where it was sent, and the
/// end of the stream once every sender is dropped. Dropping it makes the next send fail, which
/// tells the producer to stop.
pub(crate) struct Ahead<'a> {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Where read pieces go back to the producer.
    spare: &'a Spare,
    piece: Vec<u8>,
    at: usize,
}

impl<'a> Ahead<'a> {
    pub(crate) fn new(
        rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
        spare: &'a Spare,
    ) -> Self {
        Ahead {
            rx,
            spare,
            piece: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Ahead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(Ok(piece)) => {
                    let done = std::mem::replace(&mut self.piece, piece);
                    if done.capacity() > 0 {
                        self.spare.give(done);
                    }
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The producer is done: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Buffers handed back once used, for the next piece of work. A fresh buffer of a megabyte or
/// so per piece was page-faulted in every time (and zeroed, where it had to be), only to be
/// overwritten: several per cent of a data step's or a read-back's CPU. Any thread may take
/// or give; at most `keep` are kept, so memory stays bounded whatever the threads' pace.
pub struct Spare {
    kept: std::sync::Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl Spare {
    pub fn new(keep: usize) -> Spare {
        Spare {
            kept: std::sync::Mutex::new(Vec::new()),
            keep,
        }
    }

    /// An empty buffer with room for `room` bytes: one given back, or a new one.
    pub fn take(&self, room: usize) -> Vec<u8> {
        let mut buffer = self
            .kept
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default();
        buffer.clear();
        buffer.reserve(room);
        buffer
    }

    /// Keeps `buffer` for a later [`Spare::take`], unless `keep` are kept already.
    pub fn give(&self, buffer: Vec<u8>) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() < self.keep {
                kept.push(buffer);
            }
        }
    }
}

/// Makes every file this process creates from now on private (umask 077): for the plugin
/// worker, whose plugin code creates staged model files by path with whatever mode it likes.
/// Until the journal gives each its final mode, none is more readable than its owner.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per call, then, if `fail_at` is set,
    /// fails once that many bytes are out.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        fail_at: Option<usize>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.fail_at == Some(self.at) {
                return Err(io::Error::other("disk said no"));
            }
            let limit = self.fail_at.unwrap_or(self.data.len()).min(self.data.len());
            let n = buf.len().min(self.step).min(limit - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// A buffer given back is the one taken next, emptied, with the room asked for; no more
    /// than `keep` are kept, however many come back.
    #[test]
    fn spare_buffers_are_reused_emptied_and_bounded() {
        let spare = Spare::new(4);
        let mut first = spare.take(1000);
        assert!(first.is_empty() && first.capacity() >= 1000);
        first.extend_from_slice(b"records");
        let at = first.as_ptr();
        spare.give(first);
        let again = spare.take(10);
        assert_eq!(again.as_ptr(), at, "the buffer given back was reused");
        assert!(again.is_empty(), "a reused buffer starts empty");
        assert!(spare.take(1 << 20).capacity() >= 1 << 20);
        for _ in 0..12 {
            spare.give(Vec::with_capacity(64));
        }
        assert_eq!(spare.kept.lock().unwrap().len(), 4);
    }

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn read_ahead_passes_every_byte_in_order() {
        let piece = 256 << 10;
        for len in [0, 1, piece - 1, piece, piece + 1, 3 * piece + 5] {
            for step in [1 << 20, 4096, 1000] {
                let data = bytes(len);
                let inner = Trickle {
                    data: data.clone(),
                    at: 0,
                    step,
                    fail_at: None,
                };
                let got = read_ahead(inner, |r| {
                    let mut out = Vec::new();
                    r.read_to_end(&mut out).map(|_| out)
                })
                .unwrap();
                assert!(got == data, "len {len}, step {step}");
            }
        }
    }

    #[test]
    fn read_ahead_gives_the_error_after_the_bytes_before_it() {
        let data = bytes(600_000);
        let inner = Trickle {
            data: data.clone(),
            at: 0,
            step: 7000,
            fail_at: Some(300_000),
        };
        let (got, err) = read_ahead(inner, |r| {
            let mut out = Vec::new();
            let mut buf = [0u8; 5000];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return (out, None),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => return (out, Some(e.to_string())),
                }
            }
        });
        assert_eq!(err.as_deref(), Some("disk said no"));
        assert!(
            got == data[..300_000],
            "{} bytes before the error",
            got.len()
        );
    }

    #[test]
    fn read_ahead_stops_its_reader_when_the_consumer_is_done() {
        // An endless reader: the call can only return if the producer stops once the
        // consumer has returned.
        let got = read_ahead(io::repeat(9), |r| {
            let mut buf = [0u8; 10];
            r.read_exact(&mut buf).map(|()| buf)
        })
        .unwrap();
        assert_eq!(got, [9; 10]);
    }
}

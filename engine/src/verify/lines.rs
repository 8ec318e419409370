//! Checking a `*.jsonl` file: every record must be a JSON object with the expected
//! `schema_version`. This runs over every migrated record after the swap, and before it over
//! every staged one, so it is built for throughput: the file is read in large chunks (cut at
//! line ends) that worker threads check in parallel, and a record is read the way the hops
//! read it (plugin-api's scanner), so that a record passes or fails, and its problem is
//! worded, exactly as in a hop.
//!
//! Memory is bounded by construction, whatever the file's size: chunk buffers go back to the
//! reader once checked and are read into again, so no more exist than the queue, the checkers
//! and the reader hold at once (a buffer only grows for a line longer than a chunk).

use std::fs::File;
use std::io::Read;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use migrate_transaction::fsutil::{Hashing, Spare};

/// A chunk handed to a checker: whole lines, and its place in the file (0, 1, …). Its first
/// line's number is known once every chunk before it is counted: the checkers count lines as
/// they split them, so that no one reads the chunk only to count them.
struct Chunk {
    seq: usize,
    bytes: Vec<u8>,
}

/// A checker's findings: its problems (by chunk and line within it) and the newlines of each
/// chunk it checked.
#[derive(Default)]
struct Part {
    records: u64,
    problems: Vec<(usize, u64, &'static str, String)>,
    newlines: Vec<(usize, u64)>,
}

/// A record's problem: its line, the validation rule, the message.
pub(super) type Problem = (u64, &'static str, String);

/// What checking a file found: records checked, lines read (blank ones and a last line without
/// its newline included, the count the pre-swap check compares with the source's), every
/// problem in line order, and the bytes read and their sha256 when asked for.
#[derive(Debug, Default)]
pub(super) struct Checked {
    pub records: u64,
    pub lines: u64,
    pub problems: Vec<Problem>,
    pub sha256: Option<(u64, String)>,
}

/// Checks `file` (opened by the caller, confined); `schema` as in [`super::schema_problem`].
/// `chunk_bytes` is the read size (a parameter so that tests can cut small files into many
/// chunks). With `hash`, the reader also hashes what it reads, in order, as it hands the
/// chunks out. `progress` is told the bytes read so far as each chunk is handed out (the
/// checkers are at most the queue's few chunks behind).
pub(super) fn check_file(
    mut file: &File,
    schema: Option<Option<u64>>,
    chunk_bytes: usize,
    hash: bool,
    progress: &dyn Fn(u64),
) -> std::io::Result<Checked> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let (tx, rx) = mpsc::sync_channel::<Chunk>(threads * 2);
    // As many buffers as the queue, the checkers and the reader hold at once.
    let spare = Spare::new(3 * threads + 1);
    // Only the checkers hold the queue's receiving end: should they all stop (a panic), the
    // reader's next send fails instead of waiting forever on a full queue.
    let rx = Arc::new(Mutex::new(rx));
    std::thread::scope(|scope| {
        let checkers: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, spare) = (Arc::clone(&rx), &spare);
                scope.spawn(move || check_chunks(&rx, spare, schema))
            })
            .collect();
        drop(rx);
        let mut handed = 0;
        let send = |chunk: Chunk| {
            handed += chunk.bytes.len() as u64;
            progress(handed);
            tx.send(chunk).is_ok()
        };
        let mut hashing = hash.then(|| Hashing::new(file));
        let read = match &mut hashing {
            Some(hashing) => read_chunks(hashing, chunk_bytes, &spare, send),
            None => read_chunks(&mut file, chunk_bytes, &spare, send),
        };
        drop(tx);
        let mut all = Checked::default();
        let mut newlines = Vec::new();
        let mut problems = Vec::new();
        for checker in checkers {
            // A checker only panics on a bug; report it as an I/O-level failure of the check.
            let part = checker
                .join()
                .map_err(|_| std::io::Error::other("a record checker thread panicked"))?;
            all.records += part.records;
            problems.extend(part.problems);
            newlines.extend(part.newlines);
        }
        let last = read?;
        all.sha256 = hashing.map(|h| (h.count(), h.hex()));
        // Each chunk's first line number, from the newlines of the chunks before it.
        newlines.sort_unstable();
        let mut first_line = vec![1u64; newlines.len() + 1];
        for (seq, n) in newlines {
            if seq + 1 < first_line.len() {
                first_line[seq + 1] = first_line[seq] + n;
            }
        }
        let total = *first_line.last().unwrap_or(&1) - 1;
        // A last line without its newline counts as a line.
        all.lines = total + u64::from(last.is_some_and(|b| b != b'\n'));
        all.problems = problems
            .into_iter()
            .map(|(seq, i, rule, message)| (first_line[seq] + i, rule, message))
            .collect();
        all.problems.sort_by_key(|p| p.0);
        Ok(all)
    })
}

/// Reads `file` in chunks of about `chunk_bytes`, each ending at a line end (or the end of the
/// file), and hands them to `send` until it returns false; returns the file's last byte.
/// Buffers come back through `spare` once checked.
fn read_chunks(
    file: &mut impl Read,
    chunk_bytes: usize,
    spare: &Spare,
    mut send: impl FnMut(Chunk) -> bool,
) -> std::io::Result<Option<u8>> {
    let chunk_bytes = chunk_bytes.max(1);
    let mut carry = Vec::new();
    let mut seq = 0;
    let mut last = None;
    loop {
        let mut bytes = spare.take(chunk_bytes + (chunk_bytes >> 4));
        bytes.extend_from_slice(&carry);
        carry.clear();
        // Read until the buffer holds a line end or the file ends. A line longer than a chunk
        // grows this one buffer (each read searched for a line end in its own bytes only), so
        // the work stays in line with the line's length.
        let at_end = loop {
            let before = bytes.len();
            // Room for the whole read up front: `read_to_end` then does not grow the buffer
            // (`reserve` may, for a long carried line, and the buffer keeps that room).
            bytes.reserve(chunk_bytes);
            let n = (&mut *file)
                .take(chunk_bytes as u64)
                .read_to_end(&mut bytes)?;
            if n == 0 {
                break true;
            }
            last = bytes.last().copied();
            // Keep the unfinished last line for the next chunk.
            if let Some(end) = memchr::memrchr(b'\n', &bytes[before..]) {
                carry.extend_from_slice(&bytes[before + end + 1..]);
                bytes.truncate(before + end + 1);
                break false;
            }
        };
        if bytes.is_empty() {
            return Ok(last);
        }
        if !send(Chunk { seq, bytes }) || at_end {
            return Ok(last);
        }
        seq += 1;
    }
}

/// A checker thread: checks chunks until the reader is done, handing each buffer back.
fn check_chunks(rx: &Mutex<Receiver<Chunk>>, spare: &Spare, schema: Option<Option<u64>>) -> Part {
    let mut checked = Part::default();
    // Kept across chunks: a log's records share a few skeletons, learned once per thread.
    let mut checker = plugin_api::view::RecordChecker::default();
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return checked,
        };
        let Ok(chunk) = next else {
            return checked;
        };
        // One UTF-8 check for the chunk; only a chunk with a bad byte is checked line by line
        // (which names the line).
        // The pieces of a split are its newlines plus one.
        // `simdutf8` accepts exactly what `str::from_utf8` accepts, several times faster.
        let pieces = match simdutf8::basic::from_utf8(&chunk.bytes) {
            Ok(text) => check_lines(split_text(text), &chunk, schema, &mut checked, |l| {
                checker.check(l)
            }),
            Err(_) => check_lines(
                chunk.bytes.split(|b| *b == b'\n'),
                &chunk,
                schema,
                &mut checked,
                plugin_api::view::check_record,
            ),
        };
        checked.newlines.push((chunk.seq, pieces - 1));
        spare.give(chunk.bytes);
    }
}

/// The lines of `text`, split as `str::split('\n')` splits, with the vectorised `memchr`
/// (`str::split` searched byte-wise: a tenth of the check's time).
fn split_text(text: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', text.as_bytes())
        .chain(std::iter::once(text.len()))
        .map(move |end| {
            // Cut at a newline, an ASCII byte: both ends are character boundaries.
            let line = &text[start..end];
            start = end + 1;
            line
        })
}

/// Checks each line of a chunk that is not blank.
fn check_lines<L: AsRef<[u8]> + Copy>(
    lines: impl Iterator<Item = L>,
    chunk: &Chunk,
    schema: Option<Option<u64>>,
    checked: &mut Part,
    mut read: impl FnMut(L) -> Result<Option<u64>, plugin_api::RuleError>,
) -> u64 {
    let mut pieces = 0;
    // The empty piece after a chunk's last newline is blank, like a blank line: skipped.
    for (i, line) in lines.enumerate() {
        pieces += 1;
        if line.as_ref().iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        checked.records += 1;
        let problem = match read(line) {
            Err(e) => Some(("record_json", e.message)),
            Ok(found) => super::schema_problem(found, schema).map(|m| ("record_schema_version", m)),
        };
        if let Some((rule, message)) = problem {
            checked.problems.push((chunk.seq, i as u64, rule, message));
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The problems the old one-record-at-a-time check found, as the oracle.
    fn sequential(text: &[u8], schema: Option<Option<u64>>) -> Checked {
        let mut checked = Checked::default();
        let body = text.strip_suffix(b"\n").unwrap_or(text);
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            if text.is_empty() || line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            checked.records += 1;
            let problem = match plugin_api::raw::RawRecord::parse(line) {
                Err(e) => Some(("record_json", e.message)),
                Ok(r) => {
                    super::super::schema_problem(r.u64("schema_version").ok().flatten(), schema)
                        .map(|m| ("record_schema_version", m))
                }
            };
            if let Some((rule, message)) = problem {
                checked.problems.push((i as u64 + 1, rule, message));
            }
        }
        checked
    }

    fn file_with(text: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text).unwrap();
        f
    }

    #[test]
    fn chunked_parallel_check_finds_what_the_sequential_check_finds() {
        let mut text = Vec::new();
        for i in 0..3000u64 {
            let line: Vec<u8> = match i % 97 {
                5 => b"{\"a\":1,\"schema_version\":2".to_vec(),
                11 => b"[1,2]".to_vec(),
                17 => b"   ".to_vec(),
                23 => b"{\"schema_version\":\"3\"}".to_vec(),
                29 => b"{\"k\":\"\xff\",\"schema_version\":3}".to_vec(),
                31 => b"{\"schema_version\":2,\"schema_version\":3}".to_vec(),
                37 => b"{\"schema\\u005fversion\":3,\"x\":[{\"y\":null}]}".to_vec(),
                41 => b"{\"x\":01,\"schema_version\":3}".to_vec(),
                43 => b"{\"schema_version\":3,\"schema_version\":2}".to_vec(),
                47 => b"".to_vec(),
                53 => b"{\"x\":\"tab\there\",\"schema_version\":3}".to_vec(),
                _ => format!(
                    "{{\"id\":{i},\"nested\":{{\"schema_version\":9}},\"schema_version\":3}}"
                )
                .into_bytes(),
            };
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        text.extend_from_slice(b"{\"last\":true}"); // no final newline
        let f = file_with(&text);
        for schema in [Some(Some(3)), Some(None), None] {
            let want = sequential(&text, schema);
            assert!(want.problems.len() > 100, "{}", want.problems.len());
            for chunk in [1, 7, 100, 4096, 1 << 20] {
                let got = check_file(
                    &File::open(f.path()).unwrap(),
                    schema,
                    chunk,
                    false,
                    &|_| {},
                )
                .unwrap();
                assert_eq!(got.records, want.records, "chunk {chunk}");
                // 3000 lines ending in a newline, and one that does not.
                assert_eq!(got.lines, 3001, "chunk {chunk}");
                assert_eq!(got.problems, want.problems, "chunk {chunk}");
            }
        }
    }

    /// Progress grows chunk by chunk to the file's size, whatever the chunk size.
    #[test]
    fn progress_ends_at_the_files_size() {
        let text: String = (0..500)
            .map(|i| format!("{{\"id\":{i},\"schema_version\":3}}\n"))
            .collect();
        let f = file_with(text.as_bytes());
        for chunk in [1, 100, 4096, 1 << 20] {
            let told = std::cell::RefCell::new(Vec::new());
            let file = File::open(f.path()).unwrap();
            check_file(&file, Some(Some(3)), chunk, false, &|n| {
                told.borrow_mut().push(n)
            })
            .unwrap();
            let told = told.into_inner();
            assert!(
                told.windows(2).all(|w| w[0] < w[1]),
                "chunk {chunk}: {told:?}"
            );
            assert_eq!(told.last(), Some(&(text.len() as u64)), "chunk {chunk}");
            // A report per chunk, and a chunk ends at a line end: about one per chunk's worth
            // of bytes, at most one per line.
            let chunks = (text.len() / chunk).min(500);
            assert!(told.len() >= chunks / 2, "chunk {chunk}: {told:?}");
        }
    }

    #[test]
    fn lines_are_split_as_str_split_splits_them() {
        for text in ["", "\n", "a", "a\n", "\na", "a\nb", "a\n\nb\n", "é\nü\n\n"] {
            let want: Vec<&str> = text.split('\n').collect();
            assert_eq!(split_text(text).collect::<Vec<_>>(), want, "{text:?}");
        }
    }

    #[test]
    fn empty_and_blank_files_have_no_records() {
        for (text, lines) in [(&b""[..], 0), (b"\n", 1), (b"\n\n  \n", 3), (b"\n ", 2)] {
            let got = check_file(
                &File::open(file_with(text).path()).unwrap(),
                Some(Some(3)),
                2,
                false,
                &|_| {},
            )
            .unwrap();
            assert_eq!((got.records, got.problems.len()), (0, 0));
            assert_eq!(got.lines, lines, "{text:?}");
        }
    }
}

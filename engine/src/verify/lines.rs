//! Checking a `*.jsonl` file: every record must be a JSON object with the expected
//! `schema_version`. This runs over every migrated record after the swap, so it is built for
//! throughput: the file is read in large chunks (cut at line ends) that worker threads check in
//! parallel, and a record is read the way the hops read it (plugin-api's scanner), so that a
//! record passes or fails, and its problem is worded, exactly as in a hop.

use std::fs::File;
use std::io::Read;
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;

/// A chunk handed to a checker: whole lines, and the 1-based number of its first line.
struct Chunk {
    first_line: u64,
    bytes: Vec<u8>,
}

/// A record's problem: its line, the validation rule, the message.
pub(super) type Problem = (u64, &'static str, String);

/// What checking a file found: records checked, and every problem in line order.
#[derive(Debug, Default)]
pub(super) struct Checked {
    pub records: u64,
    pub problems: Vec<Problem>,
}

/// Checks `file` (opened by the caller, confined); `schema` as in [`super::schema_problem`].
/// `chunk_bytes` is the read size (a parameter so that tests can cut small files into many
/// chunks).
pub(super) fn check_file(
    mut file: File,
    schema: Option<Option<u64>>,
    chunk_bytes: usize,
) -> std::io::Result<Checked> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let (tx, rx) = mpsc::sync_channel::<Chunk>(threads * 2);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        let checkers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| check_chunks(&rx, schema)))
            .collect();
        let read = read_chunks(&mut file, chunk_bytes, |chunk| tx.send(chunk).is_ok());
        drop(tx);
        let mut all = Checked::default();
        for checker in checkers {
            // A checker only panics on a bug; report it as an I/O-level failure of the check.
            let part = checker
                .join()
                .map_err(|_| std::io::Error::other("a record checker thread panicked"))?;
            all.records += part.records;
            all.problems.extend(part.problems);
        }
        read?;
        all.problems.sort_by_key(|p| p.0);
        Ok(all)
    })
}

/// Reads `file` in chunks of about `chunk_bytes`, each ending at a line end (or the end of the
/// file), and hands them to `send` until it returns false.
fn read_chunks(
    file: &mut File,
    chunk_bytes: usize,
    mut send: impl FnMut(Chunk) -> bool,
) -> std::io::Result<()> {
    let mut carry = Vec::new();
    let mut next_line = 1u64;
    loop {
        let mut bytes = std::mem::take(&mut carry);
        let n = (&mut *file)
            .take(chunk_bytes.max(1) as u64)
            .read_to_end(&mut bytes)?;
        if n > 0 {
            // Keep the unfinished last line for the next chunk.
            if let Some(end) = memchr::memrchr(b'\n', &bytes) {
                carry = bytes.split_off(end + 1);
            } else {
                carry = bytes;
                continue;
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let lines = memchr::memchr_iter(b'\n', &bytes).count() as u64;
        let first_line = next_line;
        next_line += lines.max(1);
        if !send(Chunk { first_line, bytes }) || n == 0 {
            return Ok(());
        }
    }
}

/// A checker thread: checks chunks until the reader is done.
fn check_chunks(rx: &Mutex<Receiver<Chunk>>, schema: Option<Option<u64>>) -> Checked {
    let mut checked = Checked::default();
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return checked,
        };
        let Ok(chunk) = next else {
            return checked;
        };
        for (i, line) in plugin_api::rules::split_records(&chunk.bytes).enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            checked.records += 1;
            if let Some((rule, message)) = check_record(line, schema) {
                checked
                    .problems
                    .push((chunk.first_line + i as u64, rule, message));
            }
        }
    }
}

/// The problem with one record, if any. The record is read by plugin-api's scanner, as the
/// data path reads it (`plugin_api::view::check_record`): the whole record is validated
/// without building a tree or allocating, and a record it refuses gets the message the hops
/// give.
fn check_record(line: &[u8], schema: Option<Option<u64>>) -> Option<(&'static str, String)> {
    let found = match plugin_api::view::check_record(line) {
        Err(e) => return Some(("record_json", e.message)),
        Ok(found) => found,
    };
    super::schema_problem(found, schema).map(|m| ("record_schema_version", m))
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
                let got = check_file(File::open(f.path()).unwrap(), schema, chunk).unwrap();
                assert_eq!(got.records, want.records, "chunk {chunk}");
                assert_eq!(got.problems, want.problems, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn empty_and_blank_files_have_no_records() {
        for text in [&b""[..], b"\n", b"\n\n  \n"] {
            let got = check_file(
                File::open(file_with(text).path()).unwrap(),
                Some(Some(3)),
                2,
            )
            .unwrap();
            assert_eq!((got.records, got.problems.len()), (0, 0));
        }
    }
}

//! `*.json` data documents (spec §3): one record, or an array whose elements are records.
//!
//! An array is read and written one element at a time, so memory follows the largest record,
//! not the file. Reading takes two passes: [`check`] proves the whole file is one well-formed
//! JSON document (a broken document is refused whole, before any record moves), then
//! [`Records`] cuts it into records without parsing them — the hops do that, strictly.
//! [`Writer`] puts migrated records back in the original's style, byte for byte as
//! `serde_json` prints the whole document.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::de::{Deserialize, IgnoredAny};
use serde_json::Value;

/// How the original document was laid out; the migrated one is laid out the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// The document spans several lines (it is printed pretty), not counting blank lines
    /// around it.
    pub multiline: bool,
    /// The file ends with a newline.
    pub trailing_newline: bool,
}

/// Checks that `reader` holds exactly one well-formed JSON document, keeping nothing of it,
/// and notes its [`Style`]. A syntax error carries its line (`serde_json::Error::line`).
pub fn check(reader: impl Read) -> Result<Style, serde_json::Error> {
    // serde_json reads a byte at a time: from a buffer, not from the file.
    let mut input = BufReader::with_capacity(1 << 20, StyleWatch::new(reader));
    let mut de = serde_json::Deserializer::from_reader(&mut input);
    IgnoredAny::deserialize(&mut de)?;
    de.end()?;
    Ok(input.get_ref().style())
}

/// A reader that notes the [`Style`] of what passes through it.
struct StyleWatch<R> {
    inner: R,
    seen_content: bool,
    newline_after_content: bool,
    multiline: bool,
    last: Option<u8>,
}

impl<R: Read> StyleWatch<R> {
    fn new(inner: R) -> Self {
        StyleWatch {
            inner,
            seen_content: false,
            newline_after_content: false,
            multiline: false,
            last: None,
        }
    }

    fn style(&self) -> Style {
        Style {
            multiline: self.multiline,
            trailing_newline: self.last == Some(b'\n'),
        }
    }
}

impl<R: Read> Read for StyleWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            match b {
                b'\n' if self.seen_content => self.newline_after_content = true,
                b if is_space(b) => {}
                _ => {
                    self.multiline |= self.newline_after_content;
                    self.seen_content = true;
                }
            }
        }
        if n > 0 {
            self.last = Some(buf[n - 1]);
        }
        Ok(n)
    }
}

/// Whether a document is an array of records or a single record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Array,
    /// The whole document is one record (an object, or a value the hops will refuse).
    Single,
}

/// The records of a document that [`check`] accepted, one at a time, each as compact
/// one-line JSON: the whitespace between tokens is dropped, nothing else changes. Input that
/// is not well-formed after all (the file changed in between) never panics: it yields
/// records that the hops then refuse.
pub struct Records<R> {
    input: BufReader<R>,
    shape: Shape,
    done: bool,
    consumed: u64,
}

impl<R: Read> Records<R> {
    pub fn new(reader: R) -> io::Result<Self> {
        let mut input = BufReader::with_capacity(1 << 20, reader);
        let mut consumed = skip_whitespace(&mut input)?;
        let shape = match input.fill_buf()?.first() {
            Some(b'[') => {
                input.consume(1);
                consumed += 1;
                Shape::Array
            }
            _ => Shape::Single,
        };
        Ok(Records {
            input,
            shape,
            done: false,
            consumed,
        })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Bytes of the document read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Appends the next record to `out`; false at the end of the document.
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        self.consumed += skip_whitespace(&mut self.input)?;
        let first = self.input.fill_buf()?.first().copied();
        match (self.shape, first) {
            (_, None) => {
                self.done = true;
                return Ok(false);
            }
            (Shape::Array, Some(b']')) => {
                self.input.consume(1);
                self.consumed += 1;
                self.end()?;
                return Ok(false);
            }
            (Shape::Single, _) => self.done = true,
            (Shape::Array, _) => {}
        }
        let mut cut = Cutter::default();
        loop {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                self.done = true;
                return Ok(true);
            }
            let (used, end) = cut.copy(buf, out, self.shape);
            self.input.consume(used);
            self.consumed += used as u64;
            if end == Some(End::Array) {
                self.end()?;
            }
            if end.is_some() {
                return Ok(true);
            }
        }
    }

    /// After the array's `]`: the blank space after it is the document's too.
    fn end(&mut self) -> io::Result<()> {
        self.done = true;
        self.consumed += skip_whitespace(&mut self.input)?;
        Ok(())
    }
}

/// JSON's whitespace (not `u8::is_ascii_whitespace`, which also takes form feed).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Skips JSON whitespace; returns how many bytes.
fn skip_whitespace(input: &mut impl BufRead) -> io::Result<u64> {
    let mut skipped = 0;
    loop {
        let buf = input.fill_buf()?;
        let n = buf.iter().position(|&b| !is_space(b)).unwrap_or(buf.len());
        if n == 0 {
            return Ok(skipped);
        }
        input.consume(n);
        skipped += n as u64;
    }
}

/// What ended a record inside an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A `,`: another record follows.
    Comma,
    /// The array's `]`.
    Array,
}

/// Where a record being copied stands, across buffer refills.
#[derive(Default)]
struct Cutter {
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl Cutter {
    /// Copies the record's bytes from `buf` into `out`, without whitespace between tokens.
    /// Returns the bytes used and, if the record ended in `buf`, how (its `,` or `]` is used
    /// but not copied). A single record ends only with its input.
    fn copy(&mut self, buf: &[u8], out: &mut Vec<u8>, shape: Shape) -> (usize, Option<End>) {
        for (i, &b) in buf.iter().enumerate() {
            if self.in_string {
                out.push(b);
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b if is_space(b) => {}
                b'"' => {
                    self.in_string = true;
                    out.push(b);
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    out.push(b);
                }
                b',' if self.depth == 0 && shape == Shape::Array => {
                    return (i + 1, Some(End::Comma))
                }
                b']' if self.depth == 0 && shape == Shape::Array => {
                    return (i + 1, Some(End::Array))
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    out.push(b);
                }
                _ => out.push(b),
            }
        }
        (buf.len(), None)
    }
}

/// Writes migrated records back as a document of the original's shape and style: what
/// `serde_json::to_vec` (or `to_vec_pretty`, for a multi-line original) prints for the whole
/// document, with the original's trailing newline.
pub struct Writer {
    shape: Shape,
    style: Style,
    records: u64,
}

impl Writer {
    pub fn new(shape: Shape, style: Style) -> Self {
        Writer {
            shape,
            style,
            records: 0,
        }
    }

    /// Writes one migrated record (one line of JSON, as a hop returned it).
    pub fn record(&mut self, line: &[u8], out: &mut impl Write) -> Result<(), WriteError> {
        let value: Value = serde_json::from_slice(line).map_err(WriteError::Invalid)?;
        let text = if self.style.multiline {
            serde_json::to_vec_pretty(&value)
        } else {
            serde_json::to_vec(&value)
        }
        .map_err(WriteError::Invalid)?;
        if self.shape == Shape::Array {
            let separator: &[u8] = match (self.records, self.style.multiline) {
                (0, false) => b"[",
                (0, true) => b"[\n  ",
                (_, false) => b",",
                (_, true) => b",\n  ",
            };
            out.write_all(separator)?;
        }
        self.records += 1;
        if self.shape == Shape::Array && self.style.multiline {
            // One level deeper than printed alone. A JSON string never holds a raw newline, so
            // every newline here is layout.
            for (i, line) in text.split(|b| *b == b'\n').enumerate() {
                if i > 0 {
                    out.write_all(b"\n  ")?;
                }
                out.write_all(line)?;
            }
        } else {
            out.write_all(&text)?;
        }
        Ok(())
    }

    /// Ends the document.
    pub fn finish(self, out: &mut impl Write) -> io::Result<()> {
        if self.shape == Shape::Array {
            let end: &[u8] = match (self.records, self.style.multiline) {
                (0, _) => b"[]",
                (_, false) => b"]",
                (_, true) => b"\n]",
            };
            out.write_all(end)?;
        }
        if self.style.trailing_newline {
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// Why a migrated record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("a plugin returned invalid JSON ({0})")]
    Invalid(serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[cfg(test)]
mod tests;

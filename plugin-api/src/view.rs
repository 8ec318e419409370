//! The data-rule interface of plugin-api 1.5.0: **the host parses a record once, hops return
//! edits**. Since 1.5.0.
//!
//! With [`DataMigrationRule`](crate::DataMigrationRule) every hop received records as text,
//! parsed and validated them again, and printed them again for the next hop: on a three-hop
//! migration most of the time went into that per-record machinery, not into the hops' logic.
//! A [`DataEditRule`](crate::DataEditRule) instead receives a read-only [`RecordView`] — the
//! record's top-level entries as spans of text the host has validated — and answers with
//! [`Edits`]: set, replace, remove or insert a key, or replace a span inside a value (a
//! timestamp at depth, an API key's member). The host checks each edit, applies every hop's
//! edits to its index of the record, and writes each record once, copying every byte no hop
//! touched as it was written.
//!
//! The rest of this module is the machinery both sides share, hidden from authors: the batch
//! index ([`ViewBatch`]), the wire format of views and edits, and the application of edits.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::{Map, Value};

use crate::error::{FieldError, RuleError};
use crate::json::{walk_objects_under, ObjectVisitor};
use crate::raw::scan;
use crate::raw::{key_bit, needs_escape, RawRecord};

/// A byte range of a batch's text, as two `u32`s: the index stays small (a batch is a few MiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[doc(hidden)]
pub struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn new(range: Range<usize>) -> Span {
        Span {
            start: range.start as u32,
            len: (range.end - range.start) as u32,
        }
    }

    fn range(self) -> Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

/// One top-level entry: its key (unescaped text) and its value (JSON text), both spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[doc(hidden)]
pub struct Entry {
    key: Span,
    value: Span,
}

/// A record as a [`DataEditRule`](crate::DataEditRule) sees it: its top-level entries in order,
/// each value the JSON text the host validated (as it was written, or as an earlier hop set it).
/// Read-only: changes go into [`Edits`].
#[derive(Clone, Copy)]
pub struct RecordView<'a> {
    text: &'a str,
    entries: &'a [Entry],
}

impl<'a> RecordView<'a> {
    fn entry(&self, e: &Entry) -> (&'a str, &'a str) {
        (&self.text[e.key.range()], &self.text[e.value.range()])
    }

    fn find(&self, key: &str) -> Option<&'a str> {
        let text = self.text;
        self.entries
            .iter()
            .find(|e| e.key.len as usize == key.len() && &text[e.key.range()] == key)
            .map(|e| &text[e.value.range()])
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.entries.iter().map(|e| self.entry(e).0)
    }

    /// The entries (key, JSON text of the value), in order.
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.entries.iter().map(|e| self.entry(e))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// The JSON text of `key`'s value, as written (no whitespace around it).
    pub fn raw(&self, key: &str) -> Option<&'a str> {
        self.find(key)
    }

    /// The value of `key`, parsed.
    pub fn get(&self, key: &str) -> Result<Option<Value>, FieldError> {
        match self.find(key) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| FieldError::new(key, format!("unreadable value ({e})"))),
        }
    }

    /// A non-negative integer field, if present; refused, naming `key`, if it is anything else.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, FieldError> {
        match self.find(key).map(str::parse::<u64>) {
            None => Ok(None),
            Some(Ok(n)) => Ok(Some(n)),
            Some(Err(_)) => self.typed(key, Value::as_u64, "a non-negative integer"),
        }
    }

    /// A non-negative number field, if present, read as serde_json reads it (what a rule
    /// written against `Map` sees).
    pub fn f64(&self, key: &str) -> Result<Option<f64>, FieldError> {
        let Some(raw) = self.find(key) else {
            return Ok(None);
        };
        if let Ok(n) = raw.parse::<u64>() {
            return Ok(Some(n as f64));
        }
        match serde_json::from_str::<f64>(raw) {
            Ok(n) if n >= 0.0 && n.is_finite() => Ok(Some(n)),
            _ => self.typed(
                key,
                |v| v.as_f64().filter(|n| *n >= 0.0),
                "a non-negative number",
            ),
        }
    }

    /// A string field, if present, unescaped.
    pub fn str(&self, key: &str) -> Result<Option<Cow<'a, str>>, FieldError> {
        match self.find(key) {
            None => Ok(None),
            Some(raw) => match plain_string(raw) {
                Some(s) => Ok(Some(Cow::Borrowed(s))),
                None => self
                    .typed(key, |v| v.as_str().map(str::to_owned), "a string")
                    .map(|s| s.map(Cow::Owned)),
            },
        }
    }

    fn typed<T>(
        &self,
        key: &str,
        read: impl Fn(&Value) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, FieldError> {
        crate::json::typed(key, self.get(key)?, read, expected)
    }

    /// Checks `schema_version` like [`crate::json::expect_schema_version`] (same errors).
    pub fn expect_schema_version(&self, expected: Option<u64>) -> Result<(), FieldError> {
        let found = self.find("schema_version");
        match (expected, found) {
            (None, None) => return Ok(()),
            (Some(want), Some(t)) if t.parse::<u64>().ok() == Some(want) => return Ok(()),
            _ => {}
        }
        let mut map = Map::new();
        if let Some(v) = self.get("schema_version")? {
            map.insert("schema_version".to_owned(), v);
        }
        crate::json::expect_schema_version(&map, expected)
    }

    /// Every object nested in `key`'s value (the value itself included when it is an object),
    /// depth first, parents before their children, with the paths
    /// [`walk_record_mut`](crate::json::walk_record_mut) gives (`keys[0]`, `keys[0].client`).
    /// Members' value ranges are relative to [`raw(key)`](Self::raw), the text
    /// [`Edits::replace_at`] takes ranges in. Empty when `key` is absent or a scalar.
    ///
    /// `None` when an object in it repeats a key: a rule then works on the parsed value
    /// ([`get`](Self::get)) and sets it whole, as a `Map` would see it (one value per key).
    pub fn objects_in(&self, key: &str) -> Option<Vec<NestedObject<'a>>> {
        let mut found = Vec::new();
        if let Some(text) = self.find(key) {
            collect_objects(text, 0..text.len(), key.to_owned(), &mut found)?;
        }
        Some(found)
    }
}

/// The body of a JSON string without escapes, if `raw` is one.
fn plain_string(raw: &str) -> Option<&str> {
    let body = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!body.contains(['\\', '"'])).then_some(body)
}

/// An object nested in a record's value, as [`RecordView::objects_in`] lists it.
#[derive(Debug, Clone)]
pub struct NestedObject<'a> {
    text: &'a str,
    path: String,
    members: Vec<NestedMember<'a>>,
}

/// A member of a [`NestedObject`].
#[derive(Debug, Clone)]
pub struct NestedMember<'a> {
    /// The key, unescaped.
    pub key: Cow<'a, str>,
    /// The member from its key's opening quote to the end of its value, relative to the
    /// top-level value's text: replace it to replace the member by others.
    pub span: Range<usize>,
    /// The value's JSON text's range, relative to the top-level value's text.
    pub value: Range<usize>,
}

impl<'a> NestedObject<'a> {
    /// The object's path, as [`walk_record_mut`](crate::json::walk_record_mut) gives it.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn members(&self) -> &[NestedMember<'a>] {
        &self.members
    }

    pub fn member(&self, key: &str) -> Option<&NestedMember<'a>> {
        self.members.iter().find(|m| m.key == key)
    }

    /// The JSON text of a member's value.
    pub fn raw(&self, member: &NestedMember<'_>) -> &'a str {
        &self.text[member.value.clone()]
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.member(key).is_some()
    }
}

fn collect_objects<'a>(
    text: &'a str,
    at: Range<usize>,
    path: String,
    found: &mut Vec<NestedObject<'a>>,
) -> Option<()> {
    let b = text.as_bytes();
    match b.get(at.start)? {
        b'{' => {
            let mut members = Vec::new();
            let mut bad = false;
            scan::members(b, at.start, |m| {
                let body = &text[m.key.clone()];
                let key = if m.escaped {
                    match serde_json::from_str::<String>(&text[m.key.start - 1..m.key.end + 1]) {
                        Ok(k) => Cow::Owned(k),
                        Err(_) => {
                            bad = true;
                            Cow::Borrowed(body)
                        }
                    }
                } else {
                    Cow::Borrowed(body)
                };
                members.push(NestedMember {
                    key,
                    span: m.start..m.value.end,
                    value: m.value,
                });
            })?;
            let repeats = members
                .iter()
                .enumerate()
                .any(|(i, m)| members[..i].iter().any(|n| n.key == m.key));
            if bad || repeats {
                return None;
            }
            let children: Vec<(String, Range<usize>)> = members
                .iter()
                .map(|m| (crate::json::join(&path, &m.key), m.value.clone()))
                .collect();
            found.push(NestedObject {
                text,
                path,
                members,
            });
            for (child, value) in children {
                collect_objects(text, value, child, found)?;
            }
        }
        b'[' => {
            let mut items = Vec::new();
            scan::elements(b, at.start, |r| items.push(r))?;
            for (i, item) in items.into_iter().enumerate() {
                collect_objects(text, item, format!("{path}[{i}]"), found)?;
            }
        }
        _ => {}
    }
    Some(())
}

// ---------------------------------------------------------------------------------------------
// Edits

const OP_SET: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_REPLACE: u8 = 3;
const OP_INSERT_BEFORE: u8 = 4;
const OP_INSERT_AFTER: u8 = 5;
const OP_REPLACE_AT: u8 = 6;

/// What a [`DataEditRule`](crate::DataEditRule) changes in a record. Values are JSON text (the
/// host checks each one; a bad one refuses the record, naming its key); build small ones with
/// `push_str`, or pass a [`Value`] to the `_value` forms.
///
/// Edits apply in order, except [`replace_at`](Self::replace_at), whose ranges refer to the
/// value as the [`RecordView`] showed it and which apply first. Kept in one buffer reused for
/// every record of a batch: a rule allocates nothing per edit.
#[derive(Debug, Default)]
pub struct Edits {
    buf: Vec<u8>,
    record: u32,
}

impl Edits {
    fn head(&mut self, op: u8) {
        self.buf.extend_from_slice(&self.record.to_le_bytes());
        self.buf.push(op);
    }

    fn put(&mut self, s: &str) {
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn put_u32(&mut self, n: usize) {
        self.buf.extend_from_slice(&(n as u32).to_le_bytes());
    }

    /// Sets `key` to the JSON text `json`, keeping its position if present, else appending it.
    pub fn set(&mut self, key: &str, json: &str) -> &mut Self {
        self.head(OP_SET);
        self.put(key);
        self.put(json);
        self
    }

    /// [`set`](Self::set) with a value (e.g. `&Value::from(2)`).
    pub fn set_value(&mut self, key: &str, value: &Value) -> &mut Self {
        self.set(key, &value.to_string())
    }

    /// [`set`](Self::set) with a non-negative integer (e.g. `schema_version`), without
    /// allocating.
    pub fn set_u64(&mut self, key: &str, n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // ASCII digits.
        let text = std::str::from_utf8(&digits[i..]).unwrap_or("0");
        self.set(key, text)
    }

    /// Removes `key`; nothing if absent.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.head(OP_REMOVE);
        self.put(key);
        self
    }

    /// Replaces `old` by `entries` (key, JSON text), which take its position; nothing if `old`
    /// is absent (the values are checked all the same).
    pub fn replace(&mut self, old: &str, entries: &[(&str, &str)]) -> &mut Self {
        self.head(OP_REPLACE);
        self.put(old);
        self.put_u32(entries.len());
        for (k, v) in entries {
            self.put(k);
            self.put(v);
        }
        self
    }

    /// Puts `key` (JSON text `json`) just before `anchor`, moving it if it was elsewhere;
    /// nothing if `anchor` is absent.
    pub fn insert_before(&mut self, anchor: &str, key: &str, json: &str) -> &mut Self {
        self.head(OP_INSERT_BEFORE);
        self.put(anchor);
        self.put(key);
        self.put(json);
        self
    }

    /// Puts `key` (JSON text `json`) just after `anchor`, moving it if it was elsewhere;
    /// nothing if `anchor` is absent.
    pub fn insert_after(&mut self, anchor: &str, key: &str, json: &str) -> &mut Self {
        self.head(OP_INSERT_AFTER);
        self.put(anchor);
        self.put(key);
        self.put(json);
        self
    }

    /// Replaces `range` of `key`'s value text (as [`RecordView::raw`] showed it) by `text`: a
    /// value at depth (`text` a JSON value) or a member ([`NestedMember::span`]; `text` one or
    /// more `"key":value` members, or empty to remove it — then include one neighbouring comma
    /// in `range`). Ranges of one key must not overlap; the host checks that the value is still
    /// one JSON value once they are all applied.
    pub fn replace_at(&mut self, key: &str, range: Range<usize>, text: &str) -> &mut Self {
        self.head(OP_REPLACE_AT);
        self.put(key);
        self.put_u32(range.start);
        self.put_u32(range.end);
        self.put(text);
        self
    }

    /// Whether no edit was made since the batch began.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Starts the edits of the batch's record `index`; returns where they begin, so that a
    /// refused record's edits can be dropped ([`Self::drop_from`]).
    fn begin(&mut self, index: usize) -> usize {
        self.record = index as u32;
        self.buf.len()
    }

    fn drop_from(&mut self, mark: usize) {
        self.buf.truncate(mark);
    }
}

/// One edit as the host reads it back from a plugin's buffer, borrowing its strings.
#[derive(Debug, Clone)]
enum Op<'a> {
    Set {
        key: &'a str,
        json: &'a str,
    },
    Remove {
        key: &'a str,
    },
    /// `with`: the range of the new entries in the list of pairs read beside the ops.
    Replace {
        old: &'a str,
        with: Range<usize>,
    },
    Insert {
        after: bool,
        anchor: &'a str,
        key: &'a str,
        json: &'a str,
    },
    ReplaceAt {
        key: &'a str,
        start: usize,
        end: usize,
        text: &'a str,
    },
}

impl<'a> Op<'a> {
    /// Reads the op after its record index; a `Replace`'s entries go into `pairs`.
    fn read(
        r: &mut OpReader<'a>,
        pairs: &mut Vec<(&'a str, &'a str)>,
    ) -> Result<Op<'a>, ProtocolError> {
        Ok(match r.u8()? {
            OP_SET => Op::Set {
                key: r.str()?,
                json: r.str()?,
            },
            OP_REMOVE => Op::Remove { key: r.str()? },
            OP_REPLACE => {
                let old = r.str()?;
                let n = r.u32()?;
                // Each pair takes at least 8 bytes: a count past the buffer is a broken plugin.
                if n > r.b.len().saturating_sub(r.i) / 8 {
                    return Err(ProtocolError);
                }
                let first = pairs.len();
                for _ in 0..n {
                    let k = r.str()?;
                    pairs.push((k, r.str()?));
                }
                Op::Replace {
                    old,
                    with: first..pairs.len(),
                }
            }
            op @ (OP_INSERT_BEFORE | OP_INSERT_AFTER) => Op::Insert {
                after: op == OP_INSERT_AFTER,
                anchor: r.str()?,
                key: r.str()?,
                json: r.str()?,
            },
            OP_REPLACE_AT => Op::ReplaceAt {
                key: r.str()?,
                start: r.u32()?,
                end: r.u32()?,
                text: r.str()?,
            },
            _ => return Err(ProtocolError),
        })
    }
}

/// Reads the edits buffer back; every read is bounds-checked, since on the host it comes from a
/// plugin.
struct OpReader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> OpReader<'a> {
    fn u32(&mut self) -> Result<usize, ProtocolError> {
        let bytes = self.b.get(self.i..self.i + 4).ok_or(ProtocolError)?;
        self.i += 4;
        Ok(u32::from_le_bytes(bytes.try_into().map_err(|_| ProtocolError)?) as usize)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        let b = *self.b.get(self.i).ok_or(ProtocolError)?;
        self.i += 1;
        Ok(b)
    }

    fn peek_u32(&self) -> Result<usize, ProtocolError> {
        OpReader {
            b: self.b,
            i: self.i,
        }
        .u32()
    }

    fn str(&mut self) -> Result<&'a str, ProtocolError> {
        let n = self.u32()?;
        let bytes = self.b.get(self.i..self.i + n).ok_or(ProtocolError)?;
        self.i += n;
        if bytes.is_ascii() {
            // SAFETY: ASCII is UTF-8. Keys and values are short and nearly always ASCII, and
            // `from_utf8`'s call per string was a tenth of applying edits.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| ProtocolError)
    }

    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
}

/// Edits or a view that do not decode: a broken plugin (or host), never a bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed edits or record view")]
#[doc(hidden)]
pub struct ProtocolError;

// ---------------------------------------------------------------------------------------------
// The batch index (host side, and the plugin side of a host that sends text)

/// A record of a [`ViewBatch`]: its entries in `entries`.
#[derive(Debug, Clone, Copy)]
struct Rec {
    first: u32,
    count: u32,
}

/// A batch of records, each parsed and validated once into spans of one text: what the host
/// keeps between hops, and applies their edits to. Not for plugin authors.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct ViewBatch {
    /// The batch's text, then the text edits added (all of it checked JSON or keys).
    text: String,
    entries: Vec<Entry>,
    records: Vec<Rec>,
    scratch: Vec<Entry>,
}

/// A refused record of a batch: its index among the records still in the batch.
#[doc(hidden)]
pub type Refused = (u64, RuleError);

impl ViewBatch {
    /// Reads `\n`-separated records (a trailing `\n` starts no record) and indexes each one
    /// whole; records that are not a JSON object are left out, listed with the error a hop
    /// would have given them, by index.
    pub fn read(batch: Vec<u8>) -> (ViewBatch, Vec<Refused>) {
        Self::read_into(batch, ViewBatch::default())
    }

    /// [`Self::read`] into the tables of an earlier batch ([`Self::recycle`]): a worker keeps
    /// them from batch to batch, since fresh ones had their pages faulted in every time.
    pub fn read_into(batch: Vec<u8>, tables: ViewBatch) -> (ViewBatch, Vec<Refused>) {
        let text = match String::from_utf8(batch) {
            Ok(text) => text,
            // Rare: each record is checked on its own (and the bad ones named); the text keeps
            // only the valid ones' bytes.
            Err(e) => return Self::read_checked(e.into_bytes()),
        };
        let ViewBatch {
            mut entries,
            mut records,
            scratch,
            ..
        } = tables;
        entries.clear();
        records.clear();
        // Sized for records of ~100 bytes with ~6 entries, and room for the entries a first
        // hop appends: growing from small cost a copy of the index or two per batch.
        entries.reserve(text.len() / 10);
        records.reserve(text.len() / 64);
        let mut vb = ViewBatch {
            entries,
            records,
            text,
            scratch,
        };
        let mut refused = Vec::new();
        let mut start = 0;
        let mut index = 0u64;
        let len = vb.text.len();
        let body = vb.text.strip_suffix('\n').map_or(len, str::len);
        while start <= body && len > 0 {
            let end =
                memchr::memchr(b'\n', &vb.text.as_bytes()[start..body]).map_or(body, |i| start + i);
            if let Err(e) = vb.index_record(start..end) {
                refused.push((index, e));
            }
            index += 1;
            start = end + 1;
        }
        (vb, refused)
    }

    fn read_checked(bytes: Vec<u8>) -> (ViewBatch, Vec<Refused>) {
        let mut vb = ViewBatch::default();
        let mut refused = Vec::new();
        // Split as `batch::split_records` splits (which imports this module): one record per
        // `\n`, a trailing `\n` starts none.
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let lines = (!bytes.is_empty())
            .then(|| body.split(|b| *b == b'\n'))
            .into_iter()
            .flatten();
        for (index, line) in lines.enumerate() {
            match std::str::from_utf8(line) {
                Ok(text) => {
                    let start = vb.text.len();
                    vb.text.push_str(text);
                    if let Err(e) = vb.index_record(start..vb.text.len()) {
                        refused.push((index as u64, e));
                    }
                }
                Err(_) => refused.push((
                    index as u64,
                    RawRecord::parse(line).err().unwrap_or_else(|| {
                        RuleError::new("not valid JSON (invalid UTF-8)".to_owned())
                    }),
                )),
            }
        }
        (vb, refused)
    }

    /// Indexes the record at `at` of the text: the scanner, or (for escaped keys, deep
    /// nesting, errors) serde_json through [`RawRecord`], which words errors as hops always did.
    fn index_record(&mut self, at: Range<usize>) -> Result<(), RuleError> {
        let first = self.entries.len();
        let base = at.start;
        let line = &self.text[at.clone()];
        let entries = &mut self.entries;
        let mut seen = 0u64;
        let mut dup = false;
        let scanned = scan::spans(line, |key, value| {
            let bit = key_bit(&line.as_bytes()[key.clone()]);
            dup |= seen & bit != 0;
            seen |= bit;
            entries.push(Entry {
                key: Span::new(base + key.start..base + key.end),
                value: Span::new(base + value.start..base + value.end),
            });
            Some(())
        });
        let count = entries.len() - first;
        if scanned.is_some() && !(dup && self.has_repeats(first)) && count <= 64 {
            self.records.push(Rec {
                first: first as u32,
                count: count as u32,
            });
            return Ok(());
        }
        self.entries.truncate(first);
        // The reference path, which words errors and keeps a repeated key's first place and
        // last value as a `Map` does.
        let owned_line = line.to_owned();
        let record = RawRecord::parse(owned_line.as_bytes())?;
        let mut entries = Vec::new();
        for (key, value) in record.entry_texts() {
            let k = self.push_text(key);
            let v = self.push_text(value.unwrap_or("null"));
            entries.push(Entry { key: k, value: v });
        }
        let first = self.entries.len();
        self.entries.extend(entries);
        self.records.push(Rec {
            first: first as u32,
            count: (self.entries.len() - first) as u32,
        });
        Ok(())
    }

    fn has_repeats(&self, first: usize) -> bool {
        let e = &self.entries[first..];
        let key = |x: &Entry| &self.text[x.key.range()];
        (0..e.len()).any(|i| e[..i].iter().any(|p| key(p) == key(&e[i])))
    }

    fn push_text(&mut self, s: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(s);
        Span::new(start..self.text.len())
    }

    /// Empties the batch for [`Self::read_into`], keeping the room of its tables and text;
    /// [`Self::take_text`] lends the text's room out for the next batch's bytes.
    pub fn recycle(mut self) -> ViewBatch {
        self.text.clear();
        self.entries.clear();
        self.records.clear();
        self
    }

    /// The (recycled) batch's text buffer, emptied, to read the next batch's bytes into.
    pub fn take_text(&mut self) -> Vec<u8> {
        let mut text = std::mem::take(&mut self.text).into_bytes();
        text.clear();
        text
    }

    /// Records still in the batch.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The view of record `i`.
    pub fn view(&self, i: usize) -> RecordView<'_> {
        let r = self.records[i];
        RecordView {
            text: &self.text,
            entries: &self.entries[r.first as usize..(r.first + r.count) as usize],
        }
    }

    /// Appends every record as compact JSON, one per line: each key and each value as its
    /// text, so that what no hop touched is copied as it was written.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.reserve(self.text.len() + self.records.len() * 2);
        let text = self.text.as_bytes();
        for r in &self.records {
            out.push(b'{');
            let entries = &self.entries[r.first as usize..(r.first + r.count) as usize];
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let key = &self.text[e.key.range()];
                if needs_escape(key) {
                    // Writing a `str` into a `Vec` cannot fail.
                    let _ = serde_json::to_writer(&mut *out, key);
                } else {
                    out.push(b'"');
                    out.extend_from_slice(key.as_bytes());
                    out.push(b'"');
                }
                out.push(b':');
                out.extend_from_slice(&text[e.value.range()]);
            }
            out.extend_from_slice(b"}\n");
        }
    }

    /// Runs `rule` on every record, as a plugin does for a host that sends text: edits are
    /// applied as the host applies them. Returns the refused records (by index among those
    /// still in the batch), which leave it.
    pub fn run(
        &mut self,
        rule: &dyn Fn(&RecordView<'_>, &mut Edits) -> Result<(), FieldError>,
    ) -> Result<Vec<Refused>, ProtocolError> {
        let mut edits = Edits::default();
        let refused = edit_all(self, rule, &mut edits);
        let mut all = self.apply(&edits.buf)?;
        all.extend(refused);
        all.sort_by_key(|r| r.0);
        self.remove(&all);
        Ok(all)
    }

    /// Applies a plugin's edits; records whose edits the host refuses (bad JSON text) are
    /// listed. The caller removes them (with the plugin's refusals) through [`Self::remove`].
    ///
    /// Each op is decoded once, into a list reused for every record: decoding a record's ops
    /// again to find where they end, and once more per pass, was most of the host's cost.
    pub fn apply(&mut self, edits: &[u8]) -> Result<Vec<Refused>, ProtocolError> {
        let mut r = OpReader { b: edits, i: 0 };
        let mut refused = Vec::new();
        let mut ops: Vec<Op<'_>> = Vec::new();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        let mut last = None;
        while !r.done() {
            let index = r.peek_u32()?;
            // A record's ops are contiguous and records come in order: anything else is a
            // broken plugin (and would let one record's ops be applied twice).
            if last.is_some_and(|l| index <= l) || index >= self.records.len() {
                return Err(ProtocolError);
            }
            last = Some(index);
            ops.clear();
            pairs.clear();
            while !r.done() && r.peek_u32()? == index {
                r.u32()?;
                ops.push(Op::read(&mut r, &mut pairs)?);
            }
            if let Err(e) = self.apply_record(index, &ops, &pairs) {
                refused.push((index as u64, e));
            }
        }
        Ok(refused)
    }

    /// Removes the records listed (indices among those in the batch, any order).
    pub fn remove(&mut self, refused: &[Refused]) {
        if refused.is_empty() {
            return;
        }
        let mut gone: Vec<usize> = refused.iter().map(|r| r.0 as usize).collect();
        gone.sort_unstable();
        gone.dedup();
        let mut k = 0;
        let mut i = 0;
        self.records.retain(|_| {
            let drop = gone.get(k) == Some(&i);
            if drop {
                k += 1;
            }
            i += 1;
            !drop
        });
    }

    /// One record's ops: an error when the host refuses the record (a bad value), which is
    /// then left as it was.
    fn apply_record(
        &mut self,
        index: usize,
        ops: &[Op<'_>],
        pairs: &[(&str, &str)],
    ) -> Result<(), RuleError> {
        let rec = self.records[index];
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch
            .extend_from_slice(&self.entries[rec.first as usize..(rec.first + rec.count) as usize]);
        let mark = self.text.len();
        let result = self.apply_ops(&mut scratch, ops, pairs);
        match &result {
            // In its own slot when it fits (records' slots never overlap), else at the end.
            Ok(()) if scratch.len() <= rec.count as usize => {
                let first = rec.first as usize;
                self.entries[first..first + scratch.len()].copy_from_slice(&scratch);
                self.records[index].count = scratch.len() as u32;
            }
            Ok(()) => {
                let first = self.entries.len() as u32;
                self.entries.extend_from_slice(&scratch);
                self.records[index] = Rec {
                    first,
                    count: scratch.len() as u32,
                };
            }
            Err(_) => self.text.truncate(mark),
        }
        self.scratch = scratch;
        result.map_err(RuleError::from)
    }

    fn apply_ops(
        &mut self,
        entries: &mut Vec<Entry>,
        ops: &[Op<'_>],
        pairs: &[(&str, &str)],
    ) -> Result<(), FieldError> {
        // First the ranges within values, relative to the values the rule saw.
        let mut splices: Vec<(&str, usize, usize, &str)> = ops
            .iter()
            .filter_map(|op| match *op {
                Op::ReplaceAt {
                    key,
                    start,
                    end,
                    text,
                } => Some((key, start, end, text)),
                _ => None,
            })
            .collect();
        if !splices.is_empty() {
            splices.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
            let mut i = 0;
            while i < splices.len() {
                let key = splices[i].0;
                let j = i + splices[i..].iter().take_while(|s| s.0 == key).count();
                self.splice(entries, &splices[i..j])?;
                i = j;
            }
        }
        for op in ops {
            match *op {
                Op::Set { key, json } => {
                    let value = self.checked(key, json)?;
                    match self.position(entries, key) {
                        Some(i) => entries[i].value = value,
                        None => {
                            let key = self.push_text(key);
                            entries.push(Entry { key, value });
                        }
                    }
                }
                Op::Remove { key } => {
                    if let Some(i) = self.position(entries, key) {
                        entries.remove(i);
                    }
                }
                Op::Replace { old, ref with } => {
                    let mut new = Vec::with_capacity(with.len());
                    let mut bad = None;
                    for &(k, v) in &pairs[with.clone()] {
                        match self.checked(k, v) {
                            Ok(value) if bad.is_none() => {
                                let key = self.push_text(k);
                                new.push(Entry { key, value });
                            }
                            Ok(_) => {}
                            Err(e) => bad = bad.or(Some(e)),
                        }
                    }
                    if let Some(e) = bad {
                        return Err(e);
                    }
                    if let Some(i) = self.position(entries, old) {
                        entries.splice(i..=i, new);
                    }
                }
                Op::Insert {
                    after,
                    anchor,
                    key,
                    json,
                } => {
                    let value = self.checked(key, json)?;
                    if self.position(entries, anchor).is_some() && anchor != key {
                        if let Some(i) = self.position(entries, key) {
                            entries.remove(i);
                        }
                        let a = self.position(entries, anchor).unwrap_or(entries.len());
                        let at = if after { a + 1 } else { a };
                        let key = self.push_text(key);
                        entries.insert(at, Entry { key, value });
                    }
                }
                Op::ReplaceAt { .. } => {}
            }
        }
        Ok(())
    }

    fn position(&self, entries: &[Entry], key: &str) -> Option<usize> {
        entries
            .iter()
            .position(|e| e.key.len as usize == key.len() && &self.text[e.key.range()] == key)
    }

    /// `json`, checked to be one JSON value, in the text; the error names `key`.
    fn checked(&mut self, key: &str, json: &str) -> Result<Span, FieldError> {
        // As `RawRecord` checks it: the scanner, serde_json for what it leaves (and the words
        // of the error); the whitespace around it goes.
        if !scan::is_one_value(json) {
            serde_json::from_str::<&serde_json::value::RawValue>(json)
                .map_err(|e| FieldError::new(key, format!("not valid JSON text ({e})")))?;
        }
        let json = json.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
        Ok(self.push_text(json))
    }

    /// Applies the ranges (sorted) of one key's value, and checks the value it makes.
    fn splice(
        &mut self,
        entries: &mut [Entry],
        splices: &[(&str, usize, usize, &str)],
    ) -> Result<(), FieldError> {
        let key = splices[0].0;
        let Some(i) = self.position(entries, key) else {
            return Err(FieldError::new(
                key,
                "the rule edited a value the record does not have",
            ));
        };
        let old = entries[i].value.range();
        let mut value = String::with_capacity(old.len() + 64);
        let mut at = 0;
        for &(_, a, b, text) in splices {
            let (Some(before), true) = (self.text.get(old.start + at..old.start + a), a <= b)
            else {
                return Err(FieldError::new(
                    key,
                    "the rule's edits of this value overlap",
                ));
            };
            if self.text.get(old.start + a..old.start + b).is_none() || b > old.len() {
                return Err(FieldError::new(
                    key,
                    "the rule edited past this value's end",
                ));
            }
            value.push_str(before);
            value.push_str(text);
            at = b;
        }
        value.push_str(&self.text[old.start + at..old.end]);
        entries[i].value = self.checked(key, &value)?;
        Ok(())
    }

    // -- the wire: a view crosses to a plugin as the batch's text plus a table --

    /// The view payload for a plugin: the table of records and entries, little-endian `u32`s
    /// (`records`, then per record `first`/`count`, then per entry the four span fields),
    /// appended to `out`. The text travels beside it as a `str`.
    pub fn encode_table(&self, out: &mut Vec<u8>) {
        out.clear();
        self.append_table(out);
    }

    /// Lends the view as one payload — the batch's text, then its table — with the text's
    /// length. The table is written after the text in the text's own buffer and taken off
    /// again: copying the text and the table into a payload for each hop was a tenth of the
    /// host's work.
    pub fn with_payload<R>(&mut self, f: impl FnOnce(&[u8], usize) -> R) -> R {
        let n = self.text.len();
        let mut bytes = std::mem::take(&mut self.text).into_bytes();
        self.append_table(&mut bytes);
        let r = f(&bytes, n);
        bytes.truncate(n);
        // SAFETY: the first `n` bytes are the text's, untouched (the table was only appended
        // after them and is cut off again), so they are still valid UTF-8. If `f` panics the
        // text is lost with the batch, and `self.text` is empty, which is valid.
        self.text = unsafe { String::from_utf8_unchecked(bytes) };
        r
    }

    fn append_table(&self, out: &mut Vec<u8>) {
        let live: usize = self.records.iter().map(|r| r.count as usize).sum();
        out.reserve(4 + self.records.len() * 8 + live * 16);
        out.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        let mut first = 0u32;
        for r in &self.records {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&r.count.to_le_bytes());
            first += r.count;
        }
        for r in &self.records {
            for e in &self.entries[r.first as usize..(r.first + r.count) as usize] {
                for n in [e.key.start, e.key.len, e.value.start, e.value.len] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
    }

    /// The batch's text, which the table's spans point into.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Runs `rule` over every record of `vb`, collecting edits in `edits`; the refused records'
/// edits are dropped.
fn edit_all(
    vb: &ViewBatch,
    rule: &dyn Fn(&RecordView<'_>, &mut Edits) -> Result<(), FieldError>,
    edits: &mut Edits,
) -> Vec<Refused> {
    let mut refused = Vec::new();
    for i in 0..vb.len() {
        let mark = edits.begin(i);
        if let Err(e) = rule(&vb.view(i), edits) {
            edits.drop_from(mark);
            refused.push((i as u64, e.into()));
        }
    }
    refused
}

/// A view as a plugin decodes it from the host's payload.
#[doc(hidden)]
pub struct DecodedView<'a> {
    text: &'a str,
    records: Vec<Rec>,
    entries: Vec<Entry>,
}

/// A decoded view's tables, kept by a plugin from batch to batch: allocated afresh for each
/// batch and hop, their pages were faulted in again every time (a tenth of a hop's cost).
#[doc(hidden)]
#[derive(Default)]
pub struct ViewBuffers {
    records: Vec<Rec>,
    entries: Vec<Entry>,
}

impl<'a> DecodedView<'a> {
    /// Decodes [`ViewBatch::encode_table`]'s table over `text`; every span is checked to lie
    /// in `text` on character boundaries.
    pub fn decode(text: &'a str, table: &[u8]) -> Result<DecodedView<'a>, ProtocolError> {
        Self::decode_into(text, table, ViewBuffers::default())
    }

    /// [`Self::decode`] into the tables of an earlier view ([`Self::into_buffers`]).
    pub fn decode_into(
        text: &'a str,
        table: &[u8],
        buffers: ViewBuffers,
    ) -> Result<DecodedView<'a>, ProtocolError> {
        let ViewBuffers {
            mut records,
            mut entries,
        } = buffers;
        records.clear();
        entries.clear();
        let mut r = OpReader { b: table, i: 0 };
        let n = r.u32()?;
        if n > table.len() / 8 {
            return Err(ProtocolError);
        }
        records.reserve(n);
        let mut total = 0usize;
        for _ in 0..n {
            let (first, count) = (r.u32()?, r.u32()?);
            if first != total {
                return Err(ProtocolError);
            }
            total += count;
            records.push(Rec {
                first: first as u32,
                count: count as u32,
            });
        }
        if total > (table.len() - r.i) / 16 {
            return Err(ProtocolError);
        }
        entries.reserve(total);
        for _ in 0..total {
            let span = |r: &mut OpReader<'_>| -> Result<Span, ProtocolError> {
                let (start, len) = (r.u32()?, r.u32()?);
                text.get(start..start + len).ok_or(ProtocolError)?;
                Ok(Span::new(start..start + len))
            };
            let key = span(&mut r)?;
            let value = span(&mut r)?;
            entries.push(Entry { key, value });
        }
        Ok(DecodedView {
            text,
            records,
            entries,
        })
    }

    /// Gives the tables back for the next batch.
    pub fn into_buffers(self) -> ViewBuffers {
        ViewBuffers {
            records: self.records,
            entries: self.entries,
        }
    }

    /// Runs `rule` on every record; returns the encoded edits and the refused records.
    pub fn run(
        &self,
        rule: &dyn Fn(&RecordView<'_>, &mut Edits) -> Result<(), FieldError>,
    ) -> (Vec<u8>, Vec<Refused>) {
        let mut edits = Edits {
            // A hop's edits run to about a hundred bytes a record: grown from less, the buffer
            // was copied three or four times a batch.
            buf: Vec::with_capacity(self.records.len() * 128),
            record: 0,
        };
        let mut refused = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            let view = RecordView {
                text: self.text,
                entries: &self.entries[r.first as usize..(r.first + r.count) as usize],
            };
            let mark = edits.begin(i);
            if let Err(e) = rule(&view, &mut edits) {
                edits.drop_from(mark);
                refused.push((i as u64, e.into()));
            }
        }
        (edits.buf, refused)
    }
}

/// Runs an edit rule on a parsed record, for callers that hold a `Map` (tests, tools): the
/// record is printed, indexed, edited and read back. A refused record is left as it was.
pub fn edit_map(
    rule: &dyn Fn(&RecordView<'_>, &mut Edits) -> Result<(), FieldError>,
    record: &mut Map<String, Value>,
) -> Result<(), FieldError> {
    let line = serde_json::to_vec(record).map_err(|e| FieldError::new("", e.to_string()))?;
    let (mut vb, refused) = ViewBatch::read(line);
    if let Some((_, e)) = refused.into_iter().next() {
        return Err(FieldError::new(e.field.unwrap_or_default(), e.message));
    }
    let refused = vb
        .run(rule)
        .map_err(|e| FieldError::new("", e.to_string()))?;
    if let Some((_, e)) = refused.into_iter().next() {
        return Err(FieldError::new(e.field.unwrap_or_default(), e.message));
    }
    let mut out = Vec::new();
    vb.write(&mut out);
    *record = serde_json::from_slice(&out).map_err(|e| FieldError::new("", e.to_string()))?;
    Ok(())
}

/// Calls `visit` on every object in `value`, the value of a record's key `key` (itself included
/// when it is an object), with the paths [`walk_record_mut`](crate::json::walk_record_mut) gives: for a rule that works on a
/// parsed value where [`RecordView::objects_in`] gives `None`, and then sets it whole.
pub fn walk_objects_at(
    key: &str,
    value: &mut Value,
    visit: &mut ObjectVisitor,
) -> Result<(), FieldError> {
    walk_objects_under(key, value, visit)
}

/// Reads one record as the data path does (UTF-8, then the strict scanner; serde_json for what
/// the scanner leaves to it, with the hops' error messages) and returns its `schema_version`
/// when that is a non-negative integer: `migrate validate` and the check before the swap read
/// every migrated record this way, at the scanner's speed, nothing allocated. Not for plugin
/// authors.
#[doc(hidden)]
pub fn check_record(line: &[u8]) -> Result<Option<u64>, RuleError> {
    match std::str::from_utf8(line) {
        Ok(text) => check_record_text(text),
        Err(_) => RawRecord::parse(line).map(|r| r.u64("schema_version").ok().flatten()),
    }
}

/// [`check_record`] for a record already known to be UTF-8: a caller that checked a whole
/// chunk of records at once (one UTF-8 check costs far less than one per record) reads each
/// of them here. Not for plugin authors.
#[doc(hidden)]
pub fn check_record_text(text: &str) -> Result<Option<u64>, RuleError> {
    // A repeated key's last value is the one a `Map` keeps.
    let mut found = None;
    let scanned = scan::spans(text, |key, value| {
        if &text[key] == "schema_version" {
            found = Some(value);
        }
        Some(())
    });
    if scanned.is_some() {
        return Ok(found.and_then(|v| text[v].parse::<u64>().ok()));
    }
    let record = RawRecord::parse(text.as_bytes())?;
    Ok(record.u64("schema_version").ok().flatten())
}

/// [`check_record_text`] for a stream of records, remembering the skeletons of the last few
/// (the text between their scalars): a record of a known skeleton is checked by comparing that
/// text and reading only its scalars, which accepts and refuses exactly what the full check
/// does (see the scanner's `skeleton` module), at a fraction of its cost. One per thread.
/// Not for plugin authors.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RecordChecker {
    skeletons: scan::Skeletons,
}

impl RecordChecker {
    /// What [`check_record_text`] returns for `text`.
    #[inline]
    pub fn check(&mut self, text: &str) -> Result<Option<u64>, RuleError> {
        if let Some(found) = self.skeletons.read(text) {
            return Ok(found.and_then(|v| text[v].parse::<u64>().ok()));
        }
        let found = check_record_text(text)?;
        self.skeletons.learn(text, "schema_version");
        Ok(found)
    }
}

#[cfg(test)]
mod tests;

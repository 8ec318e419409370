//! A record as a data rule sees it on the fast path: its top-level keys in order, each value
//! kept as the raw JSON text it arrived as until a rule reads or replaces it. Values a hop does
//! not touch are copied through as bytes — no tree is built and nothing is re-printed — which
//! is most of a record for most hops.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::error::{FieldError, RuleError};
use crate::json::{type_name, walk_objects_under, ObjectVisitor};

pub(crate) mod scan;

/// Kept for semver: no API takes or returns it since 1.2.0, when a record's untouched values
/// became plain text spans (see `Held`).
#[deprecated(since = "1.2.0", note = "not used by any API of RawRecord")]
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum Slot<'a> {
    Raw(&'a RawValue),
    Text(Box<RawValue>),
    Value(Value),
}

/// One top-level value: untouched raw text (valid JSON: a scanner or serde_json checked it),
/// JSON text a rule produced, or a value a rule produced.
#[derive(Debug, Clone)]
enum Held<'a> {
    Raw(&'a str),
    /// JSON text set by a rule ([`FieldValue::json`] or a [`RawValue`]), checked and written out
    /// as it is.
    Text(Box<str>),
    /// A number a rule set as a [`Value`]: kept unboxed, as rules set one per record
    /// (`schema_version`).
    Number(Number),
    /// Boxed: a `Value` is several times the size of the others, and every entry would pay.
    Value(Box<Value>),
}

impl Held<'_> {
    /// The JSON text of the value, unless it is a parsed [`Value`].
    fn text(&self) -> Option<&str> {
        match self {
            Held::Raw(r) => Some(r),
            Held::Text(r) => Some(r),
            Held::Number(_) | Held::Value(_) => None,
        }
    }

    fn is_container(&self) -> bool {
        match self.text() {
            Some(text) => matches!(text.as_bytes().first(), Some(b'{' | b'[')),
            None => matches!(self, Held::Value(v) if v.is_object() || v.is_array()),
        }
    }

    fn parse(&self, key: &str) -> Result<Value, FieldError> {
        match self {
            Held::Value(v) => Ok(Value::clone(v)),
            Held::Number(n) => Ok(Value::Number(n.clone())),
            other => {
                let text = other.text().unwrap_or_default();
                serde_json::from_str(text).map_err(|e| unreadable(key, e))
            }
        }
    }
}

fn unreadable(key: &str, e: serde_json::Error) -> FieldError {
    FieldError::new(key, format!("unreadable value ({e})"))
}

/// A value given to [`RawRecord::insert`] or [`RawRecord::replace`]. Since 1.4.0.
///
/// * From a [`Value`] (`Value::from(2)`, `json!({…})`): kept parsed, written with serde_json.
///   The right choice for what a `Map` caller of the rule reads back, such as computed floats
///   (serde_json does not read every float back exactly from text).
/// * [`FieldValue::json`]: JSON text the rule built (e.g. a small object with `push_str`),
///   written out as it is, less any whitespace around it. Checked to be one JSON value when it
///   is set, by the scanner that reads records (cheaper than [`RawValue::from_string`]).
/// * From a [`Box<RawValue>`]: JSON text serde_json already checked, written out as it is.
///
/// Opaque, so that other kinds of value can be added.
#[derive(Debug, Clone)]
pub struct FieldValue(NewValue);

#[derive(Debug, Clone)]
enum NewValue {
    Value(Value),
    Text(String),
    Raw(Box<RawValue>),
}

impl FieldValue {
    /// JSON text a rule built, checked when it is set.
    pub fn json(text: impl Into<String>) -> Self {
        FieldValue(NewValue::Text(text.into()))
    }

    /// What the record holds for it; `key` names the entry in the error for text that is not
    /// one JSON value.
    fn into_held<'a>(self, key: &str) -> Result<Held<'a>, FieldError> {
        Ok(match self.0 {
            NewValue::Value(value) => Self::held_value(value),
            NewValue::Text(text) => Held::Text(checked_json(key, text)?),
            NewValue::Raw(raw) => Self::held_raw(raw),
        })
    }

    fn held_value<'a>(value: Value) -> Held<'a> {
        match value {
            Value::Number(n) => Held::Number(n),
            other => Held::Value(Box::new(other)),
        }
    }

    fn held_raw<'a>(raw: Box<RawValue>) -> Held<'a> {
        Held::Text(trimmed(raw.into()))
    }
}

impl From<Value> for FieldValue {
    fn from(value: Value) -> Self {
        FieldValue(NewValue::Value(value))
    }
}

impl From<Box<RawValue>> for FieldValue {
    fn from(raw: Box<RawValue>) -> Self {
        FieldValue(NewValue::Raw(raw))
    }
}

/// A record's top-level entries, in order.
#[derive(Debug, Clone, Default)]
pub struct RawRecord<'a> {
    entries: Vec<(Cow<'a, str>, Held<'a>)>,
}

impl<'a> RawRecord<'a> {
    /// Parses one record (a JSON object). Errors read like the slow path's.
    pub fn parse(line: &'a [u8]) -> Result<RawRecord<'a>, RuleError> {
        let text = std::str::from_utf8(line)
            .map_err(|e| RuleError::new(format!("not valid JSON (invalid UTF-8: {e})")))?;
        Self::parse_str(text)
    }

    /// [`parse`](Self::parse) for text already known to be UTF-8.
    pub(crate) fn parse_str(text: &'a str) -> Result<RawRecord<'a>, RuleError> {
        // Room for a typical record's keys: growing 0 → 4 → 8 cost more than the scan.
        let mut record = RawRecord {
            entries: Vec::with_capacity(8),
        };
        record.read(text)?;
        Ok(record)
    }

    /// Reads `text` into this record, replacing its entries but keeping their storage: a batch
    /// reads all its records into one, rather than allocating for each.
    pub(crate) fn read(&mut self, text: &'a str) -> Result<(), RuleError> {
        let trimmed = text.trim_start();
        if !trimmed.starts_with('{') {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| RuleError::new(format!("not valid JSON ({e})")))?;
            return Err(RuleError::new(format!(
                "a record must be a JSON object, found {}",
                type_name(&value)
            )));
        }
        let mut storage = std::mem::take(&mut self.entries);
        storage.clear();
        match Self::scan(text, storage) {
            Some(record) => *self = record,
            None => *self = Self::deserialize(text)?,
        }
        Ok(())
    }

    /// The fast path, into `storage` (empty): `None` when the scanner leaves the record to
    /// serde_json.
    fn scan(text: &'a str, storage: Vec<(Cow<'a, str>, Held<'a>)>) -> Option<RawRecord<'a>> {
        let mut entries = Entries::in_storage(storage);
        scan::entries(text, &mut entries)?;
        Some(RawRecord {
            entries: entries.entries,
        })
    }

    /// The reference path, which also words the errors.
    fn deserialize(text: &'a str) -> Result<RawRecord<'a>, RuleError> {
        let entries: Entries<'a> = serde_json::from_str(text)
            .map_err(|e| RuleError::new(format!("not valid JSON ({e})")))?;
        Ok(RawRecord {
            entries: entries.entries,
        })
    }

    /// Appends the record as compact JSON.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), RuleError> {
        out.push(b'{');
        for (i, (key, slot)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match key {
                // serde_json lends a key only when it has no escapes: its text is already a
                // valid JSON string body and can be copied as it is.
                Cow::Borrowed(k) => {
                    out.push(b'"');
                    out.extend_from_slice(k.as_bytes());
                    out.push(b'"');
                }
                // Keys a rule sets (`schema_version`, `usage`, …) rarely need escapes either.
                Cow::Owned(k) if !needs_escape(k) => {
                    out.push(b'"');
                    out.extend_from_slice(k.as_bytes());
                    out.push(b'"');
                }
                Cow::Owned(k) => {
                    serde_json::to_writer(&mut *out, k.as_str()).map_err(encode_error)?
                }
            }
            out.push(b':');
            match slot {
                Held::Raw(raw) => out.extend_from_slice(raw.as_bytes()),
                Held::Text(raw) => out.extend_from_slice(raw.as_bytes()),
                Held::Number(n) => serde_json::to_writer(&mut *out, n).map_err(encode_error)?,
                Held::Value(v) => serde_json::to_writer(&mut *out, v).map_err(encode_error)?,
            }
        }
        out.push(b'}');
        Ok(())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k == key)
    }

    /// The JSON text of `key`: as it arrived, or as set as text. `None` when absent or set to a
    /// parsed [`Value`].
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.entries[self.position(key)?].1.text()
    }

    /// The value of `key`, parsed.
    pub fn get(&self, key: &str) -> Result<Option<Value>, FieldError> {
        let Some(i) = self.position(key) else {
            return Ok(None);
        };
        self.entries[i].1.parse(key).map(Some)
    }

    /// A non-negative integer field, if present (read without building a tree).
    pub fn u64(&self, key: &str) -> Result<Option<u64>, FieldError> {
        match self.raw(key) {
            Some(raw) => match raw.parse::<u64>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => self.typed(key, Value::as_u64, "a non-negative integer"),
            },
            None => self.typed(key, Value::as_u64, "a non-negative integer"),
        }
    }

    /// A non-negative number field, if present. Read as serde_json reads it, so that the value
    /// is the one a rule written against [`Map`] sees (serde_json's float parsing is not always
    /// correctly rounded, `str::parse` is).
    pub fn f64(&self, key: &str) -> Result<Option<f64>, FieldError> {
        let raw = self.raw(key);
        // An integer is read exactly as serde_json reads it (as a u64, then converted).
        if let Some(n) = raw.and_then(|r| r.parse::<u64>().ok()) {
            return Ok(Some(n as f64));
        }
        match raw.map(serde_json::from_str::<f64>) {
            Some(Ok(n)) if n >= 0.0 && n.is_finite() => Ok(Some(n)),
            _ => self.typed(
                key,
                |v| v.as_f64().filter(|n| *n >= 0.0),
                "a non-negative number",
            ),
        }
    }

    /// A string field, if present.
    pub fn str(&self, key: &str) -> Result<Option<String>, FieldError> {
        self.typed(key, |v| v.as_str().map(str::to_owned), "a string")
    }

    fn typed<T>(
        &self,
        key: &str,
        read: impl Fn(&Value) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, FieldError> {
        crate::json::typed(key, self.get(key)?, read, expected)
    }

    /// Whether the raw value of `key` is an object or an array (may hold nested fields).
    pub fn is_container(&self, key: &str) -> bool {
        self.position(key)
            .is_some_and(|i| self.entries[i].1.is_container())
    }

    /// Checks `schema_version` like [`crate::json::expect_schema_version`] (same errors),
    /// reading it from the raw text when it is the expected integer.
    pub fn expect_schema_version(&self, expected: Option<u64>) -> Result<(), FieldError> {
        let found = self.position("schema_version");
        match (expected, found) {
            (None, None) => return Ok(()),
            (Some(want), Some(i))
                if self.entries[i].1.text().and_then(|t| t.parse::<u64>().ok()) == Some(want) =>
            {
                return Ok(())
            }
            _ => {}
        }
        let mut map = Map::new();
        if let Some(v) = self.get("schema_version")? {
            map.insert("schema_version".to_owned(), v);
        }
        crate::json::expect_schema_version(&map, expected)
    }

    /// Sets `key` to `value`, keeping `key`'s position if present, else appending it: the one
    /// way to set a key. `value` is a [`Value`], JSON text a rule built
    /// ([`FieldValue::json`], the cheapest way to set a small object) or a [`RawValue`]; see
    /// [`FieldValue`] for what each costs. A `&'static str` or `String` key is not copied; a
    /// borrowed key is written `key.to_owned()`. Fails, naming `key` and leaving the record as
    /// it was, only for JSON text that is not one JSON value. Since 1.4.0.
    pub fn insert(
        &mut self,
        key: impl Into<Cow<'a, str>>,
        value: impl Into<FieldValue>,
    ) -> Result<(), FieldError> {
        let key = key.into();
        let held = value.into().into_held(&key)?;
        self.put(key, held);
        Ok(())
    }

    /// Replaces `old` by `entries`, which take the position `old` had; nothing if `old` is
    /// absent: the one way to replace a key (by one key, several, or — with
    /// [`remove`](Self::remove) — none). Values and keys are taken as by
    /// [`insert`](Self::insert); every value is checked before the record changes, so an error
    /// (naming the entry's key) leaves it as it was, also when `old` is absent. Since 1.4.0.
    pub fn replace<K, V>(
        &mut self,
        old: &str,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), FieldError>
    where
        K: Into<Cow<'a, str>>,
        V: Into<FieldValue>,
    {
        let entries = entries
            .into_iter()
            .map(|(key, value)| {
                let key = key.into();
                let held = value.into().into_held(&key)?;
                Ok((key, held))
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        self.splice(old, entries);
        Ok(())
    }

    /// Sets `key`, keeping its position if present, else appending it.
    #[deprecated(
        since = "1.4.0",
        note = "use `RawRecord::insert`, which takes a `Value` too"
    )]
    pub fn set(&mut self, key: &str, value: Value) {
        self.put(Cow::Owned(key.to_owned()), FieldValue::held_value(value));
    }

    /// Sets `key` to JSON text a rule wrote, checked to be one JSON value. Since 1.2.0.
    #[deprecated(
        since = "1.4.0",
        note = "use `RawRecord::insert(key, FieldValue::json(text))`"
    )]
    pub fn set_json(
        &mut self,
        key: impl Into<Cow<'a, str>>,
        json: String,
    ) -> Result<(), FieldError> {
        self.insert(key, FieldValue::json(json))
    }

    /// Replaces `old` by `key` with the JSON text `json`, at the position `old` had; nothing if
    /// `old` is absent. Since 1.2.0.
    #[deprecated(
        since = "1.4.0",
        note = "use `RawRecord::replace(old, [(key, FieldValue::json(text))])`"
    )]
    pub fn replace_key_json(
        &mut self,
        old: &str,
        key: impl Into<Cow<'a, str>>,
        json: String,
    ) -> Result<(), FieldError> {
        self.replace(old, [(key, FieldValue::json(json))])
    }

    /// Sets `key` to a value given as JSON text.
    #[deprecated(
        since = "1.4.0",
        note = "use `RawRecord::insert`, which takes a `Box<RawValue>` too"
    )]
    pub fn set_raw(&mut self, key: &str, json: Box<RawValue>) {
        self.put(Cow::Owned(key.to_owned()), FieldValue::held_raw(json));
    }

    /// Replaces `old` by `entries` at the position `old` had; nothing if `old` is absent.
    #[deprecated(
        since = "1.4.0",
        note = "use `RawRecord::replace`, which takes a `Value` too"
    )]
    pub fn replace_key(&mut self, old: &str, entries: Vec<(String, Value)>) {
        let entries = entries
            .into_iter()
            .map(|(k, v)| (Cow::Owned(k), FieldValue::held_value(v)))
            .collect();
        self.splice(old, entries);
    }

    /// Like `replace_key`, with the new values given as JSON text.
    #[deprecated(
        since = "1.4.0",
        note = "use `RawRecord::replace`, which takes a `Box<RawValue>` too"
    )]
    pub fn replace_key_raw(&mut self, old: &str, entries: Vec<(String, Box<RawValue>)>) {
        let entries = entries
            .into_iter()
            .map(|(k, v)| (Cow::Owned(k), FieldValue::held_raw(v)))
            .collect();
        self.splice(old, entries);
    }

    fn put(&mut self, key: Cow<'a, str>, held: Held<'a>) {
        match self.position(&key) {
            Some(i) => self.entries[i].1 = held,
            None => self.entries.push((key, held)),
        }
    }

    fn splice(&mut self, old: &str, entries: Vec<(Cow<'a, str>, Held<'a>)>) {
        if let Some(i) = self.position(old) {
            self.entries.splice(i..=i, entries);
        }
    }

    /// Removes `key` and returns its value.
    pub fn remove(&mut self, key: &str) -> Result<Option<Value>, FieldError> {
        let value = self.get(key)?;
        if let Some(i) = self.position(key) {
            self.entries.remove(i);
        }
        Ok(value)
    }

    /// Moves `key` to the end (e.g. `schema_version`, which is always the last key).
    pub fn move_to_end(&mut self, key: &str) {
        if let Some(i) = self.position(key) {
            let entry = self.entries.remove(i);
            self.entries.push(entry);
        }
    }

    /// Parses every object or array value and hands it to `visit`; scalars stay raw.
    #[deprecated(
        since = "1.4.0",
        note = "use `RawRecord::walk_objects_if(|_| true, visit)`, which also reaches objects in arrays"
    )]
    pub fn for_each_container(
        &mut self,
        visit: impl FnMut(&str, &mut Value) -> Result<(), FieldError>,
    ) -> Result<(), FieldError> {
        self.containers_if(|_| true, visit)
    }

    /// Like `for_each_container`, but leaves raw every container whose JSON text `may_hold`
    /// rejects.
    #[deprecated(since = "1.4.0", note = "use `RawRecord::walk_objects_if`")]
    pub fn for_each_container_if(
        &mut self,
        may_hold: impl FnMut(&str) -> bool,
        visit: impl FnMut(&str, &mut Value) -> Result<(), FieldError>,
    ) -> Result<(), FieldError> {
        self.containers_if(may_hold, visit)
    }

    /// Parses each top-level object or array whose JSON text `may_hold` accepts (and takes each
    /// already replaced by a [`Value`]) and hands it to `visit` with its key.
    fn containers_if(
        &mut self,
        mut may_hold: impl FnMut(&str) -> bool,
        mut visit: impl FnMut(&str, &mut Value) -> Result<(), FieldError>,
    ) -> Result<(), FieldError> {
        for (key, slot) in &mut self.entries {
            if !slot.is_container() {
                continue;
            }
            if let Some(text) = slot.text() {
                if !may_hold(text) {
                    continue;
                }
                *slot = Held::Value(Box::new(slot.parse(key)?));
            }
            if let Held::Value(v) = slot {
                visit(key, v)?;
            }
        }
        Ok(())
    }

    /// Calls `visit` on every object nested in the record's values (depth first, the record
    /// itself excluded: read its keys directly), with the path
    /// [`walk_record_mut`](crate::json::walk_record_mut) gives it (`keys[0]`, `keys[0].client`):
    /// the one way to visit a record's nested values.
    ///
    /// Only top-level values whose JSON text `may_hold` accepts are parsed (the others stay raw
    /// text and are not visited): a cheap test on the text (e.g. "mentions the key `scopes`")
    /// for rules that look for particular keys at any depth; `|_| true` visits every object.
    /// The test must not reject text that can hold what the rule looks for; keys may be written
    /// with escapes (`\u0073`), so a test for a key name should accept any text with a
    /// backslash. Values already replaced by a [`Value`] are always visited. After an error the
    /// value is put back, as far as `visit` left it.
    pub fn walk_objects_if(
        &mut self,
        may_hold: impl FnMut(&str) -> bool,
        visit: &mut ObjectVisitor,
    ) -> Result<(), FieldError> {
        self.containers_if(may_hold, |key, value| walk_objects_under(key, value, visit))
    }

    /// Each entry's key and value text, for the host's span index (the `view` module), which reads
    /// through this type the records its scanner leaves to serde_json. `None` for a value a
    /// rule set as a parsed [`Value`] (a record just read has none).
    pub(crate) fn entry_texts(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.text()))
    }

    /// The whole record as a map (the slow path, for rules written against `Map`).
    pub fn to_map(&self) -> Result<Map<String, Value>, FieldError> {
        let mut map = Map::new();
        for (key, slot) in &self.entries {
            map.insert(key.to_string(), slot.parse(key)?);
        }
        Ok(map)
    }

    pub fn from_map(map: Map<String, Value>) -> RawRecord<'static> {
        RawRecord {
            entries: map
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), Held::Value(Box::new(v))))
                .collect(),
        }
    }
}

/// `json` as entry text, if it is exactly one JSON value (whitespace around it allowed).
fn checked_json(key: &str, json: String) -> Result<Box<str>, FieldError> {
    // The scanner leaves what it is unsure of (deep nesting, errors) to serde_json.
    if !scan::is_one_value(&json) {
        serde_json::from_str::<&RawValue>(&json)
            .map_err(|e| FieldError::new(key, format!("not valid JSON text ({e})")))?;
    }
    Ok(trimmed(json.into_boxed_str()))
}

/// JSON text without the whitespace around it: a value's first byte tells whether it is a
/// container (see `Held::is_container`), which whitespace would hide.
fn trimmed(json: Box<str>) -> Box<str> {
    let is_ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    if json.starts_with(is_ws) || json.ends_with(is_ws) {
        json.trim_matches(is_ws).into()
    } else {
        json
    }
}

/// Whether a string must be escaped to be a JSON string body (quote, backslash, control).
pub(crate) fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

fn encode_error(e: serde_json::Error) -> RuleError {
    RuleError::new(format!("cannot serialise the migrated record: {e}"))
}

/// Records with more top-level keys than this find repeated keys with a hash map.
const INDEX_KEYS_ABOVE: usize = 32;

/// A record's entries as they are read. A key that appears twice keeps its first place and
/// takes its last value, as in the `Map` serde_json builds (which the slow path sees).
struct Entries<'a> {
    entries: Vec<(Cow<'a, str>, Held<'a>)>,
    /// Past a few keys, repeated keys are looked up by hash rather than by scanning.
    index: Option<HashMap<String, usize>>,
    /// One bit per [`key_bit`] seen: a key whose bit is clear is new, which spares most
    /// records any key comparison.
    seen: u64,
}

/// A bit of a 64-bit filter of keys (keys that differ in length, first or last byte rarely
/// share it). Every reader of a record's keys notes them in one: a key whose bit is clear is
/// new. The three bytes are mixed by a multiply: the earlier `len * 7 ^ last` gave `model` and
/// `timestamp` one bit, which sent every request-log record to a pairwise key comparison.
#[inline]
pub(crate) fn key_bit(key: &[u8]) -> u64 {
    let (first, last) = match key {
        [] => (0, 0),
        [first, .., last] => (*first, *last),
        [only] => (*only, *only),
    };
    let x = key.len() as u64 | u64::from(first) << 8 | u64::from(last) << 16;
    1 << (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

impl<'a> Entries<'a> {
    /// Entries read into `storage` (empty).
    fn in_storage(storage: Vec<(Cow<'a, str>, Held<'a>)>) -> Self {
        Entries {
            entries: storage,
            index: None,
            seen: 0,
        }
    }

    /// Adds an entry. Inlined into the scanner: called through a closure, each entry was built
    /// on the stack and copied once more, which cost a store-forwarding stall per entry (a
    /// twentieth of a hop's time).
    #[inline(always)]
    fn push(&mut self, key: Cow<'a, str>, value: Held<'a>) {
        match self.find(&key) {
            Some(i) => self.entries[i].1 = value,
            None => {
                self.entries.push((key, value));
                self.index_if_large();
            }
        }
    }

    /// The position of `key` if it was seen before; notes it as seen (and indexes it when the
    /// index is in use, for the entry about to be pushed).
    #[inline(always)]
    fn find(&mut self, key: &str) -> Option<usize> {
        let bit = key_bit(key.as_bytes());
        let seen = match &mut self.index {
            Some(index) => {
                let found = index.get(key).copied();
                if found.is_none() {
                    index.insert(key.to_owned(), self.entries.len());
                }
                found
            }
            None if self.seen & bit == 0 => None,
            None => self.entries.iter().position(|(k, _)| k == key),
        };
        self.seen |= bit;
        seen
    }

    fn index_if_large(&mut self) {
        if self.index.is_none() && self.entries.len() > INDEX_KEYS_ABOVE {
            self.index = Some(
                self.entries
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.to_string(), i))
                    .collect(),
            );
        }
    }
}

/// Deserialises a JSON object into borrowed keys and raw values.
impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

struct EntriesVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
    type Value = Entries<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Entries<'a>, M::Error> {
        let mut entries = Entries::in_storage(Vec::with_capacity(map.size_hint().unwrap_or(8)));
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let raw: &'de RawValue = map.next_value()?;
            entries.push(key, Held::Raw(raw.get()));
        }
        Ok(entries)
    }
}

/// A key borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::walk_record_mut;
    use serde_json::json;

    fn roundtrip(text: &str) -> String {
        let r = RawRecord::parse(text.as_bytes()).unwrap();
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn untouched_values_pass_through_byte_for_byte() {
        assert_eq!(
            roundtrip(r#"{"a":1.50,"b":{"x": [1, 2]},"c\n":"é\u00e9"}"#),
            r#"{"a":1.50,"b":{"x": [1, 2]},"c\n":"é\u00e9"}"#
        );
        assert_eq!(roundtrip(r#" { "a" : 1 } "#), r#"{"a":1}"#);
    }

    #[test]
    fn edits_keep_positions() {
        let mut r = RawRecord::parse(br#"{"p":1,"c":2,"l":3}"#).unwrap();
        r.replace("p", [("usage", json!({"in": 1}))]).unwrap();
        r.remove("c").unwrap();
        r.insert("s", json!(1)).unwrap();
        r.insert("l", json!(9)).unwrap();
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"usage":{"in":1},"l":9,"s":1}"#
        );
    }

    #[test]
    fn typed_reads_name_the_field() {
        let r = RawRecord::parse(br#"{"n":"twelve","m":12,"f":-1}"#).unwrap();
        assert_eq!(r.u64("m").unwrap(), Some(12));
        assert!(r
            .u64("n")
            .unwrap_err()
            .message
            .contains("non-negative integer"));
        assert!(r.f64("f").is_err());
        assert_eq!(r.u64("absent").unwrap(), None);
    }

    #[test]
    fn repeated_keys_keep_the_first_place_and_the_last_value_like_map() {
        let line = r#"{"a":1,"b":2,"a":3}"#;
        let map: Map<String, Value> = serde_json::from_str(line).unwrap();
        assert_eq!(roundtrip(line), serde_json::to_string(&map).unwrap());
        assert_eq!(roundtrip(line), r#"{"a":3,"b":2}"#);
        // Past the size where repeated keys are looked up by hash.
        let mut line = String::from("{");
        for i in 0..100 {
            line.push_str(&format!(r#""k{}":{i},"#, i % 40));
        }
        line.push_str(r#""k\u0030":"escaped"}"#);
        let map: Map<String, Value> = serde_json::from_str(&line).unwrap();
        assert_eq!(roundtrip(&line), serde_json::to_string(&map).unwrap());
        let r = RawRecord::parse(line.as_bytes()).unwrap();
        assert_eq!(r.keys().count(), 40);
        assert_eq!(r.raw("k0"), Some(r#""escaped""#));
        assert_eq!(r.u64("k39").unwrap(), Some(79));
    }

    #[test]
    fn f64_reads_numbers_as_serde_json_does() {
        // serde_json's default float parsing is not correctly rounded; `str::parse` is, and
        // differs here by one unit in the last place.
        let text = "3.363491038161739523";
        let slow = serde_json::from_str::<Value>(text)
            .unwrap()
            .as_f64()
            .unwrap();
        assert_ne!(text.parse::<f64>().unwrap(), slow);
        let line = format!(r#"{{"x":{text},"n":12,"big":18446744073709551615}}"#);
        let r = RawRecord::parse(line.as_bytes()).unwrap();
        assert_eq!(r.f64("x").unwrap(), Some(slow));
        assert_eq!(r.f64("n").unwrap(), Some(12.0));
        assert_eq!(r.f64("big").unwrap(), Some(u64::MAX as f64));
    }

    #[test]
    fn raw_text_values_are_written_as_they_are() {
        let mut r = RawRecord::parse(br#"{"a":1,"b":2}"#).unwrap();
        r.replace(
            "a",
            [(
                "m",
                RawValue::from_string(r#"{"x":1.50,"y":null}"#.into()).unwrap(),
            )],
        )
        .unwrap();
        r.insert("b", RawValue::from_string("[1, 2]".into()).unwrap())
            .unwrap();
        r.insert("c", RawValue::from_string("7".into()).unwrap())
            .unwrap();
        assert_eq!(r.raw("m"), Some(r#"{"x":1.50,"y":null}"#));
        assert!(r.is_container("m") && r.is_container("b") && !r.is_container("c"));
        assert_eq!(r.u64("c").unwrap(), Some(7));
        assert_eq!(r.get("m").unwrap(), Some(json!({"x": 1.5, "y": null})));
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"m":{"x":1.50,"y":null},"b":[1, 2],"c":7}"#
        );
        assert_eq!(
            serde_json::to_string(&r.to_map().unwrap()).unwrap(),
            r#"{"m":{"x":1.5,"y":null},"b":[1,2],"c":7}"#
        );
    }

    #[test]
    fn json_text_set_by_a_rule_is_checked_and_written_as_it_is() {
        let mut r = RawRecord::parse(br#"{"a":1,"b":2}"#).unwrap();
        r.replace("a", [("m", FieldValue::json(r#"{"x":1.50, "y":[null]}"#))])
            .unwrap();
        r.insert("b", FieldValue::json("\"two\"")).unwrap();
        r.insert(String::from("c"), FieldValue::json(" 7 "))
            .unwrap();
        r.replace("absent", [("z", FieldValue::json("1"))]).unwrap();
        assert_eq!(r.raw("m"), Some(r#"{"x":1.50, "y":[null]}"#));
        assert_eq!(r.u64("c").unwrap(), Some(7));
        assert_eq!(r.get("b").unwrap(), Some(json!("two")));
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"m":{"x":1.50, "y":[null]},"b":"two","c":7}"#
        );
        // Whitespace around a value would hide that it is a container.
        r.insert("o", FieldValue::json(" {\"k\":[]}\n")).unwrap();
        r.insert("p", RawValue::from_string(" [1] ".to_owned()).unwrap())
            .unwrap();
        assert!(r.is_container("o") && r.is_container("p"));
        assert_eq!((r.raw("o"), r.raw("p")), (Some(r#"{"k":[]}"#), Some("[1]")));
        // Valid however deep (the scanner leaves deep nesting to serde_json).
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        r.insert("d", FieldValue::json(deep.clone())).unwrap();
        assert_eq!(r.raw("d"), Some(deep.as_str()));
        // Refused, naming the key, and the record is left as it was.
        for bad in ["", "{", "1 2", "[1,]", "\"\u{1}\"", "nul", "{\"a\":}"] {
            let e = r.insert("b", FieldValue::json(bad)).unwrap_err();
            assert_eq!(e.field, "b", "{bad:?}");
            assert!(
                e.message.contains("not valid JSON"),
                "{bad:?}: {}",
                e.message
            );
            let e = r
                .replace(
                    "m",
                    [
                        ("k", FieldValue::from(json!(1))),
                        ("n", FieldValue::json(bad)),
                    ],
                )
                .unwrap_err();
            assert_eq!(e.field, "n", "{bad:?}");
        }
        assert_eq!(r.get("b").unwrap(), Some(json!("two")));
        assert!(r.contains_key("m") && !r.contains_key("n") && !r.contains_key("k"));
    }

    #[test]
    fn numbers_set_by_a_rule_read_back_as_values() {
        let mut r = RawRecord::parse(br#"{"v":1}"#).unwrap();
        r.insert("v", json!(2)).unwrap();
        r.insert("f", json!(0.1)).unwrap();
        assert_eq!(r.raw("v"), None, "a value, not raw text");
        assert_eq!(r.get("v").unwrap(), Some(json!(2)));
        assert_eq!(r.u64("v").unwrap(), Some(2));
        assert_eq!(r.f64("f").unwrap(), Some(0.1));
        assert!(!r.is_container("v"));
        assert_eq!(
            r.to_map().unwrap(),
            json!({"v": 2, "f": 0.1}).as_object().unwrap().clone()
        );
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"v":2,"f":0.1}"#);
    }

    /// The wrappers kept for plugins built against 1.0–1.3 do what they did: each gives the
    /// record its single replacement gives.
    #[test]
    #[allow(deprecated)]
    fn for_each_container_if_leaves_rejected_containers_raw() {
        let mut r =
            RawRecord::parse(br#"{"a":{"k": 1},"b":[{"k": 2}],"c":{"z": 3},"d":"k"}"#).unwrap();
        r.set("e", json!({"z": 4}));
        let mut seen = Vec::new();
        r.for_each_container_if(
            |text| text.contains("\"k\""),
            |key, value| {
                seen.push(key.to_owned());
                value
                    .as_object_mut()
                    .map(|o| o.insert("seen".into(), json!(true)));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, ["a", "b", "e"]);
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"k":1,"seen":true},"b":[{"k":2}],"c":{"z": 3},"d":"k","e":{"z":4,"seen":true}}"#
        );
    }

    #[test]
    #[allow(deprecated)]
    fn deprecated_setters_and_replacers_give_what_insert_and_replace_give() {
        let line = br#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}"#;
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let write = |r: &RawRecord| {
            let mut out = Vec::new();
            r.write(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let mut old = RawRecord::parse(line).unwrap();
        old.set("a", json!({"x": 1}));
        old.set("new", json!(7));
        old.set_json("b", " [1, 2] ".to_owned()).unwrap();
        old.set_raw("c", raw("{\"y\": 2.50}"));
        old.replace_key(
            "d",
            vec![("d1".into(), json!(1)), ("d2".into(), json!("t"))],
        );
        old.replace_key_json("e", "e1", "{\"z\":null}".to_owned())
            .unwrap();
        old.replace_key_raw("f", vec![("f1".into(), raw(" 0.10 "))]);
        old.replace_key("absent", vec![("no".into(), json!(1))]);
        assert_eq!(
            old.set_json("bad", "{".to_owned()).unwrap_err().field,
            "bad"
        );
        assert_eq!(
            old.replace_key_json("a", "bad", "[".to_owned())
                .unwrap_err()
                .field,
            "bad"
        );
        let mut new = RawRecord::parse(line).unwrap();
        new.insert("a", json!({"x": 1})).unwrap();
        new.insert("new", json!(7)).unwrap();
        new.insert("b", FieldValue::json(" [1, 2] ")).unwrap();
        new.insert("c", raw("{\"y\": 2.50}")).unwrap();
        new.replace("d", [("d1", json!(1)), ("d2", json!("t"))])
            .unwrap();
        new.replace("e", [("e1", FieldValue::json("{\"z\":null}"))])
            .unwrap();
        new.replace("f", [("f1", raw(" 0.10 "))]).unwrap();
        new.replace("absent", [("no", json!(1))]).unwrap();
        let want = r#"{"a":{"x":1},"b":[1, 2],"c":{"y": 2.50},"d1":1,"d2":"t","e1":{"z":null},"f1":0.10,"new":7}"#;
        assert_eq!(write(&new), want);
        assert_eq!(write(&old), want);
        assert_eq!((old.raw("b"), old.raw("c")), (new.raw("b"), new.raw("c")));
        assert!(old.is_container("b") && old.is_container("a") && !old.is_container("new"));

        // `for_each_container` visits every top-level container, arrays included.
        let mut seen = Vec::new();
        old.for_each_container(|key, value| {
            seen.push(key.to_owned());
            if let Some(o) = value.as_object_mut() {
                o.insert("v".into(), json!(1));
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["a", "b", "c", "e1"]);
        assert!(write(&old).starts_with(r#"{"a":{"x":1,"v":1},"b":[1,2],"c":{"y":2.5,"v":1},"#));
    }

    #[test]
    fn walk_objects_if_gives_the_paths_walk_record_mut_gives() {
        let line = r#"{"":{"":{"a":1},"b":[{}]},"k":[[{"x":{}}],{}],"[0]":{"[1]":{}},"s":{"skip":{}},"n":2,"o":{}}"#;
        let mut map: Map<String, Value> = serde_json::from_str(line).unwrap();
        let mut want = Vec::new();
        walk_record_mut(&mut map, &mut |_, path| {
            want.push(path.to_owned());
            Ok(())
        })
        .unwrap();
        want.remove(0); // the record itself
        want.retain(|p| !p.starts_with('s'));
        let mut r = RawRecord::parse(line.as_bytes()).unwrap();
        let mut seen = Vec::new();
        r.walk_objects_if(|text| !text.contains("skip"), &mut |object, path| {
            seen.push(path.to_owned());
            object.insert("v".into(), json!(1));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, want);
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with(r#"{"":{"":{"a":1,"v":1},"b":[{"v":1}],"v":1},"#),
            "{out}"
        );
        assert!(
            out.contains(r#""s":{"skip":{}},"n":2,"o":{"v":1}}"#),
            "{out}"
        );
        let e = r
            .walk_objects_if(|_| true, &mut |_, path| Err(FieldError::new(path, "no")))
            .unwrap_err();
        assert_eq!(e.field, "");
        assert!(
            r.get("").unwrap().unwrap().is_object(),
            "the value is put back after an error"
        );
    }

    #[test]
    fn expect_schema_version_reads_like_the_map_helper() {
        for (line, expected) in [
            (r#"{"a":1}"#, None),
            (r#"{"schema_version":1}"#, None),
            (r#"{"schema_version":1}"#, Some(1)),
            (r#"{"schema_version":2}"#, Some(1)),
            (r#"{"schema_version":"1"}"#, Some(1)),
            (r#"{"schema_version":1.0}"#, Some(1)),
            (r#"{"a":1}"#, Some(1)),
        ] {
            let map: Map<String, Value> = serde_json::from_str(line).unwrap();
            let want = crate::json::expect_schema_version(&map, expected);
            assert_eq!(
                RawRecord::parse(line.as_bytes())
                    .unwrap()
                    .expect_schema_version(expected),
                want,
                "{line}"
            );
            assert_eq!(
                RawRecord::from_map(map).expect_schema_version(expected),
                want,
                "{line}"
            );
        }
    }

    #[test]
    fn bad_input_reads_like_the_slow_path() {
        assert!(RawRecord::parse(b"[1,2]")
            .unwrap_err()
            .message
            .contains("must be a JSON object, found array"));
        assert!(RawRecord::parse(b"{\"a\":")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
    }
}

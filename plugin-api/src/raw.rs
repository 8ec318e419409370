//! A record as a data rule sees it on the fast path: its top-level keys in order, each value
//! kept as the raw JSON text it arrived as until a rule reads or replaces it. Values a hop does
//! not touch are copied through as bytes — no tree is built and nothing is re-printed — which
//! is most of a record for most hops.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::json::{type_name, wrong_type};
use crate::rules::{FieldError, RuleError};

/// One top-level value: untouched raw text, or a value a rule produced.
#[derive(Debug, Clone)]
pub enum Slot<'a> {
    Raw(&'a RawValue),
    Value(Value),
}

/// A record's top-level entries, in order.
#[derive(Debug, Clone, Default)]
pub struct RawRecord<'a> {
    entries: Vec<(Cow<'a, str>, Slot<'a>)>,
}

impl<'a> RawRecord<'a> {
    /// Parses one record (a JSON object). Errors read like the slow path's.
    pub fn parse(line: &'a [u8]) -> Result<RawRecord<'a>, RuleError> {
        let text = std::str::from_utf8(line).map_err(|e| RuleError::new(format!("not valid JSON (invalid UTF-8: {e})")))?;
        let trimmed = text.trim_start();
        if !trimmed.starts_with('{') {
            let value: Value = serde_json::from_str(text).map_err(|e| RuleError::new(format!("not valid JSON ({e})")))?;
            return Err(RuleError::new(format!("a record must be a JSON object, found {}", type_name(&value))));
        }
        let entries: Entries<'a> = serde_json::from_str(text).map_err(|e| RuleError::new(format!("not valid JSON ({e})")))?;
        Ok(RawRecord { entries: entries.0 })
    }

    /// Appends the record as compact JSON.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), RuleError> {
        out.push(b'{');
        for (i, (key, slot)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, key.as_ref()).map_err(encode_error)?;
            out.push(b':');
            match slot {
                Slot::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
                Slot::Value(v) => serde_json::to_writer(&mut *out, v).map_err(encode_error)?,
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

    /// The raw JSON text of `key`, if it has not been replaced.
    pub fn raw(&self, key: &str) -> Option<&str> {
        match &self.entries[self.position(key)?].1 {
            Slot::Raw(r) => Some(r.get()),
            Slot::Value(_) => None,
        }
    }

    /// The value of `key`, parsed.
    pub fn get(&self, key: &str) -> Result<Option<Value>, FieldError> {
        let Some(i) = self.position(key) else { return Ok(None) };
        match &self.entries[i].1 {
            Slot::Raw(r) => serde_json::from_str(r.get()).map(Some).map_err(|e| FieldError::new(key, format!("unreadable value ({e})"))),
            Slot::Value(v) => Ok(Some(v.clone())),
        }
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

    /// A non-negative number field, if present.
    pub fn f64(&self, key: &str) -> Result<Option<f64>, FieldError> {
        match self.raw(key).map(str::parse::<f64>) {
            Some(Ok(n)) if n >= 0.0 && n.is_finite() => Ok(Some(n)),
            _ => self.typed(key, |v| v.as_f64().filter(|n| *n >= 0.0), "a non-negative number"),
        }
    }

    /// A string field, if present.
    pub fn str(&self, key: &str) -> Result<Option<String>, FieldError> {
        self.typed(key, |v| v.as_str().map(str::to_owned), "a string")
    }

    fn typed<T>(&self, key: &str, read: impl Fn(&Value) -> Option<T>, expected: &str) -> Result<Option<T>, FieldError> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => read(&v).map(Some).ok_or_else(|| wrong_type(key, expected, &v)),
        }
    }

    /// Whether the raw value of `key` is an object or an array (may hold nested fields).
    pub fn is_container(&self, key: &str) -> bool {
        match self.position(key).map(|i| &self.entries[i].1) {
            Some(Slot::Raw(r)) => matches!(r.get().as_bytes().first(), Some(b'{' | b'[')),
            Some(Slot::Value(v)) => v.is_object() || v.is_array(),
            None => false,
        }
    }

    /// Sets `key`, keeping its position if present, else appending it.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.position(key) {
            Some(i) => self.entries[i].1 = Slot::Value(value),
            None => self.entries.push((Cow::Owned(key.to_owned()), Slot::Value(value))),
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

    /// Replaces `old` by `entries` at the position `old` had; nothing if `old` is absent.
    pub fn replace_key(&mut self, old: &str, entries: Vec<(String, Value)>) {
        let Some(i) = self.position(old) else { return };
        let new = entries.into_iter().map(|(k, v)| (Cow::Owned(k), Slot::Value(v)));
        self.entries.splice(i..=i, new);
    }

    /// Parses every object or array value and hands it to `visit` (for rules that apply at any
    /// depth); scalars stay raw.
    pub fn for_each_container(&mut self, mut visit: impl FnMut(&str, &mut Value) -> Result<(), FieldError>) -> Result<(), FieldError> {
        for (key, slot) in &mut self.entries {
            let is_container = match slot {
                Slot::Raw(r) => matches!(r.get().as_bytes().first(), Some(b'{' | b'[')),
                Slot::Value(v) => v.is_object() || v.is_array(),
            };
            if !is_container {
                continue;
            }
            if let Slot::Raw(r) = slot {
                let parsed = serde_json::from_str(r.get()).map_err(|e| FieldError::new(key.as_ref(), format!("unreadable value ({e})")))?;
                *slot = Slot::Value(parsed);
            }
            if let Slot::Value(v) = slot {
                visit(key, v)?;
            }
        }
        Ok(())
    }

    /// The whole record as a map (the slow path, for rules written against `Map`).
    pub fn to_map(&self) -> Result<Map<String, Value>, FieldError> {
        let mut map = Map::new();
        for (key, slot) in &self.entries {
            let value = match slot {
                Slot::Raw(r) => serde_json::from_str(r.get()).map_err(|e| FieldError::new(key.as_ref(), format!("unreadable value ({e})")))?,
                Slot::Value(v) => v.clone(),
            };
            map.insert(key.to_string(), value);
        }
        Ok(map)
    }

    pub fn from_map(map: Map<String, Value>) -> RawRecord<'static> {
        RawRecord { entries: map.into_iter().map(|(k, v)| (Cow::Owned(k), Slot::Value(v))).collect() }
    }
}

fn encode_error(e: serde_json::Error) -> RuleError {
    RuleError::new(format!("cannot serialise the migrated record: {e}"))
}

/// Deserialises a JSON object into borrowed keys and raw values.
struct Entries<'a>(Vec<(Cow<'a, str>, Slot<'a>)>);

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
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let raw: &'de RawValue = map.next_value()?;
            entries.push((key.0, Slot::Raw(raw)));
        }
        Ok(Entries(entries))
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
    use serde_json::json;

    fn roundtrip(text: &str) -> String {
        let r = RawRecord::parse(text.as_bytes()).unwrap();
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn untouched_values_pass_through_byte_for_byte() {
        assert_eq!(roundtrip(r#"{"a":1.50,"b":{"x": [1, 2]},"c\n":"é\u00e9"}"#), r#"{"a":1.50,"b":{"x": [1, 2]},"c\n":"é\u00e9"}"#);
        assert_eq!(roundtrip(r#" { "a" : 1 } "#), r#"{"a":1}"#);
    }

    #[test]
    fn edits_keep_positions() {
        let mut r = RawRecord::parse(br#"{"p":1,"c":2,"l":3}"#).unwrap();
        r.replace_key("p", vec![("usage".into(), json!({"in": 1}))]);
        r.remove("c").unwrap();
        r.set("s", json!(1));
        r.set("l", json!(9));
        let mut out = Vec::new();
        r.write(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"usage":{"in":1},"l":9,"s":1}"#);
    }

    #[test]
    fn typed_reads_name_the_field() {
        let r = RawRecord::parse(br#"{"n":"twelve","m":12,"f":-1}"#).unwrap();
        assert_eq!(r.u64("m").unwrap(), Some(12));
        assert!(r.u64("n").unwrap_err().message.contains("non-negative integer"));
        assert!(r.f64("f").is_err());
        assert_eq!(r.u64("absent").unwrap(), None);
    }

    #[test]
    fn bad_input_reads_like_the_slow_path() {
        assert!(RawRecord::parse(b"[1,2]").unwrap_err().message.contains("must be a JSON object, found array"));
        assert!(RawRecord::parse(b"{\"a\":").unwrap_err().message.contains("not valid JSON"));
    }
}

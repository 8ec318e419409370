//! JSON helpers for data rules: typed field access with errors that name the field, walking
//! objects at any depth, and replacing a key in place (records keep their key order).

use serde_json::{Map, Value};

use crate::error::FieldError;

/// `"string"`, `"integer"`, … — for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// An error for `field` whose value is not of the `expected` type.
pub fn wrong_type(field: &str, expected: &str, found: &Value) -> FieldError {
    FieldError::new(
        field,
        format!("expected {expected}, found {} `{found}`", type_name(found)),
    )
}

/// The value `found` at `field`, read by `read` as the type `expected` names: `None` when the
/// field is absent, an error naming the field and what it holds when `read` cannot. What the
/// typed getters of `RawRecord` and `RecordView` share.
pub(crate) fn typed<T>(
    field: &str,
    found: Option<Value>,
    read: impl Fn(&Value) -> Option<T>,
    expected: &str,
) -> Result<Option<T>, FieldError> {
    match found {
        None => Ok(None),
        Some(v) => read(&v)
            .map(Some)
            .ok_or_else(|| wrong_type(field, expected, &v)),
    }
}

/// A non-negative integer field, if present.
pub fn opt_u64(record: &Map<String, Value>, field: &str) -> Result<Option<u64>, FieldError> {
    match record.get(field) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(field, "a non-negative integer", v)),
    }
}

/// A non-negative number field, if present.
pub fn opt_f64(record: &Map<String, Value>, field: &str) -> Result<Option<f64>, FieldError> {
    match record.get(field) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n >= 0.0 => Ok(Some(n)),
            _ => Err(wrong_type(field, "a non-negative number", v)),
        },
    }
}

/// A string field, if present.
pub fn opt_str<'a>(
    record: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, FieldError> {
    match record.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(field, "a string", v)),
    }
}

/// Checks the record's `schema_version` is the one this hop migrates from.
/// `None` means "absent is expected" (0.1.0 records carry none).
pub fn expect_schema_version(
    record: &Map<String, Value>,
    expected: Option<u64>,
) -> Result<(), FieldError> {
    let found = record.get("schema_version");
    match (expected, found) {
        (None, None) => Ok(()),
        (Some(want), Some(v)) if v.as_u64() == Some(want) => Ok(()),
        (None, Some(v)) => Err(FieldError::new(
            "schema_version",
            format!("this record already has schema_version {v}; it is not a 0.1.0 record"),
        )),
        (Some(want), None) => Err(FieldError::new(
            "schema_version",
            format!("missing; a record of this release must have schema_version {want}"),
        )),
        (Some(want), Some(v)) => Err(FieldError::new(
            "schema_version",
            format!(
                "expected {want}, found {v}: the record is not from the release this hop migrates"
            ),
        )),
    }
}

/// Sets `key` to `value`, keeping its position if present, else appending it.
pub fn set(record: &mut Map<String, Value>, key: &str, value: Value) {
    record.insert(key.to_owned(), value);
}

/// Replaces `old` by `entries`, at the position `old` had. Does nothing if `old` is absent.
pub fn replace_key(record: &mut Map<String, Value>, old: &str, entries: Vec<(String, Value)>) {
    if !record.contains_key(old) {
        return;
    }
    let taken = std::mem::take(record);
    let mut entries = Some(entries);
    for (k, v) in taken {
        if k == old {
            for (nk, nv) in entries.take().into_iter().flatten() {
                record.insert(nk, nv);
            }
        } else {
            record.insert(k, v);
        }
    }
}

/// Renames `old` to `new` in `record`, keeping the value and the key's position. `Ok(false)`
/// when `old` is absent; an error naming `new` when it is already there (renaming would lose
/// one of the two values).
///
/// Since plugin-api 1.1.0.
pub fn rename_key(
    record: &mut Map<String, Value>,
    old: &str,
    new: &str,
) -> Result<bool, FieldError> {
    let Some(value) = record.get(old).cloned() else {
        return Ok(false);
    };
    if record.contains_key(new) {
        return Err(FieldError::new(
            new,
            format!(
                "both `{old}` and `{new}` are present: renaming `{old}` would lose one of them"
            ),
        ));
    }
    replace_key(record, old, vec![(new.to_owned(), value)]);
    Ok(true)
}

/// Called with each object found and its path (`keys[0].client`).
pub type ObjectVisitor<'a> =
    dyn FnMut(&mut Map<String, Value>, &str) -> Result<(), FieldError> + 'a;

/// Calls `visit` on every object inside `value` (the value itself included), depth first,
/// with a path such as `keys[0]` for error messages.
pub fn walk_objects_mut(value: &mut Value, visit: &mut ObjectVisitor) -> Result<(), FieldError> {
    walk(value, &mut String::new(), visit)
}

/// Calls `visit` on every object in `value`, the value of a record's key `key` (itself included
/// when it is an object), with the paths [`walk_record_mut`] gives for that record: the one
/// walk under a single entry, which both the text and the view interfaces offer.
pub(crate) fn walk_objects_under(
    key: &str,
    value: &mut Value,
    visit: &mut ObjectVisitor,
) -> Result<(), FieldError> {
    // A record of this one entry, so that every path is the one walk_record_mut gives.
    let mut holder = Map::new();
    holder.insert(key.to_owned(), std::mem::take(value));
    let mut is_holder = true;
    let result = walk_record_mut(&mut holder, &mut |object, path| {
        if std::mem::take(&mut is_holder) {
            Ok(())
        } else {
            visit(object, path)
        }
    });
    *value = holder
        .into_iter()
        .next()
        .map(|(_, v)| v)
        .unwrap_or_default();
    result
}

/// Like [`walk_objects_mut`], starting at a record.
pub fn walk_record_mut(
    record: &mut Map<String, Value>,
    visit: &mut ObjectVisitor,
) -> Result<(), FieldError> {
    let mut path = String::new();
    visit(record, &path)?;
    for (k, v) in record.iter_mut() {
        let len = path.len();
        path.push_str(k);
        walk(v, &mut path, visit)?;
        path.truncate(len);
    }
    Ok(())
}

fn walk(value: &mut Value, path: &mut String, visit: &mut ObjectVisitor) -> Result<(), FieldError> {
    match value {
        Value::Object(map) => {
            visit(map, path)?;
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(v, path, visit)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(v, path, visit)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// `path.field`, or `field` at the top.
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replace_key_keeps_position() {
        let Value::Object(mut m) = json!({"a":1,"b":2,"c":3}) else {
            unreachable!()
        };
        replace_key(
            &mut m,
            "b",
            vec![("x".into(), json!(9)), ("y".into(), json!(8))],
        );
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"a":1,"x":9,"y":8,"c":3}"#
        );
    }

    #[test]
    fn rename_key_keeps_position_and_refuses_to_overwrite() {
        let Value::Object(mut m) = json!({"a":1,"b":2,"c":3}) else {
            unreachable!()
        };
        assert!(rename_key(&mut m, "b", "bee").unwrap());
        assert!(!rename_key(&mut m, "missing", "x").unwrap());
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"a":1,"bee":2,"c":3}"#
        );
        assert_eq!(rename_key(&mut m, "a", "c").unwrap_err().field, "c");
    }

    #[test]
    fn walk_visits_nested_objects_with_paths() {
        let mut v = json!({"keys":[{"a":{"b":1}}]});
        let mut seen = Vec::new();
        walk_objects_mut(&mut v, &mut |_, p| {
            seen.push(p.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec!["", "keys[0]", "keys[0].a"]);
    }

    #[test]
    fn schema_version_mismatch_names_the_field() {
        let Value::Object(m) = json!({"schema_version": 3}) else {
            unreachable!()
        };
        let e = expect_schema_version(&m, Some(1)).unwrap_err();
        assert_eq!(e.field, "schema_version");
        assert!(e.message.contains("expected 1, found 3"));
    }
}

//! TOML helpers for config rules: edit the document in place so that comments, key order and
//! formatting survive, check value types with errors that name the key and the expected type,
//! and keep the file's leading comment block at the top whatever moves below it.

use toml_edit::{DocumentMut, Item, Key, Table, Value};

use crate::error::RuleError;

/// Parses `server.toml`; the error carries toml_edit's line and column.
pub fn parse(content: &str) -> Result<DocumentMut, RuleError> {
    content
        .parse::<DocumentMut>()
        .map_err(|e| RuleError::new(format!("invalid TOML: {}", e.to_string().trim_end())))
}

/// Removes and returns the comment block at the top of the file (the prefix of whatever is
/// rendered first), so a rule can move keys freely and [`put_header`] it back.
pub fn take_header(doc: &mut DocumentMut) -> String {
    with_first_decor(doc, |decor| {
        let header = decor
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_owned();
        decor.set_prefix("");
        header
    })
    .unwrap_or_default()
}

/// Puts `header` back in front of whatever is now rendered first.
pub fn put_header(doc: &mut DocumentMut, header: &str) {
    if header.is_empty() {
        return;
    }
    let placed = with_first_decor(doc, |decor| {
        let rest = decor
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .trim_start_matches('\n');
        let joined = format!("{header}{rest}");
        decor.set_prefix(joined);
    });
    if placed.is_none() {
        let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
        doc.set_trailing(format!("{header}{trailing}"));
    }
}

/// Runs `f` on the decor rendered first: the first top-level key-value, or else the first
/// table. `None` for an empty document.
fn with_first_decor<T>(
    doc: &mut DocumentMut,
    f: impl FnOnce(&mut toml_edit::Decor) -> T,
) -> Option<T> {
    let root = doc.as_table_mut();
    let first_value = root
        .iter()
        .find(|(_, item)| item.is_value())
        .map(|(k, _)| k.to_owned());
    if let Some(key) = first_value {
        let mut key = root.key_mut(&key)?;
        return Some(f(key.leaf_decor_mut()));
    }
    let first_table = root
        .iter()
        .filter_map(|(k, item)| {
            item.as_table()
                .map(|t| (t.position().unwrap_or(isize::MAX), k.to_owned()))
        })
        .min()
        .map(|(_, k)| k)?;
    root.get_mut(&first_table)
        .and_then(Item::as_table_mut)
        .map(|t| f(t.decor_mut()))
}

/// Replaces `old` by `entries` at the position `old` had, keeping the comment that sat above
/// `old` on the first new entry. Returns the removed value, `None` if `old` is absent.
pub fn replace_key(table: &mut Table, old: &str, entries: Vec<(Key, Item)>) -> Option<Item> {
    let index = table.iter().position(|(k, _)| k == old)?;
    let (old_key, old_item) = table.remove_entry(old)?;
    let tail: Vec<(Key, Item)> = drain_from(table, index);
    for (i, (key, item)) in entries.into_iter().enumerate() {
        let key = if i == 0 {
            key.with_leaf_decor(old_key.leaf_decor().clone())
        } else {
            key
        };
        table.insert_formatted(&key, item);
    }
    for (key, item) in tail {
        table.insert_formatted(&key, item);
    }
    Some(old_item)
}

/// Renames `old` to `new` in `table`, in place: the value, its trailing comment, the comment
/// above the key and the key's position are kept. `Ok(false)` when `old` is absent; an error
/// naming both keys when `new` is already there (renaming would lose one of the two values).
///
/// Since plugin-api 1.1.0.
pub fn rename_key(table: &mut Table, old: &str, new: &str) -> Result<bool, RuleError> {
    let Some(item) = table.get(old).cloned() else {
        return Ok(false);
    };
    if table.contains_key(new) {
        return Err(RuleError::at_field(
            new,
            format!(
                "both `{old}` and `{new}` are present: renaming `{old}` would lose one of them"
            ),
        ));
    }
    replace_key(table, old, vec![(Key::new(new), item)]);
    Ok(true)
}

/// Removes `key` and returns it with its decor (the comment above it) and value.
pub fn take_key(table: &mut Table, key: &str) -> Option<(Key, Item)> {
    table.remove_entry(key)
}

/// Removes and returns the entries from `index` on, in order.
fn drain_from(table: &mut Table, index: usize) -> Vec<(Key, Item)> {
    let keys: Vec<String> = table
        .iter()
        .skip(index)
        .map(|(k, _)| k.to_owned())
        .collect();
    keys.iter().filter_map(|k| table.remove_entry(k)).collect()
}

/// A key named `name` carrying `from`'s comment, for moving a key under another name.
pub fn renamed(from: &Key, name: &str) -> Key {
    Key::new(name).with_leaf_decor(from.leaf_decor().clone())
}

fn found(item: &Item) -> String {
    match item {
        Item::Value(v) => format!("{} `{}`", v.type_name(), v.to_string().trim()),
        Item::Table(_) => "a table".to_owned(),
        Item::ArrayOfTables(_) => "an array of tables".to_owned(),
        Item::None => "nothing".to_owned(),
    }
}

fn wrong_type(key: &str, expected: &str, item: &Item) -> RuleError {
    RuleError::at_field(key, format!("expected {expected}, found {}", found(item)))
}

/// A string value, if the key is present.
pub fn get_str(table: &Table, key: &str) -> Result<Option<String>, RuleError> {
    match table.get(key) {
        None => Ok(None),
        Some(item) => item
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| wrong_type(key, "a string", item)),
    }
}

/// An integer within `min..=max`, if the key is present.
pub fn get_int(table: &Table, key: &str, min: i64, max: i64) -> Result<Option<i64>, RuleError> {
    let Some(item) = table.get(key) else {
        return Ok(None);
    };
    let expected = if max == i64::MAX {
        format!("an integer ≥ {min}")
    } else {
        format!("an integer in {min}..={max}")
    };
    match item.as_integer() {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(wrong_type(key, &expected, item)),
    }
}

/// A boolean, if the key is present.
pub fn get_bool(table: &Table, key: &str) -> Result<Option<bool>, RuleError> {
    match table.get(key) {
        None => Ok(None),
        Some(item) => item
            .as_bool()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "a boolean", item)),
    }
}

/// One of `allowed`, if the key is present.
pub fn get_enum(table: &Table, key: &str, allowed: &[&str]) -> Result<Option<String>, RuleError> {
    let Some(item) = table.get(key) else {
        return Ok(None);
    };
    match item.as_str() {
        Some(s) if allowed.contains(&s) => Ok(Some(s.to_owned())),
        _ => Err(wrong_type(
            key,
            &format!("one of {}", allowed.join("|")),
            item,
        )),
    }
}

/// The table `key`, created (after everything else) if absent; an error if `key` holds a
/// value of another kind.
pub fn table_mut<'a>(root: &'a mut Table, key: &str) -> Result<&'a mut Table, RuleError> {
    if !root.contains_key(key) {
        let mut t = Table::new();
        t.set_position(Some(next_position(root)));
        root.insert(key, Item::Table(t));
    }
    let item = root
        .get_mut(key)
        .ok_or_else(|| RuleError::new("table vanished"))?;
    let shown = found(item);
    item.as_table_mut()
        .ok_or_else(|| RuleError::at_field(key, format!("expected a table, found {shown}")))
}

/// A document position after every table already in `root`.
pub fn next_position(root: &Table) -> isize {
    root.iter()
        .filter_map(|(_, item)| item.as_table().and_then(Table::position))
        .max()
        .map_or(0, |p| p + 1)
}

/// Keys of `table` not in `known`, as `prefix.key` for warnings.
pub fn unknown_keys(table: &Table, known: &[&str], prefix: &str) -> Vec<String> {
    table
        .iter()
        .filter(|(k, _)| !known.contains(k))
        .map(|(k, _)| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        })
        .collect()
}

/// A plain value item.
pub fn value(v: impl Into<Value>) -> Item {
    Item::Value(v.into())
}

/// `comment` with the unit word `old` replaced by `new`, as whole words only (`seconds` inside
/// `milliseconds` is not one): a comment trailing a value names the value's unit, and a hop
/// that converts the unit must not leave the comment naming the old one. Since 1.6.0.
pub fn rename_unit(comment: &str, old: &str, new: &str) -> String {
    let mut out = String::with_capacity(comment.len());
    let mut rest = comment;
    while let Some(at) = rest.find(old) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + old.len()..].chars().next();
        let whole =
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric);
        out.push_str(&rest[..at]);
        out.push_str(if whole { new } else { old });
        rest = &rest[at + old.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_key_keeps_place_and_comment() {
        let mut doc = parse("a = 1\n# about b\nb = 2 # trailing\nc = 3\n").unwrap();
        let old = replace_key(doc.as_table_mut(), "b", vec![(Key::new("x"), value(20))]).unwrap();
        assert_eq!(old.as_integer(), Some(2));
        assert_eq!(doc.to_string(), "a = 1\n# about b\nx = 20\nc = 3\n");
    }

    #[test]
    fn header_survives_moving_the_first_key() {
        let mut doc = parse("# top\n# of file\nhost = \"h\"\n\n[t]\nk = 1\n").unwrap();
        let header = take_header(&mut doc);
        assert_eq!(header, "# top\n# of file\n");
        doc.as_table_mut().remove("host");
        put_header(&mut doc, &header);
        assert!(
            doc.to_string().starts_with("# top\n# of file\n[t]"),
            "{doc}"
        );
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        let doc = parse("port = \"eighty\"\n").unwrap();
        let e = get_int(doc.as_table(), "port", 1, 65535).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("port"));
        assert!(
            e.message.contains("an integer in 1..=65535"),
            "{}",
            e.message
        );
        assert!(e.message.contains("eighty"), "{}", e.message);
    }

    #[test]
    fn rename_key_keeps_value_comments_and_place() {
        let mut doc = parse("[t]\na = 1\n# about b\nb = 2 # trailing\nc = 3\n").unwrap();
        let t = table_mut(doc.as_table_mut(), "t").unwrap();
        assert!(rename_key(t, "b", "bee").unwrap());
        assert!(!rename_key(t, "missing", "x").unwrap());
        assert_eq!(
            doc.to_string(),
            "[t]\na = 1\n# about b\nbee = 2 # trailing\nc = 3\n"
        );
        let t = table_mut(doc.as_table_mut(), "t").unwrap();
        let e = rename_key(t, "a", "c").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("c"));
    }

    #[test]
    fn invalid_toml_reports_line() {
        let e = parse("a = 1\nb = = 2\n").unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
    }

    #[test]
    fn rename_unit_replaces_whole_words_only() {
        assert_eq!(
            rename_unit(" # seconds; 30 seconds max", "seconds", "milliseconds"),
            " # milliseconds; 30 milliseconds max"
        );
        assert_eq!(
            rename_unit("# milliseconds", "seconds", "ms"),
            "# milliseconds"
        );
        assert_eq!(rename_unit("# secondsish", "seconds", "ms"), "# secondsish");
        assert_eq!(rename_unit("# (seconds)", "seconds", "ms"), "# (ms)");
    }
}

//! `config/server.toml` 1.0.0 → 2.0.0: the flat 1.0.0 keys move into `[server]`, `[models]`,
//! `[batching]` and `[logging]`; `[workers]` and everything this hop does not know stay as they
//! are.
//!
//! The document is edited, never re-serialised, so that comments and layout survive: a moved
//! key carries the comment that sat above it, a value moved unchanged keeps its trailing
//! comment, and the file's leading comment block stays at the top whatever moves below it.

use std::borrow::Cow;

use plugin_api::toml::{
    get_enum, get_int, get_str, parse, put_header, rename_unit, renamed, table_mut, take_header,
    take_key, unknown_keys, value,
};
use plugin_api::{ConfigMigrationRule, ConfigOutcome, RuleError};
use toml_edit::{Decor, DocumentMut, Item, Key, Table, Value};

/// The config rule of this hop.
pub struct ConfigRule;

/// Where an operator fixes what this rule refuses.
const FILE: &str = "config/server.toml";

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// Top-level keys of the 1.0.0 format.
const V1_KEYS: &[&str] = &[
    "bind_address",
    "port",
    "request_timeout_ms",
    "model_dir",
    "default_model",
    "max_batch_size",
    "log_level",
    "workers",
];

/// Keys of the 1.0.0 (and 2.0.0) `[workers]` table.
const WORKERS_KEYS: &[&str] = &["count", "max_queue"];

/// The 2.0.0 tables this hop fills, with the keys 2.0.0 defines in each. A 1.0.0 file that
/// already has one of them is merged into, not overwritten.
const NEW_TABLES: &[(&str, &[&str])] = &[
    ("server", &["address", "request_timeout"]),
    ("models", &["directory", "default"]),
    ("batching", &["max_batch_size", "max_wait"]),
    ("logging", &["level", "format"]),
];

impl ConfigMigrationRule for ConfigRule {
    fn migrate(&self, content: &str) -> Result<ConfigOutcome, RuleError> {
        let mut doc = parse(content)?;
        let settings = Settings::read(doc.as_table())?;
        let mut warnings = unknown_key_warnings(doc.as_table());
        let header_table = if has_values(doc.as_table()) {
            None
        } else {
            first_table(doc.as_table())
        };
        let header = strip_indentation(take_header(&mut doc));
        let created = restructure(doc.as_table_mut(), &settings, &mut warnings)?;
        arrange_tables(doc.as_table_mut(), &created);
        tidy_table_gaps(&mut doc, header_table.as_deref());
        put_header(&mut doc, &header);
        Ok(ConfigOutcome::new(doc.to_string()).warnings(warnings))
    }

    fn description(&self) -> String {
        "flat keys → [server], [models], [batching], [logging] tables; [workers] unchanged"
            .to_owned()
    }
}

/// The 1.0.0 values this hop computes new values from; reading them validates every key the
/// 1.0.0 format defines, so that nothing is edited before the whole file is known to be good.
struct Settings {
    /// `"<bind_address>:<port>"`, when both are present.
    address: Option<String>,
    /// `request_timeout_ms` in its 2.0.0 form (`"30s"`, `"1500ms"`).
    request_timeout: Option<String>,
}

impl Settings {
    fn read(root: &Table) -> Result<Self, RuleError> {
        let bind_address = get_str(root, "bind_address")?;
        let port = get_int(root, "port", 1, 65535)?;
        let timeout = get_int(root, "request_timeout_ms", 0, i64::MAX)?;
        get_str(root, "model_dir")?;
        get_str(root, "default_model")?;
        get_int(root, "max_batch_size", 1, i64::MAX)?;
        get_enum(root, "log_level", LOG_LEVELS)?;
        check_workers(root)?;
        Ok(Settings {
            address: server_address(bind_address, port)?,
            request_timeout: timeout.map(duration_text),
        })
    }
}

/// `[workers]` must be a table whose `count` and `max_queue`, when present, are integers ≥ 1.
fn check_workers(root: &Table) -> Result<(), RuleError> {
    let Some(item) = root.get("workers") else {
        return Ok(());
    };
    let workers = std_table(item).ok_or_else(|| {
        RuleError::at_field(
            "workers",
            format!("expected a table, found {}", describe(item)),
        )
    })?;
    for key in WORKERS_KEYS {
        get_int(&workers, key, 1, i64::MAX).map_err(|e| e.with_field(format!("workers.{key}")))?;
    }
    Ok(())
}

/// `item` as a standard table: an inline table (`workers = { count = 4 }`) is one too.
fn std_table(item: &Item) -> Option<Cow<'_, Table>> {
    match item {
        Item::Table(t) => Some(Cow::Borrowed(t)),
        Item::Value(Value::InlineTable(t)) => Some(Cow::Owned(t.clone().into_table())),
        _ => None,
    }
}

/// What an item is, for error messages.
fn describe(item: &Item) -> String {
    match item {
        Item::Value(v) => format!("{} `{}`", v.type_name(), v.to_string().trim()),
        Item::Table(_) => "a table".to_owned(),
        Item::ArrayOfTables(_) => "an array of tables".to_owned(),
        Item::None => "nothing".to_owned(),
    }
}

/// `[server] address`: both halves are needed; one without the other is refused rather than
/// guessed, since a wrong listen address is worse than a stopped migration.
fn server_address(bind: Option<String>, port: Option<i64>) -> Result<Option<String>, RuleError> {
    match (bind, port) {
        (None, None) => Ok(None),
        (Some(bind), Some(port)) => Ok(Some(format!("{}:{port}", host_part(&bind)?))),
        (Some(_), None) => Err(missing_half("port", "bind_address")),
        (None, Some(_)) => Err(missing_half("bind_address", "port")),
    }
}

fn missing_half(missing: &str, present: &str) -> RuleError {
    RuleError::at_field(
        missing,
        format!(
            "missing: `{present}` is set but `{missing}` is not, and 2.0.0 needs both to build \
             [server] address; add `{missing}` to {FILE}"
        ),
    )
}

/// The host part of `address`: IPv6 addresses (they contain `:`) go in brackets, unless they
/// already are. A host with a single `:` is a `host:port` pair, which 1.0.0 does not allow
/// (the port has its own key): refused, since bracketing it would make a wrong address.
fn host_part(bind: &str) -> Result<Cow<'_, str>, RuleError> {
    let bracketed = bind.starts_with('[') && bind.ends_with(']');
    if bracketed {
        return Ok(Cow::Borrowed(bind));
    }
    if bind.contains(['[', ']']) || bind.matches(':').count() == 1 {
        return Err(RuleError::at_field(
            "bind_address",
            format!("expected a host name or an IP address without a port, found `{bind}`"),
        ));
    }
    Ok(if bind.contains(':') {
        Cow::Owned(format!("[{bind}]"))
    } else {
        Cow::Borrowed(bind)
    })
}

/// Milliseconds in the 2.0.0 duration form: whole seconds as `"<n>s"`, else `"<n>ms"`.
fn duration_text(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The header without the indentation of the key it sat above (which ends it), so that
/// whatever is now first starts at the beginning of its line.
fn strip_indentation(mut header: String) -> String {
    let kept = header.trim_end_matches([' ', '\t']).len();
    header.truncate(kept);
    header
}

/// One warning per key this hop does not know, in document order; they are all kept.
fn unknown_key_warnings(root: &Table) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, item) in root.iter() {
        let known_inside = match key {
            "workers" => Some(WORKERS_KEYS),
            _ if V1_KEYS.contains(&key) => continue,
            _ => NEW_TABLES
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, keys)| *keys),
        };
        match (known_inside, std_table(item)) {
            (Some(known), Some(table)) => warnings.extend(
                unknown_keys(&table, known, key)
                    .into_iter()
                    .map(|k| format!("unknown key `{k}` kept as it is")),
            ),
            _ if item.is_table() || item.is_array_of_tables() => {
                warnings.push(format!("unknown key `{key}` (a table) kept as it is"));
            }
            _ => warnings.push(format!("unknown key `{key}` kept as it is")),
        }
    }
    warnings
}

/// A key on its way into a table, with the 1.0.0 key(s) it came from for warnings.
struct Moved {
    from: &'static str,
    key: Key,
    item: Item,
}

/// Moves the 1.0.0 keys into their 2.0.0 tables; returns the tables it created.
fn restructure(
    root: &mut Table,
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Result<Vec<&'static str>, RuleError> {
    let mut created = Vec::new();
    let server = [
        settings.address.as_deref().map(|a| address_entry(root, a)),
        settings
            .request_timeout
            .as_deref()
            .and_then(|t| timeout_entry(root, t)),
    ];
    let models = [
        move_entry(root, "model_dir", "directory"),
        move_entry(root, "default_model", "default"),
    ];
    let batching = [move_entry(root, "max_batch_size", "max_batch_size")];
    let logging = [move_entry(root, "log_level", "level")];
    let mut fill = |name, entries: Vec<Option<Moved>>, default| {
        let entries = entries.into_iter().flatten().collect();
        fill_table(root, name, entries, default, &mut created, warnings)
    };
    fill("server", server.into(), None)?;
    fill("models", models.into(), None)?;
    fill("batching", batching.into(), Some(("max_wait", "10ms")))?;
    fill("logging", logging.into(), Some(("format", "text")))?;
    Ok(created)
}

/// Puts `entries` (and `default`, unless the key is already there) into the table `name`,
/// creating it only when it gets something. A key the table already has wins over the moved
/// one, which is dropped with a warning.
fn fill_table(
    root: &mut Table,
    name: &'static str,
    entries: Vec<Moved>,
    default: Option<(&str, &str)>,
    created: &mut Vec<&'static str>,
    warnings: &mut Vec<String>,
) -> Result<(), RuleError> {
    if entries.is_empty() && default.is_none() {
        return Ok(());
    }
    if !root.contains_key(name) {
        created.push(name);
    }
    let table = target_table(root, name)?;
    for moved in entries {
        let key = moved.key.get().to_owned();
        if table.contains_key(&key) {
            warnings.push(format!(
                "`{}` (now {}) not applied: [{name}] {key} is already set and was kept",
                moved.from,
                moved.item.to_string().trim()
            ));
        } else {
            table.insert_formatted(&moved.key, moved.item);
        }
    }
    if let Some((key, text)) = default {
        if !table.contains_key(key) {
            table.insert(key, value(text));
        }
    }
    Ok(())
}

/// The table `name` as a `[name]` section: an inline or dotted table the file already has
/// becomes one, so that everything this hop adds lands in a section of its own.
fn target_table<'a>(root: &'a mut Table, name: &str) -> Result<&'a mut Table, RuleError> {
    if let Some(item) = root.get_mut(name) {
        if matches!(item, Item::Value(Value::InlineTable(_))) {
            let taken = std::mem::take(item);
            *item = match taken.into_table() {
                Ok(mut table) => {
                    table.fmt();
                    Item::Table(table)
                }
                Err(other) => other,
            };
            header_comment_to_table(root, name);
        }
    }
    let table = table_mut(root, name)?;
    table.set_dotted(false);
    Ok(table)
}

/// A key that now names a `[table]` section: the comment that sat above `key = { … }` goes
/// above the section header, and the spacing around the key (meant for `=`) is dropped.
fn header_comment_to_table(root: &mut Table, name: &str) {
    let Some(mut key) = root.key_mut(name) else {
        return;
    };
    let above = comment_lines(key.leaf_decor());
    *key.leaf_decor_mut() = Decor::new("", "");
    if let Some(table) = root.get_mut(name).and_then(Item::as_table_mut) {
        table.decor_mut().set_prefix(format!("\n{above}"));
    }
}

/// Takes `old` out of the top level as `new`, with the comment above it and, its value being
/// unchanged, the value's trailing comment.
fn move_entry(root: &mut Table, old: &'static str, new: &str) -> Option<Moved> {
    let (key, mut item) = take_key(root, old)?;
    let key = tidy_key(renamed(&key, new));
    if let Some(v) = item.as_value_mut() {
        let suffix = trailing_comment(v).unwrap_or_default();
        v.decor_mut().set_prefix(" ");
        v.decor_mut().set_suffix(suffix);
    }
    Some(Moved {
        from: old,
        key,
        item,
    })
}

/// `[server] address` from `bind_address` and `port`: the comments above both go above it,
/// and their trailing comments follow it (the second one on a line of its own above, when
/// both had one).
fn address_entry(root: &mut Table, address: &str) -> Moved {
    let mut above = String::new();
    let mut trailing: Option<String> = None;
    for old in ["bind_address", "port"] {
        let Some((key, item)) = take_key(root, old) else {
            continue;
        };
        above.push_str(&comment_lines(key.leaf_decor()));
        match (item.as_value().and_then(trailing_comment), &trailing) {
            (Some(comment), None) => trailing = Some(comment),
            (Some(comment), Some(_)) => above.push_str(&format!("{}\n", comment.trim())),
            (None, _) => {}
        }
    }
    let key = Key::new("address").with_leaf_decor(Decor::new(above, " "));
    Moved {
        from: "bind_address`, `port",
        key,
        item: new_value(address, trailing),
    }
}

/// `[server] request_timeout` from `request_timeout_ms`, with its comments.
fn timeout_entry(root: &mut Table, timeout: &str) -> Option<Moved> {
    let (key, item) = take_key(root, "request_timeout_ms")?;
    // `"30s"` or `"1500ms"`: a comment naming milliseconds now names the unit written.
    let unit = if timeout.ends_with("ms") {
        "milliseconds"
    } else {
        "seconds"
    };
    let trailing = item
        .as_value()
        .and_then(trailing_comment)
        .map(|c| rename_unit(&c, "milliseconds", unit));
    let key = tidy_key(renamed(&key, "request_timeout"));
    Some(Moved {
        from: "request_timeout_ms",
        key,
        item: new_value(timeout, trailing),
    })
}

/// A string value written `key = "text"`, followed by `trailing` (spaces and a comment).
fn new_value(text: &str, trailing: Option<String>) -> Item {
    let mut v = Value::from(text);
    v.decor_mut().set_prefix(" ");
    v.decor_mut().set_suffix(trailing.unwrap_or_default());
    Item::Value(v)
}

/// A moved key written `key = …` with only its comment lines above it: the old alignment and
/// indentation meant something only where the key was.
fn tidy_key(key: Key) -> Key {
    let above = comment_lines(key.leaf_decor());
    key.with_leaf_decor(Decor::new(above, " "))
}

/// The comment lines of a key's prefix, each unindented and ending in `\n`; blank lines at
/// the start (which separated the key from what was above it) and the key's own
/// indentation are dropped.
fn comment_lines(decor: &Decor) -> String {
    let prefix = decor.prefix().and_then(|p| p.as_str()).unwrap_or("");
    let mut lines: Vec<&str> = prefix
        .split('\n')
        .map(|l| l.trim_end_matches('\r').trim_start())
        .collect();
    lines.pop();
    let first = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    lines[first..].iter().map(|l| format!("{l}\n")).collect()
}

/// The spaces and comment after a value, `None` when there is no comment.
fn trailing_comment(v: &Value) -> Option<String> {
    let suffix = v.decor().suffix().and_then(|s| s.as_str())?;
    suffix.contains('#').then(|| suffix.to_owned())
}

/// True when the document has top-level key-values (rendered before any table).
fn has_values(root: &Table) -> bool {
    root.iter().any(|(_, item)| item.is_value())
}

/// The root-level table rendered first.
fn first_table(root: &Table) -> Option<String> {
    root.iter()
        .filter_map(|(k, item)| {
            item.as_table()
                .map(|t| (t.position().unwrap_or(isize::MAX), k.to_owned()))
        })
        .min()
        .map(|(_, k)| k)
}

/// Render order of a root-level table: the new tables first in spec order, then `[workers]`
/// and the tables this hop does not know in their own order, `[logging]` last.
fn group_of(key: &str) -> u8 {
    match key {
        "server" => 0,
        "models" => 1,
        "batching" => 2,
        "logging" => 4,
        _ => 3,
    }
}

/// Renumbers the positions of every table (nested ones included, so they stay under their
/// parent) to follow [`group_of`]; within a group the original order is kept, and a table
/// this hop created comes before the sub-tables of the same name the file had.
fn arrange_tables(root: &mut Table, created: &[&str]) {
    let mut slots: Vec<(u8, isize, usize)> = Vec::new();
    let mut last = 0;
    for (key, item) in root.iter_mut() {
        let group = group_of(key.get());
        let fresh = created.contains(&key.get());
        for_each_table(item, &mut |table| {
            last = table.position().unwrap_or(last);
            slots.push((group, if fresh { isize::MIN } else { last }, slots.len()));
        });
    }
    let mut order = slots.clone();
    order.sort();
    let mut positions = vec![0; slots.len()];
    for (position, (_, _, index)) in order.iter().enumerate() {
        positions[*index] = position as isize;
    }
    let mut positions = positions.into_iter();
    for (_, item) in root.iter_mut() {
        for_each_table(item, &mut |table| table.set_position(positions.next()));
    }
}

/// Calls `f` on every table in `item` (itself and nested, arrays of tables included) in
/// document-tree order.
fn for_each_table(item: &mut Item, f: &mut dyn FnMut(&mut Table)) {
    match item {
        Item::Table(table) => visit_table(table, f),
        Item::ArrayOfTables(array) => array.iter_mut().for_each(|table| visit_table(table, f)),
        _ => {}
    }
}

fn visit_table(table: &mut Table, f: &mut dyn FnMut(&mut Table)) {
    f(table);
    for (_, child) in table.iter_mut() {
        for_each_table(child, f);
    }
}

/// Keeps a blank line between tables where moving them would lose it: the table whose prefix
/// held the file's header (now empty) gets one if it is no longer first, and a table that
/// is now rendered first loses any blank lines above it.
fn tidy_table_gaps(doc: &mut DocumentMut, header_table: Option<&str>) {
    let root = doc.as_table_mut();
    let first = if has_values(root) {
        None
    } else {
        first_table(root)
    };
    if let Some(name) = header_table.filter(|n| Some(*n) != first.as_deref()) {
        if let Some(table) = root.get_mut(name).and_then(Item::as_table_mut) {
            if table.decor().prefix().and_then(|p| p.as_str()) == Some("") {
                table.decor_mut().set_prefix("\n");
            }
        }
    }
    if let Some(table) = first
        .and_then(|name| root.get_mut(&name))
        .and_then(Item::as_table_mut)
    {
        if let Some(prefix) = table.decor().prefix().and_then(|p| p.as_str()) {
            let trimmed = prefix.trim_start_matches(['\n', '\r']).to_owned();
            table.decor_mut().set_prefix(trimmed);
        }
    }
}

#[cfg(test)]
mod tests;

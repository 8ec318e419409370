//! `config/server.toml` 2.0.0 → 2.1.0: add `[streaming]` and `[rate_limit]`.
//!
//! ```toml
//! [streaming]
//! enabled = true
//! chunk_tokens = 16
//!
//! [rate_limit]
//! enabled = false
//! requests_per_minute = 600
//! burst = 50
//! ```
//! The two tables are appended after every table the file has, in this order and with these
//! keys in this order. A table that already exists stays where it is with its values: only the
//! keys it lacks are appended to it, with the defaults above. Inline (`streaming = { … }`) and
//! dotted (`streaming.enabled = …`) forms count as tables and are filled in their own form.
//!
//! Every known 2.0.0 and 2.1.0 key is type-checked first (errors name `table.key`); a known
//! table name holding a plain value (`streaming = true`) is an error naming it. Keys the hop
//! does not know, top level or inside the known tables, are kept and reported as warnings.
//! The document is edited, never re-serialised; its leading comment block stays at the top.

use std::borrow::Cow;

use plugin_api::toml::{
    get_bool, get_enum, get_int, get_str, parse, put_header, table_mut, take_header, unknown_keys,
};
use plugin_api::{ConfigMigrationRule, ConfigOutcome, RuleError};
use toml_edit::{DocumentMut, Item, Table, Value};

/// What a known key must hold.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    /// An integer no smaller than this.
    IntAtLeast(i64),
    Enum(&'static [&'static str]),
}

/// Allowed values of `[logging] level`.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// The tables of a 2.1.0 `server.toml` and their keys. A 2.0.0 file has no top-level values:
/// 1.0.0 → 2.0.0 moved every known key into a table.
const KNOWN: &[(&str, &[(&str, Kind)])] = &[
    (
        "server",
        &[("address", Kind::Str), ("request_timeout", Kind::Str)],
    ),
    (
        "models",
        &[("directory", Kind::Str), ("default", Kind::Str)],
    ),
    (
        "batching",
        &[
            ("max_batch_size", Kind::IntAtLeast(1)),
            ("max_wait", Kind::Str),
        ],
    ),
    (
        "workers",
        &[
            ("count", Kind::IntAtLeast(1)),
            ("max_queue", Kind::IntAtLeast(1)),
        ],
    ),
    (
        "logging",
        &[("level", Kind::Enum(LOG_LEVELS)), ("format", Kind::Str)],
    ),
    (
        "streaming",
        &[
            ("enabled", Kind::Bool),
            ("chunk_tokens", Kind::IntAtLeast(1)),
        ],
    ),
    (
        "rate_limit",
        &[
            ("enabled", Kind::Bool),
            ("requests_per_minute", Kind::IntAtLeast(1)),
            ("burst", Kind::IntAtLeast(0)),
        ],
    ),
];

/// The config rule of this hop.
pub struct ServerToml;

impl ConfigMigrationRule for ServerToml {
    fn migrate(&self, content: &str) -> Result<ConfigOutcome, RuleError> {
        let mut doc = parse(content)?;
        let warnings = check_known_tables(doc.as_table())?;
        let header = take_leading_comments(&mut doc);
        let root = doc.as_table_mut();
        fill_table(
            root,
            "streaming",
            &[("enabled", true.into()), ("chunk_tokens", 16.into())],
        )?;
        fill_table(
            root,
            "rate_limit",
            &[
                ("enabled", false.into()),
                ("requests_per_minute", 600.into()),
                ("burst", 50.into()),
            ],
        )?;
        put_header(&mut doc, &header);
        Ok(ConfigOutcome::new(doc.to_string()).warnings(warnings))
    }

    fn description(&self) -> String {
        "server.toml: add [streaming] (enabled = true, chunk_tokens = 16) and [rate_limit] \
         (enabled = false, requests_per_minute = 600, burst = 50), filling only missing keys"
            .to_owned()
    }
}

/// Type-checks every known table and key present; returns the unknown-key warnings.
fn check_known_tables(root: &Table) -> Result<Vec<String>, RuleError> {
    let names: Vec<&str> = KNOWN.iter().map(|(name, _)| *name).collect();
    let mut unknown = unknown_keys(root, &names, "");
    for (name, keys) in KNOWN {
        let Some(table) = as_table(root, name)? else {
            continue;
        };
        for (key, kind) in *keys {
            check_key(&table, key, *kind).map_err(|e| in_table(name, e))?;
        }
        let key_names: Vec<&str> = keys.iter().map(|(key, _)| *key).collect();
        unknown.extend(unknown_keys(&table, &key_names, name));
    }
    Ok(unknown
        .into_iter()
        .map(|k| format!("unknown key `{k}` kept as it is"))
        .collect())
}

/// The table `name` of `root`, an inline table seen as a table; `None` if absent, an error
/// naming `name` if it holds anything else.
fn as_table<'a>(root: &'a Table, name: &str) -> Result<Option<Cow<'a, Table>>, RuleError> {
    match root.get(name) {
        None => Ok(None),
        Some(Item::Table(t)) => Ok(Some(Cow::Borrowed(t))),
        Some(Item::Value(Value::InlineTable(t))) => Ok(Some(Cow::Owned(t.clone().into_table()))),
        Some(other) => Err(not_a_table(name, other)),
    }
}

/// The error for a known table name holding something else, e.g. `streaming = true`.
fn not_a_table(name: &str, item: &Item) -> RuleError {
    let shown = match item {
        Item::Value(v) => format!("{} `{}`", v.type_name(), v.to_string().trim()),
        other => other.type_name().to_owned(),
    };
    RuleError::at_field(name, format!("expected a table, found {shown}"))
}

/// Checks one key with the helper for its kind.
fn check_key(table: &Table, key: &str, kind: Kind) -> Result<(), RuleError> {
    match kind {
        Kind::Str => get_str(table, key).map(drop),
        Kind::Bool => get_bool(table, key).map(drop),
        Kind::IntAtLeast(min) => get_int(table, key, min, i64::MAX).map(drop),
        Kind::Enum(allowed) => get_enum(table, key, allowed).map(drop),
    }
}

/// Gives an error raised on a key of table `table` the full `table.key` name.
fn in_table(table: &str, mut e: RuleError) -> RuleError {
    e.field = e.field.map(|f| format!("{table}.{f}"));
    e
}

/// The file's leading comment block. In a file without a single key or table that block is
/// the document's trailing text, which would otherwise end up below the appended tables.
fn take_leading_comments(doc: &mut DocumentMut) -> String {
    if !doc.as_table().is_empty() {
        return take_header(doc);
    }
    let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
    doc.set_trailing("");
    trailing
}

/// Creates table `name` after every other table, or completes an existing one: each key of
/// `defaults` it lacks is appended with its default, in `defaults` order.
fn fill_table(root: &mut Table, name: &str, defaults: &[(&str, Value)]) -> Result<(), RuleError> {
    if !root.contains_key(name) {
        table_mut(root, name)?;
    }
    let item = root
        .get_mut(name)
        .ok_or_else(|| RuleError::at_field(name, "table vanished"))?;
    if !item.is_table_like() {
        return Err(not_a_table(name, item));
    }
    let Some(table) = item.as_table_like_mut() else {
        return Err(RuleError::at_field(name, "expected a table"));
    };
    for (key, default) in defaults {
        if !table.contains_key(key) {
            table.insert(key, Item::Value(default.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrate(content: &str) -> Result<ConfigOutcome, RuleError> {
        ServerToml.migrate(content)
    }

    fn migrated(content: &str) -> String {
        migrate(content).unwrap().content
    }

    const SAMPLE: &str = r#"# TrustformeRS Serve 2.0.0
# production

[server]
address = "0.0.0.0:8080"   # all interfaces
request_timeout = "30s"

[models]
directory = "models"
default = "bert-base"

[batching]
max_batch_size = 32
max_wait = "10ms"

[workers]
# one per core
count = 4
max_queue = 1024

[logging]
level = "info"
format = "text"
"#;

    const DEFAULTS: &str = r#"
[streaming]
enabled = true
chunk_tokens = 16

[rate_limit]
enabled = false
requests_per_minute = 600
burst = 50
"#;

    #[test]
    fn full_sample_migrates_to_the_exact_expected_text() {
        let out = migrate(SAMPLE).unwrap();
        assert_eq!(out.content, format!("{SAMPLE}{DEFAULTS}"));
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn empty_file_gets_both_tables() {
        assert_eq!(migrated(""), &DEFAULTS[1..]);
    }

    #[test]
    fn comment_only_file_keeps_its_comment_on_top() {
        assert_eq!(
            migrated("# just a comment\n"),
            format!("# just a comment\n{}", &DEFAULTS[1..])
        );
    }

    #[test]
    fn existing_tables_are_filled_not_overwritten() {
        let input = "[streaming]\nenabled = false # off for now\n\n[rate_limit]\nburst = 5\n\n[logging]\nlevel = \"warn\"\n";
        assert_eq!(
            migrated(input),
            "[streaming]\nenabled = false # off for now\nchunk_tokens = 16\n\n[rate_limit]\nburst = 5\nenabled = false\nrequests_per_minute = 600\n\n[logging]\nlevel = \"warn\"\n"
        );
    }

    #[test]
    fn a_complete_existing_table_is_left_byte_identical() {
        let input = "[streaming]\nchunk_tokens = 8\nenabled = true\n";
        let out = migrated(input);
        assert!(out.starts_with(input), "{out}");
        assert_eq!(out.matches("[streaming]").count(), 1, "{out}");
    }

    #[test]
    fn inline_and_dotted_tables_are_filled_in_their_form() {
        let out = migrated("streaming = { enabled = false }\nrate_limit.burst = 1\n");
        assert_eq!(
            out,
            "streaming = { enabled = false , chunk_tokens = 16 }\nrate_limit.burst = 1\nrate_limit.enabled = false\nrate_limit.requests_per_minute = 600\n"
        );
    }

    #[test]
    fn streaming_that_is_not_a_table_is_an_error_naming_it() {
        let e = migrate("streaming = true\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("streaming"));
        assert!(
            e.message.contains("expected a table, found boolean `true`"),
            "{e}"
        );
        let e = migrate("[[rate_limit]]\nburst = 1\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("rate_limit"));
    }

    #[test]
    fn wrong_types_are_errors_naming_the_key() {
        let cases = [
            ("[server]\naddress = 8080\n", "server.address", "a string"),
            (
                "[server]\nrequest_timeout = 30\n",
                "server.request_timeout",
                "a string",
            ),
            ("[models]\ndirectory = []\n", "models.directory", "a string"),
            ("[models]\ndefault = 1\n", "models.default", "a string"),
            (
                "[batching]\nmax_batch_size = 0\n",
                "batching.max_batch_size",
                "an integer ≥ 1",
            ),
            (
                "[batching]\nmax_wait = 10\n",
                "batching.max_wait",
                "a string",
            ),
            (
                "[workers]\ncount = \"4\"\n",
                "workers.count",
                "an integer ≥ 1",
            ),
            (
                "[workers]\nmax_queue = 0\n",
                "workers.max_queue",
                "an integer ≥ 1",
            ),
            (
                "[logging]\nlevel = \"verbose\"\n",
                "logging.level",
                "one of trace|debug|info|warn|error",
            ),
            ("[logging]\nformat = true\n", "logging.format", "a string"),
            (
                "[streaming]\nenabled = \"yes\"\n",
                "streaming.enabled",
                "a boolean",
            ),
            (
                "[streaming]\nchunk_tokens = 0\n",
                "streaming.chunk_tokens",
                "an integer ≥ 1",
            ),
            (
                "[rate_limit]\nenabled = 1\n",
                "rate_limit.enabled",
                "a boolean",
            ),
            (
                "[rate_limit]\nrequests_per_minute = 0\n",
                "rate_limit.requests_per_minute",
                "an integer ≥ 1",
            ),
            (
                "[rate_limit]\nburst = -1\n",
                "rate_limit.burst",
                "an integer ≥ 0",
            ),
            (
                "streaming = { chunk_tokens = 1.5 }\n",
                "streaming.chunk_tokens",
                "an integer ≥ 1",
            ),
            ("server = \"x\"\n", "server", "a table"),
        ];
        for (input, field, expected) in cases {
            let e = migrate(input).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{input}");
            assert!(e.message.contains(expected), "{input}: {e}");
        }
    }

    #[test]
    fn zero_burst_is_accepted() {
        assert!(migrated("[rate_limit]\nburst = 0\n").contains("burst = 0\n"));
    }

    #[test]
    fn invalid_toml_names_the_line() {
        let e = migrate("[server]\naddress = \"a\"\n[[broken\n").unwrap_err();
        assert!(e.message.contains("invalid TOML"), "{e}");
        assert!(e.message.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_keys_are_kept_in_place_and_reported() {
        let input = "legacy = 1\n\n[server]\naddress = \"a:1\"\ntls = true\n\n[extra]\nx = 1\n\n[streaming]\nfoo = 2\n";
        let out = migrate(input).unwrap();
        assert_eq!(
            out.content,
            "legacy = 1\n\n[server]\naddress = \"a:1\"\ntls = true\n\n[extra]\nx = 1\n\n[streaming]\nfoo = 2\nenabled = true\nchunk_tokens = 16\n\n[rate_limit]\nenabled = false\nrequests_per_minute = 600\nburst = 50\n"
        );
        assert_eq!(
            out.warnings,
            [
                "unknown key `legacy` kept as it is",
                "unknown key `extra` kept as it is",
                "unknown key `server.tls` kept as it is",
                "unknown key `streaming.foo` kept as it is",
            ]
        );
    }

    #[test]
    fn header_comment_stays_on_top_and_trailing_comments_survive() {
        let input = "# header\nlegacy = 1 # keep me\n\n[logging]\n# above level\nlevel = \"debug\" # noisy\n";
        let out = migrated(input);
        assert_eq!(out, format!("{input}{DEFAULTS}"));
    }
}

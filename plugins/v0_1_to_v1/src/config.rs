//! `config/server.toml` 0.1.0 → 1.0.0: rename the flat keys in place, add `[workers]`.
//!
//! The document is edited, never re-serialised, so everything the hop does not touch keeps its
//! comments and layout. The rule in detail:
//!
//! * Every known key is type-checked first; a wrong type is an error naming the key and nothing
//!   is produced.
//! * `host` → `bind_address`, `batch_size` → `max_batch_size`, `port` and `log_level` unchanged.
//!   A renamed key keeps the comment above it and its inline trailing comment.
//! * `model_path = "D/N"` → `model_dir = "D"`, `default_model = "N"` where `model_path` was
//!   (split at the last `/`; without a `/` the directory is `"models"`). Trailing slashes are
//!   ignored (`"models/bert/"` names the model `bert`), and a path of the form `"/N"` keeps `/` as
//!   its directory. The comments of `model_path` stay with `model_dir`.
//! * `timeout` (seconds) → `request_timeout_ms` (milliseconds, overflow-checked) in place. Its
//!   inline comment stays with the new value: comments are never dropped, even stale ones.
//! * `num_threads` leaves the top level (with the comment above it) and becomes `[workers] count`;
//!   `[workers] max_queue = 1024` is always added. A `[workers]` table the file already has is
//!   kept: missing keys are filled, existing ones never overwritten (a `num_threads` that loses
//!   against an existing `count` is reported as a warning).
//! * Any other key, top level or in `[workers]`, is kept where it is and reported as a warning.
//! * The file's leading comment block stays at the top whatever moves below it.

use plugin_api::toml::{
    get_enum, get_int, get_str, parse, put_header, rename_unit, renamed, replace_key, table_mut,
    take_header, take_key, unknown_keys, value,
};
use plugin_api::{ConfigMigrationRule, ConfigOutcome, RuleError};
use toml_edit::{Item, Key, Table};

/// Top-level keys of a 0.1.0 `server.toml` (plus `[workers]`, which this hop writes).
const KNOWN_KEYS: &[&str] = &[
    "host",
    "port",
    "model_path",
    "batch_size",
    "timeout",
    "log_level",
    "num_threads",
    "workers",
];

/// Keys of the `[workers]` table of 1.0.0.
const WORKER_KEYS: &[&str] = &["count", "max_queue"];

/// Allowed values of `log_level`.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// `[workers] max_queue` of a migrated installation.
const DEFAULT_MAX_QUEUE: i64 = 1024;

/// Directory of the default model when `model_path` has no `/`.
const DEFAULT_MODEL_DIR: &str = "models";

/// Renames that keep the value as it is: 0.1.0 name → 1.0.0 name.
const RENAMES: &[(&str, &str)] = &[("host", "bind_address"), ("batch_size", "max_batch_size")];

/// The config rule of this hop.
pub struct ServerToml;

impl ConfigMigrationRule for ServerToml {
    fn migrate(&self, content: &str) -> Result<ConfigOutcome, RuleError> {
        let mut doc = parse(content)?;
        let found = Known::read(doc.as_table())?;
        let mut warnings = unknown_key_warnings(doc.as_table());
        let header = take_header(&mut doc);
        let root = doc.as_table_mut();
        for (old, new) in RENAMES {
            rename(root, old, new);
        }
        if let Some(path) = &found.model_path {
            split_model_path(root, path)?;
        }
        if let Some(seconds) = found.timeout {
            timeout_to_ms(root, seconds)?;
        }
        move_workers(root, &mut warnings)?;
        put_header(&mut doc, &header);
        Ok(ConfigOutcome::new(doc.to_string()).warnings(warnings))
    }

    fn description(&self) -> String {
        "server.toml: rename host, batch_size, model_path, timeout to their 1.0.0 names; \
         num_threads → [workers] count; add [workers] max_queue = 1024"
            .to_owned()
    }
}

/// The known keys' values the migration needs, read after every type was checked.
struct Known {
    model_path: Option<String>,
    timeout: Option<i64>,
}

impl Known {
    /// Type-checks every known key of `root` (top level and `[workers]`).
    fn read(root: &Table) -> Result<Known, RuleError> {
        get_str(root, "host")?;
        get_int(root, "port", 1, 65535)?;
        get_int(root, "batch_size", 1, i64::MAX)?;
        get_enum(root, "log_level", LOG_LEVELS)?;
        get_int(root, "num_threads", 1, i64::MAX)?;
        check_workers(root)?;
        check_no_collisions(root)?;
        Ok(Known {
            model_path: get_str(root, "model_path")?,
            timeout: get_int(root, "timeout", 0, i64::MAX)?,
        })
    }
}

/// Type-checks an existing `[workers]` table; the error names `workers.<key>`.
fn check_workers(root: &Table) -> Result<(), RuleError> {
    let Some(item) = root.get("workers") else {
        return Ok(());
    };
    let Some(workers) = item.as_table() else {
        return Err(RuleError::at_field(
            "workers",
            format!("expected a table, found {}", item.type_name()),
        ));
    };
    for key in WORKER_KEYS {
        get_int(workers, key, 1, i64::MAX).map_err(|e| in_table("workers", e))?;
    }
    Ok(())
}

/// Refuses a file that already holds a 1.0.0 name next to the 0.1.0 key that becomes it:
/// migrating would have to drop one of the two values.
fn check_no_collisions(root: &Table) -> Result<(), RuleError> {
    let targets: &[(&str, &[&str])] = &[
        ("host", &["bind_address"]),
        ("batch_size", &["max_batch_size"]),
        ("model_path", &["model_dir", "default_model"]),
        ("timeout", &["request_timeout_ms"]),
    ];
    for (old, news) in targets {
        if !root.contains_key(old) {
            continue;
        }
        if let Some(new) = news.iter().find(|n| root.contains_key(n)) {
            return Err(RuleError::at_field(
                *new,
                format!("`{old}` becomes `{new}` in 1.0.0 but the file already has `{new}`; remove one of them"),
            ));
        }
    }
    Ok(())
}

/// Gives an error raised on a key of table `table` the full `table.key` name.
fn in_table(table: &str, mut e: RuleError) -> RuleError {
    e.field = e.field.map(|f| format!("{table}.{f}"));
    e
}

/// One warning per key the hop does not know, so the operator can check them by hand.
fn unknown_key_warnings(root: &Table) -> Vec<String> {
    let mut keys = unknown_keys(root, KNOWN_KEYS, "");
    if let Some(workers) = root.get("workers").and_then(Item::as_table) {
        keys.extend(unknown_keys(workers, WORKER_KEYS, "workers"));
    }
    keys.into_iter()
        .map(|k| format!("unknown key `{k}` kept as it is"))
        .collect()
}

/// Renames `old` to `new` in place; the value item (with its inline comment) moves as it is.
fn rename(root: &mut Table, old: &str, new: &str) {
    let Some(item) = root.get(old).cloned() else {
        return;
    };
    replace_key(root, old, vec![(Key::new(new), item)]);
}

/// `model_path = "D/N"` → `model_dir = "D"`, `default_model = "N"` in its place.
fn split_model_path(root: &mut Table, path: &str) -> Result<(), RuleError> {
    let (dir, name) = split_path(path).ok_or_else(|| {
        RuleError::at_field(
            "model_path",
            format!("expected a path ending in a model name, e.g. \"models/bert-base\", found \"{path}\""),
        )
    })?;
    let dir_item = keep_decor(root.get("model_path"), value(dir));
    replace_key(
        root,
        "model_path",
        vec![
            (Key::new("model_dir"), dir_item),
            (Key::new("default_model"), value(name)),
        ],
    );
    Ok(())
}

/// Splits `"D/N"` at the last `/` into `("D", "N")`; `"N"` alone lives in `"models"`.
/// `None` when there is no model name (empty, or only slashes).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    let (dir, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => (DEFAULT_MODEL_DIR, trimmed),
    };
    (!name.is_empty()).then_some((dir, name))
}

/// `timeout = S` → `request_timeout_ms = S × 1000` in its place.
fn timeout_to_ms(root: &mut Table, seconds: i64) -> Result<(), RuleError> {
    let ms = seconds.checked_mul(1000).ok_or_else(|| {
        RuleError::at_field(
            "timeout",
            format!("{seconds} seconds is too large to express in milliseconds"),
        )
    })?;
    let mut item = keep_decor(root.get("timeout"), value(ms));
    if let Some(v) = item.as_value_mut() {
        let suffix = v
            .decor()
            .suffix()
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        if let Some(suffix) = suffix {
            v.decor_mut()
                .set_suffix(rename_unit(&suffix, "seconds", "milliseconds"));
        }
    }
    replace_key(
        root,
        "timeout",
        vec![(Key::new("request_timeout_ms"), item)],
    );
    Ok(())
}

/// `new` with the whitespace and inline comment around `old`'s value, so that a comment
/// trailing a replaced value stays on its line.
fn keep_decor(old: Option<&Item>, mut new: Item) -> Item {
    if let (Some(old), Some(new)) = (old.and_then(Item::as_value), new.as_value_mut()) {
        *new.decor_mut() = old.decor().clone();
    }
    new
}

/// Moves `num_threads` into `[workers] count` and adds `max_queue`, never overwriting a value
/// an existing `[workers]` table already holds.
fn move_workers(root: &mut Table, warnings: &mut Vec<String>) -> Result<(), RuleError> {
    let threads = take_key(root, "num_threads");
    let workers = table_mut(root, "workers")?;
    if let Some((key, item)) = threads {
        if let Some(existing) = workers.get("count") {
            warnings.push(format!(
                "num_threads = {} dropped: [workers] count = {} is already set and kept",
                item.to_string().trim(),
                existing.to_string().trim()
            ));
        } else {
            workers.insert_formatted(&renamed(&key, "count"), item);
        }
    }
    if !workers.contains_key("max_queue") {
        workers.insert("max_queue", value(DEFAULT_MAX_QUEUE));
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

    const SAMPLE: &str = r#"# TrustformeRS Serve configuration
# managed by ops

host = "0.0.0.0"          # string
port = 8080               # integer 1..=65535
model_path = "models/bert-base"
batch_size = 32
# how long a request may take
timeout = 30              # seconds, integer
log_level = "info"        # trace|debug|info|warn|error
# one per core
num_threads = 4
"#;

    const SAMPLE_MIGRATED: &str = r#"# TrustformeRS Serve configuration
# managed by ops

bind_address = "0.0.0.0"          # string
port = 8080               # integer 1..=65535
model_dir = "models"
default_model = "bert-base"
max_batch_size = 32
# how long a request may take
request_timeout_ms = 30000              # milliseconds, integer
log_level = "info"        # trace|debug|info|warn|error

[workers]
# one per core
count = 4
max_queue = 1024
"#;

    #[test]
    fn full_sample_migrates_to_the_exact_expected_text() {
        let out = migrate(SAMPLE).unwrap();
        assert_eq!(out.content, SAMPLE_MIGRATED);
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn header_stays_on_top_when_the_first_key_is_moved_away() {
        let out = migrated("# header\nnum_threads = 2\nport = 1\n");
        assert_eq!(
            out,
            "# header\nport = 1\n\n[workers]\ncount = 2\nmax_queue = 1024\n"
        );
    }

    #[test]
    fn header_stays_on_top_when_the_first_key_is_renamed() {
        let out = migrated("# header\n# more\nhost = \"h\"\n");
        assert!(
            out.starts_with("# header\n# more\nbind_address = \"h\"\n"),
            "{out}"
        );
    }

    #[test]
    fn comment_above_a_renamed_key_stays_above_the_new_key() {
        let out = migrated("port = 1\n# the batch\nbatch_size = 8 # per request\n");
        assert!(
            out.contains("port = 1\n# the batch\nmax_batch_size = 8 # per request\n"),
            "{out}"
        );
    }

    #[test]
    fn comments_of_model_path_stay_with_model_dir() {
        let out =
            migrated("port = 1\n# where\nmodel_path = \"m/x\" # note\nlog_level = \"warn\"\n");
        assert!(
            out.starts_with("port = 1\n# where\nmodel_dir = \"m\" # note\ndefault_model = \"x\"\nlog_level = \"warn\"\n"),
            "{out}"
        );
    }

    #[test]
    fn model_path_splits_at_the_last_slash() {
        assert_eq!(split_path("a/b/c"), Some(("a/b", "c")));
        assert_eq!(split_path("bert"), Some(("models", "bert")));
        assert_eq!(split_path("models/bert/"), Some(("models", "bert")));
        assert_eq!(split_path("/bert"), Some(("/", "bert")));
        assert_eq!(split_path(""), None);
        assert_eq!(split_path("//"), None);
    }

    #[test]
    fn model_path_without_slash_goes_to_models() {
        let out = migrated("model_path = \"bert-base\"\n");
        assert!(
            out.starts_with("model_dir = \"models\"\ndefault_model = \"bert-base\"\n"),
            "{out}"
        );
    }

    #[test]
    fn model_path_without_a_name_is_an_error() {
        let e = migrate("model_path = \"/\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("model_path"));
    }

    #[test]
    fn timeout_becomes_milliseconds() {
        let out = migrated("timeout = 0\n");
        assert!(out.starts_with("request_timeout_ms = 0\n"), "{out}");
        let out = migrated("timeout = 45\n");
        assert!(out.starts_with("request_timeout_ms = 45000\n"), "{out}");
    }

    #[test]
    fn a_comment_naming_the_unit_follows_the_conversion() {
        let out = migrated("timeout = 30  # seconds\n");
        assert!(
            out.starts_with("request_timeout_ms = 30000  # milliseconds\n"),
            "{out}"
        );
        let out = migrated("timeout = 30  # in seconds; milliseconds elsewhere\n");
        assert!(
            out.contains("# in milliseconds; milliseconds elsewhere"),
            "{out}"
        );
        assert_eq!(rename_unit("# secondsish", "seconds", "ms"), "# secondsish");
    }

    #[test]
    fn timeout_overflow_is_an_error() {
        let e = migrate("timeout = 9223372036854775807\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timeout"));
        assert!(e.message.contains("too large"), "{e}");
    }

    #[test]
    fn wrong_types_are_errors_naming_the_key() {
        let cases = [
            ("host = 1\n", "host", "a string"),
            ("port = \"eighty\"\n", "port", "an integer in 1..=65535"),
            ("port = 0\n", "port", "an integer in 1..=65535"),
            ("port = 65536\n", "port", "an integer in 1..=65535"),
            ("model_path = 3\n", "model_path", "a string"),
            ("batch_size = 0\n", "batch_size", "an integer ≥ 1"),
            ("timeout = -1\n", "timeout", "an integer ≥ 0"),
            ("timeout = 1.5\n", "timeout", "an integer ≥ 0"),
            (
                "log_level = \"loud\"\n",
                "log_level",
                "one of trace|debug|info|warn|error",
            ),
            ("num_threads = true\n", "num_threads", "an integer ≥ 1"),
            ("[workers]\ncount = 0\n", "workers.count", "an integer ≥ 1"),
            (
                "[workers]\nmax_queue = \"x\"\n",
                "workers.max_queue",
                "an integer ≥ 1",
            ),
            ("workers = 3\n", "workers", "a table"),
        ];
        for (input, field, expected) in cases {
            let e = migrate(input).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{input}");
            assert!(e.message.contains(expected), "{input}: {e}");
        }
    }

    #[test]
    fn invalid_toml_names_the_line() {
        let e = migrate("port = 1\nhost = = \"x\"\n").unwrap_err();
        assert!(e.message.contains("invalid TOML"), "{e}");
        assert!(e.message.contains("line 2"), "{e}");
    }

    #[test]
    fn unknown_keys_are_kept_in_place_and_reported() {
        let out = migrate("foo = 1\nport = 2\n[extra]\nx = 1\n[workers]\ncount = 3\nbar = true\n")
            .unwrap();
        assert_eq!(
            out.content,
            "foo = 1\nport = 2\n[extra]\nx = 1\n[workers]\ncount = 3\nbar = true\nmax_queue = 1024\n"
        );
        assert_eq!(
            out.warnings,
            [
                "unknown key `foo` kept as it is",
                "unknown key `extra` kept as it is",
                "unknown key `workers.bar` kept as it is",
            ]
        );
    }

    #[test]
    fn existing_workers_table_is_filled_not_overwritten() {
        let out = migrate("num_threads = 4\n[workers]\nmax_queue = 7\n").unwrap();
        assert_eq!(out.content, "[workers]\nmax_queue = 7\ncount = 4\n");
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn existing_workers_count_wins_over_num_threads_with_a_warning() {
        let out = migrate("num_threads = 4\n[workers]\ncount = 8\n").unwrap();
        assert_eq!(out.content, "[workers]\ncount = 8\nmax_queue = 1024\n");
        assert_eq!(out.warnings.len(), 1);
        assert!(
            out.warnings[0].contains("num_threads = 4 dropped"),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn workers_table_is_added_even_without_num_threads() {
        assert_eq!(
            migrated("port = 1\n"),
            "port = 1\n\n[workers]\nmax_queue = 1024\n"
        );
    }

    #[test]
    fn a_1_0_0_key_next_to_its_0_1_0_source_is_an_error() {
        let e = migrate("host = \"a\"\nbind_address = \"b\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("bind_address"));
        let e = migrate("model_path = \"a/b\"\ndefault_model = \"c\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("default_model"));
    }

    #[test]
    fn workers_table_goes_after_existing_tables() {
        let out = migrated("num_threads = 1\n\n[a]\nx = 1\n\n[b]\ny = 2\n");
        assert_eq!(
            out,
            "\n[a]\nx = 1\n\n[b]\ny = 2\n\n[workers]\ncount = 1\nmax_queue = 1024\n"
        );
    }
}

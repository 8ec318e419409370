use super::*;

/// A full 1.0.0 `server.toml`, as the 0.1.0 → 1.0.0 hop writes the sample installation's.
const SAMPLE: &str = r#"# TrustformeRS Serve configuration
# Production inference node

bind_address = "0.0.0.0"          # listen on all interfaces
port = 8080
# Where the default model lives
model_dir = "models"
default_model = "bert-tiny"
max_batch_size = 32
request_timeout_ms = 30000
log_level = "info"        # trace|debug|info|warn|error
metrics_port = 9090       # not part of the 0.1.0 format: kept, with a warning

[workers]
# One worker per core
count = 4
max_queue = 1024
"#;

const SAMPLE_2_0_0: &str = r#"# TrustformeRS Serve configuration
# Production inference node

metrics_port = 9090       # not part of the 0.1.0 format: kept, with a warning

[server]
address = "0.0.0.0:8080"          # listen on all interfaces
request_timeout = "30s"

[models]
# Where the default model lives
directory = "models"
default = "bert-tiny"

[batching]
max_batch_size = 32
max_wait = "10ms"

[workers]
# One worker per core
count = 4
max_queue = 1024

[logging]
level = "info"        # trace|debug|info|warn|error
format = "text"
"#;

fn migrate(input: &str) -> ConfigOutcome {
    ConfigRule
        .migrate(input)
        .unwrap_or_else(|e| panic!("refused: {e}\n{input}"))
}

fn content(input: &str) -> String {
    migrate(input).content
}

fn refuse(input: &str) -> RuleError {
    match ConfigRule.migrate(input) {
        Ok(out) => panic!("accepted:\n{input}\ngave:\n{}", out.content),
        Err(e) => e,
    }
}

fn doc(text: &str) -> DocumentMut {
    text.parse()
        .unwrap_or_else(|e| panic!("output is not valid TOML: {e}\n{text}"))
}

#[test]
fn full_sample_gives_exactly_the_expected_file() {
    let out = migrate(SAMPLE);
    assert_eq!(out.content, SAMPLE_2_0_0);
    assert_eq!(out.warnings, ["unknown key `metrics_port` kept as it is"]);
}

#[test]
fn full_sample_values_follow_the_spec_table() {
    let d = doc(&content(SAMPLE));
    assert_eq!(d["server"]["address"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(d["server"]["request_timeout"].as_str(), Some("30s"));
    assert_eq!(d["models"]["directory"].as_str(), Some("models"));
    assert_eq!(d["models"]["default"].as_str(), Some("bert-tiny"));
    assert_eq!(d["batching"]["max_batch_size"].as_integer(), Some(32));
    assert_eq!(d["batching"]["max_wait"].as_str(), Some("10ms"));
    assert_eq!(d["workers"]["count"].as_integer(), Some(4));
    assert_eq!(d["workers"]["max_queue"].as_integer(), Some(1024));
    assert_eq!(d["logging"]["level"].as_str(), Some("info"));
    assert_eq!(d["logging"]["format"].as_str(), Some("text"));
    assert_eq!(d["metrics_port"].as_integer(), Some(9090));
    for gone in [
        "bind_address",
        "port",
        "request_timeout_ms",
        "model_dir",
        "default_model",
        "max_batch_size",
        "log_level",
    ] {
        assert!(d.get(gone).is_none(), "{gone} should have moved");
    }
    let tables: Vec<&str> = d
        .iter()
        .filter(|(_, i)| i.is_table())
        .map(|(k, _)| k)
        .collect();
    assert_eq!(tables.len(), 5, "{tables:?}");
}

#[test]
fn ipv6_addresses_go_in_brackets() {
    for (bind, address) in [
        ("::1", "[::1]:8080"),
        ("::", "[::]:8080"),
        ("fe80::1%eth0", "[fe80::1%eth0]:8080"),
        ("[::1]", "[::1]:8080"),
        ("127.0.0.1", "127.0.0.1:8080"),
        ("localhost", "localhost:8080"),
    ] {
        let out = content(&format!("bind_address = \"{bind}\"\nport = 8080\n"));
        assert_eq!(
            doc(&out)["server"]["address"].as_str(),
            Some(address),
            "{bind}"
        );
    }
}

#[test]
fn a_bind_address_with_a_port_is_refused() {
    for bind in ["0.0.0.0:80", "[::1]:80", "a]b"] {
        let e = refuse(&format!("bind_address = \"{bind}\"\nport = 8080\n"));
        assert_eq!(e.field.as_deref(), Some("bind_address"), "{bind}");
        assert!(e.message.contains("without a port"), "{}", e.message);
    }
}

#[test]
fn timeouts_use_seconds_when_divisible_by_1000() {
    for (ms, text) in [
        (0, "0s"),
        (1, "1ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1500ms"),
        (30000, "30s"),
        (120000, "120s"),
    ] {
        let out = content(&format!("request_timeout_ms = {ms}\n"));
        assert_eq!(
            doc(&out)["server"]["request_timeout"].as_str(),
            Some(text),
            "{ms}"
        );
    }
}

#[test]
fn comments_above_moved_keys_move_with_them() {
    let input = "a = 1\n# listen here\nbind_address = \"h\"\n# port comment\nport = 80 # p\n\n# how long\nrequest_timeout_ms = 2000 # ms\n";
    let out = content(input);
    assert_eq!(
        out,
        "a = 1\n\n[server]\n# listen here\n# port comment\naddress = \"h:80\" # p\n# how long\nrequest_timeout = \"2s\" # ms\n\n[batching]\nmax_wait = \"10ms\"\n\n[logging]\nformat = \"text\"\n"
    );
}

#[test]
fn both_trailing_comments_of_bind_address_and_port_are_kept() {
    let out = content("bind_address = \"h\" # host\nport = 80 # port\n");
    assert!(
        out.contains("[server]\n# port\naddress = \"h:80\" # host\n"),
        "{out}"
    );
}

#[test]
fn moved_keys_lose_alignment_and_indentation_but_keep_trailing_comments() {
    let out = content("  log_level    =   \"warn\"   # quiet\n  default_model =\"m\"\n");
    assert!(out.contains("[models]\ndefault = \"m\"\n"), "{out}");
    assert!(
        out.contains("[logging]\nlevel = \"warn\"   # quiet\nformat = \"text\"\n"),
        "{out}"
    );
}

#[test]
fn header_stays_at_the_top_when_every_key_moves() {
    let out = content("# head\n# more\n\nbind_address = \"h\"\nport = 1\n");
    assert!(
        out.starts_with("# head\n# more\n\n[server]\naddress = \"h:1\"\n"),
        "{out}"
    );
}

#[test]
fn header_above_the_first_table_stays_at_the_top() {
    let out = content("# head\n\n[workers]\ncount = 2\n");
    assert_eq!(out, "# head\n\n[batching]\nmax_wait = \"10ms\"\n\n[workers]\ncount = 2\n\n[logging]\nformat = \"text\"\n");
}

#[test]
fn without_a_header_the_file_starts_with_its_first_line() {
    let out = content("port = 1\nbind_address = \"h\"\n\n[workers]\ncount = 1\n");
    assert!(
        out.starts_with("[server]\naddress = \"h:1\"\n\n[batching]"),
        "{out}"
    );
}

#[test]
fn empty_file_gets_the_two_tables_that_always_exist() {
    assert_eq!(
        content(""),
        "[batching]\nmax_wait = \"10ms\"\n\n[logging]\nformat = \"text\"\n"
    );
}

#[test]
fn tables_are_created_only_when_they_get_a_key() {
    let d = doc(&content("max_batch_size = 8\nlog_level = \"debug\"\n"));
    assert!(d.get("server").is_none() && d.get("models").is_none());
    assert_eq!(d["batching"]["max_batch_size"].as_integer(), Some(8));
    assert_eq!(d["logging"]["level"].as_str(), Some("debug"));
}

#[test]
fn unknown_keys_stay_at_the_top_level_with_warnings() {
    let input = "zeta = 1\nport = 8080\nbind_address = \"h\"\nalpha = \"x\" # keep me\n\n[workers]\ncount = 2\nextra = true\n\n[tls]\ncert = \"c\"\n";
    let out = migrate(input);
    assert_eq!(
        out.warnings,
        [
            "unknown key `zeta` kept as it is",
            "unknown key `alpha` kept as it is",
            "unknown key `workers.extra` kept as it is",
            "unknown key `tls` (a table) kept as it is",
        ]
    );
    assert!(
        out.content
            .starts_with("zeta = 1\nalpha = \"x\" # keep me\n\n[server]\n"),
        "{}",
        out.content
    );
    let d = doc(&out.content);
    assert_eq!(d["tls"]["cert"].as_str(), Some("c"));
    assert_eq!(d["workers"]["extra"].as_bool(), Some(true));
}

#[test]
fn workers_and_unknown_tables_keep_their_text_and_order_between_the_new_tables() {
    let workers =
        "\n# pool\n[workers] # sized for 8 cores\ncount   = 8   # aligned\nmax_queue = 64\n";
    let tls = "\n[tls]\ncert = \"c\"\n";
    let input = format!("log_level = \"info\"\nmodel_dir = \"m\"\n{tls}{workers}");
    let out = content(&input);
    let order: Vec<usize> = ["[models]", "[batching]", "[tls]", "[workers]", "[logging]"]
        .iter()
        .map(|t| out.find(t).unwrap_or_else(|| panic!("{t} missing:\n{out}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert!(
        out.contains(workers),
        "[workers] must be byte-identical:\n{out}"
    );
    assert!(out.contains(tls), "{out}");
}

#[test]
fn existing_2_0_0_tables_are_merged_into_without_overwriting() {
    let input = "bind_address = \"h\"\nport = 1\nrequest_timeout_ms = 5000\n\n[logging]\nformat = \"json\"\ncolor = true\n\n[server]\naddress = \"kept:9\"\n";
    let out = migrate(input);
    let d = doc(&out.content);
    assert_eq!(d["server"]["address"].as_str(), Some("kept:9"));
    assert_eq!(d["server"]["request_timeout"].as_str(), Some("5s"));
    assert_eq!(d["logging"]["format"].as_str(), Some("json"));
    assert!(
        out.content.find("[server]") < out.content.find("[batching]"),
        "{}",
        out.content
    );
    assert!(
        out.content.find("[batching]") < out.content.find("[logging]"),
        "{}",
        out.content
    );
    assert_eq!(
        out.warnings,
        [
            "unknown key `logging.color` kept as it is",
            "`bind_address`, `port` (now \"h:1\") not applied: [server] address is already set and was kept",
        ]
    );
}

#[test]
fn an_inline_2_0_0_table_becomes_a_section() {
    let out = content("# about logging\nlogging = { level = \"warn\" }\nlog_level = \"info\"\n");
    assert_eq!(
        out,
        "# about logging\n[batching]\nmax_wait = \"10ms\"\n\n[logging]\nlevel = \"warn\"\nformat = \"text\"\n"
    );
}

#[test]
fn inline_workers_table_is_accepted_and_checked() {
    let d = doc(&content("workers = { count = 2, max_queue = 8 }\n"));
    assert_eq!(d["workers"]["count"].as_integer(), Some(2));
    let e = refuse("workers = { count = 0 }\n");
    assert_eq!(e.field.as_deref(), Some("workers.count"));
}

#[test]
fn wrong_types_are_refused_naming_the_key_and_the_expected_type() {
    for (input, field, expected) in [
        (
            "port = \"eighty\"\nbind_address = \"h\"\n",
            "port",
            "an integer in 1..=65535",
        ),
        (
            "port = 0\nbind_address = \"h\"\n",
            "port",
            "an integer in 1..=65535",
        ),
        (
            "port = 65536\nbind_address = \"h\"\n",
            "port",
            "an integer in 1..=65535",
        ),
        ("port = 80\nbind_address = 1\n", "bind_address", "a string"),
        (
            "request_timeout_ms = -1\n",
            "request_timeout_ms",
            "an integer ≥ 0",
        ),
        (
            "request_timeout_ms = 1.5\n",
            "request_timeout_ms",
            "an integer ≥ 0",
        ),
        ("model_dir = [\"m\"]\n", "model_dir", "a string"),
        ("default_model = true\n", "default_model", "a string"),
        ("max_batch_size = 0\n", "max_batch_size", "an integer ≥ 1"),
        (
            "log_level = \"verbose\"\n",
            "log_level",
            "one of trace|debug|info|warn|error",
        ),
        (
            "log_level = 3\n",
            "log_level",
            "one of trace|debug|info|warn|error",
        ),
        ("workers = 4\n", "workers", "expected a table"),
        ("[[workers]]\ncount = 1\n", "workers", "expected a table"),
        ("[workers]\ncount = 0\n", "workers.count", "an integer ≥ 1"),
        (
            "[workers]\nmax_queue = \"big\"\n",
            "workers.max_queue",
            "an integer ≥ 1",
        ),
        ("logging = \"loud\"\n", "logging", "expected a table"),
    ] {
        let e = refuse(input);
        assert_eq!(e.field.as_deref(), Some(field), "{input}");
        assert!(e.message.contains(expected), "{input}: {}", e.message);
    }
}

#[test]
fn one_half_of_the_address_is_refused_naming_the_missing_key() {
    let e = refuse("bind_address = \"h\"\n");
    assert_eq!(e.field.as_deref(), Some("port"));
    assert!(
        e.message.contains("add `port` to config/server.toml"),
        "{}",
        e.message
    );
    let e = refuse("port = 80\n");
    assert_eq!(e.field.as_deref(), Some("bind_address"));
    assert!(
        e.message
            .contains("add `bind_address` to config/server.toml"),
        "{}",
        e.message
    );
}

#[test]
fn invalid_toml_is_refused() {
    assert!(refuse("port = = 1\n").message.contains("invalid TOML"));
}

#[test]
fn nested_tables_of_a_moved_group_stay_under_their_parent() {
    let out = content(
        "bind_address = \"h\"\nport = 1\n\n[workers]\ncount = 1\n\n[server.tls]\ncert = 1\n",
    );
    let d = doc(&out);
    assert_eq!(d["server"]["tls"]["cert"].as_integer(), Some(1));
    let at = |t: &str| out.find(t).unwrap_or_else(|| panic!("{t} missing:\n{out}"));
    assert!(
        at("[server]") < at("[server.tls]") && at("[server.tls]") < at("[batching]"),
        "{out}"
    );
    assert!(at("[workers]") < at("[logging]"), "{out}");
}

#[test]
fn arrays_of_tables_keep_their_order() {
    let out = content("[[backend]]\nurl = 1\n\n[[backend]]\nurl = 2\n");
    let d = doc(&out);
    let urls: Vec<i64> = d["backend"]
        .as_array_of_tables()
        .map(|a| a.iter().filter_map(|t| t["url"].as_integer()).collect())
        .unwrap_or_default();
    assert_eq!(urls, [1, 2]);
    assert!(out.find("[batching]") < out.find("[[backend]]"), "{out}");
}

#[test]
fn a_comment_naming_milliseconds_follows_the_duration_unit() {
    let out = content("request_timeout_ms = 30000 # milliseconds\n");
    assert!(
        out.contains("request_timeout = \"30s\" # seconds\n"),
        "{out}"
    );
    let out = content("request_timeout_ms = 1500 # milliseconds\n");
    assert!(
        out.contains("request_timeout = \"1500ms\" # milliseconds\n"),
        "{out}"
    );
}

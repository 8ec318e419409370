use super::*;
use proptest::prelude::*;
use serde_json::json;

/// A reader that hands out one byte per read, so every record crosses buffer refills.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

/// The records `Records` cuts from `text`, read in one go and one byte at a time (which must
/// agree), each parsed.
fn cut(text: &[u8]) -> (Shape, Vec<Value>) {
    let mut all = Vec::new();
    for trickle in [false, true] {
        let reader: Box<dyn Read> = if trickle {
            Box::new(Trickle(text))
        } else {
            Box::new(text)
        };
        let mut records = Records::new(reader).unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while records.next_into(&mut buf).unwrap() {
            assert!(
                !buf.contains(&b'\n'),
                "one line: {}",
                String::from_utf8_lossy(&buf)
            );
            got.push(serde_json::from_slice::<Value>(&buf).unwrap());
            buf.clear();
        }
        assert_eq!(records.consumed(), text.len() as u64, "trickle {trickle}");
        all.push((records.shape(), got));
    }
    assert_eq!(all[0], all[1]);
    all.remove(0)
}

/// What serde_json reads as the document's records.
fn records_of(text: &[u8]) -> (Shape, Vec<Value>) {
    match serde_json::from_slice::<Value>(text).unwrap() {
        Value::Array(items) => (Shape::Array, items),
        other => (Shape::Single, vec![other]),
    }
}

/// The old way: the whole document parsed, its records migrated, the whole printed again.
fn rendered_whole(text: &[u8]) -> Vec<u8> {
    let doc: Value = serde_json::from_slice(text).unwrap();
    let trimmed = text.trim_ascii();
    let mut out = if trimmed.contains(&b'\n') {
        serde_json::to_vec_pretty(&doc)
    } else {
        serde_json::to_vec(&doc)
    }
    .unwrap();
    if text.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// The document as `Writer` prints it from the records `Records` cut (compact lines, as a hop
/// that changes nothing returns them).
fn rendered_streaming(text: &[u8]) -> Vec<u8> {
    let style = check(text).unwrap();
    let mut records = Records::new(text).unwrap();
    let mut writer = Writer::new(records.shape(), style);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while records.next_into(&mut buf).unwrap() {
        writer.record(&buf, &mut out).unwrap();
        buf.clear();
    }
    writer.finish(&mut out).unwrap();
    out
}

const DOCUMENTS: &[&str] = &[
    r#"{"keys":[{"name":"ci","key":"tfk_8c1d","created_at":1640995200,"scopes":["infer"]}]}"#,
    "{\n  \"keys\": [\n    {\"name\": \"ci\", \"scopes\": []}\n  ]\n}\n",
    "[]",
    "[ ]\n",
    "[\n]\n",
    "[1, \"two\", null, true, [3, [4]], {\"five\": {}}]",
    "[\n  {\"a\": \"x,]}\", \"b\": \"\\\"[\\\\\"},\n  {\"c\" : [ 1 , 2 ] }\n]\n",
    "  \n [{\"unicode\": \"é ✓ \\u00e9\", \"n\": -1.5e3}] \n\n",
    "[{\"a\":1},{\"a\":2},{\"a\":3}]\n",
    "\"a lone string\"",
    "42\n",
    "{}",
    "[[],[[]],{},{\"\":\"\"}]",
];

#[test]
fn records_are_the_ones_serde_json_reads() {
    for doc in DOCUMENTS {
        assert_eq!(cut(doc.as_bytes()), records_of(doc.as_bytes()), "{doc}");
    }
}

#[test]
fn documents_are_written_as_serde_json_prints_them_whole() {
    for doc in DOCUMENTS {
        let want = rendered_whole(doc.as_bytes());
        let got = rendered_streaming(doc.as_bytes());
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap(),
            "{doc}"
        );
    }
}

#[test]
fn style_ignores_blank_lines_around_the_document() {
    let style = |t: &str| check(t.as_bytes()).unwrap();
    assert_eq!(style("[1]"), Style::default());
    assert!(!style("\n\n  [1]  \n\n").multiline);
    assert!(style("\n\n  [1]  \n\n").trailing_newline);
    assert!(style("[1,\n2]").multiline);
    assert!(!style("[1,\n2] ").trailing_newline);
}

#[test]
fn a_broken_document_is_refused_with_its_line() {
    for (doc, line) in [
        ("[1,\n2,\n]", 3),
        ("{\"a\": 1}\n{\"b\": 2}", 2),
        ("[{\"a\": tru}]", 1),
        ("", 1),
        ("\n\n[1", 3),
    ] {
        let e = check(doc.as_bytes()).unwrap_err();
        assert!(!e.is_io(), "{doc:?}: {e}");
        assert_eq!(e.line(), line, "{doc:?}: {e}");
    }
}

#[test]
fn input_that_changed_after_the_check_never_panics() {
    for doc in ["[1,", "[{\"a\":\"open", "[]]]]", "[,,]", "}}}", "[\"\\"] {
        let mut records = Records::new(doc.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut n = 0;
        while records.next_into(&mut buf).unwrap() {
            n += 1;
            assert!(n < 10, "{doc}: does not end");
        }
    }
}

#[test]
fn a_plugins_invalid_output_is_an_error_not_a_broken_document() {
    let mut writer = Writer::new(Shape::Array, Style::default());
    let e = writer.record(b"{\"a\":", &mut Vec::new()).unwrap_err();
    assert!(
        e.to_string().starts_with("a plugin returned invalid JSON"),
        "{e}"
    );
}

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[ -~\\\\\"\n\t\u{e9}\u{2713}]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec(("[a-z,\\]}\" ]{0,6}", inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Any document, compact or pretty, with or without a final newline: cut into the records
    /// serde_json reads, and written back exactly as serde_json prints it whole.
    #[test]
    fn any_document_round_trips_as_serde_json_would(
        doc in any_value(),
        pretty in any::<bool>(),
        newline in any::<bool>(),
    ) {
        let mut text = if pretty {
            serde_json::to_vec_pretty(&doc).unwrap()
        } else {
            serde_json::to_vec(&doc).unwrap()
        };
        if newline {
            text.push(b'\n');
        }
        prop_assert_eq!(cut(&text), records_of(&text));
        prop_assert_eq!(rendered_streaming(&text), rendered_whole(&text));
    }
}

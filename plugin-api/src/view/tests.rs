//! The index against `RawRecord`, the reference it replaces on the data path: reading, writing
//! and every edit must give what `RawRecord` gives; the wire must carry views unchanged; bad
//! edits must refuse the record (or the batch, when they do not decode).

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::raw::FieldValue;

/// `RawRecord`'s reading and writing of a batch, as plugins did before 1.5.0.
fn reference(batch: &[u8]) -> (Vec<u8>, Vec<(u64, String)>) {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    let body = batch.strip_suffix(b"\n").unwrap_or(batch);
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        match RawRecord::parse(line) {
            Ok(r) => {
                r.write(&mut out).unwrap();
                out.push(b'\n');
            }
            Err(e) => failures.push((i as u64, e.message)),
        }
    }
    (out, failures)
}

fn indexed(batch: &[u8]) -> (Vec<u8>, Vec<(u64, String)>) {
    let (vb, refused) = ViewBatch::read(batch.to_vec());
    let mut out = Vec::new();
    vb.write(&mut out);
    (
        out,
        refused.into_iter().map(|(i, e)| (i, e.message)).collect(),
    )
}

const CORNERS: &[&str] = &[
    r#"{"a":1,"b":"x"}"#,
    r#"  { "a" : [1, 2] , "b":{"c" : null} }  "#,
    r#"{"a\u0062":1,"q\"":2}"#,
    r#"{"a":1,"a":2,"b":3,"a":4}"#,
    r#"{}"#,
    r#"[1]"#,
    r#"{"a":}"#,
    r#"{"a":01}"#,
    r#""#,
    r#"{"a":"\ud800"}"#,
    r#"{"x":1.0E2,"y":-0,"z":"\/"}"#,
    "{\"a\":1}\r",
];

#[test]
fn reading_and_writing_give_what_raw_record_gives() {
    let mut batch = CORNERS.join("\n").into_bytes();
    batch.extend_from_slice(b"\n{\"bad\":\"\xff\"}\n");
    let deep = format!("{{\"d\":{}0{}}}\n", "[".repeat(90), "]".repeat(90));
    batch.extend_from_slice(deep.as_bytes());
    let many: String = (0..80).map(|i| format!("\"k{}\":{i},", i % 70)).collect();
    batch.extend_from_slice(format!("{{{}\"end\":1}}\n", many).as_bytes());
    assert_eq!(indexed(&batch), reference(&batch));
    // Without the bad byte, the batch takes the fast path (one UTF-8 check for all).
    let clean = CORNERS.join("\n") + "\n";
    assert_eq!(indexed(clean.as_bytes()), reference(clean.as_bytes()));
    assert!(indexed(clean.as_bytes()).1.len() >= 4);
}

fn json_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec!["a", "b", "schema_version", "é", "a\"b", "t\\u"])
            .prop_map(str::to_owned),
        "[a-c]{1,2}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        "[a-z\"\\\\é]{0,4}".prop_map(Value::from),
        (-100i64..100).prop_map(|n| Value::from(n as f64 / 8.0)),
    ];
    let value = leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec(("[a-c]{1}", inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    (
        prop::collection::vec((key, value), 0..6),
        prop::sample::select(vec!["", " ", "\t"]),
        any::<bool>(),
    )
        .prop_map(|(entries, ws, repeat)| {
            let mut fields: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}{ws}:{ws}{v}", Value::from(k.as_str())))
                .collect();
            if repeat && !fields.is_empty() {
                fields.push(fields[0].clone());
            }
            format!("{ws}{{{}}}", fields.join(&format!(",{ws}")))
        })
}

/// One edit, as both a `RawRecord` call and an `Edits` call.
#[derive(Debug, Clone)]
enum Op {
    Set(String, String),
    Remove(String),
    Replace(String, Vec<(String, String)>),
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop::sample::select(vec!["a", "b", "c", "é", "new"]).prop_map(str::to_owned);
    let text = prop::sample::select(vec!["1", "\"s\"", "{\"x\":[1,2]}", "null", " 2 ", "{bad"])
        .prop_map(str::to_owned);
    prop_oneof![
        (key.clone(), text.clone()).prop_map(|(k, v)| Op::Set(k, v)),
        key.clone().prop_map(Op::Remove),
        (key.clone(), prop::collection::vec((key, text), 0..3))
            .prop_map(|(k, e)| Op::Replace(k, e)),
    ]
}

fn raw_apply(r: &mut RawRecord<'_>, ops: &[Op]) -> Result<(), FieldError> {
    for op in ops {
        match op {
            Op::Set(k, v) => r.insert(k.clone(), FieldValue::json(v.clone()))?,
            Op::Remove(k) => {
                r.remove(k)?;
            }
            Op::Replace(k, e) => r.replace(
                k,
                e.iter()
                    .map(|(k, v)| (k.clone(), FieldValue::json(v.clone())))
                    .collect::<Vec<_>>(),
            )?,
        }
    }
    Ok(())
}

fn edits_apply(edits: &mut Edits, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Set(k, v) => {
                edits.set(k, v);
            }
            Op::Remove(k) => {
                edits.remove(k);
            }
            Op::Replace(k, e) => {
                let e: Vec<(&str, &str)> =
                    e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                edits.replace(k, &e);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_records_read_and_write_as_raw_record_does(lines in prop::collection::vec(json_line(), 1..6)) {
        let batch = lines.join("\n") + "\n";
        prop_assert_eq!(indexed(batch.as_bytes()), reference(batch.as_bytes()));
    }

    /// Edits through the host (encoded, decoded, checked, applied) give what the same calls on
    /// a `RawRecord` give, refusals included; and the view a plugin decodes from the wire is
    /// the view the host holds.
    #[test]
    fn edits_give_what_raw_record_gives(
        lines in prop::collection::vec(json_line(), 1..5),
        ops in prop::collection::vec(op(), 0..5),
    ) {
        let batch = lines.join("\n") + "\n";
        let (mut want_out, mut want_failures) = (Vec::new(), Vec::new());
        for (i, line) in lines.iter().enumerate() {
            let mut r = RawRecord::parse(line.as_bytes()).unwrap();
            match raw_apply(&mut r, &ops) {
                Ok(()) => {
                    r.write(&mut want_out).unwrap();
                    want_out.push(b'\n');
                }
                Err(e) => want_failures.push((i as u64, RuleError::from(e).to_string())),
            }
        }
        let (mut vb, unread) = ViewBatch::read(batch.into_bytes());
        prop_assert!(unread.is_empty());
        let mut table = Vec::new();
        vb.encode_table(&mut table);
        let text = vb.text().to_owned();
        let decoded = DecodedView::decode(&text, &table).unwrap();
        prop_assert_eq!(decoded.records.len(), vb.len());
        for (i, r) in decoded.records.iter().enumerate() {
            let got = RecordView { text: &text, entries: &decoded.entries[r.first as usize..(r.first + r.count) as usize] };
            prop_assert_eq!(got.entries().collect::<Vec<_>>(), vb.view(i).entries().collect::<Vec<_>>());
        }
        let (encoded, refused) = decoded.run(&|_, edits| { edits_apply(edits, &ops); Ok(()) });
        prop_assert!(refused.is_empty());
        let bad = vb.apply(&encoded).unwrap();
        vb.remove(&bad);
        let mut out = Vec::new();
        vb.write(&mut out);
        prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(want_out).unwrap());
        let got_failures: Vec<(u64, String)> = bad.into_iter().map(|(i, e)| (i, e.to_string())).collect();
        prop_assert_eq!(got_failures, want_failures);
    }
}

fn one(
    line: &str,
    rule: &dyn Fn(&RecordView<'_>, &mut Edits) -> Result<(), FieldError>,
) -> Result<String, String> {
    let (mut vb, refused) = ViewBatch::read(line.as_bytes().to_vec());
    assert!(refused.is_empty());
    let refused = vb.run(rule).map_err(|e| e.to_string())?;
    if let Some((_, e)) = refused.into_iter().next() {
        return Err(e.to_string());
    }
    let mut out = Vec::new();
    vb.write(&mut out);
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn replace_at_changes_only_its_ranges_and_the_value_is_checked() {
    let line = r#"{"c":{"ip": "x", "seen_at":5,"k":"plain","scopes":[]},"z":1}"#;
    let got = one(line, &|view, edits| {
        let objects = view.objects_in("c").unwrap();
        let seen = objects[0].member("seen_at").unwrap();
        edits.replace_at("c", seen.value.clone(), "\"five\"");
        let k = objects[0].member("k").unwrap();
        edits.replace_at("c", k.span.clone(), "\"h\":1,\"p\":2");
        Ok(())
    });
    assert_eq!(
        got.unwrap(),
        "{\"c\":{\"ip\": \"x\", \"seen_at\":\"five\",\"h\":1,\"p\":2,\"scopes\":[]},\"z\":1}\n"
    );
    // Text that breaks the value refuses the record, naming the key.
    let broken = one(line, &|_, edits| {
        edits.replace_at("c", 0..1, "[");
        Ok(())
    });
    assert!(broken.unwrap_err().contains("`c`: not valid JSON text"));
    let overlap = one(line, &|_, edits| {
        edits.replace_at("c", 1..5, "").replace_at("c", 3..6, "");
        Ok(())
    });
    assert!(overlap.unwrap_err().contains("overlap"));
    let past = one(line, &|_, edits| {
        edits.replace_at("z", 0..9, "2");
        Ok(())
    });
    assert!(past.unwrap_err().contains("past"));
}

#[test]
fn insert_before_and_after_move_a_key_next_to_its_anchor() {
    let line = r#"{"a":1,"b":2,"c":3}"#;
    let got = one(line, &|_, edits| {
        edits
            .insert_after("a", "c", "30")
            .insert_before("a", "new", "0")
            .insert_after("zz", "q", "1");
        Ok(())
    });
    assert_eq!(got.unwrap(), "{\"new\":0,\"a\":1,\"c\":30,\"b\":2}\n");
}

#[test]
fn objects_in_gives_the_paths_walk_record_mut_gives_and_none_for_repeated_keys() {
    let line = r#"{"keys":[{"key":"k","c":{"seen_at":1}},2,[{"x\u0079":3}]],"d":{"a":1,"a":2}}"#;
    let (vb, _) = ViewBatch::read(line.as_bytes().to_vec());
    let view = vb.view(0);
    let paths: Vec<String> = view
        .objects_in("keys")
        .unwrap()
        .iter()
        .map(|o| o.path().to_owned())
        .collect();
    assert_eq!(paths, ["keys[0]", "keys[0].c", "keys[2][0]"]);
    let objects = view.objects_in("keys").unwrap();
    assert!(objects[2].contains_key("xy"), "escaped keys are unescaped");
    assert!(view.objects_in("d").is_none());
    assert!(view.objects_in("absent").unwrap().is_empty());
}

#[test]
fn malformed_edits_and_views_are_protocol_errors() {
    let (mut vb, _) = ViewBatch::read(b"{\"a\":1}\n".to_vec());
    assert_eq!(vb.apply(&[0, 0, 0, 0, 99]), Err(ProtocolError));
    assert_eq!(
        vb.apply(&[5, 0, 0, 0, OP_REMOVE, 1, 0, 0, 0, b'a']),
        Err(ProtocolError)
    );
    assert_eq!(
        vb.apply(&[0, 0, 0, 0, OP_SET, 9, 0, 0, 0]),
        Err(ProtocolError)
    );
    // A record's ops come together and records in order: a record seen again is refused,
    // whatever its ops (or its edits would apply twice).
    let (mut two, _) = ViewBatch::read(b"{\"a\":1}\n{\"b\":2}\n".to_vec());
    let remove = |i: u8, k: u8| [i, 0, 0, 0, OP_REMOVE, 1, 0, 0, 0, k];
    let mut repeated = remove(0, b'a').to_vec();
    repeated.extend(remove(1, b'b'));
    repeated.extend(remove(0, b'a'));
    assert_eq!(two.apply(&repeated), Err(ProtocolError));
    // A replacement claiming more entries than the buffer could hold.
    assert_eq!(
        vb.apply(&[0, 0, 0, 0, OP_REPLACE, 1, 0, 0, 0, b'a', 255, 255, 255, 255]),
        Err(ProtocolError)
    );
    assert!(DecodedView::decode(
        "{}",
        &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    )
    .is_err());
}

#[test]
fn check_record_reads_schema_version_as_raw_record_does() {
    for line in [
        &br#"{"schema_version":3}"#[..],
        br#"{"schema_version":2,"schema_version":3}"#,
        br#"{"schema\u005fversion":3}"#,
        br#"{"schema_version":"3"}"#,
        br#"{"schema_version":3.0}"#,
        br#"{"schema_version":-0}"#,
        br#"{"a":}"#,
        b"{\"a\":\"\xff\"}",
        b"[]",
    ] {
        let want = RawRecord::parse(line).map(|r| r.u64("schema_version").ok().flatten());
        assert_eq!(
            check_record(line),
            want,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn a_payload_is_the_text_then_the_table_and_leaves_the_text_as_it_was() {
    let (mut vb, _) = ViewBatch::read(b"{\"a\":1,\"b\":\"x\"}\n{\"c\":[2]}\n".to_vec());
    let text = vb.text().to_owned();
    let mut table = Vec::new();
    vb.encode_table(&mut table);
    let (payload, n) = vb.with_payload(|payload, n| (payload.to_vec(), n));
    assert_eq!(n, text.len());
    assert_eq!(&payload[..n], text.as_bytes());
    assert_eq!(&payload[n..], &table[..]);
    assert_eq!(vb.text(), text);
    // And the decoded view of the payload is the batch's.
    let decoded = DecodedView::decode(vb.text(), &payload[n..]).unwrap();
    assert_eq!(decoded.records.len(), vb.len());
}

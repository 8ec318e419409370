use proptest::prelude::*;
use serde_json::Value;

use super::super::RawRecord;

/// The record as (key, raw text) pairs, by each path: the scanner's (`None` when it gives up)
/// and serde_json's.
type Pairs = Vec<(String, String)>;

fn pairs(record: &RawRecord<'_>) -> Pairs {
    record
        .entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.text().unwrap_or_default().to_owned()))
        .collect()
}

fn scanned(text: &str) -> Option<Pairs> {
    RawRecord::scan(text, Vec::new()).map(|r| pairs(&r))
}

fn deserialized(text: &str) -> Option<Pairs> {
    RawRecord::deserialize(text).ok().map(|r| pairs(&r))
}

fn p(list: &[(&str, &str)]) -> Pairs {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn splits_valid_records_as_serde_json_does() {
    let cases: &[(&str, Pairs)] = &[
        ("{}", p(&[])),
        (" \t\r\n{ } \r", p(&[])),
        (
            r#"{"a":1,"b" : -0.5e+10 ,"c":"x\"y\\u00e9\u00e9","d":[1,[2,{}],{"k\n":null}],"e":true,"f":false}"#,
            p(&[
                ("a", "1"),
                ("b", "-0.5e+10"),
                ("c", r#""x\"y\\u00e9\u00e9""#),
                ("d", r#"[1,[2,{}],{"k\n":null}]"#),
                ("e", "true"),
                ("f", "false"),
            ]),
        ),
        (
            "{ \"s\" : { \"x\" : [ ] , \"y\" : { } } , \"n\" : 0 }",
            p(&[("s", r#"{ "x" : [ ] , "y" : { } }"#), ("n", "0")]),
        ),
        (
            r#"{"é":"日本","":"\ud800"}"#,
            p(&[("é", r#""日本""#), ("", r#""\ud800""#)]),
        ),
        (r#"{"a":1,"b":2,"a":3}"#, p(&[("a", "3"), ("b", "2")])),
        (
            r#"{"x":1E5,"y":0.0,"z":-0,"w":1e-7}"#,
            p(&[("x", "1E5"), ("y", "0.0"), ("z", "-0"), ("w", "1e-7")]),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(scanned(text).as_ref(), Some(want), "{text}");
        assert_eq!(deserialized(text).as_ref(), Some(want), "{text}");
    }
}

/// The bytes a string scan must stop at: a quote, a backslash, a control character.
fn needs_a_look(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// Hands `check` a block of `len` bytes for every byte value at every place among `width`
/// bytes of every other byte value.
fn every_byte_at_every_place(width: usize, len: usize, mut check: impl FnMut(&mut [u8], usize)) {
    for byte in 0..=255u8 {
        for other in 0..=255u8 {
            for at in 0..width {
                let mut block = vec![other; len];
                block[at] = byte;
                check(&mut block, at);
            }
        }
    }
}

#[test]
fn special_bytes_marks_exactly_the_bytes_that_need_a_look() {
    every_byte_at_every_place(8, 8, |word, _| {
        let want = word
            .iter()
            .enumerate()
            .filter(|(_, c)| needs_a_look(**c))
            .fold(0u64, |m, (k, _)| m | 0x80 << (8 * k));
        let word: [u8; 8] = (&*word).try_into().unwrap();
        assert_eq!(
            super::special_bytes(u64::from_le_bytes(word)),
            want,
            "{word:?}"
        );
    });
}

/// Every byte value at every place among eight bytes of every other value: the lowest flag is
/// the first byte that is not a digit (bytes past it may be flagged or not), and `digits`
/// stops there, whether it reads by words or by bytes.
#[test]
fn digits_stop_at_the_first_byte_that_is_not_a_digit() {
    every_byte_at_every_place(8, 11, |block, _| {
        let first = block.iter().position(|c| !c.is_ascii_digit());
        let word: [u8; 8] = block[..8].try_into().unwrap();
        let flags = super::non_digit_bytes(u64::from_le_bytes(word));
        let found = (flags != 0).then(|| flags.trailing_zeros() as usize / 8);
        assert_eq!(found, first.filter(|&at| at < 8), "{block:?}");
        for from in [0, 1, 3] {
            let want = block[from..]
                .iter()
                .position(|c| !c.is_ascii_digit())
                .map_or(block.len(), |at| from + at);
            assert_eq!(super::digits(block, from), want, "{block:?} from {from}");
        }
    });
}

/// What `short_count` must give for the text at the start of `b`: the number's end and value
/// when the number there is a count of at most 16 digits, else nothing.
fn short_count_wanted(b: &[u8]) -> Option<(usize, u64)> {
    let end = super::number(b, 0)?;
    let text = std::str::from_utf8(&b[..end]).unwrap();
    // `0` then a digit is left to the slow way, which gives `0` and lets the caller refuse.
    let run = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let fraction_or_exponent = matches!(b.get(end), Some(b'.' | b'e' | b'E'));
    match text.parse::<u64>() {
        Ok(n) if run == end && end <= 16 && !fraction_or_exponent => Some((end, n)),
        _ => None,
    }
}

/// Every digit run up to 20 long, with each byte a number may meet after it (or none), at
/// every offset in a slice: `short_count` gives what `number` and `u64` parsing give, and
/// gives it for every count of up to 16 digits.
#[test]
fn short_count_reads_counts_as_number_and_parse_do() {
    let runs: Vec<String> = (1..=20)
        .flat_map(|len| {
            [
                "1234567890".repeat(2)[..len].to_owned(),
                "9".repeat(len),
                format!("1{}", "0".repeat(len - 1)),
                format!("0{}", "7".repeat(len - 1)),
            ]
        })
        .chain(
            [
                "0",
                "-0",
                "-12",
                "18446744073709551615",
                "18446744073709551616",
            ]
            .map(String::from),
        )
        .collect();
    let mut counted = 0;
    for run in &runs {
        for after in ["", ",", "}", "]", " ", ".5", "e3", "E3", "x"] {
            for pad in 0..3 {
                let text = format!("{}{run}{after}", " ".repeat(pad));
                let b = text.as_bytes();
                let got = super::short_count(b, pad).map(|(end, n)| (end - pad, n));
                let want = short_count_wanted(&b[pad..]);
                assert_eq!(got, want, "{text:?} at {pad}");
                counted += usize::from(got.is_some());
            }
        }
    }
    // Each of the 16 lengths has counts with each of six endings, at three offsets.
    assert!(counted >= 16 * 3 * 6 * 3, "{counted}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn special_16_finds_the_first_byte_that_needs_a_look() {
    // Each block also has a quote after the byte placed, which must not be the one found
    // when the byte is special, and two bytes past the 16 that must not be looked at.
    every_byte_at_every_place(16, 18, |block, at| {
        if at + 1 < 16 {
            block[at + 1] = b'"';
        }
        let first = |from: usize| block[from..from + 16].iter().position(|c| needs_a_look(*c));
        assert_eq!(super::special_16(block, 0), Some(first(0)), "{block:?}");
        assert_eq!(super::special_16(block, 2), Some(first(2)), "{block:?}");
    });
    // Fewer than 16 bytes left: the caller goes on 8 bytes at a time.
    assert_eq!(super::special_16(&[b'a'; 15], 0), None);
    assert_eq!(super::special_16(&[b'a'; 20], 5), None);
    assert_eq!(super::special_16(&[b'a'; 20], 4), Some(None));
}

#[test]
fn refuses_what_serde_json_refuses() {
    for text in [
        "",
        "{",
        "}",
        "[]",
        "1",
        "\"a\"",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\" 1}",
        "{a:1}",
        "{'a':1}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\":1 \"b\":2}",
        "{\"a\":1}x",
        "{\"a\":1}{}",
        "{\"a\":[1,]}",
        "{\"a\":[,1]}",
        "{\"a\":[1 2]}",
        "{\"a\":{\"b\"}}",
        "{\"a\":{\"b\":1,}}",
        "{\"a\":{1:2}}",
        "{\"a\":[}",
        "{\"a\":{]}",
        "{\"a\":[1}",
        "{\"a\":01}",
        "{\"a\":-01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":1e}",
        "{\"a\":1e+}",
        "{\"a\":-}",
        "{\"a\":+1}",
        "{\"a\":1.5.5}",
        "{\"a\":0x1}",
        "{\"a\":NaN}",
        "{\"a\":Infinity}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":True}",
        "{\"a\":nullx}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12G4\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":\"nl\nhere\"}",
        "{\"a\":\"open}",
        "{\"a\u{1}\":1}",
        "{\"a\":1}\u{a0}",
        "\u{a0}{\"a\":1}",
        "{\"a\":[\"x\"",
        "{\"a\":{\"b\":",
        "{\"a\":1,\"b\":[[[[]]]}",
        "{\"a\":\"a long string past one word\u{1f}and more\"}",
        "{\"a\":\"a long string past one word\\qand more\"}",
        "{\"a\":\"a long string past one word, never closed}",
    ] {
        assert_eq!(scanned(text), None, "the scanner accepted {text:?}");
        assert!(
            deserialized(text).is_none(),
            "serde_json accepts {text:?}: the case is wrongly listed"
        );
    }
}

#[test]
fn leaves_escaped_top_level_keys_and_deep_nesting_to_serde_json() {
    let deep = format!(r#"{{"d":{}1{}}}"#, "[".repeat(65), "]".repeat(65));
    let within = format!(r#"{{"d":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
    for text in [r#"{"k\u0030":1}"#, r#"{"a\"b":1}"#, deep.as_str()] {
        assert_eq!(scanned(text), None, "{text}");
        assert!(deserialized(text).is_some(), "{text}");
        assert!(RawRecord::parse_str(text).is_ok());
    }
    assert_eq!(scanned(&within), deserialized(&within));
    assert!(scanned(&within).is_some());
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z\"\\\\\u{0}-\u{1f}é☃\u{1F600}]{0,8}".prop_map(Value::from),
        "[a-z0-9 ]{0,30}[\"\\\\\u{0}-\u{1f}é]?[a-z0-9 ]{0,30}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec(("[a-z_\"\\\\\u{1}]{0,4}", inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn record() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(("[a-z_\"\\\\é]{0,4}", json_value()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(kv, pretty)| {
            let object = Value::Object(kv.into_iter().collect());
            if pretty {
                serde_json::to_string_pretty(&object).unwrap_or_default()
            } else {
                object.to_string()
            }
        })
}

/// Characters that make or break JSON, for mutations.
const EDITS: &[char] = &[
    '{', '}', '[', ']', ',', ':', '"', '\\', ' ', '\n', '0', '1', '-', '+', '.', 'e', 'E', 'u',
    'n', 't', 'f', 'a', '\u{1}', '\t', 'é',
];

fn mutated() -> impl Strategy<Value = String> {
    (
        record(),
        prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, 0..EDITS.len()), 1..4),
    )
        .prop_map(|(text, edits)| {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, kind, edit) in edits {
                let at = at.index(chars.len() + 1);
                match kind {
                    0 => chars.insert(at, EDITS[edit]),
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ if at < chars.len() => chars[at] = EDITS[edit],
                    _ => chars.push(EDITS[edit]),
                }
            }
            chars.into_iter().collect()
        })
}

/// When the scanner accepts, serde_json gives the same entries; when serde_json accepts, the
/// scanner gives up only for a reason it documents.
fn agrees(text: &str) -> Result<(), TestCaseError> {
    let fast = scanned(text);
    let slow = deserialized(text);
    match (&fast, &slow) {
        (Some(_), _) => prop_assert_eq!(&fast, &slow, "{}", text),
        (None, Some(_)) => {
            let escaped_key = RawRecord::deserialize(text)
                .map(|r| {
                    r.entries
                        .iter()
                        .any(|(k, _)| matches!(k, std::borrow::Cow::Owned(_)))
                })
                .unwrap_or(false);
            prop_assert!(escaped_key, "the scanner gave up on valid {text:?}");
        }
        (None, None) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn agrees_with_serde_json_on_valid_records(text in record()) {
        agrees(&text)?;
    }

    #[test]
    fn short_count_agrees_with_number_and_parse(
        digits in "[0-9]{1,18}",
        after in proptest::collection::vec(any::<u8>(), 0..10),
        sign in any::<bool>(),
    ) {
        let mut b = if sign { b"-".to_vec() } else { Vec::new() };
        b.extend_from_slice(digits.as_bytes());
        b.extend_from_slice(&after);
        prop_assert_eq!(super::short_count(&b, 0), short_count_wanted(&b));
    }

    #[test]
    fn agrees_with_serde_json_on_damaged_records(text in mutated()) {
        agrees(&text)?;
    }
}

//! Reading a record by the *skeleton* of one read before: the text between its scalars.
//!
//! A log's records are written by one program, so almost all of them have one of a handful of
//! skeletons: the same keys, braces, commas and spaces, at every depth, with only the scalars
//! (strings, numbers, literals) differing. Checking such a record again token by token is most
//! of the cost of `migrate validate` and of the pre-swap check. Instead, the text before each
//! scalar is compared with the skeleton's as bytes, and only the scalars are read, by the
//! scanner's own [`scalar`].
//!
//! Why this accepts exactly what the full scan accepts: the skeleton was taken from a record
//! the full scan accepted. A record that matches is the same text with each scalar replaced by
//! another that [`scalar`] accepts, ending where the next piece of the skeleton begins (the
//! scanner reads a scalar greedily, so the byte after it is where the full scan would look
//! next too). JSON lets any scalar stand where another stood, and the scanner's state between
//! two scalars (depth, object or array) depends only on the bytes between them, which are the
//! skeleton's. Keys are part of the skeleton, so a matching record has the same keys, in the
//! same places, written the same way. Anything else (another key, a container where a scalar
//! was, one more space, a value [`scalar`] refuses) is a miss, and the caller scans the record
//! in full, which decides as before.

use std::ops::Range;

use super::{elements, members, same_text, scalar, spans};

/// Records longer than this are not learned: their scan costs far more than a comparison
/// saves, and a skeleton keeps a copy of its record's text between scalars.
const MAX_LEARNED: usize = 64 * 1024;

/// The text of a record between its scalars, in order, and which scalar is the value of the
/// top-level key asked about (see [`Skeleton::learn`]).
#[derive(Debug, Default)]
pub(crate) struct Skeleton {
    /// The pieces of text between scalars, one after another: before the first scalar, between
    /// each two, and after the last (one more piece than scalars).
    text: Vec<u8>,
    /// Where each piece ends in `text`.
    ends: Vec<u32>,
    /// The scalar that is the value of the asked key's last top-level occurrence; `None` when
    /// the key is absent or its value is a container.
    marked: Option<usize>,
}

impl Skeleton {
    /// Makes this the skeleton of `text`, which the full scan ([`spans`]) must accept; marks the
    /// value of the last top-level `key` if it is a scalar. `false` (and an empty skeleton that
    /// matches nothing) when the text is not accepted or too long to learn.
    pub(crate) fn learn(&mut self, text: &str, key: &str) -> bool {
        self.text.clear();
        self.ends.clear();
        self.marked = None;
        let b = text.as_bytes();
        if b.len() > MAX_LEARNED {
            return false;
        }
        // One walk: the full scan hands over each top-level entry, whose scalars are gathered
        // as it goes; what it gathered counts only if the scan accepts the whole text.
        let mut scalars = Vec::new();
        let mut marked = None;
        let accepted = spans(text, |k, v| {
            if &b[k] == key.as_bytes() {
                marked = (!matches!(b[v.start], b'{' | b'[')).then_some(scalars.len());
            }
            collect(b, v.start, &mut scalars);
            Some(())
        });
        if accepted.is_none() {
            return false;
        }
        self.marked = marked;
        let mut from = 0;
        for s in scalars.iter().chain(std::iter::once(&(b.len()..b.len()))) {
            self.text.extend_from_slice(&b[from..s.start]);
            self.ends.push(self.text.len() as u32);
            from = s.end;
        }
        true
    }

    /// If `text` has this skeleton: `Some` with the range of the marked scalar (`None` inside
    /// when nothing is marked). `None` when it does not match, which says nothing about
    /// whether it is valid.
    #[inline]
    pub(crate) fn read(&self, text: &str) -> Option<Option<Range<usize>>> {
        let b = text.as_bytes();
        let (last, pieces) = self.ends.split_last()?;
        let mut at = 0;
        let mut from = 0;
        let mut marked = None;
        for (i, &end) in pieces.iter().enumerate() {
            let piece = &self.text[from..end as usize];
            from = end as usize;
            let next = at + piece.len();
            if !same_text(b.get(at..next)?, piece) {
                return None;
            }
            let end = scalar(b, next)?;
            if self.marked == Some(i) {
                marked = Some(next..end);
            }
            at = end;
        }
        let piece = &self.text[from..*last as usize];
        (b.len() - at == piece.len() && same_text(&b[at..], piece)).then_some(marked)
    }
}

/// Appends the range of every scalar of the value at `i` (text the scanner accepted), in order.
fn collect(b: &[u8], i: usize, out: &mut Vec<Range<usize>>) {
    // The text was accepted, so these walks succeed; a `None` would only leave the list short,
    // and the skeleton built from it would then match nothing the scan would refuse: its
    // pieces are still the record's own text.
    match b[i] {
        b'{' => {
            let _ = members(b, i, |m| collect(b, m.value.start, out));
        }
        b'[' => {
            let _ = elements(b, i, |e| collect(b, e.start, out));
        }
        _ => {
            if let Some(end) = scalar(b, i) {
                out.push(i..end);
            }
        }
    }
}

/// The last few skeletons seen, most recently matched first: a log mixes a handful of record
/// shapes, and trying each costs a comparison that usually fails within a few bytes.
#[derive(Debug, Default)]
pub(crate) struct Skeletons {
    known: Vec<Skeleton>,
    /// Misses since the last match: a log whose records share no skeleton learns ever more
    /// rarely, so that learning costs nothing there.
    misses: u32,
}

/// How many skeletons are kept.
const KEPT: usize = 4;

impl Skeletons {
    /// [`Skeleton::read`] by each known skeleton in turn.
    #[inline]
    pub(crate) fn read(&mut self, text: &str) -> Option<Option<Range<usize>>> {
        for i in 0..self.known.len() {
            if let Some(found) = self.known[i].read(text) {
                if i > 0 {
                    self.known.swap(0, i);
                }
                self.misses = 0;
                return Some(found);
            }
        }
        self.misses = self.misses.saturating_add(1);
        None
    }

    /// After a miss of a record the full scan accepted: learns its skeleton, while misses are
    /// few (then only at every power of two).
    pub(crate) fn learn(&mut self, text: &str, key: &str) {
        if self.misses > 8 && !self.misses.is_power_of_two() {
            return;
        }
        // Learned apart first: a record that cannot be learned (too long, or one the scan
        // leaves to serde_json) must not cost a known skeleton its place.
        let mut skeleton = Skeleton::default();
        if !skeleton.learn(text, key) {
            return;
        }
        if self.known.len() == KEPT {
            self.known.pop();
        }
        self.known.insert(0, skeleton);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the full scan says of `text`: accepted, and the value of the last top-level `key`.
    fn full(text: &str, key: &str) -> Option<Option<String>> {
        let mut found = None;
        spans(text, |k, v| {
            if &text[k] == key {
                found = Some(v);
            }
            Some(())
        })?;
        Some(found.map(|v| text[v].to_string()))
    }

    /// A skeleton read agrees with the full scan wherever it matches: on acceptance, and on
    /// the marked value (a container value is unmarked, and reads as `None`).
    fn agrees(skeleton: &Skeleton, text: &str) -> bool {
        match skeleton.read(text) {
            None => true,
            Some(marked) => {
                let Some(want) = full(text, "v") else {
                    return false;
                };
                let want = want.filter(|v| !v.starts_with(['{', '[']));
                marked.map(|r| text[r].to_string()) == want
            }
        }
    }

    #[test]
    fn a_record_of_the_same_skeleton_is_read_and_another_is_not() {
        let mut s = Skeleton::default();
        let base = r#"{"a":"x","b":{"c":[1,2.5e3,true,null],"d":{}},"v":3} "#;
        assert!(s.learn(base, "v"));
        assert_eq!(s.read(base).unwrap().map(|r| &base[r]), Some("3"));
        let same = r#"{"a":"yy\"z","b":{"c":[-7,0,false,"s"],"d":{}},"v":12} "#;
        assert_eq!(s.read(same).unwrap().map(|r| &same[r]), Some("12"));
        for other in [
            r#"{"a":"x","b":{"c":[1,2.5e3,true,null],"d":{}},"v":3}"#, // no trailing space
            r#"{"a":"x","b":{"c":[1,2.5e3,true],"d":{}},"v":3} "#,     // one element fewer
            r#"{"a":"x","b":{"c":[1,2.5e3,true,{}],"d":{}},"v":3} "#,  // a container for a scalar
            r#"{"a":"x","b":{"c":[01,2.5e3,true,null],"d":{}},"v":3} "#, // a leading zero
            r#"{"a":"x","b":{"c":[1,2.5e,true,null],"d":{}},"v":3} "#, // no exponent digits
            r#"{"a":"x","b":{"c":[1,2.5e3,true,nul],"d":{}},"v":3} "#, // a broken literal
            r#"{"a":"x	","b":{"c":[1,2,true,null],"d":{}},"v":3} "#,   // a raw tab in a string
            r#"{"A":"x","b":{"c":[1,2.5e3,true,null],"d":{}},"v":3} "#, // another key
            r#"{"a":"x","b":{"c":[1,2.5e3,true,null],"d":{}},"v":3} x"#, // text after
        ] {
            assert_eq!(s.read(other), None, "{other}");
        }
    }

    #[test]
    fn the_marked_value_is_the_last_top_level_one_and_only_a_scalar() {
        let mut s = Skeleton::default();
        let text = r#"{"v":1,"n":{"v":2},"v":3}"#;
        assert!(s.learn(text, "v"));
        assert_eq!(s.read(text).unwrap().map(|r| &text[r]), Some("3"));
        let text = r#"{"v":1,"v":{"x":2}}"#;
        assert!(s.learn(text, "v"));
        assert_eq!(s.read(text), Some(None));
        let text = r#"{"n":{"v":2}}"#;
        assert!(s.learn(text, "v"));
        assert_eq!(s.read(text), Some(None));
        // Nothing is learned from text the scan refuses.
        assert!(!s.learn(r#"{"v":1,}"#, "v"));
        assert_eq!(s.read(r#"{"v":1,}"#), None);
        assert_eq!(s.read(r#"{"v":1}"#), None);
    }

    /// Every mutation of records of a few skeletons: wherever the skeleton read matches, the
    /// full scan accepts the record and finds the same value.
    #[test]
    fn a_skeleton_read_never_accepts_what_the_full_scan_refuses() {
        let bases = [
            r#"{"id":"req-1","usage":{"in":457,"out":51},"m":{"ms":2253,"tps":22.64},"t":"2022-01-01T00:00:01Z","v":3}"#,
            r#"{ "v" : -0.5e-3 , "a" : [ "x" , [ ] , { "k\u0041" : null } ] }"#,
            r#"{"v":{"v":1},"s":"\\\"\n"}"#,
            r#"{}"#,
        ];
        let alphabet = b"{}[],:\" \t\\-+.eE0123456789tfnulrsax\x01\x7f";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut matched = 0;
        for base in bases {
            let mut s = Skeleton::default();
            assert!(s.learn(base, "v"), "{base}");
            for _ in 0..20_000 {
                let mut b = base.as_bytes().to_vec();
                for _ in 0..1 + next() % 3 {
                    let at = (next() as usize) % (b.len() + 1);
                    let c = alphabet[(next() as usize) % alphabet.len()];
                    match next() % 3 {
                        0 if at < b.len() => b[at] = c,
                        1 if at < b.len() => {
                            b.remove(at);
                        }
                        _ => b.insert(at, c),
                    }
                }
                let text = String::from_utf8(b).unwrap();
                assert!(agrees(&s, &text), "{base} → {text}");
                matched += usize::from(s.read(&text).is_some());
            }
        }
        // The mutations reach both sides: some records still match.
        assert!(matched > 1_000, "{matched}");
    }

    #[test]
    fn skeletons_are_kept_most_recent_first_and_learned_ever_more_rarely() {
        let mut s = Skeletons::default();
        let a = r#"{"a":1,"v":2}"#;
        let b = r#"{"b":1,"v":2}"#;
        assert_eq!(s.read(a), None);
        s.learn(a, "v");
        assert!(s.read(a).is_some());
        assert_eq!(s.read(b), None);
        s.learn(b, "v");
        assert!(s.read(a).is_some() && s.read(b).is_some());
        // Many records of no shared skeleton: after eight misses, only powers of two learn.
        let mut learned = 0;
        for i in 0..1000 {
            let text = format!(r#"{{"k{i}":1}}"#);
            assert_eq!(s.read(&text), None);
            let before = s.known.first().map(|k| k.text.clone());
            s.learn(&text, "v");
            learned += usize::from(s.known.first().map(|k| k.text.clone()) != before);
        }
        assert_eq!(s.known.len(), KEPT);
        // Misses 1–8, then 16, 32, 64, 128, 256 and 512.
        assert_eq!(learned, 8 + 6);
    }

    #[test]
    fn a_record_that_cannot_be_learned_evicts_nothing() {
        let mut s = Skeletons::default();
        let shapes: Vec<String> = (0..KEPT).map(|i| format!(r#"{{"k{i}":1}}"#)).collect();
        for text in &shapes {
            assert_eq!(s.read(text), None);
            s.learn(text, "v");
        }
        let long = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_LEARNED));
        for text in [long.as_str(), r#"{"\u0076":1}"#, r#"{"v":1,}"#] {
            assert_eq!(s.read(text), None);
            s.learn(text, "v");
        }
        for text in &shapes {
            assert!(s.read(text).is_some(), "{text} was evicted");
        }
    }
}

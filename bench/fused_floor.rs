//! fused_floor: an independent, std-only prototype of the data step of the 0.1.0 -> 2.1.0
//! migration of a JSON-lines request log (all three hops fused into one pass per record).
//!
//! Usage: `fused_floor IN OUT`. Reads IN, writes OUT (created/truncated, mode 0600) in write
//! calls of at most 1 MiB, fsyncs OUT once at the end (skipped when FUSED_FLOOR_NO_SYNC is set
//! to a non-empty value other than 0) and prints one JSON line with the counts. Any line that
//! is not a record it can migrate stops the run: `IN:LINE: reason` on stderr, exit 1, and the
//! partial OUT is removed.
//!
//! Threads: a reader cuts IN into chunks at line ends, workers (one per core) migrate chunks
//! into output buffers, the main thread writes them in order. Input and output buffers are
//! recycled through channels, so memory stays bounded and fresh pages are touched only once.
//!
//! Record semantics (written from the spec, `bench/hops.jq` and black-box runs of `migrate`):
//! - The whole line is validated per RFC 8259 (UTF-8 included); it must be one object.
//! - Top-level members behave like a map: a repeated key keeps the position of its first
//!   occurrence and the value of its last. Top-level keys are printed compactly, re-escaped
//!   the way serde_json escapes; values are copied as written.
//! - `schema_version` present at top level: refused (not a 0.1.0 record).
//! - `prompt_tokens`/`completion_tokens` (non-negative integers) -> `usage` in place of
//!   `prompt_tokens` (of `completion_tokens` without it); refused when `usage` is also present. A present `usage` must be an object
//!   whose `output_tokens`, if any, is a non-negative integer.
//! - `latency_ms` (non-negative number) -> `metrics` in its place; refused when `metrics` is
//!   present. tokens_per_second = round2(output_tokens / (L / 1000)), or null when L is 0 or
//!   there is no output_tokens; a non-finite result is refused.
//! - `timestamp`/`*_at` keys at any depth: integer -> RFC 3339 UTC (years 0000-9999), string
//!   or null kept, anything else refused.
//! - An object with a `scopes` array and a `key` (which must be a string) gets
//!   `key_sha256`/`key_prefix` in place of `key` (refused if either already exists).
//! - Nested values: a top-level value whose text contains a backslash, `_at"`, `"timestamp"`
//!   or `"scopes"` is parsed as a tree (at most 127 nested containers, keys decoded strictly).
//!   If no object in it repeats a key, edits are spliced into the text as written (spacing
//!   kept); otherwise the value is rebuilt serde_json-style (duplicates merged, compact,
//!   strings re-escaped, numbers re-printed). Other values are copied verbatim.
//! - `"schema_version":3` is appended as the last key.

use std::collections::BTreeMap;
use std::env;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

/// Target input bytes per chunk (cut at the last line end).
const CHUNK: usize = 4 << 20;
/// Largest single write() call.
const WRITE_MAX: usize = 1 << 20;
/// Most nested containers serde_json accepts in a value it parses as a tree.
const MAX_DEPTH: usize = 127;
/// Unix seconds of 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const TS_MIN: i64 = -62_167_219_200;
const TS_MAX: i64 = 253_402_300_799;

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Lexing
// ---------------------------------------------------------------------------------------------

/// Byte classes inside a string: 0 plain, 1 control (invalid), 2 quote, 3 backslash, 4 non-ASCII.
static STR_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = 1;
        i += 1;
    }
    t[b'"' as usize] = 2;
    t[b'\\' as usize] = 3;
    let mut i = 0x80;
    while i < 256 {
        t[i] = 4;
        i += 1;
    }
    t
};

const K_STR: u8 = 0;
const K_NUM: u8 = 1;
const K_TRUE: u8 = 2;
const K_FALSE: u8 = 3;
const K_NULL: u8 = 4;
const K_OBJ: u8 = 5;
const K_ARR: u8 = 6;

fn kind_name(k: u8) -> &'static str {
    match k {
        K_STR => "string",
        K_NUM => "number",
        K_TRUE | K_FALSE => "boolean",
        K_NULL => "null",
        K_OBJ => "object",
        _ => "array",
    }
}

#[inline]
fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// Does a string (raw content between the quotes) make the product parse its value as a tree?
#[inline]
fn str_trigger(c: &[u8], esc: bool) -> bool {
    esc || c.ends_with(b"_at") || c == b"timestamp" || c == b"scopes"
}

/// A cursor over one line. JSON whitespace here excludes '\n', which ends the line.
struct P<'a> {
    s: &'a [u8],
    i: usize,
    non_ascii: bool,
    /// Start of the line, for error columns.
    ls: usize,
}

impl<'a> P<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            if c == b' ' || c == b'\t' || c == b'\r' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn err_at(&self, what: &str) -> String {
        match self.peek() {
            None | Some(b'\n') => format!("not valid JSON (EOF while parsing {what})"),
            Some(_) => format!(
                "not valid JSON (expected {what} at column {})",
                self.i - self.ls + 1
            ),
        }
    }

    #[inline]
    fn expect(&mut self, c: u8, what: &str) -> Res<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err_at(what))
        }
    }

    /// At an opening quote. Returns the content span and whether it holds escapes.
    #[inline(always)]
    fn string(&mut self) -> Res<(usize, usize, bool)> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let s = self.s;
        let start = self.i + 1;
        let mut i = start;
        let mut esc = false;
        loop {
            // Skip plain bytes eight at a time: stop at the first '"', '\\', control or
            // non-ASCII byte (the lowest flagged byte of each test below is exact).
            while i + 8 <= s.len() {
                let w = u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
                let q = w ^ (ONES * b'"' as u64);
                let b = w ^ (ONES * b'\\' as u64);
                let m = (q.wrapping_sub(ONES) & !q)
                    | (b.wrapping_sub(ONES) & !b)
                    | (w.wrapping_sub(ONES * 0x20) & !w)
                    | w;
                let m = m & HIGH;
                if m == 0 {
                    i += 8;
                } else {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
            }
            let Some(&c) = s.get(i) else {
                return Err("not valid JSON (EOF while parsing a string)".into());
            };
            if c == b'"' {
                self.i = i + 1;
                return Ok((start, i, esc));
            }
            match STR_CLASS[c as usize] {
                0 => i += 1,
                2 => {
                    self.i = i + 1;
                    return Ok((start, i, esc));
                }
                3 => {
                    esc = true;
                    match s.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            if i + 6 <= s.len() && s[i + 2..i + 6].iter().all(|&b| is_hex(b)) {
                                i += 6;
                            } else {
                                return Err(format!(
                                    "not valid JSON (invalid \\u escape at column {})",
                                    i - self.ls + 1
                                ));
                            }
                        }
                        _ => {
                            return Err(format!(
                                "not valid JSON (invalid escape at column {})",
                                i - self.ls + 1
                            ))
                        }
                    }
                }
                1 => {
                    return Err(format!(
                        "not valid JSON (control character in a string at column {})",
                        i - self.ls + 1
                    ))
                }
                _ => {
                    self.non_ascii = true;
                    i += 1;
                }
            }
        }
    }

    /// At '-' or a digit. Returns (is an integer literal, starts with '-').
    #[inline(always)]
    fn number(&mut self) -> Res<(bool, bool)> {
        let s = self.s;
        let mut i = self.i;
        let neg = s[i] == b'-';
        if neg {
            i += 1;
        }
        match s.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                i += 1;
                while matches!(s.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => return Err(self.bad_number(i)),
        }
        let mut int = true;
        if s.get(i) == Some(&b'.') {
            i += 1;
            self.digits(&mut i)?;
            int = false;
        }
        if matches!(s.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(s.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            self.digits(&mut i)?;
            int = false;
        }
        self.i = i;
        Ok((int, neg))
    }

    /// One or more digits from `*i` on (skipped), as a fraction and an exponent need.
    #[inline(always)]
    fn digits(&self, i: &mut usize) -> Res<()> {
        if !matches!(self.s.get(*i), Some(b'0'..=b'9')) {
            return Err(self.bad_number(*i));
        }
        while matches!(self.s.get(*i), Some(b'0'..=b'9')) {
            *i += 1;
        }
        Ok(())
    }

    fn bad_number(&self, i: usize) -> String {
        format!(
            "not valid JSON (invalid number at column {})",
            i - self.ls + 1
        )
    }

    #[inline]
    fn literal(&mut self, lit: &[u8]) -> Res<()> {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(format!(
                "not valid JSON (expected a value at column {})",
                self.i - self.ls + 1
            ))
        }
    }

    /// Validates an object or array starting at the cursor without recursion (any depth).
    /// Returns whether its text would make the product parse it as a tree.
    fn container(&mut self, stack: &mut Vec<u8>) -> Res<bool> {
        stack.clear();
        let mut trig = false;
        // 0: at an opening bracket; 1: expecting a member/element; 2: after a value.
        let mut st = 0u8;
        loop {
            match st {
                0 => {
                    let c = self.s[self.i];
                    self.i += 1;
                    stack.push(c);
                    self.ws();
                    let close = if c == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                        stack.pop();
                        if stack.is_empty() {
                            return Ok(trig);
                        }
                        st = 2;
                    } else {
                        st = 1;
                    }
                }
                1 => {
                    if *stack.last().unwrap() == b'{' {
                        if self.peek() != Some(b'"') {
                            return Err(self.err_at("a key"));
                        }
                        let (a, b, esc) = self.string()?;
                        trig |= str_trigger(&self.s[a..b], esc);
                        self.ws();
                        self.expect(b':', "`:`")?;
                        self.ws();
                    }
                    match self.peek() {
                        Some(b'{' | b'[') => {
                            st = 0;
                            continue;
                        }
                        Some(b'"') => {
                            let (a, b, esc) = self.string()?;
                            trig |= str_trigger(&self.s[a..b], esc);
                        }
                        Some(b'-' | b'0'..=b'9') => {
                            self.number()?;
                        }
                        Some(b't') => self.literal(b"true")?,
                        Some(b'f') => self.literal(b"false")?,
                        Some(b'n') => self.literal(b"null")?,
                        _ => return Err(self.err_at("a value")),
                    }
                    st = 2;
                }
                _ => {
                    self.ws();
                    let top = *stack.last().unwrap();
                    match self.peek() {
                        Some(b',') => {
                            self.i += 1;
                            self.ws();
                            st = 1;
                        }
                        Some(b'}') if top == b'{' => {
                            self.i += 1;
                            stack.pop();
                            if stack.is_empty() {
                                return Ok(trig);
                            }
                        }
                        Some(b']') if top == b'[' => {
                            self.i += 1;
                            stack.pop();
                            if stack.is_empty() {
                                return Ok(trig);
                            }
                        }
                        _ => {
                            return Err(self.err_at(if top == b'{' {
                                "`,` or `}`"
                            } else {
                                "`,` or `]`"
                            }))
                        }
                    }
                }
            }
        }
    }

    /// Any value: returns (kind, is integer literal, negative, trigger).
    #[inline]
    fn value(&mut self, stack: &mut Vec<u8>) -> Res<(u8, bool, bool, bool)> {
        match self.peek() {
            Some(b'"') => {
                let (a, b, esc) = self.string()?;
                Ok((K_STR, false, false, str_trigger(&self.s[a..b], esc)))
            }
            Some(b'-' | b'0'..=b'9') => {
                let (int, neg) = self.number()?;
                Ok((K_NUM, int, neg, false))
            }
            Some(b'{') => Ok((K_OBJ, false, false, self.container(stack)?)),
            Some(b'[') => Ok((K_ARR, false, false, self.container(stack)?)),
            Some(b't') => self.literal(b"true").map(|_| (K_TRUE, false, false, false)),
            Some(b'f') => self
                .literal(b"false")
                .map(|_| (K_FALSE, false, false, false)),
            Some(b'n') => self.literal(b"null").map(|_| (K_NULL, false, false, false)),
            _ => Err(self.err_at("a value")),
        }
    }
}

fn hex4(h: &[u8]) -> u32 {
    h.iter().fold(0u32, |a, &b| {
        a * 16
            + match b {
                b'0'..=b'9' => (b - b'0') as u32,
                b'a'..=b'f' => (b - b'a' + 10) as u32,
                _ => (b - b'A' + 10) as u32,
            }
    })
}

/// Decodes validated string content, refusing lone surrogates the way serde_json does when
/// it builds a String.
fn decode_str(c: &[u8], out: &mut Vec<u8>) -> Res<()> {
    let mut i = 0;
    while i < c.len() {
        let b = c[i];
        if b != b'\\' {
            let j = c[i..]
                .iter()
                .position(|&x| x == b'\\')
                .map_or(c.len(), |p| i + p);
            out.extend_from_slice(&c[i..j]);
            i = j;
            continue;
        }
        let e = c[i + 1];
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            _ => {
                let u = hex4(&c[i..i + 4]);
                i += 4;
                if (0xD800..0xDC00).contains(&u) {
                    if i + 6 <= c.len() && c[i] == b'\\' && c[i + 1] == b'u' {
                        let l = hex4(&c[i + 2..i + 6]);
                        if (0xDC00..0xE000).contains(&l) {
                            i += 6;
                            char::from_u32(0x10000 + ((u - 0xD800) << 10) + (l - 0xDC00)).unwrap()
                        } else {
                            return Err("lone leading surrogate in hex escape".into());
                        }
                    } else {
                        return Err("unexpected end of hex escape (lone leading surrogate)".into());
                    }
                } else if (0xDC00..0xE000).contains(&u) {
                    return Err("lone trailing surrogate in hex escape".into());
                } else {
                    char::from_u32(u).unwrap()
                }
            }
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    Ok(())
}

/// Writes a JSON string the way serde_json escapes it.
fn write_json_str(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

// ---------------------------------------------------------------------------------------------
// Numbers, dates, hashes
// ---------------------------------------------------------------------------------------------

#[inline]
fn parse_u64(d: &[u8]) -> Option<u64> {
    if d.is_empty() || d.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in d {
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// serde_json's reading of an integer literal: Some(value) if it is an i64/u64 integer
/// (`-0` and out-of-range integers are floats there).
fn json_int(raw: &[u8], int: bool) -> Option<i128> {
    if !int {
        return None;
    }
    if let Some(d) = raw.strip_prefix(b"-") {
        let v = parse_u64(d)?;
        if v == 0 || v > 1u64 << 63 {
            None
        } else {
            Some(-(v as i128))
        }
    } else {
        parse_u64(raw).map(|v| v as i128)
    }
}

fn num_f64(raw: &[u8]) -> f64 {
    // JSON number syntax is a subset of Rust's float syntax; this is correctly rounded.
    std::str::from_utf8(raw).unwrap().parse::<f64>().unwrap()
}

#[inline]
fn push2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// The date part of the last day formatted (records of a log are mostly in time order).
#[derive(Default)]
struct DateCache {
    day: Option<i64>,
    ymd: [u8; 11],
}

#[inline]
fn two(v: u32) -> [u8; 2] {
    [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]
}

/// Unix seconds (already range-checked) -> "YYYY-MM-DDTHH:MM:SSZ" with quotes.
#[inline]
fn write_date(t: i64, out: &mut Vec<u8>, cache: &mut DateCache) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400) as u32;
    if cache.day != Some(days) {
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = (yoe + era * 400 + if m <= 2 { 1 } else { 0 }) as u32;
        let (y1, y2, m2, d2) = (two(y / 100), two(y % 100), two(m), two(d));
        cache.ymd = [
            y1[0], y1[1], y2[0], y2[1], b'-', m2[0], m2[1], b'-', d2[0], d2[1], b'T',
        ];
        cache.day = Some(days);
    }
    let (h, mi, se) = (two(secs / 3600), two(secs / 60 % 60), two(secs % 60));
    let mut buf = [0u8; 22];
    buf[0] = b'"';
    buf[1..12].copy_from_slice(&cache.ymd);
    buf[12..22].copy_from_slice(&[
        h[0], h[1], b':', mi[0], mi[1], b':', se[0], se[1], b'Z', b'"',
    ]);
    out.extend_from_slice(&buf);
}

fn ts_value(raw: &[u8], int: bool, field: &dyn Fn() -> String) -> Res<i64> {
    let v = json_int(raw, int).ok_or_else(|| {
        format!(
            "field `{}`: expected integer unix seconds, a string or null, found number `{}`",
            field(),
            String::from_utf8_lossy(raw)
        )
    })?;
    if v < TS_MIN as i128 || v > TS_MAX as i128 {
        return Err(format!(
            "field `{}`: unix seconds {v} are outside the years 0000-9999 that an RFC 3339 timestamp can express",
            field()
        ));
    }
    Ok(v as i64)
}

fn write_u64(mut v: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// An f64 printed like the product (serde_json's shortest round-trip digits, ryu layout, with
/// an explicit `+` on positive exponents).
fn write_f64(v: f64, out: &mut Vec<u8>) {
    if v == 0.0 {
        out.extend_from_slice(if v.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        });
        return;
    }
    let s = format!("{:e}", v);
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.as_str()),
    };
    let (mant, exp) = s.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let digits: Vec<u8> = mant.bytes().filter(|&b| b != b'.').collect();
    let n = digits.len() as i32;
    let kk = exp + 1; // position of the decimal point relative to the first digit
    let k = kk - n; // exponent of the last digit
    if neg {
        out.push(b'-');
    }
    if k >= 0 && kk <= 16 {
        out.extend_from_slice(&digits);
        out.extend(std::iter::repeat_n(b'0', k as usize));
        out.extend_from_slice(b".0");
    } else if kk > 0 && kk <= 16 {
        out.extend_from_slice(&digits[..kk as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[kk as usize..]);
    } else if kk > -5 && kk <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-kk) as usize));
        out.extend_from_slice(&digits);
    } else {
        out.push(digits[0]);
        if n > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        if kk - 1 > 0 {
            out.push(b'+');
        }
        out.extend_from_slice((kk - 1).to_string().as_bytes());
    }
}

/// f64::round (half away from zero) for y >= 0 or NaN, without a libm call: below 2^52 the
/// truncation and the fraction are exact; from 2^52 on every f64 is an integer.
#[inline]
fn round_half_away(y: f64) -> f64 {
    if y < 4_503_599_627_370_496.0 {
        let t = y as u64;
        let f = y - t as f64;
        (t + (f >= 0.5) as u64) as f64
    } else {
        y.round()
    }
}

/// tokens_per_second: None = null; Err when it is not finite.
#[inline]
fn write_tps(o: Option<u64>, l: f64, out: &mut Vec<u8>) -> Res<()> {
    let Some(o) = o else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    if l == 0.0 {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    let x = o as f64 / (l / 1000.0);
    let k = round_half_away(x * 100.0);
    let t = k / 100.0;
    if !t.is_finite() {
        return Err(format!(
            "field `latency_ms`: {l} is too small to compute tokens_per_second from"
        ));
    }
    if k < 1e15 {
        // k/100 has at most 15 significant digits, so its shortest round-trip form is the
        // decimal k/100 itself with trailing zeros trimmed.
        let k = k as u64;
        write_u64(k / 100, out);
        out.push(b'.');
        let f = (k % 100) as u32;
        if f % 10 == 0 {
            out.push(b'0' + (f / 10) as u8);
        } else {
            push2(out, f);
        }
    } else {
        write_f64(t, out);
    }
    Ok(())
}

struct Sha256 {
    h: [u32; 8],
}

impl Sha256 {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    fn block(&mut self, b: &[u8]) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b2, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(Self::K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b2) ^ (a & c) ^ (b2 & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b2;
            b2 = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in self.h.iter_mut().zip([a, b2, c, d, e, f, g, h]) {
            *x = x.wrapping_add(y);
        }
    }

    fn hex(data: &[u8]) -> String {
        let mut s = Sha256 {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
        };
        let mut msg = data.to_vec();
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
        for b in msg.chunks(64) {
            s.block(b);
        }
        s.h.iter().map(|x| format!("{x:08x}")).collect()
    }
}

/// `"key_sha256":"…","key_prefix":"…"` for a decoded key.
fn write_api_key(key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"key_sha256\":\"");
    out.extend_from_slice(Sha256::hex(key).as_bytes());
    out.extend_from_slice(b"\",\"key_prefix\":");
    let s = std::str::from_utf8(key).unwrap();
    let end = s.char_indices().nth(8).map_or(s.len(), |(i, _)| i);
    write_json_str(&key[..end], out);
}

fn is_ts_key(k: &[u8]) -> bool {
    k == b"timestamp" || k.ends_with(b"_at")
}

// ---------------------------------------------------------------------------------------------
// Nested values (the slow path)
// ---------------------------------------------------------------------------------------------

enum Node {
    Scalar(usize, usize),
    Arr(usize, usize, Vec<Node>),
    Obj(usize, usize, Vec<NMem>),
}

struct NMem {
    /// Position of the key's opening quote.
    ks: usize,
    key: Vec<u8>,
    val: Node,
}

impl Node {
    fn span(&self) -> (usize, usize) {
        match self {
            Node::Scalar(a, b) | Node::Arr(a, b, _) | Node::Obj(a, b, _) => (*a, *b),
        }
    }
}

fn skip_ws(s: &[u8], i: &mut usize) {
    while matches!(s.get(*i), Some(b' ' | b'\t' | b'\r')) {
        *i += 1;
    }
}

/// Builds a tree of an already validated value, as serde_json would parse it: keys decoded
/// strictly, at most MAX_DEPTH nested containers.
fn build(s: &[u8], i: &mut usize, depth: usize) -> Res<Node> {
    skip_ws(s, i);
    let start = *i;
    let c = s[*i];
    if c == b'{' || c == b'[' {
        if depth + 1 > MAX_DEPTH {
            return Err("unreadable value (recursion limit exceeded)".into());
        }
        *i += 1;
        skip_ws(s, i);
        let close = if c == b'{' { b'}' } else { b']' };
        let mut mems = Vec::new();
        let mut items = Vec::new();
        if s[*i] == close {
            *i += 1;
        } else {
            loop {
                if c == b'{' {
                    let ks = *i;
                    let mut p = P {
                        s,
                        i: ks,
                        non_ascii: false,
                        ls: 0,
                    };
                    let (a, b, esc) = p.string()?;
                    let mut key = Vec::new();
                    if esc {
                        decode_str(&s[a..b], &mut key)
                            .map_err(|e| format!("unreadable value ({e})"))?;
                    } else {
                        key.extend_from_slice(&s[a..b]);
                    }
                    *i = p.i;
                    skip_ws(s, i);
                    *i += 1; // ':'
                    let val = build(s, i, depth + 1)?;
                    mems.push(NMem { ks, key, val });
                } else {
                    items.push(build(s, i, depth + 1)?);
                }
                skip_ws(s, i);
                let d = s[*i];
                *i += 1;
                if d == close {
                    break;
                }
                skip_ws(s, i);
            }
        }
        Ok(if c == b'{' {
            Node::Obj(start, *i, mems)
        } else {
            Node::Arr(start, *i, items)
        })
    } else {
        let mut p = P {
            s,
            i: start,
            non_ascii: false,
            ls: start,
        };
        let mut stack = Vec::new();
        p.value(&mut stack)?;
        *i = p.i;
        Ok(Node::Scalar(start, *i))
    }
}

fn has_dup_keys(n: &Node) -> bool {
    match n {
        Node::Scalar(..) => false,
        Node::Arr(_, _, items) => items.iter().any(has_dup_keys),
        Node::Obj(_, _, mems) => {
            for (j, m) in mems.iter().enumerate() {
                if mems[..j].iter().any(|x| x.key == m.key) {
                    return true;
                }
            }
            mems.iter().any(|m| has_dup_keys(&m.val))
        }
    }
}

fn scalar_kind(s: &[u8], a: usize) -> u8 {
    match s[a] {
        b'"' => K_STR,
        b't' => K_TRUE,
        b'f' => K_FALSE,
        b'n' => K_NULL,
        _ => K_NUM,
    }
}

fn node_kind(s: &[u8], n: &Node) -> u8 {
    match n {
        Node::Scalar(a, _) => scalar_kind(s, *a),
        Node::Arr(..) => K_ARR,
        Node::Obj(..) => K_OBJ,
    }
}

fn sub_path(path: &str, key: &[u8]) -> String {
    format!("{path}.{}", String::from_utf8_lossy(key))
}

/// Splice mode: emits the value as written, with the rules' edits in place.
fn emit(s: &[u8], n: &Node, path: &str, out: &mut Vec<u8>) -> Res<()> {
    match n {
        Node::Scalar(a, b) => out.extend_from_slice(&s[*a..*b]),
        Node::Arr(a, b, items) => {
            let mut cur = *a;
            for (idx, it) in items.iter().enumerate() {
                let (x, y) = it.span();
                out.extend_from_slice(&s[cur..x]);
                emit(s, it, &format!("{path}[{idx}]"), out)?;
                cur = y;
            }
            out.extend_from_slice(&s[cur..*b]);
        }
        Node::Obj(a, b, mems) => {
            let find = |k: &[u8]| mems.iter().position(|m| m.key == k);
            let mut api: Option<(usize, Vec<u8>)> = None;
            if let (Some(ki), Some(si)) = (find(b"key"), find(b"scopes")) {
                if matches!(mems[si].val, Node::Arr(..)) {
                    let (x, y) = mems[ki].val.span();
                    if scalar_kind(s, x) != K_STR || !matches!(mems[ki].val, Node::Scalar(..)) {
                        return Err(format!(
                            "field `{}`: an API key entry's `key` must be a string, found {}",
                            sub_path(path, b"key"),
                            kind_name(node_kind(s, &mems[ki].val))
                        ));
                    }
                    for other in [&b"key_sha256"[..], b"key_prefix"] {
                        if find(other).is_some() {
                            return Err(format!(
                                "field `{}`: already present next to a plaintext `key`",
                                sub_path(path, other)
                            ));
                        }
                    }
                    let mut key = Vec::new();
                    decode_str(&s[x + 1..y - 1], &mut key)
                        .map_err(|e| format!("field `{}`: {e}", sub_path(path, b"key")))?;
                    api = Some((ki, key));
                }
            }
            let mut cur = *a;
            for (idx, m) in mems.iter().enumerate() {
                let (x, y) = m.val.span();
                if let Some((ki, key)) = &api {
                    if *ki == idx {
                        out.extend_from_slice(&s[cur..m.ks]);
                        write_api_key(key, out);
                        cur = y;
                        continue;
                    }
                }
                out.extend_from_slice(&s[cur..x]);
                let p = sub_path(path, &m.key);
                if is_ts_key(&m.key) {
                    match node_kind(s, &m.val) {
                        K_STR | K_NULL => out.extend_from_slice(&s[x..y]),
                        K_NUM => {
                            let raw = &s[x..y];
                            let int = !raw.iter().any(|&c| matches!(c, b'.' | b'e' | b'E'));
                            write_date(ts_value(raw, int, &|| p.clone())?, out, &mut DateCache::default());
                        }
                        k => {
                            return Err(format!(
                                "field `{p}`: expected integer unix seconds, a string or null, found {}",
                                kind_name(k)
                            ))
                        }
                    }
                } else {
                    emit(s, &m.val, &p, out)?;
                }
                cur = y;
            }
            out.extend_from_slice(&s[cur..*b]);
        }
    }
    Ok(())
}

/// A value as serde_json::Value holds it.
enum Jv {
    Null,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    Str(Vec<u8>),
    Arr(Vec<Jv>),
    Obj(Vec<(Vec<u8>, Jv)>),
}

fn to_jv(s: &[u8], n: &Node) -> Res<Jv> {
    Ok(match n {
        Node::Scalar(a, b) => {
            let raw = &s[*a..*b];
            match raw[0] {
                b'"' => {
                    let mut v = Vec::new();
                    decode_str(&raw[1..raw.len() - 1], &mut v)
                        .map_err(|e| format!("unreadable value ({e})"))?;
                    Jv::Str(v)
                }
                b't' => Jv::Bool(true),
                b'f' => Jv::Bool(false),
                b'n' => Jv::Null,
                _ => {
                    let int = !raw.iter().any(|&c| matches!(c, b'.' | b'e' | b'E'));
                    match json_int(raw, int) {
                        Some(v) if v >= 0 => Jv::U(v as u64),
                        Some(v) => Jv::I(v as i64),
                        None => {
                            let f = num_f64(raw);
                            if !f.is_finite() {
                                return Err("unreadable value (number out of range)".into());
                            }
                            Jv::F(f)
                        }
                    }
                }
            }
        }
        Node::Arr(_, _, items) => Jv::Arr(items.iter().map(|i| to_jv(s, i)).collect::<Res<_>>()?),
        Node::Obj(_, _, mems) => {
            let mut v: Vec<(Vec<u8>, Jv)> = Vec::with_capacity(mems.len());
            for m in mems {
                let j = to_jv(s, &m.val)?;
                match v.iter_mut().find(|(k, _)| *k == m.key) {
                    Some(slot) => slot.1 = j,
                    None => v.push((m.key.clone(), j)),
                }
            }
            Jv::Obj(v)
        }
    })
}

fn jv_kind(v: &Jv) -> &'static str {
    match v {
        Jv::Null => "null",
        Jv::Bool(_) => "boolean",
        Jv::U(_) | Jv::I(_) | Jv::F(_) => "number",
        Jv::Str(_) => "string",
        Jv::Arr(_) => "array",
        Jv::Obj(_) => "object",
    }
}

fn transform_jv(v: &mut Jv, path: &str) -> Res<()> {
    match v {
        Jv::Arr(items) => {
            for (idx, it) in items.iter_mut().enumerate() {
                transform_jv(it, &format!("{path}[{idx}]"))?;
            }
        }
        Jv::Obj(mems) => {
            let find = |mems: &Vec<(Vec<u8>, Jv)>, k: &[u8]| mems.iter().position(|m| m.0 == k);
            if let (Some(ki), Some(si)) = (find(mems, b"key"), find(mems, b"scopes")) {
                if matches!(mems[si].1, Jv::Arr(_)) {
                    let Jv::Str(key) = &mems[ki].1 else {
                        return Err(format!(
                            "field `{}`: an API key entry's `key` must be a string, found {}",
                            sub_path(path, b"key"),
                            jv_kind(&mems[ki].1)
                        ));
                    };
                    for other in [&b"key_sha256"[..], b"key_prefix"] {
                        if find(mems, other).is_some() {
                            return Err(format!(
                                "field `{}`: already present next to a plaintext `key`",
                                sub_path(path, other)
                            ));
                        }
                    }
                    let hash = Sha256::hex(key).into_bytes();
                    let st = std::str::from_utf8(key).unwrap();
                    let end = st.char_indices().nth(8).map_or(st.len(), |(i, _)| i);
                    let prefix = key[..end].to_vec();
                    mems[ki] = (b"key_sha256".to_vec(), Jv::Str(hash));
                    mems.insert(ki + 1, (b"key_prefix".to_vec(), Jv::Str(prefix)));
                }
            }
            for (k, val) in mems.iter_mut() {
                let p = sub_path(path, k);
                if is_ts_key(k) {
                    let t: i128 = match val {
                        Jv::Str(_) | Jv::Null => continue,
                        Jv::U(u) => *u as i128,
                        Jv::I(i) => *i as i128,
                        other => {
                            return Err(format!(
                                "field `{p}`: expected integer unix seconds, a string or null, found {}",
                                jv_kind(other)
                            ))
                        }
                    };
                    if t < TS_MIN as i128 || t > TS_MAX as i128 {
                        return Err(format!(
                            "field `{p}`: unix seconds {t} are outside the years 0000-9999"
                        ));
                    }
                    let mut d = Vec::with_capacity(22);
                    write_date(t as i64, &mut d, &mut DateCache::default());
                    *val = Jv::Str(d[1..d.len() - 1].to_vec());
                } else {
                    transform_jv(val, &p)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn write_jv(v: &Jv, out: &mut Vec<u8>) {
    match v {
        Jv::Null => out.extend_from_slice(b"null"),
        Jv::Bool(true) => out.extend_from_slice(b"true"),
        Jv::Bool(false) => out.extend_from_slice(b"false"),
        Jv::U(u) => write_u64(*u, out),
        Jv::I(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Jv::F(f) => write_f64(*f, out),
        Jv::Str(s) => write_json_str(s, out),
        Jv::Arr(items) => {
            out.push(b'[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_jv(it, out);
            }
            out.push(b']');
        }
        Jv::Obj(mems) => {
            out.push(b'{');
            for (i, (k, val)) in mems.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(k, out);
                out.push(b':');
                write_jv(val, out);
            }
            out.push(b'}');
        }
    }
}

/// A top-level container value whose text triggers a tree parse.
fn process_nested(s: &[u8], a: usize, path: &str, out: &mut Vec<u8>) -> Res<()> {
    let mut i = a;
    let tree = build(s, &mut i, 0).map_err(|e| format!("field `{path}`: {e}"))?;
    if has_dup_keys(&tree) {
        let mut v = to_jv(s, &tree).map_err(|e| format!("field `{path}`: {e}"))?;
        transform_jv(&mut v, path)?;
        write_jv(&v, out);
        Ok(())
    } else {
        emit(s, &tree, path, out)
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cls {
    Other,
    Prompt,
    Completion,
    Latency,
    Schema,
    Usage,
    Metrics,
    Key,
    Scopes,
    KeySha,
    KeyPrefix,
    Ts,
}

#[inline]
fn classify(k: &[u8]) -> Cls {
    match k {
        b"prompt_tokens" => Cls::Prompt,
        b"completion_tokens" => Cls::Completion,
        b"latency_ms" => Cls::Latency,
        b"timestamp" => Cls::Ts,
        b"schema_version" => Cls::Schema,
        b"usage" => Cls::Usage,
        b"metrics" => Cls::Metrics,
        b"key" => Cls::Key,
        b"scopes" => Cls::Scopes,
        b"key_sha256" => Cls::KeySha,
        b"key_prefix" => Cls::KeyPrefix,
        _ if k.ends_with(b"_at") => Cls::Ts,
        _ => Cls::Other,
    }
}

#[derive(Clone, Copy)]
struct Mem {
    /// Key: raw content span in the line, or decoded span in the arena when it had escapes.
    ka: usize,
    kb: usize,
    kesc: bool,
    /// Cheap key fingerprint for duplicate detection.
    h: u32,
    vs: usize,
    ve: usize,
    kind: u8,
    int: bool,
    neg: bool,
    trig: bool,
    live: bool,
    cls: Cls,
}

#[derive(Default)]
struct Scratch {
    mems: Vec<Mem>,
    arena: Vec<u8>,
    stack: Vec<u8>,
    dates: DateCache,
    fast: [FMem; 24],
    tmp: Vec<u8>,
}

#[inline]
fn key_of<'a>(m: &Mem, s: &'a [u8], arena: &'a [u8]) -> &'a [u8] {
    if m.kesc {
        &arena[m.ka..m.kb]
    } else {
        &s[m.ka..m.kb]
    }
}

#[inline]
fn write_key(m: &Mem, s: &[u8], arena: &[u8], out: &mut Vec<u8>) {
    if m.kesc {
        write_json_str(&arena[m.ka..m.kb], out);
    } else {
        out.push(b'"');
        out.extend_from_slice(&s[m.ka..m.kb]);
        out.push(b'"');
    }
}

/// A member's value as the error messages name it: its kind and its text.
fn found(s: &[u8], m: &Mem) -> String {
    format!("{} `{}`", kind_name(m.kind), String::from_utf8_lossy(&s[m.vs..m.ve]))
}

fn u64_field(s: &[u8], m: &Mem, field: &str) -> Res<u64> {
    let raw = &s[m.vs..m.ve];
    let v = if m.kind == K_NUM && m.int && !m.neg {
        parse_u64(raw)
    } else {
        None
    };
    v.ok_or_else(|| {
        format!(
            "field `{field}`: expected a non-negative integer, found {}",
            found(s, m)
        )
    })
}

/// The last `output_tokens` of an existing `usage` object (validated text), if any.
fn usage_output_tokens(s: &[u8], a: usize, stack: &mut Vec<u8>) -> Res<Option<u64>> {
    let mut p = P {
        s,
        i: a + 1,
        non_ascii: false,
        ls: 0,
    };
    let mut found = None;
    p.ws();
    if p.peek() == Some(b'}') {
        return Ok(None);
    }
    loop {
        let (ka, kb, esc) = p.string()?;
        let is_ot = if esc {
            let mut k = Vec::new();
            decode_str(&s[ka..kb], &mut k)
                .map_err(|e| format!("field `usage`: unreadable value ({e})"))?;
            k == b"output_tokens"
        } else {
            &s[ka..kb] == b"output_tokens"
        };
        p.ws();
        p.i += 1; // ':'
        p.ws();
        let vs = p.i;
        let (kind, int, neg, _) = p.value(stack)?;
        if is_ot {
            let m = Mem {
                ka,
                kb,
                kesc: esc,
                h: 0,
                vs,
                ve: p.i,
                kind,
                int,
                neg,
                trig: false,
                live: true,
                cls: Cls::Other,
            };
            found = Some(m);
        }
        p.ws();
        let c = p.s[p.i];
        p.i += 1;
        if c == b'}' {
            break;
        }
        p.ws();
    }
    match found {
        Some(m) => u64_field(s, &m, "usage.output_tokens").map(Some),
        None => Ok(None),
    }
}

/// Migrates the record line starting at `start`; returns the position after its '\n'.
fn migrate_line(s: &[u8], start: usize, out: &mut Vec<u8>, sc: &mut Scratch) -> Res<usize> {
    let mut p = P {
        s,
        i: start,
        non_ascii: false,
        ls: start,
    };
    sc.mems.clear();
    sc.arena.clear();
    p.ws();
    if p.peek() != Some(b'{') {
        // Tell "valid JSON but not an object" from "not valid JSON".
        let (kind, _, _, _) = p.value(&mut sc.stack)?;
        p.ws();
        if !matches!(p.peek(), None | Some(b'\n')) {
            return Err(format!(
                "not valid JSON (trailing characters at column {})",
                p.i - start + 1
            ));
        }
        return Err(format!(
            "not a JSON object (found {}); a record must be an object",
            kind_name(kind)
        ));
    }
    p.i += 1;
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            if p.peek() != Some(b'"') {
                return Err(p.err_at("a key"));
            }
            let (a, b, esc) = p.string()?;
            let (ka, kb) = if esc {
                let a0 = sc.arena.len();
                decode_str(&s[a..b], &mut sc.arena)
                    .map_err(|e| format!("not valid JSON ({e} in a key)"))?;
                (a0, sc.arena.len())
            } else {
                (a, b)
            };
            p.ws();
            p.expect(b':', "`:`")?;
            p.ws();
            let vs = p.i;
            let (kind, int, neg, trig) = p.value(&mut sc.stack)?;
            let k = if esc { &sc.arena[ka..kb] } else { &s[ka..kb] };
            let h = (k.len() as u32) << 16
                | (*k.first().unwrap_or(&0) as u32) << 8
                | *k.last().unwrap_or(&0) as u32;
            sc.mems.push(Mem {
                ka,
                kb,
                kesc: esc,
                h,
                vs,
                ve: p.i,
                kind,
                int,
                neg,
                trig,
                live: true,
                cls: Cls::Other,
            });
            p.ws();
            match p.peek() {
                Some(b',') => {
                    p.i += 1;
                    p.ws();
                }
                Some(b'}') => {
                    p.i += 1;
                    break;
                }
                _ => return Err(p.err_at("`,` or `}`")),
            }
        }
    }
    p.ws();
    let next = match p.peek() {
        None => p.i,
        Some(b'\n') => p.i + 1,
        Some(_) => {
            return Err(format!(
                "not valid JSON (trailing characters at column {})",
                p.i - start + 1
            ))
        }
    };
    if p.non_ascii {
        if let Err(e) = std::str::from_utf8(&s[start..p.i]) {
            return Err(format!("not valid JSON (invalid UTF-8: {e})"));
        }
    }

    // Map semantics: a repeated key keeps its first position and takes the last value.
    let n = sc.mems.len();
    let arena = &sc.arena[..];
    let mems = &mut sc.mems[..];
    for j in 1..n {
        for i in 0..j {
            if mems[i].live
                && mems[i].h == mems[j].h
                && key_of(&mems[i], s, arena) == key_of(&mems[j], s, arena)
            {
                let src = mems[j];
                let dst = &mut mems[i];
                dst.vs = src.vs;
                dst.ve = src.ve;
                dst.kind = src.kind;
                dst.int = src.int;
                dst.neg = src.neg;
                dst.trig = src.trig;
                mems[j].live = false;
                break;
            }
        }
    }
    let (mut ip, mut ic, mut il, mut iu, mut im) = (None, None, None, None, None);
    let (mut ik, mut iscopes, mut isha) = (None, None, false);
    for (idx, m) in mems.iter_mut().enumerate() {
        if !m.live {
            continue;
        }
        m.cls = classify(key_of(m, s, arena));
        match m.cls {
            Cls::Prompt => ip = Some(idx),
            Cls::Completion => ic = Some(idx),
            Cls::Latency => il = Some(idx),
            Cls::Usage => iu = Some(idx),
            Cls::Metrics => im = Some(idx),
            Cls::Key => ik = Some(idx),
            Cls::Scopes => iscopes = Some(idx),
            Cls::KeySha | Cls::KeyPrefix => isha = true,
            Cls::Schema => {
                return Err(format!(
                    "field `schema_version`: this record already has schema_version {}; it is not a 0.1.0 record",
                    String::from_utf8_lossy(&s[m.vs..m.ve])
                ))
            }
            _ => {}
        }
    }

    // API key entry at top level.
    let mut api_key: Option<Vec<u8>> = None;
    if let (Some(k), Some(sco)) = (ik, iscopes) {
        if mems[sco].kind == K_ARR {
            let m = mems[k];
            if m.kind != K_STR {
                return Err(format!(
                    "field `key`: an API key entry's `key` must be a string, found {}",
                    found(s, &m)
                ));
            }
            if isha {
                return Err(
                    "field `key_sha256`/`key_prefix`: already present next to a plaintext `key`"
                        .into(),
                );
            }
            let mut key = Vec::new();
            decode_str(&s[m.vs + 1..m.ve - 1], &mut key)
                .map_err(|e| format!("field `key`: unreadable value ({e})"))?;
            api_key = Some(key);
        }
    }

    // usage: from prompt/completion, or an existing object.
    let mut pt = None;
    let mut ct = None;
    let output_tokens: Option<u64>;
    if ip.is_some() || ic.is_some() {
        if iu.is_some() {
            return Err("field `usage`: the record already has `usage` as well as `prompt_tokens`/`completion_tokens`".into());
        }
        if let Some(i) = ip {
            u64_field(s, &mems[i], "prompt_tokens")?;
            pt = Some(i);
        }
        if let Some(i) = ic {
            output_tokens = Some(u64_field(s, &mems[i], "completion_tokens")?);
            ct = Some(i);
        } else {
            output_tokens = None;
        }
    } else if let Some(u) = iu {
        let m = mems[u];
        if m.kind != K_OBJ {
            return Err(format!(
                "field `usage`: expected an object, found {}",
                found(s, &m)
            ));
        }
        output_tokens = usage_output_tokens(s, m.vs, &mut sc.stack)?;
    } else {
        output_tokens = None;
    }
    // `usage` takes the place of prompt_tokens, or of completion_tokens without it.
    let usage_anchor = ip.or(ic);

    // latency_ms -> metrics.
    let mut latency = 0.0f64;
    if let Some(l) = il {
        if im.is_some() {
            return Err("field `metrics`: already present: latency_ms cannot move into it without losing one of the two".into());
        }
        let m = mems[l];
        let raw = &s[m.vs..m.ve];
        if m.kind != K_NUM {
            return Err(format!(
                "field `latency_ms`: expected a non-negative number, found {}",
                found(s, &m)
            ));
        }
        latency = if m.int && !m.neg && raw.len() <= 15 {
            parse_u64(raw).unwrap() as f64
        } else {
            num_f64(raw)
        };
        if !latency.is_finite() || latency < 0.0 {
            return Err(format!(
                "field `latency_ms`: expected a non-negative number, found `{}`",
                String::from_utf8_lossy(raw)
            ));
        }
    }

    // Output.
    out.push(b'{');
    let mut first = true;
    for idx in 0..n {
        let m = mems[idx];
        if !m.live {
            continue;
        }
        match m.cls {
            Cls::Prompt | Cls::Completion if usage_anchor != Some(idx) => continue,
            _ => {}
        }
        if !first {
            out.push(b',');
        }
        first = false;
        match m.cls {
            Cls::Prompt | Cls::Completion => {
                out.extend_from_slice(b"\"usage\":{");
                if let Some(i) = pt {
                    out.extend_from_slice(b"\"input_tokens\":");
                    out.extend_from_slice(&s[mems[i].vs..mems[i].ve]);
                    if ct.is_some() {
                        out.push(b',');
                    }
                }
                if let Some(i) = ct {
                    out.extend_from_slice(b"\"output_tokens\":");
                    out.extend_from_slice(&s[mems[i].vs..mems[i].ve]);
                }
                out.push(b'}');
            }
            Cls::Latency => {
                out.extend_from_slice(b"\"metrics\":{\"latency_ms\":");
                out.extend_from_slice(&s[m.vs..m.ve]);
                out.extend_from_slice(b",\"tokens_per_second\":");
                write_tps(output_tokens, latency, out)?;
                out.push(b'}');
            }
            Cls::Key if api_key.is_some() => {
                write_api_key(api_key.as_ref().unwrap(), out);
            }
            Cls::Ts => {
                write_key(&m, s, arena, out);
                out.push(b':');
                match m.kind {
                    K_STR | K_NULL => out.extend_from_slice(&s[m.vs..m.ve]),
                    K_NUM => {
                        let field = || String::from_utf8_lossy(key_of(&m, s, arena)).into_owned();
                        let t = ts_value(&s[m.vs..m.ve], m.int, &field)?;
                        write_date(t, out, &mut sc.dates);
                    }
                    k => {
                        return Err(format!(
                            "field `{}`: expected integer unix seconds, a string or null, found {} `{}`",
                            String::from_utf8_lossy(key_of(&m, s, arena)),
                            kind_name(k),
                            String::from_utf8_lossy(&s[m.vs..m.ve])
                        ))
                    }
                }
            }
            _ => {
                write_key(&m, s, arena, out);
                out.push(b':');
                if m.trig && (m.kind == K_OBJ || m.kind == K_ARR) {
                    let path = String::from_utf8_lossy(key_of(&m, s, arena)).into_owned();
                    process_nested(s, m.vs, &path, out)?;
                } else {
                    out.extend_from_slice(&s[m.vs..m.ve]);
                }
            }
        }
    }
    if !first {
        out.push(b',');
    }
    out.extend_from_slice(b"\"schema_version\":3}\n");
    Ok(next)
}

// ---------------------------------------------------------------------------------------------
// Fast path
// ---------------------------------------------------------------------------------------------

const F_OTHER: u8 = 0;
const F_PROMPT: u8 = 1;
const F_COMPLETION: u8 = 2;
const F_LATENCY: u8 = 3;
const F_TS: u8 = 4;

#[derive(Clone, Copy, Default)]
struct FMem {
    /// Opening quote of the key, and the position after its closing quote.
    ks: usize,
    ke: usize,
    h: u32,
    vs: usize,
    ve: usize,
    cls: u8,
    kind: u8,
    /// An integer literal (no fraction or exponent), and whether it starts with '-'.
    int: bool,
    neg: bool,
    /// The unix seconds of an integer timestamp.
    t: i64,
}

/// Appends without a capacity check; the caller has reserved room for the whole record.
#[inline(always)]
fn put(out: &mut Vec<u8>, b: &[u8]) {
    let len = out.len();
    assert!(out.capacity() - len >= b.len());
    // SAFETY: capacity checked above; the regions cannot overlap (`b` is not in `out`'s
    // spare capacity, which nothing else references).
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), out.as_mut_ptr().add(len), b.len());
        out.set_len(len + b.len());
    }
}

#[inline]
fn fast_class(k: &[u8]) -> Option<u8> {
    match k {
        b"prompt_tokens" => Some(F_PROMPT),
        b"completion_tokens" => Some(F_COMPLETION),
        b"latency_ms" => Some(F_LATENCY),
        b"timestamp" => Some(F_TS),
        // Keys whose rules the fast path leaves to the general one.
        b"schema_version" | b"usage" | b"metrics" | b"key" | b"scopes" | b"key_sha256"
        | b"key_prefix" => None,
        _ if k.ends_with(b"_at") => Some(F_TS),
        _ => Some(F_OTHER),
    }
}

/// The common record: keys without escapes, no repeated key, no nested value the rules
/// touch, integer token counts/latency. Returns None for anything else (including every
/// invalid line), and the caller then runs `migrate_line`, which is the reference.
#[inline]
fn fast_line(s: &[u8], start: usize, out: &mut Vec<u8>, sc: &mut Scratch) -> Option<usize> {
    let fm = &mut sc.fast;
    let uint = |m: &FMem| m.kind == K_NUM && m.int && !m.neg;
    let mut p = P {
        s,
        i: start,
        non_ascii: false,
        ls: start,
    };
    let mut n = 0usize;
    p.ws();
    if p.peek()? != b'{' {
        return None;
    }
    p.i += 1;
    p.ws();
    if p.peek()? == b'}' {
        p.i += 1;
    } else {
        loop {
            if n == fm.len() || p.peek()? != b'"' {
                return None;
            }
            let ks = p.i;
            let (a, b, esc) = p.string().ok()?;
            if esc {
                return None;
            }
            let key = &s[a..b];
            let cls = fast_class(key)?;
            let ke = p.i;
            p.ws();
            if p.peek()? != b':' {
                return None;
            }
            p.i += 1;
            p.ws();
            let vs = p.i;
            let (kind, int, neg) = match p.peek()? {
                b'"' => {
                    p.string().ok()?;
                    (K_STR, false, false)
                }
                b'-' | b'0'..=b'9' => {
                    let (int, neg) = p.number().ok()?;
                    (K_NUM, int, neg)
                }
                c @ (b'{' | b'[') => {
                    if p.container(&mut sc.stack).ok()? {
                        return None;
                    }
                    (if c == b'{' { K_OBJ } else { K_ARR }, false, false)
                }
                b't' => {
                    p.literal(b"true").ok()?;
                    (K_TRUE, false, false)
                }
                b'f' => {
                    p.literal(b"false").ok()?;
                    (K_FALSE, false, false)
                }
                b'n' => {
                    p.literal(b"null").ok()?;
                    (K_NULL, false, false)
                }
                _ => return None,
            };
            let h = (key.len() as u32) << 16
                | (*key.first().unwrap_or(&0) as u32) << 8
                | *key.last().unwrap_or(&0) as u32;
            for m in &fm[..n] {
                if m.h == h && &s[m.ks + 1..m.ke - 1] == key {
                    return None;
                }
            }
            fm[n] = FMem {
                ks,
                ke,
                h,
                vs,
                ve: p.i,
                cls,
                kind,
                int,
                neg,
                t: 0,
            };
            n += 1;
            p.ws();
            match p.peek()? {
                b',' => {
                    p.i += 1;
                    p.ws();
                }
                b'}' => {
                    p.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    p.ws();
    let next = match p.peek() {
        None => p.i,
        Some(b'\n') => p.i + 1,
        Some(_) => return None,
    };
    if p.non_ascii && std::str::from_utf8(&s[start..p.i]).is_err() {
        return None;
    }

    // Rules.
    let (mut ip, mut ic, mut il) = (usize::MAX, usize::MAX, usize::MAX);
    let mut o: Option<u64> = None;
    let mut latency = 0.0;
    for (j, m) in fm[..n].iter_mut().enumerate() {
        match m.cls {
            F_PROMPT => {
                if !uint(m) {
                    return None;
                }
                parse_u64(&s[m.vs..m.ve])?;
                ip = j;
            }
            F_COMPLETION => {
                if !uint(m) {
                    return None;
                }
                o = Some(parse_u64(&s[m.vs..m.ve])?);
                ic = j;
            }
            F_LATENCY => {
                if !uint(m) || m.ve - m.vs > 15 {
                    return None;
                }
                latency = parse_u64(&s[m.vs..m.ve])? as f64;
                il = j;
            }
            F_TS => {
                if m.kind == K_NUM {
                    let raw = &s[m.vs..m.ve];
                    let t = if m.int && !m.neg && raw.len() <= 18 {
                        parse_u64(raw)? as i128
                    } else {
                        json_int(raw, m.int)?
                    };
                    if t < TS_MIN as i128 || t > TS_MAX as i128 {
                        return None;
                    }
                    m.t = t as i64;
                } else if m.kind != K_STR && m.kind != K_NULL {
                    return None;
                }
            }
            _ => {}
        }
    }
    sc.tmp.clear();
    if il != usize::MAX && write_tps(o, latency, &mut sc.tmp).is_err() {
        return None;
    }
    let usage_anchor = if ip != usize::MAX { ip } else { ic };

    // Output. Members copied as written are gathered into runs of compact input text.
    out.reserve(5 * (next - start) + 512);
    put(out, b"{");
    let mut first = true;
    let (mut run_s, mut run_e) = (0usize, 0usize);
    for j in 0..n {
        let m = fm[j];
        let verbatim = match m.cls {
            F_OTHER => true,
            F_TS => m.kind != K_NUM,
            _ => false,
        };
        if verbatim {
            if run_e != 0 && m.ks == run_e + 1 {
                if m.vs == m.ke + 1 {
                    run_e = m.ve;
                    continue;
                }
            }
            put(out, &s[run_s..run_e]);
            (run_s, run_e) = (0, 0);
            if !first {
                put(out, b",");
            }
            first = false;
            if m.vs == m.ke + 1 {
                run_s = m.ks;
                run_e = m.ve;
            } else {
                put(out, &s[m.ks..m.ke]);
                put(out, b":");
                put(out, &s[m.vs..m.ve]);
            }
            continue;
        }
        if m.cls != F_LATENCY && m.cls != F_TS && j != usage_anchor {
            continue; // the second of prompt/completion
        }
        put(out, &s[run_s..run_e]);
        (run_s, run_e) = (0, 0);
        if !first {
            put(out, b",");
        }
        first = false;
        match m.cls {
            F_PROMPT | F_COMPLETION => {
                put(out, b"\"usage\":{");
                if ip != usize::MAX {
                    put(out, b"\"input_tokens\":");
                    put(out, &s[fm[ip].vs..fm[ip].ve]);
                    if ic != usize::MAX {
                        put(out, b",");
                    }
                }
                if ic != usize::MAX {
                    put(out, b"\"output_tokens\":");
                    put(out, &s[fm[ic].vs..fm[ic].ve]);
                }
                put(out, b"}");
            }
            F_LATENCY => {
                put(out, b"\"metrics\":{\"latency_ms\":");
                put(out, &s[m.vs..m.ve]);
                put(out, b",\"tokens_per_second\":");
                put(out, &sc.tmp);
                put(out, b"}");
            }
            _ => {
                // An integer timestamp.
                put(out, &s[m.ks..m.ke]);
                put(out, b":");
                write_date(m.t, out, &mut sc.dates);
            }
        }
    }
    put(out, &s[run_s..run_e]);
    if !first {
        put(out, b",");
    }
    put(out, b"\"schema_version\":3}\n");
    Some(next)
}

struct ChunkResult {
    seq: usize,
    out: Vec<u8>,
    lines: usize,
    records: usize,
    /// (line number within the chunk, reason)
    err: Option<(usize, String)>,
}

/// Migrates every line of a chunk (a run of whole lines; the last may lack its '\n').
fn process_chunk(
    data: &[u8],
    out: &mut Vec<u8>,
    sc: &mut Scratch,
) -> (usize, usize, Option<(usize, String)>) {
    let mut pos = 0;
    let mut lines = 0;
    let mut records = 0;
    while pos < data.len() {
        lines += 1;
        // Blank line: only ASCII whitespace (space, tab, CR, FF) before the line end.
        let mut j = pos;
        while j < data.len() && matches!(data[j], b' ' | b'\t' | b'\r' | 0x0c) {
            j += 1;
        }
        if j == data.len() || data[j] == b'\n' {
            let end = (j + 1).min(data.len());
            out.extend_from_slice(&data[pos..end]);
            pos = end;
            continue;
        }
        if let Some(next) = fast_line(data, pos, out, sc) {
            records += 1;
            pos = next;
            continue;
        }
        match migrate_line(data, pos, out, sc) {
            Ok(next) => {
                records += 1;
                pos = next;
            }
            Err(e) => return (lines, records, Some((lines, e))),
        }
    }
    (lines, records, None)
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

fn fail(msg: String) -> ! {
    eprintln!("{msg}");
    process::exit(1);
}

/// Reads `input` into `buf` from `filled` until `limit` bytes (at most the buffer) are there
/// or the input ends; returns the new fill and whether it ended. Counts what it read in
/// `total`.
fn fill(
    input: &mut impl Read,
    buf: &mut [u8],
    mut filled: usize,
    limit: usize,
    total: &mut u64,
) -> io::Result<(usize, bool)> {
    while filled < limit.min(buf.len()) {
        let n = input.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok((filled, true));
        }
        *total += n as u64;
        filled += n;
    }
    Ok((filled, false))
}

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: fused_floor IN OUT");
        process::exit(2);
    }
    let (in_path, out_path) = (args[1].clone(), args[2].clone());
    let no_sync = env::var("FUSED_FLOOR_NO_SYNC").is_ok_and(|v| !v.is_empty() && v != "0");

    let mut input =
        File::open(&in_path).unwrap_or_else(|e| fail(format!("{in_path}: cannot open: {e}")));
    let mut output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&out_path)
        .unwrap_or_else(|e| fail(format!("{out_path}: cannot create: {e}")));
    // Only a regular file is chmod-ed, or removed after a failure (never e.g. /dev/null).
    let regular = output.metadata().is_ok_and(|m| m.file_type().is_file());
    if regular {
        if let Err(e) = output.set_permissions(fs::Permissions::from_mode(0o600)) {
            fail(format!("{out_path}: cannot set mode 0600: {e}"));
        }
    }
    let discard = |msg: String| -> ! {
        if regular {
            let _ = fs::remove_file(&out_path);
        }
        fail(msg)
    };

    let workers = thread::available_parallelism().map_or(1, |n| n.get());
    let n_in = workers + 2;
    let n_out = workers + 3;

    // Recycled buffers.
    let (in_pool_tx, in_pool_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..n_in {
        in_pool_tx.send(Vec::new()).unwrap();
    }
    let (out_pool_tx, out_pool_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..n_out {
        out_pool_tx.send(Vec::new()).unwrap();
    }
    let out_pool_rx = Arc::new(Mutex::new(out_pool_rx));

    // Work queue: (seq, buffer, bytes used).
    let (work_tx, work_rx) = mpsc::channel::<(usize, Vec<u8>, usize)>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (res_tx, res_rx) = mpsc::channel::<ChunkResult>();

    // Reader: fills buffers to CHUNK bytes and cuts them after their last '\n'.
    let reader = thread::spawn(move || -> io::Result<u64> {
        let mut carry: Vec<u8> = Vec::new();
        let mut seq = 0;
        let mut total = 0u64;
        let mut eof = false;
        while !eof {
            let Ok(mut buf) = in_pool_rx.recv() else {
                break;
            };
            if buf.len() < CHUNK + carry.len() {
                buf.resize(CHUNK + carry.len(), 0);
            }
            buf[..carry.len()].copy_from_slice(&carry);
            let mut filled = carry.len();
            carry.clear();
            loop {
                (filled, eof) = fill(&mut input, &mut buf, filled, CHUNK, &mut total)?;
                if eof {
                    break;
                }
                match buf[..filled].iter().rposition(|&b| b == b'\n') {
                    Some(p) => {
                        carry.extend_from_slice(&buf[p + 1..filled]);
                        filled = p + 1;
                        break;
                    }
                    None => {
                        // A line longer than the buffer: grow it and keep reading.
                        let len = buf.len();
                        buf.resize(len * 2, 0);
                        let want = filled + CHUNK;
                        (filled, eof) = fill(&mut input, &mut buf, filled, want, &mut total)?;
                        if eof {
                            break;
                        }
                    }
                }
            }
            if filled > 0 {
                if work_tx.send((seq, buf, filled)).is_err() {
                    break;
                }
                seq += 1;
            }
        }
        Ok(total)
    });

    let mut handles = Vec::new();
    for _ in 0..workers {
        let work_rx = Arc::clone(&work_rx);
        let out_pool_rx = Arc::clone(&out_pool_rx);
        let in_pool_tx = in_pool_tx.clone();
        let res_tx = res_tx.clone();
        handles.push(thread::spawn(move || {
            let mut sc = Scratch::default();
            loop {
                // Take an output buffer before a job, so that whoever holds the chunk the
                // writer waits for can always finish it.
                let Ok(mut out) = out_pool_rx.lock().unwrap().recv() else {
                    break;
                };
                let job = work_rx.lock().unwrap().recv();
                let Ok((seq, buf, len)) = job else { break };
                out.clear();
                out.reserve(len + len / 2 + len / 4);
                let (lines, records, err) = process_chunk(&buf[..len], &mut out, &mut sc);
                let _ = in_pool_tx.send(buf);
                if res_tx
                    .send(ChunkResult {
                        seq,
                        out,
                        lines,
                        records,
                        err,
                    })
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    drop(res_tx);
    drop(in_pool_tx);

    // Writer: in order, in write() calls of at most WRITE_MAX bytes.
    let mut pending: BTreeMap<usize, ChunkResult> = BTreeMap::new();
    let mut next = 0usize;
    let mut line_base = 0usize;
    let mut records = 0u64;
    let mut bytes_out = 0u64;
    for r in res_rx {
        pending.insert(r.seq, r);
        while let Some(r) = pending.remove(&next) {
            if let Some((line, msg)) = r.err {
                discard(format!("{in_path}:{}: {msg}", line_base + line));
            }
            for piece in r.out.chunks(WRITE_MAX) {
                if let Err(e) = output.write_all(piece) {
                    discard(format!("{out_path}: write failed: {e}"));
                }
            }
            bytes_out += r.out.len() as u64;
            records += r.records as u64;
            line_base += r.lines;
            next += 1;
            let _ = out_pool_tx.send(r.out);
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    let bytes_in = match reader.join().unwrap() {
        Ok(n) => n,
        Err(e) => discard(format!("{in_path}: read failed: {e}")),
    };
    let t = Instant::now();
    if !no_sync {
        if let Err(e) = output.sync_all() {
            fail(format!("{out_path}: fsync failed: {e}"));
        }
    }
    let fsync_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"records\": {records}, \"bytes_in\": {bytes_in}, \"bytes_out\": {bytes_out}, \"fsync_s\": {fsync_s:.3}}}"
    );
}

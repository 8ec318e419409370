//! The host's side of [`DataProgram`]s: the steps of every hop of a chain, compiled once and
//! run on each record in one pass. Not for plugin authors.
//!
//! A record is scanned once by the strict scanner every other path uses (`scan::spans`),
//! into a list of top-level items whose keys and values are spans of the record's text; a step
//! that changes a value points its item at new text instead, and the record is written once at
//! the end, as [`ViewBatch::write`](crate::view::ViewBatch::write) writes it: compact, every
//! untouched value copied as it was written. Anything a step cannot decide alone makes the
//! whole record [`Outcome::ToRule`]: the caller runs the hops' edit rules on it instead.

use std::ops::Range;

use memchr::memmem::Finder;
use sha2::{Digest, Sha256};

use super::{DataProgram, Kind, Step};
use crate::raw::scan::{self, same_text};
use crate::raw::{key_bit, needs_escape};

/// What [`Chain::run`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The migrated record, and its `\n`, were appended to the output.
    Written,
    /// Nothing was written: the hops' edit rules decide on this record.
    ToRule,
}

/// Why a chain of programs cannot be compiled (the host then runs the rules).
#[derive(Debug, thiserror::Error)]
#[error("data program step {step}: {reason}")]
pub struct CompileError {
    pub step: usize,
    pub reason: String,
}

/// The steps of a chain's programs, in order, ready to run.
pub struct Chain {
    steps: Vec<Compiled>,
    /// Every key the steps name, interned: a record's keys are looked up here once, and steps
    /// find entries by number.
    keys: Vec<String>,
    /// `keys`' signatures ([`signature`]), by number, for that lookup.
    sigs: Vec<u64>,
    /// Key numbers by their signature's hash, open addressing ([`slot`]).
    table: Box<[Id; 512]>,
    /// The checks lifted out of the steps ([`Chain::lift_checks`]), by key number.
    checks: Vec<Vec<Lifted>>,
    /// Key numbers (below 64) a lifted `Require` needs present.
    present: u64,
    after: Vec<Compiled>,
    /// This chain among those compiled in the process (from 1): what a worker's plans
    /// ([`plan`]) are for.
    number: u64,
}

/// A check made while a record is indexed.
#[derive(Debug, Clone, Copy)]
enum Lifted {
    /// The key is absent (`None`: present at all fails) or this integer.
    Equals(Option<u64>),
    Kind(Kind),
}

/// A key's number in [`Chain::keys`]; [`NONE`] for keys no step names.
type Id = u8;
const NONE: Id = Id::MAX;

enum Compiled {
    Require {
        key: Id,
        equals: Option<u64>,
    },
    Check {
        key: Id,
        kind: Kind,
    },
    Rfc3339 {
        names: Vec<Id>,
        suffixes: Vec<String>,
        needles: Vec<Finder<'static>>,
    },
    Group {
        into: Id,
        members: Vec<(Id, Id)>,
    },
    Nest {
        key: Id,
        into: Id,
        name: Id,
        /// The count's path: its first key, then the keys inside.
        first: Id,
        inside: Vec<String>,
        per: f64,
        scale: f64,
    },
    Hash {
        secret: Id,
        marker: Id,
        digest: Id,
        prefix: Id,
        chars: usize,
        needle: Box<Finder<'static>>,
    },
    SetInteger {
        key: Id,
        value: u64,
    },
}

/// A worker's buffers, kept from record to record.
#[derive(Default)]
pub struct Scratch {
    items: Vec<Item>,
    /// Text the steps wrote for this record (new values).
    own: Vec<u8>,
    members: Vec<scan::Member>,
    patches: Vec<(Range<usize>, Vec<u8>)>,
    /// The object the last `Group` of this record built, if its members' keys are distinct,
    /// and where in `own` each member's count is.
    group_value: Option<Txt>,
    grouped: Vec<(Id, usize, usize)>,
    dates: Dates,
    plans: plan::Plans,
    /// Per top-level value of the indexed record (by a plan's read or by the scanner): what
    /// [`count`] gives on its text, read once with the value, for the lifted checks and a
    /// plan's guards and ops. The steps do not keep it up to date: a plan runs before them.
    counts: Vec<Option<u64>>,
}

impl Scratch {
    /// Buffers that run every record through the steps one by one, never through a plan
    /// ([`plan`]): what the plans are checked against.
    pub fn without_plans() -> Scratch {
        let mut scratch = Scratch::default();
        scratch.plans.off = true;
        scratch
    }

    /// Records these buffers' plans wrote.
    pub fn records_by_plan(&self) -> u64 {
        self.plans.written
    }
}

/// A key or a value: a span of the record's text, of the text the steps wrote, or a key the
/// steps name.
#[derive(Debug, Clone, Copy)]
enum Txt {
    Src(u32, u32),
    Own(u32, u32),
    Key(Id),
}

#[derive(Debug, Clone, Copy)]
struct Item {
    key: Txt,
    value: Txt,
    id: Id,
    /// The value is an object a `Group` or `NestWithRate` built: scalars only.
    built: bool,
}

/// What the steps may write for one record before it is left to the rules: spans into it are
/// `u32`s, and one step can at most triple it (a patch copies its whole value).
const OWN_LIMIT: usize = (u32::MAX / 4) as usize;

/// Steps a chain may have: a program is a plugin's word, and is compiled once per run.
const MAX_STEPS: usize = 4096;

/// Top-level entries a record may have on this path (the index's limit too).
const MAX_ITEMS: usize = 64;

impl Chain {
    /// Compiles the programs of a chain's hops, in hop order. Keys and names must be plain
    /// (written without escapes), which is what lets the output copy them as they are.
    pub fn compile(programs: &[&DataProgram]) -> Result<Chain, CompileError> {
        let mut chain = Chain {
            steps: Vec::new(),
            keys: Vec::new(),
            sigs: Vec::new(),
            table: Box::new([NONE; 512]),
            checks: Vec::new(),
            present: 0,
            after: Vec::new(),
            number: {
                static CHAINS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                CHAINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        };
        for step in programs.iter().flat_map(|p| &p.steps) {
            let n = chain.steps.len();
            if n == MAX_STEPS {
                return Err(CompileError {
                    step: n,
                    reason: format!("a chain of more than {MAX_STEPS} steps"),
                });
            }
            let compiled = chain.compile_step(step).map_err(|reason| CompileError {
                step: n,
                reason: reason.to_owned(),
            })?;
            chain.steps.push(compiled);
        }
        chain.simplify();
        chain.lift_checks();
        Ok(chain)
    }

    /// Folds what one hop sets and the next requires: a `Require` of the value an earlier
    /// `SetInteger` wrote is true, and a second `SetInteger` of a key no step between read
    /// only moves the value the first one wrote (which fixed the key's place). On the
    /// built-in chain the three `schema_version` sets become one and two requires go.
    fn simplify(&mut self) {
        let mut set_at: Vec<Option<usize>> = vec![None; self.keys.len()];
        let mut known: Vec<Option<u64>> = vec![None; self.keys.len()];
        let mut gone = vec![false; self.steps.len()];
        for (i, dropped) in gone.iter_mut().enumerate() {
            match self.steps[i] {
                Compiled::Require {
                    key,
                    equals: Some(v),
                } if known[key as usize] == Some(v) => *dropped = true,
                Compiled::SetInteger { key, value } => {
                    known[key as usize] = Some(value);
                    match set_at[key as usize] {
                        Some(first) => {
                            self.steps[first] = Compiled::SetInteger { key, value };
                            *dropped = true;
                        }
                        None => set_at[key as usize] = Some(i),
                    }
                }
                ref other => {
                    for id in 0..self.keys.len() {
                        if self.mentions(other, id as Id) {
                            set_at[id] = None;
                            known[id] = None;
                        }
                    }
                }
            }
        }
        let mut i = 0;
        self.steps.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
    }

    /// Whether `step` reads or writes the key `id`.
    fn mentions(&self, step: &Compiled, id: Id) -> bool {
        match step {
            Compiled::Require { key, .. }
            | Compiled::Check { key, .. }
            | Compiled::SetInteger { key, .. } => *key == id,
            Compiled::Rfc3339 {
                names, suffixes, ..
            } => {
                names.contains(&id)
                    || suffixes
                        .iter()
                        .any(|s| self.name(id).ends_with(s.as_bytes()))
            }
            Compiled::Group { into, members } => {
                *into == id || members.iter().any(|(a, b)| *a == id || *b == id)
            }
            Compiled::Nest {
                key,
                into,
                name,
                first,
                ..
            } => [key, into, name, first].contains(&&id),
            Compiled::Hash {
                secret,
                marker,
                digest,
                prefix,
                ..
            } => [secret, marker, digest, prefix].contains(&&id),
        }
    }

    /// The `Require` and `Check` steps before the first step that changes anything only read
    /// the record as it was written: they are checked as it is indexed, by key number.
    fn lift_checks(&mut self) {
        let lead = self
            .steps
            .iter()
            .take_while(|s| matches!(s, Compiled::Require { .. } | Compiled::Check { .. }))
            .count();
        self.checks = vec![Vec::new(); self.keys.len()];
        self.present = 0;
        for step in self.steps.drain(..lead) {
            match step {
                Compiled::Require { key, equals } => {
                    self.checks[key as usize].push(Lifted::Equals(equals));
                    if equals.is_some() && key < 64 {
                        self.present |= 1 << key;
                    } else if equals.is_some() {
                        // Beyond the mask: left as a step.
                        self.after.push(Compiled::Require { key, equals });
                    }
                }
                Compiled::Check { key, kind } => self.checks[key as usize].push(Lifted::Kind(kind)),
                _ => {}
            }
        }
        let after = std::mem::take(&mut self.after);
        self.steps.splice(0..0, after);
    }

    fn compile_step(&mut self, step: &Step) -> Result<Compiled, &'static str> {
        Ok(match step {
            Step::Require { key, equals } => Compiled::Require {
                key: self.intern(key)?,
                equals: *equals,
            },
            Step::Check { key, kind } => Compiled::Check {
                key: self.intern(key)?,
                kind: *kind,
            },
            Step::UnixSecondsToRfc3339 { names, suffixes } => {
                for s in suffixes {
                    plain(s)?;
                }
                let needles = names
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .chain(suffixes.iter().map(|s| format!("{s}\"")))
                    .map(|n| Finder::new(n.as_bytes()).into_owned())
                    .collect();
                Compiled::Rfc3339 {
                    names: names
                        .iter()
                        .map(|n| self.intern(n))
                        .collect::<Result<_, _>>()?,
                    suffixes: suffixes.clone(),
                    needles,
                }
            }
            Step::Group { into, members } => {
                if members.is_empty() {
                    return Err("a group needs members");
                }
                // A member named twice would be found twice, and the second removal would
                // take an entry that is not a member.
                if repeats(members, |m| &m[0]) {
                    return Err("a group names a member twice");
                }
                Compiled::Group {
                    into: self.intern(into)?,
                    members: members
                        .iter()
                        .map(|[old, new]| Ok((self.intern(old)?, self.intern(new)?)))
                        .collect::<Result<_, &'static str>>()?,
                }
            }
            Step::NestWithRate { key, into, rate } => {
                let Some((first, inside)) = rate.count.split_first() else {
                    return Err("a rate needs the path of its count");
                };
                if rate.per == 0 || rate.decimals > 15 {
                    return Err("a rate needs a non-zero `per` and at most 15 decimals");
                }
                for k in inside {
                    plain(k)?;
                }
                Compiled::Nest {
                    key: self.intern(key)?,
                    into: self.intern(into)?,
                    name: self.intern(&rate.name)?,
                    first: self.intern(first)?,
                    inside: inside.to_vec(),
                    per: f64::from(rate.per),
                    scale: 10f64.powi(rate.decimals as i32),
                }
            }
            Step::HashSecret {
                secret,
                marker,
                digest,
                prefix,
                prefix_chars,
            } => {
                if !(1..=1024).contains(prefix_chars) {
                    return Err("prefix_chars must be 1–1024");
                }
                Compiled::Hash {
                    secret: self.intern(secret)?,
                    marker: self.intern(marker)?,
                    digest: self.intern(digest)?,
                    prefix: self.intern(prefix)?,
                    chars: *prefix_chars as usize,
                    needle: Box::new(Finder::new(format!("\"{marker}\"").as_bytes()).into_owned()),
                }
            }
            Step::SetInteger { key, value } => Compiled::SetInteger {
                key: self.intern(key)?,
                value: *value,
            },
        })
    }

    fn intern(&mut self, key: &str) -> Result<Id, &'static str> {
        plain(key)?;
        if let Some(id) = self.id(key.as_bytes()) {
            return Ok(id);
        }
        let id = Id::try_from(self.keys.len())
            .ok()
            .filter(|id| *id != NONE)
            .ok_or("the programs name too many keys")?;
        let sig = signature(key.as_bytes());
        self.keys.push(key.to_owned());
        self.sigs.push(sig);
        // At most 254 keys in 512 slots: a free one is always found.
        let mut at = slot(sig);
        while self.table[at] != NONE {
            at = (at + 1) % 512;
        }
        self.table[at] = id;
        Ok(id)
    }

    #[inline]
    fn id(&self, key: &[u8]) -> Option<Id> {
        let sig = signature(key);
        let mut at = slot(sig);
        loop {
            let id = self.table[at];
            if id == NONE {
                return None;
            }
            // Keys of up to 7 bytes are their signature; longer ones are compared.
            let i = id as usize;
            if self.sigs[i] == sig && (key.len() < 8 || same_text(self.name(id), key)) {
                return Some(id);
            }
            at = (at + 1) % 512;
        }
    }

    fn name(&self, id: Id) -> &[u8] {
        self.keys[id as usize].as_bytes()
    }

    /// Whether the checks lifted onto key `id` pass on its value, whose [`count`] is `n`.
    #[inline]
    fn lifted_checks_pass(&self, id: Id, value: &[u8], n: Option<u64>) -> bool {
        self.checks[id as usize].iter().all(|check| match *check {
            Lifted::Equals(None) => false,
            Lifted::Equals(Some(want)) => n == Some(want),
            Lifted::Kind(kind) => is_kind_counted(value, kind, n),
        })
    }

    /// What step `s` looks for in values at depth ([`may_hold`]).
    fn needles(&self, s: usize) -> &[Finder<'static>] {
        match &self.steps[s] {
            Compiled::Rfc3339 { needles, .. } => needles,
            Compiled::Hash { needle, .. } => std::slice::from_ref(&**needle),
            _ => &[],
        }
    }

    /// Migrates one record (`line`, without its `\n`) through every step, appending it to
    /// `out`; or leaves it to the rules, with `out` as it was.
    pub fn run(&self, line: &str, out: &mut Vec<u8>, scratch: &mut Scratch) -> Outcome {
        let mut rec = Rec {
            chain: self,
            line,
            s: scratch,
        };
        // Read as the last record's shape when it has it, else by the scanner.
        let planned = plan::index(&mut rec);
        if planned.is_none() && rec.index().is_none() {
            return Outcome::ToRule;
        }
        if plan::run(&mut rec, out, planned) {
            return Outcome::Written;
        }
        match rec.steps() {
            Some(()) => {
                rec.write(out);
                Outcome::Written
            }
            None => Outcome::ToRule,
        }
    }
}

/// A key's first 7 bytes and its length, in one word: equal for equal keys, and for keys
/// shorter than 8 bytes only for equal keys.
#[inline]
fn signature(key: &[u8]) -> u64 {
    let len = (key.len().min(255) as u64) << 56;
    match key.first_chunk::<8>() {
        Some(word) => u64::from_le_bytes(*word) & 0x00ff_ffff_ffff_ffff | len,
        None => key
            .iter()
            .enumerate()
            .fold(len, |w, (i, b)| w | u64::from(*b) << (8 * i)),
    }
}

/// Where a signature's search starts in [`Chain::table`].
#[inline]
fn slot(sig: u64) -> usize {
    (sig.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55) as usize
}

/// A key a program names: not empty, short, written without escapes.
fn plain(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > 255 || needs_escape(key) {
        return Err("a key is empty, longer than 255 bytes, or needs escapes");
    }
    Ok(())
}

/// One record being migrated: its text and the scratch buffers.
struct Rec<'a> {
    chain: &'a Chain,
    line: &'a str,
    s: &'a mut Scratch,
}

impl Rec<'_> {
    /// Scans the record into `items`, making the checks lifted out of the steps; `None` when
    /// the record is the rules' before any step runs.
    fn index(&mut self) -> Option<()> {
        self.reset();
        if self.line.len() > OWN_LIMIT {
            return None;
        }
        let (chain, line) = (self.chain, self.line.as_bytes());
        let (items, counts) = (&mut self.s.items, &mut self.s.counts);
        let (mut seen, mut maybe_repeats, mut present) = (0u64, false, 0u64);
        scan::spans(self.line, |k, v| {
            let key = &line[k.clone()];
            let bit = key_bit(key);
            maybe_repeats |= seen & bit != 0;
            seen |= bit;
            let id = chain.id(key).unwrap_or(NONE);
            let n = count(&line[v.clone()]);
            if id != NONE {
                if !chain.lifted_checks_pass(id, &line[v.clone()], n) {
                    return None;
                }
                if id < 64 {
                    present |= 1 << id;
                }
            }
            items.push(Item {
                key: Txt::Src(k.start as u32, k.end as u32),
                value: Txt::Src(v.start as u32, v.end as u32),
                id,
                built: false,
            });
            counts.push(n);
            (items.len() <= MAX_ITEMS).then_some(())
        })?;
        if present & chain.present != chain.present || (maybe_repeats && self.has_repeats()) {
            return None;
        }
        Some(())
    }

    fn reset(&mut self) {
        self.s.items.clear();
        self.s.counts.clear();
        self.s.own.clear();
        self.s.group_value = None;
    }

    /// Runs every step on the indexed record, one after the other.
    fn steps(&mut self) -> Option<()> {
        for step in &self.chain.steps {
            self.step(step)?;
            // Spans into `own` are 32-bit: a record whose steps wrote more is the rules'
            // (checked before any span past the limit is read).
            if self.s.own.len() > OWN_LIMIT {
                return None;
            }
        }
        Some(())
    }

    #[inline]
    fn text(&self, t: Txt) -> &[u8] {
        match t {
            Txt::Src(a, b) => &self.line.as_bytes()[a as usize..b as usize],
            Txt::Own(a, b) => &self.s.own[a as usize..b as usize],
            Txt::Key(id) => self.chain.name(id),
        }
    }

    #[inline]
    fn key(&self, i: usize) -> &[u8] {
        self.text(self.s.items[i].key)
    }

    #[inline]
    fn value(&self, i: usize) -> &[u8] {
        self.text(self.s.items[i].value)
    }

    #[inline]
    fn find(&self, id: Id) -> Option<usize> {
        self.s.items.iter().position(|it| it.id == id)
    }

    /// Where the next value written into `own` starts; [`Self::written`] ends it.
    fn mark(&self) -> u32 {
        self.s.own.len() as u32
    }

    fn written(&self, start: u32) -> Txt {
        Txt::Own(start, self.s.own.len() as u32)
    }

    /// Appends the text `t` to `own` (which it may be part of).
    fn push_own(&mut self, t: Txt) {
        match t {
            Txt::Src(a, b) => self
                .s
                .own
                .extend_from_slice(&self.line.as_bytes()[a as usize..b as usize]),
            Txt::Own(a, b) => self.s.own.extend_from_within(a as usize..b as usize),
            Txt::Key(id) => self.s.own.extend_from_slice(self.chain.name(id)),
        }
    }

    fn own(&mut self, text: &[u8]) -> Txt {
        let start = self.mark();
        self.s.own.extend_from_slice(text);
        self.written(start)
    }

    fn set(&mut self, i: usize, key: Id, value: Txt) {
        self.s.items[i] = Item {
            key: Txt::Key(key),
            value,
            id: key,
            built: false,
        };
    }

    /// Whether two keys are the same (only keys that share a [`key_bit`] are compared).
    fn has_repeats(&self) -> bool {
        let n = self.s.items.len();
        let mut bits = [0u64; MAX_ITEMS + 1];
        for (i, bit) in bits.iter_mut().enumerate().take(n) {
            *bit = key_bit(self.key(i));
        }
        (1..n).any(|i| (0..i).any(|j| bits[i] == bits[j] && self.key(i) == self.key(j)))
    }

    fn step(&mut self, step: &Compiled) -> Option<()> {
        match step {
            Compiled::Require { key, equals } => {
                let found = self.find(*key).map(|i| count(self.value(i)));
                match (equals, found) {
                    (None, None) => Some(()),
                    (Some(want), Some(Some(n))) if *want == n => Some(()),
                    _ => None,
                }
            }
            Compiled::Check { key, kind } => match self.find(*key) {
                Some(i) => is_kind(self.value(i), *kind).then_some(()),
                None => Some(()),
            },
            Compiled::Rfc3339 {
                names,
                suffixes,
                needles,
            } => self.rfc3339(names, suffixes, needles),
            Compiled::Group { into, members } => self.group(*into, members),
            Compiled::Nest { .. } => self.nest(step),
            Compiled::Hash { .. } => self.hash(step),
            Compiled::SetInteger { key, value } => {
                let start = self.mark();
                self.s
                    .own
                    .extend_from_slice(itoa::Buffer::new().format(*value).as_bytes());
                let value = self.written(start);
                match self.find(*key) {
                    Some(i) => self.s.items[i].value = value,
                    None => self.s.items.push(Item {
                        key: Txt::Key(*key),
                        value,
                        id: *key,
                        built: false,
                    }),
                }
                Some(())
            }
        }
    }

    fn rfc3339(&mut self, names: &[Id], suffixes: &[String], needles: &[Finder]) -> Option<()> {
        let chain = self.chain;
        let named = |k: &[u8]| {
            suffixes.iter().any(|s| ends_with(k, s.as_bytes()))
                || names.iter().any(|&n| chain.name(n) == k)
        };
        for i in 0..self.s.items.len() {
            let item = self.s.items[i];
            // By number for the names, by text for the suffixes (a key another step names has
            // a number too).
            if names.contains(&item.id)
                || suffixes
                    .iter()
                    .any(|s| ends_with(self.key(i), s.as_bytes()))
            {
                if let Some(seconds) = unix_seconds(self.text(item.value))? {
                    let start = self.mark();
                    self.s.dates.json(seconds, &mut self.s.own)?;
                    self.s.items[i].value = self.written(start);
                }
                continue;
            }
            if !may_hold(self.value(i), needles) {
                continue;
            }
            self.patch_nested(i, &mut |text, object, patches| {
                for m in object {
                    if named(&text[m.key.clone()]) {
                        if let Some(seconds) = unix_seconds(&text[m.value.clone()])? {
                            let mut json = Vec::with_capacity(22);
                            write_rfc3339_json(seconds, &mut json)?;
                            patches.push((m.value.clone(), json));
                        }
                    }
                }
                Some(())
            })?;
        }
        Some(())
    }

    /// Walks the objects in item `i`'s value with `visit`, which adds patches (ranges of the
    /// value and their new text), and applies them. `None` when the walk or `visit` gives up
    /// (the item is then as it was).
    fn patch_nested(&mut self, i: usize, visit: &mut Patcher<'_>) -> Option<()> {
        let mut patches = std::mem::take(&mut self.s.patches);
        let mut members = std::mem::take(&mut self.s.members);
        patches.clear();
        members.clear();
        let walked = walk_objects(self.value(i), 0, 0, &mut members, &mut |text, object| {
            visit(text, object, &mut patches)
        });
        if walked.is_some() {
            patches.sort_by_key(|p| p.0.start);
            self.patch(i, &patches);
        }
        self.s.patches = patches;
        self.s.members = members;
        walked
    }

    /// Applies `patches` (sorted, not overlapping) to item `i`'s value.
    fn patch(&mut self, i: usize, patches: &[(Range<usize>, Vec<u8>)]) {
        if patches.is_empty() {
            return;
        }
        let old = self.value(i);
        let mut new = Vec::with_capacity(old.len() + 64);
        let mut at = 0;
        for (range, text) in patches {
            new.extend_from_slice(&old[at..range.start]);
            new.extend_from_slice(text);
            at = range.end;
        }
        new.extend_from_slice(&old[at..]);
        self.s.items[i].value = self.own(&new);
    }

    fn group(&mut self, into: Id, members: &[(Id, Id)]) -> Option<()> {
        let mut present = [0usize; 8];
        let mut n = 0;
        for &(old, _) in members {
            if let Some(i) = self.find(old) {
                count(self.value(i))?;
                if n == present.len() {
                    return None;
                }
                present[n] = i;
                n += 1;
            }
        }
        if n == 0 {
            return Some(());
        }
        if self.find(into).is_some() {
            return None;
        }
        // Written straight into `own`; `grouped` notes where each count is, for a later
        // step's path into the object (see `count_at`).
        let start = self.mark();
        let mut grouped = std::mem::take(&mut self.s.grouped);
        grouped.clear();
        for &(old, new) in members {
            let Some(i) = self.find(old) else { continue };
            let own = &mut self.s.own;
            own.push(if grouped.is_empty() { b'{' } else { b',' });
            own.push(b'"');
            own.extend_from_slice(self.chain.name(new));
            own.extend_from_slice(b"\":");
            let at = own.len();
            self.push_own(self.s.items[i].value);
            grouped.push((new, at, self.s.own.len()));
        }
        self.s.own.push(b'}');
        let value = self.written(start);
        // Members renamed alike make an object with a repeated key, read by the scanner.
        let distinct = !repeats(&grouped, |g| &g.0);
        self.s.grouped = grouped;
        self.s.group_value = distinct.then_some(value);
        let present = &mut present[..n];
        let first = present[0];
        self.set(first, into, value);
        self.s.items[first].built = true;
        remove_members(&mut self.s.items, present, first);
        Some(())
    }

    fn nest(&mut self, step: &Compiled) -> Option<()> {
        let Compiled::Nest {
            key,
            into,
            name,
            first,
            inside,
            per,
            scale,
        } = step
        else {
            return Some(());
        };
        let count = self.count_at(*first, inside)?;
        let Some(i) = self.find(*key) else {
            return Some(());
        };
        let value = non_negative(self.value(i))?;
        if self.find(*into).is_some() {
            return None;
        }
        let start = self.mark();
        let chain = self.chain;
        self.s.own.extend_from_slice(b"{\"");
        self.s.own.extend_from_slice(chain.name(*key));
        self.s.own.extend_from_slice(b"\":");
        self.push_own(self.s.items[i].value);
        let text = &mut self.s.own;
        text.extend_from_slice(b",\"");
        text.extend_from_slice(chain.name(*name));
        text.extend_from_slice(b"\":");
        write_rate(count, value, *per, *scale, text)?;
        text.push(b'}');
        let value = self.written(start);
        self.set(i, *into, value);
        self.s.items[i].built = true;
        Some(())
    }

    /// The count at the path `first`, `inside` (`Some(None)` when absent); `None` when the path
    /// leads through something other than objects without escaped or repeated keys, or ends
    /// at something other than a count.
    fn count_at(&mut self, first: Id, inside: &[String]) -> Option<Option<u64>> {
        let Some(i) = self.find(first) else {
            return Some(None);
        };
        // Into the object a `Group` built: its counts are where it put them.
        if let ([name], Some(Txt::Own(a, b)), Txt::Own(c, d)) =
            (inside, self.s.group_value, self.s.items[i].value)
        {
            if (a, b) == (c, d) {
                let hit = self
                    .s
                    .grouped
                    .iter()
                    .find(|g| self.chain.name(g.0) == name.as_bytes());
                return Some(match hit {
                    Some(&(_, start, end)) => Some(count(&self.s.own[start..end])?),
                    None => None,
                });
            }
        }
        let mut members = std::mem::take(&mut self.s.members);
        let mut text = self.value(i);
        let mut found = Some(true);
        for step in inside {
            members.clear();
            found = member(text, step, &mut members).map(|range| match range {
                Some(range) => {
                    text = &text[range];
                    true
                }
                None => false,
            });
            if found != Some(true) {
                break;
            }
        }
        let count = match found {
            Some(true) => count(text).map(Some),
            Some(false) => Some(None),
            None => None,
        };
        self.s.members = members;
        count
    }

    fn hash(&mut self, step: &Compiled) -> Option<()> {
        let Compiled::Hash {
            secret,
            marker,
            digest,
            prefix,
            chars,
            needle,
        } = step
        else {
            return Some(());
        };
        // The record itself.
        if let (Some(k), Some(m)) = (self.find(*secret), self.find(*marker)) {
            if self.value(m).first() == Some(&b'[') {
                if self.find(*digest).is_some() || self.find(*prefix).is_some() {
                    return None;
                }
                let (d, p) = hashed(self.value(k), *chars)?;
                let d = self.own(&d);
                let p = self.own(&p);
                self.set(k, *digest, d);
                let item = Item {
                    key: Txt::Key(*prefix),
                    value: p,
                    id: *prefix,
                    built: false,
                };
                self.s.items.insert(k + 1, item);
            }
        }
        // At depth.
        let chain = self.chain;
        let [secret, marker, digest, prefix] =
            [*secret, *marker, *digest, *prefix].map(|id| chain.name(id));
        for i in 0..self.s.items.len() {
            // An object a step built holds scalars only: no marker array.
            if self.s.items[i].built || !may_hold(self.value(i), std::slice::from_ref(needle)) {
                continue;
            }
            self.patch_nested(i, &mut |text, object, patches| {
                let find = |k: &[u8]| object.iter().find(|m| &text[m.key.clone()] == k);
                let (Some(k), Some(m)) = (find(secret), find(marker)) else {
                    return Some(());
                };
                if text.get(m.value.start) != Some(&b'[') {
                    return Some(());
                }
                if find(digest).is_some() || find(prefix).is_some() {
                    return None;
                }
                let (d, p) = hashed(&text[k.value.clone()], *chars)?;
                let mut members = Vec::with_capacity(d.len() + p.len() + 32);
                for (key, value) in [(digest, &d), (prefix, &p)] {
                    if !members.is_empty() {
                        members.push(b',');
                    }
                    members.push(b'"');
                    members.extend_from_slice(key);
                    members.extend_from_slice(b"\":");
                    members.extend_from_slice(value);
                }
                patches.push((k.start..k.value.end, members));
                Some(())
            })?;
        }
        Some(())
    }

    /// Appends the record as compact JSON and a `\n`.
    ///
    /// Runs of entries copied from the record that were written compactly there (`"k":v,"k":v`)
    /// are copied in one piece.
    fn write(&self, out: &mut Vec<u8>) {
        let line = self.line.as_bytes();
        out.push(b'{');
        // The source bytes waiting to be copied, from a key's opening quote.
        let mut run: Option<(usize, usize)> = None;
        for (n, item) in self.s.items.iter().enumerate() {
            if let (Txt::Src(ks, ke), Txt::Src(vs, ve)) = (item.key, item.value) {
                let (ks, ke, vs, ve) = (ks as usize, ke as usize, vs as usize, ve as usize);
                let compact = vs == ke + 2;
                match run {
                    Some((_, end)) if compact && ks == end + 2 && line[end] == b',' => {
                        run = run.map(|(start, _)| (start, ve));
                        continue;
                    }
                    _ => {}
                }
                if let Some((start, end)) = run.take() {
                    out.extend_from_slice(&line[start..end]);
                }
                if n > 0 {
                    out.push(b',');
                }
                if compact {
                    run = Some((ks - 1, ve));
                    continue;
                }
            } else {
                if let Some((start, end)) = run.take() {
                    out.extend_from_slice(&line[start..end]);
                }
                if n > 0 {
                    out.push(b',');
                }
            }
            out.push(b'"');
            out.extend_from_slice(self.text(item.key));
            out.extend_from_slice(b"\":");
            out.extend_from_slice(self.text(item.value));
        }
        if let Some((start, end)) = run {
            out.extend_from_slice(&line[start..end]);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// What [`Rec::patch_nested`] calls on each object: the text, the object's members, and the
/// patches to add to.
type Patcher<'a> =
    dyn FnMut(&[u8], &[scan::Member], &mut Vec<(Range<usize>, Vec<u8>)>) -> Option<()> + 'a;

/// A rate of `count` per `value` / `per`, rounded by `scale` (10 to the decimals), as
/// serde_json prints an f64 (with zmij); `null` without a count or for a zero `value`. `None`
/// when the rate is not finite (the rules decide).
#[inline]
fn write_rate(
    count: Option<u64>,
    value: f64,
    per: f64,
    scale: f64,
    out: &mut Vec<u8>,
) -> Option<()> {
    match count {
        Some(n) if value != 0.0 => {
            let rate = n as f64 / (value / per);
            let units = round(rate * scale);
            // What `write_decimal` takes is finite, and it writes without a division.
            if write_decimal(units, scale, out) {
                return Some(());
            }
            let rounded = units / scale;
            if !rounded.is_finite() {
                return None;
            }
            out.extend_from_slice(zmij::Buffer::new().format_finite(rounded).as_bytes());
        }
        _ => out.extend_from_slice(b"null"),
    }
    Some(())
}

/// `x.round()` (halves away from zero). x86-64's baseline has no rounding instruction, so
/// `f64::round` is a call into libm (over 1 % of the data step); for `+0 <= x < 2^52` the
/// truncation a conversion to `u64` makes gives the same, exactly: `x - whole` is exact there.
#[inline]
fn round(x: f64) -> f64 {
    const WHOLE: f64 = 4_503_599_627_370_496.0; // 2^52: from here on every f64 is whole.
    if x.is_sign_positive() && x < WHOLE {
        let whole = (x as u64) as f64;
        // Without a branch: the fraction is as likely over a half as under.
        whole + f64::from(u8::from(x - whole >= 0.5))
    } else {
        x.round()
    }
}

/// Writes `units / scale` as the shortest text that reads back as that `f64` (what `zmij`
/// writes), with integer arithmetic, for `scale` 10^d with d at most 4 and `units` a whole
/// number from `scale` (a rate of at least 1) to below 10^15; `false`, writing nothing, for
/// anything else. Why it is the same text: `units / scale` is the `f64` nearest the decimal
/// `units`/10^d (IEEE division rounds correctly, and both are exact), which has at most 15
/// significant digits and so reads back as that `f64`; any shorter decimal differs from it by
/// at least 10^-d, over four times the `f64`s' spacing there (units below 10^15: the bound
/// keeps that margin), so reads back as another. `write_decimal_is_what_zmij_writes` compares
/// the two.
fn write_decimal(units: f64, scale: f64, out: &mut Vec<u8>) -> bool {
    const SCALES: [f64; 5] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0];
    let Some(d) = SCALES.iter().position(|s| *s == scale) else {
        return false;
    };
    if !(units >= scale && units < 1e15) {
        return false;
    }
    // Exact: a whole number below 2^53.
    let units = units as u64;
    // One instance per scale, so that its divisions are by constants (multiplications).
    match d {
        0 => write_fixed::<0>(units, out),
        1 => write_fixed::<1>(units, out),
        2 => write_fixed::<2>(units, out),
        3 => write_fixed::<3>(units, out),
        _ => write_fixed::<4>(units, out),
    }
    true
}

/// `units / 10^D` as `whole.fraction`, the fraction without its trailing zeros (`.0` when
/// nothing is left of it): [`write_decimal`]'s text. Its digits are written in place into a
/// block of `out` of a fixed size, then cut back: a copy of text whose length is known only at
/// run time is a call to `memcpy`, which cost more than the digits.
#[inline]
fn write_fixed<const D: u32>(units: u64, out: &mut Vec<u8>) {
    // Below 10^15: at most 15 digits before the point and D ≤ 4 after it.
    const ROOM: usize = 24;
    let pow = 10u64.pow(D);
    let (whole, mut frac) = (units / pow, units % pow);
    let width = whole.checked_ilog10().map_or(1, |l| l as usize + 1);
    let mut digits = 1;
    if frac != 0 {
        digits = D as usize;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
    }
    let start = out.len();
    out.extend_from_slice(&[0; ROOM]);
    let text = &mut out[start..];
    put_digits(&mut text[..width], whole);
    text[width] = b'.';
    // A zero fraction is written as its one digit, `0`.
    put_digits(&mut text[width + 1..width + 1 + digits], frac);
    out.truncate(start + width + 1 + digits);
}

/// Writes `n` into `slot` in decimal, its last digit in the slot's last byte; `slot` is as
/// wide as `n`'s digits, or wider for leading zeros.
#[inline]
fn put_digits(slot: &mut [u8], mut n: u64) {
    for at in slot.iter_mut().rev() {
        *at = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `key.ends_with(suffix)` for the short suffixes of a program, compared inline (the slice
/// comparison calls `memcmp`, which cost more than the loop over a record's keys around it).
#[inline]
fn ends_with(key: &[u8], suffix: &[u8]) -> bool {
    key.len() >= suffix.len() && same_text(&key[key.len() - suffix.len()..], suffix)
}

/// Whether two entries of `list` have the same `key` (lists of a group's few members).
fn repeats<T, K: PartialEq + ?Sized>(list: &[T], key: impl Fn(&T) -> &K) -> bool {
    (1..list.len()).any(|i| {
        list[..i]
            .iter()
            .any(|earlier| key(earlier) == key(&list[i]))
    })
}

/// Removes a group's members from `items` once the entry at `kept` holds the group: the
/// entries at `present` but `kept`, from the last so that each index still names its entry.
/// The interpreter and the plans' builder both remove through it, so they remove alike.
fn remove_members<T>(items: &mut Vec<T>, present: &mut [usize], kept: usize) {
    present.sort_unstable();
    for &i in present.iter().rev().filter(|&&i| i != kept) {
        items.remove(i);
    }
}

/// Whether a value may hold what a step looks for at depth: a container whose text has one of
/// the `needles`, or an escape (a key may be written with one).
fn may_hold(text: &[u8], needles: &[Finder]) -> bool {
    matches!(text.first(), Some(b'{' | b'['))
        && (memchr::memchr(b'\\', text).is_some() || needles.iter().any(|n| n.find(text).is_some()))
}

/// What [`walk_objects`] calls on each object: the text, the object's members.
type Visit<'a> = dyn FnMut(&[u8], &[scan::Member]) -> Option<()> + 'a;

/// Calls `visit` with the members of every object in the JSON text `text` from `at` on (a
/// value the scanner accepted), parents first. `None` (from `visit` too) when an object has a
/// key written with escapes or repeats a key: the rule decides on such records.
fn walk_objects(
    text: &[u8],
    at: usize,
    depth: u32,
    members: &mut Vec<scan::Member>,
    visit: &mut Visit<'_>,
) -> Option<()> {
    if depth > 64 {
        return None;
    }
    let b = text;
    let first = members.len();
    match b.get(at)? {
        b'{' => {
            scan::members(b, at, |m| members.push(m))?;
            let object = &members[first..];
            let key = |m: &scan::Member| &text[m.key.clone()];
            if object.iter().any(|m| m.escaped)
                || (1..object.len()).any(|i| object[..i].iter().any(|p| key(p) == key(&object[i])))
            {
                return None;
            }
            visit(text, object)?;
            let children: Vec<usize> = object
                .iter()
                .filter(|m| matches!(b[m.value.start], b'{' | b'['))
                .map(|m| m.value.start)
                .collect();
            for child in children {
                walk_objects(text, child, depth + 1, members, visit)?;
            }
        }
        b'[' => {
            let mut children = Vec::new();
            scan::elements(b, at, |r| {
                if matches!(b[r.start], b'{' | b'[') {
                    children.push(r.start);
                }
            })?;
            for child in children {
                walk_objects(text, child, depth + 1, members, visit)?;
            }
        }
        _ => {}
    }
    members.truncate(first);
    Some(())
}

/// The range of the object `text`'s member `key`'s value (`Some(None)`: no such member);
/// `None` when `text` is not an object, or has escaped or repeated keys.
fn member(text: &[u8], key: &str, members: &mut Vec<scan::Member>) -> Option<Option<Range<usize>>> {
    scan::members(text, 0, |m| members.push(m))?;
    let mut hit = None;
    for m in members.iter() {
        if m.escaped {
            return None;
        }
        if &text[m.key.clone()] == key.as_bytes() {
            if hit.is_some() {
                return None;
            }
            hit = Some(m.value.clone());
        }
    }
    Some(hit)
}

/// [`is_kind`] of a value whose [`count`] is known: `n` (a plan reads each value's once).
#[inline]
fn is_kind_counted(raw: &[u8], kind: Kind, n: Option<u64>) -> bool {
    debug_assert_eq!(n, count(raw));
    match kind {
        Kind::String => raw.first() == Some(&b'"'),
        Kind::Count => n.is_some(),
        Kind::NonNegativeNumber => n.is_some() || non_negative(raw).is_some(),
        Kind::IntegerStringOrNull => {
            n.is_some() || raw == b"null" || raw.first() == Some(&b'"') || integer(raw).is_some()
        }
    }
}

/// Whether the JSON text `raw` is of `kind`, read as the rules read it.
fn is_kind(raw: &[u8], kind: Kind) -> bool {
    is_kind_counted(raw, kind, count(raw))
}

/// The JSON number text `raw` (one the scanner accepted) as a `u64`, when it is one: what
/// `str::parse::<u64>` gives on such text, without its checks for forms JSON has not.
#[inline]
fn count(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    // Up to 19 digits cannot overflow: no checks in the loop most counts take.
    if raw.len() <= 19 {
        for &b in raw {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            n = n * 10 + u64::from(digit);
        }
        return Some(n);
    }
    for &b in raw {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(n)
}

/// The JSON number text `raw` as an `i64`, when serde_json reads it as an integer that fits
/// (`-0` it reads as a float).
fn integer(raw: &[u8]) -> Option<i64> {
    match raw.strip_prefix(b"-") {
        Some(b"0") => None,
        Some(digits) => 0i64.checked_sub_unsigned(count(digits)?),
        None => i64::try_from(count(raw)?).ok(),
    }
}

/// A non-negative number as serde_json reads it.
fn non_negative(raw: &[u8]) -> Option<f64> {
    if let Some(n) = count(raw) {
        return Some(n as f64);
    }
    if !raw.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    serde_json::from_slice::<f64>(raw)
        .ok()
        .filter(|n| *n >= 0.0 && n.is_finite())
}

/// What a unix-seconds value is: `Some(None)` a value kept (a string, `null`),
/// `Some(Some(seconds))` one to convert; `None` for the rule to decide.
fn unix_seconds(raw: &[u8]) -> Option<Option<i64>> {
    if raw == b"null" || raw.first() == Some(&b'"') {
        return Some(None);
    }
    integer(raw).map(Some)
}

/// The date of the last instant [`Dates::json`] wrote: a log's timestamps mostly share their
/// day, and the calendar arithmetic is most of the work.
#[derive(Default)]
struct Dates {
    day: Option<i64>,
    date: [u8; 10],
}

impl Dates {
    /// [`write_rfc3339_json`], the date taken from the last call's when the day is the same.
    fn json(&mut self, seconds: i64, out: &mut Vec<u8>) -> Option<()> {
        let day = seconds.div_euclid(86_400);
        if self.day != Some(day) {
            let mut text = [0u8; 20];
            write_rfc3339(day.checked_mul(86_400)?, &mut text)?;
            self.date.copy_from_slice(&text[..10]);
            self.day = Some(day);
        }
        let secs = seconds.rem_euclid(86_400) as u32;
        let [h, m, s] = [secs / 3600, secs / 60 % 60, secs % 60].map(two_digits);
        out.push(b'"');
        out.extend_from_slice(&self.date);
        out.extend_from_slice(&[
            b'T', h[0], h[1], b':', m[0], m[1], b':', s[0], s[1], b'Z', b'"',
        ]);
        Some(())
    }
}

fn two_digits(n: u32) -> [u8; 2] {
    [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]
}

/// [`write_rfc3339`] as a JSON string.
fn write_rfc3339_json(seconds: i64, out: &mut Vec<u8>) -> Option<()> {
    let mut text = [0u8; 22];
    text[0] = b'"';
    text[21] = b'"';
    write_rfc3339(seconds, (&mut text[1..21]).try_into().ok()?)?;
    out.extend_from_slice(&text);
    Some(())
}

/// `1640995200` → `2022-01-01T00:00:00Z`, into `out`; `None` outside the years 0000–9999.
/// Days to a civil date as in Howard Hinnant's `civil_from_days`.
fn write_rfc3339(seconds: i64, out: &mut [u8; 20]) -> Option<()> {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400) as u32;
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let year = year as u32;
    let two = two_digits;
    out[0..2].copy_from_slice(&two(year / 100));
    out[2..4].copy_from_slice(&two(year % 100));
    out[4] = b'-';
    out[5..7].copy_from_slice(&two(month));
    out[7] = b'-';
    out[8..10].copy_from_slice(&two(day));
    out[10] = b'T';
    out[11..13].copy_from_slice(&two(secs / 3600));
    out[13] = b':';
    out[14..16].copy_from_slice(&two(secs / 60 % 60));
    out[16] = b':';
    out[17..19].copy_from_slice(&two(secs % 60));
    out[19] = b'Z';
    Some(())
}

/// The digest and prefix (as JSON strings) of the plain JSON string `raw`; `None` for anything
/// else (escapes included: the rule unescapes those).
fn hashed(raw: &[u8], chars: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let body = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr::memchr(b'\\', body).is_some() {
        return None;
    }
    let digest = format!("\"{}\"", hex::encode(Sha256::digest(body)));
    // The scanner accepted the text, so it is UTF-8.
    let body = std::str::from_utf8(body).ok()?;
    let end = body
        .char_indices()
        .nth(chars)
        .map_or(body.len(), |(i, _)| i);
    Some((
        digest.into_bytes(),
        format!("\"{}\"", &body[..end]).into_bytes(),
    ))
}

mod plan;

#[cfg(test)]
mod tests;

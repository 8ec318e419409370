//! Plans: what the steps of a chain do to one *shape* of record, worked out once and replayed
//! on every record of that shape.
//!
//! A log's records mostly share a few shapes: the same keys in the same order, each value of
//! the same kind. The steps' decisions on such records differ only where they read a value
//! (is this a count? an integer timestamp?). A plan is the steps run once on the shape, with
//! those readings kept as *guards*, and the output written as a list of *ops*: literal text,
//! a value copied from the record, a date or a rate computed from one. Per record this costs
//! the guards and the copies; the step machinery (finding entries, building objects in a
//! scratch buffer, moving entries, writing them out one by one) is paid once per shape.
//!
//! The interpreter ([`Rec::steps`](super::Rec)) stays the authority. A plan is only built when
//! every step's work on the shape is one the builder mirrors exactly; anything else (a walk
//! into a nested value, a key set twice, a step that fails on the shape) leaves the shape to
//! the interpreter. A record whose guard fails goes to the interpreter too, which then decides
//! as it always did. Tests compare the two on every record they generate.

use super::{
    count, integer, is_kind, is_kind_counted, may_hold, non_negative, remove_members, repeats,
    same_text, unix_seconds, write_rate, Chain, Compiled, Id, Item, Kind, Rec, Txt, NONE,
    OWN_LIMIT,
};
use crate::raw::scan;

/// Shapes a worker keeps plans for; records of further shapes go to the interpreter.
const MAX_PLANS: usize = 32;

/// Plans a worker made, with its scratch buffers ([`super::Scratch`]).
#[derive(Default)]
pub(super) struct Plans {
    /// The chain these plans are for ([`Chain::number`]): buffers can outlive a chain.
    chain: u64,
    plans: Vec<Plan>,
    /// The plan the last record used: the next one most often has its shape.
    last: usize,
    /// Records written by a plan (for tests: a plan that is never used proves nothing).
    pub(super) written: u64,
    /// Plans off: every record goes through the interpreter (tests compare the two).
    pub(super) off: bool,
}

/// A top-level value's kind, read from its first byte: what a plan knows of a value before its
/// guards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Str,
    Num,
    Null,
    True,
    False,
    Obj,
    Arr,
}

impl Class {
    fn of(value: &[u8]) -> Class {
        match value.first() {
            Some(b'"') => Class::Str,
            Some(b'{') => Class::Obj,
            Some(b'[') => Class::Arr,
            Some(b't') => Class::True,
            Some(b'f') => Class::False,
            Some(b'n') => Class::Null,
            _ => Class::Num,
        }
    }

    fn container(self) -> bool {
        matches!(self, Class::Obj | Class::Arr)
    }
}

/// A shape and what the steps do to it (`None`: the interpreter's shape).
struct Plan {
    /// Per top-level entry: its key's number, its value's class, and its key's text (compared
    /// for keys no step names, which share [`NONE`]).
    ids: Vec<Id>,
    classes: Vec<Class>,
    keys: Vec<Vec<u8>>,
    /// Each key as the record writes it compactly: `"key":`.
    patterns: Vec<Vec<u8>>,
    ops: Option<Ops>,
}

/// A plan's guards and output.
struct Ops {
    guards: Vec<Guard>,
    out: Vec<Op>,
    /// `out` for a record [`Plan::read`] read, whose text between its values is known: runs
    /// of values the output keeps in order, with the record's own text between them, are one
    /// [`Op::Span`] ([`coalesce`]).
    compact: Vec<Op>,
    /// The literal text the `Lit` ops point into.
    lits: Vec<u8>,
}

/// A reading of top-level value `j` the steps' decisions rest on; the record goes to the
/// interpreter when one is false.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Guard {
    /// `count` gives this.
    Equals(u8, u64),
    Kind(u8, Kind),
    /// A count (`u64`).
    Count(u8),
    /// An integer serde_json reads as one (`i64`).
    Integer(u8),
    NonNegative(u8),
    /// Holds nothing step `s` looks for at depth ([`may_hold`] is false).
    Holds(u8, u16),
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Lit(u32, u32),
    /// Top-level value `j`, copied as written.
    Value(u8),
    /// The record's text from the start of top-level value `from` (`None`: of the record) to
    /// the end of value `to`: what `Value` and `Lit` ops would write, on a record read by
    /// [`Plan::read`], in one copy.
    Span {
        from: Option<u8>,
        to: u8,
    },
    /// Top-level value `j`, unix seconds, as an RFC 3339 string.
    Date(u8),
    /// The rate of count `count` (absent: `null`) per value `value`.
    Rate {
        count: Option<u8>,
        value: u8,
        per: f64,
        scale: f64,
    },
}

/// Indexes `rec` as the last record's shape, when it has that shape written compactly and its
/// values pass the checks the index makes: the keys are compared as literal text and only
/// the values are scanned (by the scanner's own `value`). Returns the plan whose shape it is;
/// `None` when the record is to be indexed by the scanner (which then decides on it alone).
pub(super) fn index(rec: &mut Rec<'_>) -> Option<usize> {
    let line = rec.line.as_bytes();
    let plans = &mut rec.s.plans;
    if plans.off || plans.chain != rec.chain.number || line.len() > OWN_LIMIT / 2 {
        return None;
    }
    let at = plans.last;
    if at >= plans.plans.len() {
        return None;
    }
    rec.reset();
    let (plan, items, counts) = (&rec.s.plans.plans[at], &mut rec.s.items, &mut rec.s.counts);
    if plan.read(rec.chain, line, items, counts).is_none() {
        items.clear();
        counts.clear();
        return None;
    }
    Some(at)
}

/// Writes the indexed record `rec` with the plan for its shape (`planned`: known from
/// [`index`]), making one if there is none. `false` when it wrote nothing (no plan, or a guard
/// failed): the interpreter takes over.
pub(super) fn run(rec: &mut Rec<'_>, out: &mut Vec<u8>, planned: Option<usize>) -> bool {
    let line = rec.line.as_bytes();
    // Spans of the interpreter's own text are 32-bit, and it leaves a record to the rules when
    // it wrote more than OWN_LIMIT; a plan writes at most about the line twice.
    if rec.s.plans.off || line.len() > OWN_LIMIT / 2 {
        return false;
    }
    let items = &rec.s.items;
    let plans = &mut rec.s.plans;
    if plans.chain != rec.chain.number {
        plans.chain = rec.chain.number;
        plans.plans.clear();
        plans.last = 0;
    }
    let found = planned.or_else(|| {
        plans
            .plans
            .get(plans.last)
            .filter(|p| p.fits(line, items))
            .map(|_| plans.last)
            .or_else(|| plans.plans.iter().position(|p| p.fits(line, items)))
    });
    let at = match found {
        Some(at) => at,
        None if plans.plans.len() < MAX_PLANS => {
            let plan = Plan::make(rec.chain, line, items);
            plans.plans.push(plan);
            plans.plans.len() - 1
        }
        None => return false,
    };
    plans.last = at;
    let Some(ops) = &plans.plans[at].ops else {
        return false;
    };
    let start = out.len();
    // Only a record the plan read itself is known to be written compactly.
    let compact = planned == Some(at);
    let read = Read {
        line,
        items,
        counts: &rec.s.counts,
    };
    debug_assert!(
        read.counts.len() == items.len()
            && (0..items.len()).all(|j| read.count(j as u8) == count(read.value(j as u8))),
        "a count kept for each entry, as `count` reads its value"
    );
    let done = ops.run(rec.chain, &read, compact, &mut rec.s.dates, out);
    if done.is_none() {
        out.truncate(start);
        return false;
    }
    plans.written += 1;
    true
}

impl Plan {
    /// [`index`]: reads `line` as `{"key":value,...}` with this plan's keys in order, each
    /// value of its class, and makes the checks the scanner's index makes. The scanner would
    /// accept such a line with the same spans (the keys are text it accepted, unescaped), and
    /// its keys are distinct and the keys the steps require are there, as on the record the
    /// plan was made from.
    fn read(
        &self,
        chain: &Chain,
        line: &[u8],
        items: &mut Vec<Item>,
        counts: &mut Vec<Option<u64>>,
    ) -> Option<()> {
        if line.first() != Some(&b'{') || self.ids.is_empty() {
            return None;
        }
        let mut i = 1;
        let last = self.ids.len() - 1;
        for (j, pattern) in self.patterns.iter().enumerate() {
            if !same_text(line.get(i..i + pattern.len())?, pattern) {
                return None;
            }
            let (ks, vs) = (i + 1, i + pattern.len());
            let (ve, n) = match scan::short_count(line, vs) {
                Some((end, n)) => (end, Some(n)),
                None => {
                    let end = scan::value(line, vs)?;
                    (end, count(&line[vs..end]))
                }
            };
            let value = &line[vs..ve];
            let id = self.ids[j];
            if Class::of(value) != self.classes[j]
                || (id != NONE && !chain.lifted_checks_pass(id, value, n))
            {
                return None;
            }
            counts.push(n);
            items.push(Item {
                key: Txt::Src(ks as u32, (vs - 2) as u32),
                value: Txt::Src(vs as u32, ve as u32),
                id,
                built: false,
            });
            let sep = if j == last { b'}' } else { b',' };
            if line.get(ve) != Some(&sep) {
                return None;
            }
            i = ve + 1;
        }
        (i == line.len()).then_some(())
    }

    fn fits(&self, line: &[u8], items: &[Item]) -> bool {
        items.len() == self.ids.len()
            && items.iter().enumerate().all(|(j, item)| {
                item.id == self.ids[j]
                    && Class::of(src(line, item.value)) == self.classes[j]
                    && (item.id != NONE || src(line, item.key) == self.keys[j])
            })
    }

    fn make(chain: &Chain, line: &[u8], items: &[Item]) -> Plan {
        let classes: Vec<Class> = items
            .iter()
            .map(|it| Class::of(src(line, it.value)))
            .collect();
        let keys: Vec<Vec<u8>> = items.iter().map(|it| src(line, it.key).to_vec()).collect();
        let mut builder = Builder {
            chain,
            classes: &classes,
            keys: &keys,
            items: (0..items.len())
                .map(|j| Entry {
                    key: Key::Src(j as u8),
                    value: Value::Src(j as u8),
                    id: items[j].id,
                    built: false,
                })
                .collect(),
            guards: Vec::new(),
            group_value: None,
            groups: 0,
        };
        let ops = chain
            .steps
            .iter()
            .enumerate()
            .try_for_each(|(s, step)| builder.step(s, step))
            .map(|()| builder.emit());
        Plan {
            ids: items.iter().map(|it| it.id).collect(),
            classes,
            patterns: keys
                .iter()
                .map(|k| [b"\"", &k[..], b"\":"].concat())
                .collect(),
            keys,
            ops,
        }
    }
}

/// The record's text of an indexed key or value (always a span of the record before any step).
fn src(line: &[u8], t: Txt) -> &[u8] {
    let (a, b) = bounds(t);
    &line[a..b]
}

/// Where `t` lies in the record's text.
fn bounds(t: Txt) -> (usize, usize) {
    match t {
        Txt::Src(a, b) => (a as usize, b as usize),
        _ => unreachable!("an indexed record's keys and values are spans of it"),
    }
}

/// An indexed record, as the ops read it: its text, its top-level entries and each value's
/// [`count`].
struct Read<'a> {
    line: &'a [u8],
    items: &'a [Item],
    counts: &'a [Option<u64>],
}

impl Read<'_> {
    #[inline]
    fn value(&self, j: u8) -> &[u8] {
        src(self.line, self.items[j as usize].value)
    }

    #[inline]
    fn count(&self, j: u8) -> Option<u64> {
        self.counts[j as usize]
    }

    /// [`integer`] of value `j`: a count that fits, or the text read.
    #[inline]
    fn integer(&self, j: u8) -> Option<i64> {
        match self.count(j) {
            Some(n) => i64::try_from(n).ok(),
            None => integer(self.value(j)),
        }
    }

    /// [`non_negative`] of value `j`: a count, or the text read.
    #[inline]
    fn non_negative(&self, j: u8) -> Option<f64> {
        match self.count(j) {
            Some(n) => Some(n as f64),
            None => non_negative(self.value(j)),
        }
    }
}

impl Ops {
    fn run(
        &self,
        chain: &Chain,
        read: &Read<'_>,
        compact: bool,
        dates: &mut super::Dates,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let (line, items) = (read.line, read.items);
        let v = |j: u8| read.value(j);
        let span = |j: u8| bounds(items[j as usize].value);
        for guard in &self.guards {
            let ok = match *guard {
                Guard::Equals(j, want) => read.count(j) == Some(want),
                Guard::Kind(j, kind) => is_kind_counted(v(j), kind, read.count(j)),
                Guard::Count(j) => read.count(j).is_some(),
                Guard::Integer(j) => read.integer(j).is_some(),
                Guard::NonNegative(j) => read.non_negative(j).is_some(),
                Guard::Holds(j, s) => !may_hold(v(j), chain.needles(s as usize)),
            };
            if !ok {
                return None;
            }
        }
        let ops = if compact { &self.compact } else { &self.out };
        for op in ops {
            match *op {
                Op::Lit(a, b) => append(out, &self.lits, a as usize, b as usize),
                Op::Value(j) => {
                    let (a, b) = span(j);
                    append(out, line, a, b);
                }
                Op::Span { from, to } => {
                    let start = from.map_or(0, |j| span(j).0);
                    append(out, line, start, span(to).1);
                }
                Op::Date(j) => dates.json(read.integer(j)?, out)?,
                Op::Rate {
                    count: c,
                    value,
                    per,
                    scale,
                } => {
                    let n = match c {
                        Some(j) => Some(read.count(j)?),
                        None => None,
                    };
                    write_rate(n, read.non_negative(value)?, per, scale, out)?;
                }
            }
        }
        Some(())
    }
}

/// Appends `text[a..b]` to `out`. A piece of up to 32 bytes (or 64) is copied as a block of
/// that size when `text` has one from `a`, then cut back to its length: a copy of a known
/// size is a few vector moves, where one of a length known only at run time is a call to
/// `memcpy`, and a plan makes about a dozen short copies per record (`memmove` was a tenth of
/// the data step's worker). The literals a plan writes have [`BLOCK`] bytes of room after them
/// for this.
#[inline(always)]
fn append(out: &mut Vec<u8>, text: &[u8], a: usize, b: usize) {
    let len = b - a;
    let end = out.len() + len;
    if len <= 32 {
        if let Some(block) = text.get(a..a + 32) {
            out.extend_from_slice(<&[u8; 32]>::try_from(block).unwrap());
            out.truncate(end);
            return;
        }
    } else if len <= BLOCK {
        if let Some(block) = text.get(a..a + BLOCK) {
            out.extend_from_slice(<&[u8; BLOCK]>::try_from(block).unwrap());
            out.truncate(end);
            return;
        }
    }
    out.extend_from_slice(&text[a..b]);
}

/// The largest block [`append`] copies whole.
const BLOCK: usize = 64;

/// An entry as the steps leave it, in terms of the shape.
#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    value: Value,
    id: Id,
    /// As [`Item::built`]: an object a step built, scalars only.
    built: bool,
}

#[derive(Debug, Clone, Copy)]
enum Key {
    /// Top-level key `j` of the record.
    Src(u8),
    Named(Id),
}

#[derive(Debug, Clone)]
enum Value {
    Src(u8),
    /// Text that is the same for every record (an integer a step set).
    Lit(Vec<u8>),
    Date(u8),
    /// The object a `Group` built (its number, for `Nest`'s path into it), members in order.
    Group(u32, Vec<(Id, u8)>),
    Nest {
        key: Id,
        value: u8,
        name: Id,
        count: Option<u8>,
        per: f64,
        scale: f64,
    },
}

/// The steps run on a shape, each as the interpreter runs it: `None` for anything it does that
/// this does not mirror, and for a step that fails on the shape (the interpreter then decides).
struct Builder<'a> {
    chain: &'a Chain,
    classes: &'a [Class],
    keys: &'a [Vec<u8>],
    items: Vec<Entry>,
    guards: Vec<Guard>,
    /// The group whose members `Nest` may read, as `Scratch::group_value`.
    group_value: Option<u32>,
    groups: u32,
}

impl Builder<'_> {
    fn find(&self, id: Id) -> Option<usize> {
        self.items.iter().position(|it| it.id == id)
    }

    fn key_text(&self, key: Key) -> &[u8] {
        match key {
            Key::Src(j) => &self.keys[j as usize],
            Key::Named(id) => self.chain.name(id),
        }
    }

    fn step(&mut self, s: usize, step: &Compiled) -> Option<()> {
        match step {
            Compiled::Require { key, equals } => match (equals, self.find(*key)) {
                (None, None) => Some(()),
                (Some(want), Some(i)) => match self.items[i].value {
                    Value::Src(j) => {
                        self.guards.push(Guard::Equals(j, *want));
                        Some(())
                    }
                    Value::Lit(ref t) => (count(t) == Some(*want)).then_some(()),
                    _ => None,
                },
                _ => None,
            },
            Compiled::Check { key, kind } => match self.find(*key) {
                None => Some(()),
                Some(i) => match self.items[i].value {
                    Value::Src(j) => {
                        self.guards.push(Guard::Kind(j, *kind));
                        Some(())
                    }
                    Value::Lit(ref t) => is_kind(t, *kind).then_some(()),
                    _ => None,
                },
            },
            Compiled::Rfc3339 {
                names, suffixes, ..
            } => {
                for i in 0..self.items.len() {
                    let item = &self.items[i];
                    let key = self.key_text(item.key);
                    let named = names.contains(&item.id)
                        || suffixes.iter().any(|s| key.ends_with(s.as_bytes()));
                    match (&item.value, named) {
                        (Value::Src(j), true) => match self.classes[*j as usize] {
                            Class::Str | Class::Null => {}
                            Class::Num => {
                                let j = *j;
                                self.guards.push(Guard::Integer(j));
                                self.items[i].value = Value::Date(j);
                            }
                            _ => return None,
                        },
                        // A date is a string: kept.
                        (Value::Date(_), true) => {}
                        (Value::Lit(t), true) => {
                            if unix_seconds(t)?.is_some() {
                                return None;
                            }
                        }
                        (Value::Src(j), false) => {
                            if self.classes[*j as usize].container() {
                                let j = *j;
                                self.guards.push(Guard::Holds(j, s as u16));
                            }
                        }
                        (Value::Date(_) | Value::Lit(_), false) => {
                            if may_hold(&self.text(i)?, self.chain.needles(s)) {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
                Some(())
            }
            Compiled::Group { into, members } => {
                let mut present = Vec::with_capacity(members.len());
                for &(old, _) in members {
                    if let Some(i) = self.find(old) {
                        self.count(i)?;
                        if present.len() == 8 {
                            return None;
                        }
                        present.push(i);
                    }
                }
                let Some(&first) = present.first() else {
                    return Some(());
                };
                if self.find(*into).is_some() {
                    return None;
                }
                let mut grouped = Vec::with_capacity(present.len());
                for &(old, new) in members {
                    if let Some(i) = self.find(old) {
                        grouped.push((new, self.count(i)?));
                    }
                }
                let distinct = !repeats(&grouped, |g| &g.0);
                self.groups += 1;
                self.group_value = distinct.then_some(self.groups);
                self.items[first] = Entry {
                    key: Key::Named(*into),
                    value: Value::Group(self.groups, grouped),
                    id: *into,
                    built: true,
                };
                remove_members(&mut self.items, &mut present, first);
                Some(())
            }
            Compiled::Nest {
                key,
                into,
                name,
                first,
                inside,
                per,
                scale,
            } => {
                // The count's path, as `Rec::count_at` follows it: into the group this record
                // built, or the value itself; a walk into the record's text is not mirrored.
                let count = match self.find(*first) {
                    None => None,
                    Some(i) => match (&self.items[i].value, inside.as_slice()) {
                        (Value::Group(n, grouped), [member]) if self.group_value == Some(*n) => {
                            let hit = grouped
                                .iter()
                                .find(|g| self.chain.name(g.0) == member.as_bytes());
                            match hit {
                                Some(&(_, j)) => {
                                    self.guards.push(Guard::Count(j));
                                    Some(j)
                                }
                                None => None,
                            }
                        }
                        (Value::Src(_), []) => Some(self.count(i)?),
                        _ => return None,
                    },
                };
                let Some(i) = self.find(*key) else {
                    return Some(());
                };
                let Value::Src(value) = self.items[i].value else {
                    return None;
                };
                self.guards.push(Guard::NonNegative(value));
                if self.find(*into).is_some() {
                    return None;
                }
                self.items[i] = Entry {
                    key: Key::Named(*into),
                    value: Value::Nest {
                        key: *key,
                        value,
                        name: *name,
                        count,
                        per: *per,
                        scale: *scale,
                    },
                    id: *into,
                    built: true,
                };
                Some(())
            }
            Compiled::Hash { secret, marker, .. } => {
                // Hashing the record's own key is the interpreter's.
                if self.find(*secret).is_some() && self.find(*marker).is_some() {
                    return None;
                }
                for i in 0..self.items.len() {
                    if self.items[i].built {
                        continue;
                    }
                    match self.items[i].value {
                        Value::Src(j) => {
                            if self.classes[j as usize].container() {
                                self.guards.push(Guard::Holds(j, s as u16));
                            }
                        }
                        Value::Date(_) | Value::Lit(_) => {
                            if may_hold(&self.text(i)?, self.chain.needles(s)) {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
                Some(())
            }
            Compiled::SetInteger { key, value } => {
                let text = itoa::Buffer::new().format(*value).as_bytes().to_vec();
                match self.find(*key) {
                    // The interpreter computes a date or a rate before this step replaces it,
                    // and leaves the record to the rules when it cannot (a year past 9999, a
                    // rate that is not finite); the plan checks that only when writing one.
                    Some(i)
                        if matches!(self.items[i].value, Value::Date(_) | Value::Nest { .. }) =>
                    {
                        return None
                    }
                    Some(i) => self.items[i].value = Value::Lit(text),
                    None => self.items.push(Entry {
                        key: Key::Named(*key),
                        value: Value::Lit(text),
                        id: *key,
                        built: false,
                    }),
                }
                Some(())
            }
        }
    }

    /// Entry `i`'s value as a count: a guard on a value of the record, or `None` when it is
    /// not one of its values.
    fn count(&mut self, i: usize) -> Option<u8> {
        match self.items[i].value {
            Value::Src(j) => {
                self.guards.push(Guard::Count(j));
                Some(j)
            }
            _ => None,
        }
    }

    /// The text of entry `i`'s value when it is the same for every record of the shape (a date
    /// is not, but its first byte, all `may_hold` reads of a scalar, is a quote).
    fn text(&self, i: usize) -> Option<Vec<u8>> {
        match &self.items[i].value {
            Value::Lit(t) => Some(t.clone()),
            Value::Date(_) => Some(b"\"\"".to_vec()),
            _ => None,
        }
    }

    /// The ops that write the entries as `Rec::write` writes them: compact, `"key":value`.
    fn emit(&self) -> Ops {
        let mut ops = Ops {
            guards: Vec::new(),
            out: Vec::new(),
            compact: Vec::new(),
            lits: Vec::new(),
        };
        ops.lit(b"{");
        for (n, item) in self.items.iter().enumerate() {
            if n > 0 {
                ops.lit(b",");
            }
            ops.lit(b"\"");
            ops.lit(self.key_text(item.key));
            ops.lit(b"\":");
            match &item.value {
                Value::Src(j) => ops.out.push(Op::Value(*j)),
                Value::Lit(t) => ops.lit(t),
                Value::Date(j) => ops.out.push(Op::Date(*j)),
                Value::Group(_, members) => {
                    for (m, &(name, j)) in members.iter().enumerate() {
                        ops.lit(if m == 0 { b"{\"" } else { b",\"" });
                        ops.lit(self.chain.name(name));
                        ops.lit(b"\":");
                        ops.out.push(Op::Value(j));
                    }
                    ops.lit(b"}");
                }
                Value::Nest {
                    key,
                    value,
                    name,
                    count,
                    per,
                    scale,
                } => {
                    ops.lit(b"{\"");
                    ops.lit(self.chain.name(*key));
                    ops.lit(b"\":");
                    ops.out.push(Op::Value(*value));
                    ops.lit(b",\"");
                    ops.lit(self.chain.name(*name));
                    ops.lit(b"\":");
                    ops.out.push(Op::Rate {
                        count: *count,
                        value: *value,
                        per: *per,
                        scale: *scale,
                    });
                    ops.lit(b"}");
                }
            }
        }
        ops.lit(b"}\n");
        // Each guard once, and none an op makes again: a date is written from the integer,
        // a rate from its count and value, and an op that cannot sends the record to the
        // interpreter as the guard would have.
        for &guard in &self.guards {
            let again = ops.out.iter().any(|op| match (guard, *op) {
                (Guard::Integer(j), Op::Date(k)) => j == k,
                (Guard::NonNegative(j), Op::Rate { value, .. }) => j == value,
                (Guard::Count(j), Op::Rate { count, .. }) => count == Some(j),
                _ => false,
            });
            if !again && !ops.guards.contains(&guard) {
                ops.guards.push(guard);
            }
        }
        ops.compact = coalesce(&ops.out, &ops.lits, self.keys);
        // Room for `append` to copy a whole block from the last literal.
        ops.lits.extend_from_slice(&[0; BLOCK]);
        ops
    }
}

/// `out` for a record [`Plan::read`] read: `{"k0":v0,"k1":v1,...}` with the shape's keys
/// (`keys`, as the record writes them), so that the text before value `j` is `{"k0":` for
/// the first and `,"kj":` for the others. Where the output writes value `j - 1` (or starts
/// the record), then exactly that text, then value `j`, the three are one copy of the
/// record's text: a plan that keeps most of a record copies it in a few pieces rather than
/// two per entry.
fn coalesce(out: &[Op], lits: &[u8], keys: &[Vec<u8>]) -> Vec<Op> {
    let before = |j: u8| -> Vec<u8> {
        let open: &[u8] = if j == 0 { b"{" } else { b"," };
        [open, b"\"", &keys[j as usize], b"\":"].concat()
    };
    let mut merged: Vec<Op> = Vec::with_capacity(out.len());
    for &op in out {
        if let Op::Value(j) = op {
            let n = merged.len();
            let gap = |k: usize| match merged.get(k) {
                Some(&Op::Lit(a, b)) => lits[a as usize..b as usize] == before(j)[..],
                _ => false,
            };
            // The piece before the gap ends with value `j - 1`, or there is none and `j` is
            // the record's first value.
            let joined = match n.checked_sub(2).map(|k| merged[k]) {
                Some(Op::Value(i)) if j > 0 && i == j - 1 && gap(n - 1) => Some(Some(i)),
                Some(Op::Span { from, to }) if j > 0 && to == j - 1 && gap(n - 1) => Some(from),
                None if n == 1 && j == 0 && gap(0) => Some(None),
                _ => None,
            };
            if let Some(from) = joined {
                merged.truncate(n.saturating_sub(2));
                merged.push(Op::Span { from, to: j });
                continue;
            }
        }
        merged.push(op);
    }
    merged
}

impl Ops {
    /// Appends literal text, joined to the literal before it when there is one.
    fn lit(&mut self, text: &[u8]) {
        let start = self.lits.len() as u32;
        self.lits.extend_from_slice(text);
        let end = self.lits.len() as u32;
        match self.out.last_mut() {
            Some(Op::Lit(_, e)) if *e == start => *e = end,
            _ => self.out.push(Op::Lit(start, end)),
        }
    }
}

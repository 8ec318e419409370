//! Declared data edits (since 1.7.0): a hop **says** what its data rule does to the common
//! record, and the host compiles every hop's declaration into one pass that no plugin code
//! runs in.
//!
//! With a [`DataEditRule`](crate::DataEditRule) the host parses each record once, but still
//! calls every hop on every batch, and each hop decodes the index, looks its keys up and encodes
//! its edits: on the three built-in hops that per-record machinery cost more than the rules
//! themselves. A [`DataProgram`] removes it. It is a short list of [`Step`]s from a fixed
//! vocabulary — require a `schema_version`, check a field's type, convert unix seconds at any
//! depth, group counts into an object, nest a value with a computed rate, hash secrets at any
//! depth, set an integer — which the host runs natively for all hops of the chain at once,
//! copying every byte no step touches as it was written.
//!
//! **The edit rule stays the authority.** A program describes the rule's effect on the records
//! it accepts, no more: any record a step cannot decide on its own — a refusal, a value of an
//! unusual form (a float timestamp, a key written with escapes, an object that repeats a key)
//! — is handed to the hops' edit rules exactly as hosts without programs run them, so refusals
//! keep the rule's words and odd records the rule's treatment. A host before 1.7 ignores the
//! program and calls the rule; so does a host whose vocabulary lacks a step the program uses.
//! The host also runs the first batch of a run both ways and drops the programs for the run if
//! the two differ (the plugin is then reported as broken in a warning, and its rule decides).
//! Keep the two equal with a test: [`check_against_rule`] runs a program and a rule over the
//! same records and names the first record on which they differ.

use serde::{Deserialize, Serialize};

#[doc(hidden)]
pub mod run;

/// What a hop's data rule does to a record, as steps the host runs in order. Built with
/// [`DataProgram::new`] and the step methods; attached with
/// [`Hop::data_program`](crate::Hop::data_program).
///
/// Read strictly: a field or a step this plugin-api does not know makes the whole program
/// unreadable, and the host then runs the rule (a newer step, or a newer option of a step,
/// must never be run with an older meaning).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataProgram {
    pub steps: Vec<Step>,
}

/// One step of a [`DataProgram`]. Where a step says "the rule decides", the host hands the
/// record to the hops' edit rules instead of writing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Step {
    /// The record's top-level `key` is absent (`equals` = `None`) or is the integer `equals`;
    /// otherwise the rule decides (`schema_version` checks).
    Require { key: String, equals: Option<u64> },
    /// The top-level `key`, when present, is of `kind`; otherwise the rule decides.
    Check { key: String, kind: Kind },
    /// At every depth (the record's own members too), members named one of `names` or ending
    /// in one of `suffixes` whose value is an integer become that instant as an RFC 3339 UTC
    /// string (`"2022-01-01T00:00:00Z"`); strings and `null` stay. Any other value, or an
    /// instant outside the years 0000–9999: the rule decides. Only values whose text mentions a
    /// name (`"timestamp"`) or a suffix (`_at"`), or has an escape, are looked into.
    UnixSecondsToRfc3339 {
        names: Vec<String>,
        suffixes: Vec<String>,
    },
    /// The top-level counts `members` (`[old key, new key]` pairs, non-negative integers)
    /// move into an object `into`, under their new keys in the order given, at the place of
    /// the first member present; the others are removed. Nothing when none is present. A count
    /// of another type, or a record that already has `into`: the rule decides.
    Group {
        into: String,
        members: Vec<[String; 2]>,
    },
    /// A top-level non-negative number `key` becomes, at its place, the object
    /// `into: {key: <its text as written>, rate.name: <rate>}`, where the rate is the count at
    /// `rate.count` (a path of object keys) divided by (`key`'s value / `rate.per`), rounded to
    /// `rate.decimals` decimals, or `null` when the count is absent or `key` is 0. The path is
    /// checked even when `key` is absent (an object, then a non-negative integer); anything else,
    /// or a record that already has `into`: the rule decides.
    NestWithRate {
        key: String,
        into: String,
        rate: Rate,
    },
    /// At every depth (the record itself too), an object with a string `secret` member and an
    /// array `marker` member has its `secret` member replaced, at its place, by `digest`: the
    /// hex sha256 of the string, and `prefix`: its first `prefix_chars` characters. A
    /// non-string `secret` beside the marker, or an object that already has `digest` or
    /// `prefix`: the rule decides. Only values whose text mentions the marker, or has an
    /// escape, are looked into.
    HashSecret {
        secret: String,
        marker: String,
        digest: String,
        prefix: String,
        prefix_chars: u32,
    },
    /// Sets the top-level `key` to the integer `value`, keeping its place, or last.
    SetInteger { key: String, value: u64 },
}

/// A field type a [`Step::Check`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    String,
    /// A non-negative integer.
    Count,
    /// A non-negative number (integer or not).
    NonNegativeNumber,
    /// An integer, a string or `null`.
    IntegerStringOrNull,
}

/// The rate of a [`Step::NestWithRate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// The rate's key in the new object.
    pub name: String,
    /// Where the count is: object keys from the record down (`["usage", "output_tokens"]`).
    pub count: Vec<String>,
    /// The nested value is divided by this first (1000: milliseconds to seconds).
    pub per: u32,
    pub decimals: u32,
}

impl DataProgram {
    pub fn new() -> Self {
        DataProgram::default()
    }

    /// [`Step::Require`].
    pub fn require(mut self, key: &str, equals: Option<u64>) -> Self {
        self.steps.push(Step::Require {
            key: key.to_owned(),
            equals,
        });
        self
    }

    /// [`Step::Check`].
    pub fn check(mut self, key: &str, kind: Kind) -> Self {
        self.steps.push(Step::Check {
            key: key.to_owned(),
            kind,
        });
        self
    }

    /// [`Step::UnixSecondsToRfc3339`].
    pub fn unix_seconds_to_rfc3339(mut self, names: &[&str], suffixes: &[&str]) -> Self {
        self.steps.push(Step::UnixSecondsToRfc3339 {
            names: owned(names),
            suffixes: owned(suffixes),
        });
        self
    }

    /// [`Step::Group`].
    pub fn group(mut self, into: &str, members: &[(&str, &str)]) -> Self {
        self.steps.push(Step::Group {
            into: into.to_owned(),
            members: members
                .iter()
                .map(|(old, new)| [(*old).to_owned(), (*new).to_owned()])
                .collect(),
        });
        self
    }

    /// [`Step::NestWithRate`].
    pub fn nest_with_rate(mut self, key: &str, into: &str, rate: Rate) -> Self {
        self.steps.push(Step::NestWithRate {
            key: key.to_owned(),
            into: into.to_owned(),
            rate,
        });
        self
    }

    /// [`Step::HashSecret`]: `names` are the secret, marker, digest and prefix keys.
    pub fn hash_secret(mut self, names: [&str; 4], prefix_chars: u32) -> Self {
        let [secret, marker, digest, prefix] = names.map(str::to_owned);
        self.steps.push(Step::HashSecret {
            secret,
            marker,
            digest,
            prefix,
            prefix_chars,
        });
        self
    }

    /// [`Step::SetInteger`].
    pub fn set_integer(mut self, key: &str, value: u64) -> Self {
        self.steps.push(Step::SetInteger {
            key: key.to_owned(),
            value,
        });
        self
    }
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Runs `program` and `rule` over the `\n`-separated `records` (as the host runs each) and
/// returns how many records the program wrote, or the first record, by index, on which the
/// program's output differs from the rule's, with both outputs. Records the program leaves to
/// the rule cannot differ; a refused record must be left to the rule. For a plugin's tests: a
/// program that disagrees with its rule is dropped by the host (see the module's
/// documentation).
pub fn check_against_rule(
    program: &DataProgram,
    rule: &dyn crate::DataEditRule,
    records: &[u8],
) -> Result<usize, String> {
    let mut written = 0;
    let chain = run::Chain::compile(&[program]).map_err(|e| e.to_string())?;
    let mut scratch = run::Scratch::default();
    for (i, line) in records
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let mut by_rule = Vec::new();
        let refused =
            crate::batch::run_edits(line, &mut by_rule, &|view, edits| rule.edit(view, edits));
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let mut by_program = Vec::new();
        if chain.run(text, &mut by_program, &mut scratch) == run::Outcome::ToRule {
            continue;
        }
        written += 1;
        if !refused.is_empty() || by_program != by_rule {
            return Err(format!(
                "record {i} ({}): the program wrote {:?}, the rule {}",
                String::from_utf8_lossy(line),
                String::from_utf8_lossy(&by_program),
                match refused.first() {
                    Some((_, e)) => format!("refused it ({e})"),
                    None => format!("wrote {:?}", String::from_utf8_lossy(&by_rule)),
                }
            ));
        }
    }
    Ok(written)
}

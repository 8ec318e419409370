//! A floor for the benchmark (`bench/run.py`), not part of `migrate`: how long PASSES strict
//! validation passes over a JSON-lines file take on all cores, with nothing else — no rule, no
//! writing, the file already in memory.
//!
//! Each hop of a migration is a separate plugin that must validate what it is given, so a
//! three-hop data migration can never be faster than three such passes. Measured in the same run
//! as `cp`, this says which targets a design that validates in every hop can reach at all.
//!
//! usage: validation_floor FILE [PASSES]   (prints `{"passes": N, "seconds": S}`)

use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::IgnoredAny;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        bail!("usage: validation_floor FILE [PASSES]");
    };
    let passes: usize = match args.next() {
        Some(n) => n
            .parse()
            .with_context(|| format!("PASSES must be a count, not {n:?}"))?,
        None => 3,
    };
    let data = std::fs::read(&path).with_context(|| format!("cannot read {path}"))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts = split_at_lines(&data, threads);
    let start = Instant::now();
    let records = std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .iter()
            .map(|part| scope.spawn(move || validate(part, passes)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow!("a validating thread panicked")))
            })
            .sum::<Result<u64>>()
    })?;
    let seconds = start.elapsed().as_secs_f64();
    println!(r#"{{"passes": {passes}, "records": {records}, "seconds": {seconds:.4}}}"#);
    Ok(())
}

/// `data` cut into about `n` parts of whole lines.
fn split_at_lines(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    for left in (1..=n).rev() {
        let want = rest.len() / left;
        let cut = match memchr::memchr(b'\n', &rest[want..]) {
            Some(at) if left > 1 => want + at + 1,
            _ => rest.len(),
        };
        let (part, tail) = rest.split_at(cut);
        parts.push(part);
        rest = tail;
    }
    parts
}

/// Validates every record of `part` `passes` times with serde_json, keeping nothing.
fn validate(part: &[u8], passes: usize) -> Result<u64> {
    let mut records = 0;
    for _ in 0..passes {
        for (i, line) in part.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            serde_json::from_slice::<IgnoredAny>(line)
                .with_context(|| format!("line {} of its part is not valid JSON", i + 1))?;
            records += 1;
        }
    }
    Ok(records)
}

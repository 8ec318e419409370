//! Running a data rule over a batch of `\n`-separated records, as the host does through the
//! ABI. It takes the rule as a closure rather than naming the trait, so that `rules` (which
//! calls it from [`Hop::migrate_data_batch`](crate::Hop::migrate_data_batch)) and this module
//! do not import each other.

use crate::error::{FieldError, RuleError};
use crate::raw::RawRecord;
use crate::view::{Edits, RecordView, ViewBatch};

/// Splits a batch into records: one per `\n`, a trailing `\n` does not start a new record.
/// The host splits what plugins return with it; not for plugin authors.
pub fn split_records(batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = batch.strip_suffix(b"\n").unwrap_or(batch);
    let mut rest = (!batch.is_empty()).then_some(trimmed);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b'\n', current) {
            Some(i) => {
                rest = Some(&current[i + 1..]);
                Some(&current[..i])
            }
            None => rest.take(),
        }
    })
}

/// Applies `migrate` to each record of `batch`, appending the migrated records to `out`.
/// Records that fail are left out of `out` and listed, by index, in the returned failures.
pub(crate) fn run(
    batch: &[u8],
    out: &mut Vec<u8>,
    migrate: &dyn Fn(&mut RawRecord<'_>) -> Result<(), FieldError>,
) -> Vec<(u64, RuleError)> {
    let mut failures = Vec::new();
    out.reserve(batch.len() + batch.len() / 4);
    // One UTF-8 check for the whole batch costs ~1/50 of one per record; only a batch
    // with a bad byte pays for the per-record check (which names the record).
    let text = std::str::from_utf8(batch).ok();
    let mut record = RawRecord::default();
    for (index, line) in split_records(batch).enumerate() {
        let mark = out.len();
        // Lines split at `\n` (ASCII) from valid UTF-8 are valid UTF-8: slice the text.
        let start = line.as_ptr() as usize - batch.as_ptr() as usize;
        let line_text = text.and_then(|t| t.get(start..start + line.len()));
        if let Err(e) = migrate_line_into(migrate, &mut record, line, line_text, out) {
            out.truncate(mark);
            failures.push((index as u64, e));
        }
    }
    failures
}

/// [`run`] for an edit rule: the batch is indexed once ([`ViewBatch`]), every record edited,
/// and written once. Failures are listed by index in `batch`, as [`run`] lists them.
pub(crate) fn run_edits(
    batch: &[u8],
    out: &mut Vec<u8>,
    edit: &dyn Fn(&RecordView<'_>, &mut Edits) -> Result<(), FieldError>,
) -> Vec<(u64, RuleError)> {
    let (mut view, mut failures) = ViewBatch::read(batch.to_vec());
    let read = failures.iter().map(|f| f.0).collect::<Vec<_>>();
    let edited = match view.run(edit) {
        Ok(refused) => refused,
        Err(e) => {
            // Cannot happen (the edits come from this crate's own encoder); refuse the
            // batch's records rather than write unchecked ones.
            let all = (0..view.len() as u64).map(|i| (i, RuleError::new(e.to_string())));
            let refused = all.collect::<Vec<_>>();
            view.remove(&refused);
            refused
        }
    };
    // Indices among the records that were read back to indices in the batch.
    if !edited.is_empty() {
        let alive: Vec<u64> = (0..split_records(batch).count() as u64)
            .filter(|i| !read.contains(i))
            .collect();
        failures.extend(edited.into_iter().map(|(i, e)| (alive[i as usize], e)));
    }
    failures.sort_by_key(|f| f.0);
    view.write(out);
    failures
}

/// Reads one record into `record` (storage shared by a batch), applies the rule and appends
/// the result plus `\n` to `out`. `text`: the line as text, when its batch was checked whole.
fn migrate_line_into<'a>(
    migrate: &dyn Fn(&mut RawRecord<'_>) -> Result<(), FieldError>,
    record: &mut RawRecord<'a>,
    line: &'a [u8],
    text: Option<&'a str>,
    out: &mut Vec<u8>,
) -> Result<(), RuleError> {
    match text {
        Some(text) => record.read(text)?,
        None => *record = RawRecord::parse(line)?,
    }
    migrate(record)?;
    record.write(out)?;
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_newline_starts_no_record() {
        let split = |b: &'static [u8]| split_records(b).collect::<Vec<_>>();
        assert_eq!(split(b""), Vec::<&[u8]>::new());
        assert_eq!(split(b"\n"), vec![&b""[..]]);
        assert_eq!(split(b"a\nb"), vec![&b"a"[..], b"b"]);
        assert_eq!(split(b"a\n\nb\n"), vec![&b"a"[..], b"", b"b"]);
    }
}

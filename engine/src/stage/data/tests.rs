use proptest::prelude::*;

use super::{cut_batches, Work};

/// A line of a log: a record (most often starting with `{`, now and then with a space first),
/// or a blank line.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u32..100_000, 0usize..30).prop_map(|(n, pad)| format!("{{\"n\":{n},\"p\":\"{}\"}}", "x".repeat(pad))),
        1 => (0u32..100).prop_map(|n| format!(" {{\"n\":{n}}}\r")),
        1 => prop::sample::select(&["", " ", "\t", "\r", "  \r"][..]).prop_map(str::to_owned),
    ]
}

/// What the data step must see of `text`: each record with its line number and a line break,
/// each blank line as it is.
fn expected(text: &str) -> Vec<(Option<u64>, Vec<u8>)> {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, line)| {
            if line.bytes().all(|b| b.is_ascii_whitespace()) {
                (None, line.as_bytes().to_vec())
            } else {
                let record = line.strip_suffix('\n').unwrap_or(line);
                (Some(i as u64 + 1), format!("{record}\n").into_bytes())
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Cut in pieces of any size, a file comes out as its records, each with its line number,
    /// and its blank lines, in order; no batch is empty or over its size, and every byte read
    /// is counted. Pieces of a few bytes put piece ends in every place a line can have.
    #[test]
    fn lines_are_cut_alike_whatever_the_piece_size(
        lines in prop::collection::vec(line(), 0..40),
        last_break in any::<bool>(),
        read_bytes in 1usize..24,
        batch_size in 1usize..6,
    ) {
        let mut text = lines.join("\n");
        if last_break && !text.is_empty() {
            text.push('\n');
        }
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        let read = cut_batches(&mut text.as_bytes(), read_bytes, batch_size, &mut |work| {
            match work {
                Work::Verbatim(line) => got.push((None, line)),
                Work::Records(batch) => {
                    sizes.push(batch.places.len());
                    for (i, place) in batch.places.iter().enumerate() {
                        let end = batch.starts.get(i + 1).copied().unwrap_or(batch.bytes.len());
                        got.push((Some(*place), batch.bytes[batch.starts[i]..end].to_vec()));
                    }
                }
            }
            true
        })
        .expect("read from memory");
        prop_assert_eq!(read, text.len() as u64);
        prop_assert_eq!(got, expected(&text));
        prop_assert!(sizes.iter().all(|n| (1..=batch_size).contains(n)), "{:?}", sizes);
    }
}

/// When the writer has gone, the reader stops at once: nothing more is sent.
#[test]
fn cutting_stops_when_the_writer_has_gone() {
    let text = "{\"n\":1}\n{\"n\":2}\n\n{\"n\":3}\n".repeat(50);
    let mut sent = 0;
    cut_batches(&mut text.as_bytes(), 7, 2, &mut |_| {
        sent += 1;
        false
    })
    .expect("read from memory");
    assert_eq!(sent, 1);
}

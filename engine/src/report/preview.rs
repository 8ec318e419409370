//! What a dry run shows: a unified diff of the config change and a sample of record changes,
//! read from the scratch staging the dry run wrote outside the installation.

use std::io::{BufRead, BufReader};
use std::path::Path;

use migrate_transaction::staging::Staging;
use serde::Serialize;

use crate::discover::install::DataKind;
use crate::plan::Plan;

/// Records shown per dry run.
const SAMPLE_RECORDS: usize = 3;

#[derive(Debug, Clone, Serialize)]
pub struct RecordChange {
    pub file: String,
    pub line: usize,
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub config_diff: Option<String>,
    pub records: Vec<RecordChange>,
}

pub fn preview(plan: &Plan, staging: &Staging) -> Preview {
    let config_diff = plan.config.as_ref().and_then(|c| {
        let before = std::fs::read_to_string(plan.target.root.join(&c.rel)).ok()?;
        let after = std::fs::read_to_string(staging.dir().join(&c.rel)).ok()?;
        let diff = similar::TextDiff::from_lines(&before, &after);
        Some(
            diff.unified_diff()
                .context_radius(2)
                .header(&format!("a/{}", c.rel), &format!("b/{}", c.rel))
                .to_string(),
        )
    });
    let records = plan
        .data_files
        .iter()
        .find(|f| f.kind == DataKind::Lines)
        .map(|f| {
            sample(
                &plan.target.root.join(&f.rel),
                &staging.dir().join(&f.rel),
                &f.rel,
            )
        })
        .unwrap_or_default();
    Preview {
        config_diff,
        records,
    }
}

fn first_lines(path: &Path) -> Vec<String> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .take(SAMPLE_RECORDS)
        .collect()
}

fn sample(original: &Path, staged: &Path, rel: &str) -> Vec<RecordChange> {
    first_lines(original)
        .into_iter()
        .zip(first_lines(staged))
        .enumerate()
        .map(|(i, (before, after))| RecordChange {
            file: rel.to_owned(),
            line: i + 1,
            before,
            after,
        })
        .collect()
}

//! What a dry run shows: a unified diff of the config change and a sample of record changes,
//! read from the scratch staging the dry run wrote outside the installation.
//!
//! Both sides are read confined ([`Root`]): the installation may have changed since planning
//! (a config or data file replaced by a link, to a FIFO that would hang the dry run), and the
//! staging holds what plugin code wrote. What cannot be read so is left out of the preview.

use std::io::{BufRead, BufReader};

use migrate_transaction::confine::Root;
use migrate_transaction::staging::Staging;
use serde::Serialize;

use crate::discover::install::{DataKind, MAX_CONFIG_BYTES};
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
    let (Ok(install), Ok(staged)) = (Root::open(&plan.target.root), Root::open(staging.dir()))
    else {
        return Preview {
            config_diff: None,
            records: Vec::new(),
        };
    };
    let text = |root: &Root, rel: &str| {
        root.read(rel, MAX_CONFIG_BYTES)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let config_diff = plan.config.as_ref().and_then(|c| {
        let before = text(&install, &c.rel)?;
        let after = text(&staged, &c.rel)?;
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
        .map(|f| sample(&install, &staged, &f.rel))
        .unwrap_or_default();
    Preview {
        config_diff,
        records,
    }
}

fn first_lines(root: &Root, rel: &str) -> Vec<String> {
    let Ok(file) = root.open_read(rel, None) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .take(SAMPLE_RECORDS)
        .collect()
}

fn sample(install: &Root, staged: &Root, rel: &str) -> Vec<RecordChange> {
    first_lines(install, rel)
        .into_iter()
        .zip(first_lines(staged, rel))
        .enumerate()
        .map(|(i, (before, after))| RecordChange {
            file: rel.to_owned(),
            line: i + 1,
            before,
            after,
        })
        .collect()
}

//! The version graph: releases are nodes, loaded hops are edges. The only place that knows how
//! versions chain, so a third-party hop `2.1.0 → 3.0.0` extends every path with no host change.

use std::collections::{BTreeMap, VecDeque};

use semver::Version;

use crate::discover::registry::HopInfo;
use crate::error::{MigrateError, Result};

pub struct VersionGraph {
    hops: Vec<HopInfo>,
}

impl VersionGraph {
    pub fn new(mut hops: Vec<HopInfo>) -> Self {
        hops.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        VersionGraph { hops }
    }

    pub fn hops(&self) -> &[HopInfo] {
        &self.hops
    }

    /// The path with the fewest hops from `from` to `to`. Empty when `from == to`.
    pub fn path(&self, from: &Version, to: &Version) -> Result<Vec<HopInfo>> {
        let edges: Vec<(Version, Version)> = self
            .hops
            .iter()
            .map(|h| (h.from.clone(), h.to.clone()))
            .collect();
        match shortest_path(&edges, from, to) {
            Some(indices) => Ok(indices.into_iter().map(|i| self.hops[i].clone()).collect()),
            None => Err(self.no_path(from, to)),
        }
    }

    fn no_path(&self, from: &Version, to: &Version) -> MigrateError {
        let hops: Vec<String> = self
            .hops
            .iter()
            .map(|h| format!("{} → {}", h.from, h.to))
            .collect();
        let reason = if to < from {
            "the target is older than the source; going back is a rollback from a backup".to_owned()
        } else if hops.is_empty() {
            "no hop plugins were loaded".to_owned()
        } else {
            format!(
                "no chain of loaded hops leads there; loaded hops: {}",
                hops.join(", ")
            )
        };
        let hint = if to < from {
            "use `migrate rollback --backup-path PATH`".to_owned()
        } else {
            "run `migrate plugins list` to see which hops are loaded, and add the missing hop plugin to a plugin folder".to_owned()
        };
        MigrateError::NoPath {
            from: from.to_string(),
            to: to.to_string(),
            reason,
            hint,
        }
    }
}

/// Breadth-first search over `edges` (sorted, so ties go to the lower intermediate version and
/// the answer is deterministic). Returns edge indices, `None` if `to` is unreachable.
pub fn shortest_path(
    edges: &[(Version, Version)],
    from: &Version,
    to: &Version,
) -> Option<Vec<usize>> {
    let mut came_from: BTreeMap<Version, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([from.clone()]);
    while let Some(at) = queue.pop_front() {
        if &at == to {
            let mut path = Vec::new();
            let mut cur = to.clone();
            while &cur != from {
                let i = came_from[&cur];
                path.push(i);
                cur = edges[i].0.clone();
            }
            path.reverse();
            return Some(path);
        }
        for (i, (_, next)) in edges.iter().enumerate().filter(|(_, (f, _))| *f == at) {
            if next != from && !came_from.contains_key(next) {
                came_from.insert(next.clone(), i);
                queue.push_back(next.clone());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn edges(list: &[(&str, &str)]) -> Vec<(Version, Version)> {
        list.iter().map(|(a, b)| (v(a), v(b))).collect()
    }

    #[test]
    fn chains_the_releases_in_order() {
        let e = edges(&[("0.1.0", "1.0.0"), ("1.0.0", "2.0.0"), ("2.0.0", "2.1.0")]);
        assert_eq!(
            shortest_path(&e, &v("0.1.0"), &v("2.1.0")),
            Some(vec![0, 1, 2])
        );
        assert_eq!(shortest_path(&e, &v("1.0.0"), &v("2.0.0")), Some(vec![1]));
        assert_eq!(shortest_path(&e, &v("2.1.0"), &v("2.1.0")), Some(vec![]));
    }

    #[test]
    fn a_third_party_hop_extends_the_chain() {
        let e = edges(&[
            ("0.1.0", "1.0.0"),
            ("1.0.0", "2.0.0"),
            ("2.0.0", "2.1.0"),
            ("2.1.0", "3.0.0"),
        ]);
        assert_eq!(
            shortest_path(&e, &v("0.1.0"), &v("3.0.0")),
            Some(vec![0, 1, 2, 3])
        );
    }

    #[test]
    fn prefers_fewest_hops() {
        let e = edges(&[("1.0.0", "2.0.0"), ("1.0.0", "2.1.0"), ("2.0.0", "2.1.0")]);
        assert_eq!(shortest_path(&e, &v("1.0.0"), &v("2.1.0")), Some(vec![1]));
    }

    #[test]
    fn unreachable_or_backwards_is_none() {
        let e = edges(&[("0.1.0", "1.0.0"), ("2.0.0", "2.1.0")]);
        assert_eq!(shortest_path(&e, &v("0.1.0"), &v("2.1.0")), None);
        assert_eq!(shortest_path(&e, &v("1.0.0"), &v("0.1.0")), None);
    }
}

//! How an operator writes a release: `2.1.0`, or `2.1` for `2.1.0` (as cargo and most
//! operators' tools read a short version), and, for a target, `latest`. One parser for the
//! command line and the API, so `--to 2.1` means the same everywhere.

use semver::Version;

/// A migration's target as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRelease {
    /// The newest release the loaded plugins reach from the installation's version.
    Latest,
    Exact(Version),
}

impl std::fmt::Display for TargetRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetRelease::Latest => f.write_str("latest"),
            TargetRelease::Exact(v) => v.fmt(f),
        }
    }
}

/// A release number: full semver, or `MAJOR.MINOR` / `MAJOR` completed with zeros.
pub fn parse_release(text: &str) -> Result<Version, semver::Error> {
    let text = text.trim();
    match Version::parse(text) {
        Ok(v) => Ok(v),
        Err(e) => {
            let parts: Vec<&str> = text.split('.').collect();
            let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            if parts.len() < 3 && parts.iter().all(numeric) {
                let mut full = parts.join(".");
                for _ in parts.len()..3 {
                    full.push_str(".0");
                }
                Version::parse(&full)
            } else {
                Err(e)
            }
        }
    }
}

/// A target: `latest` or a release number.
pub fn parse_target(text: &str) -> Result<TargetRelease, semver::Error> {
    if text.trim().eq_ignore_ascii_case("latest") {
        return Ok(TargetRelease::Latest);
    }
    parse_release(text).map(TargetRelease::Exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_versions_are_completed_with_zeros() {
        assert_eq!(parse_release("2.1").unwrap(), Version::new(2, 1, 0));
        assert_eq!(parse_release("2").unwrap(), Version::new(2, 0, 0));
        assert_eq!(parse_release(" 2.1.0 ").unwrap(), Version::new(2, 1, 0));
        assert_eq!(
            parse_release("3.0.0-rc.1").unwrap().to_string(),
            "3.0.0-rc.1"
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in ["", "2.", "2.x", "v2.1", "latest", "2.1.0.1", "-1"] {
            assert!(parse_release(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_target_may_be_latest() {
        assert_eq!(parse_target("latest").unwrap(), TargetRelease::Latest);
        assert_eq!(parse_target("LATEST").unwrap(), TargetRelease::Latest);
        assert_eq!(
            parse_target("2.1").unwrap(),
            TargetRelease::Exact(Version::new(2, 1, 0))
        );
        assert!(parse_target("newest").is_err());
    }
}

//! What a plugin says about itself. Sent to the host as JSON, so it can grow fields without
//! touching the frozen ABI.

use serde::{Deserialize, Serialize};

/// Which of the three rules a hop provides. Filled in by [`Hop::descriptor`](crate::Hop::descriptor)
/// from the rules the hop was given; non-exhaustive (since 1.4.0) so that a fourth kind of rule
/// can be added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RuleKinds {
    pub config: bool,
    pub data: bool,
    pub model: bool,
    /// The data rule is a [`DataEditRule`](crate::DataEditRule): the host may send it views
    /// of records and apply its edits. Absent (false) in plugins built before 1.5.0, which the
    /// host runs on text. Since 1.5.0.
    #[serde(default)]
    pub data_edits: bool,
}

/// A plugin's identity and hop, as shown by `migrate plugins list` and `migrate info`.
///
/// Built with [`HopDescriptor::new`] and the builder methods, never with a literal: it is JSON on
/// the wire precisely so that it can gain fields, and it is non-exhaustive (since 1.4.0) so that
/// a new field does not break plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HopDescriptor {
    pub name: String,
    /// Source release, semver.
    pub from: String,
    /// Target release, semver.
    pub to: String,
    pub description: String,
    #[serde(default)]
    pub breaking_changes: Vec<String>,
    #[serde(default)]
    pub rules: RuleKinds,
    /// The `schema_version` this hop's data rule writes on records and `metadata.json` (the
    /// spec numbers them 1, 2, 3 for 1.0.0, 2.0.0, 2.1.0). Lets the host validate a release
    /// without knowing its format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_schema_version: Option<u64>,
    /// plugin-api version the plugin was built against (filled in by the export macro).
    #[serde(default)]
    pub api_version: String,
    /// JSON payload version the plugin speaks.
    #[serde(default)]
    pub payload_version: u32,
    /// Running this hop destroys information that only a backup brings back (2.0.0 → 2.1.0
    /// replaces plaintext API keys by their sha256): the host asks for confirmation before a
    /// migration through it. Set by [`HopDescriptor::irreversible_change`]. A flag rather than
    /// a word in the text, so that the host's decision does not depend on how the change is
    /// phrased (or translated). Absent, so false, in plugins built before 1.6.0: for those
    /// [`HopDescriptor::is_irreversible`] falls back to the text. Since 1.6.0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub irreversible: bool,
    /// The data rule's declared edits ([`DataProgram`](crate::program::DataProgram)), set by
    /// [`Hop::data_program`](crate::Hop::data_program). Kept as JSON and read by
    /// [`HopDescriptor::data_program`], so that a host whose vocabulary lacks a step a newer
    /// plugin uses still loads the plugin (and runs its rule). Since 1.7.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_program: Option<serde_json::Value>,
}

/// The first plugin-api release whose descriptors carry [`HopDescriptor::irreversible`].
const IRREVERSIBLE_SINCE: (u64, u64) = (1, 6);

/// What hosts before 1.6.0 looked for in a breaking change: "irreversible", "irreversibly".
fn says_irreversible(change: &str) -> bool {
    change.to_lowercase().contains("irreversib")
}

impl HopDescriptor {
    pub fn new(name: &str, from: &str, to: &str, description: &str) -> Self {
        HopDescriptor {
            name: name.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            description: description.to_owned(),
            breaking_changes: Vec::new(),
            rules: RuleKinds::default(),
            target_schema_version: None,
            api_version: crate::API_VERSION.to_owned(),
            payload_version: crate::PAYLOAD_VERSION,
            irreversible: false,
            data_program: None,
        }
    }

    /// The declared data edits, when the plugin declares them (with an edit rule to decide
    /// what they leave) and this host understands every step; `None` otherwise, and the host
    /// runs the rule.
    pub fn data_program(&self) -> Option<crate::program::DataProgram> {
        let json = self
            .data_program
            .as_ref()
            .filter(|_| self.rules.data_edits)?;
        serde_json::from_value(json.clone()).ok()
    }

    pub fn target_schema_version(mut self, version: u64) -> Self {
        self.target_schema_version = Some(version);
        self
    }

    pub fn breaking_change(mut self, change: &str) -> Self {
        self.breaking_changes.push(change.to_owned());
        self
    }

    /// A breaking change that cannot be undone without a backup: listed with the others, and
    /// it sets [`irreversible`](Self::irreversible), so that the host asks for confirmation
    /// before a migration through this hop. Since 1.6.0.
    ///
    /// Hosts before 1.6.0 do not read the flag and ask only when the text says
    /// "irreversible": say it in the text too if your plugin may run in one.
    pub fn irreversible_change(mut self, change: &str) -> Self {
        self.irreversible = true;
        self.breaking_change(change)
    }

    /// Whether the host must treat a migration through this hop as irreversible (and ask
    /// before running it). The flag decides for plugins built against 1.6.0 and later; a
    /// plugin built earlier cannot set it, so for those a breaking change whose text says
    /// "irreversib…" decides, as it did in hosts before 1.6.0.
    pub fn is_irreversible(&self) -> bool {
        self.irreversible || (!self.has_irreversible_flag() && self.says_irreversible())
    }

    /// What the host shows when it asks: the breaking changes that say they are irreversible,
    /// or, for a hop flagged irreversible whose texts do not say so, all of its breaking
    /// changes (its description if it lists none). Empty when the hop is not irreversible.
    pub fn irreversible_changes(&self) -> Vec<&str> {
        if !self.is_irreversible() {
            return Vec::new();
        }
        let worded: Vec<&str> = self
            .breaking_changes
            .iter()
            .map(String::as_str)
            .filter(|c| says_irreversible(c))
            .collect();
        if !worded.is_empty() {
            worded
        } else if !self.breaking_changes.is_empty() {
            self.breaking_changes.iter().map(String::as_str).collect()
        } else {
            vec![self.description.as_str()]
        }
    }

    fn says_irreversible(&self) -> bool {
        self.breaking_changes.iter().any(|c| says_irreversible(c))
    }

    /// Whether the plugin was built against a plugin-api that has the flag: an `api_version`
    /// that does not parse (none at all, or not `major.minor…`) is an old plugin's.
    fn has_irreversible_flag(&self) -> bool {
        let mut parts = self.api_version.split('.').map(|p| p.parse::<u64>());
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= IRREVERSIBLE_SINCE,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built_against(api: &str, d: HopDescriptor) -> HopDescriptor {
        HopDescriptor {
            api_version: api.to_owned(),
            ..d
        }
    }

    #[test]
    fn the_flag_decides_and_needs_no_word_in_the_text() {
        let d = HopDescriptor::new("h", "2.0.0", "2.1.0", "drops a field")
            .breaking_change("records: latency_ms moves")
            .irreversible_change("records: `secret` is dropped for good");
        assert!(d.irreversible && d.is_irreversible());
        // Neither text says the word: every breaking change is shown.
        assert_eq!(
            d.irreversible_changes(),
            [
                "records: latency_ms moves",
                "records: `secret` is dropped for good"
            ]
        );
        // A flagged hop that words it shows only what it words.
        let d = HopDescriptor::new("h", "2.0.0", "2.1.0", "hashes keys")
            .irreversible_change("API keys are hashed irreversibly")
            .breaking_change("records: latency_ms moves");
        assert_eq!(
            d.irreversible_changes(),
            ["API keys are hashed irreversibly"]
        );
        // Flagged with no breaking change listed: the description.
        let mut d = HopDescriptor::new("h", "2.0.0", "2.1.0", "hashes keys");
        d.irreversible = true;
        assert_eq!(d.irreversible_changes(), ["hashes keys"]);
    }

    #[test]
    fn only_plugins_built_before_the_flag_are_judged_by_their_text() {
        let worded = HopDescriptor::new("h", "2.0.0", "2.1.0", "hashes keys")
            .breaking_change("API keys are removed IRREVERSIBLY");
        // Built against 1.0–1.5 (or with no api_version at all): the text decides.
        for api in ["1.0.0", "1.5.3", "", "garbage"] {
            let d = built_against(api, worded.clone());
            assert!(d.is_irreversible(), "{api}");
            assert_eq!(
                d.irreversible_changes(),
                ["API keys are removed IRREVERSIBLY"]
            );
            let plain = built_against(
                api,
                HopDescriptor::new("h", "2.0.0", "2.1.0", "x").breaking_change("a field moves"),
            );
            assert!(!plain.is_irreversible(), "{api}");
            assert!(plain.irreversible_changes().is_empty());
        }
        // Built against 1.6 or later: the flag decides, whatever the text says.
        for api in ["1.6.0", "1.7.0", "1.10.0", "2.0.0"] {
            assert!(
                !built_against(api, worded.clone()).is_irreversible(),
                "{api}"
            );
        }
    }

    #[test]
    fn the_flag_is_optional_on_the_wire() {
        // A 1.5 plugin's descriptor has no `irreversible`: it reads as false.
        let old = r#"{"name":"h","from":"2.0.0","to":"2.1.0","description":"d","api_version":"1.5.0","payload_version":1}"#;
        let d: HopDescriptor = serde_json::from_str(old).unwrap();
        assert!(!d.irreversible);
        // Unflagged descriptors are written as before; a flagged one carries it.
        let plain = HopDescriptor::new("h", "2.0.0", "2.1.0", "d");
        assert!(!serde_json::to_string(&plain)
            .unwrap()
            .contains("irreversible"));
        let flagged = plain.irreversible_change("gone for good");
        let back: HopDescriptor =
            serde_json::from_str(&serde_json::to_string(&flagged).unwrap()).unwrap();
        assert!(back.irreversible);
        assert_eq!(back, flagged);
    }
}

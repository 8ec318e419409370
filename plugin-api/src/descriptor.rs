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
        }
    }

    pub fn target_schema_version(mut self, version: u64) -> Self {
        self.target_schema_version = Some(version);
        self
    }

    pub fn breaking_change(mut self, change: &str) -> Self {
        self.breaking_changes.push(change.to_owned());
        self
    }
}

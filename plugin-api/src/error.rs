//! The two errors a rule returns. They sit in their own module, below everything else, because
//! every helper module returns them: with them in `rules`, the helpers and the rule traits
//! imported each other.

use serde::{Deserialize, Serialize};

/// Why a rule refused its input. Serialised across the ABI; the host adds the file name.
///
/// Its fields stay public and the struct exhaustive within major 1 (plugins built against 1.x
/// build it with literals and `..e`); new code should use the constructors and `with_*`
/// methods, which keep working when it gains a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", self.render())]
pub struct RuleError {
    pub message: String,
    /// The key or field concerned, e.g. `port` or `usage.output_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// 1-based line in the input, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// True when the plugin panicked rather than refused the input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub panicked: bool,
}

impl RuleError {
    pub fn new(message: impl Into<String>) -> Self {
        RuleError {
            message: message.into(),
            field: None,
            line: None,
            panicked: false,
        }
    }

    pub fn at_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        RuleError::new(message).with_field(field)
    }

    /// The same error, about `field` (replacing any field it named). Since 1.4.0.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    /// Marks the error as a caught panic rather than a refusal (the host words it and chooses
    /// its exit code differently). Since 1.4.0.
    pub fn panicked(mut self) -> Self {
        self.panicked = true;
        self
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(line) = self.line {
            out.push_str(&format!("line {line}: "));
        }
        if let Some(field) = &self.field {
            out.push_str(&format!("`{field}`: "));
        }
        out.push_str(&self.message);
        out
    }
}

impl From<FieldError> for RuleError {
    fn from(e: FieldError) -> Self {
        RuleError::at_field(e.field, e.message)
    }
}

impl From<std::io::Error> for RuleError {
    fn from(e: std::io::Error) -> Self {
        RuleError::new(e.to_string())
    }
}

/// A record refused by a data rule: which field, and what was wrong with it.
///
/// Exhaustive within major 1 for the same reason as [`RuleError`]; build it with
/// [`FieldError::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_error_names_line_and_field_and_reads_back_from_json() {
        let e = RuleError::at_field("port", "expected an integer").with_line(3);
        assert_eq!(e.to_string(), "line 3: `port`: expected an integer");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"message":"expected an integer","field":"port","line":3}"#
        );
        assert_eq!(serde_json::from_str::<RuleError>(&json).unwrap(), e);
        let panicked = RuleError::new("boom").panicked();
        assert!(serde_json::to_string(&panicked)
            .unwrap()
            .contains(r#""panicked":true"#));
        assert_eq!(
            RuleError::from(FieldError::new("a.b", "bad")).with_field("c"),
            RuleError::at_field("c", "bad")
        );
    }
}

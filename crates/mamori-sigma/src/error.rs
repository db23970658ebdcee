//! Errors: why a Sigma document could not be parsed or compiled.

use std::path::PathBuf;

/// Why one Sigma document was refused. Every variant names what is wrong precisely enough
/// for a rule author to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SigmaError {
    /// The file is not valid YAML.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// A required key is absent.
    #[error("missing required key `{0}`")]
    Missing(&'static str),
    /// A key has a value of the wrong form.
    #[error("`{key}`: {reason}")]
    Invalid {
        /// The key, as a dotted path.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The condition does not parse or names something that does not exist.
    #[error("condition `{condition}`: {reason}")]
    Condition {
        /// The condition text.
        condition: String,
        /// What is wrong.
        reason: String,
    },
    /// A value or modifier in a selection cannot be compiled.
    #[error("selection `{selection}`, `{field}`: {reason}")]
    Value {
        /// The search identifier.
        selection: String,
        /// The field with its modifiers, as written.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The logsource is one Mamori cannot route events to.
    #[error("logsource {0}")]
    Logsource(String),
    /// A correlation or filter refers to rules that are not loaded, or is malformed.
    #[error("{0}")]
    Reference(String),
    /// Another rule already uses this id.
    #[error("duplicate rule id {0}")]
    DuplicateId(String),
}

impl SigmaError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        SigmaError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

//! Parse errors.

/// Why a selector could not be parsed, and where.
///
/// `column` is 1-based and counts characters (not bytes) from the start of the selector;
/// line breaks count as one character each. An error at the end of the input has the
/// column one past the last character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
#[non_exhaustive]
pub struct ParseError {
    /// 1-based character column where the problem was found.
    pub column: usize,
    /// What was expected and what was found instead.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> Self {
        ParseError {
            column,
            message: message.into(),
        }
    }
}

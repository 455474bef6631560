//! Validation errors of rule files: every problem is collected with its file, line and field
//! path (`rules[0].when[1].error_rate.above`) and reported together, like `promtool check rules`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::locate;

/// One problem in one rule file, printed `file:line: field: message` like `promtool check rules`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Collects one entry's (a rule's, a mapping's, a plan's) errors with their field path and line.
pub struct Report<'a> {
    pub file: &'a Path,
    /// Field path → line, from [`locate::lines`].
    pub lines: &'a HashMap<String, usize>,
    /// `rules[3]`, `alerts[0]`.
    pub prefix: String,
    pub errors: &'a mut Vec<RuleError>,
    /// Whether any error was reported for this entry.
    pub failed: bool,
}

impl Report<'_> {
    /// Reports `message` about `field` (relative to the prefix), with the field's line.
    pub fn fail(&mut self, field: &str, message: String) {
        self.failed = true;
        let field = format!("{}.{field}", self.prefix);
        self.errors.push(RuleError { file: self.file.into(), line: locate::line_of(self.lines, &field), field, message });
    }
}

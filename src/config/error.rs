//! Config errors: each names the file, line, column and layer, so a user can jump
//! straight to the mistake. They never reach the I/O path.

use std::fmt;
use std::ops::Range;

use layers::escape::escape_controls;

/// Byte offsets into the config text.
pub type Span = Range<usize>;

/// One mistake in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the user named it; empty when the error has no file (for
    /// example [`crate::config::exposed_sizes`] on a bare `Plan`).
    pub file: String,
    /// 1-based line and column (in characters); `None` for errors about the
    /// whole file, such as one that cannot be read.
    pub position: Option<Position>,
    /// The `[layers.NAME]` the error is about, if any.
    pub layer: Option<String>,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names, paths and values in a message come from the file: escaped,
        // so that they cannot start a line of their own or drive the terminal.
        if !self.file.is_empty() {
            write!(f, "{}:", escape_controls(&self.file))?;
            if let Some(position) = self.position {
                write!(f, "{}:{}:", position.line, position.column)?;
            }
            write!(f, " ")?;
        }
        if let Some(layer) = &self.layer {
            write!(f, "layer \"{}\": ", escape_controls(layer))?;
        }
        write!(f, "{}", escape_controls(&self.message))
    }
}

/// Every mistake found in one file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An error about the whole file (unreadable, not UTF-8).
    pub(crate) fn whole_file(file: &str, message: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            position: None,
            layer: None,
            message,
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A mistake found while reading a file, before spans become lines and columns.
#[derive(Clone, Debug)]
pub(crate) struct Problem {
    pub span: Option<Span>,
    pub layer: Option<String>,
    pub message: String,
}

/// Collects every problem in a file, so all of them are reported at once.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub fn at(&mut self, span: &Span, message: impl Into<String>) {
        self.0.push(Problem {
            span: Some(span.clone()),
            layer: None,
            message: message.into(),
        });
    }

    pub fn at_layer(&mut self, span: &Span, layer: &str, message: impl Into<String>) {
        self.0.push(Problem {
            span: Some(span.clone()),
            layer: Some(layer.to_owned()),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Line and column for every problem, sorted by where it is in the file.
    pub fn into_errors(mut self, file: &str, text: &str) -> ConfigErrors {
        self.0
            .sort_by_key(|problem| problem.span.as_ref().map_or(0, |span| span.start));
        ConfigErrors(
            self.0
                .into_iter()
                .map(|problem| ConfigError {
                    file: file.to_owned(),
                    position: problem.span.map(|span| position(text, span.start)),
                    layer: problem.layer,
                    message: problem.message,
                })
                .collect(),
        )
    }
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_counts_lines_and_characters_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(position(text, 0), Position { line: 1, column: 1 });
        assert_eq!(position(text, 6), Position { line: 2, column: 1 });
        // "bé" is three bytes; the column counts characters.
        assert_eq!(position(text, 10), Position { line: 2, column: 4 });
        assert_eq!(position(text, 999), Position { line: 3, column: 1 });
    }

    #[test]
    fn error_display_names_file_position_and_layer() {
        let error = ConfigError {
            file: "configs/x.toml".into(),
            position: Some(Position {
                line: 14,
                column: 12,
            }),
            layer: Some("b".into()),
            message: "unknown key \"sise\"".into(),
        };
        assert_eq!(
            error.to_string(),
            "configs/x.toml:14:12: layer \"b\": unknown key \"sise\""
        );
    }
}

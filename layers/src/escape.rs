//! Text from a config file shown on a terminal: control characters (newlines,
//! escape sequences) and bidirectional overrides are written as escapes, so a
//! layer name or path can neither fake a line of output nor drive the terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control or bidi-override character escaped (`\n`, `\t`,
/// `\r`, else `\u{…}`); other text, quotes and non-ASCII letters included, as
/// it is.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    // Bidi embeddings, overrides and isolates reorder what follows them.
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape_controls("plain \"é\""), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nok: fake\x1b[31m\t\r\u{7f}\u{202e}"),
            "a\\nok: fake\\u{1b}[31m\\t\\r\\u{7f}\\u{202e}"
        );
    }
}

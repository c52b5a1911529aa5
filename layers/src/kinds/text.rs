//! Paths as messages show them and as reload compares them.

use std::path::Path;

/// A path for messages: relative to the current directory when it is below
/// it (shorter, and close to what the user typed), else as it is.
pub fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// A path as a value to compare: exact even for names that are not UTF-8.
pub fn path_value(path: &Path) -> String {
    format!("{path:?}")
}

//! Config schema v1: TOML text → validated [`layers::Plan`].
//!
//! The flow goes one way: [`raw`] reads the TOML keeping every position,
//! [`validate`] turns that into a `Plan` (typed parameters, references resolved
//! to indices), and [`sizes`] measures the tree against the leaves on disk
//! without changing them. Every mistake in a file is reported, each as
//! `file:line:col: layer "x": message`.

mod duration;
mod error;
mod fields;
mod graph;
mod layer;
mod raw;
mod schema;
pub mod size;
mod sizes;
mod suggest;
pub mod tree;
mod validate;

use std::path::{Path, PathBuf};

use layers::plan::Plan;

pub use error::{ConfigError, ConfigErrors, Position};
pub use sizes::exposed_sizes;

use error::Problems;

/// A valid config together with the size each layer exposes.
#[derive(Clone, Debug)]
pub struct Checked {
    pub plan: Plan,
    /// Exposed size in bytes of each layer, indexed like `plan.layers`.
    pub sizes: Vec<u64>,
}

/// Reads and validates a config file. Relative paths in it are taken from the
/// file's folder. Touches nothing on disk besides reading the file.
pub fn load(path: &Path) -> Result<Plan, ConfigErrors> {
    let (text, base_dir) = read(path)?;
    parse(&text, path, &base_dir)
}

/// Validates config `text`; errors name `path_for_messages`; relative paths
/// in the config are joined to `base_dir`.
pub fn parse(text: &str, path_for_messages: &Path, base_dir: &Path) -> Result<Plan, ConfigErrors> {
    validated(text, path_for_messages, base_dir).map(|validated| validated.plan)
}

/// [`load`], then measures every layer ([`exposed_sizes`]), reporting size
/// problems (missing files, legs of different sizes) at their line in the file.
pub fn check_file(path: &Path) -> Result<Checked, ConfigErrors> {
    let (text, base_dir) = read(path)?;
    check(&text, path, &base_dir)
}

/// [`parse`] plus the size checks of [`check_file`].
pub fn check(
    text: &str,
    path_for_messages: &Path,
    base_dir: &Path,
) -> Result<Checked, ConfigErrors> {
    let validated = validated(text, path_for_messages, base_dir)?;
    match sizes::measure(&validated.plan) {
        Ok(sizes) => Ok(Checked {
            plan: validated.plan,
            sizes,
        }),
        Err(size_problems) => {
            let mut problems = Problems::default();
            for problem in size_problems {
                let span = validated.spans[problem.layer].of(problem.key);
                let name = &validated.plan.layers[problem.layer].name;
                problems.at_layer(&span, name, problem.message);
            }
            Err(problems.into_errors(&display(path_for_messages), text))
        }
    }
}

fn validated(
    text: &str,
    path_for_messages: &Path,
    base_dir: &Path,
) -> Result<validate::Validated, ConfigErrors> {
    let file = display(path_for_messages);
    let mut problems = Problems::default();
    let validated = raw::parse(text, &mut problems)
        .and_then(|raw| validate::validate(&raw, base_dir, &mut problems));
    match validated {
        Some(validated) if problems.is_empty() => Ok(validated),
        _ => Err(problems.into_errors(&file, text)),
    }
}

fn read(path: &Path) -> Result<(String, PathBuf), ConfigErrors> {
    let file = display(path);
    let bytes = std::fs::read(path)
        .map_err(|error| ConfigErrors::whole_file(&file, format!("cannot read: {error}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigErrors::whole_file(&file, "is not UTF-8 text".into()))?;
    // Absolute, so a daemon that changes directory still finds the leaves.
    let base_dir = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => std::path::absolute(folder),
        _ => std::env::current_dir(),
    }
    .map_err(|error| {
        ConfigErrors::whole_file(&file, format!("cannot resolve its folder: {error}"))
    })?;
    Ok((text, base_dir))
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

//! Config schema v1: TOML text → validated [`layers::Plan`].
//!
//! The flow goes one way: [`raw`] reads the TOML keeping every position,
//! [`validate`] turns that into a `Plan` (typed parameters, references resolved
//! to indices), and [`sizes`] measures the tree against the leaves on disk
//! without changing them. Every mistake in a file is reported, each as
//! `file:line:col: layer "x": message`. On reload, [`diff`] compares the
//! running plan with the edited one.

mod chain;
pub mod diff;
mod error;
mod fields;
mod graph;
mod layer;
mod machine;
mod raw;
mod schema;
pub mod sizes;
mod suggest;
pub mod tree;
mod validate;

/// Sizes and durations as the file writes them (shared with the layer kinds).
pub use layers::units::{duration, size};

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
/// in the config are joined to `base_dir`. Touches nothing on disk.
pub fn parse(text: &str, path_for_messages: &Path, base_dir: &Path) -> Result<Plan, ConfigErrors> {
    let mut problems = Problems::default();
    let plan = raw::parse(text, &mut problems)
        .and_then(|raw| validate::validate(&raw, base_dir, &mut problems))
        .and_then(|validated| validated.plan);
    finish(plan, problems, path_for_messages, text)
}

/// [`load`], then measures every layer ([`exposed_sizes`]), reporting size
/// problems (missing files, legs of different sizes) at their line in the file.
pub fn check_file(path: &Path) -> Result<Checked, ConfigErrors> {
    let (text, base_dir) = read(path)?;
    check(&text, path, &base_dir)
}

/// [`parse`] plus the size checks of [`check_file`], and what the config asks
/// of this machine (memory, keys, distinct leaf files, O_DIRECT alignment):
/// everything `up` would refuse before opening a leaf. Leaves are measured
/// even when other parts of the file are wrong, so every mistake shows at once.
pub fn check(
    text: &str,
    path_for_messages: &Path,
    base_dir: &Path,
) -> Result<Checked, ConfigErrors> {
    let mut problems = Problems::default();
    let Some(validated) = raw::parse(text, &mut problems)
        .and_then(|raw| validate::validate(&raw, base_dir, &mut problems))
    else {
        return finish(None, problems, path_for_messages, text);
    };
    let layers: Vec<_> = validated
        .layers
        .iter()
        .map(|layer| layer.as_ref().map(|(plan, _)| plan))
        .collect();
    let block_size = u64::from(validated.block_size);
    let (sizes, mut size_problems) = sizes::measure_layers(&layers, block_size);
    size_problems.extend(machine::check(&layers, &sizes, block_size));
    for problem in size_problems {
        if let Some((layer, spans)) = &validated.layers[problem.layer] {
            problems.at_layer(&spans.of(problem.key), &layer.name, problem.message);
        }
    }
    let checked = validated.plan.and_then(|plan| {
        let sizes: Option<Vec<u64>> = sizes.into_iter().collect();
        Some(Checked {
            plan,
            sizes: sizes?,
        })
    });
    finish(checked, problems, path_for_messages, text)
}

/// The value if nothing was reported, else every problem with its position.
fn finish<T>(
    value: Option<T>,
    problems: Problems,
    path_for_messages: &Path,
    text: &str,
) -> Result<T, ConfigErrors> {
    match value {
        Some(value) if problems.is_empty() => Ok(value),
        None if problems.is_empty() => {
            // Every refusal should come with a reason; if a check ever forgets
            // to give one, say so rather than fail silently.
            debug_assert!(false, "config refused without a reported problem");
            Err(ConfigErrors::whole_file(
                &display(path_for_messages),
                "refused without a specific reason (a bug in ublk-stack; please report it)".into(),
            ))
        }
        _ => Err(problems.into_errors(&display(path_for_messages), text)),
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

//! The tree `ublk-stack validate` prints: every layer with its type, exposed
//! size, parameters (its kind's summary) and live keys, children drawn below
//! their parent.

use std::fmt::Write as _;

use layers::escape::escape_controls;
use layers::plan::{LayerId, LayerSpec};

use super::size::format_human;
use super::Checked;

/// One printed line before columns are aligned.
struct Row {
    label: String,
    type_name: &'static str,
    size: String,
    details: String,
}

/// `file: ok: device …` followed by the indented tree.
pub fn render(file: &str, checked: &Checked) -> String {
    let plan = &checked.plan;
    let device = &plan.device;
    let mut out = format!(
        "{}: ok: device \"{}\", {}, {} queues x {}, block {}",
        escape_controls(file),
        escape_controls(&device.name),
        format_human(checked.sizes[plan.top]),
        device.queues,
        device.queue_depth,
        device.block_size
    );
    if let Some(id) = device.id {
        let _ = write!(out, ", id {id} (/dev/ublkb{id})");
    }
    let _ = writeln!(out, "\n  live: log.level={}", plan.log_level.as_str());

    let mut rows = Vec::with_capacity(plan.layers.len());
    collect_rows(checked, plan.top, String::new(), String::new(), &mut rows);
    let label_width = rows
        .iter()
        .map(|row| row.label.chars().count())
        .max()
        .unwrap_or(0);
    let type_width = rows
        .iter()
        .map(|row| row.type_name.len())
        .max()
        .unwrap_or(0);
    let size_width = rows.iter().map(|row| row.size.len()).max().unwrap_or(0);
    for row in rows {
        let line = format!(
            "  {label:<label_width$}  {kind:<type_width$}  {size:>size_width$}  {details}",
            label = row.label,
            kind = row.type_name,
            size = row.size,
            details = row.details,
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// Depth-first, parents before children. `lead` prefixes this layer's label;
/// `indent` prefixes its children's.
fn collect_rows(checked: &Checked, id: LayerId, lead: String, indent: String, rows: &mut Vec<Row>) {
    let layer = &checked.plan.layers[id];
    rows.push(Row {
        // Names and paths come from the file: escaped, so that they cannot
        // print lines of their own or drive the terminal.
        label: format!("{lead}{}", escape_controls(&layer.name)),
        type_name: layer.spec.type_name(),
        size: format_human(checked.sizes[id]),
        details: escape_controls(&details(&layer.spec)).into_owned(),
    });
    let children = layer.spec.children();
    for (index, &child) in children.iter().enumerate() {
        let last = index + 1 == children.len();
        let (branch, below) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        collect_rows(
            checked,
            child,
            format!("{indent}{branch}"),
            format!("{indent}{below}"),
            rows,
        );
    }
}

/// The kind's summary, then `live: key=value …` for its live keys.
fn details(spec: &LayerSpec) -> String {
    let fixed = spec.summary();
    let live_keys = spec.live_keys();
    let live = spec
        .values(&|_| String::new())
        .into_iter()
        .filter(|(key, _)| live_keys.contains(key))
        .map(|(key, value)| format!("{key}={}", value.unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(" ");
    match (fixed.is_empty(), live.is_empty()) {
        (_, true) => fixed,
        (true, false) => format!("live: {live}"),
        (false, false) => format!("{fixed}  live: {live}"),
    }
}

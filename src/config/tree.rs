//! The tree `ublk-stack validate` prints: every layer with its type, exposed
//! size, parameters and live keys, children drawn below their parent.

use std::fmt::Write as _;

use layers::escape::escape_controls;
use layers::plan::{KeySource, LayerId, LayerSpec};

use super::duration::format_duration_us;
use super::size::{format_exact, format_human};
use super::{shown, Checked};

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

/// Fixed parameters, then `live: key=value …`.
fn details(spec: &LayerSpec) -> String {
    let fixed = match spec {
        LayerSpec::File(params) => {
            let state = if params.path.exists() {
                "exists"
            } else {
                "created on up"
            };
            let direct = if params.direct { ", direct" } else { "" };
            format!("{} ({state}{direct})", shown(&params.path))
        }
        LayerSpec::Disk(params) => {
            let direct = if params.direct { "direct" } else { "buffered" };
            format!("{} ({direct})", shown(&params.path))
        }
        LayerSpec::Memory { .. } => "in RAM".to_string(),
        LayerSpec::Null { .. } => "reads zeros, discards writes".to_string(),
        LayerSpec::Raid0(params) => format!("chunk={}", format_exact(params.chunk_bytes)),
        LayerSpec::Compress(params) => format!("algorithm={}", params.algorithm),
        LayerSpec::Crypt(params) => {
            let key = match &params.key {
                KeySource::File(path) => format!("key_file={}", shown(path)),
                KeySource::Env(name) => format!("key_env={name}"),
            };
            format!("cipher={} {key}", params.cipher)
        }
        LayerSpec::Checksum(params) => format!("algorithm={}", params.algorithm),
        LayerSpec::Mirror(_) | LayerSpec::Cache(_) | LayerSpec::Fault(_) => String::new(),
    };
    let live = match spec {
        LayerSpec::Mirror(params) => format!("read_policy={}", params.read_policy.as_str()),
        LayerSpec::Cache(params) => format!(
            "capacity={} mode={}",
            format_exact(params.capacity_bytes),
            params.mode.as_str()
        ),
        LayerSpec::Fault(params) => {
            let knobs = &params.knobs;
            let range = match knobs.range {
                Some((start, end)) => format!("[{}, {}]", format_exact(start), format_exact(end)),
                None => "all".to_string(),
            };
            format!(
                "read_error_rate={} write_error_rate={} delay={} range={range}",
                knobs.read_error_rate,
                knobs.write_error_rate,
                format_duration_us(knobs.delay_us)
            )
        }
        _ => String::new(),
    };
    match (fixed.is_empty(), live.is_empty()) {
        (_, true) => fixed,
        (true, false) => format!("live: {live}"),
        (false, false) => format!("{fixed}  live: {live}"),
    }
}

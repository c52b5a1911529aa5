//! Reload: what an edit of the config file changes on the running device.
//!
//! [`diff`] compares the running [`Plan`] with the edited one key by key. Live
//! keys (DESIGN.md §1: mirror `read_policy`, cache `capacity` and `mode`, the
//! fault knobs, `log.level`) become typed [`LiveChange`]s; any other difference
//! refuses the whole edit, with one reason per key, so that a device never runs
//! half of an edit.
//!
//! Layers are matched by name, not by index: moving a `[layers.x]` section
//! within the file changes indices but not the device. References (`over`,
//! `legs`, `stripes`, `device.top`) are compared by the names they point at.

use std::fmt;

use layers::plan::{
    CacheParams, FaultKnobs, KeySource, LayerId, LayerPlan, LayerSpec, LiveChange, LogLevel,
    MirrorParams, Plan,
};

use super::duration::format_duration_us;
use super::size::format_exact;

/// One live key that changes: `layers.m.read_policy: round-robin -> first`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    /// The key's path in the file: `layers.NAME.KEY` or `log.level`.
    pub key: String,
    pub from: String,
    pub to: String,
}

impl fmt::Display for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.from, self.to)
    }
}

/// A change to apply to one running layer, with the keys it comes from (the
/// fault knobs travel together, so one change may stand for several keys).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerChange {
    pub layer: String,
    pub change: LiveChange,
    pub edits: Vec<Edit>,
}

/// Everything an edit changes, all of it live.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub layers: Vec<LayerChange>,
    /// The new `log.level`, with its edit.
    pub log_level: Option<(LogLevel, Edit)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty() && self.log_level.is_none()
    }

    /// Every edited key, in file order of the layers, `log.level` last.
    pub fn edits(&self) -> Vec<&Edit> {
        let layers = self.layers.iter().flat_map(|change| &change.edits);
        layers
            .chain(self.log_level.iter().map(|(_, edit)| edit))
            .collect()
    }
}

/// Why an edit cannot be applied live: one reason per key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reasons: Vec<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reasons.join("; "))
    }
}

/// The live changes from `old` (running) to `new` (edited), or every reason
/// the edit needs the device taken down and up again.
pub fn diff(old: &Plan, new: &Plan) -> Result<Changes, Refusal> {
    let mut found = Found::default();
    compare_device(old, new, &mut found);
    for old_layer in &old.layers {
        match new.layers.iter().find(|l| l.name == old_layer.name) {
            Some(new_layer) => compare_layer(old, old_layer, new, new_layer, &mut found),
            None => found.refused.push(format!(
                "layers.{}: removed, {NEEDS_RESTART}",
                old_layer.name
            )),
        }
    }
    for new_layer in &new.layers {
        if !old.layers.iter().any(|l| l.name == new_layer.name) {
            found
                .refused
                .push(format!("layers.{}: added, {NEEDS_RESTART}", new_layer.name));
        }
    }
    if old.log_level != new.log_level {
        let edit = Edit {
            key: "log.level".into(),
            from: old.log_level.as_str().into(),
            to: new.log_level.as_str().into(),
        };
        found.changes.log_level = Some((new.log_level, edit));
    }
    if found.refused.is_empty() {
        Ok(found.changes)
    } else {
        Err(Refusal {
            reasons: found.refused,
        })
    }
}

/// `plan` with `change` applied to the layer named `layer`: what the device
/// runs once that change alone went through (used when a later one fails).
pub fn patch(plan: &mut Plan, layer: &str, change: &LiveChange) {
    let Some(target) = plan.layers.iter_mut().find(|l| l.name == layer) else {
        return;
    };
    match (&mut target.spec, change) {
        (LayerSpec::Mirror(p), LiveChange::ReadPolicy(policy)) => p.read_policy = *policy,
        (LayerSpec::Cache(p), LiveChange::CacheCapacity(bytes)) => p.capacity_bytes = *bytes,
        (LayerSpec::Cache(p), LiveChange::CacheMode(mode)) => p.mode = *mode,
        (LayerSpec::Fault(p), LiveChange::Fault(knobs)) => p.knobs = knobs.clone(),
        _ => {}
    }
}

const NEEDS_RESTART: &str = "structural, needs down/up";

#[derive(Default)]
struct Found {
    changes: Changes,
    refused: Vec<String>,
}

impl Found {
    fn structural(&mut self, key: String) {
        self.refused.push(format!("{key}: {NEEDS_RESTART}"));
    }
}

fn compare_device(old: &Plan, new: &Plan, found: &mut Found) {
    let (a, b) = (&old.device, &new.device);
    let keys = [
        ("name", a.name != b.name),
        ("top", old.layers[old.top].name != new.layers[new.top].name),
        ("queues", a.queues != b.queues),
        ("queue_depth", a.queue_depth != b.queue_depth),
        ("block_size", a.block_size != b.block_size),
        ("id", a.id != b.id),
    ];
    for (key, differs) in keys {
        if differs {
            found.structural(format!("device.{key}"));
        }
    }
}

/// The names of the layers `ids` point at, for comparing references across plans.
fn names(plan: &Plan, ids: &[LayerId]) -> Vec<String> {
    ids.iter().map(|&id| plan.layers[id].name.clone()).collect()
}

fn compare_layer(old: &Plan, a: &LayerPlan, new: &Plan, b: &LayerPlan, found: &mut Found) {
    let name = &a.name;
    // Each entry: key, whether it differs. Live keys are handled after.
    let fixed: Vec<(&str, bool)> = match (&a.spec, &b.spec) {
        (LayerSpec::File(x), LayerSpec::File(y)) => vec![
            ("path", x.path != y.path),
            ("size", x.size_bytes != y.size_bytes),
            ("create", x.create != y.create),
            ("direct", x.direct != y.direct),
        ],
        (LayerSpec::Disk(x), LayerSpec::Disk(y)) => {
            vec![("path", x.path != y.path), ("direct", x.direct != y.direct)]
        }
        (LayerSpec::Memory { size_bytes: x }, LayerSpec::Memory { size_bytes: y })
        | (LayerSpec::Null { size_bytes: x }, LayerSpec::Null { size_bytes: y }) => {
            vec![("size", x != y)]
        }
        (LayerSpec::Raid0(x), LayerSpec::Raid0(y)) => vec![
            ("stripes", names(old, &x.stripes) != names(new, &y.stripes)),
            ("chunk", x.chunk_bytes != y.chunk_bytes),
        ],
        (LayerSpec::Mirror(x), LayerSpec::Mirror(y)) => {
            mirror_live(name, x, y, found);
            vec![("legs", names(old, &x.legs) != names(new, &y.legs))]
        }
        (LayerSpec::Cache(x), LayerSpec::Cache(y)) => {
            cache_live(name, x, y, found);
            vec![("over", names(old, &[x.over]) != names(new, &[y.over]))]
        }
        (LayerSpec::Compress(x), LayerSpec::Compress(y)) => vec![
            ("over", names(old, &[x.over]) != names(new, &[y.over])),
            ("algorithm", x.algorithm != y.algorithm),
            ("size", x.size_bytes != y.size_bytes),
        ],
        (LayerSpec::Crypt(x), LayerSpec::Crypt(y)) => {
            let mut keys = vec![
                ("over", names(old, &[x.over]) != names(new, &[y.over])),
                ("cipher", x.cipher != y.cipher),
            ];
            keys.extend(key_source_keys(&x.key, &y.key));
            keys
        }
        (LayerSpec::Checksum(x), LayerSpec::Checksum(y)) => vec![
            ("over", names(old, &[x.over]) != names(new, &[y.over])),
            ("algorithm", x.algorithm != y.algorithm),
        ],
        (LayerSpec::Fault(x), LayerSpec::Fault(y)) => {
            fault_live(name, &x.knobs, &y.knobs, found);
            vec![("over", names(old, &[x.over]) != names(new, &[y.over]))]
        }
        _ => vec![("type", true)],
    };
    for (key, differs) in fixed {
        if differs {
            found.structural(format!("layers.{name}.{key}"));
        }
    }
}

/// `key_file` and `key_env` are two spellings of one setting: a switch from
/// one to the other names both.
fn key_source_keys(a: &KeySource, b: &KeySource) -> Vec<(&'static str, bool)> {
    match (a, b) {
        (KeySource::File(x), KeySource::File(y)) => vec![("key_file", x != y)],
        (KeySource::Env(x), KeySource::Env(y)) => vec![("key_env", x != y)],
        _ => vec![("key_file", true), ("key_env", true)],
    }
}

fn edit(layer: &str, key: &str, from: String, to: String) -> Edit {
    Edit {
        key: format!("layers.{layer}.{key}"),
        from,
        to,
    }
}

fn push_change(found: &mut Found, layer: &str, change: LiveChange, edits: Vec<Edit>) {
    found.changes.layers.push(LayerChange {
        layer: layer.to_string(),
        change,
        edits,
    });
}

fn mirror_live(name: &str, a: &MirrorParams, b: &MirrorParams, found: &mut Found) {
    if a.read_policy != b.read_policy {
        let from = a.read_policy.as_str().to_string();
        let to = b.read_policy.as_str().to_string();
        let edits = vec![edit(name, "read_policy", from, to)];
        push_change(found, name, LiveChange::ReadPolicy(b.read_policy), edits);
    }
}

fn cache_live(name: &str, a: &CacheParams, b: &CacheParams, found: &mut Found) {
    // The mode first: a switch to write-through writes dirty data back, and a
    // smaller capacity then has less to evict.
    if a.mode != b.mode {
        let edits = vec![edit(
            name,
            "mode",
            a.mode.as_str().into(),
            b.mode.as_str().into(),
        )];
        push_change(found, name, LiveChange::CacheMode(b.mode), edits);
    }
    if a.capacity_bytes != b.capacity_bytes {
        let from = format_exact(a.capacity_bytes);
        let edits = vec![edit(name, "capacity", from, format_exact(b.capacity_bytes))];
        push_change(
            found,
            name,
            LiveChange::CacheCapacity(b.capacity_bytes),
            edits,
        );
    }
}

fn fault_live(name: &str, a: &FaultKnobs, b: &FaultKnobs, found: &mut Found) {
    let mut edits = Vec::new();
    // Rates compare as bits: the same text parses to the same f64, and a NaN
    // (refused by validation anyway) must not look like a change forever.
    if a.read_error_rate.to_bits() != b.read_error_rate.to_bits() {
        let (from, to) = (a.read_error_rate.to_string(), b.read_error_rate.to_string());
        edits.push(edit(name, "read_error_rate", from, to));
    }
    if a.write_error_rate.to_bits() != b.write_error_rate.to_bits() {
        let (from, to) = (
            a.write_error_rate.to_string(),
            b.write_error_rate.to_string(),
        );
        edits.push(edit(name, "write_error_rate", from, to));
    }
    if a.delay_us != b.delay_us {
        let (from, to) = (
            format_duration_us(a.delay_us),
            format_duration_us(b.delay_us),
        );
        edits.push(edit(name, "delay", from, to));
    }
    if a.range != b.range {
        edits.push(edit(
            name,
            "range",
            range_text(a.range),
            range_text(b.range),
        ));
    }
    if !edits.is_empty() {
        push_change(found, name, LiveChange::Fault(b.clone()), edits);
    }
}

fn range_text(range: Option<(u64, u64)>) -> String {
    match range {
        Some((start, end)) => format!("[{}, {}]", format_exact(start), format_exact(end)),
        None => "all".into(),
    }
}

#[cfg(test)]
mod tests;

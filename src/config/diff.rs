//! Reload: what an edit of the config file changes on the running device.
//!
//! [`diff`] compares the running [`Plan`] with the edited one key by key, by
//! the values each layer's kind gives ([`layers::kinds::Kind::values`]). Live
//! keys (DESIGN.md §1: mirror `read_policy`, cache `capacity` and `mode`, the
//! fault knobs, `log.level`) become the typed [`LiveChange`]s the kind makes;
//! any other difference
//! refuses the whole edit, with one reason per key, so that a device never runs
//! half of an edit.
//!
//! Layers are matched by name, not by index: moving a `[layers.x]` section
//! within the file changes indices but not the device. References (`over`,
//! `legs`, `stripes`, `device.top`) are compared by the names they point at.

use std::fmt;

use layers::plan::{LayerPlan, LiveChange, LogLevel, Plan};

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
    if let Some(target) = plan.layers.iter_mut().find(|l| l.name == layer) {
        target.spec.apply_live(change);
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

/// Structural keys that differ are refused; live ones become the kind's
/// changes, each with an edit per key of it that differs.
fn compare_layer(old: &Plan, a: &LayerPlan, new: &Plan, b: &LayerPlan, found: &mut Found) {
    let name = &a.name;
    if a.spec.type_name() != b.spec.type_name() {
        found.structural(format!("layers.{name}.type"));
        return;
    }
    let before = a.spec.values(&|id| old.layers[id].name.clone());
    let after = b.spec.values(&|id| new.layers[id].name.clone());
    let value = |values: &[(&'static str, Option<String>)], key: &str| {
        values
            .iter()
            .find(|(known, _)| *known == key)
            .and_then(|(_, value)| value.clone())
    };
    let live_keys = a.spec.live_keys();
    for (key, from) in &before {
        if !live_keys.contains(key) && *from != value(&after, key) {
            found.structural(format!("layers.{name}.{key}"));
        }
    }
    for (change, keys) in a.spec.live_changes(&b.spec) {
        let edits = keys
            .iter()
            .filter_map(|key| {
                let (from, to) = (value(&before, key), value(&after, key));
                (from != to).then(|| Edit {
                    key: format!("layers.{name}.{key}"),
                    from: from.unwrap_or_default(),
                    to: to.unwrap_or_default(),
                })
            })
            .collect();
        found.changes.layers.push(LayerChange {
            layer: name.clone(),
            change,
            edits,
        });
    }
}

#[cfg(test)]
mod tests;

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
//!
//! Growth ([`diff_sized`]): given every layer's size on the running device
//! and in the edited file, a layer whose size rises is a [`Grow`] when its
//! kind grows ([`layers::LayerSpec::grows`]); its own `size` key may rise
//! with it. A size that falls, or a rise through a kind that does not grow,
//! refuses the edit. A layer whose size stays while a layer below grows is
//! a [`Grow`] to its same size when its kind takes that space in (`compress`).

use std::fmt;

use layers::plan::{LayerPlan, LiveChange, LogLevel, Plan};
use layers::units::size::format_human;

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

/// One layer to grow on the running device, with the edit that says so
/// (`layers.a size: 1GiB -> 2GiB`).
#[derive(Clone, Debug, PartialEq)]
pub struct Grow {
    pub layer: String,
    pub from: u64,
    pub to: u64,
    pub edit: Edit,
}

/// Everything an edit changes, all of it live.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub layers: Vec<LayerChange>,
    /// The layers to grow, children before their parents.
    pub grow: Vec<Grow>,
    /// The device's new size, when the top layer grows, with its edit.
    pub device_size: Option<(u64, Edit)>,
    /// The new `log.level`, with its edit.
    pub log_level: Option<(LogLevel, Edit)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty() && self.grow.is_empty() && self.log_level.is_none()
    }

    /// Every edited key, in file order of the layers, then each growth from
    /// the bottom up and the device's, `log.level` last.
    pub fn edits(&self) -> Vec<&Edit> {
        let layers = self.layers.iter().flat_map(|change| &change.edits);
        layers
            .chain(self.grow.iter().map(|grow| &grow.edit))
            .chain(self.device_size.iter().map(|(_, edit)| edit))
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
/// the edit needs the device taken down and up again. Sizes are not
/// compared: a `size` key that changes is structural (see [`diff_sized`]).
pub fn diff(old: &Plan, new: &Plan) -> Result<Changes, Refusal> {
    diff_sized(old, &[], new, &[])
}

/// [`diff`], knowing the size of every layer: `old_sizes` what each layer of
/// `old` exposes on the running device, `new_sizes` what each of `new` will
/// (both indexed like their plan's layers; empty: unknown). Layers whose size
/// rises grow, if their kind grows.
pub fn diff_sized(
    old: &Plan,
    old_sizes: &[u64],
    new: &Plan,
    new_sizes: &[u64],
) -> Result<Changes, Refusal> {
    let mut found = Found::default();
    compare_device(old, new, &mut found);
    let sizes = Sizes {
        old: old_sizes,
        new: new_sizes,
    };
    for (old_id, old_layer) in old.layers.iter().enumerate() {
        match new.layers.iter().position(|l| l.name == old_layer.name) {
            Some(new_id) => {
                let size = sizes.of(old_id, new_id);
                let new_layer = &new.layers[new_id];
                compare_layer(old, old_layer, new, new_layer, size, &mut found);
            }
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
    take_in_growth_below(old, new, &sizes, &mut found);
    if old.log_level != new.log_level {
        let edit = Edit {
            key: "log.level".into(),
            from: old.log_level.as_str().into(),
            to: new.log_level.as_str().into(),
        };
        found.changes.log_level = Some((new.log_level, edit));
    }
    if found.refused.is_empty() {
        order_growth(old, new, &mut found.changes);
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

/// The sizes known for both plans.
struct Sizes<'a> {
    old: &'a [u64],
    new: &'a [u64],
}

impl Sizes<'_> {
    /// (running, edited) size of one layer, if both are known.
    fn of(&self, old_id: usize, new_id: usize) -> Option<(u64, u64)> {
        Some((*self.old.get(old_id)?, *self.new.get(new_id)?))
    }
}

/// A layer that keeps its size while a layer below it grows and whose kind
/// takes such space in ([`layers::LayerSpec::takes_in_growth_below`]: a
/// `compress` with its own `size`) grows to its same size, after its children.
fn take_in_growth_below(old: &Plan, new: &Plan, sizes: &Sizes<'_>, found: &mut Found) {
    for (old_id, layer) in old.layers.iter().enumerate() {
        let Some(new_id) = new.layers.iter().position(|l| l.name == layer.name) else {
            continue;
        };
        let grown = &new.layers[new_id];
        match sizes.of(old_id, new_id) {
            Some((from, to)) if from == to && grown.spec.takes_in_growth_below() => {
                let below = grown.spec.children().into_iter().find_map(|child| {
                    let name = &new.layers[child].name;
                    found
                        .changes
                        .grow
                        .iter()
                        .find(|g| &g.layer == name && g.to > g.from)
                        .cloned()
                });
                if let Some(below) = below {
                    found.changes.grow.push(Grow {
                        layer: layer.name.clone(),
                        from,
                        to,
                        edit: Edit {
                            key: format!("layers.{} space below", layer.name),
                            from: format_human(below.from),
                            to: format_human(below.to),
                        },
                    });
                }
            }
            _ => {}
        }
    }
}

/// Growth found layer by layer, put in order: children before parents (the
/// edited plan's walk from the top, reversed), and the device's own size.
fn order_growth(old: &Plan, new: &Plan, changes: &mut Changes) {
    let mut ordered = Vec::with_capacity(changes.grow.len());
    for id in new.walk().into_iter().rev() {
        let name = &new.layers[id].name;
        if let Some(at) = changes.grow.iter().position(|g| &g.layer == name) {
            ordered.push(changes.grow.swap_remove(at));
        }
    }
    // Layers outside the device's tree (none in a valid plan) go last.
    ordered.append(&mut changes.grow);
    let top = &old.layers[old.top].name;
    changes.device_size = ordered
        .iter()
        .find(|g| &g.layer == top && g.to > g.from)
        .map(|g| {
            let edit = Edit {
                key: "device size".into(),
                from: format_human(g.from),
                to: format_human(g.to),
            };
            (g.to, edit)
        });
    changes.grow = ordered;
}

/// Why a layer of this kind does not grow on a running device.
fn cannot_grow(type_name: &str) -> String {
    let why = match type_name {
        "disk" => "its size is the block device's",
        "nbd" => "its size is the export's, given by the server",
        _ => "the layer cannot take in new space while it runs",
    };
    format!("a {type_name} layer does not grow on a running device ({why}); take the device down and up to use the new size")
}

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
/// changes, each with an edit per key of it that differs. `size`, the layer's
/// (running, edited) size when known: a rise is growth, which may come with
/// the layer's own `size` key rising.
fn compare_layer(
    old: &Plan,
    a: &LayerPlan,
    new: &Plan,
    b: &LayerPlan,
    size: Option<(u64, u64)>,
    found: &mut Found,
) {
    let name = &a.name;
    if a.spec.type_name() != b.spec.type_name() {
        found.structural(format!("layers.{name}.type"));
        return;
    }
    // Whether the `size` key's change is explained by the layer's growth (or
    // already refused as a shrink).
    let mut size_key_explained = false;
    match size {
        Some((from, to)) if to < from => {
            found.refused.push(format!(
                "layers.{name}: shrinking from {} to {} is not supported: a running device \
                 only grows (restore the size)",
                format_human(from),
                format_human(to)
            ));
            size_key_explained = true;
        }
        Some((from, to)) if to > from => {
            if b.spec.grows() {
                found.changes.grow.push(Grow {
                    layer: name.clone(),
                    from,
                    to,
                    edit: Edit {
                        key: format!("layers.{name} size"),
                        from: format_human(from),
                        to: format_human(to),
                    },
                });
                size_key_explained = true;
            } else {
                found.refused.push(format!(
                    "layers.{name}: grows from {} to {}, but {}",
                    format_human(from),
                    format_human(to),
                    cannot_grow(b.spec.type_name())
                ));
                size_key_explained = true;
            }
        }
        // Grown already by a reload that failed further up.
        Some(_) => size_key_explained = b.spec.grows(),
        None => {}
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
        if *key == "size" && size_key_explained {
            continue;
        }
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

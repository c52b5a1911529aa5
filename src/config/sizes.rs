//! The size each layer exposes, measured against the leaves as they are now,
//! each layer by its kind ([`layers::kinds::Kind::size`]). Reads metadata only
//! (stat, and a read-only open of block devices): it never creates, truncates
//! or writes a leaf, so `validate` is safe on live files.

use layers::kinds::Sizing;
use layers::plan::{LayerId, LayerPlan, Plan};

use super::error::{ConfigError, ConfigErrors};

/// A size problem in one layer, pointed at the key to fix.
#[derive(Clone, Debug)]
pub struct SizeProblem {
    pub layer: LayerId,
    pub key: Option<&'static str>,
    pub message: String,
}

/// The exposed size in bytes of every layer of `plan` (indexed like
/// `plan.layers`). Errors name the layer but carry no file position; use
/// [`super::check_file`] to get positions.
pub fn exposed_sizes(plan: &Plan) -> Result<Vec<u64>, ConfigErrors> {
    measure(plan).map_err(|problems| {
        ConfigErrors(
            problems
                .into_iter()
                .map(|problem| ConfigError {
                    file: String::new(),
                    position: None,
                    layer: Some(plan.layers[problem.layer].name.clone()),
                    message: problem.message,
                })
                .collect(),
        )
    })
}

/// Sizes of every layer of a valid plan.
pub(crate) fn measure(plan: &Plan) -> Result<Vec<u64>, Vec<SizeProblem>> {
    let layers: Vec<Option<&LayerPlan>> = plan.layers.iter().map(Some).collect();
    let (sizes, problems) = measure_layers(&layers, u64::from(plan.device.block_size));
    if problems.is_empty() {
        // Every layer of a valid plan is measured once its leaves are fine.
        Ok(sizes.into_iter().map(|size| size.unwrap_or(0)).collect())
    } else {
        Err(problems)
    }
}

/// Measures every layer that could be measured, also in a file with other
/// mistakes: `None` entries are layers that failed validation, and references
/// may dangle or loop. Layers above an unmeasurable one stay `None` silently,
/// since the cause was reported already.
pub(crate) fn measure_layers(
    layers: &[Option<&LayerPlan>],
    block_size: u64,
) -> (Vec<Option<u64>>, Vec<SizeProblem>) {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Open,
        Done,
    }
    let mut state = vec![State::New; layers.len()];
    let mut sizes: Vec<Option<u64>> = vec![None; layers.len()];
    let mut problems = Vec::new();
    // Post-order with an explicit stack: children are measured before their
    // parent, and a cycle (an `Open` child) just leaves the parent unmeasured.
    for root in 0..layers.len() {
        let mut stack = vec![(root, false)];
        while let Some((id, children_done)) = stack.pop() {
            if children_done {
                sizes[id] = layer_size(layers, id, &sizes, block_size, &mut problems);
                state[id] = State::Done;
                continue;
            }
            if state[id] != State::New {
                continue;
            }
            state[id] = State::Open;
            stack.push((id, true));
            let children = layers[id]
                .map(|layer| layer.spec.children())
                .unwrap_or_default();
            for child in children {
                if state.get(child) == Some(&State::New) {
                    stack.push((child, false));
                }
            }
        }
    }
    (sizes, problems)
}

/// One layer's size, by its kind, once its children are measured; `None`
/// (silently) if one of them could not be.
fn layer_size(
    layers: &[Option<&LayerPlan>],
    id: LayerId,
    sizes: &[Option<u64>],
    block_size: u64,
    problems: &mut Vec<SizeProblem>,
) -> Option<u64> {
    let spec = &layers[id]?.spec;
    let ids = spec.children();
    // Leaves (no children) are checked even when the rest of the file is broken.
    let children: Vec<u64> = ids
        .iter()
        .map(|&child| sizes.get(child).copied().flatten())
        .collect::<Option<_>>()?;
    let names: Vec<&str> = ids
        .iter()
        .map(|&child| {
            layers
                .get(child)
                .copied()
                .flatten()
                .map_or("?", |layer| layer.name.as_str())
        })
        .collect();
    let mut found = Vec::new();
    let size = spec.size(&mut Sizing {
        block_size,
        children: &children,
        child_names: &names,
        problems: &mut found,
    });
    problems.extend(found.into_iter().map(|problem| SizeProblem {
        layer: id,
        key: problem.key,
        message: problem.message,
    }));
    size
}

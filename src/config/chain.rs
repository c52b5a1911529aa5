//! How many layers that keep per-block metadata (`checksum`, `crypt`,
//! `compress`: their kinds' `KEEPS_METADATA`) are stacked on one path from the top to a leaf.
//!
//! Each of them turns one write into two below it (its table page, then the
//! data), so `n` of them stacked turn one write at the top into about `2^n`
//! at the leaf, formatting included: opening 20 stacked checksums writes a
//! million blocks, 40 would write a trillion. The limit keeps that cost
//! bounded by something a user can read in the config, and refuses a stack
//! that `up` could never finish opening.

use layers::plan::LayerPlan;

use super::error::Problems;
use super::layer::LayerSpans;

/// The most metadata layers on one path: a write at the top then costs at
/// most 2^8 = 256 writes at the leaf.
pub const MAX_METADATA_CHAIN: usize = 8;

/// Reports the layer that makes a chain one too long, at its `over` key.
pub fn check(layers: &[Option<(LayerPlan, LayerSpans)>], problems: &mut Problems) {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Open,
        Done(usize),
    }
    let mut state = vec![State::New; layers.len()];
    for root in 0..layers.len() {
        // Post-order with an explicit stack; a cycle (reported elsewhere)
        // counts as nothing below.
        let mut stack = vec![(root, false)];
        while let Some((id, children_done)) = stack.pop() {
            let Some((layer, spans)) = &layers[id] else {
                state[id] = State::Done(0);
                continue;
            };
            let children = layer.spec.children();
            if children_done {
                let below = children
                    .iter()
                    .map(|&child| match state.get(child) {
                        Some(State::Done(count)) => *count,
                        _ => 0,
                    })
                    .max()
                    .unwrap_or(0);
                let count = below + usize::from(layer.spec.keeps_metadata());
                if count == MAX_METADATA_CHAIN + 1 && below == MAX_METADATA_CHAIN {
                    problems.at_layer(
                        &spans.of(Some("over")),
                        &layer.name,
                        format!(
                            "this is the {}th layer keeping per-block metadata (checksum, crypt, \
                             compress) stacked on one path; each doubles the writes below it, so \
                             at most {MAX_METADATA_CHAIN} can be stacked",
                            MAX_METADATA_CHAIN + 1
                        ),
                    );
                }
                state[id] = State::Done(count);
                continue;
            }
            if state[id] != State::New {
                continue;
            }
            state[id] = State::Open;
            stack.push((id, true));
            for child in children {
                if state.get(child) == Some(&State::New) {
                    stack.push((child, false));
                }
            }
        }
    }
}

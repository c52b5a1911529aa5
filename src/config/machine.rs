//! What a config asks of this machine, checked before anything is opened:
//! memory, keys, leaves that are distinct files, and O_DIRECT alignment, each
//! layer by its kind ([`layers::kinds::Kind::check_host`]), and the superblock
//! a metadata layer finds on an existing leaf directly below it
//! ([`layers::kinds::Host::superblock_below`]). Each is something `up` would
//! refuse, so `validate` refuses it first, at the line to fix. Reads
//! metadata, keys and those superblocks only; never creates or writes anything.

use layers::kinds::{Host, Leaves};
use layers::plan::LayerPlan;

use super::sizes::SizeProblem;

/// Every problem of this kind among `layers` (`None`: invalid on its own),
/// given each layer's measured size.
pub(crate) fn check(
    layers: &[Option<&LayerPlan>],
    sizes: &[Option<u64>],
    block_size: u64,
) -> Vec<SizeProblem> {
    let mut problems = Vec::new();
    let memory = layers::os::memory_total().ok();
    let mut leaves = Leaves::default();
    for (id, layer) in layers.iter().enumerate() {
        let Some(layer) = layer else { continue };
        let child_sizes: Vec<Option<u64>> = layer
            .spec
            .children()
            .iter()
            .map(|&child| sizes.get(child).copied().flatten())
            .collect();
        let mut found = Vec::new();
        let size = sizes.get(id).copied().flatten();
        let mut host = Host::new(
            &layer.name,
            block_size,
            memory,
            size,
            &child_sizes,
            &mut leaves,
            &mut found,
        );
        layer.spec.check_host(&mut host);
        if layer.spec.superblock() {
            for child in layer.spec.children() {
                let Some(Some(below)) = layers.get(child) else {
                    continue;
                };
                if let Some(path) = below.spec.leaf_path() {
                    host.superblock_below(layer.spec.type_name(), &below.name, path);
                }
            }
        }
        problems.extend(found.into_iter().map(|problem| SizeProblem {
            layer: id,
            key: problem.key,
            message: problem.message,
        }));
    }
    problems
}

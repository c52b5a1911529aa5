//! What a kind measures its exposed size with: its children's sizes, and
//! where to report a size that does not work.

use crate::units::size::format_human;

/// A problem found while sizing a layer or checking it against the machine,
/// pointed at the key to fix (`None`: the layer as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: Option<&'static str>,
    pub message: String,
}

/// One layer being measured (by `validate` and before `up`).
pub struct Sizing<'a> {
    pub block_size: u64,
    /// The size each child exposes, in [`super::Kind::children`] order.
    pub children: &'a [u64],
    /// The children's names, for messages.
    pub child_names: &'a [&'a str],
    pub problems: &'a mut Vec<Problem>,
}

impl Sizing<'_> {
    pub fn report(&mut self, key: Option<&'static str>, message: impl Into<String>) {
        self.problems.push(Problem {
            key,
            message: message.into(),
        });
    }

    /// The size of the one layer below.
    pub fn lower(&self) -> Option<u64> {
        self.children.first().copied()
    }

    /// `exposed`, for a layer that keeps metadata below: a layer below too
    /// small for that metadata and one block would expose nothing, which
    /// `up` refuses.
    pub fn not_empty(&mut self, type_name: &str, lower: u64, exposed: u64) -> Option<u64> {
        if exposed == 0 {
            self.report(
                Some("over"),
                format!(
                    "the layer below ({}, {lower} bytes) is too small to hold this {type_name} \
                     layer's metadata and one block: it would expose 0 bytes",
                    format_human(lower),
                ),
            );
            return None;
        }
        Some(exposed)
    }

    /// The one size all children have (legs, stripes); reported at `key` if
    /// they differ.
    pub fn equal_children(&mut self, key: &'static str, type_name: &str) -> Option<u64> {
        let first = *self.children.first()?;
        if self.children.iter().all(|&size| size == first) {
            return Some(first);
        }
        let each: Vec<String> = self
            .child_names
            .iter()
            .zip(self.children)
            .map(|(name, &size)| format!("\"{name}\" is {} ({size} bytes)", format_human(size)))
            .collect();
        self.report(
            Some(key),
            format!(
                "{key} differ in size: {}; a {type_name} needs {key} of one size",
                each.join(", "),
            ),
        );
        None
    }
}

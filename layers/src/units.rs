//! Sizes and durations as the config file writes them: parsed by the config
//! reader, formatted by the layer kinds in messages, the tree and reload edits.

pub mod duration;
pub mod size;

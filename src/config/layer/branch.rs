//! Layers over several others: `raid0` stripes across them, `mirror` copies
//! to all of them.

use layers::plan::{LayerSpec, MirrorParams, Raid0Params, ReadPolicy};

use super::children;
use super::{Keys, LayerContext};
use crate::config::fields::Reader;
use crate::config::schema::LayerKey;

/// The default raid0 chunk.
const DEFAULT_CHUNK_BYTES: u64 = 64 << 10;

pub(super) fn raid0(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let stripes = children(keys, reader, context, LayerKey::Stripes, "stripe across");
    let chunk_bytes = match keys.get(LayerKey::Chunk) {
        Some(item) => reader.size("chunk", item, context.block_size).and_then(|chunk| {
            if chunk.is_power_of_two() {
                Some(chunk)
            } else {
                reader.report(
                    &item.span,
                    format!(
                        "chunk must be a power of two, like \"64KiB\" or \"1MiB\", not {chunk} bytes"
                    ),
                );
                None
            }
        }),
        None => Some(DEFAULT_CHUNK_BYTES.max(context.block_size)),
    };
    Some(LayerSpec::Raid0(Raid0Params {
        stripes: stripes?,
        chunk_bytes: chunk_bytes?,
    }))
}

pub(super) fn mirror(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let legs = children(keys, reader, context, LayerKey::Legs, "mirror");
    let read_policy = match keys.get(LayerKey::ReadPolicy) {
        Some(item) => reader.choice("read_policy", item, &ReadPolicy::NAMES, ReadPolicy::parse),
        None => Some(ReadPolicy::RoundRobin),
    };
    Some(LayerSpec::Mirror(MirrorParams {
        legs: legs?,
        read_policy: read_policy?,
    }))
}

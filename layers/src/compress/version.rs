//! The superblock's format version: version 2 layers become version 3 when
//! their exposed size is first raised.
//!
//! A version 2 layer is a version 3 one whose map never grew: the same
//! superblock, map header and flat map. So the raise places its map pages
//! and writes the placed map header as for version 3 (both flushed), and
//! only then rewrites the superblock with version 3, the single write that
//! switches the layer, and flushes it; the new size is exposed after that.
//! Until the new superblock is durable the layer opens as version 2 at its
//! old size: a version 2 layer ignores a placed map header.
//!
//! The rewrite changes bytes 24..28 (the version) and 4092..4096 (the crc)
//! of the 4 KiB superblock, which lie in different 512-byte sectors: a
//! crash may land one without the other. Such a superblock fails its crc,
//! but does match it with the other version put back: it is either the old
//! version 2 superblock or the new version 3 one, whole but for that field,
//! and both are a layer that opens (the map header it needs was durable
//! before the rewrite began). Open takes the version the crc matches and
//! writes that superblock whole again.

use crate::exec::IoCtx;
use crate::meta_table::{decode_header, newest_header, HEADER_BYTES, PAGE_BYTES};
use crate::superblock::{self, Superblock, SUPERBLOCK_BYTES};
use crate::Layer;

use super::format::{FIXED_MAP_VERSION, FORMAT_VERSION};

/// Bytes at the start of the device below that say a layer's exposed size:
/// the superblock and the map header.
pub const HEAD_BYTES: u64 = SUPERBLOCK_BYTES + HEADER_BYTES;

/// The exposed size a layer with superblock `sb` records, from `head`, the
/// first [`HEAD_BYTES`] below it, read without opening the layer
/// (`validate`): the superblock's until a raise, then the placed map
/// header's. A version 2 layer ignores a placed header (a raise cut before
/// the switch), as open does; so does a header with both slots damaged,
/// which open refuses.
pub fn recorded_size(sb: &Superblock, head: &[u8]) -> u64 {
    if sb.version == FIXED_MAP_VERSION || head.len() < HEAD_BYTES as usize {
        return sb.size;
    }
    let slot = |i: usize| {
        let at = SUPERBLOCK_BYTES as usize + i * PAGE_BYTES;
        decode_header(&head[at..at + PAGE_BYTES])
    };
    newest_header([slot(0), slot(1)])
        .and_then(|(header, _)| header.placed)
        .map_or(sb.size, |placed| placed.value)
}

/// Bytes of the superblock holding the format version.
const VERSION_AT: std::ops::Range<usize> = 24..28;

/// The superblock of the layer below (`None`: a fresh device), and whether
/// it was torn by a version switch (then the caller writes it again).
pub(super) async fn read(
    ctx: &IoCtx,
    lower: &dyn Layer,
) -> Result<(Option<Superblock>, bool), String> {
    let why = match superblock::read(ctx, lower).await {
        Ok(sb) => return Ok((sb, false)),
        Err(why) => why,
    };
    let mut block = vec![0u8; SUPERBLOCK_BYTES as usize];
    if lower.read_bytes(ctx, 0, &mut block).await.is_err() {
        return Err(why);
    }
    match torn_switch(&block) {
        Some(sb) => {
            tracing::warn!(
                version = sb.version,
                "compress: superblock torn while its format version was switched; \
                 keeping the version its crc matches"
            );
            Ok((Some(sb), true))
        }
        None => Err(why),
    }
}

/// A compress superblock that fails its crc only because a switch from
/// version 2 to 3 landed part of it: the version its crc matches.
fn torn_switch(block: &[u8]) -> Option<Superblock> {
    [FIXED_MAP_VERSION, FORMAT_VERSION]
        .into_iter()
        .find_map(|version| {
            let mut patched = block.to_vec();
            patched[VERSION_AT].copy_from_slice(&version.to_le_bytes());
            match Superblock::decode(&patched) {
                Ok(Some(sb)) if sb.layer_type == "compress" => Some(sb),
                _ => None,
            }
        })
}

/// Make a version 2 layer version 3: rewrite its superblock (read again
/// from below) with the current version and flush.
pub(super) async fn switch(ctx: &IoCtx, lower: &dyn Layer) -> Result<(), String> {
    let (sb, _) = read(ctx, lower).await?;
    let mut sb = sb.ok_or("the superblock is gone")?;
    if sb.version == FORMAT_VERSION {
        return Ok(());
    }
    sb.version = FORMAT_VERSION;
    superblock::write(ctx, lower, &sb)
        .await
        .map_err(|e| format!("cannot write the version {FORMAT_VERSION} superblock: {e}"))
}

/// Write a superblock [`read`] found torn whole again, and flush.
pub(super) async fn repair(ctx: &IoCtx, lower: &dyn Layer, sb: &Superblock) -> Result<(), String> {
    superblock::write(ctx, lower, sb)
        .await
        .map_err(|e| format!("cannot write the torn superblock again: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Superblock {
        Superblock {
            layer_type: "compress".into(),
            version: FIXED_MAP_VERSION,
            block_size: 4096,
            uuid: [3; 16],
            size: 1 << 20,
            params: vec![1; 48],
        }
    }

    #[test]
    fn a_switch_torn_at_either_sector_keeps_a_whole_version() {
        let old = v2().encode();
        let new = Superblock {
            version: FORMAT_VERSION,
            ..v2()
        }
        .encode();
        // The new first sector (version) over the old crc, and the reverse.
        let mut first = old.clone();
        first[..512].copy_from_slice(&new[..512]);
        assert_eq!(torn_switch(&first).map(|s| s.version), Some(2));
        let mut last = old.clone();
        last[4096 - 512..].copy_from_slice(&new[4096 - 512..]);
        assert_eq!(torn_switch(&last).map(|s| s.version), Some(3));
        // Any other damage is not a torn switch.
        let mut other = old.clone();
        other[100] ^= 1;
        assert!(torn_switch(&other).is_none());
        let checksum = Superblock {
            layer_type: "checksum".into(),
            ..v2()
        };
        let mut torn = checksum.encode();
        torn[24] = 3;
        assert!(torn_switch(&torn).is_none());
    }
}

//! Opening `compress`: check or write the superblock, load the map and rebuild
//! the allocator from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::async_lock::AsyncLock;
use crate::exec::IoCtx;
use crate::meta_table::{Entries, Layout, MetaTable, Stamp};
use crate::superblock::{self, Superblock, SUPERBLOCK_BYTES};
use crate::Layer;

use super::alloc::Allocator;
use super::entry::{encode_entry, Extent, Kind, TABLE_ENTRY_BYTES};
use super::format::{self, Geometry, Params, ALGORITHM, GRANULE_BYTES, UNIT_BYTES};
use super::{Compress, Counters, FORMAT_VERSION, UNIT_LOCKS};

pub(super) async fn open(
    ctx: &IoCtx,
    lower: Arc<dyn Layer>,
    block_size: u32,
    algorithm: &str,
    size: Option<u64>,
) -> Result<Compress, String> {
    if algorithm != ALGORITHM {
        return Err(format!(
            "algorithm {algorithm:?} is not available (only {ALGORITHM:?})"
        ));
    }
    let lower_bytes = lower.size();
    let params = Params {
        algorithm: ALGORITHM.into(),
        unit_bytes: UNIT_BYTES,
        granule_bytes: GRANULE_BYTES,
        lower_bytes,
    };
    let geo = Geometry::new(lower_bytes, block_size, size)?;
    let existing = superblock::read(ctx, &*lower).await?;
    // The size of the device below the layer has taken in: the map header
    // records it once the device below grew, else it is the formatted one.
    let mut taken_in = lower_bytes;
    if let Some(sb) = &existing {
        let formatted = check(sb, &params, block_size)?;
        let recorded = MetaTable::recorded(ctx, &*lower, SUPERBLOCK_BYTES)
            .await
            .map_err(|e| format!("cannot read the compress map header: {e}"))?;
        taken_in = recorded.unwrap_or(formatted);
        check_sizes(sb, taken_in, lower_bytes, &geo, size.is_some())?;
    }
    let table = MetaTable::load(
        ctx,
        &*lower,
        SUPERBLOCK_BYTES,
        Layout::Flat,
        Entries::Exactly(geo.units),
        TABLE_ENTRY_BYTES,
    )
    .await
    .map_err(|e| format!("cannot read the compress map: {e}"))?;
    let layer = Compress {
        alloc: Allocator::new(geo.data_granules),
        unit_locks: (0..UNIT_LOCKS).map(|_| AsyncLock::default()).collect(),
        entries_per_page: format::entries_per_page(),
        flush_lock: AsyncLock::default(),
        freed: Mutex::new(Vec::new()),
        to_clean: Mutex::new(Vec::new()),
        lower_bytes: AtomicU64::new(taken_in),
        grow_lock: AsyncLock::default(),
        counters: Counters::default(),
        lower,
        geo,
        table,
    };
    match existing {
        Some(_) => {
            rebuild(ctx, &layer).await?;
            if lower_bytes > taken_in {
                // The device below grew while the layer was down.
                layer.take_in_lower(ctx).await?;
            }
        }
        None => {
            let sb = Superblock {
                layer_type: "compress".into(),
                version: FORMAT_VERSION,
                block_size,
                uuid: superblock::random_bytes(),
                size: layer.geo.size,
                params: params.encode(),
            };
            superblock::write(ctx, &*layer.lower, &sb)
                .await
                .map_err(|e| format!("cannot write the superblock: {e}"))?;
        }
    }
    Ok(layer)
}

/// Refuse a superblock that disagrees with the config (nothing is written);
/// returns the size of the device below it was formatted over.
fn check(sb: &Superblock, want: &Params, block_size: u32) -> Result<u64, String> {
    sb.expect("compress", FORMAT_VERSION, block_size)?;
    let got = Params::decode(&sb.params)?;
    if got.algorithm != want.algorithm {
        return Err(format!(
            "formatted with algorithm {:?}, the config says {:?}",
            got.algorithm, want.algorithm
        ));
    }
    if (got.unit_bytes, got.granule_bytes) != (want.unit_bytes, want.granule_bytes) {
        return Err(format!(
            "formatted with {}-byte units and {}-byte granules; this build uses {} and {}",
            got.unit_bytes, got.granule_bytes, want.unit_bytes, want.granule_bytes
        ));
    }
    Ok(got.lower_bytes)
}

/// Refuse a device below smaller than the one the layer took in, and an
/// exposed size other than the formatted one (nothing is written).
fn check_sizes(
    sb: &Superblock,
    taken_in: u64,
    lower_bytes: u64,
    geo: &Geometry,
    size_given: bool,
) -> Result<(), String> {
    if lower_bytes < taken_in {
        return Err(format!(
            "the device below has {lower_bytes} bytes but this layer uses {taken_in} bytes of \
             it: the layer below shrank; refusing to open (nothing was written)"
        ));
    }
    if sb.size != geo.size && !size_given && lower_bytes > taken_in {
        // The default follows the device below, but a version 2 map has one
        // entry per unit of the formatted size and cannot take more.
        return Err(format!(
            "the device below grew from {taken_in} to {lower_bytes} bytes, and without `size` \
             the exposed size would follow it from {} to {}, which this map cannot hold; \
             set `size = {}` to keep the exposed size and use the new space for data",
            sb.size, geo.size, sb.size
        ));
    }
    if sb.size != geo.size {
        let hint = if size_given {
            ""
        } else {
            " (the default; set `size` to the formatted value)"
        };
        return Err(format!(
            "formatted with size {} but the config asks for {}{hint}",
            sb.size, geo.size
        ));
    }
    Ok(())
}

/// At open: settle the units a crash left unflushed, rebuild the allocator from
/// the map, then flush, which clears every fallback left.
///
/// A unit whose last write no flush covered holds either that version or its
/// `prev`: if only `prev` verifies it becomes `cur` (and the lost version's
/// extent is left free). Then every `cur` extent is marked used. A `prev` other
/// than `empty` is a crash leftover (or a cleared page that never reached the
/// disk); it is stale, and cleared without releasing anything, when it overlaps
/// an extent in use (its granules were reused, which happens only after its
/// unit's `cur` was flushed). The flush at the end makes every `cur` durable,
/// after which no `prev` would be accepted: the others are cleared and
/// released.
async fn rebuild(ctx: &IoCtx, layer: &Compress) -> Result<(), String> {
    settle(ctx, layer)
        .await
        .map_err(|e| format!("cannot settle the units a crash left unflushed: {e}"))?;
    let granule_bytes = layer.geo.granule_bytes;
    let mut prevs = Vec::new();
    for unit in 0..layer.geo.units {
        match layer.entry(unit) {
            Ok((cur, prev)) => {
                let count = cur.granules(granule_bytes);
                if cur.holds_data() && !layer.alloc.mark_used(cur.granule, count) {
                    damaged(layer, unit, "its extent overlaps another unit's");
                }
                layer.account(unit, &cur, true);
                if prev.kind != Kind::Empty {
                    prevs.push((unit, prev));
                }
            }
            Err(why) => damaged(layer, unit, why),
        }
    }
    let (mut stale, mut kept) = (Vec::new(), Vec::new());
    for (unit, prev) in prevs {
        let count = prev.granules(granule_bytes);
        if !prev.holds_data() || layer.alloc.all_free(prev.granule, count) {
            if prev.holds_data() {
                layer.alloc.mark_used(prev.granule, count);
            }
            kept.push(unit);
        } else {
            stale.push(unit);
        }
    }
    if !stale.is_empty() {
        tracing::info!(units = stale.len(), "compress: clearing stale fallbacks");
        // Their granules belong to other extents: nothing is released.
        let _ = layer.clear_prevs(ctx, stale, false).await;
    }
    layer
        .to_clean
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(kept);
    layer
        .flush_all(ctx)
        .await
        .map_err(|e| format!("cannot flush the device below: {e}"))?;
    let free_bytes = layer.alloc.free_granules() * u64::from(granule_bytes);
    tracing::info!(free_bytes, "compress: map loaded");
    Ok(())
}

/// Make `prev` the current version of every unflushed unit whose `cur` does not
/// verify but whose `prev` does.
async fn settle(ctx: &IoCtx, layer: &Compress) -> crate::Result<()> {
    for unit in layer.table.unflushed() {
        let Ok((cur, prev)) = layer.entry(unit) else {
            continue;
        };
        if prev.kind == Kind::Empty || layer.extent_verifies(ctx, unit, &cur).await? {
            continue;
        }
        if layer.extent_verifies(ctx, unit, &prev).await? {
            tracing::warn!(
                unit,
                "compress: newest version of the unit lost in a crash; keeping the previous one"
            );
            layer
                .table
                .update(
                    ctx,
                    &*layer.lower,
                    unit,
                    1,
                    Stamp::Keep,
                    &mut |_, bytes, _| encode_entry(&prev, &Extent::EMPTY, bytes),
                )
                .await?;
        }
    }
    Ok(())
}

fn damaged(layer: &Compress, unit: u64, why: &str) {
    layer
        .counters
        .damaged_entries
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        unit,
        why,
        "compress: damaged map entry; the unit reads as EIO"
    );
}

//! Opening `compress`: check or write the superblock, load the map and rebuild
//! the allocator from it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::async_lock::AsyncLock;
use crate::exec::IoCtx;
use crate::meta_table::{Entries, Header, Layout, MetaTable, Stamp, PAGE_BYTES};
use crate::superblock::{self, Superblock, SUPERBLOCK_BYTES};
use crate::Layer;

use super::alloc::Allocator;
use super::entry::{encode_entry, Extent, Kind, TABLE_ENTRY_BYTES};
use super::format::{
    self, raise_refusal, Geometry, Params, ALGORITHM, FIXED_MAP_VERSION, FORMAT_VERSION,
    GRANULE_BYTES, UNIT_BYTES,
};
use super::{version, Compress, Counters, UNIT_LOCKS};

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
    let (existing, torn) = version::read(ctx, &*lower).await?;
    let Some(sb) = existing else {
        return format_new(ctx, lower, block_size, size, params).await;
    };
    let (version, formatted) = check(&sb, &params, block_size)?;
    let mut header = MetaTable::header_at(ctx, &*lower, SUPERBLOCK_BYTES)
        .await
        .map_err(|e| format!("cannot read the compress map header: {e}"))?;
    // The size of the device below the layer has taken in: the map header
    // records it once the device below grew, else it is the formatted one.
    let taken_in = header.covered.unwrap_or(formatted);
    if lower_bytes < taken_in {
        return Err(format!(
            "the device below has {lower_bytes} bytes but this layer uses {taken_in} bytes of \
             it: the layer below shrank; refusing to open (nothing was written)"
        ));
    }
    // A version 2 map lies in place: a placed header is a raise cut before
    // the superblock said version 3, and its runs are free space.
    let layout = if version == FIXED_MAP_VERSION {
        header.placed = None;
        Layout::Flat
    } else {
        Layout::Placed
    };
    // The flat map is the formatted size's; the header records the exposed
    // size once the map grew.
    let geo = Geometry::new(lower_bytes, block_size, Some(sb.size))?;
    let recorded = header.placed.as_ref().map_or(sb.size, |p| p.value);
    check_placed(&header, &geo, taken_in, recorded, block_size)?;
    let want = super::exposed_size(lower_bytes, block_size, size);
    if want < recorded {
        let default = if size.is_some() { "" } else { " (the default)" };
        // `validate` refuses this too when the layer sits right on a file or
        // disk leaf (`compress::recorded_size`); here for the other stacks.
        return Err(format!(
            "the exposed size is {recorded} bytes, as this layer recorded below when its size \
             was last raised, but the config asks for {want}{default}: shrinking a compress \
             layer is not supported; set `size = {recorded}` or larger (nothing was written)"
        ));
    }
    if want > recorded {
        let runs = header.placed.as_ref().map_or(0, |p| p.runs.len());
        if let Some(why) = raise_refusal(want, block_size, runs) {
            return Err(format!("{why} (nothing was written)"));
        }
    }
    if torn {
        version::repair(ctx, &*lower, &sb).await?;
    }
    let table = MetaTable::load(
        ctx,
        &*lower,
        SUPERBLOCK_BYTES,
        layout,
        Entries::RecordedOr(geo.units),
        TABLE_ENTRY_BYTES,
    )
    .await
    .map_err(|e| format!("cannot read the compress map: {e}"))?;
    let layer = new_layer(lower, geo, table, recorded, version, block_size, taken_in);
    mark_runs(&layer)?;
    rebuild(ctx, &layer).await?;
    if lower_bytes > taken_in {
        // The device below grew while the layer was down.
        layer.take_in_lower(ctx).await?;
    }
    if want > recorded {
        // The config's size rose while the layer was down.
        layer.raise(ctx, want).await?;
    }
    Ok(layer)
}

/// Format a fresh (all-zero) device below with the current version.
async fn format_new(
    ctx: &IoCtx,
    lower: Arc<dyn Layer>,
    block_size: u32,
    size: Option<u64>,
    params: Params,
) -> Result<Compress, String> {
    let lower_bytes = params.lower_bytes;
    let geo = Geometry::new(lower_bytes, block_size, size)?;
    let table = MetaTable::load(
        ctx,
        &*lower,
        SUPERBLOCK_BYTES,
        Layout::Placed,
        Entries::RecordedOr(geo.units),
        TABLE_ENTRY_BYTES,
    )
    .await
    .map_err(|e| format!("cannot read the compress map: {e}"))?;
    let size = geo.size;
    let layer = new_layer(
        lower,
        geo,
        table,
        size,
        FORMAT_VERSION,
        block_size,
        lower_bytes,
    );
    let sb = Superblock {
        layer_type: "compress".into(),
        version: FORMAT_VERSION,
        block_size,
        uuid: superblock::random_bytes(),
        size,
        params: params.encode(),
    };
    superblock::write(ctx, &*layer.lower, &sb)
        .await
        .map_err(|e| format!("cannot write the superblock: {e}"))?;
    Ok(layer)
}

fn new_layer(
    lower: Arc<dyn Layer>,
    geo: Geometry,
    table: MetaTable,
    size: u64,
    version: u32,
    block_size: u32,
    taken_in: u64,
) -> Compress {
    Compress {
        alloc: Allocator::new(geo.data_granules),
        unit_locks: (0..UNIT_LOCKS).map(|_| AsyncLock::default()).collect(),
        entries_per_page: format::entries_per_page(),
        flush_lock: AsyncLock::default(),
        freed: Mutex::new(Vec::new()),
        to_clean: Mutex::new(Vec::new()),
        lower_bytes: AtomicU64::new(taken_in),
        grow_lock: AsyncLock::default(),
        counters: Counters::default(),
        size: AtomicU64::new(size),
        version: AtomicU32::new(version),
        block_size,
        lower,
        geo,
        table,
    }
}

/// Refuse a superblock that disagrees with the config (nothing is written);
/// returns its format version and the size of the device below it was
/// formatted over.
fn check(sb: &Superblock, want: &Params, block_size: u32) -> Result<(u32, u64), String> {
    let version = if sb.version == FIXED_MAP_VERSION {
        FIXED_MAP_VERSION
    } else {
        FORMAT_VERSION
    };
    sb.expect("compress", version, block_size)?;
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
    Ok((version, got.lower_bytes))
}

/// Refuse a placed map header whose runs do not follow the flat pages, or
/// lie outside the data area taken in, or overlap (nothing is written).
fn check_placed(
    header: &Header,
    geo: &Geometry,
    taken_in: u64,
    recorded: u64,
    block_size: u32,
) -> Result<(), String> {
    let damaged = |why: String| {
        format!("the compress map header is damaged: {why}; refusing to open (nothing was written)")
    };
    MetaTable::check_placed(header, geo.units, TABLE_ENTRY_BYTES).map_err(damaged)?;
    let Some(placed) = &header.placed else {
        return Ok(());
    };
    let units = recorded.div_ceil(u64::from(UNIT_BYTES));
    if recorded == 0 || recorded % u64::from(block_size) != 0 || placed.entries != units {
        return Err(damaged(format!(
            "it records an exposed size of {recorded} bytes and {} map entries",
            placed.entries
        )));
    }
    let area_end = geo.granule_offset(geo.granules_over(taken_in));
    let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(placed.runs.len());
    for (i, run) in placed.runs.iter().enumerate() {
        let end = run
            .pages
            .checked_mul(2 * PAGE_BYTES as u64)
            .and_then(|b| b.checked_add(run.at));
        match end {
            Some(end)
                if run.at >= geo.data_start
                    && (run.at - geo.data_start) % u64::from(geo.granule_bytes) == 0
                    && end <= area_end =>
            {
                spans.push((run.at, end, i))
            }
            _ => {
                return Err(damaged(format!(
                    "map page run {i} ({} pages at byte {}) lies outside the data area \
                     (bytes {}..{area_end})",
                    run.pages, run.at, geo.data_start
                )))
            }
        }
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(damaged(format!(
                "map page runs {} and {} overlap",
                pair[0].2, pair[1].2
            )));
        }
    }
    Ok(())
}

/// Mark the granules of the map's placed runs used, before any extent.
fn mark_runs(layer: &Compress) -> Result<(), String> {
    for run in layer.table.placed().iter().flat_map(|p| &p.runs) {
        let (granule, count) = layer.run_granules(run);
        if !layer.alloc.mark_used(granule, count) {
            return Err(format!(
                "the compress map header is damaged: map page run at byte {} overlaps \
                 another; refusing to open",
                run.at
            ));
        }
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
    for unit in 0..layer.units() {
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

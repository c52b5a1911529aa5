//! Growing a running `compress`: taking in the space of a grown device
//! below, and raising the exposed size.
//!
//! The data area runs to the end of the device below, so a larger device
//! below is more granules for the allocator. The size taken in is recorded
//! in the map header (two slots, written and flushed: a torn write leaves
//! the previous record) before any new granule is handed out, so a device
//! below that shrinks again under data is refused at open instead of
//! reading as damaged entries. A crash before the record is durable leaves
//! the old one, and the next open takes the space in again.
//!
//! A raised exposed size needs more map entries. Their pages are placed in
//! the data area: runs of contiguous granules taken from the allocator,
//! written blank and flushed, then recorded in the map header with the new
//! coverage and exposed size (`MetaTable::grow_placed`); a version 2 layer
//! then becomes version 3 (`compress/version.rs`); only then does the layer
//! expose the new size. A crash before the header (and, for version 2, the
//! superblock) is durable leaves the old size, and the granules are free
//! again at the next open (the allocator is rebuilt from the map and the
//! recorded runs), which grows again if the config still asks for the
//! larger size.
//!
//! An old size that ends in a short unit: that unit becomes whole. A version
//! of it stored at its short length would not decode at the whole length,
//! so before the map grows its data is written again as a whole raw unit
//! padded with zeros (which decodes at either length) and flushed, which
//! drops the short version it replaced; its lock is held until the new size
//! is exposed, so no write stores it short again.

use std::sync::atomic::Ordering;

use crate::exec::IoCtx;
use crate::meta_table::{PlacedRun, Stamp, MAX_PLACED_RUNS, PAGE_BYTES};

use super::alloc::GROUP_GRANULES;
use super::entry::{stored_crc, Extent, Kind};
use super::format::{raise_refusal, FIXED_MAP_VERSION, FORMAT_VERSION, UNIT_BYTES};
use super::{version, Compress};

impl Compress {
    /// Why growing to expose `new_size` bytes would be refused, checked
    /// before any layer below grows; `None` when it may go ahead.
    pub fn grow_refusal(&self, new_size: u64) -> Option<String> {
        let size = self.exposed();
        if new_size < size {
            return Some(format!(
                "shrinking a compress layer from {size} to {new_size} bytes is not supported"
            ));
        }
        if new_size > size {
            let runs = self.table.placed().map_or(0, |p| p.runs.len());
            return raise_refusal(new_size, self.block_size, runs);
        }
        None
    }

    /// A live grow: the device below may have grown, and the exposed size
    /// may rise.
    pub(super) async fn grow_to(&self, ctx: &IoCtx, new_size: u64) -> Result<(), String> {
        if let Some(why) = self.grow_refusal(new_size) {
            return Err(format!("{why} (nothing was written)"));
        }
        self.take_in_lower(ctx).await?;
        self.raise(ctx, new_size).await
    }

    /// The granules (first, count) of a placed run of map pages.
    pub(super) fn run_granules(&self, run: &PlacedRun) -> (u64, u64) {
        let granule_bytes = u64::from(self.geo.granule_bytes);
        (
            (run.at - self.geo.data_start) / granule_bytes,
            run.pages * 2 * PAGE_BYTES as u64 / granule_bytes,
        )
    }

    fn release_runs(&self, runs: &[PlacedRun]) {
        for run in runs {
            let (granule, count) = self.run_granules(run);
            self.alloc.release(granule, count);
        }
    }

    /// Raise the exposed size to `new_size` (see the module doc).
    pub(super) async fn raise(&self, ctx: &IoCtx, new_size: u64) -> Result<(), String> {
        let _serial = self.grow_lock.lock().await;
        let size = self.exposed();
        if new_size <= size {
            return Ok(());
        }
        let used_runs = self.table.placed().map_or(0, |p| p.runs.len());
        if let Some(why) = raise_refusal(new_size, self.block_size, used_runs) {
            return Err(format!("{why} (nothing was written)"));
        }
        let units = new_size.div_ceil(u64::from(UNIT_BYTES));
        let runs = self.place_runs(ctx, units, used_runs).await?;
        let unit_bytes = u64::from(UNIT_BYTES);
        let short = (size % unit_bytes != 0).then_some(size / unit_bytes);
        let _short = match short {
            Some(unit) => {
                let guard = self.lock(unit).lock().await;
                if let Err(why) = self.make_whole(ctx, unit).await {
                    self.release_runs(&runs);
                    return Err(format!("{why} (the exposed size is unchanged)"));
                }
                Some(guard)
            }
            None => None,
        };
        // On failure the runs' granules stay used (the header may be on disk)
        // until the next open rebuilds the allocator from the map.
        self.table
            .grow_placed(ctx, &*self.lower, units, &runs, new_size)
            .await?;
        if self.version.load(Ordering::Acquire) == FIXED_MAP_VERSION {
            // The map header is durable: the superblock switches the layer.
            version::switch(ctx, &*self.lower).await?;
            self.version.store(FORMAT_VERSION, Ordering::Release);
            tracing::info!("compress: format version 2 became version 3");
        }
        self.size.store(new_size, Ordering::Release);
        if let Some(unit) = short {
            // Its logical bytes were counted at the short length.
            if matches!(self.entry(unit), Ok((cur, _)) if cur.holds_data()) {
                self.counters
                    .logical_bytes
                    .fetch_add(unit_bytes - size % unit_bytes, Ordering::Relaxed);
            }
        }
        tracing::info!(
            from = size,
            to = new_size,
            map_pages = runs.iter().map(|r| r.pages).sum::<u64>(),
            "compress: raised the exposed size"
        );
        Ok(())
    }

    /// Allocate the runs of granules for the map pages of `units` entries
    /// past the table's (none when a raise whose version switch failed
    /// already grew it). `used_runs`: the map's runs so far.
    async fn place_runs(
        &self,
        ctx: &IoCtx,
        units: u64,
        used_runs: usize,
    ) -> Result<Vec<PlacedRun>, String> {
        let per = self.entries_per_page;
        let have = self.table.entries();
        let mut next = have.div_ceil(per);
        let needed = units.div_ceil(per).saturating_sub(next);
        let mut left = needed;
        let per_pair = 2 * PAGE_BYTES as u64 / u64::from(self.geo.granule_bytes);
        let mut runs = Vec::new();
        let mut flushed = false;
        while left > 0 {
            let mut pages = left.min(GROUP_GRANULES / per_pair);
            let found = loop {
                if let Some(granule) = self.alloc.alloc(pages * per_pair, next) {
                    break Some(granule);
                }
                if pages == 1 {
                    break None;
                }
                pages /= 2;
            };
            let too_many = used_runs + runs.len() >= MAX_PLACED_RUNS;
            match found {
                Some(granule) if !too_many => {
                    runs.push(PlacedRun {
                        first: next,
                        at: self.geo.granule_offset(granule),
                        pages,
                    });
                    next += pages;
                    left -= pages;
                }
                None if !flushed && !too_many => {
                    // A flush returns the space freed since the last one.
                    flushed = true;
                    self.flush_all(ctx)
                        .await
                        .map_err(|e| format!("cannot flush the device below: {e}"))?;
                }
                other => {
                    if let Some(granule) = other {
                        self.alloc.release(granule, pages * per_pair);
                    }
                    self.release_runs(&runs);
                    let why = if too_many {
                        format!("more than the {MAX_PLACED_RUNS} runs of pages the map can record")
                    } else {
                        "more contiguous free space than the data area has".into()
                    };
                    return Err(format!(
                        "raising the exposed size to {} bytes needs {needed} more pages \
                         of map, {why} (nothing was written)",
                        units * u64::from(UNIT_BYTES)
                    ));
                }
            }
        }
        Ok(runs)
    }

    /// Make the short last unit `unit` hold no version stored at its short
    /// length (see the module doc); the caller holds its lock.
    async fn make_whole(&self, ctx: &IoCtx, unit: u64) -> Result<(), String> {
        let damaged = |why: &str| {
            format!(
                "the map entry of the last unit ({unit}), which the raise makes whole, is \
                 damaged: {why}"
            )
        };
        let (cur, _) = self.entry(unit).map_err(damaged)?;
        if !whole(&cur) {
            self.store_whole(ctx, unit).await.map_err(|e| {
                format!("cannot write the last unit ({unit}) again as a whole unit: {e}")
            })?;
        }
        if !matches!(self.entry(unit), Ok((_, prev)) if whole(&prev)) {
            // Makes the whole version durable and drops the short one.
            let written = self
                .flush_cleaning(ctx)
                .await
                .map_err(|e| format!("cannot flush the device below: {e}"))?;
            if !written {
                return Err(format!(
                    "cannot write the map page that drops the short version of the last \
                     unit ({unit})"
                ));
            }
        }
        // A flush drops the short version in memory even when the page
        // write fails (a stale fallback is harmless at the short length),
        // but at the whole length that entry would not decode: so its page
        // is written again as memory has it, and flushed, which a retry
        // after such a failure needs.
        let page = |e| format!("cannot write the map page of the last unit ({unit}): {e}");
        self.table
            .update(ctx, &*self.lower, unit, 1, Stamp::Keep, &mut |_, _, _| {})
            .await
            .map_err(page)?;
        self.flush_all(ctx).await.map_err(page)?;
        match self.entry(unit) {
            Ok((cur, prev)) if whole(&cur) && whole(&prev) => Ok(()),
            Ok(_) => Err(format!(
                "the last unit ({unit}) still holds a version stored at its short length"
            )),
            Err(why) => Err(damaged(why)),
        }
    }

    /// Write the short unit `unit` again as a whole raw unit, its bytes past
    /// the end zeros; the caller holds its lock.
    async fn store_whole(&self, ctx: &IoCtx, unit: u64) -> crate::Result<()> {
        let len = self.unit_len(unit);
        let mut plain = vec![0u8; UNIT_BYTES as usize];
        self.read_unit(ctx, unit, &mut plain[..len]).await?;
        let granules = u64::from(UNIT_BYTES / self.geo.granule_bytes);
        let at = match self.alloc.alloc(granules, unit) {
            Some(at) => at,
            None => {
                // A flush returns the space freed since the last one.
                self.flush_all(ctx).await?;
                self.alloc
                    .alloc(granules, unit)
                    .ok_or(crate::Error::NoSpace)?
            }
        };
        let new = Extent {
            kind: Kind::Raw,
            granule: at,
            stored_bytes: UNIT_BYTES,
            crc: stored_crc(unit, &plain),
        };
        let writer = self.table.begin_write();
        let offset = self.geo.granule_offset(at);
        if let Err(e) = self.lower.write_bytes(ctx, offset, &plain).await {
            // Never referenced by the map: free at once.
            self.alloc.release(at, granules);
            return Err(e);
        }
        self.commit(ctx, unit, new, writer.epoch).await
    }

    /// Extend the data area to the end of the device below, if it grew.
    pub(super) async fn take_in_lower(&self, ctx: &IoCtx) -> Result<(), String> {
        let _serial = self.grow_lock.lock().await;
        let now = self.lower.size();
        let taken = self.lower_bytes.load(Ordering::Acquire);
        if now < taken {
            return Err(format!(
                "the device below has {now} bytes but this layer uses {taken} bytes of it: \
                 the layer below shrank"
            ));
        }
        if now == taken {
            return Ok(());
        }
        self.table
            .record_value(ctx, &*self.lower, now)
            .await
            .map_err(|e| format!("cannot record the new size of the device below: {e}"))?;
        self.lower_bytes.store(now, Ordering::Release);
        let granules = self.geo.granules_over(now);
        let before = self.alloc.granules();
        self.alloc.grow(granules);
        tracing::info!(
            lower_bytes = now,
            new_bytes = (granules - before) * u64::from(self.geo.granule_bytes),
            "compress: took in the grown device below"
        );
        Ok(())
    }
}

/// Whether `extent` decodes as a whole unit too: no data, or raw stored
/// whole.
fn whole(extent: &Extent) -> bool {
    !extent.holds_data() || (extent.kind == Kind::Raw && extent.stored_bytes == UNIT_BYTES)
}

//! Growing a running `compress`: taking in the space of a grown device
//! below, and (format version 3) raising the exposed size.
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
//! coverage and exposed size (`MetaTable::grow_placed`); only then does the
//! layer expose the new size. A crash before the header is durable leaves
//! the old size, and the granules are free again at the next open (the
//! allocator is rebuilt from the map and the recorded runs), which grows
//! again if the config still asks for the larger size. A version 2 layer's
//! map lies in place between the header and the data area and cannot grow.

use std::sync::atomic::Ordering;

use crate::exec::IoCtx;
use crate::meta_table::{PlacedRun, MAX_PLACED_RUNS, PAGE_BYTES};

use super::alloc::GROUP_GRANULES;
use super::format::{raise_refusal, UNIT_BYTES};
use super::Compress;

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
            return raise_refusal(self.version, size, new_size, self.block_size, runs)
                .or_else(|| self.short_unit_refusal(size, true));
        }
        None
    }

    /// Why the short last unit of a layer exposing `size` bytes keeps it
    /// from growing: a version of it that holds data is stored at its short
    /// length, and would not decode as a whole unit. An empty or zero one
    /// reads as zeros at any length. `flushing`: a version kept only for a
    /// crash goes at the next flush, which the raise does first.
    fn short_unit_refusal(&self, size: u64, flushing: bool) -> Option<String> {
        let unit = u64::from(UNIT_BYTES);
        if size % unit == 0 {
            return None;
        }
        let holds = match self.entry(size / unit) {
            Ok((cur, prev)) => cur.holds_data() || (!flushing && prev.holds_data()),
            Err(_) => true,
        };
        holds.then(|| {
            format!(
                "the exposed size {size} ends in a short unit ({} of {unit} bytes) that holds \
                 data, stored at its short length; write zeros to (or discard) the last {} \
                 bytes first, or copy the data to a new layer",
                size % unit,
                size % unit
            )
        })
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

    /// Raise the exposed size to `new_size` (see the module doc).
    pub(super) async fn raise(&self, ctx: &IoCtx, new_size: u64) -> Result<(), String> {
        let _serial = self.grow_lock.lock().await;
        let size = self.exposed();
        if new_size <= size {
            return Ok(());
        }
        let used_runs = self.table.placed().map_or(0, |p| p.runs.len());
        if let Some(why) = raise_refusal(self.version, size, new_size, self.block_size, used_runs) {
            return Err(format!("{why} (nothing was written)"));
        }
        let per = self.entries_per_page;
        let units = new_size.div_ceil(u64::from(UNIT_BYTES));
        let mut next = self.units().div_ceil(per);
        let mut left = units.div_ceil(per) - next;
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
                    for run in &runs {
                        let (granule, count) = self.run_granules(run);
                        self.alloc.release(granule, count);
                    }
                    let why = if too_many {
                        format!("more than the {MAX_PLACED_RUNS} runs of pages the map can record")
                    } else {
                        "more contiguous free space than the data area has".into()
                    };
                    return Err(format!(
                        "raising the exposed size to {new_size} bytes needs {} more pages \
                         of map, {why} (nothing was written)",
                        units.div_ceil(per) - self.units().div_ceil(per)
                    ));
                }
            }
        }
        // The short last unit must stay empty or zero until the new size
        // is exposed: its lock is held to the end.
        let _short = if size % u64::from(UNIT_BYTES) != 0 {
            if self.short_unit_refusal(size, false).is_some() {
                self.flush_all(ctx)
                    .await
                    .map_err(|e| format!("cannot flush the device below: {e}"))?;
            }
            let guard = self.lock(size / u64::from(UNIT_BYTES)).lock().await;
            if let Some(why) = self.short_unit_refusal(size, false) {
                for run in &runs {
                    let (granule, count) = self.run_granules(run);
                    self.alloc.release(granule, count);
                }
                return Err(format!("{why} (the exposed size is unchanged)"));
            }
            Some(guard)
        } else {
            None
        };
        // On failure the runs' granules stay used (the header may be on disk)
        // until the next open rebuilds the allocator from the map.
        self.table
            .grow_placed(ctx, &*self.lower, units, &runs, new_size)
            .await?;
        self.size.store(new_size, Ordering::Release);
        tracing::info!(
            from = size,
            to = new_size,
            map_pages = runs.iter().map(|r| r.pages).sum::<u64>(),
            "compress: raised the exposed size"
        );
        Ok(())
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

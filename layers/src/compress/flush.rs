//! FLUSH for `compress`: make everything durable below, then return the space
//! that versions no longer needed occupy (discarded below, then reused).

use std::sync::Mutex;

use crate::exec::IoCtx;
use crate::join::join_all;
use crate::meta_table::Stamp;
use crate::Result;

use super::entry::{decode_entry, encode_entry, Extent, Kind};
use super::Compress;

/// Discards issued at once when a flush returns space.
const DISCARD_BATCH: usize = 64;

impl Compress {
    /// FLUSH: make everything durable below (the table's flush protocol), then
    /// return freed space.
    pub(super) async fn flush_all(&self, ctx: &IoCtx) -> Result<()> {
        self.flush_cleaning(ctx).await.map(|_| ())
    }

    /// [`Self::flush_all`], and whether every map page it cleaned was
    /// written: one that was not keeps, below, a version its entry dropped.
    pub(super) async fn flush_cleaning(&self, ctx: &IoCtx) -> Result<bool> {
        let _serial = self.flush_lock.lock().await;
        self.table.flush(ctx, &*self.lower).await?;
        let flushed = self.table.flushed();
        // The map updates that dropped these are durable now.
        let freed: Vec<Extent> = {
            let mut list = self.freed.lock().unwrap_or_else(|e| e.into_inner());
            let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
                .into_iter()
                .partition(|&(epoch, _)| epoch <= flushed);
            *list = later;
            ready.into_iter().map(|(_, extent)| extent).collect()
        };
        self.release(ctx, freed).await;
        let to_clean = take_all(&self.to_clean);
        let (cleared, written) = self.clear_prevs(ctx, to_clean, true).await;
        self.release(ctx, cleared).await;
        Ok(written)
    }

    /// Set `prev = empty` for each of `units` (with `only_flushed`: whose `cur` a
    /// flush made durable), one page write per map page; the others wait for the
    /// next flush. Returns the cleared extents (their data is no longer needed),
    /// and whether every page write succeeded.
    pub(super) async fn clear_prevs(
        &self,
        ctx: &IoCtx,
        mut units: Vec<u64>,
        only_flushed: bool,
    ) -> (Vec<Extent>, bool) {
        units.sort_unstable();
        units.dedup();
        let flushed = self.table.flushed();
        let durable = |written: u64| !only_flushed || written <= flushed;
        let (mut ready, mut later): (Vec<u64>, Vec<u64>) = units
            .into_iter()
            .partition(|&u| durable(self.entry_with_epoch(u).1));
        ready.retain(|&u| matches!(self.entry(u), Ok((_, prev)) if prev.kind != Kind::Empty));
        let per_page = self.entries_per_page;
        let mut cleared = Vec::new();
        let mut written = true;
        for page in ready.chunk_by(|a, b| a / per_page == b / per_page) {
            let (first, last) = (page[0], page[page.len() - 1]);
            let res = self
                .table
                .update(
                    ctx,
                    &*self.lower,
                    first,
                    last - first + 1,
                    Stamp::Keep,
                    &mut |unit, bytes, written| {
                        if page.binary_search(&unit).is_err() {
                            return;
                        }
                        // Re-checked under the page's lock: a write may have begun since.
                        if !durable(written) {
                            later.push(unit);
                            return;
                        }
                        if let Ok((cur, prev)) = decode_entry(bytes, &self.limits(unit)) {
                            encode_entry(&cur, &Extent::EMPTY, bytes);
                            if prev.holds_data() {
                                cleared.push(prev);
                            }
                        }
                    },
                )
                .await;
            if let Err(e) = res {
                written = false;
                // The entries are cleared in memory and their `cur` is durable: the
                // old page on disk only keeps a stale fallback.
                tracing::warn!(
                    unit = first,
                    "compress: cannot write a cleaned map page: {e}"
                );
            }
        }
        self.to_clean
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(later);
        (cleared, written)
    }

    /// Discard extents below (merged into runs), then hand them to the allocator.
    pub(super) async fn release(&self, ctx: &IoCtx, mut extents: Vec<Extent>) {
        let granule_bytes = self.geo.granule_bytes;
        extents.sort_unstable_by_key(|e| e.granule);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for e in &extents {
            let count = e.granules(granule_bytes);
            match runs.last_mut() {
                Some((start, len)) if *start + *len == e.granule => *len += count,
                _ => runs.push((e.granule, count)),
            }
        }
        for batch in runs.chunks(DISCARD_BATCH) {
            let futs = batch
                .iter()
                .map(|&(start, count)| {
                    self.lower.discard(
                        ctx,
                        self.geo.granule_offset(start),
                        count * u64::from(granule_bytes),
                    )
                })
                .collect();
            for (&(start, count), res) in batch.iter().zip(join_all(futs).await) {
                if let Err(e) = res {
                    tracing::warn!(granule = start, "compress: discard below failed: {e}");
                }
                if !self.alloc.release(start, count) {
                    tracing::error!(
                        granule = start,
                        count,
                        "compress: freed space that was free; the map has overlapping extents"
                    );
                }
            }
        }
    }
}

fn take_all<T>(list: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *list.lock().unwrap_or_else(|e| e.into_inner()))
}

//! The region locks: writes hold the regions they touch shared; repairs,
//! resync and scrub steps hold theirs exclusively, so they never copy a range
//! while a write to it is in flight.

use super::{Mirror, REGION_BYTES, REGION_LOCKS};
use crate::async_lock::{ExclusiveGuard, SharedGuard};

impl Mirror {
    /// Region lock indices covering `[offset, offset+len)`, ascending, distinct.
    pub(super) fn region_locks(offset: u64, len: u64) -> Vec<usize> {
        let first = offset / REGION_BYTES;
        let last = (offset + len.max(1) - 1) / REGION_BYTES;
        if last - first + 1 >= REGION_LOCKS as u64 {
            return (0..REGION_LOCKS).collect();
        }
        let mut locks: Vec<usize> = (first..=last)
            .map(|r| (r % REGION_LOCKS as u64) as usize)
            .collect();
        locks.sort_unstable();
        locks.dedup();
        locks
    }

    pub(super) async fn share_regions(&self, offset: u64, len: u64) -> Vec<SharedGuard<'_>> {
        let mut guards = Vec::new();
        for i in Self::region_locks(offset, len) {
            guards.push(self.regions[i].share().await);
        }
        guards
    }

    /// The range's regions exclusively, if nobody holds them now.
    pub(super) fn try_exclusive_regions(
        &self,
        offset: u64,
        len: u64,
    ) -> Option<Vec<ExclusiveGuard<'_>>> {
        let mut guards = Vec::new();
        for i in Self::region_locks(offset, len) {
            guards.push(self.regions[i].try_exclusive()?);
        }
        Some(guards)
    }
}

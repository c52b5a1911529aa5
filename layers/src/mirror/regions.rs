//! The region locks: writes hold the regions they touch shared; repairs,
//! resync and scrub steps hold theirs exclusively, so they never copy a range
//! while a write to it is in flight.
//!
//! Each lock has a turnstile that a writer passes on its way in, and that a
//! resync or scrub step holds while it waits for the writers inside to drain:
//! new writers queue behind it, so a step makes progress under any write load.
//! Locks are always taken in ascending order, turnstile then lock, so waiting
//! steps and writers never wait for each other in a cycle. Self-healing
//! repairs only ever *try* the locks and leave busy regions for a later read.

use super::{Mirror, REGION_BYTES, REGION_LOCKS};
use crate::async_lock::{ExclusiveGuard, SharedGuard};
use crate::exec::IoCtx;
use crate::uring::Op;

/// Pause between checks whether the writers in a range have drained.
const DRAIN_POLL_NANOS: u64 = 100_000;

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
            let turnstile = self.turnstiles[i].lock().await;
            guards.push(self.regions[i].share().await);
            drop(turnstile);
        }
        guards
    }

    /// Take `[offset, offset+len)` exclusively, waiting (as a task, not the
    /// thread) for the writes in it to finish while holding new ones back.
    pub(super) async fn exclusive_regions(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: u64,
    ) -> Vec<ExclusiveGuard<'_>> {
        let mut guards = Vec::new();
        for i in Self::region_locks(offset, len) {
            let turnstile = self.turnstiles[i].lock().await;
            let guard = loop {
                if let Some(guard) = self.regions[i].try_exclusive() {
                    break guard;
                }
                // The sharers' guards do not wake anyone on release: poll.
                let _ = ctx
                    .uring()
                    .submit(Op::Sleep {
                        nanos: DRAIN_POLL_NANOS,
                    })
                    .await;
            };
            guards.push(guard);
            drop(turnstile);
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

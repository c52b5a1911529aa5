//! The read path: hits are copied out; misses are claimed (a placeholder that
//! concurrent readers of the block wait on, on any queue), loaded from below in
//! contiguous runs straight into parts of the request's buffer, then installed.
//!
//! A reader never waits while holding claims: blocks it cannot serve or claim now
//! (loaded by another task, or in a range being zeroed) are retried once its own
//! loads are installed and released.

use std::sync::atomic::Ordering::Relaxed;

use super::entry::Lookup;
use super::{carve, runs_of, Cache, Claims};
use crate::exec::IoCtx;
use crate::join::try_join_all;
use crate::{IoBufMut, LocalBoxFuture, Result};

/// Longest run of misses loaded with one lower read.
const MAX_RUN_BLOCKS: usize = 256;

impl Cache {
    pub(super) async fn read_blocks(
        &self,
        ctx: &IoCtx,
        offset: u64,
        buf: &mut IoBufMut,
    ) -> Result<()> {
        let bs = self.block as usize;
        let first = offset / self.block;
        let mut pending: Vec<usize> = (0..buf.len() / bs).collect();
        loop {
            let mut claims = Claims::new(self);
            let mut later = Vec::new();
            for &i in &pending {
                let block = first + i as u64;
                let out = &mut buf[i * bs..(i + 1) * bs];
                match self.lock_block(block).read(block, out) {
                    Lookup::Hit => {
                        self.hits.fetch_add(1, Relaxed);
                    }
                    Lookup::Claimed(version) => {
                        self.misses.fetch_add(1, Relaxed);
                        claims.held.push((block, version));
                    }
                    Lookup::Wait => later.push(i),
                }
            }
            let mine: Vec<usize> = claims
                .held
                .iter()
                .map(|&(block, _)| (block - first) as usize)
                .collect();
            if !mine.is_empty() {
                let runs = runs_of(mine.iter().copied(), MAX_RUN_BLOCKS);
                let mut parts = carve(buf, &runs, bs);
                let futs: Vec<LocalBoxFuture<'_, Result<()>>> = runs
                    .iter()
                    .zip(parts.iter_mut().skip(1).step_by(2))
                    .map(|(&(i, _), run)| {
                        self.lower.read(ctx, (first + i as u64) * self.block, run)
                    })
                    .collect();
                let loaded = try_join_all(futs).await;
                buf.join(parts);
                // On error, dropping `claims` removes the placeholders and wakes
                // their waiters, who load the blocks themselves.
                loaded?;
                for (block, version) in claims.take() {
                    let i = (block - first) as usize;
                    let capacity = self.shard_capacity(self.shard_of(block));
                    self.lock_block(block).finish(
                        block,
                        version,
                        Some(&buf[i * bs..(i + 1) * bs]),
                        capacity,
                    );
                }
            }
            let Some(&next) = later.first() else {
                return Ok(());
            };
            // Sleep until the first blocked block can move; the others are
            // looked at again on the way.
            let block = first + next as u64;
            self.wait_busy(block).await;
            self.wait_zeroing(block).await;
            pending = later;
        }
    }
}

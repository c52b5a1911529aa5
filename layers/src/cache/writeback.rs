//! Writing dirty blocks back (FLUSH, dirty victims of eviction), eviction, and
//! applying changed knobs (`shrink`, `settle`).
//!
//! A write-back claims each dirty block, writes contiguous runs with one lower
//! write each, and marks a block clean only if it succeeded and the block was not
//! written again meanwhile. Blocks held by another task are waited for with no
//! claim held, so FLUSH returns only once every block dirty at its start has
//! reached the layer below (by this task or another).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::entry::DirtyClaim;
use super::{Cache, Claims, SHARDS};
use crate::exec::IoCtx;
use crate::join::join_all;
use crate::plan::CacheMode;
use crate::{IoBuf, LocalBoxFuture, Result};

/// Longest run written back with one lower write.
const MAX_RUN_BLOCKS: usize = 64;
/// Most blocks one write-back claims at a time.
const BATCH_BLOCKS: usize = 1024;
/// Most dirty victims one eviction round writes back.
const MAX_DIRTY_VICTIMS: usize = 32;
/// Eviction rounds a request spends on a shard before it answers; the next
/// requests carry on.
const REQUEST_ROUNDS: usize = 4;

impl Cache {
    /// Every dirty block, ascending.
    fn dirty_blocks(&self) -> Vec<u64> {
        let mut blocks: Vec<u64> = (0..SHARDS)
            .flat_map(|s| self.lock(s).dirty_blocks())
            .collect();
        blocks.sort_unstable();
        blocks
    }

    pub(super) async fn write_back_all(&self, ctx: &IoCtx) -> Result<()> {
        self.write_back_blocks(ctx, self.dirty_blocks()).await
    }

    /// Write back those of `targets` (ascending) that are dirty. Each is tried
    /// once; failed ones stay dirty and the first error is returned.
    async fn write_back_blocks(&self, ctx: &IoCtx, mut targets: Vec<u64>) -> Result<()> {
        let mut result = Ok(());
        while !targets.is_empty() {
            let mut blocked = Vec::new();
            let mut wrote = false;
            for batch in targets.chunks(BATCH_BLOCKS) {
                let mut claims = Claims::new(self);
                let mut data: Vec<Arc<[u8]>> = Vec::new();
                for &block in batch {
                    match self.lock_block(block).claim_dirty(block) {
                        DirtyClaim::Claimed { version, data: d } => {
                            claims.held.push((block, version));
                            data.push(d);
                        }
                        DirtyClaim::Clean => {}
                        DirtyClaim::Blocked => blocked.push(block),
                    }
                }
                if claims.held.is_empty() {
                    continue;
                }
                wrote = true;
                result = result.and(self.write_runs(ctx, &mut claims, &data).await);
            }
            if !wrote {
                if let Some(&block) = blocked.first() {
                    self.wait_busy(block).await;
                    self.wait_zeroing(block).await;
                }
            }
            targets = blocked;
        }
        result
    }

    /// Write the claimed blocks (ascending, with their data) in runs, then end
    /// the claims.
    async fn write_runs(
        &self,
        ctx: &IoCtx,
        claims: &mut Claims<'_>,
        data: &[Arc<[u8]>],
    ) -> Result<()> {
        // (first index into claims, count)
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, &(block, _)) in claims.held.iter().enumerate() {
            match runs.last_mut() {
                Some((f, n)) if claims.held[*f].0 + *n as u64 == block && *n < MAX_RUN_BLOCKS => {
                    *n += 1
                }
                _ => runs.push((i, 1)),
            }
        }
        let bufs: Vec<IoBuf> = runs
            .iter()
            .map(|&(f, n)| {
                let bs = self.block as usize;
                let mut buf = ctx.buf(n * bs);
                for (out, d) in buf.chunks_exact_mut(bs).zip(&data[f..f + n]) {
                    out.copy_from_slice(d);
                }
                buf.freeze()
            })
            .collect();
        let futs: Vec<LocalBoxFuture<'_, Result<()>>> = runs
            .iter()
            .zip(&bufs)
            .map(|(&(f, _), buf)| self.lower.write(ctx, claims.held[f].0 * self.block, buf))
            .collect();
        let results = join_all(futs).await;
        let held = claims.take();
        let mut result = Ok(());
        for (&(f, n), res) in runs.iter().zip(results) {
            if let Err(e) = res {
                self.write_back_errors.fetch_add(1, Relaxed);
                tracing::warn!(
                    offset = held[f].0 * self.block,
                    blocks = n,
                    "cache write-back failed: {e}; the blocks stay dirty"
                );
                result = result.and(Err(e));
            }
            for &(block, version) in &held[f..f + n] {
                self.lock_block(block)
                    .finish_write_back(block, version, res.is_ok());
            }
        }
        result
    }

    /// Evict shard `shard` down to its share of the capacity, writing dirty
    /// victims back first, in at most `rounds` rounds.
    async fn evict_shard(&self, ctx: &IoCtx, shard: usize, rounds: usize) -> Result<()> {
        for _ in 0..rounds {
            let capacity = self.shard_capacity(shard);
            let (evicted, dirty) = self.lock(shard).take_victims(capacity, MAX_DIRTY_VICTIMS);
            if dirty.is_empty() {
                if evicted == 0 || !self.lock(shard).over(capacity) {
                    return Ok(());
                }
                continue;
            }
            let res = self.write_back_blocks(ctx, dirty.clone()).await;
            let mut guard = self.lock(shard);
            for &block in &dirty {
                guard.finish_eviction(block, capacity);
            }
            drop(guard);
            res?;
        }
        Ok(())
    }

    /// After a request: bring the shards it touched, and one more in turn, back
    /// within capacity. A failed write-back leaves its block dirty for FLUSH to
    /// report; the request itself succeeded.
    pub(super) async fn keep_within_capacity(&self, ctx: &IoCtx, first: u64, blocks: u64) {
        let mut shards = 0u32;
        if blocks >= SHARDS as u64 {
            shards = u32::MAX;
        } else {
            for block in first..first + blocks {
                shards |= 1 << self.shard_of(block);
            }
        }
        shards |= 1 << (self.sweep.fetch_add(1, Relaxed) % SHARDS);
        for s in (0..SHARDS).filter(|&s| shards & (1 << s) != 0) {
            if !self.lock(s).over(self.shard_capacity(s)) {
                continue;
            }
            if let Err(e) = self.evict_shard(ctx, s, REQUEST_ROUNDS).await {
                tracing::warn!(shard = s, "cache eviction stopped: {e}");
            }
        }
    }

    /// Evict every shard down to the current capacity now (after
    /// [`Cache::set_capacity`] shrank it), writing dirty victims back first.
    pub async fn shrink(&self, ctx: &IoCtx) -> Result<()> {
        let mut result = Ok(());
        for s in 0..SHARDS {
            result = result.and(self.evict_shard(ctx, s, usize::MAX).await);
        }
        result
    }

    /// Apply the current knobs: [`Cache::shrink`], and in write-through mode
    /// write back every dirty block and flush the layer below, so that no dirty
    /// data is left once this returns `Ok`.
    pub async fn settle(&self, ctx: &IoCtx) -> Result<()> {
        let shrunk = self.shrink(ctx).await;
        if self.mode() == CacheMode::WriteBack {
            return shrunk;
        }
        // A write that read the old mode may store dirty data after a pass
        // looked at its shard; new writes go through, so this ends.
        loop {
            let dirty = self.dirty_blocks();
            if dirty.is_empty() {
                break;
            }
            self.write_back_blocks(ctx, dirty).await?;
        }
        let flushed = self.lower.flush(ctx).await;
        shrunk.and(flushed)
    }
}

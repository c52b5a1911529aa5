//! The write paths: write-through, write-back, and discard / write_zeroes.
//!
//! Whoever writes a block below holds its claim (`entry.rs`) from before the
//! lower write until the cache holds the result, so a load or a write-back of the
//! same block can never land below out of order with it. Claims are taken in
//! ascending block order by every task that waits while holding some, so two
//! such tasks never wait on each other in a cycle; a write-through that meets a
//! range being zeroed gives its claims back and waits with none held.

use std::future::poll_fn;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use super::entry::{Claim, Store};
use super::{runs_of, Cache, Claims, SHARDS};
use crate::exec::IoCtx;
use crate::join::try_join_all;
use crate::plan::CacheMode;
use crate::{IoBuf, LocalBoxFuture, Result};

impl Cache {
    /// Claim `block`, waiting while another task holds it. `Zeroing` when a
    /// zeroing range covers it and `respect_zeroing`.
    async fn claim(&self, block: u64, respect_zeroing: bool) -> Claim {
        poll_fn(|cx| {
            let mut shard = self.lock_block(block);
            match shard.claim(block, respect_zeroing) {
                Claim::Busy => {
                    shard.wait_busy(block, cx.waker());
                    Poll::Pending
                }
                other => Poll::Ready(other),
            }
        })
        .await
    }

    /// Write below, then put the new contents in the cache.
    pub(super) async fn write_through(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        let bs = self.block as usize;
        let first = offset / self.block;
        'claiming: loop {
            let mut claims = Claims::new(self);
            for i in 0..buf.len() / bs {
                let block = first + i as u64;
                match self.claim(block, true).await {
                    Claim::Claimed(version) => claims.held.push((block, version)),
                    _ => {
                        drop(claims);
                        self.wait_zeroing(block).await;
                        continue 'claiming;
                    }
                }
            }
            let res = self.lower.write(ctx, offset, buf).await;
            for (block, version) in claims.take() {
                let i = (block - first) as usize;
                let bytes = res.is_ok().then(|| &buf[i * bs..(i + 1) * bs]);
                let capacity = self.shard_capacity(self.shard_of(block));
                self.lock_block(block)
                    .finish(block, version, bytes, capacity);
            }
            return res;
        }
    }

    /// Store in the cache as dirty; blocks over their shard's dirty limit are
    /// written through instead.
    pub(super) async fn write_back(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        let bs = self.block as usize;
        let first = offset / self.block;
        let mut through = Vec::new();
        for i in 0..buf.len() / bs {
            let block = first + i as u64;
            let bytes = &buf[i * bs..(i + 1) * bs];
            let shard = self.shard_of(block);
            let (limit, capacity) = (self.dirty_limit(shard), self.shard_capacity(shard));
            loop {
                let stored = {
                    let mut guard = self.lock(shard);
                    // The mode is read under the shard lock: `settle`, which looks
                    // at every shard after the mode changed, either sees this
                    // dirty block or this write sees write-through.
                    match self.mode() {
                        CacheMode::WriteThrough => Store::Full,
                        CacheMode::WriteBack => guard.store_dirty(block, bytes, limit, capacity),
                    }
                };
                match stored {
                    Store::Stored => break,
                    Store::Full => {
                        through.push(i);
                        break;
                    }
                    Store::Zeroing => self.wait_zeroing(block).await,
                }
            }
        }
        let futs: Vec<LocalBoxFuture<'_, Result<()>>> = runs_of(through, usize::MAX)
            .into_iter()
            .map(|(i, n)| {
                let run = buf.slice(i * bs..(i + n) * bs);
                Box::pin(async move {
                    self.write_through(ctx, offset + (i * bs) as u64, &run)
                        .await
                }) as LocalBoxFuture<'_, Result<()>>
            })
            .collect();
        try_join_all(futs).await
    }

    /// Discard or zero `[offset, offset+len)`: no block of the range may be
    /// loaded, written or written back while the lower operation runs, and the
    /// cached ones are dropped once it succeeded (on failure dirty ones stay, so
    /// an acknowledged write is never lost to a failed discard).
    pub(super) async fn zero_range(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: u64,
        discard: bool,
    ) -> Result<()> {
        let first = offset / self.block;
        let end = first + len / self.block;
        let id = self.next_zeroing.fetch_add(1, Relaxed);
        for s in 0..SHARDS {
            self.lock(s).add_zeroing(first, end, id);
        }
        let _range = ZeroingRange { cache: self, id };
        // No task creates an entry in the range from now on, so these are all.
        let mut blocks: Vec<u64> = (0..SHARDS)
            .flat_map(|s| self.lock(s).blocks_in(first, end))
            .collect();
        blocks.sort_unstable();
        let mut claims = Claims::new(self);
        for block in blocks {
            if let Claim::Claimed(version) = self.claim(block, false).await {
                claims.held.push((block, version));
            }
        }
        let res = if discard {
            self.lower.discard(ctx, offset, len).await
        } else {
            self.lower.write_zeroes(ctx, offset, len).await
        };
        if res.is_ok() {
            for (block, _) in claims.take() {
                self.lock_block(block).remove(block);
            }
        }
        res
    }
}

/// A registered zeroing range; dropping it lets the range's waiters go on.
struct ZeroingRange<'c> {
    cache: &'c Cache,
    id: u64,
}

impl Drop for ZeroingRange<'_> {
    fn drop(&mut self) {
        for s in 0..SHARDS {
            self.cache.lock(s).remove_zeroing(self.id);
        }
    }
}

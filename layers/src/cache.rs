//! `cache`: a RAM block cache over one layer, shared by every queue.
//!
//! - The unit is the device block: requests are aligned to it, so a write never
//!   needs a read-modify-write of a larger unit, nor per-sector valid bits, and a
//!   block has one state. The price is per-block bookkeeping, about 200 bytes a
//!   block besides its data (5% at 4 KiB blocks, 40% at 512 bytes); `capacity`
//!   counts data bytes.
//! - Blocks are spread over [`SHARDS`] shards by a hash of their number, each
//!   behind its own mutex with its own S3-FIFO policy (`cache/policy.rs`) and an
//!   equal share of the capacity, so a sequential scan does not flush the hot
//!   set and queues rarely meet on a lock.
//!   No lock is held across an await: a task that must wait (a block being loaded
//!   by another queue, a block with a write-back in flight, a range being zeroed)
//!   queues its waker on the block and sleeps as a task (`cache/entry.rs`).
//! - Reads copy hits out and load misses from below in contiguous runs; a miss
//!   leaves a placeholder, so concurrent misses on one block fetch it once.
//! - `mode = "write-through"`: a write goes below, then the cache takes the new
//!   contents. `mode = "write-back"`: a write is acknowledged once it is in the
//!   cache (dirty). Dirty blocks are at most half of each shard's capacity
//!   (rounded up); past that, writes go through synchronously. Dirty blocks
//!   chosen for eviction are written back first.
//! - FLUSH writes back every dirty block, then flushes below: it makes every
//!   acknowledged write durable. A failed write-back keeps its block dirty (a
//!   later flush tries again) and fails the FLUSH; nothing is dropped silently.
//! - Discard and write_zeroes drop the cached blocks of their range (dirty ones
//!   included, once the lower operation succeeded) and pass down.
//! - Live keys: `capacity` ([`Cache::set_capacity`]; shrinking is applied by the
//!   next requests on each shard, or at once by [`Cache::shrink`]) and `mode`
//!   ([`Cache::set_mode`], then [`Cache::settle`] to write back what the old mode
//!   left dirty). `Layer::apply_live` and [`Cache::apply_knobs`] set a knob and
//!   settle.
//! - Memory follows capacity: a block's buffer is allocated when it is first
//!   cached, handed on to the block that replaces it in a full shard, and freed
//!   when eviction shrinks the shard. Between a request caching blocks and the
//!   end of that request (which evicts, writing dirty victims back first), a
//!   shard may hold that request's blocks beyond its share.
//! - No on-disk metadata: the cache is lost at exit, after a final FLUSH.

mod entry;
pub mod policy;
mod read;
mod shard;
mod write;
mod writeback;

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use crate::exec::IoCtx;
use crate::plan::{CacheMode, LiveChange};
use crate::report::{CacheReport, LayerReport};
use crate::{AsyncLayer, IoBuf, IoBufMut, Layer, Result};
use shard::Shard;

/// Number of shards (a power of two).
pub const SHARDS: usize = 16;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

/// The live knobs of a `cache` layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheKnobs {
    pub capacity_bytes: u64,
    pub mode: CacheMode,
}

pub struct Cache {
    lower: Arc<dyn Layer>,
    block: u64,
    shards: Box<[Mutex<Shard>]>,
    capacity_bytes: AtomicU64,
    mode: AtomicU8,
    hits: AtomicU64,
    misses: AtomicU64,
    write_back_errors: AtomicU64,
    next_zeroing: AtomicU64,
    /// Next shard a request checks besides its own, so a shrink reaches every
    /// shard promptly under any load.
    sweep: AtomicUsize,
}

fn mode_code(mode: CacheMode) -> u8 {
    match mode {
        CacheMode::WriteThrough => 0,
        CacheMode::WriteBack => 1,
    }
}

impl Cache {
    pub fn new(lower: Arc<dyn Layer>, block_size: u32, knobs: CacheKnobs) -> Cache {
        Cache {
            lower,
            block: u64::from(block_size),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            capacity_bytes: AtomicU64::new(knobs.capacity_bytes),
            mode: AtomicU8::new(mode_code(knobs.mode)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            write_back_errors: AtomicU64::new(0),
            next_zeroing: AtomicU64::new(0),
            sweep: AtomicUsize::new(0),
        }
    }

    /// Live knob: growing takes effect at once; after shrinking, each shard is
    /// brought down by its next request, or all at once by [`Cache::shrink`].
    pub fn set_capacity(&self, bytes: u64) {
        self.capacity_bytes.store(bytes, Relaxed);
    }

    pub fn capacity(&self) -> u64 {
        self.capacity_bytes.load(Relaxed)
    }

    /// Live knob: writes issued from now on follow `mode`. Dirty blocks left by
    /// write-back are written by the next FLUSH, or at once by [`Cache::settle`].
    pub fn set_mode(&self, mode: CacheMode) {
        // SeqCst pairs with the shard mutex in `Shard::store_dirty` callers: a
        // write that stores dirty data after `settle` looked at its shard sees
        // the new mode (see `write.rs`).
        self.mode
            .store(mode_code(mode), std::sync::atomic::Ordering::SeqCst);
    }

    pub fn mode(&self) -> CacheMode {
        match self.mode.load(std::sync::atomic::Ordering::SeqCst) {
            0 => CacheMode::WriteThrough,
            _ => CacheMode::WriteBack,
        }
    }

    /// Set both knobs and apply them before returning: evict down to the new
    /// capacity and, in write-through mode, write back and flush every dirty
    /// block. For the daemon's reload, run with its own `IoCtx` (e.g. through
    /// `Executor::block_on`) while the queues keep serving I/O.
    pub async fn apply_knobs(&self, ctx: &IoCtx, knobs: CacheKnobs) -> Result<()> {
        self.set_capacity(knobs.capacity_bytes);
        self.set_mode(knobs.mode);
        self.settle(ctx).await
    }

    /// (hits, misses), in blocks, since the layer was built.
    pub fn hit_rate_counters(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Blocks evicted since the layer was built.
    pub fn evictions(&self) -> u64 {
        (0..SHARDS).map(|s| self.lock(s).evictions()).sum()
    }

    /// (cached bytes, dirty bytes) now.
    pub fn usage_bytes(&self) -> (u64, u64) {
        let (mut cached, mut dirty) = (0, 0);
        for s in 0..SHARDS {
            let (c, d) = self.lock(s).usage();
            cached += c as u64;
            dirty += d as u64;
        }
        (cached * self.block, dirty * self.block)
    }

    fn shard_of(&self, block: u64) -> usize {
        (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_BITS)) as usize
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_block(&self, block: u64) -> MutexGuard<'_, Shard> {
        self.lock(self.shard_of(block))
    }

    /// Blocks shard `shard` may hold: its share of the capacity.
    fn shard_capacity(&self, shard: usize) -> usize {
        let blocks = self.capacity() / self.block;
        let share = blocks / SHARDS as u64 + u64::from((shard as u64) < blocks % SHARDS as u64);
        usize::try_from(share).unwrap_or(usize::MAX)
    }

    /// Dirty blocks shard `shard` may hold: half its capacity, rounded up, so a
    /// shard always has clean blocks to evict without waiting for I/O.
    fn dirty_limit(&self, shard: usize) -> usize {
        self.shard_capacity(shard).div_ceil(2)
    }

    /// Sleep until `block` has no claim on it.
    async fn wait_busy(&self, block: u64) {
        poll_fn(
            |cx| match self.lock_block(block).wait_busy(block, cx.waker()) {
                true => Poll::Pending,
                false => Poll::Ready(()),
            },
        )
        .await
    }

    /// Sleep until no zeroing range covers `block`.
    async fn wait_zeroing(&self, block: u64) {
        poll_fn(
            |cx| match self.lock_block(block).wait_zeroing(block, cx.waker()) {
                true => Poll::Pending,
                false => Poll::Ready(()),
            },
        )
        .await
    }
}

/// Claims on blocks' lower I/O held by one task (block, version at claim).
/// Whatever is still held when it is dropped (after an error, or when the
/// request's future is dropped mid-way) is abandoned: dirty data stays, anything
/// else is dropped, since what is below is unknown.
struct Claims<'c> {
    cache: &'c Cache,
    held: Vec<(u64, u64)>,
}

impl<'c> Claims<'c> {
    fn new(cache: &'c Cache) -> Claims<'c> {
        Claims {
            cache,
            held: Vec::new(),
        }
    }

    /// Hand the claims to the caller, who ends each one.
    fn take(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.held)
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        for (block, _) in self.held.drain(..) {
            self.cache.lock_block(block).abandon(block);
        }
    }
}

/// Split `buf` (blocks of `block` bytes) at the runs `(first index, count)`,
/// which are sorted and disjoint: the parts alternate gap, run, gap, ..., gap,
/// so the runs are the odd ones. `buf.join` puts the parts back.
fn carve(buf: &mut IoBufMut, runs: &[(usize, usize)], block: usize) -> Vec<IoBufMut> {
    let mut lens = Vec::with_capacity(runs.len() * 2 + 1);
    let mut at = 0;
    for &(first, count) in runs {
        lens.push((first - at) * block);
        lens.push(count * block);
        at = first + count;
    }
    lens.push(buf.len() - at * block);
    buf.split_parts(lens)
}

/// Group sorted indexes into runs of consecutive ones, at most `max` long.
fn runs_of(sorted: impl IntoIterator<Item = usize>, max: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in sorted {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == i && *count < max => *count += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

impl AsyncLayer for Cache {
    fn size(&self) -> u64 {
        self.lower.size()
    }

    /// The size is the layer below's, which has grown already.
    async fn grow(&self, _: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        crate::grown_below(&*self.lower, new_size)
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        let blocks = buf.len() as u64 / self.block;
        {
            let res = self.read_blocks(ctx, offset, buf).await;
            self.keep_within_capacity(ctx, offset / self.block, blocks)
                .await;
            res
        }
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        let res = match self.mode() {
            CacheMode::WriteThrough => self.write_through(ctx, offset, buf).await,
            CacheMode::WriteBack => self.write_back(ctx, offset, buf).await,
        };
        let blocks = buf.len() as u64 / self.block;
        self.keep_within_capacity(ctx, offset / self.block, blocks)
            .await;
        res
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        let written = self.write_back_all(ctx).await;
        let flushed = self.lower.flush(ctx).await;
        written.and(flushed)
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero_range(ctx, offset, len, true).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero_range(ctx, offset, len, false).await
    }

    fn discard_frees_space(&self) -> bool {
        self.lower.discard_frees_space()
    }

    /// The knob takes effect at once; the call returns once it is applied (the
    /// cache shrunk, or in write-through mode every dirty block written back and
    /// flushed), with the queues serving I/O meanwhile.
    async fn apply_live(
        &self,
        ctx: &IoCtx,
        change: &LiveChange,
    ) -> std::result::Result<(), String> {
        match change {
            LiveChange::CacheCapacity(bytes) => self.set_capacity(*bytes),
            LiveChange::CacheMode(mode) => self.set_mode(*mode),
            other => return Err(format!("{other:?} does not apply to a cache")),
        }
        let settled = self.settle(ctx).await;
        if matches!(change, LiveChange::CacheCapacity(_)) {
            // Evicted block buffers go back to the allocator; hand its free
            // pages back to the system so that RSS follows the capacity.
            crate::os::release_free_memory();
        }
        settled.map_err(|e| {
            format!(
                "capacity {} bytes and mode {} are in effect, but writing back dirty \
                 blocks failed ({e}); they stay dirty and the next FLUSH retries them",
                self.capacity(),
                self.mode().as_str()
            )
        })
    }

    fn report(&self) -> LayerReport {
        let (cached_bytes, dirty_bytes) = self.usage_bytes();
        let (hits, misses) = self.hit_rate_counters();
        LayerReport::Cache(CacheReport {
            mode: self.mode(),
            capacity_bytes: self.capacity(),
            cached_bytes,
            dirty_bytes,
            hits,
            misses,
            evictions: self.evictions(),
            write_back_errors: self.write_back_errors.load(Relaxed),
        })
    }
}

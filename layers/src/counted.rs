//! A layer of the compiled tree with its counters: every request a layer gets
//! is range-checked, counted and (one in [`timing_sample`]) timed here, on its
//! way down, whatever the layer is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::exec::IoCtx;
use crate::plan::{LayerId, LiveChange};
use crate::report::LayerReport;
use crate::stats::{LayerStats, Op};
use crate::{AsyncLayer, Error, IoBuf, IoBufMut, Layer, Result};

/// A compiled layer with its counters; the tree is built of these, so every
/// layer's traffic is counted on its way down.
pub struct Node {
    pub name: String,
    pub type_name: &'static str,
    pub children: Vec<LayerId>,
    /// The layer as its kind opened it, without the counters.
    pub(crate) layer: Arc<dyn Layer>,
    pub(crate) stats: LayerStats,
}

/// A layer wrapped with its counters. Generic over the layer, so that the
/// layer's own futures are part of the wrapper's, boxed once with it.
pub(crate) struct Counted<L> {
    pub(crate) node: Node,
    /// The layer's size for the range check; raised by [`AsyncLayer::grow`]
    /// once the layer has taken the new space.
    size: AtomicU64,
    block_size: u32,
    /// The same layer as `node.layer`, of its own type.
    pub(crate) inner: Arc<L>,
}

impl<L: AsyncLayer> Counted<L> {
    pub(crate) fn new(node: Node, block_size: u32, inner: Arc<L>) -> Counted<L> {
        assert!(block_size.is_power_of_two(), "block size {block_size}");
        Counted {
            size: AtomicU64::new(AsyncLayer::size(&*inner)),
            node,
            block_size,
            inner,
        }
    }

    /// Every request is checked at every layer: a range past the end or off the
    /// block grid is a bug above, and must not reach (or extend) a leaf.
    fn in_range(&self, offset: u64, len: u64) -> bool {
        // The block size is a power of two (512 or 4096): a mask, not a
        // division, per request and layer.
        let mask = u64::from(self.block_size) - 1;
        (offset | len) & mask == 0
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= self.size.load(Ordering::Acquire))
    }

    fn refuse(&self, ctx: &IoCtx, op: Op, offset: u64, len: u64) -> Result<()> {
        self.node.stats.error(ctx.counter_shard(), op);
        tracing::error!(layer = %self.node.name, offset, len, "request out of range");
        Err(Error::OutOfRange)
    }

    /// What every data request meets before the layer: refused if out of
    /// range, else counted; returns the time to time it by, if it is sampled.
    #[inline]
    pub(crate) fn begin(
        &self,
        ctx: &IoCtx,
        op: Op,
        offset: u64,
        len: u64,
    ) -> Result<Option<Instant>> {
        if !self.in_range(offset, len) {
            return self.refuse(ctx, op, offset, len).map(|()| None);
        }
        let nth = self.node.stats.count(ctx.counter_shard(), op, len);
        Ok(Self::start(op, nth))
    }

    /// When `op` is sampled at `nth`, its `nth` request at this layer (see
    /// [`timing_sample`]): the time of the call, to time it to its completion.
    fn start(op: Op, nth: u64) -> Option<Instant> {
        (nth % timing_sample(op) == 0).then(Instant::now)
    }

    /// A request of kind `op` that began at `start` (if timed) finished with
    /// `res`: its latency goes to the layer's histogram, its error is counted.
    /// The layer's future is awaited in the caller's own body, not handed to
    /// a helper: moving it would copy the whole of it once more per request.
    pub(crate) fn finish(&self, ctx: &IoCtx, op: Op, start: Option<Instant>, res: &Result<()>) {
        if let Some(start) = start {
            self.node.stats.took(op, start.elapsed());
        }
        if res.is_err() {
            self.node.stats.error(ctx.counter_shard(), op);
        }
    }
}

/// Latency is recorded for one request in this many of each kind per layer
/// and queue: a clock read costs about 40 ns here, so two per layer per
/// request were a few percent of a page-cache read, and percentiles need only
/// a sample.
/// Every flush is timed: flushes are few and slow, and each one matters.
fn timing_sample(op: Op) -> u64 {
    match op {
        Op::Flush => 1,
        Op::Read | Op::Write | Op::Discard | Op::WriteZeroes => 32,
    }
}

impl<L: AsyncLayer> AsyncLayer for Counted<L> {
    fn size(&self) -> u64 {
        AsyncLayer::size(&*self.inner)
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        let start = self.begin(ctx, Op::Read, offset, buf.len() as u64)?;
        let res = AsyncLayer::read(&*self.inner, ctx, offset, buf).await;
        self.finish(ctx, Op::Read, start, &res);
        res
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        let start = self.begin(ctx, Op::Write, offset, buf.len() as u64)?;
        let res = AsyncLayer::write(&*self.inner, ctx, offset, buf).await;
        self.finish(ctx, Op::Write, start, &res);
        res
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        let nth = self.node.stats.flush(ctx.counter_shard());
        let start = Self::start(Op::Flush, nth);
        let res = AsyncLayer::flush(&*self.inner, ctx).await;
        self.finish(ctx, Op::Flush, start, &res);
        res
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        let start = self.begin(ctx, Op::Discard, offset, len)?;
        let res = AsyncLayer::discard(&*self.inner, ctx, offset, len).await;
        self.finish(ctx, Op::Discard, start, &res);
        res
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        let start = self.begin(ctx, Op::WriteZeroes, offset, len)?;
        let res = AsyncLayer::write_zeroes(&*self.inner, ctx, offset, len).await;
        self.finish(ctx, Op::WriteZeroes, start, &res);
        res
    }

    fn discard_frees_space(&self) -> bool {
        AsyncLayer::discard_frees_space(&*self.inner)
    }

    fn allocation(&self, offset: u64, len: u64) -> Option<Vec<(u64, bool)>> {
        // Unlike data requests, a query may end off the block grid; it must
        // still lie inside the layer.
        if offset.checked_add(len)? > self.size.load(Ordering::Acquire) {
            return None;
        }
        AsyncLayer::allocation(&*self.inner, offset, len)
    }

    async fn apply_live(
        &self,
        ctx: &IoCtx,
        change: &LiveChange,
    ) -> std::result::Result<(), String> {
        AsyncLayer::apply_live(&*self.inner, ctx, change).await
    }

    async fn grow(&self, ctx: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        AsyncLayer::grow(&*self.inner, ctx, new_size).await?;
        self.size
            .store(AsyncLayer::size(&*self.inner), Ordering::Release);
        Ok(())
    }

    fn report(&self) -> LayerReport {
        AsyncLayer::report(&*self.inner)
    }
}

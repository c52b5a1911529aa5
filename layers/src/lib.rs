//! The block layers of ublk-stack.
//!
//! A [`Plan`] (validated config) is compiled by [`compile()`] into a [`Stack`]: a tree of
//! [`Layer`]s shared by every queue (`Send + Sync`, shared state behind fine-grained
//! locks). Each queue thread owns an [`IoCtx`] — its io_uring and buffer pool — and
//! passes it down with every request, so the same tree runs on every queue without a
//! global lock. Requests are async: a leaf submits SQEs to the queue's ring and
//! awaits their CQEs, and the per-queue [`Executor`] keeps one task per in-flight
//! request.
//!
//! Offsets and lengths are bytes (`u64`) everywhere; callers guarantee that every
//! request is aligned to the stack's block size and lies inside the device.
#![deny(unsafe_code)]

pub mod async_lock;
#[allow(unsafe_code)]
pub mod buf;
pub mod cache;
pub mod checksum;
pub mod compile;
pub mod compress;
pub mod counted;
pub mod counter_shard;
pub mod crypt;
pub mod direct;
pub mod disk;
pub mod error;
pub mod escape;
pub mod exec;
pub mod fault;
pub mod file;
#[allow(unsafe_code)]
mod file_map;
#[doc(hidden)]
pub mod fuzzing;
pub mod join;
pub mod key_slots;
pub mod kinds;
pub mod memory;
pub mod meta_table;
pub mod mirror;
pub mod nbd;
pub mod null;
pub mod os;
pub mod params;
pub mod plan;
pub mod raid0;
pub mod report;
pub mod rng;
pub mod stats;
pub mod superblock;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod units;
#[allow(unsafe_code)]
pub mod uring;
pub mod zero_prefix;

use std::future::Future;
use std::pin::Pin;

pub use buf::{IoBuf, IoBufMut, ZeroPrefix};
pub use compile::{compile, compile_with, CompileError, Stack};
pub use error::{Error, Result};
pub use exec::{Executor, IoCtx};
pub use os::release_free_memory;
pub use plan::{LayerSpec, Plan};
pub use report::LayerReport;
pub use stats::{HistogramSnapshot, LayerStats, Op, OpCounts, StatsSnapshot, EXPORT_BOUNDS_NS};

/// The `grow` of a layer that exposes the layer below as it is (`fault`,
/// `cache`): the layer below, grown first, must have the new size.
pub fn grown_below(lower: &dyn Layer, new_size: u64) -> std::result::Result<(), String> {
    match lower.size() {
        size if size == new_size => Ok(()),
        size => Err(format!(
            "the layer below is {size} bytes, not the {new_size} to grow to"
        )),
    }
}

/// A boxed future that stays on the queue thread that created it.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One block transformation or leaf, as its implementation writes it: plain
/// `async fn`s. The stack holds layers as `Arc<dyn Layer>`; the one blanket
/// adapter below turns every `AsyncLayer` into a [`Layer`] with boxed futures.
///
/// Data operations have no default bodies: every layer states what it does with
/// each, so an operation added later cannot slip through `crypt` or `checksum`
/// untransformed. Ranges are block-aligned and inside `size()`; a layer splitting a
/// request keeps that true for the layers below.
// The futures stay on the queue thread that polls them, so no `Send` bound is
// wanted on them.
#[allow(async_fn_in_trait)]
pub trait AsyncLayer: Send + Sync {
    /// Exposed size in bytes.
    fn size(&self) -> u64;

    /// Fill `buf` with the bytes at `offset`. The buffer is the request's own
    /// (see [`buf`]): a leaf reads straight into it, and a layer that splits the
    /// request hands each part below as its own buffer. If this future is
    /// dropped before it finishes, the buffer's bytes belong to the kernel until
    /// its operations complete: the caller drops the handle unread (the memory
    /// itself is held until then, so no later request can get it).
    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()>;

    /// Store `buf` at `offset`. Once this returns `Ok`, a later read sees the data;
    /// it is durable only after a successful `flush`. A leaf writes straight from
    /// the buffer; a layer passes it (or slices of it) below, or its own buffer
    /// holding transformed data.
    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()>;

    /// Make every write acknowledged so far durable, on every leaf below.
    async fn flush(&self, ctx: &IoCtx) -> Result<()>;

    /// The range's contents are no longer needed; it reads back as zeros.
    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()>;

    /// The range reads back as zeros.
    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()>;

    /// Whether a discard frees space below (advertised to the kernel only when true
    /// for the whole stack). Discard is always accepted and always zeroes.
    fn discard_frees_space(&self) -> bool {
        false
    }

    /// Apply a live change (a reload of the config). Layers without live keys
    /// refuse; a layer may do I/O here (e.g. write back dirty data first).
    async fn apply_live(
        &self,
        _ctx: &IoCtx,
        change: &plan::LiveChange,
    ) -> std::result::Result<(), String> {
        Err(format!("{change:?} is not live for this layer"))
    }

    /// Grow to expose `new_size` bytes (larger than `size()`): the layers below
    /// have already grown, or this layer's own size key rose. The layer takes
    /// the new space into its metadata, durably, before it returns; from then
    /// on `size()` is `new_size`. Requests may run meanwhile. Layers that
    /// cannot grow refuse, and nothing changes.
    async fn grow(&self, _ctx: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        Err(format!(
            "cannot grow from {} to {new_size} bytes on a running device",
            self.size()
        ))
    }

    /// Which parts of `offset..offset + len` are holes: runs of (length,
    /// is_hole) in order from `offset`, where a hole is unallocated below and
    /// reads as zeros. The runs may stop short of `len` (the caller asks again
    /// from there) and need not follow the block grid. `None`: this layer cannot
    /// tell, so everything counts as data, which is always a safe answer.
    /// Synchronous: meant for cheap metadata lookups (NBD BLOCK_STATUS).
    fn allocation(&self, _offset: u64, _len: u64) -> Option<Vec<(u64, bool)>> {
        None
    }

    /// What `status` shows of this layer beyond its counters: health,
    /// progress, mismatches (see [`report`]).
    fn report(&self) -> LayerReport;
}

/// The object-safe form of [`AsyncLayer`], which is where the contract of each
/// method is written: the same methods, returning boxed futures. Implemented
/// only by the blanket adapter; layers implement [`AsyncLayer`].
pub trait Layer: Send + Sync {
    /// See [`AsyncLayer::size`].
    fn size(&self) -> u64;
    /// See [`AsyncLayer::read`].
    fn read<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        buf: &'a mut IoBufMut,
    ) -> LocalBoxFuture<'a, Result<()>>;
    /// See [`AsyncLayer::write`].
    fn write<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        buf: &'a IoBuf,
    ) -> LocalBoxFuture<'a, Result<()>>;
    /// See [`AsyncLayer::flush`].
    fn flush<'a>(&'a self, ctx: &'a IoCtx) -> LocalBoxFuture<'a, Result<()>>;
    /// See [`AsyncLayer::discard`].
    fn discard<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        len: u64,
    ) -> LocalBoxFuture<'a, Result<()>>;
    /// See [`AsyncLayer::write_zeroes`].
    fn write_zeroes<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        len: u64,
    ) -> LocalBoxFuture<'a, Result<()>>;
    /// See [`AsyncLayer::discard_frees_space`].
    fn discard_frees_space(&self) -> bool;
    /// See [`AsyncLayer::apply_live`].
    fn apply_live<'a>(
        &'a self,
        ctx: &'a IoCtx,
        change: &'a plan::LiveChange,
    ) -> LocalBoxFuture<'a, std::result::Result<(), String>>;
    /// See [`AsyncLayer::grow`].
    fn grow<'a>(
        &'a self,
        ctx: &'a IoCtx,
        new_size: u64,
    ) -> LocalBoxFuture<'a, std::result::Result<(), String>>;
    /// See [`AsyncLayer::allocation`].
    fn allocation(&self, offset: u64, len: u64) -> Option<Vec<(u64, bool)>>;
    /// See [`AsyncLayer::report`].
    fn report(&self) -> LayerReport;

    /// Read into a plain slice, through a buffer of the queue's pool and one
    /// copy: for metadata (superblocks, tables) and tests, not request data.
    fn read_bytes<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        out: &'a mut [u8],
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut buf = ctx.buf(out.len());
            self.read(ctx, offset, &mut buf).await?;
            out.copy_from_slice(&buf);
            Ok(())
        })
    }

    /// Write a plain slice, through a buffer of the queue's pool and one copy:
    /// for metadata and tests, not request data.
    fn write_bytes<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        data: &'a [u8],
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut buf = ctx.buf(data.len());
            buf.copy_from_slice(data);
            self.write(ctx, offset, &buf.freeze()).await
        })
    }
}

/// The one adapter: every [`AsyncLayer`] is a [`Layer`].
impl<T: AsyncLayer> Layer for T {
    fn size(&self) -> u64 {
        AsyncLayer::size(self)
    }

    fn read<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        buf: &'a mut IoBufMut,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(AsyncLayer::read(self, ctx, offset, buf))
    }

    fn write<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        buf: &'a IoBuf,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(AsyncLayer::write(self, ctx, offset, buf))
    }

    fn flush<'a>(&'a self, ctx: &'a IoCtx) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(AsyncLayer::flush(self, ctx))
    }

    fn discard<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        len: u64,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(AsyncLayer::discard(self, ctx, offset, len))
    }

    fn write_zeroes<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        len: u64,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(AsyncLayer::write_zeroes(self, ctx, offset, len))
    }

    fn discard_frees_space(&self) -> bool {
        AsyncLayer::discard_frees_space(self)
    }

    fn apply_live<'a>(
        &'a self,
        ctx: &'a IoCtx,
        change: &'a plan::LiveChange,
    ) -> LocalBoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(AsyncLayer::apply_live(self, ctx, change))
    }

    fn grow<'a>(
        &'a self,
        ctx: &'a IoCtx,
        new_size: u64,
    ) -> LocalBoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(AsyncLayer::grow(self, ctx, new_size))
    }

    fn allocation(&self, offset: u64, len: u64) -> Option<Vec<(u64, bool)>> {
        AsyncLayer::allocation(self, offset, len)
    }

    fn report(&self) -> LayerReport {
        AsyncLayer::report(self)
    }
}

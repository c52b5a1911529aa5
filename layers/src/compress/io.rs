//! The data path of `compress`: reading and writing units.

use std::ops::Range;
use std::sync::atomic::Ordering;

use crate::exec::IoCtx;
use crate::join::try_join_all;
use crate::meta_table::Stamp;
use crate::{Error, IoBufMut, LocalBoxFuture, Result};

use super::codec::{self, Old, PIECE_BYTES};
use super::entry::{decode_entry, encode_entry, Extent, Kind, ENTRY_BYTES};
use super::Compress;

/// Flushes (which return freed space) tried before a write reports `NoSpace`.
const NO_SPACE_RETRIES: usize = 4;

impl Compress {
    pub(super) fn entry(&self, unit: u64) -> std::result::Result<(Extent, Extent), &'static str> {
        self.entry_with_epoch(unit).0
    }

    /// The entry and the flush epoch its `cur` was written in.
    #[allow(clippy::type_complexity)]
    pub(super) fn entry_with_epoch(
        &self,
        unit: u64,
    ) -> (std::result::Result<(Extent, Extent), &'static str>, u64) {
        let mut bytes = [0u8; ENTRY_BYTES];
        let epoch = self.table.get(unit, &mut bytes);
        (decode_entry(&bytes, &self.limits(unit)), epoch)
    }

    /// Whether `extent` holds a version of `unit` that verifies.
    pub(super) async fn extent_verifies(
        &self,
        ctx: &IoCtx,
        unit: u64,
        extent: &Extent,
    ) -> Result<bool> {
        let len = self.unit_len(unit);
        let mut plain = ctx.take_buf(len);
        let res = self
            .load_extent(ctx, unit, extent, plain.as_mut_slice(), 0..len)
            .await;
        ctx.put_buf(plain);
        Ok(res?.is_some())
    }

    fn corrupt(&self, unit: u64, why: &str) -> Error {
        let offset = unit * self.unit_bytes();
        self.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
        tracing::error!(unit, offset, why, "compress: unit does not verify");
        Error::Corrupt { offset }
    }

    /// Fill `out` from `extent`: `Ok(None)` when the stored bytes do not verify;
    /// else how the unit is stored (packed bytes kept for a write to reuse).
    async fn load_extent(
        &self,
        ctx: &IoCtx,
        unit: u64,
        extent: &Extent,
        out: &mut [u8],
        want: Range<usize>,
    ) -> Result<Option<Stored>> {
        if !extent.holds_data() {
            out.fill(0);
            return Ok(Some(Stored::Zeros));
        }
        let granule_bytes = u64::from(self.geo.granule_bytes);
        let mut stored =
            ctx.buf((extent.granules(self.geo.granule_bytes) * granule_bytes) as usize);
        let offset = self.geo.granule_offset(extent.granule);
        let verified = match self.lower.read(ctx, offset, &mut stored).await {
            Ok(()) => codec::decode_range(unit, extent, &stored, out, want),
            // A checksumming layer below caught what our crc would: a torn or
            // lost write, so the fallback may still hold the unit.
            Err(Error::Corrupt { .. }) => false,
            Err(e) => return Err(e),
        };
        Ok(match (verified, extent.kind) {
            (true, Kind::Lz4) => Some(Stored::Packed(stored, extent.stored_bytes as usize)),
            (true, _) => Some(Stored::Raw),
            (false, _) => None,
        })
    }

    /// The whole unit into `out`; the caller holds the unit's lock.
    /// Only the bytes in `want` are sure to be filled.
    async fn load_unit(
        &self,
        ctx: &IoCtx,
        unit: u64,
        out: &mut [u8],
        want: Range<usize>,
    ) -> Result<Stored> {
        let (entry, epoch) = self.entry_with_epoch(unit);
        let (cur, prev) = entry.map_err(|why| self.corrupt(unit, why))?;
        if let Some(stored) = self.load_extent(ctx, unit, &cur, out, want.clone()).await? {
            return Ok(stored);
        }
        // Only a crash leaves a `cur` whose data never reached the disk, and only
        // until a flush covers its write: after that, an older version is an error.
        if prev.kind != Kind::Empty && self.table.prev_allowed(epoch) {
            if let Some(stored) = self.load_extent(ctx, unit, &prev, out, want).await? {
                tracing::warn!(
                    unit,
                    "compress: newest version of the unit lost; read the previous one"
                );
                return Ok(stored);
            }
        }
        Err(self.corrupt(unit, "stored bytes fail their crc"))
    }

    /// The whole unit into `out` (`unit_len` bytes); the caller holds the
    /// unit's lock.
    pub(super) async fn read_unit(&self, ctx: &IoCtx, unit: u64, out: &mut [u8]) -> Result<()> {
        let len = out.len();
        self.load_unit(ctx, unit, out, 0..len).await.map(drop)
    }

    pub(super) async fn read_range(&self, ctx: &IoCtx, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut futs: Vec<LocalBoxFuture<'_, Result<()>>> = Vec::new();
        let mut rest = buf;
        for (unit, inner, n) in self.pieces(offset, rest.len() as u64) {
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            futs.push(Box::pin(self.read_piece(ctx, unit, inner, part)));
        }
        try_join_all(futs).await
    }

    async fn read_piece(
        &self,
        ctx: &IoCtx,
        unit: u64,
        inner: usize,
        part: &mut [u8],
    ) -> Result<()> {
        let _guard = self.lock(unit).lock().await;
        let len = self.unit_len(unit);
        if part.len() == len {
            return self.load_unit(ctx, unit, part, 0..len).await.map(drop);
        }
        let mut plain = ctx.take_buf(len);
        let want = inner..inner + part.len();
        let res = self.load_unit(ctx, unit, plain.as_mut_slice(), want).await;
        if res.is_ok() {
            part.copy_from_slice(&plain.as_slice()[inner..inner + part.len()]);
        }
        ctx.put_buf(plain);
        res.map(drop)
    }

    /// Write `data` (`None`: zeros) over `[offset, offset+len)`.
    pub(super) async fn write_range(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let mut futs: Vec<LocalBoxFuture<'_, Result<()>>> = Vec::new();
        let mut done = 0;
        for (unit, inner, n) in self.pieces(offset, len) {
            let src = data.map(|d| &d[done..done + n]);
            done += n;
            futs.push(Box::pin(self.write_piece(ctx, unit, inner, n, src)));
        }
        try_join_all(futs).await
    }

    async fn write_piece(
        &self,
        ctx: &IoCtx,
        unit: u64,
        inner: usize,
        n: usize,
        src: Option<&[u8]>,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.try_write_piece(ctx, unit, inner, n, src).await {
                // Freed space comes back at a flush; the unit lock is not held here,
                // so the flush can clean this unit too.
                Err(Error::NoSpace) if attempt < NO_SPACE_RETRIES => {
                    attempt += 1;
                    self.flush_all(ctx).await?;
                }
                Err(Error::NoSpace) => {
                    self.counters.no_space.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(unit, "compress: no space left below");
                    return Err(Error::NoSpace);
                }
                other => return other,
            }
        }
    }

    async fn try_write_piece(
        &self,
        ctx: &IoCtx,
        unit: u64,
        inner: usize,
        n: usize,
        src: Option<&[u8]>,
    ) -> Result<()> {
        let _guard = self.lock(unit).lock().await;
        let len = self.unit_len(unit);
        if src.is_none() {
            match self.entry(unit) {
                Ok((cur, _)) if !cur.holds_data() => return Ok(()), // already zeros
                _ if n == len => {
                    let writer = self.table.begin_write();
                    return self.commit(ctx, unit, Extent::ZERO, writer.epoch).await;
                }
                _ => {}
            }
        }
        let mut plain = ctx.take_buf(len);
        let mut scratch = ctx.take_buf(codec::scratch_bytes(len));
        let res = async {
            let plain = plain.as_mut_slice();
            let before = match n == len {
                true => Stored::Zeros,
                false => self.load_unit(ctx, unit, plain, 0..len).await?,
            };
            match src {
                Some(d) => plain[inner..inner + n].copy_from_slice(d),
                None => plain[inner..inner + n].fill(0),
            }
            // Pieces outside the written range keep their stored bytes.
            let (first, last) = (inner / PIECE_BYTES, (inner + n - 1) / PIECE_BYTES);
            let dirty = |piece: usize| (first..=last).contains(&piece);
            let old = match &before {
                Stored::Zeros => Old::Plain,
                Stored::Raw => Old::Raw,
                Stored::Packed(buf, len) => Old::Packed(&buf[..*len]),
            };
            let res = self
                .store(ctx, unit, plain, old, &dirty, scratch.as_mut_slice())
                .await;
            drop(before);
            res
        }
        .await;
        ctx.put_buf(scratch);
        ctx.put_buf(plain);
        res
    }

    /// Compress `plain` into fresh granules, then point the map at them.
    async fn store(
        &self,
        ctx: &IoCtx,
        unit: u64,
        plain: &[u8],
        old: Old<'_>,
        dirty: &dyn Fn(usize) -> bool,
        scratch: &mut [u8],
    ) -> Result<()> {
        let granule_bytes = self.geo.granule_bytes;
        // Inside the flush epoch from the data write to the map update: a flush
        // waits for both.
        let writer = self.table.begin_write();
        let mut new = codec::encode(unit, plain, old, dirty, scratch, granule_bytes);
        if new.holds_data() {
            let granules = new.granules(granule_bytes);
            let at = self
                .alloc
                .alloc(granules, u64::from(ctx.queue()))
                .ok_or(Error::NoSpace)?;
            new.granule = at;
            let offset = self.geo.granule_offset(at);
            let res = if new.kind == Kind::Raw {
                // A unit is a whole number of blocks: write it as it is.
                self.lower.write_bytes(ctx, offset, plain).await
            } else {
                let stored = new.stored_bytes as usize;
                let mut out = ctx.buf((granules * u64::from(granule_bytes)) as usize);
                out[..stored].copy_from_slice(&scratch[..stored]);
                out[stored..].fill(0);
                self.lower.write(ctx, offset, &out.freeze()).await
            };
            if let Err(e) = res {
                // Never referenced by the map: free at once.
                let released = self.alloc.release(at, granules);
                debug_assert!(released, "a fresh extent was ours alone");
                return Err(e);
            }
        }
        self.commit(ctx, unit, new, writer.epoch).await
    }

    /// Map `unit` to `new` in flush epoch `epoch` (the caller holds a writer of
    /// it and the unit's lock). The fallback (`prev`) is the last version a
    /// flush made durable: the current `cur` when a flush covered it, else the
    /// current `prev` (the `cur` is then dropped). While a flush of the `cur`'s
    /// epoch still runs, the write waits for its outcome: taking the `cur` as the
    /// fallback before that flush ends would let a crash lose both versions.
    pub(super) async fn commit(
        &self,
        ctx: &IoCtx,
        unit: u64,
        new: Extent,
        epoch: u64,
    ) -> Result<()> {
        let limits = self.limits(unit);
        // The caller holds the unit's lock, so its entry's epoch cannot change
        // under us; a flush still running for that epoch decides which version
        // is the durable one, so wait for its outcome first.
        let (_, written) = self.entry_with_epoch(unit);
        if written < epoch {
            self.table.settled(written).await;
        }
        let flushed = self.table.flushed();
        let mut old = None;
        let mut dropped = Extent::EMPTY;
        let res = self
            .table
            .update(
                ctx,
                &*self.lower,
                unit,
                1,
                Stamp::Write(epoch),
                &mut |_, bytes, written| {
                    old = decode_entry(bytes, &limits).ok();
                    let prev = match old {
                        // `cur` is not durable (written in this epoch, or its
                        // flush failed): the fallback stays the older version.
                        Some((cur, prev)) if written == epoch || written > flushed => {
                            dropped = cur;
                            prev
                        }
                        Some((cur, prev)) => {
                            dropped = prev;
                            if cur.kind == Kind::Empty {
                                Extent::ZERO
                            } else {
                                cur
                            }
                        }
                        // A damaged entry: its old extents are unknown and stay unused.
                        None => Extent::EMPTY,
                    };
                    encode_entry(&new, &prev, bytes);
                },
            )
            .await;
        // The map in memory holds `new` even if its page write failed: account
        // for it as written (the request still fails).
        if dropped.holds_data() {
            self.freed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((epoch, dropped));
        }
        if let Some((cur, _)) = old {
            self.account(unit, &cur, false);
        }
        self.account(unit, &new, true);
        {
            let mut to_clean = self.to_clean.lock().unwrap_or_else(|e| e.into_inner());
            to_clean.push(unit);
            // Without flushes the list would grow with every write: keep it to
            // about one entry per unit.
            if to_clean.len() as u64 > 2 * self.units() + 1024 {
                to_clean.sort_unstable();
                to_clean.dedup();
            }
        }
        res
    }

    pub(super) fn account(&self, unit: u64, extent: &Extent, add: bool) {
        if !extent.holds_data() {
            return;
        }
        let stored = extent.granules(self.geo.granule_bytes) * u64::from(self.geo.granule_bytes);
        let logical = self.unit_len(unit) as u64;
        let c = &self.counters;
        if add {
            c.stored_bytes.fetch_add(stored, Ordering::Relaxed);
            c.logical_bytes.fetch_add(logical, Ordering::Relaxed);
        } else {
            c.stored_bytes.fetch_sub(stored, Ordering::Relaxed);
            c.logical_bytes.fetch_sub(logical, Ordering::Relaxed);
        }
    }
}

/// How a loaded unit is stored below.
enum Stored {
    Zeros,
    Raw,
    /// The stored bytes as read (granule-rounded) and their length.
    Packed(IoBufMut, usize),
}

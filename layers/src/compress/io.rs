//! The data path of `compress`: reading and writing units.

use std::sync::atomic::Ordering;

use crate::exec::IoCtx;
use crate::join::try_join_all;
use crate::{Error, LocalBoxFuture, Result};

use super::codec;
use super::entry::{decode_entry, encode_entry, Extent, Kind, ENTRY_BYTES};
use super::{Compress, WRITING};

/// Flushes (which return freed space) tried before a write reports `NoSpace`.
const NO_SPACE_RETRIES: usize = 4;

impl Compress {
    pub(super) fn entry(&self, unit: u64) -> std::result::Result<(Extent, Extent), &'static str> {
        let mut bytes = [0u8; ENTRY_BYTES];
        self.table.get(unit, &mut bytes);
        decode_entry(&bytes, &self.geo.limits(unit))
    }

    fn corrupt(&self, unit: u64, why: &str) -> Error {
        let offset = unit * self.unit_bytes();
        self.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
        tracing::error!(unit, offset, why, "compress: unit does not verify");
        Error::Corrupt { offset }
    }

    /// Fill `out` from `extent`: `Ok(false)` when the stored bytes do not verify.
    pub(super) async fn load_extent(
        &self,
        ctx: &IoCtx,
        unit: u64,
        extent: &Extent,
        out: &mut [u8],
    ) -> Result<bool> {
        if !extent.holds_data() {
            out.fill(0);
            return Ok(true);
        }
        let granule_bytes = u64::from(self.geo.granule_bytes);
        let mut stored =
            ctx.take_buf((extent.granules(self.geo.granule_bytes) * granule_bytes) as usize);
        let offset = self.geo.granule_offset(extent.granule);
        let res = match self.lower.read(ctx, offset, stored.as_mut_slice()).await {
            Ok(()) => Ok(codec::decode(unit, extent, stored.as_slice(), out)),
            // A checksumming layer below caught what our crc would: a torn or
            // lost write, so the fallback may still hold the unit.
            Err(Error::Corrupt { .. }) => Ok(false),
            Err(e) => Err(e),
        };
        ctx.put_buf(stored);
        res
    }

    /// The whole unit into `out`; the caller holds the unit's lock.
    async fn load_unit(&self, ctx: &IoCtx, unit: u64, out: &mut [u8]) -> Result<()> {
        let (cur, prev) = self.entry(unit).map_err(|why| self.corrupt(unit, why))?;
        if self.load_extent(ctx, unit, &cur, out).await? {
            return Ok(());
        }
        // Only a crash leaves a `cur` whose data never reached the disk.
        if prev.kind != Kind::Empty && self.load_extent(ctx, unit, &prev, out).await? {
            tracing::warn!(
                unit,
                "compress: newest version of the unit lost; read the previous one"
            );
            return Ok(());
        }
        Err(self.corrupt(unit, "stored bytes fail their crc"))
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
        let len = self.geo.unit_len(unit);
        if part.len() == len {
            return self.load_unit(ctx, unit, part).await;
        }
        let mut plain = ctx.take_buf(len);
        let res = self.load_unit(ctx, unit, plain.as_mut_slice()).await;
        if res.is_ok() {
            part.copy_from_slice(&plain.as_slice()[inner..inner + part.len()]);
        }
        ctx.put_buf(plain);
        res
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
        let len = self.geo.unit_len(unit);
        if src.is_none() {
            match self.entry(unit) {
                Ok((cur, _)) if !cur.holds_data() => return Ok(()), // already zeros
                _ if n == len => return self.commit(ctx, unit, Extent::ZERO).await,
                _ => {}
            }
        }
        let mut plain = ctx.take_buf(len);
        let mut scratch = ctx.take_buf(codec::scratch_bytes(len));
        let res = async {
            let plain = plain.as_mut_slice();
            if n != len {
                self.load_unit(ctx, unit, plain).await?;
            }
            match src {
                Some(d) => plain[inner..inner + n].copy_from_slice(d),
                None => plain[inner..inner + n].fill(0),
            }
            self.store(ctx, unit, plain, scratch.as_mut_slice()).await
        }
        .await;
        ctx.put_buf(scratch);
        ctx.put_buf(plain);
        res
    }

    /// Compress `plain` into fresh granules, then point the map at them.
    async fn store(&self, ctx: &IoCtx, unit: u64, plain: &[u8], scratch: &mut [u8]) -> Result<()> {
        let granule_bytes = self.geo.granule_bytes;
        let mut new = codec::encode(unit, plain, scratch, granule_bytes);
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
                self.lower.write(ctx, offset, plain).await
            } else {
                let stored = new.stored_bytes as usize;
                let mut out = ctx.take_buf((granules * u64::from(granule_bytes)) as usize);
                out.as_mut_slice()[..stored].copy_from_slice(&scratch[..stored]);
                out.as_mut_slice()[stored..].fill(0);
                let res = self.lower.write(ctx, offset, out.as_slice()).await;
                ctx.put_buf(out);
                res
            };
            if let Err(e) = res {
                // Never referenced by the map: free at once.
                let released = self.alloc.release(at, granules);
                debug_assert!(released, "a fresh extent was ours alone");
                return Err(e);
            }
        }
        self.commit(ctx, unit, new).await
    }

    /// Map `unit` to `new`. The fallback (`prev`) is always a version at least as
    /// new as the unit's last flushed one: the current `cur` if a flush has made
    /// it durable, else the current `prev` (a `cur` written since the last flush
    /// began is dropped). A write that finds its `cur` under a running flush waits
    /// for that flush, after which `cur` is the flushed version.
    async fn commit(&self, ctx: &IoCtx, unit: u64, new: Extent) -> Result<()> {
        let mut waited = false;
        let (inside, epoch, keep_prev) = loop {
            let inside = self.gate.enter().await;
            let epoch = self.epoch.load(Ordering::SeqCst);
            let written = self.epochs[unit as usize].load(Ordering::SeqCst);
            let completed = self.completed.load(Ordering::SeqCst);
            if written > completed && written < epoch && !waited {
                drop(inside);
                drop(self.flush_lock.lock().await);
                waited = true;
                continue;
            }
            break (inside, epoch, written == epoch);
        };
        self.epochs[unit as usize].store(WRITING, Ordering::SeqCst);
        let limits = self.geo.limits(unit);
        let mut old = None;
        let mut dropped = Extent::EMPTY;
        let res = self
            .table
            .update(ctx, &*self.lower, unit, 1, &mut |_, bytes| {
                old = decode_entry(bytes, &limits).ok();
                let prev = match old {
                    Some((cur, prev)) if keep_prev => {
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
            })
            .await;
        // The map in memory holds `new` even if its page write failed: account
        // for it as written (the request still fails).
        if dropped.holds_data() {
            self.freed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(dropped);
        }
        if let Some((cur, _)) = old {
            self.account(unit, &cur, false);
        }
        self.account(unit, &new, true);
        self.epochs[unit as usize].store(epoch, Ordering::SeqCst);
        {
            let mut to_clean = self.to_clean.lock().unwrap_or_else(|e| e.into_inner());
            to_clean.push(unit);
            // Without flushes the list would grow with every write: keep it to
            // about one entry per unit.
            if to_clean.len() as u64 > 2 * self.geo.units + 1024 {
                to_clean.sort_unstable();
                to_clean.dedup();
            }
        }
        drop(inside);
        res
    }

    pub(super) fn account(&self, unit: u64, extent: &Extent, add: bool) {
        if !extent.holds_data() {
            return;
        }
        let stored = extent.granules(self.geo.granule_bytes) * u64::from(self.geo.granule_bytes);
        let logical = self.geo.unit_len(unit) as u64;
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

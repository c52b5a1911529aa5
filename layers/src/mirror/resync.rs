//! Re-adding a failed leg and copying the data to it while I/O continues; the
//! copy helper is shared with the open-time resync of dirty regions.
//!
//! What is copied: while a leg is failed (or rebuilding) no intent bit is
//! cleared, so the bits set when it is re-added cover every region it can
//! have missed since it failed, and only those are copied, when the leg
//! shows it is the one that failed: it holds this mirror's superblock with
//! its own index, and a state record at least as new as the last one
//! written while every leg was ok (the last that may have cleared bits). A
//! blank, foreign or older leg (a replaced disk, a restored copy), or any
//! leg after a restart (the records do not say when it failed), gets every
//! byte.
//!
//! Each step holds its range exclusively (writes hold their ranges shared), so
//! a write is either finished before the step reads the source, or starts after
//! the step and goes to the rebuilding leg itself: the copy never puts older
//! data over a newer write.

use std::sync::atomic::Ordering;

use super::open::{inspect, leg_superblock, Found};
use super::{Health, Mirror, STEP_BYTES};
use crate::exec::IoCtx;
use crate::{superblock, Error, IoBufMut};

/// Bytes a rebuild has copied, and will have copied once done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

impl Mirror {
    /// Mark failed leg `leg` rebuilding and record it: from now on it receives
    /// every write but serves no read, until [`Mirror::resync_step`] has copied
    /// everything to it. Fails (leaving the leg failed) when the leg cannot take
    /// the state record, e.g. because it still fails writes.
    pub async fn readd(&self, ctx: &IoCtx, leg: usize) -> Result<(), String> {
        let n = self.legs.len();
        if leg >= n {
            return Err(format!("the mirror has legs 0..{n}; there is no leg {leg}"));
        }
        let _step = self.resync_lock.lock().await;
        let _meta = self.meta_lock.lock().await;
        match self.health_of(leg) {
            Health::Failed => {}
            Health::Ok => return Err(format!("leg {leg} is ok; only a failed leg is re-added")),
            Health::Rebuilding => return Err(format!("leg {leg} is already rebuilding")),
        }
        if self.ok_legs().is_empty() {
            return Err("no leg is ok: there is nothing to rebuild from".into());
        }
        self.legs[leg]
            .consecutive_read_errors
            .store(0, Ordering::Relaxed);
        // A leaf that lost its connection fails its first flush after coming
        // back (writes it acknowledged may be gone): that is for the bitmap
        // to cover, and must not fail the record write below.
        let _ = self.legs[leg].layer.flush(ctx).await;
        let dirty_only = self.missed_only_dirty(ctx, leg).await?;
        if self.rebuilding_legs().is_empty() {
            self.resync_all.store(!dirty_only, Ordering::SeqCst);
        } else if !dirty_only {
            self.resync_all.store(true, Ordering::SeqCst);
        }
        self.set_health(leg, Health::Rebuilding);
        // Rebuilding legs present before restart with this one from the start.
        self.resync_at.store(0, Ordering::SeqCst);
        self.resync_pass_bytes.store(0, Ordering::SeqCst);
        self.persist_locked(ctx, &self.dirty_snapshot())
            .await
            .map_err(|e| format!("cannot record the mirror state: {e}"))?;
        if self.health_of(leg) == Health::Failed {
            return Err(format!(
                "leg {leg} failed again while being re-added (it refused the state write)"
            ));
        }
        tracing::info!(leg, dirty_only, "mirror: leg re-added; resync starts");
        Ok(())
    }

    /// Whether failed leg `leg` can have missed only the dirty regions (see
    /// the module doc). A blank leg (a new disk) gets this leg's superblock.
    async fn missed_only_dirty(&self, ctx: &IoCtx, leg: usize) -> Result<bool, String> {
        let layer = &*self.legs[leg].layer;
        let since = self.all_ok_generation.load(Ordering::SeqCst);
        match inspect(ctx, layer, leg, self.block_size, self.bytes()).await {
            Ok(Found::Member {
                uuid,
                params,
                records,
                ..
            }) => Ok(uuid == self.uuid
                && usize::from(params.index) == leg
                && records.iter().any(|r| r.generation >= since)),
            Ok(Found::Blank) => {
                let region_bytes = self
                    .intent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .region_bytes();
                let sb = leg_superblock(
                    self.uuid,
                    leg,
                    self.legs.len(),
                    region_bytes,
                    self.block_size,
                    self.bytes(),
                );
                superblock::write(ctx, layer, &sb)
                    .await
                    .map_err(|e| format!("cannot write the superblock of leg {leg}: {e}"))?;
                Ok(false)
            }
            Ok(Found::Unreadable(_)) | Err(_) => Ok(false),
        }
    }

    /// How far the rebuild of the rebuilding legs has come, in bytes; `None`
    /// when no leg is rebuilding. The total is what was copied plus what is
    /// left to copy from `resync_at` on (every byte, or the dirty regions), so
    /// it grows when writes dirty a region ahead of the copy.
    pub fn resync_progress(&self) -> Option<ResyncProgress> {
        if self.rebuilding_legs().is_empty() {
            return None;
        }
        let at = self.resync_at.load(Ordering::SeqCst).min(self.bytes());
        let left = if self.resync_all.load(Ordering::SeqCst) {
            self.bytes() - at
        } else {
            let intent = self.intent.lock().unwrap_or_else(|e| e.into_inner());
            let region = intent.region_bytes();
            (0..intent.regions())
                .filter(|&r| intent.dirty()[r])
                .map(|r| {
                    let start = (r as u64 * region).max(at);
                    let end = ((r as u64 + 1) * region).min(self.bytes());
                    end.saturating_sub(start)
                })
                .sum()
        };
        let done_bytes = self.resync_pass_bytes.load(Ordering::SeqCst);
        Some(ResyncProgress {
            done_bytes,
            total_bytes: done_bytes + left,
        })
    }

    /// The next byte a resync copies at or after `at`, and how many bytes
    /// from there: everything, or only the dirty regions.
    fn next_to_copy(&self, at: u64) -> Option<(u64, u64)> {
        if at >= self.bytes() {
            return None;
        }
        if self.resync_all.load(Ordering::SeqCst) {
            return Some((at, STEP_BYTES.min(self.bytes() - at)));
        }
        let intent = self.intent.lock().unwrap_or_else(|e| e.into_inner());
        let region = intent.region_bytes();
        let first = (at / region) as usize;
        let r = (first..intent.regions()).find(|&r| intent.dirty()[r])?;
        let start = at.max(r as u64 * region);
        let end = ((r as u64 + 1) * region).min(self.bytes());
        Some((start, STEP_BYTES.min(end - start)))
    }

    /// Copy the next [`STEP_BYTES`] to the rebuilding legs. `Ok(true)`: call
    /// again; `Ok(false)`: nothing left (the rebuilt legs were flushed and are
    /// now ok, or no leg is rebuilding). An error says why the resync cannot go
    /// on (no ok leg to copy from, or a rebuilding leg failed again).
    pub async fn resync_step(&self, ctx: &IoCtx) -> Result<bool, String> {
        let _step = self.resync_lock.lock().await;
        if self.rebuilding_legs().is_empty() {
            return Ok(false);
        }
        let Some((at, len)) = self.next_to_copy(self.resync_at.load(Ordering::SeqCst)) else {
            self.resync_at.store(self.bytes(), Ordering::SeqCst);
            self.finish_resync(ctx).await?;
            return Ok(false);
        };
        let guards = self.exclusive_regions(ctx, at, len).await;
        let targets = self.rebuilding_legs();
        let sources = self.read_order();
        if sources.is_empty() {
            return Err("no leg is ok: there is nothing to copy from".into());
        }
        let unreadable = self.copy_range(ctx, at, len, &sources, &targets).await;
        drop(guards);
        if unreadable > 0 {
            self.resync_unreadable
                .fetch_add(unreadable, Ordering::Relaxed);
        }
        self.resync_bytes.fetch_add(len, Ordering::Relaxed);
        self.resync_pass_bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(&t) = targets
            .iter()
            .find(|&&t| self.health_of(t) == Health::Failed)
        {
            return Err(format!("leg {t} failed during the resync; it stays failed"));
        }
        self.resync_at.store(at + len, Ordering::SeqCst);
        Ok(true)
    }

    async fn finish_resync(&self, ctx: &IoCtx) -> Result<(), String> {
        let targets = self.rebuilding_legs();
        let mut failed = Vec::new();
        let mut last_err = Error::Io(libc::EIO);
        for &t in &targets {
            if let Err(e) = self.legs[t].layer.flush(ctx).await {
                failed.push(t);
                last_err = e;
            }
        }
        self.fail_legs(ctx, &failed, "flush after resync", last_err)
            .await;
        let _meta = self.meta_lock.lock().await;
        let mut done = Vec::new();
        for &t in &targets {
            if self.health_of(t) == Health::Rebuilding {
                self.set_health(t, Health::Ok);
                done.push(t);
            }
        }
        self.persist_locked(ctx, &self.dirty_snapshot())
            .await
            .map_err(|e| format!("cannot record the mirror state: {e}"))?;
        tracing::info!(legs = ?done, "mirror: resync finished");
        match failed.first() {
            Some(t) => Err(format!("leg {t} failed during the resync; it stays failed")),
            None => Ok(()),
        }
    }

    /// Read `[offset, offset+len)` from the first leg of `sources` that reads it
    /// and write it to `targets`.
    /// When no source reads the whole range, it goes block by block, so one bad
    /// block costs only itself. Returns the blocks no source could read. Caller
    /// holds the range exclusively.
    async fn copy_range(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: u64,
        sources: &[usize],
        targets: &[usize],
    ) -> u64 {
        let mut buf = ctx.buf(len as usize);
        let block = u64::from(self.block_size);
        let mut unreadable = 0;
        let dests: Vec<usize> = targets
            .iter()
            .copied()
            .filter(|&i| self.health_of(i) != Health::Failed)
            .collect();
        if self.read_first(ctx, offset, &mut buf, sources).await {
            self.rewrite(ctx, offset, &buf.freeze(), &dests).await;
        } else {
            drop(buf);
            let mut at = 0;
            while at < len {
                let mut piece = ctx.buf(block as usize);
                match self.read_first(ctx, offset + at, &mut piece, sources).await {
                    true => {
                        self.rewrite(ctx, offset + at, &piece.freeze(), &dests)
                            .await;
                    }
                    false => {
                        unreadable += 1;
                        tracing::error!(
                            offset = offset + at,
                            "mirror: no ok leg can read this block; it is not copied"
                        );
                    }
                }
                at += block;
            }
        }
        unreadable
    }

    /// Fill `buf` from the first ok leg of `sources` whose copy of the range
    /// reads without error; false when none does.
    async fn read_first(
        &self,
        ctx: &IoCtx,
        offset: u64,
        buf: &mut IoBufMut,
        sources: &[usize],
    ) -> bool {
        for &s in sources {
            if self.health_of(s) != Health::Ok {
                continue;
            }
            match self.legs[s]
                .layer
                .read(ctx, super::DATA_START + offset, buf)
                .await
            {
                Ok(()) => return true,
                Err(Error::Corrupt { .. }) => {}
                Err(e) => self.note_read_error(ctx, s, e).await,
            }
        }
        false
    }
}

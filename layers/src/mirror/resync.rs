//! Re-adding a failed leg and copying the data to it while I/O continues; the
//! copy helper is shared with the open-time resync of dirty regions.
//!
//! Each step holds its range exclusively (writes hold their ranges shared), so
//! a write is either finished before the step reads the source, or starts after
//! the step and goes to the rebuilding leg itself: the copy never puts older
//! data over a newer write.

use std::sync::atomic::Ordering;

use super::{Health, Mirror, STEP_BYTES};
use crate::exec::IoCtx;
use crate::Error;

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
        self.set_health(leg, Health::Rebuilding);
        // Rebuilding legs present before restart with this one from the start.
        self.resync_at.store(0, Ordering::SeqCst);
        self.persist_locked(ctx, &self.dirty_snapshot())
            .await
            .map_err(|e| format!("cannot record the mirror state: {e}"))?;
        if self.health_of(leg) == Health::Failed {
            return Err(format!(
                "leg {leg} failed again while being re-added (it refused the state write)"
            ));
        }
        tracing::info!(leg, "mirror: leg re-added; resync starts");
        Ok(())
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
        let at = self.resync_at.load(Ordering::SeqCst);
        if at >= self.size {
            self.finish_resync(ctx).await?;
            return Ok(false);
        }
        let len = STEP_BYTES.min(self.size - at);
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
        let mut buf = ctx.take_buf(len as usize);
        let block = u64::from(self.block_size);
        let mut unreadable = 0;
        let dests: Vec<usize> = targets
            .iter()
            .copied()
            .filter(|&i| self.health_of(i) != Health::Failed)
            .collect();
        if self
            .read_first(ctx, offset, buf.as_mut_slice(), sources)
            .await
        {
            self.rewrite(ctx, offset, buf.as_slice(), &dests).await;
        } else {
            let mut at = 0;
            while at < len {
                let piece = &mut buf.as_mut_slice()[at as usize..(at + block) as usize];
                match self.read_first(ctx, offset + at, piece, sources).await {
                    true => {
                        self.rewrite(ctx, offset + at, piece, &dests).await;
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
        ctx.put_buf(buf);
        unreadable
    }

    /// Fill `buf` from the first ok leg of `sources` whose copy of the range
    /// reads without error; false when none does.
    async fn read_first(
        &self,
        ctx: &IoCtx,
        offset: u64,
        buf: &mut [u8],
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

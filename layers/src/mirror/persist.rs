//! Writing the state record: every change of health or of the write-intent
//! bits becomes a new record (generation +1) on every leg that is not failed,
//! written and flushed under `meta_lock`, so records never interleave and the
//! other slot always holds the previous durable one.

use std::sync::atomic::Ordering;

use super::state::{Record, RECORD_AT, RECORD_BYTES};
use super::{Health, Mirror};
use crate::exec::IoCtx;
use crate::join::join_all;
use crate::{Error, LocalBoxFuture, Result};

impl Mirror {
    pub(super) fn dirty_snapshot(&self) -> Vec<bool> {
        self.intent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dirty()
            .to_vec()
    }

    /// Write the current health and `dirty` as a new record to every leg that is
    /// not failed, and flush it. A leg that fails this is marked failed and the
    /// record rewritten without it. Caller holds `meta_lock`.
    pub(super) async fn persist_locked(&self, ctx: &IoCtx, dirty: &[bool]) -> Result<()> {
        self.persist_sized(ctx, dirty, self.bytes()).await
    }

    /// [`Self::persist_locked`], recording `size` as the mirror's size (a
    /// growing mirror records its new size before it exposes it).
    pub(super) async fn persist_sized(&self, ctx: &IoCtx, dirty: &[bool], size: u64) -> Result<()> {
        loop {
            let targets = self.writable_legs();
            if targets.is_empty() {
                return Err(Error::Io(libc::EIO));
            }
            let record = Record {
                generation: self.generation.load(Ordering::SeqCst) + 1,
                health: (0..self.legs.len()).map(|i| self.health_of(i)).collect(),
                dirty: dirty.to_vec(),
                size,
            };
            self.generation.store(record.generation, Ordering::SeqCst);
            let bytes = record.encode();
            let at = RECORD_AT + record.slot() * RECORD_BYTES as u64;
            let results = join_all(
                targets
                    .iter()
                    .map(|&i| {
                        let layer = &*self.legs[i].layer;
                        let bytes = &bytes;
                        Box::pin(async move {
                            layer.write_bytes(ctx, at, bytes).await?;
                            layer.flush(ctx).await
                        }) as LocalBoxFuture<'_, Result<()>>
                    })
                    .collect(),
            )
            .await;
            let mut all_ok = true;
            for (&i, res) in targets.iter().zip(results) {
                if let Err(e) = res {
                    all_ok = false;
                    self.legs[i].write_errors.fetch_add(1, Ordering::Relaxed);
                    self.set_health(i, Health::Failed);
                    tracing::error!(
                        leg = i,
                        "mirror leg failed writing the mirror state: {e}; continuing degraded"
                    );
                }
            }
            if all_ok {
                for (leg, health) in self.legs.iter().zip(&record.health) {
                    leg.recorded.store(health.code(), Ordering::SeqCst);
                }
                if record.health.iter().all(|&h| h == Health::Ok) {
                    self.all_ok_generation
                        .store(record.generation, Ordering::SeqCst);
                }
                return Ok(());
            }
        }
    }

    /// Mark `legs` failed and persist that before returning; for the callers
    /// that go on whether or not it could be recorded (repairs, resync, reads).
    pub(super) async fn fail_legs(&self, ctx: &IoCtx, legs: &[usize], what: &str, err: Error) {
        // A failure is logged by `record_failed`.
        let _ = self.record_failed(ctx, legs, what, err).await;
    }

    /// Make sure every leg of `legs` is recorded as failed in a durable record
    /// on every leg that is not failed: marks them failed and writes the record
    /// unless the newest durable one already says so (a concurrent request may
    /// have marked them failed and still be writing it). Err (EIO) when no leg
    /// is left to hold the record: then a request that a leg of `legs` missed
    /// must not be acknowledged.
    pub(super) async fn record_failed(
        &self,
        ctx: &IoCtx,
        legs: &[usize],
        what: &str,
        err: Error,
    ) -> Result<()> {
        let recorded = |i: usize| self.recorded_health(i) == Health::Failed;
        if legs.iter().all(|&i| recorded(i)) {
            return Ok(());
        }
        let _meta = self.meta_lock.lock().await;
        for &i in legs {
            if self.health_of(i) != Health::Failed {
                self.set_health(i, Health::Failed);
                tracing::error!(
                    leg = i,
                    "mirror leg failed on {what}: {err}; continuing degraded"
                );
            }
        }
        if legs.iter().all(|&i| recorded(i)) {
            return Ok(());
        }
        self.persist_locked(ctx, &self.dirty_snapshot())
            .await
            .map_err(|e| {
                tracing::error!("mirror: no leg left to record the failure on: {e}");
                Error::Io(libc::EIO)
            })
    }

    /// Make the intent bits of `regions` durable before a write touches a leg.
    pub(super) async fn set_dirty(&self, ctx: &IoCtx, regions: &[usize]) -> Result<()> {
        let _meta = self.meta_lock.lock().await;
        let (missing, dirty) = {
            let intent = self.intent.lock().unwrap_or_else(|e| e.into_inner());
            let missing = intent.still_missing(regions);
            let dirty = intent.with_set(&missing);
            (missing, dirty)
        };
        if missing.is_empty() {
            return Ok(());
        }
        self.persist_locked(ctx, &dirty).await?;
        self.intent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(&missing);
        Ok(())
    }

    /// After a successful FLUSH, which closed epoch `epoch`: clear the bits of
    /// regions idle since the previous one began.
    pub(super) async fn clear_idle(&self, ctx: &IoCtx, epoch: u64) -> Result<()> {
        let _meta = self.meta_lock.lock().await;
        // A failed or rebuilding leg missed the writes to the regions set
        // since it failed: they stay set until it is rebuilt, so `readd`
        // copies only them.
        if !self.all_legs_ok() {
            return Ok(());
        }
        let dirty = {
            let mut intent = self.intent.lock().unwrap_or_else(|e| e.into_inner());
            if intent.clear_idle(epoch) == 0 {
                return Ok(());
            }
            intent.dirty().to_vec()
        };
        self.persist_locked(ctx, &dirty).await
    }
}

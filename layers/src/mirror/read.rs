//! Reads: one ok leg at a time in `read_policy` order, with self-healing of
//! corrupt copies and failing of legs that keep failing reads.

use std::sync::atomic::Ordering;

use super::{Health, Mirror, DATA_START, READ_ERRORS_TO_FAIL};
use crate::exec::IoCtx;
use crate::{Error, IoBuf, IoBufMut, Result};

impl Mirror {
    /// Write `data` over the copies of legs `bad` at `offset` (caller holds the
    /// region exclusively). Returns how many copies were rewritten.
    pub(super) async fn rewrite(
        &self,
        ctx: &IoCtx,
        offset: u64,
        data: &IoBuf,
        bad: &[usize],
    ) -> u64 {
        let mut rewritten = 0;
        let mut failed = Vec::new();
        let mut last_err = Error::Io(libc::EIO);
        for &i in bad {
            match self.legs[i]
                .layer
                .write(ctx, DATA_START + offset, data)
                .await
            {
                Ok(()) => rewritten += 1,
                Err(e) => {
                    tracing::error!(leg = i, offset, "mirror: repair write failed: {e}");
                    self.legs[i].write_errors.fetch_add(1, Ordering::Relaxed);
                    failed.push(i);
                    last_err = e;
                }
            }
        }
        self.fail_legs(ctx, &failed, "repair", last_err).await;
        rewritten
    }

    /// Rewrite the legs in `bad` with leg `good`'s copy of the range, if the range
    /// has no write in flight; otherwise leave it for a later read.
    pub(super) async fn repair(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: usize,
        good: usize,
        bad: &[usize],
    ) {
        let Some(guards) = self.try_exclusive_regions(offset, len as u64) else {
            return;
        };
        let mut fresh = ctx.buf(len);
        if self.legs[good]
            .layer
            .read(ctx, DATA_START + offset, &mut fresh)
            .await
            .is_ok()
            && self.health_of(good) == Health::Ok
        {
            let bad: Vec<usize> = bad
                .iter()
                .copied()
                .filter(|&i| self.health_of(i) == Health::Ok)
                .collect();
            self.rewrite(ctx, offset, &fresh.freeze(), &bad).await;
            for &i in &bad {
                self.legs[i].repaired.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    leg = i,
                    offset,
                    len,
                    "mirror: repaired a corrupt copy from leg {good}"
                );
            }
        }
        drop(guards);
    }

    /// Count a non-`Corrupt` read error; enough in a row fail the leg.
    pub(super) async fn note_read_error(&self, ctx: &IoCtx, index: usize, err: Error) {
        let leg = &self.legs[index];
        leg.read_errors.fetch_add(1, Ordering::Relaxed);
        let streak = leg.consecutive_read_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= READ_ERRORS_TO_FAIL {
            self.fail_legs(ctx, &[index], "repeated reads", err).await;
        }
    }

    pub(super) async fn read_any(
        &self,
        ctx: &IoCtx,
        offset: u64,
        buf: &mut IoBufMut,
    ) -> Result<()> {
        let order = self.read_order();
        let mut last_err = Error::Io(libc::EIO);
        let mut corrupt_legs: Vec<usize> = Vec::new();
        for i in order {
            let leg = &self.legs[i];
            leg.pending.fetch_add(1, Ordering::Relaxed);
            let res = leg.layer.read(ctx, DATA_START + offset, buf).await;
            leg.pending.fetch_sub(1, Ordering::Relaxed);
            match res {
                Ok(()) => {
                    leg.consecutive_read_errors.store(0, Ordering::Relaxed);
                    if !corrupt_legs.is_empty() {
                        self.repair(ctx, offset, buf.len(), i, &corrupt_legs).await;
                    }
                    return Ok(());
                }
                Err(e @ Error::Corrupt { .. }) => {
                    leg.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(leg = i, offset, "mirror read: {e}; trying the next leg");
                    corrupt_legs.push(i);
                    last_err = Error::Corrupt { offset };
                }
                Err(e @ (Error::OutOfRange | Error::Unsupported)) => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        leg = i,
                        offset,
                        "mirror read failed: {e}; trying the next leg"
                    );
                    self.note_read_error(ctx, i, e).await;
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }
}

//! `mirror`: every leg holds the whole device.
//!
//! - Writes, discards and write_zeroes go to every healthy leg concurrently and are
//!   acknowledged once all of them finished and at least one succeeded. A leg that
//!   fails a write is marked failed (degraded mode) and skipped from then on, and
//!   the failure is logged and shown in `status`; when no leg is left, EIO.
//! - Reads go to one healthy leg chosen by `read_policy` (live); a failed read is
//!   retried on the next healthy leg, so one bad leg never fails a read that
//!   another leg can serve.
//! - FLUSH flushes every healthy leg; a leg whose flush fails is marked failed.
//! - Self-healing: when a leg's read fails verification (`Corrupt`, from a
//!   `checksum` or `crypt` layer in the leg) and another leg serves the block,
//!   the good copy is written back over the bad one, counted as `repaired`. The
//!   repair re-reads the good copy while holding its region exclusively (writes
//!   hold their regions shared), so it can never put back data older than a
//!   concurrent write; a region busy with writes is left for the next read.
//! - Legs must be the same size. No on-disk metadata in this format version.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::async_lock::{SharedGuard, SharedLock};
use crate::exec::IoCtx;
use crate::join::join_all;
use crate::plan::{LiveChange, ReadPolicy};
use crate::{Error, Layer, LocalBoxFuture, Result};

struct Leg {
    layer: Arc<dyn Layer>,
    failed: AtomicBool,
    pending: AtomicUsize,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    repaired: AtomicU64,
}

/// Granularity of the write/repair exclusion: requests hold the regions they
/// touch (hashed into `REGION_LOCKS` locks).
const REGION_BYTES: u64 = 1 << 20;
const REGION_LOCKS: usize = 256;

pub struct Mirror {
    legs: Vec<Leg>,
    size: u64,
    read_policy: AtomicU8,
    next: AtomicUsize,
    regions: Vec<SharedLock>,
}

fn policy_code(p: ReadPolicy) -> u8 {
    match p {
        ReadPolicy::RoundRobin => 0,
        ReadPolicy::First => 1,
        ReadPolicy::LeastPending => 2,
    }
}

fn policy_from(code: u8) -> ReadPolicy {
    match code {
        1 => ReadPolicy::First,
        2 => ReadPolicy::LeastPending,
        _ => ReadPolicy::RoundRobin,
    }
}

impl Mirror {
    pub fn new(
        legs: Vec<Arc<dyn Layer>>,
        read_policy: ReadPolicy,
    ) -> std::result::Result<Mirror, String> {
        let size = legs.first().map(|l| l.size()).unwrap_or(0);
        if legs.iter().any(|l| l.size() != size) {
            let sizes: Vec<String> = legs.iter().map(|l| l.size().to_string()).collect();
            return Err(format!("legs differ in size ({} bytes)", sizes.join(", ")));
        }
        Ok(Mirror {
            legs: legs
                .into_iter()
                .map(|layer| Leg {
                    layer,
                    failed: AtomicBool::new(false),
                    pending: AtomicUsize::new(0),
                    read_errors: AtomicU64::new(0),
                    write_errors: AtomicU64::new(0),
                    repaired: AtomicU64::new(0),
                })
                .collect(),
            size,
            read_policy: AtomicU8::new(policy_code(read_policy)),
            next: AtomicUsize::new(0),
            regions: (0..REGION_LOCKS).map(|_| SharedLock::default()).collect(),
        })
    }

    /// Live knob: change the read policy.
    pub fn set_read_policy(&self, policy: ReadPolicy) {
        self.read_policy
            .store(policy_code(policy), Ordering::Relaxed);
    }

    pub fn read_policy(&self) -> ReadPolicy {
        policy_from(self.read_policy.load(Ordering::Relaxed))
    }

    fn healthy(&self) -> Vec<usize> {
        (0..self.legs.len())
            .filter(|&i| !self.legs[i].failed.load(Ordering::Relaxed))
            .collect()
    }

    /// Healthy legs in the order a read should try them.
    fn read_order(&self) -> Vec<usize> {
        let mut legs = self.healthy();
        if legs.len() < 2 {
            return legs;
        }
        let start = match self.read_policy() {
            ReadPolicy::First => 0,
            ReadPolicy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % legs.len(),
            ReadPolicy::LeastPending => (0..legs.len())
                .min_by_key(|&i| self.legs[legs[i]].pending.load(Ordering::Relaxed))
                .unwrap_or(0),
        };
        legs.rotate_left(start);
        legs
    }

    fn fail_leg(&self, index: usize, what: &str, err: Error) {
        if !self.legs[index].failed.swap(true, Ordering::Relaxed) {
            tracing::error!(
                leg = index,
                "mirror leg failed on {what}: {err}; continuing degraded"
            );
        }
    }

    /// Run `op` on every healthy leg; legs that fail are marked failed. Ok when at
    /// least one leg succeeded.
    async fn on_all<'a, F>(
        &'a self,
        what: &'static str,
        range: Option<(u64, u64)>,
        op: F,
    ) -> Result<()>
    where
        F: Fn(&'a dyn Layer) -> LocalBoxFuture<'a, Result<()>>,
    {
        let legs = self.healthy();
        if legs.is_empty() {
            return Err(Error::Io(libc::EIO));
        }
        let _regions = match range {
            Some((offset, len)) => self.share_regions(offset, len).await,
            None => Vec::new(),
        };
        let results = join_all(legs.iter().map(|&i| op(&*self.legs[i].layer)).collect()).await;
        let mut ok = false;
        let mut last_err = Error::Io(libc::EIO);
        for (&i, res) in legs.iter().zip(results) {
            match res {
                Ok(()) => ok = true,
                Err(e @ (Error::OutOfRange | Error::Unsupported)) => return Err(e),
                Err(e) => {
                    self.legs[i].write_errors.fetch_add(1, Ordering::Relaxed);
                    self.fail_leg(i, what, e);
                    last_err = e;
                }
            }
        }
        if ok {
            Ok(())
        } else {
            Err(last_err)
        }
    }

    /// Region lock indices covering `[offset, offset+len)`, ascending, distinct.
    fn region_locks(offset: u64, len: u64) -> Vec<usize> {
        let first = offset / REGION_BYTES;
        let last = (offset + len.max(1) - 1) / REGION_BYTES;
        if last - first + 1 >= REGION_LOCKS as u64 {
            return (0..REGION_LOCKS).collect();
        }
        let mut locks: Vec<usize> = (first..=last)
            .map(|r| (r % REGION_LOCKS as u64) as usize)
            .collect();
        locks.sort_unstable();
        locks.dedup();
        locks
    }

    async fn share_regions(&self, offset: u64, len: u64) -> Vec<SharedGuard<'_>> {
        let mut guards = Vec::new();
        for i in Self::region_locks(offset, len) {
            guards.push(self.regions[i].share().await);
        }
        guards
    }

    /// Rewrite the legs in `bad` with leg `good`'s copy of the range, if the range
    /// has no write in flight; otherwise leave it for a later read.
    async fn repair(&self, ctx: &IoCtx, offset: u64, len: usize, good: usize, bad: &[usize]) {
        let mut guards = Vec::new();
        for i in Self::region_locks(offset, len as u64) {
            match self.regions[i].try_exclusive() {
                Some(g) => guards.push(g),
                None => return,
            }
        }
        let mut fresh = ctx.take_buf(len);
        if self.legs[good]
            .layer
            .read(ctx, offset, fresh.as_mut_slice())
            .await
            .is_ok()
        {
            for &i in bad {
                match self.legs[i]
                    .layer
                    .write(ctx, offset, fresh.as_slice())
                    .await
                {
                    Ok(()) => {
                        self.legs[i].repaired.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            leg = i,
                            offset,
                            len,
                            "mirror: repaired a corrupt copy from leg {good}"
                        );
                    }
                    Err(e) => tracing::error!(leg = i, offset, "mirror: repair write failed: {e}"),
                }
            }
        }
        ctx.put_buf(fresh);
        drop(guards);
    }

    async fn read_any(&self, ctx: &IoCtx, offset: u64, buf: &mut [u8]) -> Result<()> {
        let order = self.read_order();
        let mut last_err = Error::Io(libc::EIO);
        let mut corrupt_legs: Vec<usize> = Vec::new();
        for i in order {
            let leg = &self.legs[i];
            leg.pending.fetch_add(1, Ordering::Relaxed);
            let res = leg.layer.read(ctx, offset, buf).await;
            leg.pending.fetch_sub(1, Ordering::Relaxed);
            match res {
                Ok(()) => {
                    if !corrupt_legs.is_empty() {
                        self.repair(ctx, offset, buf.len(), i, &corrupt_legs).await;
                    }
                    return Ok(());
                }
                Err(e @ Error::Corrupt { .. }) => {
                    leg.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(leg = i, offset, "mirror read: {e}; trying the next leg");
                    corrupt_legs.push(i);
                    last_err = e;
                }
                Err(e @ (Error::OutOfRange | Error::Unsupported)) => return Err(e),
                Err(e) => {
                    leg.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        leg = i,
                        offset,
                        "mirror read failed: {e}; trying the next leg"
                    );
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }
}

impl Layer for Mirror {
    fn size(&self) -> u64 {
        self.size
    }

    fn read<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        buf: &'a mut [u8],
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(self.read_any(ctx, offset, buf))
    }

    fn write<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        buf: &'a [u8],
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(
            self.on_all("write", Some((offset, buf.len() as u64)), move |leg| {
                leg.write(ctx, offset, buf)
            }),
        )
    }

    fn flush<'a>(&'a self, ctx: &'a IoCtx) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(self.on_all("flush", None, move |leg| leg.flush(ctx)))
    }

    fn discard<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        len: u64,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(self.on_all("discard", Some((offset, len)), move |leg| {
            leg.discard(ctx, offset, len)
        }))
    }

    fn write_zeroes<'a>(
        &'a self,
        ctx: &'a IoCtx,
        offset: u64,
        len: u64,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(
            self.on_all("write_zeroes", Some((offset, len)), move |leg| {
                leg.write_zeroes(ctx, offset, len)
            }),
        )
    }

    fn discard_frees_space(&self) -> bool {
        self.legs.iter().all(|l| l.layer.discard_frees_space())
    }

    fn apply_live<'a>(
        &'a self,
        _ctx: &'a IoCtx,
        change: &'a LiveChange,
    ) -> LocalBoxFuture<'a, std::result::Result<(), String>> {
        let res = match change {
            LiveChange::ReadPolicy(p) => {
                self.set_read_policy(*p);
                Ok(())
            }
            other => Err(format!("{other:?} does not apply to a mirror")),
        };
        Box::pin(std::future::ready(res))
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let legs: Vec<String> = self
            .legs
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "{i}:{}(read_errors={},write_errors={},repaired={})",
                    if l.failed.load(Ordering::Relaxed) {
                        "failed"
                    } else {
                        "ok"
                    },
                    l.read_errors.load(Ordering::Relaxed),
                    l.write_errors.load(Ordering::Relaxed),
                    l.repaired.load(Ordering::Relaxed)
                )
            })
            .collect();
        vec![
            ("read_policy", self.read_policy().as_str().to_string()),
            ("legs", legs.join(" ")),
        ]
    }
}

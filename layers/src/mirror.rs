//! `mirror`: every leg holds the whole device, and the legs' health survives a
//! restart.
//!
//! On-disk layout of every leg (format version 1; details and byte tables in
//! `docs/formats/mirror.md` and [`state`]):
//!
//! | bytes           | contents                                                |
//! |-----------------|---------------------------------------------------------|
//! | 0..4096         | superblock (`superblock.rs`), type `mirror`; its uuid is |
//! |                 | the mirror's; params: leg index u16, leg count u16,     |
//! |                 | region bytes u64                                        |
//! | 4096..12288     | state record, two 4096-byte slots: generation, health   |
//! |                 | of every leg (ok / failed / rebuilding), write-intent   |
//! |                 | bitmap                                                  |
//! | 12288..         | the mirrored data; the exposed size is the leg size     |
//! |                 | minus 12 KiB, rounded down to the block size            |
//!
//! - **State.** Every change (a leg failed, re-added or rebuilt, intent bits set
//!   or cleared) writes a new record, generation +1, to every leg that is not
//!   failed, and flushes it, under one lock. At open the newest generation on
//!   any leg wins; a leg marked failed stays failed and is never read, since its
//!   data is stale. A leg holding another mirror's superblock (uuid) or another
//!   leg index is refused without writing anything.
//! - **Writes** (also discard and write_zeroes) go to every leg that is ok or
//!   rebuilding. A write is acknowledged only when it succeeded on at least one
//!   ok leg and every leg that missed it (failed it, or was skipped as failed)
//!   is recorded failed in a record written and flushed on every leg not failed,
//!   so a crash at any point never leaves a leg recorded ok that misses an
//!   acknowledged write; otherwise EIO. I/O continues on the remaining legs.
//! - **Write intent.** Before the first write to a clear region, its bit is set
//!   in the record (written and flushed); bits are cleared lazily at FLUSH
//!   ([`bitmap`]). After a crash, open copies every dirty region from the first
//!   ok leg that reads it to the other ok legs, so the legs end up identical.
//! - **Reads** go to one ok leg chosen by `read_policy` (live) and fall back to
//!   the next. [`READ_ERRORS_TO_FAIL`] consecutive non-`Corrupt` read errors
//!   fail a leg. A `Corrupt` copy (from a `checksum` or `crypt` layer in the leg)
//!   served by another leg is rewritten from the good copy (self-healing) while
//!   holding its region exclusively, so it never puts back data older than a
//!   concurrent write; a region busy with writes is left for the next read.
//! - **FLUSH** flushes every leg that is not failed and, like a write, is
//!   acknowledged only once every leg that did not flush is durably recorded
//!   failed; then it clears idle intent bits.
//!
//! Maintenance, driven by the daemon from a thread with its own `IoCtx` and
//! `Executor` (every call is an ordinary async call on that context, running
//! alongside the queues' I/O):
//! - [`Mirror::readd`] marks a failed leg rebuilding: from then on it receives
//!   every write but serves no read. No intent bit is cleared while a leg is
//!   failed or rebuilding, so a leg that shows it is the one that failed gets
//!   only the dirty regions copied (`mirror/resync.rs`); `resync_bytes` in `report()`
//!   counts what was copied.
//! - [`Mirror::resync_step`] copies the next [`STEP_BYTES`] to the rebuilding
//!   legs while holding that range exclusively (writes hold it shared, and new
//!   writes to it wait behind a waiting step), so a concurrent write is never
//!   overwritten by older data and the step makes progress under load; it returns
//!   `Ok(false)` once nothing is left, after marking the legs ok. Call it in a
//!   loop: `while mirror.resync_step(&ctx).await? {}`. Progress shows in
//!   `report()` as `resync_percent`, and in bytes as [`Mirror::resync_progress`].
//!   A restart during a rebuild starts over.
//! - [`Mirror::scrub_step`] reads step `i` (of [`Mirror::scrub_steps`]) from every
//!   ok leg, rewrites corrupt or differing copies from a good one, and reports
//!   what it found ([`ScrubReport`]).
//!
//! The daemon finds a mirror with `Stack::mirror(name)`.

mod bitmap;
mod grow;
mod open;
mod persist;
mod read;
mod regions;
mod resync;
mod scrub;
pub mod state;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::async_lock::{AsyncLock, SharedLock};
use crate::exec::IoCtx;
use crate::join::join_all;
use crate::plan::{LiveChange, ReadPolicy};
use crate::report::{LayerReport, LegHealth, LegReport, MirrorReport};
use crate::{AsyncLayer, Error, IoBuf, IoBufMut, Layer, LocalBoxFuture, Result};

use bitmap::WriteIntent;
pub use resync::ResyncProgress;
pub use scrub::ScrubReport;
pub use state::{exposed_size, Health, DATA_START};

/// Consecutive read errors (other than `Corrupt`) that fail a leg.
pub const READ_ERRORS_TO_FAIL: u32 = 32;
/// Unit of a resync or scrub step.
pub const STEP_BYTES: u64 = 1 << 20;
/// Granularity of the write/repair exclusion: requests hold the regions they
/// touch (hashed into `REGION_LOCKS` locks).
const REGION_BYTES: u64 = STEP_BYTES;
const REGION_LOCKS: usize = 256;

struct Leg {
    layer: Arc<dyn Layer>,
    health: AtomicU8,
    /// The health in the newest record known durable on every leg not failed.
    recorded: AtomicU8,
    pending: AtomicUsize,
    consecutive_read_errors: AtomicU32,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    repaired: AtomicU64,
}

pub struct Mirror {
    legs: Vec<Leg>,
    /// Raised by `grow` (`mirror/grow.rs`), under `meta_lock`.
    size: AtomicU64,
    block_size: u32,
    uuid: [u8; 16],
    read_policy: AtomicU8,
    next: AtomicUsize,
    regions: Vec<SharedLock>,
    /// One per region lock: see `regions.rs`.
    turnstiles: Vec<AsyncLock>,
    /// Serialises record writes; held while one is written and flushed.
    meta_lock: AsyncLock,
    generation: AtomicU64,
    intent: Mutex<WriteIntent>,
    /// Serialises resync steps; `resync_at` is the next byte to copy.
    resync_lock: AsyncLock,
    resync_at: AtomicU64,
    resync_unreadable: AtomicU64,
    /// The resync copies every byte, not only the dirty regions: a leg being
    /// rebuilt could not be shown to have missed only those (see `readd`).
    resync_all: AtomicBool,
    /// Bytes copied to rebuilding legs.
    resync_bytes: AtomicU64,
    /// Bytes copied since the resync last started over from byte 0.
    resync_pass_bytes: AtomicU64,
    /// The generation of the newest record made durable while every leg was
    /// ok, the last one that may have cleared intent bits; at open, the
    /// newest record's (what happened before is not known).
    all_ok_generation: AtomicU64,
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
    /// Live knob: change the read policy.
    pub fn set_read_policy(&self, policy: ReadPolicy) {
        self.read_policy
            .store(policy_code(policy), Ordering::Relaxed);
    }

    pub fn read_policy(&self) -> ReadPolicy {
        policy_from(self.read_policy.load(Ordering::Relaxed))
    }

    /// The exposed size now.
    pub fn bytes(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn leg_count(&self) -> usize {
        self.legs.len()
    }

    /// The health of leg `index` (as persisted).
    pub fn health(&self, index: usize) -> Option<Health> {
        let leg = self.legs.get(index)?;
        Health::from_code(leg.health.load(Ordering::SeqCst))
    }

    fn health_of(&self, index: usize) -> Health {
        self.health(index).unwrap_or(Health::Failed)
    }

    fn recorded_health(&self, index: usize) -> Health {
        let code = self.legs[index].recorded.load(Ordering::SeqCst);
        Health::from_code(code).unwrap_or(Health::Failed)
    }

    /// A request done on the legs `done` (the others missed it) is acknowledged
    /// only once every other leg is recorded failed in a durable record on the
    /// legs that are still not failed, and at least one of those that has it is
    /// ok: after a crash at any point no leg recorded ok misses an acknowledged
    /// request. Otherwise Err (EIO).
    async fn acknowledge(&self, ctx: &IoCtx, done: &[usize], what: &str, err: Error) -> Result<()> {
        let missed: Vec<usize> = (0..self.legs.len()).filter(|i| !done.contains(i)).collect();
        self.record_failed(ctx, &missed, what, err).await?;
        if done.iter().any(|&i| self.health_of(i) == Health::Ok) {
            Ok(())
        } else {
            Err(err)
        }
    }

    fn set_health(&self, index: usize, health: Health) {
        self.legs[index]
            .health
            .store(health.code(), Ordering::SeqCst);
    }

    /// Legs that serve reads.
    fn ok_legs(&self) -> Vec<usize> {
        (0..self.legs.len())
            .filter(|&i| self.health_of(i) == Health::Ok)
            .collect()
    }

    /// Legs that receive writes: ok and rebuilding.
    fn writable_legs(&self) -> Vec<usize> {
        (0..self.legs.len())
            .filter(|&i| self.health_of(i) != Health::Failed)
            .collect()
    }

    fn all_legs_ok(&self) -> bool {
        (0..self.legs.len()).all(|i| self.health_of(i) == Health::Ok)
    }

    fn rebuilding_legs(&self) -> Vec<usize> {
        (0..self.legs.len())
            .filter(|&i| self.health_of(i) == Health::Rebuilding)
            .collect()
    }

    /// Ok legs in the order a read should try them.
    fn read_order(&self) -> Vec<usize> {
        let mut legs = self.ok_legs();
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

    /// Run `op` (given a leg and the byte offset on it) on every writable leg
    /// under the write intent; legs that fail are marked failed. Ok when an ok
    /// leg succeeded.
    async fn write_legs<'a, F>(
        &'a self,
        ctx: &'a IoCtx,
        what: &'static str,
        offset: u64,
        len: u64,
        op: F,
    ) -> Result<()>
    where
        F: Fn(&'a dyn Layer, u64) -> LocalBoxFuture<'a, Result<()>>,
    {
        let _regions = self.share_regions(offset, len).await;
        let span = {
            let intent = self.intent.lock().unwrap_or_else(|e| e.into_inner());
            intent.regions_of(offset, len)
        };
        let missing = self
            .intent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .begin(span.clone());
        let res = self.write_intended(ctx, what, &missing, offset, op).await;
        self.intent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .end(span);
        res
    }

    async fn write_intended<'a, F>(
        &'a self,
        ctx: &'a IoCtx,
        what: &'static str,
        missing: &[usize],
        offset: u64,
        op: F,
    ) -> Result<()>
    where
        F: Fn(&'a dyn Layer, u64) -> LocalBoxFuture<'a, Result<()>>,
    {
        if !missing.is_empty() {
            self.set_dirty(ctx, missing).await?;
        }
        // Chosen under the region lock, so a leg re-added meanwhile is either
        // written here or copied by the resync after this write.
        let legs = self.writable_legs();
        let results = join_all(
            legs.iter()
                .map(|&i| op(&*self.legs[i].layer, DATA_START + offset))
                .collect(),
        )
        .await;
        let mut done = Vec::new();
        let mut last_err = Error::Io(libc::EIO);
        for (&i, res) in legs.iter().zip(results) {
            match res {
                Ok(()) => done.push(i),
                Err(e @ (Error::OutOfRange | Error::Unsupported)) => return Err(e),
                Err(e) => {
                    self.legs[i].write_errors.fetch_add(1, Ordering::Relaxed);
                    last_err = e;
                }
            }
        }
        self.acknowledge(ctx, &done, what, last_err).await
    }

    async fn flush_legs(&self, ctx: &IoCtx) -> Result<()> {
        let epoch = self
            .intent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_epoch();
        let legs = self.writable_legs();
        let results = join_all(
            legs.iter()
                .map(|&i| self.legs[i].layer.flush(ctx))
                .collect(),
        )
        .await;
        let mut done = Vec::new();
        let mut last_err = Error::Io(libc::EIO);
        for (&i, res) in legs.iter().zip(results) {
            match res {
                Ok(()) => done.push(i),
                Err(e) => {
                    self.legs[i].write_errors.fetch_add(1, Ordering::Relaxed);
                    last_err = e;
                }
            }
        }
        self.acknowledge(ctx, &done, "flush", last_err).await?;
        self.clear_idle(ctx, epoch).await
    }

    /// Whether a leg is rebuilding: the daemon drives [`Mirror::resync_step`]
    /// until it returns `Ok(false)` (also after a restart, which starts the
    /// copy over).
    pub fn is_rebuilding(&self) -> bool {
        !self.rebuilding_legs().is_empty()
    }

    /// Resync progress in percent while a leg is rebuilding.
    pub fn resync_percent(&self) -> Option<u64> {
        let at = self.resync_position()?;
        Some((at * 100).checked_div(self.bytes()).unwrap_or(100))
    }

    /// The next byte the resync copies while a leg is rebuilding: it is done
    /// at the mirror's size.
    pub fn resync_position(&self) -> Option<u64> {
        if self.rebuilding_legs().is_empty() {
            return None;
        }
        Some(self.resync_at.load(Ordering::Relaxed).min(self.bytes()))
    }
}

impl AsyncLayer for Mirror {
    fn size(&self) -> u64 {
        self.bytes()
    }

    async fn grow(&self, ctx: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        self.grow_to(ctx, new_size).await
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.read_any(ctx, offset, buf).await
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.write_legs(ctx, "write", offset, buf.len() as u64, move |leg, at| {
            leg.write(ctx, at, buf)
        })
        .await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        self.flush_legs(ctx).await
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.write_legs(ctx, "discard", offset, len, move |leg, at| {
            leg.discard(ctx, at, len)
        })
        .await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.write_legs(ctx, "write_zeroes", offset, len, move |leg, at| {
            leg.write_zeroes(ctx, at, len)
        })
        .await
    }

    fn discard_frees_space(&self) -> bool {
        self.legs.iter().all(|l| l.layer.discard_frees_space())
    }

    async fn apply_live(
        &self,
        _ctx: &IoCtx,
        change: &LiveChange,
    ) -> std::result::Result<(), String> {
        let res = match change {
            LiveChange::ReadPolicy(p) => {
                self.set_read_policy(*p);
                Ok(())
            }
            other => Err(format!("{other:?} does not apply to a mirror")),
        };
        res
    }

    fn report(&self) -> LayerReport {
        let legs = self
            .legs
            .iter()
            .enumerate()
            .map(|(i, l)| LegReport {
                health: match self.health_of(i) {
                    Health::Ok => LegHealth::Ok,
                    Health::Failed => LegHealth::Failed,
                    Health::Rebuilding => LegHealth::Rebuilding,
                },
                read_errors: l.read_errors.load(Ordering::Relaxed),
                write_errors: l.write_errors.load(Ordering::Relaxed),
                repaired: l.repaired.load(Ordering::Relaxed),
            })
            .collect();
        // Before taking `intent`, which it takes too.
        let progress = self.resync_progress();
        let intent = self.intent.lock().unwrap_or_else(|e| e.into_inner());
        LayerReport::Mirror(MirrorReport {
            read_policy: self.read_policy(),
            legs,
            generation: self.generation.load(Ordering::Relaxed),
            dirty_regions: intent.dirty_count() as u64,
            regions: intent.regions() as u64,
            region_bytes: intent.region_bytes(),
            uuid: state::hex(&self.uuid),
            resync_percent: self.resync_percent(),
            resync_position_bytes: self.resync_position(),
            resync_unreadable_blocks: self.resync_unreadable.load(Ordering::Relaxed),
            resync_bytes: self.resync_bytes.load(Ordering::Relaxed),
            resync_done_bytes: progress.map(|p| p.done_bytes),
            resync_total_bytes: progress.map(|p| p.total_bytes),
        })
    }
}

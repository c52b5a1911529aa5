//! A simulated disk for tests, in the manner of TigerBeetle's and FoundationDB's
//! simulators: seeded, deterministic, and able to crash or misbehave on command.
//!
//! A [`SimWorld`] holds the disks of one stack ([`SimLeaf`]s, which implement
//! [`Layer`]) and the operations in flight on all of them. A leaf operation is
//! submitted when its future is created and completes only when the world's
//! scheduler says so ([`SimWorld::step`]): each operation draws a latency from
//! the seeded generator and the one due first completes next, so completions
//! come out of order, across leaves too, while the futures of every queue and
//! task wait. A completed write is visible to later reads at once and durable
//! after a FLUSH submitted after it has completed.
//!
//! [`SimWorld::crash_images`] is a power cut at the current instant: flushed
//! writes are there; each completed but unflushed write is there or not; each
//! write in flight lands whole, not at all, or torn at 512-byte sectors.
//!
//! Faults of real disks, armed with [`SimWorld::arm`]: a lost write (completed,
//! never stored), a misdirected write (stored at another offset), a bit flip on
//! a read, a write or flush that fails with EIO (the k-th of a disk, counted
//! from when it is armed; a failed write stores nothing, a failed flush makes
//! nothing durable); and at once with [`SimWorld::rollback`]: a range put back
//! to an older flushed version. A disk grows as a volume does
//! ([`AsyncLayer::grow`] of its leaf): zeros past its old end.
//!
//! In *immediate* mode (the default) every operation completes when submitted,
//! so a stack can be opened with the executor's plain `block_on`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::exec::IoCtx;
use crate::report::{LayerReport, NoDetails};
use crate::rng::Rng;
use crate::{AsyncLayer, Error, IoBuf, IoBufMut, Result};

/// The unit of atomicity of a simulated disk.
pub const SECTOR: usize = 512;
/// Older flushed versions kept per sector, for [`SimWorld::rollback`].
const VERSIONS_KEPT: usize = 4;

/// A fault armed on a leaf; it fires on the next operation it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// The next write covering `offset` completes but is never stored.
    LoseWrite { leaf: usize, offset: u64 },
    /// The next write starting at `offset` is stored at `to` instead.
    MisdirectWrite { leaf: usize, offset: u64, to: u64 },
    /// The next read covering `offset` returns that byte with one bit flipped.
    FlipOnRead { leaf: usize, offset: u64 },
    /// The write, write_zeroes or flush after the next `skip` ones (discards
    /// not counted) fails with EIO.
    FailIo { leaf: usize, skip: u64 },
}

impl SimFault {
    fn leaf(&self) -> usize {
        match *self {
            SimFault::LoseWrite { leaf, .. }
            | SimFault::MisdirectWrite { leaf, .. }
            | SimFault::FlipOnRead { leaf, .. }
            | SimFault::FailIo { leaf, .. } => leaf,
        }
    }
}

/// Counters of a world, to show that the simulation did what it claims.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimStats {
    pub completed: u64,
    /// Operations that completed before one submitted earlier.
    pub out_of_order: u64,
    /// The most operations in flight at once.
    pub max_in_flight: usize,
    pub faults_fired: u64,
}

enum Kind {
    Read {
        offset: u64,
        len: usize,
    },
    /// `discard`: zeros a discard asked for (never failed by
    /// [`SimFault::FailIo`]: a device may drop a discard anyway).
    Write {
        offset: u64,
        data: Vec<u8>,
        discard: bool,
    },
    Flush {
        mark: u64,
    },
}

struct InFlight {
    id: u64,
    leaf: usize,
    due: u64,
    kind: Kind,
}

/// A completed write not yet covered by a flush.
struct Unflushed {
    seq: u64,
    offset: u64,
    data: Vec<u8>,
}

struct Disk {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    unflushed: Vec<Unflushed>,
    /// Completions so far on this disk: the order of `unflushed`.
    completions: u64,
    /// Older flushed contents of each sector, newest last.
    older: BTreeMap<u64, Vec<Vec<u8>>>,
}

impl Disk {
    fn store(&mut self, offset: u64, data: Vec<u8>) {
        let at = offset as usize;
        self.volatile[at..at + data.len()].copy_from_slice(&data);
        self.unflushed.push(Unflushed {
            seq: self.completions,
            offset,
            data,
        });
    }

    /// A flush whose mark is `mark` completed: every write completed before it
    /// was submitted is durable.
    fn flushed(&mut self, mark: u64) {
        let keep = self.unflushed.split_off(
            self.unflushed
                .iter()
                .position(|w| w.seq >= mark)
                .unwrap_or(self.unflushed.len()),
        );
        for w in std::mem::replace(&mut self.unflushed, keep) {
            let at = w.offset as usize;
            for (s, sector) in w.data.chunks(SECTOR).enumerate() {
                let start = at + s * SECTOR;
                let old = &self.durable[start..start + sector.len()];
                if old != sector {
                    let versions = self.older.entry(start as u64).or_default();
                    versions.push(old.to_vec());
                    if versions.len() > VERSIONS_KEPT {
                        versions.remove(0);
                    }
                }
            }
            self.durable[at..at + w.data.len()].copy_from_slice(&w.data);
        }
    }
}

struct Done {
    result: Result<()>,
    data: Vec<u8>,
}

struct World {
    rng: Rng,
    immediate: bool,
    now: u64,
    next_id: u64,
    disks: Vec<Disk>,
    in_flight: Vec<InFlight>,
    done: HashMap<u64, Done>,
    wakers: HashMap<u64, Waker>,
    /// Operations whose future was dropped before they completed.
    orphans: HashSet<u64>,
    armed: Vec<SimFault>,
    /// Completed writes (leaf, offset, length), when tracing.
    trace: Option<Vec<(usize, u64, usize)>>,
    stats: SimStats,
}

/// The simulated disks of one stack and their scheduler. Shared by the leaves.
pub struct SimWorld {
    state: Mutex<World>,
}

impl SimWorld {
    /// A world with one disk per image, in immediate mode.
    pub fn new(seed: u64, images: Vec<Vec<u8>>) -> Arc<SimWorld> {
        Arc::new(SimWorld {
            state: Mutex::new(World {
                rng: Rng::new(seed),
                immediate: true,
                now: 0,
                next_id: 0,
                disks: images
                    .into_iter()
                    .map(|image| Disk {
                        durable: image.clone(),
                        volatile: image,
                        unflushed: Vec::new(),
                        completions: 0,
                        older: BTreeMap::new(),
                    })
                    .collect(),
                in_flight: Vec::new(),
                done: HashMap::new(),
                wakers: HashMap::new(),
                orphans: HashSet::new(),
                armed: Vec::new(),
                trace: None,
                stats: SimStats::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leaf serving disk `index`.
    pub fn leaf(self: &Arc<Self>, index: usize) -> SimLeaf {
        SimLeaf {
            world: self.clone(),
            index,
        }
    }

    /// Immediate mode: operations complete when submitted. Otherwise they wait
    /// for [`Self::step`].
    pub fn set_immediate(&self, immediate: bool) {
        let ready = {
            let mut w = self.lock();
            w.immediate = immediate;
            let mut ready = Vec::new();
            while immediate && !w.in_flight.is_empty() {
                ready.extend(w.complete_next());
            }
            ready
        };
        ready.into_iter().for_each(Waker::wake);
    }

    /// Operations submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Complete the operation due first. Returns false when none is in flight.
    pub fn step(&self) -> bool {
        let (any, waker) = {
            let mut w = self.lock();
            if w.in_flight.is_empty() {
                (false, None)
            } else {
                (true, w.complete_next())
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        any
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Arm a fault; it fires on the next operation it matches.
    pub fn arm(&self, fault: SimFault) {
        self.lock().armed.push(fault);
    }

    /// Start (or stop) recording completed writes.
    pub fn set_trace(&self, on: bool) {
        self.lock().trace = on.then(Vec::new);
    }

    /// The writes completed since the last call, as (leaf, offset, length).
    pub fn take_trace(&self) -> Vec<(usize, u64, usize)> {
        self.lock()
            .trace
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Drop the faults armed that have not fired.
    pub fn disarm(&self) {
        self.lock().armed.clear();
    }

    /// Faults armed that have not fired yet.
    pub fn armed(&self) -> Vec<SimFault> {
        self.lock().armed.clone()
    }

    /// Put `offset..offset+len` of disk `leaf` back to the flushed version each
    /// of its sectors had before its current one, as a disk that loses its last
    /// writes to a block does. Returns false (changing nothing) when some
    /// sector has no older version.
    pub fn rollback(&self, leaf: usize, offset: u64, len: u64) -> bool {
        let mut w = self.lock();
        let disk = &mut w.disks[leaf];
        let sectors: Vec<u64> = (offset..offset + len).step_by(SECTOR).collect();
        if sectors
            .iter()
            .any(|s| disk.older.get(s).map_or(0, Vec::len) == 0)
        {
            return false;
        }
        for s in sectors {
            let old = disk
                .older
                .get_mut(&s)
                .and_then(Vec::pop)
                .expect("checked above");
            let at = s as usize;
            disk.durable[at..at + old.len()].copy_from_slice(&old);
            disk.volatile[at..at + old.len()].copy_from_slice(&old);
        }
        w.stats.faults_fired += 1;
        true
    }

    /// What disk `leaf` holds now (what a read would return).
    pub fn image(&self, leaf: usize) -> Vec<u8> {
        self.lock().disks[leaf].volatile.clone()
    }

    /// Overwrite bytes of disk `leaf`, durably, as an outside writer would.
    pub fn poke(&self, leaf: usize, offset: u64, data: &[u8]) {
        let mut w = self.lock();
        let disk = &mut w.disks[leaf];
        let at = offset as usize;
        disk.volatile[at..at + data.len()].copy_from_slice(data);
        disk.durable[at..at + data.len()].copy_from_slice(data);
    }

    /// The disks after a power cut now, drawn with `rng`: flushed writes are
    /// there, completed unflushed writes and writes in flight each whole, not
    /// at all, or torn at sectors.
    pub fn crash_images(&self, rng: &mut Rng) -> Vec<Vec<u8>> {
        let w = self.lock();
        let mut images: Vec<Vec<u8>> = w.disks.iter().map(|d| d.durable.clone()).collect();
        for (image, disk) in images.iter_mut().zip(&w.disks) {
            for u in &disk.unflushed {
                land(image, u.offset, &u.data, rng);
            }
        }
        for op in &w.in_flight {
            if let Kind::Write { offset, data, .. } = &op.kind {
                land(&mut images[op.leaf], *offset, data, rng);
            }
        }
        images
    }

    fn submit(&self, leaf: usize, kind: Kind) -> u64 {
        let mut w = self.lock();
        let id = w.next_id;
        w.next_id += 1;
        let latency = match kind {
            Kind::Flush { .. } => 4 + w.rng.below(40),
            _ if w.rng.chance(10) => 20 + w.rng.below(80),
            _ => 1 + w.rng.below(10),
        };
        let kind = match kind {
            Kind::Flush { .. } => Kind::Flush {
                mark: w.disks[leaf].completions,
            },
            other => other,
        };
        let due = w.now + latency;
        w.in_flight.push(InFlight {
            id,
            leaf,
            due,
            kind,
        });
        w.stats.max_in_flight = w.stats.max_in_flight.max(w.in_flight.len());
        if w.immediate {
            let waker = w.complete_next();
            debug_assert!(waker.is_none());
        }
        id
    }
}

/// Write `data` at `offset` into a crash image: whole, not at all, or torn.
fn land(image: &mut [u8], offset: u64, data: &[u8], rng: &mut Rng) {
    let all = rng.chance(40);
    let none = !all && rng.chance(30);
    for (s, sector) in data.chunks(SECTOR).enumerate() {
        if all || (!none && rng.chance(50)) {
            let at = offset as usize + s * SECTOR;
            image[at..at + sector.len()].copy_from_slice(sector);
        }
    }
}

impl World {
    /// Complete the operation due first (ties: submitted first); returns the
    /// waker of its future, to be woken without the lock held.
    fn complete_next(&mut self) -> Option<Waker> {
        let (at, _) = self
            .in_flight
            .iter()
            .enumerate()
            .min_by_key(|(_, op)| (op.due, op.id))?;
        let op = self.in_flight.remove(at);
        if self.in_flight.iter().any(|o| o.id < op.id) {
            self.stats.out_of_order += 1;
        }
        self.stats.completed += 1;
        self.now = self.now.max(op.due);
        let leaf = op.leaf;
        let mut data = Vec::new();
        let failed = matches!(
            op.kind,
            Kind::Write { discard: false, .. } | Kind::Flush { .. }
        ) && self.fails(leaf);
        match op.kind {
            Kind::Write { .. } | Kind::Flush { .. } if failed => {}
            Kind::Read { offset, len } => {
                let at = offset as usize;
                data = self.disks[leaf].volatile[at..at + len].to_vec();
                if let Some(i) = self.armed.iter().position(|f| {
                    matches!(*f, SimFault::FlipOnRead { leaf: l, offset: o }
                        if l == leaf && (offset..offset + len as u64).contains(&o))
                }) {
                    let SimFault::FlipOnRead { offset: o, .. } = self.armed.remove(i) else {
                        unreachable!("matched above")
                    };
                    let bit = self.rng.below(8);
                    data[(o - offset) as usize] ^= 1 << bit;
                    self.stats.faults_fired += 1;
                }
            }
            Kind::Write {
                offset,
                data: written,
                ..
            } => {
                let end = offset + written.len() as u64;
                if let Some(trace) = self.trace.as_mut() {
                    trace.push((leaf, offset, written.len()));
                }
                let fault = self.armed.iter().position(|f| {
                    f.leaf() == leaf
                        && match *f {
                            SimFault::LoseWrite { offset: o, .. } => (offset..end).contains(&o),
                            SimFault::MisdirectWrite { offset: o, .. } => o == offset,
                            SimFault::FlipOnRead { .. } | SimFault::FailIo { .. } => false,
                        }
                });
                let disk_len = self.disks[leaf].volatile.len() as u64;
                match fault.map(|i| self.armed.remove(i)) {
                    Some(SimFault::LoseWrite { .. }) => self.stats.faults_fired += 1,
                    Some(SimFault::MisdirectWrite { to, .. })
                        if to + written.len() as u64 <= disk_len =>
                    {
                        self.stats.faults_fired += 1;
                        self.disks[leaf].store(to, written);
                    }
                    _ => self.disks[leaf].store(offset, written),
                }
            }
            Kind::Flush { mark } => self.disks[leaf].flushed(mark),
        }
        self.disks[leaf].completions += 1;
        if !self.orphans.remove(&op.id) {
            let done = Done {
                result: if failed {
                    Err(Error::Io(libc::EIO))
                } else {
                    Ok(())
                },
                data,
            };
            self.done.insert(op.id, done);
        }
        self.wakers.remove(&op.id)
    }

    /// Whether this write or flush of `leaf` is the one an armed
    /// [`SimFault::FailIo`] fails; otherwise it counts toward it.
    fn fails(&mut self, leaf: usize) -> bool {
        let Some(i) = self
            .armed
            .iter()
            .position(|f| matches!(*f, SimFault::FailIo { leaf: l, .. } if l == leaf))
        else {
            return false;
        };
        if let SimFault::FailIo { skip, .. } = &mut self.armed[i] {
            if *skip > 0 {
                *skip -= 1;
                return false;
            }
        }
        self.armed.remove(i);
        self.stats.faults_fired += 1;
        true
    }
}

/// One simulated disk of a [`SimWorld`].
pub struct SimLeaf {
    world: Arc<SimWorld>,
    index: usize,
}

/// The future of one leaf operation: pending until the world completes it.
struct SimOp<'a> {
    world: &'a SimWorld,
    id: u64,
    out: Option<&'a mut [u8]>,
}

impl Future for SimOp<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut w = self.world.lock();
        match w.done.remove(&self.id) {
            Some(done) => {
                drop(w);
                if let Some(out) = self.out.take() {
                    out.copy_from_slice(&done.data);
                }
                Poll::Ready(done.result)
            }
            None => {
                w.wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for SimOp<'_> {
    fn drop(&mut self) {
        // A future dropped mid-flight: the operation still completes on the
        // disk, as it would on real hardware; nobody waits for its result.
        let mut w = self.world.lock();
        w.wakers.remove(&self.id);
        if w.done.remove(&self.id).is_none() {
            w.orphans.insert(self.id);
        }
    }
}

impl SimLeaf {
    async fn op(&self, kind: Kind, out: Option<&mut [u8]>) -> Result<()> {
        let id = self.world.submit(self.index, kind);
        SimOp {
            world: &self.world,
            id,
            out,
        }
        .await
    }

    async fn zero(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        self.check(offset, len)?;
        let data = vec![0u8; len as usize];
        self.op(
            Kind::Write {
                offset,
                data,
                discard,
            },
            None,
        )
        .await
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        let bad = offset % SECTOR as u64 != 0
            || len % SECTOR as u64 != 0
            || offset
                .checked_add(len)
                .map_or(true, |end| end > self.size());
        if bad {
            return Err(Error::OutOfRange);
        }
        Ok(())
    }
}

impl AsyncLayer for SimLeaf {
    fn size(&self) -> u64 {
        self.world.lock().disks[self.index].volatile.len() as u64
    }

    async fn grow(&self, _: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        let mut w = self.world.lock();
        let disk = &mut w.disks[self.index];
        let size = disk.volatile.len() as u64;
        if new_size < size {
            return Err(format!(
                "shrinking a simulated disk ({size} to {new_size} bytes) is not supported"
            ));
        }
        disk.volatile.resize(new_size as usize, 0);
        disk.durable.resize(new_size as usize, 0);
        Ok(())
    }

    async fn read(&self, _: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        let len = buf.len();
        self.op(Kind::Read { offset, len }, Some(&mut buf[..]))
            .await
    }

    async fn write(&self, _: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        let data = buf.to_vec();
        let discard = false;
        self.op(
            Kind::Write {
                offset,
                data,
                discard,
            },
            None,
        )
        .await
    }

    async fn flush(&self, _: &IoCtx) -> Result<()> {
        self.op(Kind::Flush { mark: 0 }, None).await
    }

    async fn discard(&self, _: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(offset, len, true).await
    }

    async fn write_zeroes(&self, _: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(offset, len, false).await
    }

    fn discard_frees_space(&self) -> bool {
        true
    }
    fn report(&self) -> LayerReport {
        // A simulated disk: memory, as far as status goes.
        LayerReport::Memory(NoDetails {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Executor;
    use crate::join::join_all;

    #[test]
    fn completions_wait_for_the_scheduler_and_come_out_of_order() {
        let world = SimWorld::new(7, vec![vec![0u8; 64 * 1024]]);
        world.set_immediate(false);
        let leaf = world.leaf(0);
        let ctx = IoCtx::new(0, 8).unwrap();
        let exec = Executor::new().unwrap();
        let bufs: Vec<Vec<u8>> = (0..32u8).map(|i| vec![i; 512]).collect();
        let futs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Box::pin(crate::Layer::write_bytes(&leaf, &ctx, i as u64 * 512, b))
                    as crate::LocalBoxFuture<'_, Result<()>>
            })
            .collect();
        let mut all = join_all(futs);
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut all).poll(&mut cx).is_pending());
        assert_eq!(world.in_flight(), 32);
        while world.step() {}
        let results = exec.block_on(&ctx, all);
        assert!(results.iter().all(|r| r.is_ok()));
        let stats = world.stats();
        assert!(stats.out_of_order > 0, "{stats:?}");
        assert_eq!(stats.max_in_flight, 32);
        assert_eq!(world.image(0)[31 * 512], 31);
    }

    #[test]
    fn a_crash_keeps_flushed_writes_and_may_drop_the_rest() {
        let world = SimWorld::new(1, vec![vec![0u8; 4096]]);
        let leaf = world.leaf(0);
        let ctx = IoCtx::new(0, 8).unwrap();
        let exec = Executor::new().unwrap();
        exec.block_on(
            &ctx,
            crate::Layer::write_bytes(&leaf, &ctx, 0, &[1u8; 1024]),
        )
        .unwrap();
        exec.block_on(&ctx, leaf.flush(&ctx)).unwrap();
        exec.block_on(
            &ctx,
            crate::Layer::write_bytes(&leaf, &ctx, 1024, &[2u8; 2048]),
        )
        .unwrap();
        let mut rng = Rng::new(3);
        let (mut kept, mut lost) = (0, 0);
        for _ in 0..100 {
            let image = &world.crash_images(&mut rng)[0];
            assert_eq!(&image[..1024], &[1u8; 1024]);
            for sector in image[1024..3072].chunks(SECTOR) {
                assert!(sector == [2u8; SECTOR] || sector == [0u8; SECTOR]);
                if sector[0] == 2 {
                    kept += 1;
                } else {
                    lost += 1;
                }
            }
        }
        assert!(kept > 0 && lost > 0);
    }

    #[test]
    fn faults_fire_once_where_armed() {
        let world = SimWorld::new(1, vec![vec![0u8; 8192]]);
        let leaf = world.leaf(0);
        let ctx = IoCtx::new(0, 8).unwrap();
        let exec = Executor::new().unwrap();
        world.arm(SimFault::LoseWrite {
            leaf: 0,
            offset: 512,
        });
        exec.block_on(
            &ctx,
            crate::Layer::write_bytes(&leaf, &ctx, 0, &[5u8; 1024]),
        )
        .unwrap();
        assert_eq!(world.image(0)[512], 0, "lost");
        world.arm(SimFault::MisdirectWrite {
            leaf: 0,
            offset: 0,
            to: 4096,
        });
        exec.block_on(&ctx, crate::Layer::write_bytes(&leaf, &ctx, 0, &[6u8; 512]))
            .unwrap();
        assert_eq!((world.image(0)[0], world.image(0)[4096]), (0, 6));
        world.arm(SimFault::FlipOnRead {
            leaf: 0,
            offset: 4100,
        });
        let mut buf = [0u8; 512];
        exec.block_on(&ctx, crate::Layer::read_bytes(&leaf, &ctx, 4096, &mut buf))
            .unwrap();
        assert_ne!(buf[4], 6);
        exec.block_on(&ctx, crate::Layer::read_bytes(&leaf, &ctx, 4096, &mut buf))
            .unwrap();
        assert_eq!(buf[4], 6);
        exec.block_on(&ctx, leaf.flush(&ctx)).unwrap();
        exec.block_on(
            &ctx,
            crate::Layer::write_bytes(&leaf, &ctx, 4096, &[7u8; 512]),
        )
        .unwrap();
        exec.block_on(&ctx, leaf.flush(&ctx)).unwrap();
        assert!(world.rollback(0, 4096, 512));
        assert_eq!(world.image(0)[4096], 6);
        assert!(!world.rollback(0, 0, 512), "never flushed a change there");
        assert_eq!(world.stats().faults_fired, 4);
    }

    #[test]
    fn the_armed_write_or_flush_fails_and_stores_nothing() {
        let world = SimWorld::new(1, vec![vec![0u8; 4096]]);
        let leaf = world.leaf(0);
        let ctx = IoCtx::new(0, 8).unwrap();
        let exec = Executor::new().unwrap();
        let write = |at: u64, byte: u8| {
            exec.block_on(
                &ctx,
                crate::Layer::write_bytes(&leaf, &ctx, at, &[byte; 512]),
            )
        };
        world.arm(SimFault::FailIo { leaf: 0, skip: 2 });
        write(0, 1).unwrap();
        exec.block_on(&ctx, leaf.flush(&ctx)).unwrap();
        assert_eq!(write(512, 2), Err(Error::Io(libc::EIO)));
        assert_eq!(world.image(0)[512], 0, "a failed write stores nothing");
        write(512, 3).unwrap();
        world.arm(SimFault::FailIo { leaf: 0, skip: 0 });
        assert_eq!(
            exec.block_on(&ctx, leaf.flush(&ctx)),
            Err(Error::Io(libc::EIO))
        );
        let image = &world.crash_images(&mut Rng::new(1))[0];
        assert_eq!(image[0], 1, "flushed before");
        assert!(world.armed().is_empty());
        exec.block_on(&ctx, AsyncLayer::grow(&leaf, &ctx, 8192))
            .unwrap();
        assert_eq!(leaf.size(), 8192);
        write(8192 - 512, 4).unwrap();
        assert_eq!(world.image(0)[8191], 4);
    }
}

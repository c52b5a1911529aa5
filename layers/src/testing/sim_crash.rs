//! Crash replay under concurrency: the stack runs over simulated disks
//! ([`super::sim`]) on the real per-queue executors, several queues with several
//! tasks each, and the power is cut at random instants while operations are in
//! flight at every level.
//!
//! Every `memory` leaf of the plan becomes a simulated disk of the same size.
//! The executors of all queues run on this thread in lockstep: each round
//! polls every queue's woken tasks (a `block_on` of a future that yields once),
//! then the world completes the leaf operation due first. The simulation is the
//! only source of ordering, so a run is a function of its seed, except for what
//! the layers draw from the kernel themselves (uuids, crypt nonces), which
//! changes bytes on disk but not the order of events.
//!
//! Each task issues random writes, discards, write_zeroes, reads and flushes on
//! ranges no other task is using; reads are checked against the last
//! acknowledged contents. At a crash instant the images the disks would hold
//! after a power cut (see [`SimWorld::crash_images`]) are reopened with the same
//! plan and every block must read as its last flushed contents or a newer write
//! issued before the crash. EIO is allowed only for a block written since the
//! last completed flush (a torn block under crypt or checksum).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::sim::{SimStats, SimWorld, SECTOR};
use crate::exec::{Executor, IoCtx};
use crate::plan::{LayerId, LayerSpec, Plan};
use crate::rng::Rng;
use crate::{compile_with, Error, Layer, Stack};

/// How hard to drive one run.
#[derive(Clone, Copy, Debug)]
pub struct SimCrashConfig {
    pub queues: u16,
    pub tasks_per_queue: usize,
    /// Top-level operations in the whole run.
    pub ops: usize,
    /// Mean number of leaf completions between two crash instants.
    pub crash_every: u64,
    /// Crash images drawn and checked at each instant.
    pub images_per_crash: usize,
}

impl Default for SimCrashConfig {
    fn default() -> Self {
        SimCrashConfig {
            queues: 3,
            tasks_per_queue: 6,
            ops: 600,
            crash_every: 4,
            images_per_crash: 2,
        }
    }
}

/// Totals of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimCrashReport {
    /// Crash images reopened and checked.
    pub crash_points: usize,
    pub instants: usize,
    pub blocks_checked: u64,
    /// Blocks that read as EIO after a crash (torn, written since the last flush).
    pub torn_eio: u64,
    /// Reads during the run checked against the last acknowledged contents.
    pub reads_checked: u64,
    pub sim: SimStats,
}

impl SimCrashReport {
    pub fn add(&mut self, other: &SimCrashReport) {
        self.crash_points += other.crash_points;
        self.instants += other.instants;
        self.blocks_checked += other.blocks_checked;
        self.torn_eio += other.torn_eio;
        self.reads_checked += other.reads_checked;
        self.sim.completed += other.sim.completed;
        self.sim.out_of_order += other.sim.out_of_order;
        self.sim.max_in_flight = self.sim.max_in_flight.max(other.sim.max_in_flight);
    }
}

/// A check run on the stack reopened after each crash.
pub type AfterReopen<'a> = &'a dyn Fn(&Stack) -> std::result::Result<(), String>;

/// One top-level write (or flush, `write == None`) as the workload saw it, by
/// the workload's clock. `acked == u64::MAX` while in flight.
struct Rec {
    issued: u64,
    acked: u64,
    write: Option<(u64, Rc<Vec<u8>>)>,
}

struct Shared {
    stack: Stack,
    block: u64,
    blocks: u64,
    rng: RefCell<Rng>,
    clock: Cell<u64>,
    ops_left: Cell<usize>,
    busy: RefCell<Vec<bool>>,
    /// Last acknowledged contents of each block (`None`: zeros).
    latest: RefCell<Vec<Option<Rc<Vec<u8>>>>>,
    history: RefCell<Vec<Rec>>,
    reads_checked: Cell<u64>,
    error: RefCell<Option<String>>,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.set(self.clock.get() + 1);
        self.clock.get()
    }

    fn fail(&self, message: String) {
        self.error.borrow_mut().get_or_insert(message);
    }
}

/// Leaves of `plan` (by layer id) and their sizes: every `memory` layer.
pub fn sim_leaves(plan: &Plan) -> Vec<(LayerId, u64)> {
    plan.walk()
        .into_iter()
        .filter_map(|id| match plan.layers[id].spec {
            LayerSpec::Memory(ref p) => Some((id, p.size_bytes)),
            _ => None,
        })
        .collect()
}

/// Compile `plan` with its `memory` leaves served by the disks of `world`, in
/// the order of [`sim_leaves`].
pub fn compile_over_sim(plan: &Plan, world: &Arc<SimWorld>) -> std::result::Result<Stack, String> {
    let leaves = sim_leaves(plan);
    compile_with(plan, &mut |id| {
        let index = leaves.iter().position(|&(l, _)| l == id)?;
        Some(Arc::new(world.leaf(index)) as Arc<dyn Layer>)
    })
    .map_err(|e| e.to_string())
}

/// A future that is pending once: `block_on` of it runs exactly one turn of an
/// executor, polling every task woken so far, without sleeping.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Run `cfg.ops` random operations on `plan` (whose leaves must be `memory`
/// layers) over simulated disks and check a crash at random instants. Errors
/// name the seed and how to replay it.
pub fn sim_crash_replay(
    plan: &Plan,
    seed: u64,
    cfg: &SimCrashConfig,
    after_reopen: AfterReopen<'_>,
) -> std::result::Result<SimCrashReport, String> {
    run(plan, seed, cfg, after_reopen)
        .map_err(|e| format!("seed {seed}: {e} (replay: UBLK_STACK_SEED={seed})"))
}

fn run(
    plan: &Plan,
    seed: u64,
    cfg: &SimCrashConfig,
    after_reopen: AfterReopen<'_>,
) -> std::result::Result<SimCrashReport, String> {
    let mut rng = Rng::new(seed);
    let images: Vec<Vec<u8>> = sim_leaves(plan)
        .iter()
        .map(|&(_, size)| vec![0u8; size as usize])
        .collect();
    let world = SimWorld::new(rng.next_u64(), images);
    let stack = compile_over_sim(plan, &world)?;
    let block = u64::from(plan.device.block_size);
    let blocks = stack.size() / block;
    let ctxs: Vec<Rc<IoCtx>> = (0..cfg.queues)
        .map(|q| IoCtx::new(q, 64).map(Rc::new))
        .collect::<std::io::Result<_>>()
        .map_err(|e| e.to_string())?;
    let execs: Vec<Executor> = (0..cfg.queues)
        .map(|_| Executor::new())
        .collect::<std::io::Result<_>>()
        .map_err(|e| e.to_string())?;
    // The freshly formatted device is the first flushed state.
    execs[0]
        .block_on(&ctxs[0], stack.flush(&ctxs[0]))
        .map_err(|e| format!("flush after format failed: {e}"))?;
    world.set_immediate(false);
    let shared = Rc::new(Shared {
        stack,
        block,
        blocks,
        rng: RefCell::new(Rng::new(rng.next_u64())),
        clock: Cell::new(0),
        ops_left: Cell::new(cfg.ops),
        busy: RefCell::new(vec![false; blocks as usize]),
        latest: RefCell::new(vec![None; blocks as usize]),
        history: RefCell::new(Vec::new()),
        reads_checked: Cell::new(0),
        error: RefCell::new(None),
    });
    for (exec, ctx) in execs.iter().zip(&ctxs) {
        for _ in 0..cfg.tasks_per_queue {
            exec.spawn(worker(shared.clone(), ctx.clone()));
        }
    }
    let mut report = SimCrashReport::default();
    let check_ctx = IoCtx::new(0, 16).map_err(|e| e.to_string())?;
    let check_exec = Executor::new().map_err(|e| e.to_string())?;
    let mut next_crash = 1 + rng.below(2 * cfg.crash_every);
    let mut idle_rounds = 0;
    for steps in 0u64.. {
        for (exec, ctx) in execs.iter().zip(&ctxs) {
            exec.block_on(ctx, YieldOnce(false));
        }
        if let Some(e) = shared.error.borrow_mut().take() {
            return Err(e);
        }
        if execs.iter().all(|e| e.live_tasks() == 0) {
            break;
        }
        if steps == next_crash {
            next_crash += 1 + rng.below(2 * cfg.crash_every);
            report.instants += 1;
            for _ in 0..cfg.images_per_crash {
                let images = world.crash_images(&mut rng);
                check_crash(
                    plan,
                    images,
                    &shared,
                    rng.next_u64(),
                    (&check_ctx, &check_exec),
                    &mut report,
                    after_reopen,
                )
                .map_err(|e| {
                    format!(
                        "crash at leaf completion {steps} (workload clock {}): {e}",
                        shared.clock.get()
                    )
                })?;
                report.crash_points += 1;
            }
        }
        if world.step() {
            idle_rounds = 0;
        } else {
            // Nothing in flight: tasks woken across queues run next round; if
            // none ever does, the stack is stuck.
            idle_rounds += 1;
            if idle_rounds > 8 {
                return Err(format!(
                    "stuck: {} tasks wait and no leaf operation is in flight",
                    execs.iter().map(Executor::live_tasks).sum::<usize>()
                ));
            }
        }
        if steps > 50_000_000 {
            return Err("the run did not finish in 50,000,000 steps".into());
        }
    }
    report.reads_checked = shared.reads_checked.get();
    report.sim = world.stats();
    Ok(report)
}

async fn worker(sh: Rc<Shared>, ctx: Rc<IoCtx>) {
    let top = sh.stack.top();
    while sh.ops_left.get() > 0 && sh.error.borrow().is_none() {
        let (kind, first, n) = {
            let mut rng = sh.rng.borrow_mut();
            let kind = rng.below(100);
            let n = 1 + rng.below(4.min(sh.blocks));
            let first = rng.below(sh.blocks - n + 1);
            (kind, first, n)
        };
        let range = first as usize..(first + n) as usize;
        if kind < 92 && sh.busy.borrow()[range.clone()].iter().any(|&b| b) {
            // Another task uses the range: let the others run, then draw again.
            YieldOnce(false).await;
            continue;
        }
        sh.ops_left.set(sh.ops_left.get() - 1);
        if kind >= 92 {
            let issued = sh.tick();
            let at = push(&sh, issued, None);
            if let Err(e) = top.flush(&ctx).await {
                return sh.fail(format!("flush failed during the run: {e}"));
            }
            sh.history.borrow_mut()[at].acked = sh.tick();
            continue;
        }
        sh.busy.borrow_mut()[range.clone()].fill(true);
        let (offset, len) = (first * sh.block, n * sh.block);
        if kind >= 75 {
            let mut buf = vec![0xA5u8; len as usize];
            if let Err(e) = top.read_bytes(&ctx, offset, &mut buf).await {
                return sh.fail(format!("read at {offset} failed during the run: {e}"));
            }
            let latest = sh.latest.borrow();
            for (i, got) in buf.chunks(sh.block as usize).enumerate() {
                let b = first as usize + i;
                let ok = match &latest[b] {
                    Some(want) => **want == *got,
                    None => got.iter().all(|&x| x == 0),
                };
                if !ok {
                    return sh.fail(format!(
                        "block {b} read during the run is not its last acknowledged contents"
                    ));
                }
            }
            sh.reads_checked.set(sh.reads_checked.get() + n);
        } else {
            let mut data = vec![0u8; len as usize];
            if kind < 60 {
                let mut rng = sh.rng.borrow_mut();
                // Half compressible, so that `compress` stores both kinds.
                if rng.chance(50) {
                    rng.fill(&mut data);
                } else {
                    super::fill_text(&mut rng, &mut data);
                }
            }
            let data = Rc::new(data);
            let issued = sh.tick();
            let at = push(&sh, issued, Some((offset, data.clone())));
            let res = match kind {
                0..=59 => top.write_bytes(&ctx, offset, &data).await,
                60..=67 => top.discard(&ctx, offset, len).await,
                _ => top.write_zeroes(&ctx, offset, len).await,
            };
            if let Err(e) = res {
                return sh.fail(format!("write of {len} bytes at {offset} failed: {e}"));
            }
            sh.history.borrow_mut()[at].acked = sh.tick();
            let mut latest = sh.latest.borrow_mut();
            for (i, chunk) in data.chunks(sh.block as usize).enumerate() {
                latest[first as usize + i] = Some(Rc::new(chunk.to_vec()));
            }
        }
        sh.busy.borrow_mut()[range].fill(false);
    }
}

fn push(sh: &Shared, issued: u64, write: Option<(u64, Rc<Vec<u8>>)>) -> usize {
    let mut history = sh.history.borrow_mut();
    history.push(Rec {
        issued,
        acked: u64::MAX,
        write,
    });
    history.len() - 1
}

fn check_crash(
    plan: &Plan,
    images: Vec<Vec<u8>>,
    sh: &Shared,
    seed: u64,
    (ctx, exec): (&IoCtx, &Executor),
    report: &mut SimCrashReport,
    after_reopen: AfterReopen<'_>,
) -> std::result::Result<(), String> {
    let now = sh.clock.get();
    let world = SimWorld::new(seed, images);
    let stack = compile_over_sim(plan, &world).map_err(|e| format!("reopen failed: {e}"))?;
    let history = sh.history.borrow();
    // Writes acknowledged before the last completed flush was issued are flushed.
    let flushed_at = history
        .iter()
        .filter(|r| r.write.is_none() && r.acked <= now)
        .map(|r| r.issued)
        .max()
        .unwrap_or(0);
    let block = sh.block;
    let zero = vec![0u8; block as usize];
    let torn_ok = !plan.layers.iter().any(|l| {
        matches!(
            l.spec,
            LayerSpec::Checksum(_) | LayerSpec::Crypt(_) | LayerSpec::Compress(_)
        )
    });
    // Read in chunks; a chunk that fails is read again block by block.
    const CHUNK: u64 = 32;
    let mut chunk = vec![0u8; (CHUNK * block) as usize];
    let mut one = vec![0u8; block as usize];
    for first in (0..sh.blocks).step_by(CHUNK as usize) {
        let n = CHUNK.min(sh.blocks - first);
        let buf = &mut chunk[..(n * block) as usize];
        let whole = exec.block_on(ctx, stack.top().read_bytes(ctx, first * block, buf));
        for b in first..first + n {
            let offset = b * block;
            let mut base: (u64, &[u8]) = (0, &zero);
            let mut newer: Vec<&[u8]> = Vec::new();
            for r in history.iter() {
                let Some((o, data)) = &r.write else { continue };
                if offset < *o || offset >= *o + data.len() as u64 {
                    continue;
                }
                let at = (offset - o) as usize;
                let value = &data[at..at + block as usize];
                if r.acked < flushed_at {
                    if r.acked >= base.0 {
                        base = (r.acked, value);
                    }
                } else if r.issued <= now {
                    newer.push(value);
                }
            }
            let res = match whole {
                Ok(()) => {
                    let at = ((b - first) * block) as usize;
                    one.copy_from_slice(&buf[at..at + block as usize]);
                    Ok(())
                }
                Err(_) => exec.block_on(ctx, stack.top().read_bytes(ctx, offset, &mut one)),
            };
            match res {
                Ok(()) => {
                    let whole = one == base.1 || newer.iter().any(|v| *v == &one[..]);
                    // Without an integrity layer a torn block reads as a mix of
                    // sectors (disks write 512 bytes atomically, no more).
                    let mixed = torn_ok
                        && one.chunks(SECTOR).enumerate().all(|(i, s)| {
                            let r = i * SECTOR..(i + 1) * SECTOR;
                            base.1[r.clone()] == *s || newer.iter().any(|v| v[r.clone()] == *s)
                        });
                    if !whole && !mixed {
                        return Err(format!(
                            "block {b} reads {} instead of its last flushed contents ({}) \
                             or one of its {} newer writes (last completed flush issued at \
                             clock {flushed_at})",
                            describe(&history, offset, &one),
                            describe(&history, offset, base.1),
                            newer.len()
                        ));
                    }
                }
                Err(Error::Corrupt { .. }) if !newer.is_empty() => report.torn_eio += 1,
                Err(e) => {
                    return Err(format!(
                        "block {b} fails with {e} although {}",
                        if newer.is_empty() {
                            "all its writes were flushed"
                        } else {
                            "it is not a torn block"
                        }
                    ))
                }
            }
            report.blocks_checked += 1;
        }
    }
    after_reopen(&stack)
}

/// Which write of the history put `value` in the block at `offset`, for messages.
fn describe(history: &[Rec], offset: u64, value: &[u8]) -> String {
    if value.iter().all(|&b| b == 0) {
        return "zeros".into();
    }
    let found = history.iter().rev().find(|r| match &r.write {
        Some((o, data)) if *o <= offset && offset < *o + data.len() as u64 => {
            let at = (offset - o) as usize;
            data[at..at + value.len()] == *value
        }
        _ => false,
    });
    match found {
        Some(r) => format!(
            "the data of the write issued at clock {} and acknowledged at {}",
            r.issued, r.acked
        ),
        None => "bytes no write put there".into(),
    }
}

//! Mirror acknowledgements under leg failures at every step: a small workload
//! of writes (two at a time) and FLUSHes runs over legs that fail their N-th
//! operation (every N; once or for good; with or without the operation taking
//! effect; and every pair N < M), which covers the data writes, the flushes, and
//! the write and flush of the state record on the surviving legs. After each
//! case the legs are reopened twice: as they are (nothing lost) and as only
//! their flushed contents (a crash). Then, by the newest state record on the
//! legs, no leg recorded ok misses an acknowledged write (in the crash case: one
//! acknowledged before an acknowledged FLUSH), some leg is recorded ok, and the
//! reopened mirror reads that data.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use layers::exec::{Executor, IoCtx};
use layers::join::join_all;
use layers::mirror::state::{Record, RECORD_AT, RECORD_BYTES};
use layers::mirror::{Health, Mirror, DATA_START};
use layers::plan::ReadPolicy;
use layers::report::{LayerReport, NoDetails};
use layers::{Error, IoBuf, IoBufMut, Layer, Result};

const BLOCK: usize = 512;
/// Four write-intent regions of 64 KiB.
const DATA_BYTES: u64 = 256 << 10;
const LEG_BYTES: u64 = DATA_START + DATA_BYTES;
const BLOCKS: usize = (DATA_BYTES as usize) / BLOCK;

/// What a leg holds: what reads see, and what a crash keeps.
#[derive(Clone)]
struct Image {
    current: Vec<u8>,
    flushed: Vec<u8>,
}

/// Which operations fail, counted over all legs once armed.
#[derive(Default)]
struct Injector {
    armed: AtomicBool,
    count: AtomicUsize,
    fail_at: Vec<usize>,
    /// The failing operation still takes effect (e.g. written, then an error).
    effect: bool,
    /// A leg that failed once fails everything after.
    sticky: bool,
    dead: Vec<AtomicBool>,
}

struct TestLeg {
    index: usize,
    image: Arc<Mutex<Image>>,
    inject: Arc<Injector>,
}

enum Op<'a> {
    Read(u64, &'a mut [u8]),
    Write(u64, &'a [u8]),
    Zero(u64, u64),
    Flush,
}

/// Pending once, so that concurrent requests interleave at every operation.
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

impl TestLeg {
    async fn run(&self, op: Op<'_>) -> Result<()> {
        YieldOnce(false).await;
        let inject = &self.inject;
        let mut fail = false;
        if inject.armed.load(Ordering::SeqCst) {
            if inject.dead[self.index].load(Ordering::SeqCst) {
                return Err(Error::Io(libc::EIO));
            }
            let n = inject.count.fetch_add(1, Ordering::SeqCst);
            if inject.fail_at.contains(&n) {
                fail = true;
                if inject.sticky {
                    inject.dead[self.index].store(true, Ordering::SeqCst);
                }
                if !inject.effect {
                    return Err(Error::Io(libc::EIO));
                }
            }
        }
        let mut image = self.image.lock().unwrap();
        match op {
            Op::Read(at, buf) => buf.copy_from_slice(&image.current[at as usize..][..buf.len()]),
            Op::Write(at, buf) => image.current[at as usize..][..buf.len()].copy_from_slice(buf),
            Op::Zero(at, len) => image.current[at as usize..][..len as usize].fill(0),
            Op::Flush => {
                let Image { current, flushed } = &mut *image;
                flushed.copy_from_slice(current);
            }
        }
        if fail {
            Err(Error::Io(libc::EIO))
        } else {
            Ok(())
        }
    }
}

impl layers::AsyncLayer for TestLeg {
    fn size(&self) -> u64 {
        LEG_BYTES
    }
    async fn read(&self, _: &IoCtx, at: u64, buf: &mut IoBufMut) -> Result<()> {
        self.run(Op::Read(at, buf)).await
    }
    async fn write(&self, _: &IoCtx, at: u64, buf: &IoBuf) -> Result<()> {
        self.run(Op::Write(at, buf)).await
    }
    async fn flush(&self, _: &IoCtx) -> Result<()> {
        self.run(Op::Flush).await
    }
    async fn discard(&self, _: &IoCtx, at: u64, len: u64) -> Result<()> {
        self.run(Op::Zero(at, len)).await
    }
    async fn write_zeroes(&self, _: &IoCtx, at: u64, len: u64) -> Result<()> {
        self.run(Op::Zero(at, len)).await
    }
    fn report(&self) -> LayerReport {
        LayerReport::Memory(NoDetails {})
    }
}

/// One step of the workload: writes issued together (block, tag), or a FLUSH.
enum Step {
    Writes(&'static [(usize, u8)]),
    Flush,
}

/// Blocks in several regions, overwrites, writes with no FLUSH after them.
const WORKLOAD: &[Step] = &[
    Step::Writes(&[(0, 1), (200, 2)]),
    Step::Flush,
    Step::Writes(&[(0, 3), (300, 4)]),
    Step::Writes(&[(130, 5), (200, 6)]),
    Step::Flush,
    Step::Writes(&[(5, 7), (300, 8)]),
    Step::Flush,
    Step::Writes(&[(0, 9), (450, 10)]),
];

/// Tags a block may hold after a reopen: `0` is zeros.
#[derive(Clone)]
struct Allowed(Vec<Vec<u8>>);

impl Allowed {
    fn new() -> Allowed {
        Allowed(vec![vec![0]; BLOCKS])
    }
}

/// What the workload got acknowledged: the tags each block may hold with nothing
/// lost, and after a crash (only flushed contents kept).
struct Outcome {
    current: Allowed,
    crashed: Allowed,
    acked_writes: usize,
    acked_flushes_after_writes: usize,
}

fn tag_of(block: &[u8]) -> Option<u8> {
    block.iter().all(|&b| b == block[0]).then_some(block[0])
}

fn run_workload(ctx: &IoCtx, exec: &Executor, mirror: &Mirror) -> Outcome {
    // `current`: the last acknowledged tag, plus any failed write after it.
    // `crashed`: the tags as of the last acknowledged FLUSH, plus every write
    // issued after it.
    let mut current = Allowed::new();
    let mut crashed = Allowed::new();
    let mut since_flush: Vec<(usize, u8)> = Vec::new();
    let mut acked_writes = 0;
    let mut acked_flushes_after_writes = 0;
    let mut acked_since_flush = false;
    for step in WORKLOAD {
        match step {
            Step::Writes(writes) => {
                let bufs: Vec<Vec<u8>> = writes.iter().map(|&(_, tag)| vec![tag; BLOCK]).collect();
                let futs = writes
                    .iter()
                    .zip(&bufs)
                    .map(|(&(block, _), buf)| mirror.write_bytes(ctx, (block * BLOCK) as u64, buf))
                    .collect();
                let results = exec.block_on(ctx, join_all(futs));
                for (&(block, tag), res) in writes.iter().zip(results) {
                    since_flush.push((block, tag));
                    crashed.0[block].push(tag);
                    if res.is_ok() {
                        current.0[block] = vec![tag];
                        acked_writes += 1;
                        acked_since_flush = true;
                    } else {
                        current.0[block].push(tag);
                    }
                }
            }
            Step::Flush => {
                if exec.block_on(ctx, mirror.flush(ctx)).is_ok() {
                    // Every block now holds its acknowledged tag durably, or a
                    // failed write's.
                    crashed = current.clone();
                    since_flush.clear();
                    acked_flushes_after_writes += usize::from(acked_since_flush);
                    acked_since_flush = false;
                }
            }
        }
    }
    Outcome {
        current,
        crashed,
        acked_writes,
        acked_flushes_after_writes,
    }
}

/// The newest readable state record on any leg.
fn newest_record(images: &[Image], crashed: bool) -> Option<Record> {
    images
        .iter()
        .flat_map(|image| {
            let bytes = if crashed {
                &image.flushed
            } else {
                &image.current
            };
            (0..2).filter_map(move |slot| {
                let at = RECORD_AT as usize + slot * RECORD_BYTES;
                Record::decode(&bytes[at..at + RECORD_BYTES])
            })
        })
        .max_by_key(|r| r.generation)
}

/// Check one reopening (as is, or crashed); Err says what is wrong.
fn check(
    ctx: &IoCtx,
    exec: &Executor,
    images: &[Image],
    crashed: bool,
    outcome: &Outcome,
) -> std::result::Result<(), String> {
    let (allowed, must_survive) = if crashed {
        (&outcome.crashed, outcome.acked_flushes_after_writes > 0)
    } else {
        (&outcome.current, outcome.acked_writes > 0)
    };
    let record = newest_record(images, crashed).ok_or("no leg holds a state record")?;
    let ok_legs: Vec<usize> = (0..images.len())
        .filter(|&i| record.health[i] == Health::Ok)
        .collect();
    if must_survive && ok_legs.is_empty() {
        return Err(format!(
            "acknowledged data, but no leg is recorded ok: {:?}",
            record.health
        ));
    }
    for &i in &ok_legs {
        let bytes = if crashed {
            &images[i].flushed
        } else {
            &images[i].current
        };
        for (block, tags) in allowed.0.iter().enumerate() {
            let at = DATA_START as usize + block * BLOCK;
            let tag = tag_of(&bytes[at..at + BLOCK]);
            if !tag.is_some_and(|t| tags.contains(&t)) {
                return Err(format!(
                    "leg {i} is recorded ok (generation {}, {:?}) but block {block} holds {tag:?}, \
                     not one of {tags:?}",
                    record.generation, record.health
                ));
            }
        }
    }
    if ok_legs.is_empty() {
        return Ok(());
    }
    // The reopened mirror (with its open-time resync) reads that data too.
    let legs: Vec<Arc<dyn Layer>> = images
        .iter()
        .enumerate()
        .map(|(index, image)| {
            let bytes = if crashed {
                &image.flushed
            } else {
                &image.current
            };
            Arc::new(TestLeg {
                index,
                image: Arc::new(Mutex::new(Image {
                    current: bytes.clone(),
                    flushed: bytes.clone(),
                })),
                inject: Arc::new(Injector::default()),
            }) as Arc<dyn Layer>
        })
        .collect();
    let mirror = exec.block_on(
        ctx,
        Mirror::open(ctx, legs, ReadPolicy::First, BLOCK as u32),
    )?;
    let mut data = vec![0u8; DATA_BYTES as usize];
    exec.block_on(ctx, mirror.read_bytes(ctx, 0, &mut data))
        .map_err(|e| format!("reopened mirror: read: {e}"))?;
    for (block, tags) in allowed.0.iter().enumerate() {
        let tag = tag_of(&data[block * BLOCK..][..BLOCK]);
        if !tag.is_some_and(|t| tags.contains(&t)) {
            return Err(format!(
                "reopened mirror reads {tag:?} at block {block}, not one of {tags:?}"
            ));
        }
    }
    Ok(())
}

struct Case {
    legs: usize,
    fail_at: Vec<usize>,
    effect: bool,
    sticky: bool,
}

/// Run the workload once; returns the operations it took on the legs.
fn run_case(ctx: &IoCtx, exec: &Executor, case: &Case) -> std::result::Result<usize, String> {
    let inject = Arc::new(Injector {
        fail_at: case.fail_at.clone(),
        effect: case.effect,
        sticky: case.sticky,
        dead: (0..case.legs).map(|_| AtomicBool::new(false)).collect(),
        ..Injector::default()
    });
    let images: Vec<Arc<Mutex<Image>>> = (0..case.legs)
        .map(|_| {
            Arc::new(Mutex::new(Image {
                current: vec![0; LEG_BYTES as usize],
                flushed: vec![0; LEG_BYTES as usize],
            }))
        })
        .collect();
    let legs: Vec<Arc<dyn Layer>> = images
        .iter()
        .enumerate()
        .map(|(index, image)| {
            Arc::new(TestLeg {
                index,
                image: image.clone(),
                inject: inject.clone(),
            }) as Arc<dyn Layer>
        })
        .collect();
    let mirror = exec.block_on(
        ctx,
        Mirror::open(ctx, legs, ReadPolicy::First, BLOCK as u32),
    )?;
    // A formatted mirror is where the story starts: flushed on every leg.
    exec.block_on(ctx, mirror.flush(ctx))
        .map_err(|e| e.to_string())?;
    inject.armed.store(true, Ordering::SeqCst);
    let outcome = run_workload(ctx, exec, &mirror);
    inject.armed.store(false, Ordering::SeqCst);
    drop(mirror);
    let snapshot: Vec<Image> = images.iter().map(|i| i.lock().unwrap().clone()).collect();
    for crashed in [false, true] {
        check(ctx, exec, &snapshot, crashed, &outcome).map_err(|e| {
            let how = if crashed {
                "after a crash"
            } else {
                "reopened as is"
            };
            format!(
                "{} legs, failing operations {:?} (effect {}, sticky {}), {how}: {e}",
                case.legs, case.fail_at, case.effect, case.sticky
            )
        })?;
    }
    Ok(inject.count.load(Ordering::SeqCst))
}

fn every_failure(legs: usize) {
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    let total = run_case(
        &ctx,
        &exec,
        &Case {
            legs,
            fail_at: Vec::new(),
            effect: false,
            sticky: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(total > 20, "the workload took only {total} leg operations");
    let mut cases = 0;
    for n in 0..total {
        for effect in [false, true] {
            for sticky in [false, true] {
                let case = Case {
                    legs,
                    fail_at: vec![n],
                    effect,
                    sticky,
                };
                run_case(&ctx, &exec, &case).unwrap_or_else(|e| panic!("{e}"));
                cases += 1;
            }
        }
        // A second failure anywhere later: while the first is being recorded,
        // or on the leg that holds the only good copy.
        for m in n + 1..total {
            let case = Case {
                legs,
                fail_at: vec![n, m],
                effect: false,
                sticky: true,
            };
            run_case(&ctx, &exec, &case).unwrap_or_else(|e| panic!("{e}"));
            cases += 1;
        }
    }
    eprintln!(
        "{legs} legs: {total} leg operations in the workload, {cases} failure cases, 0 violations"
    );
}

#[test]
fn two_legs_every_failure_point_keeps_acknowledged_writes_on_an_ok_leg() {
    every_failure(2);
}

#[test]
fn three_legs_every_failure_point_keeps_acknowledged_writes_on_an_ok_leg() {
    every_failure(3);
}

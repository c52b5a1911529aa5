//! Crash replay, in the manner of dm-log-writes.
//!
//! Every leaf of the stack under test is a [`RecordingLeaf`]: it serves I/O from
//! memory and appends each write, zeroing and flush to one journal shared by all
//! leaves. A random workload runs on the stack while the checker notes, for every
//! top-level operation, the journal positions at which it was issued and
//! acknowledged. A crash at journal position `k` is then built explicitly: per
//! leaf, every write before that leaf's last flush before `k` is durable, and of
//! the later ones a random subset survives, multi-sector writes possibly torn at
//! 512-byte sectors. The same plan is compiled over the crash images, and every
//! block must read as its last flushed contents or a newer acknowledged (or
//! in-flight) one. A block may read as an explicit EIO only if it was written
//! after the last completed flush (a torn block under crypt or checksum); a block
//! whose every write was flushed must read back exactly.

use std::sync::{Arc, Mutex};

use crate::exec::{Executor, IoCtx};
use crate::join::join_all;
use crate::plan::{LayerId, LayerSpec, Plan};
use crate::report::{LayerReport, NoDetails};
use crate::rng::Rng;
use crate::{compile_with, AsyncLayer, Error, IoBuf, IoBufMut, Layer, LocalBoxFuture, Result};

const SECTOR: usize = 512;

#[derive(Clone, Debug)]
enum Event {
    Write {
        leaf: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Zero {
        leaf: usize,
        offset: u64,
        len: u64,
    },
    Flush {
        leaf: usize,
    },
}

#[derive(Default)]
pub struct Journal {
    events: Mutex<Vec<Event>>,
}

impl Journal {
    fn push(&self, e: Event) {
        self.events.lock().expect("journal lock").push(e);
    }

    pub fn len(&self) -> usize {
        self.events.lock().expect("journal lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An in-memory leaf that journals what it is asked to do.
pub struct RecordingLeaf {
    id: usize,
    image: Mutex<Vec<u8>>,
    journal: Arc<Journal>,
}

impl RecordingLeaf {
    pub fn new(id: usize, image: Vec<u8>, journal: Arc<Journal>) -> RecordingLeaf {
        RecordingLeaf {
            id,
            image: Mutex::new(image),
            journal,
        }
    }

    fn zero(&self, offset: u64, len: u64) {
        self.image.lock().expect("image lock")[offset as usize..(offset + len) as usize].fill(0);
        self.journal.push(Event::Zero {
            leaf: self.id,
            offset,
            len,
        });
    }
}

impl AsyncLayer for RecordingLeaf {
    fn size(&self) -> u64 {
        self.image.lock().expect("image lock").len() as u64
    }

    async fn read(&self, _: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        let image = self.image.lock().expect("image lock");
        let len = buf.len();
        buf.copy_from_slice(&image[offset as usize..offset as usize + len]);
        Ok(())
    }

    async fn write(&self, _: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.image.lock().expect("image lock")[offset as usize..offset as usize + buf.len()]
            .copy_from_slice(buf);
        self.journal.push(Event::Write {
            leaf: self.id,
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    async fn flush(&self, _: &IoCtx) -> Result<()> {
        self.journal.push(Event::Flush { leaf: self.id });
        Ok(())
    }

    async fn discard(&self, _: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(offset, len);
        Ok(())
    }

    async fn write_zeroes(&self, _: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(offset, len);
        Ok(())
    }

    fn discard_frees_space(&self) -> bool {
        true
    }
    fn report(&self) -> LayerReport {
        // A recorded disk image: memory, as far as status goes.
        LayerReport::Memory(NoDetails {})
    }
}

/// One top-level operation as the checker saw it.
#[derive(Clone, Debug)]
struct Done {
    /// Journal length when it was issued and when it was acknowledged.
    issued: usize,
    acked: usize,
    /// `Some((offset, data))` for writes (zeros for discard/write_zeroes); `None`
    /// for a flush.
    write: Option<(u64, Vec<u8>)>,
}

/// Leaves of `plan` (by layer id) and their sizes: every `memory` layer becomes a
/// recording leaf.
fn leaf_sizes(plan: &Plan) -> Vec<(LayerId, u64)> {
    plan.walk()
        .into_iter()
        .filter_map(|id| match plan.layers[id].spec {
            LayerSpec::Memory(ref p) => Some((id, p.size_bytes)),
            _ => None,
        })
        .collect()
}

fn compile_over(
    plan: &Plan,
    images: Vec<Vec<u8>>,
    journal: &Arc<Journal>,
) -> std::result::Result<crate::Stack, String> {
    let leaves = leaf_sizes(plan);
    let mut images: Vec<Option<Vec<u8>>> = images.into_iter().map(Some).collect();
    compile_with(plan, &mut |id| {
        let index = leaves.iter().position(|&(l, _)| l == id)?;
        let image = images[index].take().expect("each leaf is supplied once");
        Some(Arc::new(RecordingLeaf::new(index, image, journal.clone())) as Arc<dyn Layer>)
    })
    .map_err(|e| e.to_string())
}

/// Totals of a crash-replay run.
#[derive(Debug, Default, Clone, Copy)]
pub struct CrashReport {
    pub crash_points: usize,
    pub blocks_checked: u64,
    /// Blocks that read as EIO (allowed only for blocks written since the last
    /// completed flush).
    pub torn_eio: u64,
}

/// Run `ops` random operations on `plan` (whose leaves must be `memory` layers),
/// then check `crash_points` crashes. Errors name the seed.
pub fn crash_replay(
    plan: &Plan,
    seed: u64,
    ops: usize,
    crash_points: usize,
) -> std::result::Result<CrashReport, String> {
    crash_replay_with(plan, seed, ops, crash_points, &|_| Ok(()))
}

/// [`crash_replay`], also running `after_reopen` on the stack reopened after
/// each crash (e.g. to check that a mirror's legs came out identical).
pub fn crash_replay_with(
    plan: &Plan,
    seed: u64,
    ops: usize,
    crash_points: usize,
    after_reopen: &dyn Fn(&crate::Stack) -> std::result::Result<(), String>,
) -> std::result::Result<CrashReport, String> {
    let fail = |e: String| format!("seed {seed}: {e} (replay: UBLK_STACK_SEED={seed})");
    let journal = Arc::new(Journal::default());
    let initial: Vec<Vec<u8>> = leaf_sizes(plan)
        .iter()
        .map(|&(_, s)| vec![0u8; s as usize])
        .collect();
    let stack = compile_over(plan, initial.clone(), &journal).map_err(fail)?;
    let block = u64::from(plan.device.block_size);
    let size = stack.size();
    let blocks = size / block;
    let ctx = IoCtx::new(0, 64).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed);
    // The format itself (superblocks) is the first flushed state.
    let mut history: Vec<Done> = vec![Done {
        issued: 0,
        acked: journal.len(),
        write: None,
    }];
    let mut done = 0;
    while done < ops {
        // A batch of non-overlapping operations in flight together.
        let want = 1 + rng.below(6) as usize;
        let mut batch: Vec<(u8, u64, Vec<u8>)> = Vec::new();
        for _ in 0..want {
            let kind = rng.below(100) as u8;
            let n = 1 + rng.below(4.min(blocks));
            let first = rng.below(blocks - n + 1);
            let (offset, len) = (first * block, n * block);
            if batch
                .iter()
                .any(|(k, o, d)| *k < 90 && *o < offset + len && offset < *o + d.len() as u64)
            {
                continue;
            }
            let mut data = vec![0u8; len as usize];
            if kind < 70 {
                // Half the writes are compressible, so `compress` stores both kinds.
                if rng.chance(50) {
                    rng.fill(&mut data);
                } else {
                    data.fill(b'a' + (rng.below(26) as u8));
                }
            }
            batch.push((kind, offset, data));
        }
        done += batch.len();
        let issued = journal.len();
        let top = stack.top();
        let futs: Vec<LocalBoxFuture<'_, Result<()>>> = batch
            .iter()
            .map(|(kind, offset, data)| match kind {
                0..=69 => top.write_bytes(&ctx, *offset, data),
                70..=79 => top.discard(&ctx, *offset, data.len() as u64),
                80..=89 => top.write_zeroes(&ctx, *offset, data.len() as u64),
                _ => top.flush(&ctx),
            })
            .collect();
        let results = exec.block_on(&ctx, join_all(futs));
        let acked = journal.len();
        for ((kind, offset, data), res) in batch.into_iter().zip(results) {
            res.map_err(|e| fail(format!("operation failed during the run: {e}")))?;
            history.push(Done {
                issued,
                acked,
                write: (kind < 90).then_some((offset, data)),
            });
        }
    }
    drop(stack);
    let events = journal.events.lock().expect("journal lock").clone();
    let mut report = CrashReport::default();
    // Crashes from the end of formatting on (a crash while formatting leaves a
    // device that `up` refuses, which loses nothing).
    let formatted = history[0].acked;
    let mut points: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(i, e)| matches!(e, Event::Flush { .. }) && *i >= formatted)
        .map(|(i, _)| i + 1)
        .collect();
    points.push(events.len());
    while points.len() < crash_points {
        points.push(formatted + rng.below((events.len() - formatted) as u64 + 1) as usize);
    }
    points.truncate(crash_points.max(1));
    for k in points {
        let images = crash_images(&initial, &events[..k], &mut rng);
        check_crash(plan, images, &history, k, block, &mut report, after_reopen)
            .map_err(|e| fail(format!("crash at event {k}: {e}")))?;
        report.crash_points += 1;
    }
    Ok(report)
}

/// Leaf images after a crash once `events` were issued.
fn crash_images(initial: &[Vec<u8>], events: &[Event], rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut images = initial.to_vec();
    let mut last_flush = vec![0usize; images.len()];
    for (i, e) in events.iter().enumerate() {
        if let Event::Flush { leaf } = e {
            last_flush[*leaf] = i;
        }
    }
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Write { leaf, offset, data } => {
                let durable = i < last_flush[*leaf];
                let image = &mut images[*leaf];
                if durable || data.len() <= SECTOR {
                    if durable || rng.chance(50) {
                        image[*offset as usize..*offset as usize + data.len()]
                            .copy_from_slice(data);
                    }
                } else {
                    // Unflushed and multi-sector: any subset of its sectors.
                    let all = rng.chance(40);
                    let none = !all && rng.chance(30);
                    for (s, sector) in data.chunks(SECTOR).enumerate() {
                        if all || (!none && rng.chance(50)) {
                            let at = *offset as usize + s * SECTOR;
                            image[at..at + sector.len()].copy_from_slice(sector);
                        }
                    }
                }
            }
            Event::Zero { leaf, offset, len } => {
                if i < last_flush[*leaf] || rng.chance(50) {
                    images[*leaf][*offset as usize..(*offset + *len) as usize].fill(0);
                }
            }
            Event::Flush { .. } => {}
        }
    }
    images
}

fn check_crash(
    plan: &Plan,
    images: Vec<Vec<u8>>,
    history: &[Done],
    k: usize,
    block: u64,
    report: &mut CrashReport,
    after_reopen: &dyn Fn(&crate::Stack) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let journal = Arc::new(Journal::default());
    let stack = compile_over(plan, images, &journal).map_err(|e| format!("reopen failed: {e}"))?;
    // The last top-level flush that completed before the crash.
    let flushed_at = history
        .iter()
        .filter(|d| d.write.is_none() && d.acked <= k)
        .map(|d| d.issued)
        .max()
        .unwrap_or(0);
    let blocks = stack.size() / block;
    let ctx = IoCtx::new(0, 16).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; block as usize];
    for b in 0..blocks {
        let offset = b * block;
        let mut base: &[u8] = &[];
        let mut newer: Vec<&[u8]> = Vec::new();
        for d in history {
            let Some((o, data)) = &d.write else { continue };
            if offset < *o || offset >= *o + data.len() as u64 {
                continue;
            }
            let at = (offset - o) as usize;
            let value = &data[at..at + block as usize];
            if d.acked <= flushed_at {
                base = value;
            } else if d.issued < k {
                newer.push(value);
            }
        }
        let zero = vec![0u8; block as usize];
        let base = if base.is_empty() { &zero[..] } else { base };
        match exec.block_on(&ctx, stack.top().read_bytes(&ctx, offset, &mut buf)) {
            Ok(()) => {
                if buf != base && !newer.iter().any(|v| *v == &buf[..]) {
                    return Err(format!(
                        "block {b} reads data that is neither its last flushed contents nor a newer \
                         write ({} newer writes)",
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
    after_reopen(&stack)
}

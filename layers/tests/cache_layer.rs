//! The `cache` layer on its own, over an in-memory leaf that can fail or hold
//! I/O at a gate: scan resistance, memory and dirty bounds, live knobs, single
//! fetch of concurrent misses across queues, and what happens on lower errors.

mod probe;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use layers::cache::{Cache, CacheKnobs};
use layers::plan::CacheMode;
use layers::testing::Rng;
use layers::{Error, Executor, IoCtx, Layer, LayerReport};
use probe::Probe;

const BLOCK: usize = 4096;
const MIB: u64 = 1 << 20;

struct Bench {
    probe: Arc<Probe>,
    cache: Arc<Cache>,
    ctx: IoCtx,
    exec: Executor,
}

fn bench(capacity_bytes: u64, mode: CacheMode) -> Bench {
    let probe = Arc::new(Probe::new(128 * MIB));
    let cache = Arc::new(Cache::new(
        probe.clone(),
        BLOCK as u32,
        CacheKnobs {
            capacity_bytes,
            mode,
        },
    ));
    Bench {
        probe,
        cache,
        ctx: IoCtx::new(0, 64).unwrap(),
        exec: Executor::new().unwrap(),
    }
}

impl Bench {
    fn read(&self, block: u64, blocks: usize) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; blocks * BLOCK];
        let fut = self
            .cache
            .read_bytes(&self.ctx, block * BLOCK as u64, &mut buf);
        self.exec.block_on(&self.ctx, fut).map(|()| buf)
    }

    fn write(&self, block: u64, data: &[u8]) -> Result<(), Error> {
        let fut = self
            .cache
            .write_bytes(&self.ctx, block * BLOCK as u64, data);
        self.exec.block_on(&self.ctx, fut)
    }

    fn flush(&self) -> Result<(), Error> {
        self.exec.block_on(&self.ctx, self.cache.flush(&self.ctx))
    }

    fn hits(&self) -> u64 {
        self.cache.hit_rate_counters().0
    }
}

fn pattern(seed: u64, blocks: usize) -> Vec<u8> {
    let mut data = vec![0u8; blocks * BLOCK];
    Rng::new(seed).fill(&mut data);
    data
}

#[test]
fn hot_set_hit_rate_stays_above_90_percent_through_a_scan_larger_than_the_cache() {
    let capacity = 4 * MIB;
    let b = bench(capacity, CacheMode::WriteThrough);
    let hot_blocks = 256; // a quarter of the cache
    for _ in 0..3 {
        for h in 0..hot_blocks {
            b.read(h, 1).unwrap();
        }
    }
    // A sequential pass over 8 times the cache in 128 KiB reads, with the hot set
    // read in between, then once more over the hot set alone.
    let scan_start = 4096;
    let scan_chunks = 8 * capacity / BLOCK as u64 / 32;
    let (mut hot_reads, mut hot_hits) = (0, 0);
    for (i, chunk) in (0..scan_chunks).enumerate() {
        b.read(scan_start + chunk * 32, 32).unwrap();
        for h in 0..4 {
            let before = b.hits();
            b.read((i as u64 * 4 + h) % hot_blocks, 1).unwrap();
            hot_reads += 1;
            hot_hits += b.hits() - before;
        }
        assert!(b.cache.usage_bytes().0 <= capacity);
    }
    let before = b.hits();
    for h in 0..hot_blocks {
        b.read(h, 1).unwrap();
    }
    let after_scan = (b.hits() - before) as f64 / hot_blocks as f64;
    // Another pass over 8 times the cache, this time with no hot reads at all.
    for chunk in 0..scan_chunks {
        b.read(scan_start + (scan_chunks + chunk) * 32, 32).unwrap();
    }
    let before = b.hits();
    for h in 0..hot_blocks {
        b.read(h, 1).unwrap();
    }
    let after_idle_scan = (b.hits() - before) as f64 / hot_blocks as f64;
    let during_scan = hot_hits as f64 / hot_reads as f64;
    eprintln!(
        "hot set hit rate: during a scan {:.1}%, after it {:.1}%, after a scan with no \
         hot reads {:.1}%; {:?}",
        during_scan * 100.0,
        after_scan * 100.0,
        after_idle_scan * 100.0,
        b.cache.report()
    );
    assert!(during_scan > 0.9, "hit rate during the scan {during_scan}");
    assert!(after_scan > 0.9, "hit rate after the scan {after_scan}");
    assert!(
        after_idle_scan > 0.9,
        "hit rate after the idle scan {after_idle_scan}"
    );
}

#[test]
fn memory_and_dirty_data_stay_within_capacity_in_write_back_mode() {
    let capacity = MIB / 4;
    let b = bench(capacity, CacheMode::WriteBack);
    let mut rng = Rng::new(7);
    let mut image = vec![0u8; 512 * BLOCK];
    for i in 0..3000 {
        let block = rng.below(500);
        let blocks = 1 + rng.below(8).min(511 - block) as usize;
        let data = pattern(i, blocks);
        b.write(block, &data).unwrap();
        image[block as usize * BLOCK..][..data.len()].copy_from_slice(&data);
        let (cached, dirty) = b.cache.usage_bytes();
        assert!(cached <= capacity, "{cached} bytes cached");
        assert!(dirty <= capacity / 2, "{dirty} bytes dirty");
        if i % 500 == 0 {
            assert_eq!(b.read(0, 512).unwrap(), image);
        }
    }
    b.flush().unwrap();
    assert_eq!(b.cache.usage_bytes().1, 0);
    assert_eq!(b.probe.image(0, 512 * BLOCK), image);
}

#[test]
fn shrinking_writes_dirty_blocks_back_and_frees_them() {
    let b = bench(4 * MIB, CacheMode::WriteBack);
    let data = pattern(1, 256);
    b.write(0, &data).unwrap();
    b.read(1000, 256).unwrap();
    assert_eq!(b.cache.usage_bytes(), (2 * MIB, MIB));
    b.cache.set_capacity(MIB / 8);
    b.exec.block_on(&b.ctx, b.cache.shrink(&b.ctx)).unwrap();
    let (cached, dirty) = b.cache.usage_bytes();
    assert!(
        cached <= MIB / 8 && dirty <= MIB / 16,
        "{cached} cached, {dirty} dirty"
    );
    b.cache.set_capacity(0);
    b.exec.block_on(&b.ctx, b.cache.shrink(&b.ctx)).unwrap();
    assert_eq!(b.cache.usage_bytes(), (0, 0));
    assert_eq!(b.probe.image(0, data.len()), data);
    // Growing again takes effect at once.
    b.cache.set_capacity(MIB);
    b.read(0, 16).unwrap();
    assert_eq!(b.read(0, 16).unwrap(), data[..16 * BLOCK]);
    assert_eq!(b.cache.usage_bytes().0, 16 * BLOCK as u64);
}

#[test]
fn a_smaller_capacity_is_reached_within_a_second_under_load_without_shrink() {
    let b = bench(8 * MIB, CacheMode::WriteBack);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let small = MIB / 4;
    let took = std::thread::scope(|s| {
        s.spawn(|| {
            let ctx = IoCtx::new(1, 64).unwrap();
            let exec = Executor::new().unwrap();
            let mut rng = Rng::new(3);
            let mut buf = vec![0u8; 8 * BLOCK];
            while !stop.load(SeqCst) {
                let offset = rng.below(4000) * BLOCK as u64;
                let res = if rng.chance(50) {
                    exec.block_on(&ctx, b.cache.read_bytes(&ctx, offset, &mut buf))
                } else {
                    exec.block_on(&ctx, b.cache.write_bytes(&ctx, offset, &buf))
                };
                res.unwrap();
            }
        });
        while b.cache.usage_bytes().0 < 4 * MIB {
            std::thread::sleep(Duration::from_millis(5));
        }
        b.cache.set_capacity(small);
        let start = Instant::now();
        // One request's blocks plus a round of dirty victims may be in flight.
        while b.cache.usage_bytes().0 > small + 48 * BLOCK as u64 {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{:?}",
                b.cache.report()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, SeqCst);
        start.elapsed()
    });
    eprintln!("down to {small} bytes in {took:?}");
}

#[test]
fn switching_to_write_through_writes_back_everything_first() {
    let b = bench(4 * MIB, CacheMode::WriteBack);
    let data = pattern(2, 100);
    b.write(10, &data).unwrap();
    assert_eq!(b.cache.usage_bytes().1, 100 * BLOCK as u64);
    assert_ne!(b.probe.image(10 * BLOCK, data.len()), data);
    let knobs = CacheKnobs {
        capacity_bytes: 4 * MIB,
        mode: CacheMode::WriteThrough,
    };
    b.exec
        .block_on(&b.ctx, b.cache.apply_knobs(&b.ctx, knobs))
        .unwrap();
    assert_eq!(b.cache.usage_bytes().1, 0);
    assert_eq!(b.probe.image(10 * BLOCK, data.len()), data);
    assert!(b.probe.flushes.load(SeqCst) >= 1);
    // From now on writes reach the layer below before they are acknowledged.
    let more = pattern(3, 4);
    b.write(500, &more).unwrap();
    assert_eq!(b.probe.image(500 * BLOCK, more.len()), more);
}

#[test]
fn concurrent_misses_on_one_block_across_queues_fetch_it_once() {
    let b = bench(MIB, CacheMode::WriteThrough);
    let data = pattern(4, 1);
    b.probe.put(5 * BLOCK, &data);
    b.probe.hold.store(true, SeqCst);
    let reader = |queue: u16| {
        let ctx = IoCtx::new(queue, 16).unwrap();
        let exec = Executor::new().unwrap();
        let mut buf = vec![0u8; BLOCK];
        exec.block_on(&ctx, b.cache.read_bytes(&ctx, 5 * BLOCK as u64, &mut buf))
            .unwrap();
        buf
    };
    std::thread::scope(|s| {
        let first = s.spawn(|| reader(1));
        b.probe.wait_for_held(1);
        let second = s.spawn(|| reader(2));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            b.probe.arrived.load(SeqCst),
            1,
            "the second miss went below"
        );
        b.probe.open();
        assert_eq!(first.join().unwrap(), data);
        assert_eq!(second.join().unwrap(), data);
    });
    assert_eq!(b.probe.reads.load(SeqCst), 1);
    // The second reader found the block in the cache once it was loaded.
    assert_eq!(b.cache.hit_rate_counters(), (1, 1));
}

#[test]
fn reads_see_the_newest_write_while_its_write_back_is_in_flight() {
    let b = bench(MIB, CacheMode::WriteBack);
    let (old, new) = (pattern(5, 1), pattern(6, 1));
    b.write(9, &old).unwrap();
    b.probe.hold.store(true, SeqCst);
    std::thread::scope(|s| {
        let flusher = s.spawn(|| {
            let ctx = IoCtx::new(1, 16).unwrap();
            let exec = Executor::new().unwrap();
            exec.block_on(&ctx, b.cache.flush(&ctx))
        });
        b.probe.wait_for_held(1);
        assert_eq!(b.read(9, 1).unwrap(), old);
        b.write(9, &new).unwrap();
        assert_eq!(b.read(9, 1).unwrap(), new);
        b.probe.open();
        flusher.join().unwrap().unwrap();
    });
    // The flush wrote the old contents; the new ones are still dirty.
    assert_eq!(b.probe.image(9 * BLOCK, BLOCK), old);
    assert_eq!(b.read(9, 1).unwrap(), new);
    assert_eq!(b.cache.usage_bytes().1, BLOCK as u64);
    b.flush().unwrap();
    assert_eq!(b.probe.image(9 * BLOCK, BLOCK), new);
}

#[test]
fn a_failed_write_back_keeps_the_block_dirty_and_fails_the_flush() {
    let b = bench(MIB, CacheMode::WriteBack);
    let data = pattern(7, 3);
    b.write(20, &data).unwrap();
    b.probe.fail_writes.store(true, SeqCst);
    assert_eq!(b.flush(), Err(Error::Io(libc::EIO)));
    assert_eq!(b.cache.usage_bytes().1, 3 * BLOCK as u64);
    assert_eq!(b.read(20, 3).unwrap(), data);
    let LayerReport::Cache(report) = b.cache.report() else {
        panic!("a cache reports as one")
    };
    assert_eq!(report.write_back_errors, 1);
    b.probe.fail_writes.store(false, SeqCst);
    b.flush().unwrap();
    assert_eq!(b.cache.usage_bytes().1, 0);
    assert_eq!(b.probe.image(20 * BLOCK, data.len()), data);
}

#[test]
fn lower_errors_reach_the_caller_and_leave_nothing_stale() {
    let b = bench(MIB, CacheMode::WriteBack);
    // A failed read leaves no placeholder behind.
    b.probe.fail_reads.store(true, SeqCst);
    assert_eq!(b.read(40, 2), Err(Error::Io(libc::EIO)));
    b.probe.fail_reads.store(false, SeqCst);
    assert_eq!(b.read(40, 2).unwrap(), vec![0u8; 2 * BLOCK]);
    // A failed discard keeps the acknowledged dirty data.
    let data = pattern(8, 1);
    b.write(41, &data).unwrap();
    b.probe.fail_discards.store(true, SeqCst);
    let discard = b.cache.discard(&b.ctx, 40 * BLOCK as u64, 2 * BLOCK as u64);
    assert_eq!(b.exec.block_on(&b.ctx, discard), Err(Error::Io(libc::EIO)));
    assert_eq!(b.read(41, 1).unwrap(), data);
    // A failed write-through write drops the block: below is unknown.
    b.cache.set_mode(CacheMode::WriteThrough);
    b.probe.fail_writes.store(true, SeqCst);
    assert_eq!(b.write(40, &data), Err(Error::Io(libc::EIO)));
    b.probe.fail_writes.store(false, SeqCst);
    b.probe.fail_discards.store(false, SeqCst);
    // A discard that works drops dirty data and reads as zeros.
    let discard = b.cache.discard(&b.ctx, 40 * BLOCK as u64, 2 * BLOCK as u64);
    b.exec.block_on(&b.ctx, discard).unwrap();
    assert_eq!(b.read(40, 2).unwrap(), vec![0u8; 2 * BLOCK]);
    assert_eq!(b.cache.usage_bytes().1, 0);
}

#[test]
fn reload_applies_capacity_and_mode_through_the_stack_and_refuses_other_keys() {
    use layers::plan::{LiveChange, ReadPolicy};
    let dir = tempfile::tempdir().unwrap();
    let mut b = layers::testing::PlanBuilder::new(dir.path(), 4096);
    let leaf = b.memory("leaf", 16 * MIB);
    let top = b.cache("c", leaf, 4 * MIB, CacheMode::WriteBack);
    let stack = layers::compile(&b.build(top)).unwrap();
    let (ctx, exec) = (IoCtx::new(0, 64).unwrap(), Executor::new().unwrap());
    let data = pattern(9, 64);
    exec.block_on(&ctx, stack.top().write_bytes(&ctx, 0, &data))
        .unwrap();
    let report = || match stack.status()[0].report.clone() {
        LayerReport::Cache(report) => report,
        other => panic!("not a cache: {other:?}"),
    };
    assert_eq!(report().dirty_bytes, 64 * BLOCK as u64);
    let apply = |change: LiveChange| exec.block_on(&ctx, stack.apply_live(&ctx, "c", &change));
    apply(LiveChange::CacheCapacity(MIB / 8)).unwrap();
    assert_eq!(report().capacity_bytes, MIB / 8);
    assert_eq!(report().cached_bytes, MIB / 8);
    apply(LiveChange::CacheMode(CacheMode::WriteThrough)).unwrap();
    assert_eq!(report().mode, CacheMode::WriteThrough);
    assert_eq!(report().dirty_bytes, 0);
    assert!(apply(LiveChange::ReadPolicy(ReadPolicy::First)).is_err());
    let mut back = vec![0u8; data.len()];
    exec.block_on(&ctx, stack.top().read_bytes(&ctx, 0, &mut back))
        .unwrap();
    assert_eq!(back, data);
}

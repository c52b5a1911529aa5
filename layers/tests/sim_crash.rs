//! Crash replay under concurrency over simulated disks, for every layer alone:
//! several queues with several tasks each keep many operations in flight, the
//! disks complete them out of order, and the power is cut at random instants.
//! Each test prints its crash points; a failure names the seed, which replays
//! with `UBLK_STACK_SEED=N`.

use layers::exec::{Executor, IoCtx};
use layers::mirror::DATA_START;
use layers::plan::{CacheMode, FaultKnobs, Plan, ReadPolicy};
use layers::testing::sim_crash::{sim_crash_replay, SimCrashConfig, SimCrashReport};
use layers::testing::{rng::seeds, PlanBuilder};
use layers::{Error, Stack};

const KIB: u64 = 1024;

/// Run `plan` for each seed; print and return the totals.
fn replay(name: &str, plan: &Plan, base_seed: u64, runs: usize, cfg: &SimCrashConfig) {
    replay_with(name, plan, base_seed, runs, cfg, &|_| Ok(()))
}

fn replay_with(
    name: &str,
    plan: &Plan,
    base_seed: u64,
    runs: usize,
    cfg: &SimCrashConfig,
    after: &dyn Fn(&Stack) -> Result<(), String>,
) {
    let start = std::time::Instant::now();
    let mut total = SimCrashReport::default();
    let seeds = seeds(base_seed, runs);
    for &seed in &seeds {
        let report =
            sim_crash_replay(plan, seed, cfg, after).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            report.crash_points > 0,
            "{name}: seed {seed}: no crash point"
        );
        total.add(&report);
    }
    println!(
        "sim-crash {name}: {} crash points at {} instants, 0 violations ({} blocks checked, \
         {} torn EIO, {} reads checked, {} leaf ops, {} out of order, up to {} in flight) \
         in {:.1?}",
        total.crash_points,
        total.instants,
        total.blocks_checked,
        total.torn_eio,
        total.reads_checked,
        total.sim.completed,
        total.sim.out_of_order,
        total.sim.max_in_flight,
        start.elapsed()
    );
    assert!(
        total.sim.out_of_order > 0 && total.sim.max_in_flight > 4,
        "{name}: {total:?}"
    );
    if seeds.len() == runs {
        assert!(total.crash_points >= 50 * runs, "{name}: {total:?}");
    }
}

fn builder(block: u32) -> (tempfile::TempDir, PlanBuilder) {
    let dir = tempfile::tempdir().unwrap();
    let b = PlanBuilder::new(dir.path(), block);
    (dir, b)
}

/// Every block of the mirror "m" reads the same on each of `legs`, or fails
/// on every one of them (a torn block under a checksummed leg).
fn legs_identical(stack: &Stack, legs: &[&str]) -> Result<(), String> {
    let mirror = stack.mirror("m").ok_or("no mirror m")?;
    let size = layers::Layer::size(&**mirror);
    let block = u64::from(stack.block_size());
    let ctx = IoCtx::new(0, 16).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    let mut bufs = vec![vec![0u8; block as usize]; legs.len()];
    for offset in (0..size).step_by(block as usize) {
        let mut results: Vec<Result<(), Error>> = Vec::new();
        for (name, buf) in legs.iter().zip(bufs.iter_mut()) {
            let leg = stack.layer(name).ok_or("no leg")?;
            results.push(exec.block_on(&ctx, leg.read_bytes(&ctx, DATA_START + offset, buf)));
        }
        let all_failed = results.iter().all(|r| r.is_err());
        let all_same = results.iter().all(|r| r.is_ok()) && bufs.iter().all(|b| *b == bufs[0]);
        if !all_failed && !all_same {
            return Err(format!(
                "after the open-time resync, the legs differ at byte {offset}: {results:?}"
            ));
        }
    }
    Ok(())
}

fn checksum_plan(block: u32) -> (tempfile::TempDir, Plan) {
    let (d, mut b) = builder(block);
    let leaf = b.memory("leaf", 256 * KIB);
    let top = b.checksum("c", leaf);
    (d, b.build(top))
}

fn crypt_plan(block: u32) -> (tempfile::TempDir, Plan) {
    std::env::set_var("SIM_CRASH_KEY", "5a".repeat(32));
    let (d, mut b) = builder(block);
    let leaf = b.memory("leaf", 256 * KIB);
    let top = b.crypt("x", leaf, "SIM_CRASH_KEY");
    (d, b.build(top))
}

#[test]
fn checksum_512_under_concurrent_crashes() {
    let (_d, plan) = checksum_plan(512);
    replay("checksum/512", &plan, 101, 3, &SimCrashConfig::default());
}

#[test]
fn checksum_4096_under_concurrent_crashes() {
    let (_d, plan) = checksum_plan(4096);
    replay("checksum/4096", &plan, 102, 3, &SimCrashConfig::default());
}

#[test]
fn crypt_512_under_concurrent_crashes() {
    let (_d, plan) = crypt_plan(512);
    replay("crypt/512", &plan, 111, 3, &SimCrashConfig::default());
}

#[test]
fn crypt_4096_under_concurrent_crashes() {
    let (_d, plan) = crypt_plan(4096);
    replay("crypt/4096", &plan, 112, 3, &SimCrashConfig::default());
}

#[test]
fn compress_512_under_concurrent_crashes() {
    let (_d, mut b) = builder(512);
    let leaf = b.memory("leaf", 512 * KIB);
    let top = b.compress("z", leaf, Some(256 * KIB));
    replay(
        "compress/512",
        &b.build(top),
        121,
        2,
        &SimCrashConfig::default(),
    );
}

#[test]
fn compress_4096_under_concurrent_crashes() {
    let (_d, mut b) = builder(4096);
    let leaf = b.memory("leaf", 512 * KIB);
    let top = b.compress("z", leaf, Some(384 * KIB));
    replay(
        "compress/4096",
        &b.build(top),
        122,
        2,
        &SimCrashConfig::default(),
    );
}

#[test]
fn mirror_under_concurrent_crashes() {
    let (_d, mut b) = builder(4096);
    let (l0, l1) = (b.memory("l0", 384 * KIB), b.memory("l1", 384 * KIB));
    let top = b.mirror("m", &[l0, l1], ReadPolicy::RoundRobin);
    let plan = b.build(top);
    let cfg = SimCrashConfig::default();
    replay_with("mirror", &plan, 131, 3, &cfg, &|s| {
        legs_identical(s, &["l0", "l1"])
    });
}

#[test]
fn mirror_reads_under_concurrent_crashes() {
    // The same crashes as above, checking only what the mirror reads.
    let (_d, mut b) = builder(512);
    let legs: Vec<_> = (0..3)
        .map(|i| b.memory(&format!("l{i}"), 256 * KIB))
        .collect();
    let top = b.mirror("m", &legs, ReadPolicy::LeastPending);
    replay(
        "mirror3/512",
        &b.build(top),
        132,
        2,
        &SimCrashConfig::default(),
    );
    let (_d, mut b) = builder(4096);
    let (l0, l1) = (b.memory("l0", 384 * KIB), b.memory("l1", 384 * KIB));
    let top = b.mirror("m", &[l0, l1], ReadPolicy::RoundRobin);
    replay("mirror", &b.build(top), 131, 2, &SimCrashConfig::default());
}

#[test]
fn raid0_under_concurrent_crashes() {
    let (_d, mut b) = builder(4096);
    let (s0, s1) = (b.memory("s0", 192 * KIB), b.memory("s1", 192 * KIB));
    let top = b.raid0("r", &[s0, s1], 8 * KIB);
    replay("raid0", &b.build(top), 141, 4, &SimCrashConfig::default());
}

fn cache(mode: CacheMode, seed: u64) {
    let (_d, mut b) = builder(4096);
    let leaf = b.memory("leaf", 256 * KIB);
    // Smaller than the device, so that eviction writes back too.
    let top = b.cache("cache", leaf, 96 * KIB, mode);
    replay(
        &format!("cache/{mode:?}"),
        &b.build(top),
        seed,
        4,
        &SimCrashConfig::default(),
    );
}

#[test]
fn cache_write_back_under_concurrent_crashes() {
    cache(CacheMode::WriteBack, 151);
}

#[test]
fn cache_write_through_under_concurrent_crashes() {
    cache(CacheMode::WriteThrough, 152);
}

#[test]
fn fault_without_faults_under_concurrent_crashes() {
    let (_d, mut b) = builder(4096);
    let leaf = b.memory("leaf", 256 * KIB);
    let top = b.fault("f", leaf, FaultKnobs::default());
    replay(
        "fault/rates-0",
        &b.build(top),
        161,
        4,
        &SimCrashConfig::default(),
    );
}

fn mirror_of_crypt_legs() -> (tempfile::TempDir, Plan) {
    std::env::set_var("SIM_CRASH_KEY2", "c3".repeat(32));
    let (d, mut b) = builder(4096);
    let (l0, l1) = (b.memory("l0", 256 * KIB), b.memory("l1", 256 * KIB));
    let (c0, c1) = (
        b.crypt("c0", l0, "SIM_CRASH_KEY2"),
        b.crypt("c1", l1, "SIM_CRASH_KEY2"),
    );
    let top = b.mirror("m", &[c0, c1], ReadPolicy::First);
    (d, b.build(top))
}

const SMALL: SimCrashConfig = SimCrashConfig {
    queues: 3,
    tasks_per_queue: 6,
    ops: 400,
    crash_every: 6,
    images_per_crash: 2,
};

#[test]
fn mirror_of_crypt_legs_under_concurrent_crashes() {
    let (_d, plan) = mirror_of_crypt_legs();
    replay("mirror/crypt", &plan, 171, 2, &SMALL);
}

#[test]
fn mirror_of_crypt_legs_are_identical_after_concurrent_crashes() {
    let (_d, plan) = mirror_of_crypt_legs();
    replay_with("mirror/crypt", &plan, 171, 2, &SMALL, &|s| {
        legs_identical(s, &["c0", "c1"])
    });
}

#[test]
fn compress_with_little_free_space_under_concurrent_crashes() {
    // Space freed by overwrites is reused soon: the allocator wraps often.
    let (_d, mut b) = builder(4096);
    let leaf = b.memory("leaf", 256 * KIB);
    let top = b.compress("z", leaf, Some(112 * KIB));
    let cfg = SimCrashConfig {
        ops: 900,
        ..SimCrashConfig::default()
    };
    replay("compress/tight", &b.build(top), 123, 2, &cfg);
}

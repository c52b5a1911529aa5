//! Crash replay of mirrors: after every crash point the reopened mirror reads
//! every block as its last flushed contents or a newer write, and the open-time
//! resync of the regions the write-intent bitmap left dirty has made the legs
//! identical.

use layers::exec::{Executor, IoCtx};
use layers::mirror::DATA_START;
use layers::plan::{Plan, ReadPolicy};
use layers::testing::crash::crash_replay_with;
use layers::testing::{rng::seeds, PlanBuilder};
use layers::{Error, Stack};

const KIB: u64 = 1024;

/// Every block of the mirror "m" reads the same on each of `legs` (the layers
/// directly below it), or fails on every one of them (a torn block under a
/// checksummed leg, which nothing can repair).
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

fn replay(name: &str, plan: &Plan, legs: &[&str], base_seed: u64) {
    for seed in seeds(base_seed, 2) {
        let report = crash_replay_with(plan, seed, 300, 150, &|stack| legs_identical(stack, legs))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.crash_points >= 150, "{name}: {report:?}");
        eprintln!("{name}: seed {seed}: {report:?}");
    }
}

#[test]
fn mirror_legs_are_identical_after_every_crash_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let (l0, l1) = (b.memory("l0", 512 * KIB), b.memory("l1", 512 * KIB));
    let top = b.mirror("m", &[l0, l1], ReadPolicy::RoundRobin);
    replay("mirror", &b.build(top), &["l0", "l1"], 41);
}

#[test]
fn three_leg_mirror_with_512_byte_blocks_survives_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 512);
    let legs: Vec<_> = (0..3)
        .map(|i| b.memory(&format!("l{i}"), 384 * KIB))
        .collect();
    let top = b.mirror("m", &legs, ReadPolicy::LeastPending);
    replay("mirror3/512", &b.build(top), &["l0", "l1", "l2"], 42);
}

#[test]
fn mirror_of_checksummed_legs_is_identical_after_every_crash_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let (l0, l1) = (b.memory("l0", 640 * KIB), b.memory("l1", 640 * KIB));
    let (c0, c1) = (b.checksum("c0", l0), b.checksum("c1", l1));
    let top = b.mirror("m", &[c0, c1], ReadPolicy::First);
    replay("mirror/checksum", &b.build(top), &["c0", "c1"], 43);
}

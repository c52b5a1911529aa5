//! Crash replay over every metadata-keeping layer and stacks of them: each test
//! checks hundreds of crash points (every flush point plus random ones, with
//! random subsets of the unflushed writes and torn multi-sector writes).

use layers::plan::{Plan, ReadPolicy};
use layers::testing::crash::crash_replay;
use layers::testing::{rng::seeds, PlanBuilder};

const KIB: u64 = 1024;

fn replay(name: &str, plan: &Plan, base_seed: u64) {
    let mut total = 0;
    for seed in seeds(base_seed, 2) {
        let report = crash_replay(plan, seed, 300, 150).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.crash_points >= 150, "{name}: {report:?}");
        total += report.crash_points;
        eprintln!("{name}: seed {seed}: {report:?}");
    }
    assert!(total >= 300);
}

fn builder(block: u32) -> (tempfile::TempDir, PlanBuilder) {
    let dir = tempfile::tempdir().unwrap();
    let b = PlanBuilder::new(dir.path(), block);
    (dir, b)
}

#[test]
fn checksum_survives_crashes() {
    for block in [512, 4096] {
        let (_d, mut b) = builder(block);
        let leaf = b.memory("leaf", 512 * KIB);
        let top = b.checksum("c", leaf);
        replay(&format!("checksum/{block}"), &b.build(top), 11);
    }
}

#[test]
fn crypt_survives_crashes() {
    std::env::set_var("CRASH_KEY", "5a".repeat(32));
    for block in [512, 4096] {
        let (_d, mut b) = builder(block);
        let leaf = b.memory("leaf", 512 * KIB);
        let top = b.crypt("x", leaf, "CRASH_KEY");
        replay(&format!("crypt/{block}"), &b.build(top), 12);
    }
}

#[test]
fn crypt_over_checksum_survives_crashes() {
    std::env::set_var("CRASH_KEY2", "c3".repeat(32));
    let (_d, mut b) = builder(4096);
    let leaf = b.memory("leaf", 768 * KIB);
    let c = b.checksum("c", leaf);
    let top = b.crypt("x", c, "CRASH_KEY2");
    replay("crypt/checksum", &b.build(top), 13);
}

#[test]
fn mirror_of_checksummed_legs_survives_crashes() {
    let (_d, mut b) = builder(4096);
    let (l0, l1) = (b.memory("l0", 512 * KIB), b.memory("l1", 512 * KIB));
    let (c0, c1) = (b.checksum("c0", l0), b.checksum("c1", l1));
    let top = b.mirror("m", &[c0, c1], ReadPolicy::RoundRobin);
    replay("mirror/checksum", &b.build(top), 14);
}

#[test]
fn checksum_over_raid0_survives_crashes() {
    let (_d, mut b) = builder(512);
    let (s0, s1) = (b.memory("s0", 256 * KIB), b.memory("s1", 256 * KIB));
    let r = b.raid0("r", &[s0, s1], 4 * KIB);
    let top = b.checksum("c", r);
    replay("checksum/raid0", &b.build(top), 15);
}

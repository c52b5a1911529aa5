//! Scrub of a mirror of checksummed legs: blocks corrupted behind the daemon's
//! back on either leg are found and rewritten from the good copy, a second scrub
//! is clean, and a block bad on every leg is reported unrepairable.

use std::path::Path;

use layers::exec::{Executor, IoCtx};
use layers::mirror::ScrubReport;
use layers::plan::{Plan, ReadPolicy};
use layers::rng::Rng;
use layers::testing::PlanBuilder;
use layers::{compile, LayerReport, Stack};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;
const BLOCKS: usize = 512;

fn plan(dir: &Path) -> Plan {
    let mut b = PlanBuilder::new(dir, 4096);
    let (l0, l1) = (b.file("l0", 4 * MIB), b.file("l1", 4 * MIB));
    let (c0, c1) = (b.checksum("c0", l0), b.checksum("c1", l1));
    let top = b.mirror("m", &[c0, c1], ReadPolicy::First);
    b.build(top)
}

/// Write `data` at 0 and flush twice, so the write-intent bits are clear again
/// and the reopen has nothing to resync: only the scrub can find the damage.
fn write_data(plan: &Plan, data: &[u8]) {
    let stack = compile(plan).unwrap();
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    exec.block_on(&ctx, async {
        stack.top().write_bytes(&ctx, 0, data).await.unwrap();
        stack.flush(&ctx).await.unwrap();
        stack.flush(&ctx).await.unwrap();
    });
    let status = stack.status();
    match &status.iter().find(|n| n.name == "m").unwrap().report {
        LayerReport::Mirror(report) => assert_eq!(report.dirty_regions, 0, "{report:?}"),
        other => panic!("not a mirror: {other:?}"),
    }
}

/// Flip a byte of the copy of `block` in the leg file `path`.
fn corrupt(path: &Path, data: &[u8], block: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let want = &data[block * BLOCK..block * BLOCK + 64];
    let at = bytes
        .windows(64)
        .position(|w| w == want)
        .expect("block on the leg");
    bytes[at + 100] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn scrub_all(stack: &Stack) -> ScrubReport {
    let mirror = stack.mirror("m").unwrap().clone();
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    let mut total = ScrubReport::default();
    for step in 0..mirror.scrub_steps() {
        let report = exec.block_on(&ctx, mirror.scrub_step(&ctx, step)).unwrap();
        total.add(&report);
    }
    total
}

fn read_all(stack: &Stack, len: usize) -> Vec<u8> {
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    let mut got = vec![0u8; len];
    exec.block_on(&ctx, stack.top().read_bytes(&ctx, 0, &mut got))
        .unwrap();
    got
}

#[test]
fn scrub_repairs_every_corrupt_block_and_a_second_scrub_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let mut data = vec![0u8; BLOCKS * BLOCK];
    Rng::new(9).fill(&mut data);
    write_data(&plan, &data);
    let mut rng = Rng::new(10);
    let mut damaged = std::collections::BTreeSet::new();
    while damaged.len() < 24 {
        damaged.insert(rng.below(BLOCKS as u64) as usize);
    }
    // Most on leg 0, some on leg 1, never the same block on both.
    for (k, &block) in damaged.iter().enumerate() {
        let leg = if k % 4 == 3 { "l1.img" } else { "l0.img" };
        corrupt(&dir.path().join(leg), &data, block);
    }
    let stack = compile(&plan).unwrap();
    let first = scrub_all(&stack);
    assert_eq!(first.repaired, damaged.len() as u64, "{first:?}");
    assert_eq!((first.unrepairable, first.mismatched), (0, 0), "{first:?}");
    assert_eq!(
        first.bytes_checked,
        layers::Layer::size(&**stack.mirror("m").unwrap())
    );
    let second = scrub_all(&stack);
    assert!(second.is_clean(), "{second:?}");
    assert!(read_all(&stack, data.len()) == data);
    // Repaired on disk: a fresh open scrubs clean too.
    drop(stack);
    let stack = compile(&plan).unwrap();
    assert!(scrub_all(&stack).is_clean());
}

#[test]
fn scrub_reports_a_block_bad_on_every_leg_as_unrepairable() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let mut data = vec![0u8; BLOCKS * BLOCK];
    Rng::new(11).fill(&mut data);
    write_data(&plan, &data);
    corrupt(&dir.path().join("l0.img"), &data, 100);
    corrupt(&dir.path().join("l1.img"), &data, 100);
    corrupt(&dir.path().join("l1.img"), &data, 200);
    let stack = compile(&plan).unwrap();
    let report = scrub_all(&stack);
    assert_eq!((report.unrepairable, report.repaired), (1, 1), "{report:?}");
    let again = scrub_all(&stack);
    assert_eq!((again.unrepairable, again.repaired), (1, 0), "{again:?}");
}

//! Growing layers of a running stack (`Stack::grow`, bottom-up as a reload
//! does) and at open: data before the old end stays, the new space reads
//! zeros and takes writes, a reopen sees the new size, and a mirror's
//! write-intent bitmap covers the new space, also after a crash mid-grow.

use std::path::Path;

use layers::exec::{Executor, IoCtx};
use layers::plan::{FileParams, LayerSpec, Plan, ReadPolicy};
use layers::report::LayerReport;
use layers::testing::PlanBuilder;
use layers::{compile, Stack};

const MIB: u64 = 1 << 20;

fn io() -> (IoCtx, Executor) {
    (IoCtx::new(0, 16).unwrap(), Executor::new().unwrap())
}

fn write(stack: &Stack, at: u64, byte: u8, len: usize) {
    let (ctx, exec) = io();
    exec.block_on(&ctx, async {
        stack
            .top()
            .write_bytes(&ctx, at, &vec![byte; len])
            .await
            .unwrap();
        stack.flush(&ctx).await.unwrap();
    });
}

fn read(stack: &Stack, at: u64, len: usize) -> Vec<u8> {
    let (ctx, exec) = io();
    let mut out = vec![0u8; len];
    exec.block_on(&ctx, stack.top().read_bytes(&ctx, at, &mut out))
        .unwrap();
    out
}

/// Grow `layers` in order (children first), as a reload does.
fn grow(stack: &Stack, layers: &[(&str, u64)]) {
    let (ctx, exec) = io();
    for &(name, size) in layers {
        exec.block_on(&ctx, stack.grow(&ctx, name, size))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The old data stays, the new space reads zeros (but its last block, which
/// a test may have written already), takes a write at its very
/// end, and a request past the new end is still refused.
fn check_grown(stack: &Stack, old: u64, new: u64) {
    assert_eq!(stack.size(), new);
    assert_eq!(read(stack, 0, 8192), vec![1u8; 8192]);
    assert_eq!(read(stack, old - 4096, 4096), vec![2u8; 4096]);
    assert!(read(stack, old, (new - old - 4096) as usize)
        .iter()
        .all(|&b| b == 0));
    write(stack, new - 4096, 3, 4096);
    assert_eq!(read(stack, new - 4096, 4096), vec![3u8; 4096]);
    let (ctx, exec) = io();
    let mut past = vec![0u8; 4096];
    assert!(exec
        .block_on(&ctx, stack.top().read_bytes(&ctx, new, &mut past))
        .is_err());
}

fn fill_before_end(stack: &Stack) {
    let size = stack.size();
    write(stack, 0, 1, 8192);
    write(stack, size - 4096, 2, 4096);
}

fn file(dir: &Path, b: &mut PlanBuilder, name: &str, size: u64, direct: bool) -> usize {
    b.layer(
        name,
        LayerSpec::File(FileParams {
            path: dir.join(format!("{name}.img")),
            size_bytes: Some(size),
            create: true,
            direct,
        }),
    )
}

fn raid_plan(dir: &Path, stripe: u64) -> Plan {
    let mut b = PlanBuilder::new(dir, 4096);
    let s0 = file(dir, &mut b, "s0", stripe, true);
    let s1 = file(dir, &mut b, "s1", stripe, true);
    let top = b.raid0("r", &[s0, s1], 64 << 10);
    b.build(top)
}

#[test]
fn raid0_of_direct_files_grows_without_moving_data_and_reopens_grown() {
    let dir = tempfile::tempdir().unwrap();
    let stack = compile(&raid_plan(dir.path(), 4 * MIB)).unwrap();
    fill_before_end(&stack);
    // A pattern over every chunk, to see that none moved.
    let (ctx, exec) = io();
    let pattern: Vec<u8> = (0..8 * MIB).map(|i| (i / 4096 % 251) as u8).collect();
    exec.block_on(&ctx, stack.top().write_bytes(&ctx, 0, &pattern))
        .unwrap();
    write(&stack, 0, 1, 8192);
    write(&stack, 8 * MIB - 4096, 2, 4096);
    grow(&stack, &[("s0", 8 * MIB), ("s1", 8 * MIB), ("r", 16 * MIB)]);
    check_grown(&stack, 8 * MIB, 16 * MIB);
    let before = read(&stack, 8192, (8 * MIB - 8192 - 4096) as usize);
    assert_eq!(before, pattern[8192..(8 * MIB - 4096) as usize]);
    drop(stack);
    let stack = compile(&raid_plan(dir.path(), 8 * MIB)).unwrap();
    assert_eq!(stack.size(), 16 * MIB);
    assert_eq!(read(&stack, 16 * MIB - 4096, 4096), vec![3u8; 4096]);
    assert_eq!(read(&stack, 8 * MIB - 4096, 4096), vec![2u8; 4096]);
}

#[test]
fn a_memory_leaf_grows_past_a_partial_extent() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let top = b.memory("m", MIB + MIB / 2);
    let stack = compile(&b.build(top)).unwrap();
    fill_before_end(&stack);
    grow(&stack, &[("m", 5 * MIB)]);
    check_grown(&stack, MIB + MIB / 2, 5 * MIB);
}

#[test]
fn a_shrink_and_a_disk_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let top = b.memory("m", 2 * MIB);
    let stack = compile(&b.build(top)).unwrap();
    let (ctx, exec) = io();
    let e = exec.block_on(&ctx, stack.grow(&ctx, "m", MIB)).unwrap_err();
    assert!(e.contains("shrinking"), "{e}");
    assert_eq!(stack.size(), 2 * MIB);
}

fn mirror_plan(dir: &Path, leg: u64) -> Plan {
    let mut b = PlanBuilder::new(dir, 4096);
    let a = b.file("a", leg);
    let c = b.file("b", leg);
    let top = b.mirror("m", &[a, c], ReadPolicy::First);
    b.build(top)
}

fn mirror_report(stack: &Stack) -> layers::report::MirrorReport {
    match stack.layer("m").unwrap().report() {
        LayerReport::Mirror(report) => report,
        other => panic!("{other:?}"),
    }
}

const DATA_START: u64 = layers::mirror::DATA_START;

#[test]
fn a_mirror_grows_live_its_bitmap_covers_the_new_space_and_reopens_grown() {
    let dir = tempfile::tempdir().unwrap();
    let (old_leg, new_leg) = (4 * MIB + DATA_START, 12 * MIB + DATA_START);
    let stack = compile(&mirror_plan(dir.path(), old_leg)).unwrap();
    fill_before_end(&stack);
    let before = mirror_report(&stack);
    grow(&stack, &[("a", new_leg), ("b", new_leg), ("m", 12 * MIB)]);
    let after = mirror_report(&stack);
    assert!(after.generation > before.generation, "the size is recorded");
    assert!(after.regions * after.region_bytes >= 12 * MIB, "{after:?}");
    // A write in the new space sets its region's bit before it lands.
    let (ctx, exec) = io();
    exec.block_on(
        &ctx,
        stack.top().write_bytes(&ctx, 12 * MIB - 4096, &[9u8; 4096]),
    )
    .unwrap();
    assert_eq!(mirror_report(&stack).dirty_regions, after.dirty_regions + 1);
    write(&stack, 12 * MIB - 4096, 2, 4096);
    check_grown(&stack, 4 * MIB, 12 * MIB);
    drop(stack);
    let a = std::fs::read(dir.path().join("a.img")).unwrap();
    let b = std::fs::read(dir.path().join("b.img")).unwrap();
    assert_eq!(a[DATA_START as usize..], b[DATA_START as usize..]);
    let stack = compile(&mirror_plan(dir.path(), new_leg)).unwrap();
    assert_eq!(stack.size(), 12 * MIB);
    assert_eq!(read(&stack, 12 * MIB - 4096, 4096), vec![3u8; 4096]);
    assert_eq!(read(&stack, 0, 8192), vec![1u8; 8192]);
}

/// The legs grew but the daemon died before the mirror recorded its new
/// size: the next open grows the mirror itself, makes the legs agree on the
/// new space (which it cannot know they do: it marks it dirty), and records
/// the size, so a further open is plain.
#[test]
fn a_crash_between_the_legs_and_the_mirror_growing_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (old_leg, new_leg) = (4 * MIB + DATA_START, 8 * MIB + DATA_START);
    let stack = compile(&mirror_plan(dir.path(), old_leg)).unwrap();
    fill_before_end(&stack);
    grow(&stack, &[("a", new_leg), ("b", new_leg)]);
    drop(stack);
    // What only one leg holds in the new space (garbage a grown disk might
    // hold) is made equal on both.
    let leg_b = dir.path().join("b.img");
    let mut bytes = std::fs::read(&leg_b).unwrap();
    let at = (DATA_START + 6 * MIB) as usize;
    bytes[at..at + 4096].fill(0xee);
    std::fs::write(&leg_b, &bytes).unwrap();
    let stack = compile(&mirror_plan(dir.path(), new_leg)).unwrap();
    assert_eq!(stack.size(), 8 * MIB);
    let report = mirror_report(&stack);
    assert!(report.regions * report.region_bytes >= 8 * MIB);
    assert_eq!(report.dirty_regions, 0, "the new space was resynced");
    let first = read(&stack, 6 * MIB, 4096);
    drop(stack);
    let a = std::fs::read(dir.path().join("a.img")).unwrap();
    let b = std::fs::read(&leg_b).unwrap();
    assert_eq!(a[at..at + 4096], b[at..at + 4096], "the legs agree");
    assert_eq!(first, a[at..at + 4096]);
    let stack = compile(&mirror_plan(dir.path(), new_leg)).unwrap();
    assert_eq!(stack.size(), 8 * MIB);
    assert_eq!(read(&stack, 0, 8192), vec![1u8; 8192]);
}

#[test]
fn a_mirror_whose_legs_shrank_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stack = compile(&mirror_plan(dir.path(), 8 * MIB + DATA_START)).unwrap();
    drop(stack);
    for leg in ["a", "b"] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(format!("{leg}.img")))
            .unwrap();
        f.set_len(4 * MIB + DATA_START).unwrap();
    }
    let mut plan = mirror_plan(dir.path(), 4 * MIB + DATA_START);
    plan.device.block_size = 4096;
    let e = compile(&plan).err().expect("refused");
    assert!(e.message.contains("shrinking"), "{e}");
}

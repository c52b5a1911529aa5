//! `readd` rebuilds a leg through the write-intent bitmap: no bit is cleared
//! while a leg is failed, so the regions written since it failed are all it
//! gets copied, and the legs end identical. A leg that cannot show it is the
//! one that failed (wiped, or failed before a restart) gets every byte.

use std::path::Path;

use layers::exec::{Executor, IoCtx};
use layers::mirror::DATA_START;
use layers::plan::{FaultKnobs, LiveChange, Plan, ReadPolicy};
use layers::report::{LayerReport, MirrorReport};
use layers::testing::PlanBuilder;
use layers::{compile, Stack};

const MIB: u64 = 1 << 20;

/// Mirror "m" of a fault layer "f" over file "l0", and file "l1".
fn plan(dir: &Path) -> Plan {
    let mut b = PlanBuilder::new(dir, 4096);
    let (l0, l1) = (b.file("l0", 8 * MIB), b.file("l1", 8 * MIB));
    let f = b.fault("f", l0, FaultKnobs::default());
    let top = b.mirror("m", &[f, l1], ReadPolicy::First);
    b.build(top)
}

fn with_ctx<T>(f: impl FnOnce(&IoCtx, &Executor) -> T) -> T {
    let ctx = IoCtx::new(0, 64).unwrap();
    let exec = Executor::new().unwrap();
    f(&ctx, &exec)
}

fn set_write_errors(stack: &Stack, rate: f64) {
    let knobs = FaultKnobs {
        write_error_rate: rate,
        ..FaultKnobs::default()
    };
    with_ctx(|ctx, exec| {
        exec.block_on(ctx, stack.apply_live(ctx, "f", &LiveChange::Fault(knobs)))
            .unwrap()
    });
}

fn report(stack: &Stack) -> MirrorReport {
    let status = stack.status();
    let node = status.iter().find(|n| n.type_name == "mirror").unwrap();
    match &node.report {
        LayerReport::Mirror(r) => r.clone(),
        other => panic!("a mirror reports as one, not {other:?}"),
    }
}

/// Writes `fill` over `[offset, offset+len)` of the device, then flushes
/// three times (two FLUSHes with nothing in between clear idle bits).
fn write_and_settle(stack: &Stack, offset: u64, len: u64, fill: u8) {
    with_ctx(|ctx, exec| {
        exec.block_on(ctx, async {
            let data = vec![fill; len as usize];
            stack.top().write_bytes(ctx, offset, &data).await.unwrap();
            for _ in 0..3 {
                stack.flush(ctx).await.unwrap();
            }
        })
    });
}

/// Re-adds leg 0 and steps the resync to its end. Returns the bytes the
/// rebuild said it would copy, after checking that its progress rose step by
/// step to that total, which stayed put (nothing is written meanwhile).
fn readd_and_resync(stack: &Stack) -> u64 {
    let mirror = stack.mirror("m").unwrap().clone();
    let total = with_ctx(|ctx, exec| {
        exec.block_on(ctx, mirror.readd(ctx, 0)).unwrap();
        let first = mirror.resync_progress().expect("a leg is rebuilding");
        assert_eq!(first.done_bytes, 0, "{first:?}");
        let mut last = first;
        while exec.block_on(ctx, mirror.resync_step(ctx)).unwrap() {
            let now = mirror.resync_progress().expect("still rebuilding");
            assert_eq!(now.total_bytes, first.total_bytes, "{now:?}");
            assert!(now.done_bytes > last.done_bytes, "{last:?} then {now:?}");
            last = now;
        }
        assert_eq!(last.done_bytes, first.total_bytes, "{last:?}");
        assert_eq!(mirror.resync_progress(), None, "the rebuild is over");
        first.total_bytes
    });
    let r = report(stack);
    assert!(
        r.legs
            .iter()
            .all(|l| l.health == layers::report::LegHealth::Ok),
        "{r:?}"
    );
    total
}

/// The mirrored data of both legs, read below the mirror.
fn assert_legs_identical(stack: &Stack) {
    let size = layers::Layer::size(&**stack.mirror("m").unwrap());
    with_ctx(|ctx, exec| {
        let (a, b) = (stack.layer("l0").unwrap(), stack.layer("l1").unwrap());
        let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
        let mut at = 0;
        while at < size {
            let len = MIB.min(size - at) as usize;
            exec.block_on(ctx, a.read_bytes(ctx, DATA_START + at, &mut x[..len]))
                .unwrap();
            exec.block_on(ctx, b.read_bytes(ctx, DATA_START + at, &mut y[..len]))
                .unwrap();
            assert!(x[..len] == y[..len], "legs differ in the MiB at {at}");
            at += len as u64;
        }
    });
}

/// A stack whose legs hold the same data everywhere, no bit set, and leg 0
/// failed by a write to region 5; then regions 10 and 20 written, each
/// followed by FLUSHes that would clear idle bits on a healthy mirror.
fn degraded(dir: &Path) -> (Plan, Stack, u64) {
    let plan = plan(dir);
    let stack = compile(&plan).unwrap();
    let size = layers::Layer::size(&**stack.mirror("m").unwrap());
    write_and_settle(&stack, 0, size, 0x11);
    let r = report(&stack);
    assert_eq!(r.dirty_regions, 0, "{r:?}");
    let region = r.region_bytes;
    assert!(size / region >= 32, "regions of {region} bytes");
    set_write_errors(&stack, 1.0);
    write_and_settle(&stack, 5 * region + 4096, 8192, 0x55);
    assert_eq!(
        report(&stack).legs[0].health,
        layers::report::LegHealth::Failed
    );
    set_write_errors(&stack, 0.0);
    write_and_settle(&stack, 10 * region, 4096, 0xaa);
    write_and_settle(&stack, 20 * region + region - 4096, 4096, 0xbb);
    (plan, stack, region)
}

#[test]
fn readd_copies_only_the_regions_written_while_the_leg_was_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (_plan, stack, region) = degraded(dir.path());
    let r = report(&stack);
    assert_eq!(r.dirty_regions, 3, "bits kept while leg 0 is failed: {r:?}");
    assert_eq!(readd_and_resync(&stack), 3 * region);
    let r = report(&stack);
    assert_eq!(r.resync_bytes, 3 * region, "{r:?}");
    assert_legs_identical(&stack);
    // Healthy again: the next quiet FLUSHes clear the bits.
    write_and_settle(&stack, 0, 4096, 0x11);
    assert_eq!(report(&stack).dirty_regions, 0);
}

#[test]
fn readd_copies_everything_to_a_wiped_leg() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, stack, _) = degraded(dir.path());
    // The disk under leg 0 is replaced by a blank one.
    with_ctx(|ctx, exec| {
        let l0 = stack.layer("l0").unwrap();
        exec.block_on(ctx, l0.write_zeroes(ctx, 0, 8 * MIB))
            .unwrap();
    });
    let copied = readd_and_resync(&stack);
    let size = layers::Layer::size(&**stack.mirror("m").unwrap());
    assert_eq!(copied, size);
    assert_eq!(report(&stack).resync_bytes, size);
    assert_legs_identical(&stack);
    // The new disk was given the leg's superblock: it is a member again.
    drop(stack);
    let stack = compile(&plan).unwrap();
    assert!(report(&stack)
        .legs
        .iter()
        .all(|l| l.health == layers::report::LegHealth::Ok));
}

#[test]
fn readd_after_a_restart_copies_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, stack, _) = degraded(dir.path());
    drop(stack);
    let stack = compile(&plan).unwrap();
    let r = report(&stack);
    assert_eq!(r.legs[0].health, layers::report::LegHealth::Failed);
    assert_eq!(r.dirty_regions, 3, "the bits outlive the restart: {r:?}");
    let copied = readd_and_resync(&stack);
    let size = layers::Layer::size(&**stack.mirror("m").unwrap());
    assert_eq!(copied, size);
    assert_eq!(report(&stack).resync_bytes, size);
    assert_legs_identical(&stack);
}

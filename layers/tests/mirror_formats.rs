//! Opening mirror legs whose superblocks disagree with the config: each case is
//! refused with a message naming the problem, and no leg changes.

use std::path::Path;

use layers::exec::{Executor, IoCtx};
use layers::plan::{Plan, ReadPolicy};
use layers::report::{LayerReport, LegHealth};
use layers::testing::PlanBuilder;
use layers::{compile, Layer};

const MIB: u64 = 1 << 20;

fn mirror_plan(dir: &Path, legs: &[&str]) -> Plan {
    let mut b = PlanBuilder::new(dir, 4096);
    let ids: Vec<_> = legs.iter().map(|name| b.file(name, 4 * MIB)).collect();
    let top = b.mirror("m", &ids, ReadPolicy::RoundRobin);
    b.build(top)
}

fn write_through(plan: &Plan, byte: u8) {
    let stack = compile(plan).unwrap();
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    exec.block_on(&ctx, async {
        stack
            .top()
            .write_bytes(&ctx, 0, &[byte; 8192])
            .await
            .unwrap();
        stack.flush(&ctx).await.unwrap();
    });
}

fn refused(plan: &Plan, dir: &Path, leaves: &[&str], expect: &str) {
    let read = || -> Vec<Vec<u8>> {
        leaves
            .iter()
            .map(|l| std::fs::read(dir.join(format!("{l}.img"))).unwrap())
            .collect()
    };
    let before = read();
    let err = match compile(plan) {
        Ok(_) => panic!("opened although it should be refused ({expect})"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(expect),
        "error {err:?} does not mention {expect:?}"
    );
    assert!(read() == before, "a leg changed");
}

#[test]
fn mirror_legs_listed_in_another_order_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    write_through(&mirror_plan(dir.path(), &["a", "b"]), 1);
    refused(
        &mirror_plan(dir.path(), &["b", "a"]),
        dir.path(),
        &["a", "b"],
        "another order",
    );
    compile(&mirror_plan(dir.path(), &["a", "b"])).unwrap();
}

#[test]
fn mirror_leg_of_another_mirror_is_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    write_through(&mirror_plan(dir.path(), &["a", "b"]), 1);
    write_through(&mirror_plan(dir.path(), &["c", "d"]), 2);
    refused(
        &mirror_plan(dir.path(), &["a", "d"]),
        dir.path(),
        &["a", "d"],
        "belongs to another mirror",
    );
}

#[test]
fn mirror_leg_count_and_other_layers_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    write_through(&mirror_plan(dir.path(), &["a", "b"]), 1);
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let (a, bb, c) = (
        b.file("a", 4 * MIB),
        b.file("b", 4 * MIB),
        b.file("c", 4 * MIB),
    );
    let top = b.mirror("m", &[a, bb, c], ReadPolicy::RoundRobin);
    refused(&b.build(top), dir.path(), &["a", "b"], "one of 2 legs");
    // A checksum layer over a former mirror leg.
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let a = b.file("a", 4 * MIB);
    let top = b.checksum("x", a);
    refused(&b.build(top), dir.path(), &["a"], "\"mirror\" superblock");
}

#[test]
fn mirror_blank_replacement_leg_joins_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = mirror_plan(dir.path(), &["a", "b"]);
    write_through(&plan, 3);
    std::fs::write(dir.path().join("b.img"), vec![0u8; 4 * MIB as usize]).unwrap();
    let stack = compile(&plan).unwrap();
    let mirror = stack.mirror("m").unwrap().clone();
    assert_eq!(mirror.health(1), Some(layers::mirror::Health::Failed));
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    let mut got = vec![0u8; 8192];
    exec.block_on(&ctx, async {
        mirror.readd(&ctx, 1).await.unwrap();
        assert!(mirror.is_rebuilding());
        assert_eq!(mirror.resync_percent(), Some(0));
        assert!(mirror.resync_step(&ctx).await.unwrap());
        assert!(mirror.resync_step(&ctx).await.unwrap());
        // Two 1 MiB steps of a 4 MiB - 12 KiB device.
        assert_eq!(mirror.resync_percent(), Some(50));
        let LayerReport::Mirror(report) = mirror.report() else {
            panic!("a mirror reports as one")
        };
        assert_eq!(report.resync_percent, Some(50));
        assert_eq!(report.legs[1].health, LegHealth::Rebuilding);
        while mirror.resync_step(&ctx).await.unwrap() {}
        assert!(!mirror.is_rebuilding());
        for _ in 0..4 {
            mirror.read_bytes(&ctx, 0, &mut got).await.unwrap();
            assert!(got.iter().all(|&x| x == 3));
        }
    });
    assert_eq!(mirror.health(1), Some(layers::mirror::Health::Ok));
}

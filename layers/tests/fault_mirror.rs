//! The fault layer under a mirror: injected errors never reach the reader while a
//! healthy leg remains, and the mirror shows which leg failed.

use std::time::{Duration, Instant};

use layers::exec::{Executor, IoCtx};
use layers::plan::{FaultKnobs, LiveChange, ReadPolicy};
use layers::testing::{check_stack, ModelConfig, PlanBuilder};
use layers::{compile, Stack};

const MIB: u64 = 1 << 20;

fn mirror_with_faulty_leg(dir: &std::path::Path) -> Stack {
    let mut b = PlanBuilder::new(dir, 4096);
    let (l0, l1) = (b.file("l0", 8 * MIB), b.file("l1", 8 * MIB));
    let f = b.fault("f", l0, FaultKnobs::default());
    let top = b.mirror("m", &[f, l1], ReadPolicy::RoundRobin);
    compile(&b.build(top)).unwrap()
}

fn set(stack: &Stack, knobs: FaultKnobs) {
    let ctx = IoCtx::new(0, 8).unwrap();
    let exec = Executor::new().unwrap();
    exec.block_on(&ctx, stack.apply_live(&ctx, "f", &LiveChange::Fault(knobs)))
        .unwrap();
}

/// The mirror's words in the `status` table: `legs=0:ok(read_errors=0,...) 1:...`,
/// `resync=37%`, ...
fn mirror_details(stack: &Stack) -> String {
    let status = stack.status();
    let m = status.iter().find(|n| n.type_name == "mirror").unwrap();
    format!("{:?}", m.report.words())
}

#[test]
fn mirror_survives_a_leg_that_fails_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let stack = mirror_with_faulty_leg(dir.path());
    set(
        &stack,
        FaultKnobs {
            write_error_rate: 1.0,
            ..FaultKnobs::default()
        },
    );
    check_stack(&stack, 21, &ModelConfig::default()).unwrap();
    let details = mirror_details(&stack);
    assert!(details.contains("0:failed"), "{details}");
    assert!(details.contains("1:ok"), "{details}");
}

#[test]
fn mirror_reads_survive_a_leg_with_read_errors() {
    let dir = tempfile::tempdir().unwrap();
    let stack = mirror_with_faulty_leg(dir.path());
    set(
        &stack,
        FaultKnobs {
            read_error_rate: 0.5,
            ..FaultKnobs::default()
        },
    );
    check_stack(&stack, 22, &ModelConfig::default()).unwrap();
    let details = mirror_details(&stack);
    assert!(
        !details.contains("0:ok(read_errors=0,"),
        "no read error was injected: {details}"
    );
    assert!(
        details.contains("0:ok"),
        "read errors alone do not fail a leg: {details}"
    );
}

#[test]
fn delay_holds_requests_and_range_limits_faults() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("l", 8 * MIB);
    let top = b.fault(
        "f",
        leaf,
        FaultKnobs {
            read_error_rate: 1.0,
            range: Some((MIB, 2 * MIB)),
            ..FaultKnobs::default()
        },
    );
    let stack = compile(&b.build(top)).unwrap();
    let ctx = IoCtx::new(0, 8).unwrap();
    let exec = Executor::new().unwrap();
    let mut buf = vec![0u8; 4096];
    exec.block_on(&ctx, stack.top().read_bytes(&ctx, 0, &mut buf))
        .unwrap();
    let err = exec
        .block_on(&ctx, stack.top().read_bytes(&ctx, MIB + 4096, &mut buf))
        .unwrap_err();
    assert_eq!(err.errno(), -5);
    set(
        &stack,
        FaultKnobs {
            delay_us: 20_000,
            ..FaultKnobs::default()
        },
    );
    let start = Instant::now();
    exec.block_on(&ctx, stack.top().read_bytes(&ctx, MIB + 4096, &mut buf))
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(20));
}

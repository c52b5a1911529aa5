//! A mirror leg that fails is recorded as failed on the other legs, stays failed
//! across a restart (its stale data is never read), and comes back through
//! `readd` and a resync that runs while I/O continues.

use std::path::Path;
use std::time::Duration;

use layers::exec::{Executor, IoCtx};
use layers::mirror::DATA_START;
use layers::plan::{FaultKnobs, LiveChange, Plan, ReadPolicy};
use layers::rng::Rng;
use layers::testing::{check_stack, verify_image, ModelConfig, PlanBuilder};
use layers::{compile, Stack};

const MIB: u64 = 1 << 20;

/// Mirror "m" of a fault layer "f" over file "l0", and file "l1".
fn faulty_mirror_plan(dir: &Path, policy: ReadPolicy) -> Plan {
    let mut b = PlanBuilder::new(dir, 4096);
    let (l0, l1) = (b.file("l0", 8 * MIB), b.file("l1", 8 * MIB));
    let f = b.fault("f", l0, FaultKnobs::default());
    let top = b.mirror("m", &[f, l1], policy);
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

/// The mirror's words in the `status` table: `legs=0:ok(read_errors=0,...) 1:...`,
/// `resync=37%`, ...
fn legs(stack: &Stack) -> String {
    let status = stack.status();
    let m = status.iter().find(|n| n.type_name == "mirror").unwrap();
    format!("{:?}", m.report.words())
}

/// Drive the resync to its end from this thread, as the daemon would.
fn resync_to_end(stack: &Stack) -> usize {
    let mirror = stack.mirror("m").unwrap().clone();
    with_ctx(|ctx, exec| {
        let mut steps = 0;
        while exec.block_on(ctx, mirror.resync_step(ctx)).unwrap() {
            steps += 1;
        }
        steps
    })
}

/// The mirrored data of both legs, read through the layers below the mirror.
fn assert_legs_identical(stack: &Stack) {
    let size = stack.mirror("m").unwrap().clone();
    let size = layers::Layer::size(&*size);
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

#[test]
fn mirror_leg_failing_mid_run_is_recorded_and_rebuilt_while_io_continues() {
    let dir = tempfile::tempdir().unwrap();
    let plan = faulty_mirror_plan(dir.path(), ReadPolicy::RoundRobin);
    let stack = compile(&plan).unwrap();
    let cfg = ModelConfig {
        ops: 3000,
        ..ModelConfig::default()
    };
    // Phase 1: leg 0 starts failing every write in the middle of the run.
    std::thread::scope(|s| {
        let model = s.spawn(|| check_stack(&stack, 31, &cfg));
        std::thread::sleep(Duration::from_millis(300));
        set_write_errors(&stack, 1.0);
        model.join().unwrap().unwrap();
    });
    let details = legs(&stack);
    assert!(
        details.contains("0:failed") && details.contains("1:ok"),
        "{details}"
    );

    // Phase 2: the fault is cleared, the leg re-added, and the resync runs on
    // its own thread while the model keeps writing and reading.
    set_write_errors(&stack, 0.0);
    let mirror = stack.mirror("m").unwrap().clone();
    with_ctx(|ctx, exec| exec.block_on(ctx, async { mirror.readd(ctx, 0).await })).unwrap();
    assert!(legs(&stack).contains("0:rebuilding"), "{}", legs(&stack));
    assert!(legs(&stack).contains("(\"resync\","), "{}", legs(&stack));
    let image = std::thread::scope(|s| {
        let model = s.spawn(|| check_stack(&stack, 32, &cfg));
        let steps = s.spawn(|| resync_to_end(&stack));
        assert!(steps.join().unwrap() >= 7);
        model.join().unwrap().unwrap()
    });
    let details = legs(&stack);
    assert!(
        details.contains("0:ok") && details.contains("1:ok"),
        "{details}"
    );
    assert!(!details.contains("(\"resync\","), "{details}");
    assert_legs_identical(&stack);
    drop(mirror);
    drop(stack);
    let stack = compile(&plan).unwrap();
    assert!(legs(&stack).contains("0:ok"), "{}", legs(&stack));
    verify_image(&stack, &image).unwrap();
}

#[test]
fn mirror_failed_leg_stays_failed_after_restart_and_its_stale_data_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    // `first` would read leg 0 first if it were trusted.
    let plan = faulty_mirror_plan(dir.path(), ReadPolicy::First);
    let (mut old, mut new) = (vec![0u8; 64 * 4096], vec![0u8; 64 * 4096]);
    Rng::new(1).fill(&mut old);
    Rng::new(2).fill(&mut new);
    {
        let stack = compile(&plan).unwrap();
        with_ctx(|ctx, exec| {
            exec.block_on(ctx, async {
                stack.top().write_bytes(ctx, 0, &old).await.unwrap();
                stack.flush(ctx).await.unwrap();
            })
        });
        set_write_errors(&stack, 1.0);
        with_ctx(|ctx, exec| {
            exec.block_on(ctx, async {
                stack.top().write_bytes(ctx, 0, &new).await.unwrap();
                stack.flush(ctx).await.unwrap();
            })
        });
        assert!(legs(&stack).contains("0:failed"));
    }
    // The fault knobs come back cleared, but the record says leg 0 failed.
    let stack = compile(&plan).unwrap();
    let details = legs(&stack);
    assert!(
        details.contains("0:failed") && details.contains("1:ok"),
        "{details}"
    );
    let read_all = |stack: &Stack| {
        let mut got = vec![0u8; new.len()];
        with_ctx(|ctx, exec| {
            exec.block_on(ctx, async {
                stack.top().read_bytes(ctx, 0, &mut got).await.unwrap();
            })
        });
        got
    };
    assert!(read_all(&stack) == new, "stale data from the failed leg");
    // Leg 0 really holds the old data: only the state keeps it out.
    with_ctx(|ctx, exec| {
        let mut got = vec![0u8; 4096];
        exec.block_on(
            ctx,
            stack
                .layer("l0")
                .unwrap()
                .read_bytes(ctx, DATA_START, &mut got),
        )
        .unwrap();
        assert!(got == old[..4096]);
    });
    let mirror = stack.mirror("m").unwrap().clone();
    let err =
        with_ctx(|ctx, exec| exec.block_on(ctx, async { mirror.readd(ctx, 1).await })).unwrap_err();
    assert!(err.contains("only a failed leg"), "{err}");
    with_ctx(|ctx, exec| exec.block_on(ctx, async { mirror.readd(ctx, 0).await })).unwrap();
    // Not yet rebuilt: still never read.
    assert!(read_all(&stack) == new);
    resync_to_end(&stack);
    assert!(read_all(&stack) == new);
    assert_legs_identical(&stack);
    drop(mirror);
    drop(stack);
    let stack = compile(&plan).unwrap();
    assert!(legs(&stack).contains("0:ok"), "{}", legs(&stack));
    assert!(read_all(&stack) == new);
}

#[test]
fn readd_of_a_leg_that_still_fails_leaves_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = faulty_mirror_plan(dir.path(), ReadPolicy::RoundRobin);
    let stack = compile(&plan).unwrap();
    set_write_errors(&stack, 1.0);
    with_ctx(|ctx, exec| {
        exec.block_on(ctx, async {
            stack.top().write_bytes(ctx, 0, &[7u8; 4096]).await.unwrap();
        })
    });
    let mirror = stack.mirror("m").unwrap().clone();
    let err =
        with_ctx(|ctx, exec| exec.block_on(ctx, async { mirror.readd(ctx, 0).await })).unwrap_err();
    assert!(err.contains("failed again"), "{err}");
    assert!(legs(&stack).contains("0:failed"), "{}", legs(&stack));
}

#[test]
fn mirror_fails_every_write_with_eio_once_every_leg_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let (l0, l1) = (b.file("l0", 4 * MIB), b.file("l1", 4 * MIB));
    let (f0, f1) = (
        b.fault("f0", l0, FaultKnobs::default()),
        b.fault("f1", l1, FaultKnobs::default()),
    );
    let top = b.mirror("m", &[f0, f1], ReadPolicy::RoundRobin);
    let stack = compile(&b.build(top)).unwrap();
    let knobs = FaultKnobs {
        write_error_rate: 1.0,
        ..FaultKnobs::default()
    };
    with_ctx(|ctx, exec| {
        for f in ["f0", "f1"] {
            exec.block_on(
                ctx,
                stack.apply_live(ctx, f, &LiveChange::Fault(knobs.clone())),
            )
            .unwrap();
        }
        let err = exec
            .block_on(ctx, stack.top().write_bytes(ctx, 0, &[1u8; 4096]))
            .unwrap_err();
        assert_eq!(err.errno(), -libc_eio());
        let mut buf = [0u8; 4096];
        let err = exec
            .block_on(ctx, stack.top().read_bytes(ctx, 0, &mut buf))
            .unwrap_err();
        assert_eq!(err.errno(), -libc_eio());
    });
    let details = legs(&stack);
    assert!(
        details.contains("0:failed") && details.contains("1:failed"),
        "{details}"
    );
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn mirror_leg_failing_every_read_is_failed_after_a_run_of_errors() {
    let dir = tempfile::tempdir().unwrap();
    let plan = faulty_mirror_plan(dir.path(), ReadPolicy::First);
    let stack = compile(&plan).unwrap();
    let knobs = FaultKnobs {
        read_error_rate: 1.0,
        ..FaultKnobs::default()
    };
    with_ctx(|ctx, exec| {
        exec.block_on(ctx, async {
            stack.top().write_bytes(ctx, 0, &[9u8; 4096]).await.unwrap();
            stack
                .apply_live(ctx, "f", &LiveChange::Fault(knobs))
                .await
                .unwrap();
            let mut buf = [0u8; 4096];
            for i in 0..layers::mirror::READ_ERRORS_TO_FAIL + 8 {
                stack.top().read_bytes(ctx, 0, &mut buf).await.unwrap();
                assert!(buf.iter().all(|&b| b == 9), "read {i}");
            }
        })
    });
    let details = legs(&stack);
    assert!(
        details.contains("0:failed(read_errors=32,"),
        "failed after exactly the threshold: {details}"
    );
    drop(stack);
    let stack = compile(&plan).unwrap();
    assert!(legs(&stack).contains("0:failed"), "{}", legs(&stack));
}

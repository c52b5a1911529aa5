//! A raise whose k-th write or flush below fails with EIO, for every k, and
//! every layer that keeps metadata of its size: compress (version 3, and a
//! version 2 image becoming version 3), checksum, crypt and mirror. The
//! process goes on (no crash), so the images are reopened as the disks hold
//! them, unflushed writes included.
//!
//! - the raise returns an error, never Ok;
//! - the running layer still serves its old size: what it held reads back,
//!   and a new write and flush take;
//! - reopened with the old config, the layer opens at the old size, or
//!   refuses it as a shrink when the new size's record had landed; with the
//!   new config it opens at the new size, all of it usable, nothing flushed
//!   lost;
//! - a retry of the raise on the running layer succeeds.
//!
//! A mirror leg whose write fails is failed, as it is for any write: the
//! raise goes on with the other leg and succeeds degraded; re-added, the
//! leg is rebuilt to the new size, writes it missed included. With the fault
//! on every leg at once the mirror has no leg left: the raise fails, I/O
//! fails with EIO, and a retry says why it is refused.

use std::sync::Arc;

use layers::exec::{Executor, IoCtx};
use layers::plan::{Plan, ReadPolicy};
use layers::report::{LayerReport, LegHealth};
use layers::testing::sim::{SimFault, SimWorld};
use layers::testing::sim_crash::compile_over_sim;
use layers::testing::{PlanBuilder, Rng};
use layers::{checksum, crypt, mirror, Error, Stack};

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

/// A stack and the layer of it to raise, before and after.
struct Case {
    name: &'static str,
    /// The plan at the old size and at the new (they differ only where the
    /// config names a size: compress).
    old_plan: Plan,
    new_plan: Plan,
    images: Vec<Vec<u8>>,
    /// Leaves grown first, as a reload does (no I/O on a simulated disk).
    leaves: Vec<(&'static str, u64)>,
    /// The layer raised, and to what.
    layer: &'static str,
    new: u64,
    /// The disks whose k-th write or flush fails.
    faulty: Vec<usize>,
}

struct Io {
    ctx: IoCtx,
    exec: Executor,
}

impl Io {
    fn new() -> Io {
        Io {
            ctx: IoCtx::new(0, 16).unwrap(),
            exec: Executor::new().unwrap(),
        }
    }

    fn read(&self, stack: &Stack, at: u64, len: u64) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; len as usize];
        self.exec
            .block_on(&self.ctx, stack.top().read_bytes(&self.ctx, at, &mut out))?;
        Ok(out)
    }

    fn write(&self, stack: &Stack, at: u64, data: &[u8]) -> Result<(), Error> {
        self.exec.block_on(&self.ctx, async {
            stack.top().write_bytes(&self.ctx, at, data).await?;
            stack.flush(&self.ctx).await
        })
    }

    fn grow(&self, stack: &Stack, name: &str, size: u64) -> Result<(), String> {
        self.exec
            .block_on(&self.ctx, stack.grow(&self.ctx, name, size))
    }
}

fn block(seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; BLOCK as usize];
    if seed % 2 == 0 {
        Rng::new(seed).fill(&mut out);
    } else {
        out.fill(b'a' + (seed % 26) as u8);
    }
    out
}

/// Write a few blocks over the old size (its first, middle and last) and
/// flush; returns everything the layer holds.
fn fill(io: &Io, stack: &Stack) -> Vec<u8> {
    let size = stack.size();
    for (i, at) in [0, size / 2 / BLOCK * BLOCK, size - BLOCK]
        .into_iter()
        .enumerate()
    {
        io.write(stack, at, &block(i as u64 + 1)).unwrap();
    }
    io.read(stack, 0, size).unwrap()
}

/// The layer serves `held` in front, zeros after it up to `size`, and takes
/// a write at its end (then zeros again there).
fn check_whole(io: &Io, stack: &Stack, held: &[u8], size: u64, what: &str) {
    assert_eq!(stack.size(), size, "{what}");
    let all = io.read(stack, 0, size).unwrap();
    assert!(
        all[..held.len()] == *held,
        "{what}: the data before the raise"
    );
    assert!(
        all[held.len()..].iter().all(|&b| b == 0),
        "{what}: the new space reads zeros"
    );
    if size > held.len() as u64 {
        for last in [block(99), vec![0u8; BLOCK as usize]] {
            io.write(stack, size - BLOCK, &last)
                .unwrap_or_else(|e| panic!("{what}: write at the new end: {e}"));
            assert_eq!(io.read(stack, size - BLOCK, BLOCK).unwrap(), last, "{what}");
        }
    }
}

fn reopen(world: &SimWorld, disks: usize, plan: &Plan) -> Result<(Arc<SimWorld>, Stack), String> {
    let images = (0..disks).map(|d| world.image(d)).collect();
    let world = SimWorld::new(2, images);
    let stack = compile_over_sim(plan, &world)?;
    Ok((world, stack))
}

fn fired(world: &SimWorld) -> bool {
    !world
        .armed()
        .iter()
        .any(|f| matches!(f, SimFault::FailIo { .. }))
}

/// Run `case` with a failure at every write and flush of its raise, each
/// twice: with a write and flush after the failure, and with the retry
/// first (no later write rewrites what the failure left below). Returns
/// how many events the raise has.
fn every_event(case: &Case) -> u64 {
    let io = Io::new();
    for k in 0.. {
        for write_first in [true, false] {
            if !fail_at(case, &io, k, write_first) {
                return k;
            }
        }
    }
    unreachable!()
}

/// Raise with event `k` failing and check what follows (see the module
/// doc); false when the raise has no event `k` (then it must succeed).
fn fail_at(case: &Case, io: &Io, k: u64, write_first: bool) -> bool {
    let what = format!("{}: event {k} of the raise fails", case.name);
    let disks = case.images.len();
    let world = SimWorld::new(1, case.images.clone());
    let stack = compile_over_sim(&case.old_plan, &world).unwrap();
    let old = stack.size();
    let mut held = fill(io, &stack);
    for &(leaf, size) in &case.leaves {
        io.grow(&stack, leaf, size).unwrap();
    }
    for &leaf in &case.faulty {
        world.arm(SimFault::FailIo { leaf, skip: k });
    }
    let res = io.grow(&stack, case.layer, case.new);
    if !fired(&world) {
        world.disarm();
        assert!(k > 0, "{what}: the raise wrote nothing");
        res.unwrap_or_else(|e| panic!("{what}: with no fault: {e}"));
        check_whole(io, &stack, &held, case.new, &what);
        return false;
    }
    let why = res.expect_err(&what);
    assert!(!why.is_empty());
    // Running on at the old size.
    check_whole(io, &stack, &held, old, &format!("{what}, at the old size"));
    if write_first {
        let again = block(k + 100);
        io.write(&stack, BLOCK, &again)
            .unwrap_or_else(|e| panic!("{what}: a write after the failure: {e}"));
        held[BLOCK as usize..2 * BLOCK as usize].copy_from_slice(&again);
    }
    // Reopened as the disks are: at the old config, the old size (the new
    // one where it follows the device below) or a refused shrink; at the
    // new config, the new size.
    match reopen(&world, disks, &case.old_plan) {
        Ok((_, again)) => {
            assert!([old, case.new].contains(&again.size()), "{what}");
            let size = again.size();
            check_whole(io, &again, &held, size, &format!("{what}, reopened"));
        }
        Err(e) => assert!(e.contains("shrinking"), "{what}: reopened: {e}"),
    }
    let (_, grown) = reopen(&world, disks, &case.new_plan)
        .unwrap_or_else(|e| panic!("{what}: reopened at the new size: {e}"));
    check_whole(
        io,
        &grown,
        &held,
        case.new,
        &format!("{what}, reopened grown"),
    );
    drop(grown);
    // The retry, on the running layer, and what it leaves below.
    io.grow(&stack, case.layer, case.new)
        .unwrap_or_else(|e| panic!("{what}: the retry: {e}"));
    check_whole(io, &stack, &held, case.new, &format!("{what}, retried"));
    let (_, retried) = reopen(&world, disks, &case.new_plan)
        .unwrap_or_else(|e| panic!("{what}: reopened after the retry: {e}"));
    let what = format!("{what}, reopened after the retry");
    check_whole(io, &retried, &held, case.new, &what);
    true
}

fn key() -> &'static str {
    std::env::set_var("GROW_FAULTS_KEY", "5c".repeat(32));
    "GROW_FAULTS_KEY"
}

/// `meta` ("checksum" or "crypt") over one disk, grown from 1 to 3 MiB below.
fn meta_case(meta: &'static str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let (old_leaf, new_leaf) = (MIB, 3 * MIB);
    let mut b = PlanBuilder::new(dir.path(), BLOCK as u32);
    let d = b.memory("d", old_leaf);
    let top = match meta {
        "checksum" => b.checksum("x", d),
        _ => b.crypt("x", d, key()),
    };
    let plan = b.build(top);
    let new = match meta {
        "checksum" => checksum::exposed_size(new_leaf, BLOCK as u32),
        _ => crypt::exposed_size(new_leaf, BLOCK as u32),
    };
    Case {
        name: meta,
        old_plan: plan.clone(),
        new_plan: plan,
        images: vec![vec![0u8; old_leaf as usize]],
        leaves: vec![("d", new_leaf)],
        layer: "x",
        new,
        faulty: vec![0],
    }
}

fn compress_plan(leaf: u64, size: Option<u64>) -> Plan {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), BLOCK as u32);
    let d = b.memory("d", leaf);
    let top = b.compress("z", d, size);
    b.build(top)
}

#[test]
fn checksum_raise_fails_cleanly_at_every_event() {
    let raises = every_event(&meta_case("checksum"));
    eprintln!("checksum: {raises} events");
}

#[test]
fn crypt_raise_fails_cleanly_at_every_event() {
    let raises = every_event(&meta_case("crypt"));
    eprintln!("crypt: {raises} events");
}

/// A version 3 layer whose old size ends in a short unit (made whole by
/// the raise), over a device below that grows too, raised past its map's
/// in-place page.
#[test]
fn compress_raise_fails_cleanly_at_every_event() {
    let (old_leaf, new_leaf) = (4 * MIB, 6 * MIB);
    let (old, new) = (MIB + 8 * KIB, 8 * MIB);
    let raises = every_event(&Case {
        name: "compress",
        old_plan: compress_plan(old_leaf, Some(old)),
        new_plan: compress_plan(new_leaf, Some(new)),
        images: vec![vec![0u8; old_leaf as usize]],
        leaves: vec![("d", new_leaf)],
        layer: "z",
        new,
        faulty: vec![0],
    });
    eprintln!("compress: {raises} events");
}

/// The pinned version 2 image, which the raise makes version 3.
#[test]
fn compress_version_2_raise_fails_cleanly_at_every_event() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/formats/compress-v2/leaf.img"
    );
    let image = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let leaf = image.len() as u64;
    let new = 4 * MIB;
    let raises = every_event(&Case {
        name: "compress version 2",
        old_plan: compress_plan(leaf, None),
        new_plan: compress_plan(leaf, Some(new)),
        images: vec![image],
        leaves: vec![],
        layer: "z",
        new,
        faulty: vec![0],
    });
    eprintln!("compress version 2: {raises} events");
}

fn mirror_plan(leg: u64) -> Plan {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), BLOCK as u32);
    let l0 = b.memory("l0", leg);
    let l1 = b.memory("l1", leg);
    let top = b.mirror("m", &[l0, l1], ReadPolicy::RoundRobin);
    b.build(top)
}

fn leg_health(stack: &Stack) -> Vec<LegHealth> {
    match stack.layer("m").unwrap().report() {
        LayerReport::Mirror(r) => r.legs.iter().map(|l| l.health).collect(),
        other => panic!("not a mirror: {other:?}"),
    }
}

/// A leg failing a write of the raise is failed; the mirror grows on the
/// other leg, and reopens grown with that leg failed.
#[test]
fn mirror_raise_goes_on_without_a_leg_that_fails_an_event() {
    let io = Io::new();
    let (old_leg, new_leg) = (MIB, 3 * MIB);
    let plan = mirror_plan(old_leg);
    let new = mirror::exposed_size(new_leg, BLOCK as u32);
    for leg in 0..2 {
        for k in 0.. {
            let what = format!("mirror: event {k} of the raise fails on leg {leg}");
            let world = SimWorld::new(1, vec![vec![0u8; old_leg as usize]; 2]);
            let stack = compile_over_sim(&plan, &world).unwrap();
            let held = fill(&io, &stack);
            io.grow(&stack, "l0", new_leg).unwrap();
            io.grow(&stack, "l1", new_leg).unwrap();
            world.arm(SimFault::FailIo { leaf: leg, skip: k });
            io.grow(&stack, "m", new)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if !fired(&world) {
                world.disarm();
                assert!(k > 0, "{what}: the raise wrote nothing");
                assert_eq!(leg_health(&stack), [LegHealth::Ok; 2], "{what}");
                break;
            }
            let mut want = [LegHealth::Ok; 2];
            want[leg] = LegHealth::Failed;
            assert_eq!(leg_health(&stack), want, "{what}");
            check_whole(&io, &stack, &held, new, &what);
            let (_, again) = reopen(&world, 2, &plan).unwrap();
            assert_eq!(leg_health(&again), want, "{what}, reopened");
            check_whole(&io, &again, &held, new, &format!("{what}, reopened"));
        }
    }
}

/// Steps the resync of the mirror of `stack` to its end.
fn resync(io: &Io, stack: &Stack, what: &str) {
    let mirror = stack.mirror("m").unwrap();
    while io
        .exec
        .block_on(&io.ctx, mirror.resync_step(&io.ctx))
        .unwrap_or_else(|e| panic!("{what}: resync: {e}"))
    {}
}

/// The data areas of both legs of a mirror of `size` bytes, as the disks
/// hold them.
fn assert_legs_identical(world: &SimWorld, size: u64, what: &str) {
    let (a, b) = (world.image(0), world.image(1));
    let data = mirror::DATA_START as usize..(mirror::DATA_START + size) as usize;
    if let Some(at) = (data.start..data.end).step_by(BLOCK as usize).find(|&at| {
        let end = at + BLOCK as usize;
        a[at..end] != b[at..end]
    }) {
        panic!("{what}: the legs differ at byte {}", at - data.start);
    }
}

/// A leg failed by an event of the raise, written around while failed (in
/// the old space and the new), then re-added: the resync leaves both legs
/// holding everything at the new size, and the mirror reopens grown with
/// both legs ok.
#[test]
fn mirror_leg_failed_by_the_raise_is_readded_and_resynced_at_the_new_size() {
    let io = Io::new();
    let (old_leg, new_leg) = (MIB, 3 * MIB);
    let plan = mirror_plan(old_leg);
    let new = mirror::exposed_size(new_leg, BLOCK as u32);
    for leg in 0..2 {
        for k in 0.. {
            let what = format!("mirror: event {k} of the raise fails on leg {leg}");
            let world = SimWorld::new(1, vec![vec![0u8; old_leg as usize]; 2]);
            let stack = compile_over_sim(&plan, &world).unwrap();
            let old = stack.size();
            let mut held = fill(&io, &stack);
            io.grow(&stack, "l0", new_leg).unwrap();
            io.grow(&stack, "l1", new_leg).unwrap();
            world.arm(SimFault::FailIo { leaf: leg, skip: k });
            io.grow(&stack, "m", new)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if !fired(&world) {
                world.disarm();
                assert!(k > 0, "{what}: the raise wrote nothing");
                break;
            }
            assert_ne!(leg_health(&stack)[leg], LegHealth::Ok, "{what}");
            // What the failed leg misses: old space and new, its last block too.
            held.resize(new as usize, 0);
            for (i, at) in [BLOCK, old + 5 * BLOCK, new - BLOCK]
                .into_iter()
                .enumerate()
            {
                let data = block(i as u64 + 50);
                io.write(&stack, at, &data)
                    .unwrap_or_else(|e| panic!("{what}: a degraded write: {e}"));
                held[at as usize..(at + BLOCK) as usize].copy_from_slice(&data);
            }
            io.exec
                .block_on(&io.ctx, stack.mirror("m").unwrap().readd(&io.ctx, leg))
                .unwrap_or_else(|e| panic!("{what}: readd: {e}"));
            resync(&io, &stack, &what);
            let what = format!("{what}, re-added");
            assert_eq!(leg_health(&stack), [LegHealth::Ok; 2], "{what}");
            assert_eq!(stack.size(), new, "{what}");
            assert!(io.read(&stack, 0, new).unwrap() == held, "{what}: the data");
            assert_legs_identical(&world, new, &what);
            let (_, again) =
                reopen(&world, 2, &plan).unwrap_or_else(|e| panic!("{what}: reopened: {e}"));
            let what = format!("{what}, reopened");
            assert_eq!(leg_health(&again), [LegHealth::Ok; 2], "{what}");
            assert_eq!(again.size(), new, "{what}");
            assert!(io.read(&again, 0, new).unwrap() == held, "{what}: the data");
        }
    }
}

/// With the fault on both legs at once no leg is left to record anything:
/// the raise fails, so does I/O, and a retry is refused saying why.
#[test]
fn mirror_raise_failing_on_every_leg_fails_the_mirror() {
    let io = Io::new();
    let plan = mirror_plan(MIB);
    let new = mirror::exposed_size(3 * MIB, BLOCK as u32);
    let world = SimWorld::new(1, vec![vec![0u8; MIB as usize]; 2]);
    let stack = compile_over_sim(&plan, &world).unwrap();
    let old = stack.size();
    let held = fill(&io, &stack);
    io.grow(&stack, "l0", 3 * MIB).unwrap();
    io.grow(&stack, "l1", 3 * MIB).unwrap();
    world.arm(SimFault::FailIo { leaf: 0, skip: 0 });
    world.arm(SimFault::FailIo { leaf: 1, skip: 0 });
    let why = io.grow(&stack, "m", new).unwrap_err();
    eprintln!("raise: {why}");
    assert_eq!(stack.size(), old);
    assert_eq!(leg_health(&stack), [LegHealth::Failed; 2]);
    assert_eq!(io.read(&stack, 0, BLOCK), Err(Error::Io(libc::EIO)));
    let retry = io.grow(&stack, "m", new).unwrap_err();
    assert!(retry.contains("leg 0 is failed"), "{retry}");
    // Reopened, the old records on the legs still hold the data.
    let (_, again) = reopen(&world, 2, &plan).unwrap();
    check_whole(&io, &again, &held, again.size(), "reopened");
}

/// A grouped table's raise failing at its last flush, more times than a
/// layer may grow between two opens: a failed raise leaves nothing in
/// memory that a retry counts, so the retry still succeeds.
#[test]
fn a_checksum_raise_retried_after_many_failures_succeeds() {
    let case = meta_case("checksum");
    let events = every_event(&case);
    let io = Io::new();
    let world = SimWorld::new(1, case.images.clone());
    let stack = compile_over_sim(&case.old_plan, &world).unwrap();
    let (old, held) = (stack.size(), fill(&io, &stack));
    io.grow(&stack, "d", case.leaves[0].1).unwrap();
    for _ in 0..40 {
        world.arm(SimFault::FailIo {
            leaf: 0,
            skip: events - 1,
        });
        let why = io.grow(&stack, "x", case.new).unwrap_err();
        assert!(fired(&world), "refused before the fault: {why}");
        assert_eq!(stack.size(), old);
    }
    io.grow(&stack, "x", case.new)
        .unwrap_or_else(|e| panic!("the retry: {e}"));
    check_whole(&io, &stack, &held, case.new, "retried");
}

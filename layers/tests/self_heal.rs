//! A mirror of checksummed legs heals itself: a block corrupted behind the
//! daemon's back on one leg reads correctly from the other, and the bad copy is
//! rewritten.

use layers::exec::{Executor, IoCtx};
use layers::plan::ReadPolicy;
use layers::report::{LayerReport, LegHealth, LegReport};
use layers::rng::Rng;
use layers::testing::PlanBuilder;
use layers::{compile, Plan};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;

fn plan(dir: &std::path::Path) -> Plan {
    let mut b = PlanBuilder::new(dir, 4096);
    let (l0, l1) = (b.file("l0", 4 * MIB), b.file("l1", 4 * MIB));
    let (c0, c1) = (b.checksum("c0", l0), b.checksum("c1", l1));
    // `first` reads leg 0 first, so the corrupt copy is always tried.
    let top = b.mirror("m", &[c0, c1], ReadPolicy::First);
    b.build(top)
}

fn corrupt(path: &std::path::Path, block_data: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &block_data[..64])
        .expect("block on the leg");
    bytes[at + 1000] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_copy_is_served_from_the_other_leg_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let mut data = vec![0u8; 32 * BLOCK];
    Rng::new(5).fill(&mut data);
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    {
        let stack = compile(&plan).unwrap();
        exec.block_on(&ctx, async {
            stack.top().write_bytes(&ctx, 0, &data).await.unwrap();
            stack.flush(&ctx).await.unwrap();
        });
    }
    for block in [3usize, 17, 30] {
        corrupt(&dir.path().join("l0.img"), &data[block * BLOCK..]);
    }
    let stack = compile(&plan).unwrap();
    let mut got = vec![0u8; BLOCK];
    for block in 0..32 {
        exec.block_on(
            &ctx,
            stack
                .top()
                .read_bytes(&ctx, (block * BLOCK) as u64, &mut got),
        )
        .unwrap_or_else(|e| panic!("block {block}: {e}"));
        assert!(
            got == data[block * BLOCK..(block + 1) * BLOCK],
            "block {block} wrong"
        );
    }
    let status = stack.status();
    let mirror = status.iter().find(|n| n.type_name == "mirror").unwrap();
    let LayerReport::Mirror(report) = &mirror.report else {
        panic!("not a mirror: {:?}", mirror.report)
    };
    let leg = LegReport {
        health: LegHealth::Ok,
        read_errors: 3,
        write_errors: 0,
        repaired: 3,
    };
    assert_eq!(report.legs[0], leg, "{report:?}");
    // Leg 0 alone now holds good copies: reading it directly verifies (the
    // mirror's data starts after its metadata on each leg).
    let c0 = stack.layer("c0").unwrap();
    for block in [3usize, 17, 30] {
        let at = layers::mirror::DATA_START + (block * BLOCK) as u64;
        exec.block_on(&ctx, c0.read_bytes(&ctx, at, &mut got))
            .unwrap();
        assert!(got == data[block * BLOCK..(block + 1) * BLOCK]);
    }
}

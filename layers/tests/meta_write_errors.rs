//! A table page write that fails with EIO (the request fails), then a flush
//! that succeeds, then a crash while the page is written again: the blocks
//! flushed before read back. The flush must not count the slot the failed
//! write was aimed at as durable, or the page's next write goes to the
//! only good copy, and a torn write of it leaves neither slot right.
//!
//! Checksum and crypt keep their tables in the same format, and both write
//! a block's table page before the block, so the first write below a block
//! write is its page.

use layers::exec::{Executor, IoCtx};
use layers::testing::sim::{SimFault, SimWorld};
use layers::testing::sim_crash::compile_over_sim;
use layers::testing::{PlanBuilder, Rng};

const BLOCK: u64 = 4096;

#[derive(Clone, Copy, Debug)]
enum Meta {
    Checksum,
    Crypt,
}

fn a_failed_page_write_then_a_flush_then_a_crash(meta: Meta) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), BLOCK as u32);
    let d = b.memory("d", 1 << 20);
    let top = match meta {
        Meta::Checksum => b.checksum("x", d),
        Meta::Crypt => {
            std::env::set_var("META_WRITE_ERRORS_KEY", "a7".repeat(32));
            b.crypt("x", d, "META_WRITE_ERRORS_KEY")
        }
    };
    let plan = b.build(top);
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    let world = SimWorld::new(1, vec![vec![0u8; 1 << 20]]);
    let stack = compile_over_sim(&plan, &world).unwrap();
    let a = vec![7u8; BLOCK as usize];
    exec.block_on(&ctx, stack.top().write_bytes(&ctx, 0, &a))
        .unwrap();
    exec.block_on(&ctx, stack.flush(&ctx)).unwrap();
    world.arm(SimFault::FailIo { leaf: 0, skip: 0 });
    let failed = exec.block_on(&ctx, stack.top().write_bytes(&ctx, BLOCK, &[8u8; 4096]));
    assert!(failed.is_err(), "{meta:?}: the failed page write");
    // The flush writes the page again, then flushes.
    exec.block_on(&ctx, stack.flush(&ctx)).unwrap();
    exec.block_on(&ctx, stack.top().write_bytes(&ctx, 2 * BLOCK, &[9u8; 4096]))
        .unwrap();
    let mut rng = Rng::new(5);
    for i in 0..64 {
        let images = world.crash_images(&mut rng);
        let w = SimWorld::new(2, images);
        let s = compile_over_sim(&plan, &w).unwrap();
        let mut buf = vec![0u8; BLOCK as usize];
        let res = exec.block_on(&ctx, s.top().read_bytes(&ctx, 0, &mut buf));
        assert!(
            res.is_ok() && buf == a,
            "{meta:?}: crash image {i}: block 0 reads {res:?}"
        );
    }
}

#[test]
fn a_failed_page_write_then_a_flush_then_a_crash_loses_nothing_flushed() {
    a_failed_page_write_then_a_flush_then_a_crash(Meta::Checksum);
}

#[test]
fn a_failed_crypt_page_write_then_a_flush_then_a_crash_loses_nothing_flushed() {
    a_failed_page_write_then_a_flush_then_a_crash(Meta::Crypt);
}

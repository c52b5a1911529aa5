//! Opening devices whose on-disk format disagrees with the config: each case is
//! refused with a specific message and leaves the leaf byte for byte unchanged.

use layers::exec::{Executor, IoCtx};
use layers::plan::{LayerSpec, Plan};
use layers::testing::PlanBuilder;
use layers::{compile, LayerReport};

const MIB: u64 = 1 << 20;

fn write_through(plan: &Plan, offset: u64, data: &[u8]) {
    let stack = compile(plan).unwrap();
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    exec.block_on(&ctx, async {
        stack.top().write_bytes(&ctx, offset, data).await.unwrap();
        stack.flush(&ctx).await.unwrap();
    });
}

fn refused(plan: &Plan, leaf: &std::path::Path, expect: &str) {
    let before = std::fs::read(leaf).unwrap();
    let err = match compile(plan) {
        Ok(_) => panic!("opened although it should be refused ({expect})"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(expect),
        "error {err:?} does not mention {expect:?}"
    );
    assert!(std::fs::read(leaf).unwrap() == before, "the leaf changed");
}

fn crypt_plan(dir: &std::path::Path, key_env: &str, block: u32) -> Plan {
    let mut b = PlanBuilder::new(dir, block);
    let leaf = b.file("leaf", 4 * MIB);
    let top = b.crypt("x", leaf, key_env);
    b.build(top)
}

#[test]
fn wrong_key_is_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("FMT_KEY_RIGHT", "01".repeat(32));
    std::env::set_var("FMT_KEY_WRONG", "02".repeat(32));
    write_through(
        &crypt_plan(dir.path(), "FMT_KEY_RIGHT", 4096),
        8192,
        &[9u8; 4096],
    );
    refused(
        &crypt_plan(dir.path(), "FMT_KEY_WRONG", 4096),
        &dir.path().join("leaf.img"),
        "wrong key",
    );
    // The right key still opens it.
    compile(&crypt_plan(dir.path(), "FMT_KEY_RIGHT", 4096)).unwrap();
}

#[test]
fn known_plaintext_is_nowhere_on_the_leaf() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("FMT_KEY_PT", "ab".repeat(32));
    let marker = b"ublk-stack known plaintext marker 0123456789";
    let mut data = Vec::new();
    while data.len() < 64 * 1024 {
        data.extend_from_slice(marker);
    }
    data.truncate(64 * 1024);
    write_through(&crypt_plan(dir.path(), "FMT_KEY_PT", 4096), 0, &data);
    let leaf = std::fs::read(dir.path().join("leaf.img")).unwrap();
    assert!(
        !leaf.windows(16).any(|w| w == &marker[..16]),
        "plaintext found on the leaf"
    );
}

#[test]
fn another_layers_superblock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("FMT_KEY_OTHER", "cd".repeat(32));
    write_through(
        &crypt_plan(dir.path(), "FMT_KEY_OTHER", 4096),
        0,
        &[1u8; 4096],
    );
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("leaf", 4 * MIB);
    let top = b.checksum("c", leaf);
    refused(
        &b.build(top),
        &dir.path().join("leaf.img"),
        "\"crypt\" superblock",
    );
}

#[test]
fn other_block_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("leaf", 4 * MIB);
    let top = b.checksum("c", leaf);
    write_through(&b.build(top), 0, &[1u8; 4096]);
    let mut b = PlanBuilder::new(dir.path(), 512);
    let leaf = b.file("leaf", 4 * MIB);
    let top = b.checksum("c", leaf);
    refused(
        &b.build(top),
        &dir.path().join("leaf.img"),
        "block_size 4096",
    );
}

#[test]
fn data_without_a_superblock_is_not_formatted() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("leaf", 4 * MIB);
    let plan_raw = b.build(leaf);
    let mut fs = vec![0u8; 4096];
    fs[..27].copy_from_slice(b"an existing filesystem, say");
    write_through(&plan_raw, 0, &fs);
    let mut plan = plan_raw.clone();
    plan.layers.push(layers::plan::LayerPlan {
        name: "c".into(),
        spec: LayerSpec::Checksum(layers::plan::ChecksumParams {
            over: 0,
            algorithm: "crc32".into(),
        }),
    });
    plan.top = 1;
    refused(
        &plan,
        &dir.path().join("leaf.img"),
        "no ublk-stack superblock",
    );
}

#[test]
fn flipped_byte_under_checksum_fails_exactly_that_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("leaf", 4 * MIB);
    let top = b.checksum("c", leaf);
    let plan = b.build(top);
    let mut data = vec![0u8; 16 * 4096];
    layers::rng::Rng::new(77).fill(&mut data);
    write_through(&plan, 0, &data);
    // Find block 5's data on the leaf and flip one byte of it.
    let path = dir.path().join("leaf.img");
    let mut leaf_bytes = std::fs::read(&path).unwrap();
    let needle = &data[5 * 4096..5 * 4096 + 64];
    let at = leaf_bytes
        .windows(64)
        .position(|w| w == needle)
        .expect("block 5 on the leaf");
    leaf_bytes[at + 100] ^= 0x40;
    std::fs::write(&path, &leaf_bytes).unwrap();
    let stack = compile(&plan).unwrap();
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    let mut buf = vec![0u8; 4096];
    for block in 0..16u64 {
        let res = exec.block_on(&ctx, stack.top().read_bytes(&ctx, block * 4096, &mut buf));
        if block == 5 {
            assert!(
                matches!(res, Err(layers::Error::Corrupt { offset: 20480 })),
                "{res:?}"
            );
            assert_eq!(res.unwrap_err().errno(), -libc_eio());
        } else {
            res.unwrap();
            assert_eq!(
                buf,
                data[block as usize * 4096..(block as usize + 1) * 4096]
            );
        }
    }
    let status = stack.status();
    let checksum = status.iter().find(|n| n.type_name == "checksum").unwrap();
    match &checksum.report {
        LayerReport::Checksum(report) => assert_eq!(report.mismatches, 1),
        other => panic!("not a checksum: {other:?}"),
    }
}

fn libc_eio() -> i32 {
    5
}

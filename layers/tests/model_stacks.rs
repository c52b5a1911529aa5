//! Every layer and stacks of them, on real temporary files through io_uring,
//! checked against a plain in-memory image; then reopened and read back.

use layers::plan::ReadPolicy;
use layers::report::{LayerReport, LeafIo, LeafReport};
use layers::testing::{check_stack, rng::seeds, verify_image, ModelConfig, PlanBuilder};
use layers::{compile, Plan};

const MIB: u64 = 1 << 20;

fn run(name: &str, plan: Plan, base_seed: u64, cfg: ModelConfig) {
    for seed in seeds(base_seed, 3) {
        let stack = compile(&plan).unwrap_or_else(|e| panic!("{name}: {e}"));
        let image = check_stack(&stack, seed, &cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(stack);
        // Reopen the same files: everything written is still there.
        let stack = compile(&plan).unwrap_or_else(|e| panic!("{name}: reopen: {e}"));
        verify_image(&stack, &image)
            .unwrap_or_else(|e| panic!("{name}: seed {seed}: after reopen: {e}"));
    }
}

fn cfg() -> ModelConfig {
    ModelConfig::default()
}

#[test]
fn file_leaf_matches_model() {
    for block in [512, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), block);
        let top = b.file("a", 8 * MIB);
        run("file", b.build(top), 1, cfg());
    }
}

/// Files on tmpfs take the synchronous pread/pwrite path; the same model must
/// hold there, alone and under raid0 and mirror.
#[test]
fn tmpfs_file_leaves_match_model() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm here; skipped");
        return;
    }
    for block in [512, 4096] {
        let dir = tempfile::tempdir_in(shm).unwrap();
        let mut b = PlanBuilder::new(dir.path(), block);
        let top = b.file("a", 8 * MIB);
        let plan = b.build(top);
        let stack = compile(&plan).unwrap();
        let report = stack.layer("a").unwrap().report();
        assert_eq!(
            report,
            LayerReport::File(LeafReport {
                io: LeafIo::Sync,
                misaligned_copies: None,
            }),
            "a tmpfs file leaf must use the synchronous path"
        );
        drop(stack);
        run("tmpfs file", plan, 40, cfg());
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let stripes: Vec<_> = (0..2).map(|i| b.file(&format!("s{i}"), 4 * MIB)).collect();
    let r = b.raid0("r", &stripes, 8192);
    let other = b.file("c", 8 * MIB);
    let top = b.mirror("m", &[r, other], ReadPolicy::RoundRobin);
    run("mirror of tmpfs raid0", b.build(top), 41, cfg());
}

#[test]
fn memory_leaf_matches_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let top = b.memory("m", 8 * MIB);
    // A memory leaf forgets on reopen, so only the live check applies.
    let plan = b.build(top);
    for seed in seeds(2, 3) {
        let stack = compile(&plan).unwrap();
        check_stack(&stack, seed, &cfg()).unwrap();
    }
}

#[test]
fn raid0_matches_model_with_odd_chunks() {
    for (n, chunk, block) in [
        (2, 64 * 1024, 4096),
        (3, 4096, 4096),
        (3, 8192, 512),
        (4, 1024, 512),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), block);
        let stripes: Vec<_> = (0..n).map(|i| b.file(&format!("s{i}"), 4 * MIB)).collect();
        let top = b.raid0("r", &stripes, chunk);
        run(
            &format!("raid0 n={n} chunk={chunk}"),
            b.build(top),
            3,
            cfg(),
        );
    }
}

#[test]
fn mirror_matches_model_with_two_and_three_legs() {
    for (legs, policy) in [
        (2, ReadPolicy::RoundRobin),
        (3, ReadPolicy::LeastPending),
        (3, ReadPolicy::First),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let ids: Vec<_> = (0..legs)
            .map(|i| b.file(&format!("l{i}"), 8 * MIB))
            .collect();
        let top = b.mirror("m", &ids, policy);
        let plan = b.build(top);
        run(&format!("mirror legs={legs}"), plan.clone(), 4, cfg());
        // Every leg holds the same data (each leg's superblock names its index).
        let data = layers::mirror::DATA_START as usize;
        let first = std::fs::read(dir.path().join("l0.img")).unwrap();
        for i in 1..legs {
            let other = std::fs::read(dir.path().join(format!("l{i}.img"))).unwrap();
            assert!(first[data..] == other[data..], "leg {i} differs from leg 0");
        }
    }
}

#[test]
fn raid0_over_mirrors_matches_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let (a, bb, c, d) = (
        b.file("a", 4 * MIB),
        b.file("b", 4 * MIB),
        b.file("c", 4 * MIB),
        b.file("d", 4 * MIB),
    );
    let m1 = b.mirror("m1", &[a, bb], ReadPolicy::RoundRobin);
    let m2 = b.mirror("m2", &[c, d], ReadPolicy::LeastPending);
    let top = b.raid0("r", &[m1, m2], 16 * 1024);
    run("raid0 over mirrors", b.build(top), 5, cfg());
}

#[test]
fn mirror_over_raid0_matches_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 512);
    let s: Vec<_> = (0..5)
        .map(|i| b.file(&format!("s{i}"), if i < 2 { 3 * MIB } else { 2 * MIB }))
        .collect();
    // 2 stripes of 4 KiB chunks against 3 stripes of 2 KiB chunks over smaller
    // files: the legs must come out the same size.
    let r1 = b.raid0("r1", &s[0..2], 4096);
    let r2 = b.raid0("r2", &s[2..5], 2048);
    let top = b.mirror("m", &[r1, r2], ReadPolicy::RoundRobin);
    let plan = b.build(top);
    run("mirror over raid0", plan, 6, cfg());
}

/// Keys for crypt tests come from the environment, as `key_env` would.
fn set_test_key(var: &str, byte: u8) {
    std::env::set_var(var, format!("{byte:02x}").repeat(32));
}

#[test]
fn checksum_matches_model() {
    for block in [512, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), block);
        let leaf = b.file("a", 8 * MIB);
        let top = b.checksum("c", leaf);
        run(&format!("checksum block={block}"), b.build(top), 7, cfg());
    }
}

#[test]
fn crypt_matches_model() {
    set_test_key("MODEL_CRYPT_KEY", 0x42);
    for block in [512, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), block);
        let leaf = b.file("a", 8 * MIB);
        let top = b.crypt("x", leaf, "MODEL_CRYPT_KEY");
        run(&format!("crypt block={block}"), b.build(top), 8, cfg());
    }
}

#[test]
fn crypt_over_checksum_over_mirror_matches_model() {
    set_test_key("MODEL_CRYPT_KEY2", 0x17);
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let (l0, l1) = (b.file("l0", 8 * MIB), b.file("l1", 8 * MIB));
    let m = b.mirror("m", &[l0, l1], ReadPolicy::RoundRobin);
    let c = b.checksum("c", m);
    let top = b.crypt("x", c, "MODEL_CRYPT_KEY2");
    run("crypt/checksum/mirror", b.build(top), 9, cfg());
}

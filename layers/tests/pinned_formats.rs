//! Pinned on-disk formats: small images of every format (superblock, checksum
//! and crypt tables, compress map and pieces, mirror state), written once and
//! checked into `tests/data/formats/`, with the data they hold. Each test
//! copies its image to a temp dir, opens it with the current code and reads
//! every block back, so a change of a format without a version bump fails here.
//! After a deliberate bump, regenerate them (see `tests/data/formats/README.md`):
//! `UBLK_STACK_WRITE_FORMATS=1` makes each test write its image first.

use std::path::{Path, PathBuf};

use layers::compile;
use layers::exec::{Executor, IoCtx};
use layers::plan::{Plan, ReadPolicy};
use layers::testing::PlanBuilder;

const KIB: u64 = 1024;
/// A fixed key for the pinned crypt image (test data, not a secret).
const CRYPT_KEY_ENV: &str = "UBLK_STACK_PINNED_FORMAT_KEY";
const CRYPT_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn images_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/data/formats/{name}"))
}

/// The stack of image `name` over files in `dir`.
fn plan(name: &str, dir: &Path) -> Plan {
    match name {
        "checksum" => {
            // Two groups of the table's layout: the second starts at block 255.
            let mut b = PlanBuilder::new(dir, 512);
            let leaf = b.file("leaf", 256 * KIB);
            let top = b.checksum("c", leaf);
            b.build(top)
        }
        "checksum-v2" => {
            let mut b = PlanBuilder::new(dir, 512);
            let leaf = b.file("leaf", 64 * KIB);
            let top = b.checksum("c", leaf);
            b.build(top)
        }
        "crypt" | "crypt-v2" => {
            std::env::set_var(CRYPT_KEY_ENV, CRYPT_KEY_HEX);
            let mut b = PlanBuilder::new(dir, 4096);
            let leaf = b.file("leaf", 64 * KIB);
            let top = b.crypt("x", leaf, CRYPT_KEY_ENV);
            b.build(top)
        }
        "compress" | "compress-v2" => {
            let mut b = PlanBuilder::new(dir, 4096);
            let leaf = b.file("leaf", 192 * KIB);
            let top = b.compress("z", leaf, None);
            b.build(top)
        }
        "mirror" => {
            let mut b = PlanBuilder::new(dir, 512);
            let (l0, l1) = (b.file("leg0", 44 * KIB), b.file("leg1", 44 * KIB));
            let top = b.mirror("m", &[l0, l1], ReadPolicy::First);
            b.build(top)
        }
        other => panic!("no pinned image {other}"),
    }
}

/// Block `i` as written in round `round`: zeros, text, noise or a constant by
/// `i % 4`, so compress stores zero, lz4 and raw pieces.
fn pattern(i: u64, round: u64, block: usize) -> Vec<u8> {
    let seed = i * 2 + round;
    match (i + round) % 4 {
        0 => vec![0; block],
        1 => format!("block {i} round {round} of a pinned image; ")
            .bytes()
            .cycle()
            .take(block)
            .collect(),
        2 => {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..block)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
        _ => vec![seed as u8 | 1; block],
    }
}

/// What block `i` holds in the image: round 0 everywhere, then round 1 on odd
/// blocks (so the tables also hold previous versions).
fn expected(i: u64, block: usize) -> Vec<u8> {
    pattern(i, i % 2, block)
}

fn with_stack<T>(plan: &Plan, f: impl FnOnce(&layers::Stack, &IoCtx, &Executor) -> T) -> T {
    let stack = compile(plan).unwrap_or_else(|e| panic!("cannot open the image: {e}"));
    let ctx = IoCtx::new(0, 16).unwrap();
    let exec = Executor::new().unwrap();
    f(&stack, &ctx, &exec)
}

fn write_image(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(name, dir.path());
    with_stack(&plan, |stack, ctx, exec| {
        let top = stack.top();
        let block = stack.block_size() as usize;
        let blocks = top.size() / block as u64;
        for round in 0..2 {
            for i in (0..blocks).filter(|i| round == 0 || i % 2 == 1) {
                let data = pattern(i, round, block);
                exec.block_on(ctx, top.write_bytes(ctx, i * block as u64, &data))
                    .unwrap();
            }
            exec.block_on(ctx, stack.flush(ctx)).unwrap();
        }
    });
    let out = images_dir(name);
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
    }
}

fn reads_back(name: &str) {
    if std::env::var_os("UBLK_STACK_WRITE_FORMATS").is_some_and(|v| v == "1") {
        write_image(name);
    }
    let dir = tempfile::tempdir().unwrap();
    let source = images_dir(name);
    let mut copied = 0;
    for entry in std::fs::read_dir(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()))
    {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        copied += 1;
    }
    assert!(copied > 0, "no image in {}", source.display());
    let plan = plan(name, dir.path());
    with_stack(&plan, |stack, ctx, exec| {
        let top = stack.top();
        let block = stack.block_size() as usize;
        let blocks = top.size() / block as u64;
        assert!(blocks >= 8, "{name}: only {blocks} blocks");
        let mut buf = vec![0u8; block];
        for i in 0..blocks {
            exec.block_on(ctx, top.read_bytes(ctx, i * block as u64, &mut buf))
                .unwrap_or_else(|e| panic!("{name}: block {i} does not read: {e}"));
            assert!(
                buf == expected(i, block),
                "{name}: block {i} reads other data than the image holds"
            );
        }
    });
}

/// The pinned key-slot file: the crypt image's key in slot 0 under
/// [`SLOTS_PASSPHRASE`] (argon2id at its smallest, a test's cost), and in slot
/// 1 under the key-encryption key `[0x42; 32]`.
const SLOTS_PASSPHRASE: &[u8] = b"pinned passphrase";

fn write_slots(path: &Path) {
    use layers::key_slots::{Argon2Cost, KeySlots, Secret};
    let cheap = Argon2Cost {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = i as u8;
    }
    let mut slots = KeySlots::new();
    slots
        .add(&key, Secret::Passphrase(SLOTS_PASSPHRASE), cheap)
        .unwrap();
    slots.add(&key, Secret::Key(&[0x42; 32]), cheap).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, slots.encode()).unwrap();
}

/// The crypt image, opened through the pinned key-slot file with its
/// passphrase and with its key-encryption key.
#[test]
fn key_slot_file_opens_the_crypt_image() {
    use std::os::unix::fs::PermissionsExt;

    use layers::plan::{KeySource, Unlock};
    let pinned = images_dir("key-slots").join("crypt.slots");
    if std::env::var_os("UBLK_STACK_WRITE_FORMATS").is_some_and(|v| v == "1") {
        write_slots(&pinned);
    }
    let private = |path: &Path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let slots = dir.path().join("crypt.slots");
    std::fs::copy(&pinned, &slots).unwrap_or_else(|e| panic!("{}: {e}", pinned.display()));
    private(&slots);
    let passphrase = dir.path().join("pass");
    std::fs::write(&passphrase, SLOTS_PASSPHRASE).unwrap();
    private(&passphrase);
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [0x42; 32]).unwrap();
    private(&kek);
    for unlock in [Unlock::PassphraseFile(passphrase), Unlock::KeyFile(kek)] {
        let leaf = dir.path().join("leaf.img");
        std::fs::copy(images_dir("crypt").join("leaf.img"), &leaf).unwrap();
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let leaf = b.file("leaf", 64 * KIB);
        let key = KeySource::Slots {
            path: slots.clone(),
            unlock,
        };
        let top = b.crypt_with("x", leaf, key);
        let plan = b.build(top);
        with_stack(&plan, |stack, ctx, exec| {
            let top = stack.top();
            let mut buf = vec![0u8; 4096];
            for i in 0..top.size() / 4096 {
                exec.block_on(ctx, top.read_bytes(ctx, i * 4096, &mut buf))
                    .unwrap_or_else(|e| panic!("block {i} does not read: {e}"));
                assert!(buf == expected(i, 4096), "block {i} reads other data");
            }
        });
    }
}

#[test]
fn checksum_image_reads_back() {
    reads_back("checksum");
}

#[test]
fn crypt_image_reads_back() {
    reads_back("crypt");
}

/// The images of format version 2 (the flat table, which cannot grow) are
/// refused with both versions named, and left as they were.
#[test]
fn version_2_checksum_and_crypt_images_are_refused() {
    for (name, layer) in [("checksum-v2", "checksum"), ("crypt-v2", "crypt")] {
        let dir = tempfile::tempdir().unwrap();
        let image = images_dir(name).join("leaf.img");
        let leaf = dir.path().join("leaf.img");
        std::fs::copy(&image, &leaf).unwrap();
        let err = compile(&plan(name, dir.path()))
            .err()
            .unwrap_or_else(|| panic!("{name}: opened"))
            .to_string();
        let want = format!("formatted with {layer} format version 2; this build reads version 3");
        assert!(err.contains(&want), "{name}: {err}");
        assert!(std::fs::read(&leaf).unwrap() == std::fs::read(&image).unwrap());
    }
}

/// The stack of the `compress-grown` image: formatted at [`GROWN_FROM`]
/// bytes, then opened at `size` bytes, which placed map pages in the data
/// area.
fn grown_plan(dir: &Path, size: u64) -> Plan {
    let mut b = PlanBuilder::new(dir, 4096);
    let leaf = b.file("leaf", 256 * KIB);
    let top = b.compress("z", leaf, Some(size));
    b.build(top)
}

const GROWN_FROM: u64 = 128 * KIB;
/// Past the 102 units the in-place map page covers, so its entries live in
/// a placed page.
const GROWN_TO: u64 = 4096 * KIB;
/// The blocks written after the raise, in units only the placed page maps.
const GROWN_BLOCKS: std::ops::Range<u64> = 832..840;

/// Write the pattern's two rounds (a flush after each) to `blocks`.
fn write_rounds(stack: &layers::Stack, ctx: &IoCtx, exec: &Executor, blocks: std::ops::Range<u64>) {
    let top = stack.top();
    for round in 0..2 {
        for i in blocks.clone().filter(|i| round == 0 || i % 2 == 1) {
            let data = pattern(i, round, 4096);
            exec.block_on(ctx, top.write_bytes(ctx, i * 4096, &data))
                .unwrap();
        }
        exec.block_on(ctx, stack.flush(ctx)).unwrap();
    }
}

fn write_grown_image() {
    let dir = tempfile::tempdir().unwrap();
    with_stack(&grown_plan(dir.path(), GROWN_FROM), |stack, ctx, exec| {
        write_rounds(stack, ctx, exec, 0..GROWN_FROM / 4096);
    });
    with_stack(&grown_plan(dir.path(), GROWN_TO), |stack, ctx, exec| {
        write_rounds(stack, ctx, exec, GROWN_BLOCKS);
    });
    let out = images_dir("compress-grown");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(dir.path().join("leaf.img"), out.join("leaf.img")).unwrap();
}

/// A version 3 compress image whose exposed size was raised: its map
/// header is the placed form (`UBLKPLCD`), listing a run of map pages in
/// the data area, and every block reads back, including those only the
/// placed page maps.
#[test]
fn grown_compress_image_reads_back() {
    if std::env::var_os("UBLK_STACK_WRITE_FORMATS").is_some_and(|v| v == "1") {
        write_grown_image();
    }
    let dir = tempfile::tempdir().unwrap();
    let image = images_dir("compress-grown").join("leaf.img");
    let bytes = std::fs::read(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    let header = &bytes[4096..12288];
    assert!(
        header.windows(8).any(|w| w == b"UBLKPLCD"),
        "the grown image's map header is not the placed form"
    );
    std::fs::copy(&image, dir.path().join("leaf.img")).unwrap();
    with_stack(&grown_plan(dir.path(), GROWN_TO), |stack, ctx, exec| {
        let top = stack.top();
        assert_eq!(top.size(), GROWN_TO);
        let mut buf = vec![0u8; 4096];
        for i in 0..GROWN_TO / 4096 {
            exec.block_on(ctx, top.read_bytes(ctx, i * 4096, &mut buf))
                .unwrap_or_else(|e| panic!("block {i} does not read: {e}"));
            let want = if i < GROWN_FROM / 4096 || GROWN_BLOCKS.contains(&i) {
                expected(i, 4096)
            } else {
                vec![0; 4096]
            };
            assert!(
                buf == want,
                "block {i} reads other data than the image holds"
            );
        }
    });
}

#[test]
fn compress_image_reads_back() {
    reads_back("compress");
}

/// A compress image of format version 2 (its map lies in place) still
/// opens and reads back, unchanged while its size stays; opened with a
/// larger size it becomes version 3 and grows (its short last unit, which
/// holds data, made whole), every old block reads back, the new space
/// reads as zeros, and it reopens at the new size.
#[test]
fn version_2_compress_image_reads_back_and_grows_into_version_3() {
    reads_back("compress-v2");
    let dir = tempfile::tempdir().unwrap();
    let image = images_dir("compress-v2").join("leaf.img");
    let leaf = dir.path().join("leaf.img");
    std::fs::copy(&image, &leaf).unwrap();
    let version = || u32::from_le_bytes(std::fs::read(&leaf).unwrap()[24..28].try_into().unwrap());
    let old_size = with_stack(&plan("compress-v2", dir.path()), |stack, _, _| {
        stack.top().size()
    });
    assert!(std::fs::read(&leaf).unwrap() == std::fs::read(&image).unwrap());
    assert_ne!(old_size % (32 * KIB), 0, "the image ends in a short unit");
    // Past the 102 units the in-place map page covers: a placed page too.
    const GROWN: u64 = 4096 * KIB;
    let grown_plan = |dir: &Path| {
        let mut b = PlanBuilder::new(dir, 4096);
        let file = b.file("leaf", 192 * KIB);
        let top = b.compress("z", file, Some(GROWN));
        b.build(top)
    };
    let check = |what: &str| {
        with_stack(&grown_plan(dir.path()), |stack, ctx, exec| {
            let top = stack.top();
            assert_eq!(top.size(), GROWN, "{what}");
            let mut buf = vec![0u8; 4096];
            for i in 0..GROWN / 4096 {
                exec.block_on(ctx, top.read_bytes(ctx, i * 4096, &mut buf))
                    .unwrap_or_else(|e| panic!("{what}: block {i} does not read: {e}"));
                let want = if i < old_size / 4096 {
                    expected(i, 4096)
                } else {
                    vec![0; 4096]
                };
                assert!(buf == want, "{what}: block {i} reads other data");
            }
        });
    };
    assert_eq!(version(), 2);
    check("raised from version 2");
    assert_eq!(version(), 3, "the superblock after the raise");
    check("reopened as version 3");
}

#[test]
fn mirror_image_reads_back() {
    reads_back("mirror");
}

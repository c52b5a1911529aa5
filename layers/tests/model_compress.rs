//! `compress` alone and in stacks, on real temporary files: the model checker,
//! a thin device, a full lower device, and the space a sparse file leaf saves.

use std::os::unix::fs::MetadataExt;

use layers::plan::ReadPolicy;
use layers::report::{CompressReport, LayerReport};
use layers::testing::crash::crash_replay;
use layers::testing::{
    check_stack, fill_text, rng::seeds, verify_image, ModelConfig, PlanBuilder, Rng,
};
use layers::{compile, Error, Executor, IoCtx, Plan, Stack};

const MIB: u64 = 1 << 20;
const UNIT: usize = layers::compress::UNIT_BYTES as usize;

/// Each seed runs the model and then reopens; stacks get two seeds to keep the
/// file's run time near `model_stacks`'.
fn run(name: &str, plan: Plan, base_seed: u64, cfg: ModelConfig) {
    let count = if plan.layers.len() > 2 { 2 } else { 3 };
    for seed in seeds(base_seed, count) {
        let stack = compile(&plan).unwrap_or_else(|e| panic!("{name}: {e}"));
        let image = check_stack(&stack, seed, &cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(stack);
        let stack = compile(&plan).unwrap_or_else(|e| panic!("{name}: reopen: {e}"));
        verify_image(&stack, &image)
            .unwrap_or_else(|e| panic!("{name}: seed {seed}: after reopen: {e}"));
    }
}

fn mixed() -> ModelConfig {
    ModelConfig {
        compressible_percent: 50,
        ..ModelConfig::default()
    }
}

fn set_test_key(var: &str, byte: u8) {
    std::env::set_var(var, format!("{byte:02x}").repeat(32));
}

#[test]
fn compress_matches_model() {
    for block in [512, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), block);
        let leaf = b.file("a", 8 * MIB);
        let top = b.compress("z", leaf, Some(4 * MIB));
        run(
            &format!("compress block={block}"),
            b.build(top),
            21,
            ModelConfig::default(),
        );
    }
}

#[test]
fn compress_with_default_size_matches_model_on_mixed_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("a", 8 * MIB);
    let top = b.compress("z", leaf, None);
    run("compress default size", b.build(top), 22, mixed());
}

#[test]
fn compress_over_checksum_matches_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("a", 8 * MIB);
    let c = b.checksum("c", leaf);
    let top = b.compress("z", c, Some(4 * MIB));
    run("compress/checksum", b.build(top), 23, mixed());
}

#[test]
fn crypt_over_compress_matches_model() {
    set_test_key("MODEL_COMPRESS_KEY", 0x5c);
    for block in [512, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), block);
        let leaf = b.file("a", 8 * MIB);
        let z = b.compress("z", leaf, Some(4 * MIB));
        let top = b.crypt("x", z, "MODEL_COMPRESS_KEY");
        run(
            &format!("crypt/compress block={block}"),
            b.build(top),
            24,
            mixed(),
        );
    }
}

#[test]
fn compress_over_mirror_matches_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let (l0, l1) = (b.file("l0", 8 * MIB), b.file("l1", 8 * MIB));
    let m = b.mirror("m", &[l0, l1], ReadPolicy::RoundRobin);
    let top = b.compress("z", m, Some(4 * MIB));
    run("compress/mirror", b.build(top), 25, mixed());
    // Each leg names its own index in its superblock: compare the data.
    let data = layers::mirror::DATA_START as usize;
    let first = std::fs::read(dir.path().join("l0.img")).unwrap();
    let second = std::fs::read(dir.path().join("l1.img")).unwrap();
    assert!(first[data..] == second[data..], "mirror legs differ");
}

#[test]
fn thin_compress_holds_more_compressible_data_than_the_device_below() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("a", 4 * MIB);
    let top = b.compress("z", leaf, Some(8 * MIB));
    let cfg = ModelConfig {
        compressible_percent: 100,
        ..ModelConfig::default()
    };
    run("thin compress", b.build(top), 26, cfg);
}

/// One queue driving a stack synchronously.
struct Dev<'s> {
    stack: &'s Stack,
    ctx: IoCtx,
    exec: Executor,
}

impl<'s> Dev<'s> {
    fn new(stack: &'s Stack) -> Dev<'s> {
        Dev {
            stack,
            ctx: IoCtx::new(0, 64).unwrap(),
            exec: Executor::new().unwrap(),
        }
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        let top = self.stack.top();
        self.exec
            .block_on(&self.ctx, top.write_bytes(&self.ctx, offset, buf))
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; len];
        let top = self.stack.top();
        self.exec
            .block_on(&self.ctx, top.read_bytes(&self.ctx, offset, &mut buf))?;
        Ok(buf)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        let top = self.stack.top();
        self.exec
            .block_on(&self.ctx, top.discard(&self.ctx, offset, len))
    }

    fn flush(&self) -> Result<(), Error> {
        self.exec.block_on(&self.ctx, self.stack.flush(&self.ctx))
    }

    fn report(&self) -> CompressReport {
        match self.stack.top().report() {
            LayerReport::Compress(report) => report,
            other => panic!("not a compress layer: {other:?}"),
        }
    }
}

/// `compress_on_top`: no block may read as EIO at all (a torn write under crypt
/// or checksum above may, as the harness allows).
fn replay(name: &str, plan: &Plan, base_seed: u64, compress_on_top: bool) {
    for seed in seeds(base_seed, 2) {
        let report = crash_replay(plan, seed, 300, 150).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: seed {seed}: {report:?}");
        if compress_on_top {
            assert_eq!(
                report.torn_eio, 0,
                "{name}: compress keeps the flushed version"
            );
        }
    }
}

#[test]
fn compress_survives_crashes() {
    for block in [512, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), block);
        let leaf = b.memory("leaf", 512 * 1024);
        let top = b.compress("z", leaf, None);
        replay(&format!("compress/{block}"), &b.build(top), 31, true);
    }
}

#[test]
fn thin_compress_over_checksum_survives_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.memory("leaf", 768 * 1024);
    let c = b.checksum("c", leaf);
    let top = b.compress("z", c, Some(640 * 1024));
    replay("compress/checksum", &b.build(top), 32, true);
}

#[test]
fn compress_over_mirror_survives_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let (l0, l1) = (b.memory("l0", 512 * 1024), b.memory("l1", 512 * 1024));
    let m = b.mirror("m", &[l0, l1], ReadPolicy::RoundRobin);
    let top = b.compress("z", m, None);
    replay("compress/mirror", &b.build(top), 34, true);
}

#[test]
fn crypt_over_compress_survives_crashes() {
    set_test_key("CRASH_COMPRESS_KEY", 0x3e);
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.memory("leaf", 768 * 1024);
    let z = b.compress("z", leaf, None);
    let top = b.crypt("x", z, "CRASH_COMPRESS_KEY");
    replay("crypt/compress", &b.build(top), 33, false);
}

fn random_unit(rng: &mut Rng) -> Vec<u8> {
    let mut buf = vec![0u8; UNIT];
    rng.fill(&mut buf);
    buf
}

#[test]
fn full_lower_device_fails_with_enospc_loses_nothing_and_discard_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("a", MIB);
    let top = b.compress("z", leaf, Some(4 * MIB));
    let plan = b.build(top);
    let stack = compile(&plan).unwrap();
    let dev = Dev::new(&stack);
    let mut rng = Rng::new(41);
    let mut written = Vec::new();
    let full_at = loop {
        let offset = (written.len() * UNIT) as u64;
        assert!(offset < 4 * MIB, "a 1 MiB device took 4 MiB of random data");
        let data = random_unit(&mut rng);
        match dev.write(offset, &data) {
            Ok(()) => written.push(data),
            Err(Error::NoSpace) => break offset,
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    assert!(written.len() >= 20, "only {} units fitted", written.len());
    // Nothing already written is lost, the failed unit kept its (zero) contents,
    // and a partial overwrite that cannot fit leaves the old bytes in place.
    let patch = vec![7u8; 4096];
    assert_eq!(dev.write(4096, &patch), Err(Error::NoSpace));
    for (i, data) in written.iter().enumerate() {
        assert!(
            dev.read((i * UNIT) as u64, UNIT).unwrap() == *data,
            "unit {i} changed"
        );
    }
    assert!(dev.read(full_at, UNIT).unwrap().iter().all(|&b| b == 0));
    // Discarding frees space for new writes (returned by the flush the write
    // triggers on its own).
    dev.discard(0, 4 * UNIT as u64).unwrap();
    let fresh = random_unit(&mut rng);
    dev.write(full_at, &fresh).unwrap();
    dev.write(UNIT as u64, &fresh).unwrap();
    dev.flush().unwrap();
    drop(dev);
    drop(stack);
    let stack = compile(&plan).unwrap();
    let dev = Dev::new(&stack);
    assert!(dev.read(0, UNIT).unwrap().iter().all(|&b| b == 0));
    assert!(dev.read(UNIT as u64, UNIT).unwrap() == fresh);
    assert!(dev.read(full_at, UNIT).unwrap() == fresh);
    for (i, data) in written.iter().enumerate().skip(4) {
        assert!(
            dev.read((i * UNIT) as u64, UNIT).unwrap() == *data,
            "unit {i} after reopen"
        );
    }
}

fn allocated_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The space figures of the layer against raw lz4 on the same buffers. Run with
/// `cargo test -p layers --features test-utils --test model_compress sparse -- --nocapture`.
#[test]
fn sparse_file_leaf_shrinks_for_text_and_overwrites_and_discards_return_space() {
    const LOGICAL: u64 = 16 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("a", 64 * MIB);
    let top = b.compress("z", leaf, None);
    let plan = b.build(top);
    let path = dir.path().join("a.img");
    let stack = compile(&plan).unwrap();
    let dev = Dev::new(&stack);
    // Formatting writes the superblock and nothing else: the map and the data
    // area stay holes until used.
    let empty = allocated_bytes(&path);
    assert!(empty <= 8192, "{empty} bytes allocated by formatting");
    let mut rng = Rng::new(42);
    let mut buf = vec![0u8; MIB as usize];
    // Returns what raw lz4 makes of the same buffers, whole and in 4 KiB pieces.
    let mut fill = |rng: &mut Rng| {
        let (mut whole, mut pieces) = (0u64, 0u64);
        for offset in (0..LOGICAL).step_by(MIB as usize) {
            fill_text(rng, &mut buf);
            dev.write(offset, &buf).unwrap();
            whole += lz4_flex::block::compress(&buf).len() as u64;
            pieces += buf
                .chunks(4096)
                .map(|c| lz4_flex::block::compress(c).len().min(4096) as u64)
                .sum::<u64>();
        }
        dev.flush().unwrap();
        (whole, pieces)
    };
    let (raw_lz4, raw_lz4_pieces) = fill(&mut rng);
    let used = allocated_bytes(&path) - empty;
    let (layer_saved, lz4_saved) = (LOGICAL - used, LOGICAL - raw_lz4);
    eprintln!(
        "compress: {LOGICAL} bytes of text take {used} bytes below ({:.1}%; raw lz4 on \
         the same 1 MiB buffers: {raw_lz4} bytes, {:.1}%); the layer saves {:.0}% of \
         what raw lz4 saves (in 4 KiB pieces raw lz4 takes {raw_lz4_pieces} bytes); \
         map and superblock: {empty} bytes; status ratio {:?}",
        100.0 * used as f64 / LOGICAL as f64,
        100.0 * raw_lz4 as f64 / LOGICAL as f64,
        100.0 * layer_saved as f64 / lz4_saved as f64,
        match stack.top().report() {
            LayerReport::Compress(report) => report.ratio,
            other => panic!("not a compress layer: {other:?}"),
        },
    );
    assert!(
        used < LOGICAL * 2 / 5,
        "{used} bytes is not well under half"
    );
    assert!(layer_saved * 10 >= lz4_saved * 4);
    assert_eq!(dev.report().logical_bytes, LOGICAL);
    // What the leaf holds beyond the stored units is the map's written pages.
    let stored = dev.report().stored_bytes;
    assert!(
        stored <= used && used - stored <= 64 * 1024,
        "{stored} vs {used}"
    );
    // Overwriting everything frees the old versions below: no growth.
    fill(&mut rng);
    let again = allocated_bytes(&path) - empty;
    assert!(
        again <= used + used / 10,
        "overwrite grew the leaf: {used} -> {again}"
    );
    // Discarding everything gives it all back.
    dev.discard(0, LOGICAL).unwrap();
    dev.flush().unwrap();
    let after = allocated_bytes(&path) - empty;
    assert!(
        after <= 64 * 1024,
        "{after} bytes still allocated after discard"
    );
    assert_eq!(dev.report().stored_bytes, 0);
}

#[test]
fn reopen_with_another_size_or_over_another_layer_is_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let plan_with = |size: Option<u64>| {
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let leaf = b.file("a", 4 * MIB);
        let top = b.compress("z", leaf, size);
        b.build(top)
    };
    let stack = compile(&plan_with(Some(8 * MIB))).unwrap();
    let dev = Dev::new(&stack);
    dev.write(0, &vec![3u8; 65536]).unwrap();
    dev.flush().unwrap();
    drop(dev);
    drop(stack);
    let path = dir.path().join("a.img");
    let before = std::fs::read(&path).unwrap();
    for (plan, expect) in [
        (plan_with(Some(4 * MIB)), "exposed size is 8388608 bytes"),
        (plan_with(None), "set `size = 8388608`"),
    ] {
        let err = compile(&plan).err().expect("refused").to_string();
        assert!(err.contains(expect), "{err}");
    }
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("a", 4 * MIB);
    let top = b.checksum("c", leaf);
    let err = compile(&b.build(top)).err().expect("refused").to_string();
    assert!(err.contains("\"compress\" superblock"), "{err}");
    assert!(std::fs::read(&path).unwrap() == before, "the leaf changed");
    let stack = compile(&plan_with(Some(8 * MIB))).unwrap();
    assert!(Dev::new(&stack).read(0, 65536).unwrap() == vec![3u8; 65536]);
}

#[test]
fn damaged_map_and_data_never_panic_and_read_as_data_or_eio() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("a", 2 * MIB);
    let top = b.compress("z", leaf, Some(4 * MIB));
    let plan = b.build(top);
    let path = dir.path().join("a.img");
    let mut rng = Rng::new(43);
    {
        let stack = compile(&plan).unwrap();
        let dev = Dev::new(&stack);
        let mut buf = vec![0u8; 256 * 1024];
        for offset in (0..2 * MIB).step_by(buf.len()) {
            fill_text(&mut rng, &mut buf);
            dev.write(offset, &buf).unwrap();
        }
        dev.flush().unwrap();
    }
    let pristine = std::fs::read(&path).unwrap();
    for round in 0..20 {
        let mut image = pristine.clone();
        // Damage the map pages or anything at all.
        for _ in 0..1 + rng.below(40) {
            let at = if round % 2 == 0 {
                4096 + rng.below(8 * 4096)
            } else {
                rng.below(image.len() as u64)
            } as usize;
            image[at] = rng.next_u64() as u8;
        }
        std::fs::write(&path, &image).unwrap();
        let Ok(stack) = compile(&plan) else {
            continue; // a refusal names the damage; that is fine too
        };
        let dev = Dev::new(&stack);
        for unit in 0..(4 * MIB as usize / UNIT) {
            match dev.read((unit * UNIT) as u64, UNIT) {
                Ok(_) | Err(Error::Corrupt { .. }) => {}
                Err(e) => panic!("round {round}: unit {unit}: {e}"),
            }
        }
        // Writing over damage works or fails cleanly, and so does a flush.
        for unit in 0..(4 * MIB as usize / UNIT) {
            let _ = dev.write((unit * UNIT) as u64, &vec![1u8; UNIT]);
            let _ = dev.discard((unit * UNIT) as u64, 4096);
        }
        let _ = dev.flush();
    }
}

#[test]
fn two_queues_writing_alternate_blocks_of_the_same_units_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.file("a", 4 * MIB);
    let top = b.compress("z", leaf, Some(512 * 1024));
    let plan = b.build(top);
    let stack = compile(&plan).unwrap();
    let blocks = 512 * 1024 / 4096;
    let images: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|queue| {
                let stack = &stack;
                s.spawn(move || {
                    let ctx = IoCtx::new(queue as u16, 64).unwrap();
                    let exec = Executor::new().unwrap();
                    let mut rng = Rng::new(50 + queue);
                    let mut image = vec![0u8; 512 * 1024];
                    for round in 0..400 {
                        // Several blocks of this queue at once, in different units.
                        let mut bufs = Vec::new();
                        for _ in 0..4 {
                            let block = rng.below(blocks / 2) * 2 + queue;
                            if bufs.iter().any(|(b, _)| *b == block) {
                                continue;
                            }
                            let mut data = vec![0u8; 4096];
                            if rng.chance(50) {
                                fill_text(&mut rng, &mut data);
                            } else {
                                rng.fill(&mut data);
                            }
                            bufs.push((block, data));
                        }
                        let top = stack.top();
                        let futs: Vec<layers::LocalBoxFuture<'_, layers::Result<()>>> = bufs
                            .iter()
                            .map(|(block, data)| top.write_bytes(&ctx, block * 4096, data))
                            .collect();
                        for res in exec.block_on(&ctx, layers::join::join_all(futs)) {
                            res.unwrap();
                        }
                        for (block, data) in &bufs {
                            let at = (*block * 4096) as usize;
                            image[at..at + 4096].copy_from_slice(data);
                        }
                        if round % 16 == 0 {
                            exec.block_on(&ctx, stack.flush(&ctx)).unwrap();
                        }
                    }
                    image
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut want = vec![0u8; 512 * 1024];
    for block in 0..blocks as usize {
        let at = block * 4096;
        want[at..at + 4096].copy_from_slice(&images[block % 2][at..at + 4096]);
    }
    Dev::new(&stack).flush().unwrap();
    verify_image(&stack, &want).unwrap();
    drop(stack);
    verify_image(&compile(&plan).unwrap(), &want).unwrap();
}

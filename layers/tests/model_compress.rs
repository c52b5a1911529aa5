//! `compress` alone and in stacks, on real temporary files: the model checker,
//! a thin device, a full lower device, and the space a sparse file leaf saves.

use std::os::unix::fs::MetadataExt;

use layers::plan::ReadPolicy;
use layers::testing::crash::crash_replay;
use layers::testing::{
    check_stack, fill_text, rng::seeds, verify_image, ModelConfig, PlanBuilder, Rng,
};
use layers::{compile, Error, Executor, IoCtx, Plan, Stack};

const MIB: u64 = 1 << 20;
const UNIT: usize = layers::compress::UNIT_BYTES as usize;

fn run(name: &str, plan: Plan, base_seed: u64, cfg: ModelConfig) {
    for seed in seeds(base_seed, 3) {
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
    let first = std::fs::read(dir.path().join("l0.img")).unwrap();
    assert!(first == std::fs::read(dir.path().join("l1.img")).unwrap());
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
            .block_on(&self.ctx, top.write(&self.ctx, offset, buf))
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; len];
        let top = self.stack.top();
        self.exec
            .block_on(&self.ctx, top.read(&self.ctx, offset, &mut buf))?;
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

    fn detail(&self, key: &str) -> u64 {
        let details = self.stack.top().details();
        let (_, value) = details.iter().find(|(k, _)| *k == key).expect("detail");
        value.parse().expect("a number")
    }
}


/// `compress_on_top`: no block may read as EIO at all (a torn write under crypt
/// or checksum above may, as the harness allows).
fn replay(name: &str, plan: &Plan, base_seed: u64, compress_on_top: bool) {
    for seed in seeds(base_seed, 2) {
        let report = crash_replay(plan, seed, 300, 150).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: seed {seed}: {report:?}");
        if compress_on_top {
            assert_eq!(report.torn_eio, 0, "{name}: compress keeps the flushed version");
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
fn crypt_over_compress_survives_crashes() {
    set_test_key("CRASH_COMPRESS_KEY", 0x3e);
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let leaf = b.memory("leaf", 768 * 1024);
    let z = b.compress("z", leaf, None);
    let top = b.crypt("x", z, "CRASH_COMPRESS_KEY");
    replay("crypt/compress", &b.build(top), 33, false);
}

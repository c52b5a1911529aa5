//! Detection, measured: with `checksum` or `crypt` over a simulated disk (alone,
//! and as the legs of a mirror), real disk faults are injected at random blocks
//! and each must read as EIO (never as old or foreign data), be counted in the
//! layer's `status` details, and under a mirror be repaired from the good leg.
//!
//! Kinds: a lost write, a misdirected write, a bit flip on read, a block rolled
//! back to its version before the last flush, and the block's table entry
//! erased with the page's crc fixed up (the page still loads as valid). Each
//! test prints detected/injected per kind and requires 100%.

use std::sync::Arc;

use layers::exec::{Executor, IoCtx};
use layers::meta_table::MetaTable;
use layers::mirror::DATA_START;
use layers::plan::{Plan, ReadPolicy};
use layers::superblock::SUPERBLOCK_BYTES;
use layers::testing::faults::erase_table_entry;
use layers::testing::sim::{SimFault, SimWorld};
use layers::testing::sim_crash::{compile_over_sim, sim_leaves};
use layers::testing::{rng::seeds, PlanBuilder, Rng};
use layers::{Error, LayerReport, Stack};

const KIB: u64 = 1024;
const BLOCK: u64 = 4096;
/// Faults of each kind per stack and seed.
const PER_KIND: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    LostWrite,
    MisdirectedWrite,
    BitFlipOnRead,
    Rollback,
    ErasedEntry,
}

const KINDS: [Kind; 5] = [
    Kind::LostWrite,
    Kind::MisdirectedWrite,
    Kind::BitFlipOnRead,
    Kind::Rollback,
    Kind::ErasedEntry,
];

/// A stack under test: `layer` (checksum or crypt) sits on disk `leaf`, which
/// takes the faults; `mirror` when a mirror "m" is on top.
struct Rig {
    plan: Plan,
    world: Arc<SimWorld>,
    stack: Stack,
    ctx: IoCtx,
    exec: Executor,
    layer: &'static str,
    leaf: usize,
    entry_bytes: usize,
    mirror: bool,
    /// Byte on `leaf` of top block 0; block `b` is as far from it as the
    /// table layout puts it (`at`).
    block0: u64,
    blocks: u64,
    /// What each top block holds.
    expected: Vec<Vec<u8>>,
    /// The mismatch count before the damage was done (0 after a reopen: an
    /// open may already meet the damage, e.g. while a mirror resyncs).
    baseline: u64,
}

impl Rig {
    fn new(plan: Plan, layer: &'static str, leaf: &str, entry_bytes: usize, mirror: bool) -> Rig {
        let leaves = sim_leaves(&plan);
        let images = leaves.iter().map(|&(_, s)| vec![0u8; s as usize]).collect();
        let leaf = leaves
            .iter()
            .position(|&(id, _)| plan.layers[id].name == leaf)
            .expect("leaf in plan");
        let world = SimWorld::new(1, images);
        let stack = compile_over_sim(&plan, &world).expect("compile");
        let blocks = stack.size() / BLOCK;
        let mut rig = Rig {
            plan,
            world,
            stack,
            ctx: IoCtx::new(0, 16).unwrap(),
            exec: Executor::new().unwrap(),
            layer,
            leaf,
            entry_bytes,
            mirror,
            block0: 0,
            blocks,
            expected: vec![vec![0u8; BLOCK as usize]; blocks as usize],
            baseline: 0,
        };
        rig.block0 = rig.learn_layout();
        rig
    }

    /// Where top block 0 lives on the faulty disk: the block-sized write at the
    /// same place relative to the block in single-block writes of blocks 0..3.
    fn learn_layout(&mut self) -> u64 {
        self.world.set_trace(true);
        let mut common: Option<Vec<u64>> = None;
        let mut rng = Rng::new(9);
        for b in 0..3 {
            self.world.take_trace();
            self.write(b, &mut rng);
            let here: Vec<u64> = self
                .world
                .take_trace()
                .into_iter()
                .filter(|&(l, o, len)| l == self.leaf && len as u64 == BLOCK && o >= b * BLOCK)
                .map(|(_, o, _)| o - b * BLOCK)
                .collect();
            common = Some(match common {
                None => here,
                Some(c) => c.into_iter().filter(|o| here.contains(o)).collect(),
            });
        }
        self.world.set_trace(false);
        let common = common.unwrap_or_default();
        assert_eq!(common.len(), 1, "cannot tell where blocks live: {common:?}");
        common[0]
    }

    fn at(&self, b: u64) -> u64 {
        // The layer's block of top block `b` (a mirror on top keeps its
        // state in front), and its data below as the table's groups place it.
        let shift = if self.mirror { DATA_START / BLOCK } else { 0 };
        let data =
            |i: u64| MetaTable::grouped_data_at(SUPERBLOCK_BYTES, self.entry_bytes, BLOCK, i);
        self.block0 + data(b + shift) - data(shift)
    }

    fn write(&mut self, b: u64, rng: &mut Rng) {
        let mut data = vec![0u8; BLOCK as usize];
        rng.fill(&mut data);
        let top = self.stack.top();
        self.exec
            .block_on(&self.ctx, top.write_bytes(&self.ctx, b * BLOCK, &data))
            .expect("write");
        self.expected[b as usize] = data;
    }

    fn flush(&self) {
        self.exec
            .block_on(&self.ctx, self.stack.flush(&self.ctx))
            .expect("flush");
    }

    /// The layer's count of blocks that failed verification.
    fn mismatches(&self) -> u64 {
        let layer = self.stack.layer(self.layer).expect("layer");
        match layer.report() {
            LayerReport::Checksum(report) => report.mismatches,
            LayerReport::Crypt(report) => report.auth_failures,
            other => panic!("not a verifying layer: {other:?}"),
        }
    }

    /// Reopen the stack over what the disks hold now.
    fn reopen(&mut self) {
        let images = (0..sim_leaves(&self.plan).len())
            .map(|l| self.world.image(l))
            .collect();
        self.world = SimWorld::new(2, images);
        self.stack = compile_over_sim(&self.plan, &self.world).expect("reopen");
    }

    /// Whether the damage to block `b` is detected: EIO and counted; under a
    /// mirror, the right data, counted, and the bad copy repaired.
    fn detected(&mut self, b: u64) -> Result<(), String> {
        let before = self.baseline;
        let mut buf = vec![0u8; BLOCK as usize];
        let top = self.stack.top();
        let res = self
            .exec
            .block_on(&self.ctx, top.read_bytes(&self.ctx, b * BLOCK, &mut buf));
        let counted = self.mismatches() > before;
        self.baseline = self.mismatches();
        let want = &self.expected[b as usize];
        let what = |buf: &[u8]| {
            if buf == &want[..] {
                "the right data"
            } else if buf.iter().all(|&x| x == 0) {
                "zeros"
            } else {
                "other data"
            }
        };
        if !self.mirror {
            return match res {
                Err(Error::Corrupt { .. }) if counted => Ok(()),
                Err(Error::Corrupt { .. }) => Err("EIO but not counted".into()),
                Err(e) => Err(format!("{e}, not EIO")),
                Ok(()) => Err(format!("read as {}", what(&buf))),
            };
        }
        match res {
            Ok(()) if buf == *want => {}
            Ok(()) => return Err(format!("mirror read {}", what(&buf))),
            Err(e) => return Err(format!("mirror read failed: {e}")),
        }
        if !counted {
            return Err("not counted on the bad leg".into());
        }
        let leg = self.stack.layer(self.layer).expect("leg");
        let res = self.exec.block_on(
            &self.ctx,
            leg.read_bytes(&self.ctx, DATA_START + b * BLOCK, &mut buf),
        );
        match res {
            Ok(()) if buf == *want => Ok(()),
            Ok(()) => Err(format!("bad leg still reads {} after repair", what(&buf))),
            Err(e) => Err(format!("bad leg not repaired: {e}")),
        }
    }

    /// Inject one fault of `kind` at a random block; the blocks it damaged.
    fn inject(&mut self, kind: Kind, rng: &mut Rng) -> Vec<u64> {
        let b = rng.below(self.blocks);
        let c = (b + 1 + rng.below(self.blocks - 1)) % self.blocks;
        // Two flushed versions of each, so that an older one exists on disk.
        for _ in 0..2 {
            self.write(b, rng);
            self.write(c, rng);
            self.flush();
        }
        let leaf = self.leaf;
        self.baseline = self.mismatches();
        match kind {
            Kind::LostWrite => {
                let offset = self.at(b);
                self.world.arm(SimFault::LoseWrite { leaf, offset });
                self.write(b, rng);
                self.flush();
            }
            Kind::MisdirectedWrite => {
                let (offset, to) = (self.at(b), self.at(c));
                self.world
                    .arm(SimFault::MisdirectWrite { leaf, offset, to });
                self.write(b, rng);
                self.flush();
            }
            Kind::BitFlipOnRead => {
                let offset = self.at(b) + rng.below(BLOCK);
                self.world.arm(SimFault::FlipOnRead { leaf, offset });
            }
            Kind::Rollback => {
                assert!(
                    self.world.rollback(leaf, self.at(b), BLOCK),
                    "no older version"
                );
            }
            Kind::ErasedEntry => {
                let shift = if self.mirror { DATA_START / BLOCK } else { 0 };
                let changed = erase_table_entry(
                    &self.world,
                    leaf,
                    SUPERBLOCK_BYTES,
                    self.entry_bytes,
                    BLOCK,
                    b + shift,
                );
                assert!(changed > 0, "block {b}: no table entry to erase");
                self.reopen();
                self.baseline = 0;
            }
        }
        if kind != Kind::BitFlipOnRead {
            assert!(self.world.armed().is_empty(), "{kind:?} did not fire");
        }
        if kind == Kind::MisdirectedWrite {
            vec![b, c]
        } else {
            vec![b]
        }
    }
}

fn measure(name: &str, make: &dyn Fn() -> Rig, base_seed: u64) {
    let mut lines = Vec::new();
    let mut all = true;
    let mut counts = [(0usize, 0usize); 5];
    let mut first_miss: Vec<String> = Vec::new();
    for seed in seeds(base_seed, 1) {
        let mut rig = make();
        let mut rng = Rng::new(seed);
        for round in 0..PER_KIND {
            for (k, &kind) in KINDS.iter().enumerate() {
                let victims = rig.inject(kind, &mut rng);
                let misses: Vec<String> = victims
                    .iter()
                    .filter_map(|&v| rig.detected(v).err().map(|e| format!("block {v}: {e}")))
                    .collect();
                let seen = format!("{kind:?}");
                counts[k].1 += 1;
                if misses.is_empty() {
                    counts[k].0 += 1;
                } else if !first_miss.iter().any(|m| m.starts_with(&seen)) {
                    first_miss.push(format!(
                        "{kind:?} (seed {seed}, round {round}): {}",
                        misses.join("; ")
                    ));
                }
                // Leave the damaged blocks readable for the next rounds.
                for v in victims {
                    rig.write(v, &mut rng);
                }
                rig.flush();
            }
        }
    }
    for (k, kind) in KINDS.iter().enumerate() {
        let (detected, injected) = counts[k];
        all &= detected == injected;
        lines.push(format!("{kind:?} {detected}/{injected}"));
    }
    let injected: usize = counts.iter().map(|c| c.1).sum();
    println!("detection {name}: {} ({injected} faults)", lines.join(", "));
    assert!(
        all,
        "detection {name}: not every fault was detected: {}; first misses: {}",
        lines.join(", "),
        first_miss.join(" | ")
    );
}

fn builder() -> (tempfile::TempDir, PlanBuilder) {
    let dir = tempfile::tempdir().unwrap();
    let b = PlanBuilder::new(dir.path(), BLOCK as u32);
    (dir, b)
}

fn key() -> &'static str {
    std::env::set_var("SIM_DETECT_KEY", "a7".repeat(32));
    "SIM_DETECT_KEY"
}

#[test]

fn checksum_detects_every_fault() {
    measure(
        "checksum",
        &|| {
            let (_d, mut b) = builder();
            let leaf = b.memory("l0", 256 * KIB);
            let top = b.checksum("c0", leaf);
            Rig::new(b.build(top), "c0", "l0", 16, false)
        },
        701,
    );
}

#[test]

fn crypt_detects_every_fault() {
    measure(
        "crypt",
        &|| {
            let (_d, mut b) = builder();
            let leaf = b.memory("l0", 256 * KIB);
            let top = b.crypt("c0", leaf, key());
            Rig::new(b.build(top), "c0", "l0", 64, false)
        },
        702,
    );
}

#[test]

fn mirror_of_checksum_legs_repairs_every_fault() {
    measure(
        "mirror/checksum",
        &|| {
            let (_d, mut b) = builder();
            let (l0, l1) = (b.memory("l0", 320 * KIB), b.memory("l1", 320 * KIB));
            let (c0, c1) = (b.checksum("c0", l0), b.checksum("c1", l1));
            let top = b.mirror("m", &[c0, c1], ReadPolicy::First);
            Rig::new(b.build(top), "c0", "l0", 16, true)
        },
        703,
    );
}

#[test]

fn mirror_of_crypt_legs_repairs_every_fault() {
    measure(
        "mirror/crypt",
        &|| {
            let (_d, mut b) = builder();
            let (l0, l1) = (b.memory("l0", 320 * KIB), b.memory("l1", 320 * KIB));
            let (c0, c1) = (b.crypt("c0", l0, key()), b.crypt("c1", l1, key()));
            let top = b.mirror("m", &[c0, c1], ReadPolicy::First);
            Rig::new(b.build(top), "c0", "l0", 64, true)
        },
        704,
    );
}

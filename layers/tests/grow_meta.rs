//! Growing `checksum` and `crypt` (`meta_table.rs`, "Growing"): live and at
//! open, over garbage or stale metadata in the new region, with a crash at
//! every write of a grow, with requests running meanwhile; shrinking refused.
//!
//! The leaf journals its writes, zeroings and flushes (`journal/mod.rs`).

mod journal;
mod rig;

use std::sync::Arc;

use journal::{crash_image, Event, Leaf};
use rig::Rig;

use layers::checksum::{self, Checksum};
use layers::crypt::{self, Crypt};
use layers::join::join_all;
use layers::meta_table::MetaTable;
use layers::rng::Rng;
use layers::superblock::SUPERBLOCK_BYTES;
use layers::{Error, Layer, LocalBoxFuture, Result};

/// Small blocks keep the groups small: the first group of `checksum` holds
/// 255 blocks, of `crypt` 63, so a grow here crosses several groups.
const BLOCK: u64 = 512;
const OLD: u64 = 96 << 10;
const NEW: u64 = 640 << 10;
const KEY: [u8; 32] = [0x42; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Checksum,
    Crypt,
}

const KINDS: [Kind; 2] = [Kind::Checksum, Kind::Crypt];

impl Kind {
    fn entry_bytes(self) -> usize {
        match self {
            Kind::Checksum => 16,
            Kind::Crypt => 64,
        }
    }

    fn exposed(self, lower: u64) -> u64 {
        match self {
            Kind::Checksum => checksum::exposed_size(lower, BLOCK as u32),
            Kind::Crypt => crypt::exposed_size(lower, BLOCK as u32),
        }
    }

    fn try_open(self, rig: &Rig, leaf: &Arc<Leaf>) -> std::result::Result<Box<dyn Layer>, String> {
        let lower: Arc<dyn Layer> = leaf.clone();
        let ctx = &rig.ctx;
        rig.exec.block_on(ctx, async {
            Ok(match self {
                Kind::Checksum => {
                    Box::new(Checksum::open(ctx, lower, BLOCK as u32).await?) as Box<dyn Layer>
                }
                Kind::Crypt => Box::new(Crypt::open(ctx, lower, BLOCK as u32, &KEY).await?),
            })
        })
    }

    fn open(self, rig: &Rig, leaf: &Arc<Leaf>) -> Box<dyn Layer> {
        self.try_open(rig, leaf)
            .unwrap_or_else(|e| panic!("{self:?}: cannot open: {e}"))
    }

    /// The first block of the second group.
    fn group_edge(self) -> u64 {
        (4080 / self.entry_bytes()) as u64
    }
}

impl Rig {
    fn write(&self, layer: &dyn Layer, first: u64, blocks: u64) {
        let data: Vec<u8> = (first..first + blocks).flat_map(pattern).collect();
        self.run(layer.write_bytes(&self.ctx, first * BLOCK, &data))
            .unwrap();
    }

    fn flush(&self, layer: &dyn Layer) {
        self.run(layer.flush(&self.ctx)).unwrap();
    }

    fn read(&self, layer: &dyn Layer, first: u64, blocks: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; (blocks * BLOCK) as usize];
        self.run(layer.read_bytes(&self.ctx, first * BLOCK, &mut buf))?;
        Ok(buf)
    }
}

/// What block `i` holds once written.
fn pattern(i: u64) -> Vec<u8> {
    let mut block = vec![(i * 7 + 1) as u8; BLOCK as usize];
    block[..8].copy_from_slice(&i.to_le_bytes());
    block
}

/// Blocks written before a grow: every third one.
fn written(i: u64) -> bool {
    i % 3 == 0
}

/// A device over `OLD` bytes with every third block written and flushed.
fn filled(kind: Kind, rig: &Rig) -> (Arc<Leaf>, Box<dyn Layer>) {
    let leaf = Leaf::new(vec![0u8; OLD as usize]);
    let layer = kind.open(rig, &leaf);
    let blocks = layer.size() / BLOCK;
    for i in (0..blocks).filter(|&i| written(i)) {
        rig.write(&*layer, i, 1);
    }
    rig.flush(&*layer);
    (leaf, layer)
}

/// Make the leaf `NEW` bytes long: the new part holds `fill`.
fn extend(leaf: &Leaf, fill: Fill) {
    let mut state = leaf.state();
    let old = state.image.len();
    let tail: Vec<u8> = match fill {
        Fill::Garbage => (0..NEW as usize - old)
            .map(|i| (i * 31 + 7) as u8)
            .collect(),
        // Stale metadata of this very layer type: superblock, valid table
        // pages and headers, as a device used before would hold.
        Fill::Stale => state
            .image
            .iter()
            .cycle()
            .take(NEW as usize - old)
            .copied()
            .collect(),
    };
    state.image.extend(tail);
}

#[derive(Clone, Copy, Debug)]
enum Fill {
    Garbage,
    Stale,
}

/// Old blocks read as written (or zeros), all newer ones as zeros.
fn check_contents(kind: Kind, rig: &Rig, layer: &dyn Layer, old_blocks: u64, what: &str) {
    let blocks = layer.size() / BLOCK;
    let all = rig
        .read(layer, 0, blocks)
        .unwrap_or_else(|e| panic!("{kind:?} {what}: read: {e:?}"));
    for i in 0..blocks {
        let got = &all[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize];
        let want = if i < old_blocks && written(i) {
            pattern(i)
        } else {
            vec![0u8; BLOCK as usize]
        };
        assert!(
            got == want,
            "{kind:?} {what}: block {i} of {blocks} differs"
        );
    }
}

#[test]
fn a_live_grow_keeps_the_data_and_adds_zero_blocks_that_take_writes() {
    let rig = Rig::new();
    for kind in KINDS {
        for fill in [Fill::Garbage, Fill::Stale] {
            let (leaf, layer) = filled(kind, &rig);
            let old_blocks = layer.size() / BLOCK;
            extend(&leaf, fill);
            let new_size = kind.exposed(NEW);
            rig.run(layer.grow(&rig.ctx, new_size)).unwrap();
            assert_eq!(layer.size(), new_size, "{kind:?}");
            assert!(
                new_size / BLOCK > 3 * kind.group_edge(),
                "{kind:?}: crosses groups"
            );
            check_contents(kind, &rig, &*layer, old_blocks, "after the grow");
            // Writes in the new blocks, one across the first group's edge.
            let last = new_size / BLOCK - 1;
            rig.write(&*layer, kind.group_edge() - 2, 4);
            rig.write(&*layer, last, 1);
            let across = rig.read(&*layer, kind.group_edge() - 2, 4).unwrap();
            let want: Vec<u8> = (kind.group_edge() - 2..kind.group_edge() + 2)
                .flat_map(pattern)
                .collect();
            assert!(across == want, "{kind:?}: a write across a group's edge");
            rig.flush(&*layer);
            drop(layer);
            // Reopened, it has the new size and everything verifies.
            let layer = kind.open(&rig, &Leaf::new(leaf.image()));
            assert_eq!(layer.size(), new_size, "{kind:?}: reopened");
            assert_eq!(rig.read(&*layer, last, 1).unwrap(), pattern(last));
            assert_eq!(rig.read(&*layer, kind.group_edge() - 2, 4).unwrap(), want);
            assert_eq!(rig.read(&*layer, 0, 1).unwrap(), pattern(0));
        }
    }
}

#[test]
fn a_larger_device_below_grows_the_layer_at_open() {
    let rig = Rig::new();
    for kind in KINDS {
        for fill in [Fill::Garbage, Fill::Stale] {
            let (leaf, layer) = filled(kind, &rig);
            let old_blocks = layer.size() / BLOCK;
            drop(layer);
            extend(&leaf, fill);
            let layer = kind.open(&rig, &leaf);
            assert_eq!(layer.size(), kind.exposed(NEW), "{kind:?} {fill:?}");
            check_contents(kind, &rig, &*layer, old_blocks, "grown at open");
            let last = layer.size() / BLOCK - 1;
            rig.write(&*layer, last, 1);
            rig.flush(&*layer);
            drop(layer);
            let layer = kind.open(&rig, &leaf);
            assert_eq!(rig.read(&*layer, last, 1).unwrap(), pattern(last));
        }
    }
}

/// A crash at every point of a live grow (every write possibly torn or lost
/// after the last flush): the device opens, at the new size (it grows again
/// at open if the crash came first), with all flushed data and zeros after.
#[test]
fn a_crash_at_every_write_of_a_grow_loses_nothing() {
    let rig = Rig::new();
    for kind in KINDS {
        for fill in [Fill::Garbage, Fill::Stale] {
            let (leaf, layer) = filled(kind, &rig);
            let old_blocks = layer.size() / BLOCK;
            extend(&leaf, fill);
            let base = leaf.image();
            leaf.take_events();
            rig.run(layer.grow(&rig.ctx, kind.exposed(NEW))).unwrap();
            let events = leaf.take_events();
            assert!(events.len() >= 4, "{kind:?}: {events:?}");
            let mut rng = Rng::new(11);
            for k in 0..=events.len() {
                for _ in 0..6 {
                    let image = crash_image(&base, &events[..k], &mut rng);
                    let leaf = Leaf::new(image);
                    let what = format!("{fill:?}, crash after {k} of {} events", events.len());
                    let layer = kind
                        .try_open(&rig, &leaf)
                        .unwrap_or_else(|e| panic!("{kind:?} {what}: cannot open: {e}"));
                    assert_eq!(layer.size(), kind.exposed(NEW), "{kind:?} {what}");
                    check_contents(kind, &rig, &*layer, old_blocks, &what);
                }
            }
        }
    }
}

#[test]
fn shrinking_is_refused_and_writes_nothing() {
    let rig = Rig::new();
    for kind in KINDS {
        let (leaf, layer) = filled(kind, &rig);
        let size = layer.size();
        leaf.take_events();
        let err = rig
            .run(layer.grow(&rig.ctx, size - BLOCK))
            .expect_err("a live shrink");
        assert!(err.contains("cannot shrink"), "{kind:?}: {err}");
        // More than the device below has room for.
        let err = rig
            .run(layer.grow(&rig.ctx, size + BLOCK))
            .expect_err("a grow past the device below");
        assert!(err.contains("has room for"), "{kind:?}: {err}");
        assert_eq!(layer.size(), size);
        assert!(leaf.take_events().is_empty(), "{kind:?}: wrote");
        // Grown, flushed, then the device below comes back smaller.
        extend(&leaf, Fill::Garbage);
        rig.run(layer.grow(&rig.ctx, kind.exposed(NEW))).unwrap();
        drop(layer);
        let mut image = leaf.image();
        let smaller = (NEW + OLD) / 2;
        assert!(kind.exposed(smaller) < kind.exposed(NEW));
        image.truncate(smaller as usize);
        let small = Leaf::new(image.clone());
        let err = kind.try_open(&rig, &small).err().expect("opened smaller");
        assert!(err.contains("the device below shrank"), "{kind:?}: {err}");
        assert!(small.image() == image && small.take_events().is_empty());
    }
}

/// Reads, writes and flushes keep running while a grow runs, and none of
/// them waits for the other (a deadlock would hang here).
#[test]
fn requests_run_during_a_live_grow() {
    let rig = Rig::new();
    for kind in KINDS {
        let (leaf, layer) = filled(kind, &rig);
        let old_blocks = layer.size() / BLOCK;
        extend(&leaf, Fill::Garbage);
        let ctx = &rig.ctx;
        let data: Vec<Vec<u8>> = (0..old_blocks).step_by(3).map(pattern).collect();
        let mut futs: Vec<LocalBoxFuture<'_, std::result::Result<(), String>>> = Vec::new();
        futs.push(Box::pin(layer.grow(ctx, kind.exposed(NEW))));
        for (n, i) in (0..old_blocks).step_by(3).enumerate() {
            let layer = &*layer;
            let data = &data[n];
            futs.push(Box::pin(async move {
                let mut buf = vec![0u8; BLOCK as usize];
                layer
                    .read_bytes(ctx, i * BLOCK, &mut buf)
                    .await
                    .map_err(err)?;
                assert!(buf == *data, "block {i} during the grow");
                layer.write_bytes(ctx, i * BLOCK, data).await.map_err(err)?;
                if n % 8 == 0 {
                    layer.flush(ctx).await.map_err(err)?;
                }
                Ok(())
            }));
        }
        leaf.take_events();
        for res in rig.run(join_all(futs)) {
            res.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
        // The grow's zeroing did not run alone: requests came in between.
        let events = leaf.take_events();
        let zeros: Vec<usize> = (0..events.len())
            .filter(|&i| matches!(events[i], Event::Zero(..)))
            .collect();
        let (first, last) = (zeros[0], *zeros.last().unwrap());
        assert!(
            events[first..last]
                .iter()
                .any(|e| matches!(e, Event::Write(..))),
            "{kind:?}: no request ran during the grow"
        );
        rig.flush(&*layer);
        check_contents(kind, &rig, &*layer, old_blocks, "after a busy grow");
        drop(layer);
        let layer = kind.open(&rig, &leaf);
        assert_eq!(layer.size(), kind.exposed(NEW));
        check_contents(kind, &rig, &*layer, old_blocks, "reopened");
    }
}

fn err(e: Error) -> String {
    format!("{e:?}")
}

/// Where the layout puts things: the first page right after the header, and
/// the data of block 0 right after the first group's one page.
#[test]
fn the_first_group_starts_right_after_the_header() {
    for kind in KINDS {
        let e = kind.entry_bytes();
        assert_eq!(
            MetaTable::grouped_page_at(SUPERBLOCK_BYTES, e, BLOCK, 0),
            3 * 4096
        );
        assert_eq!(
            MetaTable::grouped_data_at(SUPERBLOCK_BYTES, e, BLOCK, 0),
            5 * 4096
        );
        assert_eq!(
            MetaTable::grouped_page_at(SUPERBLOCK_BYTES, e, BLOCK, 1),
            5 * 4096 + kind.group_edge() * BLOCK
        );
    }
}

//! Raising a `compress` of format version 2 (the pinned image of
//! `tests/data/formats/compress-v2`) with a crash at every write and flush
//! of the raise and of the writes after it: the layer opens either as
//! version 2 at its old size or as version 3 at the new size, never as
//! neither, with every block it held and every flushed write.

mod compress_units;
mod journal;
mod rig;

use std::sync::Arc;

use compress_units::UNIT;
use journal::{crash_image, Event, Leaf};
use layers::compress::Compress;
use layers::rng::Rng;
use layers::Layer;
use rig::Rig;

const BLOCK: u32 = 4096;
/// Past the in-place map page's 102 units: a placed page too.
const BIG: u64 = 4 << 20;
/// Units written after the raise: the first two flushed, the last not.
const AFTER: [u64; 3] = [10, 100, 127];

fn pinned_v2() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/formats/compress-v2/leaf.img"
    );
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What unit `unit` is written with after the raise: text, which packs
/// into one granule (the image's data area is small).
fn after(unit: u64) -> Vec<u8> {
    format!("unit {unit}, written after the raise; ")
        .bytes()
        .cycle()
        .take(UNIT as usize)
        .collect()
}

fn version(image: &[u8]) -> u32 {
    u32::from_le_bytes(image[24..28].try_into().unwrap())
}

impl Rig {
    fn try_open(&self, leaf: &Arc<Leaf>, size: Option<u64>) -> Result<Box<dyn Layer>, String> {
        let lower: Arc<dyn Layer> = leaf.clone();
        let layer = self.run(Compress::open(&self.ctx, lower, BLOCK, "lz4", size))?;
        Ok(Box::new(layer))
    }

    fn read_all(&self, layer: &dyn Layer, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        self.run(layer.read_bytes(&self.ctx, 0, &mut out))
            .unwrap_or_else(|e| panic!("read: {e:?}"));
        out
    }
}

#[test]
fn a_crash_at_every_event_of_a_version_2_raise_opens_as_either_version() {
    let rig = Rig::new();
    let pinned = pinned_v2();
    assert_eq!(version(&pinned), 2);
    let leaf = Leaf::new(pinned.clone());
    // `size` unset: the default, the formatted size.
    let layer = rig.try_open(&leaf, None).unwrap();
    let old_size = layer.size();
    let held = rig.read_all(&*layer, old_size);
    assert!(leaf.take_events().iter().all(|e| matches!(e, Event::Flush)));
    assert!(leaf.image() == pinned, "opening at its size changed it");
    rig.run(layer.grow(&rig.ctx, BIG)).unwrap();
    assert_eq!(layer.size(), BIG);
    let grown_at = leaf.state().events.len();
    for unit in &AFTER[..2] {
        rig.run(layer.write_bytes(&rig.ctx, unit * UNIT, &after(*unit)))
            .unwrap();
    }
    rig.run(layer.flush(&rig.ctx)).unwrap();
    let flushed_at = leaf.state().events.len();
    rig.run(layer.write_bytes(&rig.ctx, AFTER[2] * UNIT, &after(AFTER[2])))
        .unwrap();
    let events = leaf.take_events();
    drop(layer);
    let mut rng = Rng::new(17);
    let (mut as_v2, mut as_v3, mut torn) = (0, 0, 0);
    for k in 0..=events.len() {
        for _ in 0..8 {
            let image = crash_image(&pinned, &events[..k], &mut rng);
            let what = format!("crash after {k} of {} events", events.len());
            if version(&image) != 2 && version(&image) != 3 {
                unreachable!("{what}: the version field holds neither");
            }
            // The superblock's version and crc lie in its first and last
            // sectors: one landed without the other.
            let sector_changed = |at: usize| image[at..at + 512] != pinned[at..at + 512];
            let torn_now = sector_changed(0) != sector_changed(4096 - 512);
            torn += usize::from(torn_now);
            // At its old size: version 2 with every block, or already
            // version 3 at the new size (then the old size is a shrink).
            let leaf = Leaf::new(image.clone());
            match rig.try_open(&leaf, None) {
                Ok(layer) => {
                    as_v2 += 1;
                    assert!(
                        k < grown_at,
                        "{what}: the raise returned, yet opened at the old size"
                    );
                    assert_eq!(layer.size(), old_size, "{what}");
                    assert!(rig.read_all(&*layer, old_size) == held, "{what}");
                    drop(layer);
                    assert_eq!(version(&leaf.image()), 2, "{what}: opened at the old size");
                }
                Err(e) => {
                    as_v3 += 1;
                    assert!(e.contains("shrinking"), "{what}: {e}");
                    assert!(
                        version(&image) == 3 || torn_now,
                        "{what}: refused the old size of a version 2 superblock"
                    );
                    assert!(leaf.image() == image, "{what}: wrote while refusing");
                }
            }
            // At the new size it opens (raising again if the raise was cut)
            // with every block it held, the flushed writes, and zeros.
            let leaf = Leaf::new(image);
            let layer = rig
                .try_open(&leaf, Some(BIG))
                .unwrap_or_else(|e| panic!("{what}: cannot open at the new size: {e}"));
            assert_eq!(layer.size(), BIG, "{what}");
            let all = rig.read_all(&*layer, BIG);
            assert!(
                all[..old_size as usize] == held[..],
                "{what}: the old blocks"
            );
            assert!(
                all[old_size as usize..UNIT as usize * 3]
                    .iter()
                    .all(|&b| b == 0),
                "{what}: past the old end"
            );
            for unit in 3..BIG / UNIT {
                let got = &all[(unit * UNIT) as usize..((unit + 1) * UNIT) as usize];
                let zeros = got.iter().all(|&b| b == 0);
                let ok = if AFTER[..2].contains(&unit) && k >= flushed_at {
                    got == after(unit)
                } else if AFTER.contains(&unit) {
                    zeros || got == after(unit)
                } else {
                    zeros
                };
                assert!(ok, "{what}: unit {unit}");
            }
            drop(layer);
            assert_eq!(version(&leaf.image()), 3, "{what}: opened at the new size");
        }
    }
    assert!(
        as_v2 > 0 && as_v3 > 0,
        "{as_v2} opened as version 2, {as_v3} as 3"
    );
    assert!(torn > 0, "no crash tore the superblock");
}

//! Growing `compress` (`compress/grow.rs`): a thin layer with a fixed `size`
//! takes in a grown device below, live and at open, with a crash at every
//! write of a grow and of the writes that use the new space; a smaller device
//! below and a shrink are refused.

mod compress_units;
mod journal;
mod rig;

use std::sync::Arc;

use compress_units::{busy_unit, contents, report, UNIT};
use journal::{crash_image, Leaf};
use layers::compress::Compress;
use layers::join::join_all;
use layers::rng::Rng;
use layers::{Error, Layer, LocalBoxFuture};
use rig::Rig;

const BLOCK: u32 = 4096;
/// Thin: the exposed size is larger than either device below.
const SIZE: u64 = 4 << 20;
const OLD: u64 = 512 << 10;
const NEW: u64 = 1 << 20;

impl Rig {
    fn try_open(&self, leaf: &Arc<Leaf>, size: Option<u64>) -> Result<Box<dyn Layer>, String> {
        let lower: Arc<dyn Layer> = leaf.clone();
        let layer = self.run(Compress::open(&self.ctx, lower, BLOCK, "lz4", size))?;
        Ok(Box::new(layer))
    }

    fn open(&self, leaf: &Arc<Leaf>) -> Box<dyn Layer> {
        self.try_open(leaf, Some(SIZE))
            .unwrap_or_else(|e| panic!("cannot open: {e}"))
    }

    fn write_unit(&self, layer: &dyn Layer, unit: u64) -> Result<(), Error> {
        self.run(layer.write_bytes(&self.ctx, unit * UNIT, &contents(unit)))
    }

    fn flush(&self, layer: &dyn Layer) {
        self.run(layer.flush(&self.ctx)).unwrap();
    }

    fn read_unit(&self, layer: &dyn Layer, unit: u64) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; UNIT as usize];
        self.run(layer.read_bytes(&self.ctx, unit * UNIT, &mut out))?;
        Ok(out)
    }
}

/// Write units 0, 1, 2, … until the device below is full; returns how many
/// were written (all flushed).
fn fill(rig: &Rig, layer: &dyn Layer, from: u64) -> u64 {
    let mut unit = from;
    while unit < SIZE / UNIT {
        match rig.write_unit(layer, unit) {
            Ok(()) => unit += 1,
            Err(Error::NoSpace) => break,
            Err(e) => panic!("unit {unit}: {e:?}"),
        }
    }
    rig.flush(layer);
    unit
}

/// Units `0..written` hold their contents, every other unit reads zeros.
fn check(rig: &Rig, layer: &dyn Layer, written: u64, what: &str) {
    for unit in 0..SIZE / UNIT {
        let got = rig
            .read_unit(layer, unit)
            .unwrap_or_else(|e| panic!("{what}: unit {unit}: {e:?}"));
        let want = if unit < written {
            contents(unit)
        } else {
            vec![0u8; UNIT as usize]
        };
        assert!(got == want, "{what}: unit {unit} of {written} written");
    }
}

/// The leaf made `NEW` bytes long; the new part holds garbage, as a reused
/// device would.
fn extend(leaf: &Leaf) {
    let mut state = leaf.state();
    let old = state.image.len();
    state
        .image
        .extend((old..NEW as usize).map(|i| (i * 31 + 7) as u8));
}

#[test]
fn a_live_grow_below_adds_free_space_and_keeps_the_data() {
    let rig = Rig::new();
    let leaf = Leaf::new(vec![0u8; OLD as usize]);
    let layer = rig.open(&leaf);
    let before = report(&*layer);
    let written = fill(&rig, &*layer, 0);
    assert!(written > 4 && written < SIZE / UNIT, "{written}");
    extend(&leaf);
    rig.run(layer.grow(&rig.ctx, SIZE)).unwrap();
    assert_eq!(layer.size(), SIZE);
    let grown = report(&*layer);
    assert_eq!(
        grown.data_area_bytes - before.data_area_bytes,
        NEW - OLD,
        "every new byte is data area"
    );
    check(&rig, &*layer, written, "after the grow");
    let more = fill(&rig, &*layer, written);
    assert!(
        more >= written + (NEW - OLD) / UNIT - 1,
        "{written} then {more}"
    );
    check(&rig, &*layer, more, "filled after the grow");
    drop(layer);
    let layer = rig.open(&leaf);
    assert_eq!(report(&*layer).data_area_bytes, grown.data_area_bytes);
    check(&rig, &*layer, more, "reopened");
    // A second grow call with nothing new below changes nothing.
    leaf.take_events();
    rig.run(layer.grow(&rig.ctx, SIZE)).unwrap();
    assert!(leaf.take_events().is_empty());
}

#[test]
fn a_larger_device_below_is_taken_in_at_open() {
    let rig = Rig::new();
    let leaf = Leaf::new(vec![0u8; OLD as usize]);
    let layer = rig.open(&leaf);
    let written = fill(&rig, &*layer, 0);
    let area = report(&*layer).data_area_bytes;
    drop(layer);
    extend(&leaf);
    let layer = rig.open(&leaf);
    assert_eq!(report(&*layer).data_area_bytes, area + NEW - OLD);
    check(&rig, &*layer, written, "grown at open");
    let more = fill(&rig, &*layer, written);
    assert!(more > written + 4);
    drop(layer);
    // The map header now records the new size: the old one is refused.
    let mut image = leaf.image();
    image.truncate(OLD as usize);
    let small = Leaf::new(image);
    let err = rig.try_open(&small, Some(SIZE)).err().expect("opened");
    assert!(
        err.contains(&format!("has {OLD} bytes")) && err.contains(&format!("uses {NEW} bytes")),
        "{err}"
    );
    assert!(small.take_events().is_empty(), "wrote");
}

/// A crash at every point of a live grow and of the writes that use the new
/// space after it (every write possibly torn or lost after the last flush):
/// the device opens, with every flushed unit, each unflushed one as written
/// or zeros, and zeros elsewhere; once the grow returned, its record is
/// durable.
#[test]
fn a_crash_at_every_write_of_a_grow_loses_nothing() {
    let rig = Rig::new();
    let leaf = Leaf::new(vec![0u8; OLD as usize]);
    let layer = rig.open(&leaf);
    let written = fill(&rig, &*layer, 0);
    extend(&leaf);
    let base = leaf.image();
    leaf.take_events();
    rig.run(layer.grow(&rig.ctx, SIZE)).unwrap();
    let grown_at = leaf.state().events.len();
    // Two units in the new space, flushed, then one more, not flushed.
    rig.write_unit(&*layer, written).unwrap();
    rig.write_unit(&*layer, written + 1).unwrap();
    rig.flush(&*layer);
    let flushed_at = leaf.state().events.len();
    rig.write_unit(&*layer, written + 2).unwrap();
    let events = leaf.take_events();
    drop(layer);
    let mut rng = Rng::new(7);
    for k in 0..=events.len() {
        for _ in 0..6 {
            let image = crash_image(&base, &events[..k], &mut rng);
            let what = format!("crash after {k} of {} events", events.len());
            if k >= grown_at {
                // The grow returned: its record is durable, so the device
                // below coming back at its old size is refused.
                let small = Leaf::new(image[..OLD as usize].to_vec());
                let err = rig.try_open(&small, Some(SIZE)).err();
                assert!(err.is_some(), "{what}: opened over the old size");
            }
            let leaf = Leaf::new(image);
            let layer = rig
                .try_open(&leaf, Some(SIZE))
                .unwrap_or_else(|e| panic!("{what}: cannot open: {e}"));
            for unit in 0..SIZE / UNIT {
                let got = rig
                    .read_unit(&*layer, unit)
                    .unwrap_or_else(|e| panic!("{what}: unit {unit}: {e:?}"));
                let zeros = got.iter().all(|&b| b == 0);
                let ok = match unit {
                    u if u < written => got == contents(u),
                    u if u < written + 2 && k >= flushed_at => got == contents(u),
                    u if u < written + 3 => zeros || got == contents(u),
                    _ => zeros,
                };
                assert!(ok, "{what}: unit {unit}");
            }
            // However far the grow got, the device opens with the new space.
            assert_eq!(report(&*layer).data_area_bytes % 4096, 0);
            let more = fill(&rig, &*layer, written + 3);
            assert!(more > written + 5, "{what}: {more}");
        }
    }
}

/// A shrink is refused and writes nothing (raising the size, and a default
/// size that follows the device below: `grow_compress_size.rs`).
#[test]
fn a_shrink_is_refused_and_writes_nothing() {
    let rig = Rig::new();
    let leaf = Leaf::new(vec![0u8; OLD as usize]);
    let layer = rig.open(&leaf);
    fill(&rig, &*layer, 0);
    leaf.take_events();
    let err = rig
        .run(layer.grow(&rig.ctx, SIZE - 4096))
        .expect_err("a live shrink");
    assert!(err.contains("shrinking"), "{err}");
    assert_eq!(layer.size(), SIZE);
    assert!(leaf.take_events().is_empty(), "wrote");
}

/// Reads, writes and flushes run while a live grow runs, with the device
/// below full: writes that found no space before the grow may find it after,
/// and nothing waits forever (a deadlock would hang here).
#[test]
fn requests_run_during_a_live_grow() {
    let rig = Rig::new();
    let leaf = Leaf::new(vec![0u8; OLD as usize]);
    let layer = rig.open(&leaf);
    let written = fill(&rig, &*layer, 0);
    extend(&leaf);
    let ctx = &rig.ctx;
    let layer = &*layer;
    let mut futs: Vec<LocalBoxFuture<'_, Result<(), String>>> = Vec::new();
    futs.push(Box::pin(layer.grow(ctx, SIZE)));
    for unit in 0..written + 8 {
        futs.push(Box::pin(busy_unit(
            layer,
            ctx,
            unit,
            unit < written,
            "grow",
        )));
    }
    for res in rig.run(join_all(futs)) {
        res.unwrap();
    }
    // Units the busy grow refused for space are written again now.
    let more = fill(&rig, layer, written);
    assert!(more >= written + 8, "{more}");
    check(&rig, layer, more, "after a busy grow");
}

//! Raising the exposed size of a thin `compress` (format version 3,
//! `compress/grow.rs`): the map gains pages placed in the data area, live
//! and at open, with a crash at every write and flush of the raise and of
//! the writes after it; a short last unit that holds data is made whole;
//! a smaller size, a hostile map header are refused, and requests run
//! during a raise.

mod compress_units;
mod journal;
mod rig;

use std::sync::Arc;

use compress_units::{busy_unit, contents, report, UNIT};
use journal::{crash_image, Leaf};
use layers::compress::Compress;
use layers::join::join_all;
use layers::meta_table::{decode_header, encode_header, PlacedRun, PAGE_BYTES};
use layers::rng::Rng;
use layers::{Layer, LocalBoxFuture};
use rig::Rig;

const BLOCK: u32 = 4096;
const LEAF: u64 = 1 << 20;
/// Thin: 128 units, two pages of map in place.
const SIZE: u64 = 4 << 20;
/// 512 units: four more pages of map, placed in the data area.
const BIG: u64 = 16 << 20;
/// Units written before the raise, and units past the old end after it.
const BEFORE: [u64; 4] = [0, 1, 50, 127];
const AFTER: [u64; 3] = [128, 300, 511];
/// Byte of the map header's slot 0 below.
const HEADER_AT: u64 = 4096;

impl Rig {
    fn try_open(&self, leaf: &Arc<Leaf>, size: Option<u64>) -> Result<Box<dyn Layer>, String> {
        let lower: Arc<dyn Layer> = leaf.clone();
        let layer = self.run(Compress::open(&self.ctx, lower, BLOCK, "lz4", size))?;
        Ok(Box::new(layer))
    }

    fn open(&self, leaf: &Arc<Leaf>, size: u64) -> Box<dyn Layer> {
        self.try_open(leaf, Some(size))
            .unwrap_or_else(|e| panic!("cannot open at {size}: {e}"))
    }

    fn write_unit(&self, layer: &dyn Layer, unit: u64) {
        self.run(layer.write_bytes(&self.ctx, unit * UNIT, &contents(unit)))
            .unwrap_or_else(|e| panic!("unit {unit}: {e:?}"));
    }

    fn flush(&self, layer: &dyn Layer) {
        self.run(layer.flush(&self.ctx)).unwrap();
    }

    fn read_unit(&self, layer: &dyn Layer, unit: u64) -> Vec<u8> {
        let mut out = vec![0u8; UNIT as usize];
        self.run(layer.read_bytes(&self.ctx, unit * UNIT, &mut out))
            .unwrap_or_else(|e| panic!("unit {unit}: {e:?}"));
        out
    }

    /// Every unit of `layer` reads as written if in `written`, else zeros.
    fn check(&self, layer: &dyn Layer, written: &[u64], what: &str) {
        self.check_but(layer, written, u64::MAX, what)
    }

    /// As [`Rig::check`], but unit `skip` is the caller's to check.
    fn check_but(&self, layer: &dyn Layer, written: &[u64], skip: u64, what: &str) {
        for unit in (0..layer.size() / UNIT).filter(|&u| u != skip) {
            let want = if written.contains(&unit) {
                contents(unit)
            } else {
                vec![0u8; UNIT as usize]
            };
            assert!(self.read_unit(layer, unit) == want, "{what}: unit {unit}");
        }
    }
}

/// A device below whose header and map area are zeros (a fresh one) and
/// whose data area holds garbage, so map pages that were never written
/// blank do not read as blank.
fn fresh_leaf() -> Arc<Leaf> {
    let mut image: Vec<u8> = (0..LEAF as usize).map(|i| (i * 31 + 7) as u8).collect();
    image[..64 << 10].fill(0);
    Leaf::new(image)
}

/// A layer of `SIZE` with `BEFORE` written and flushed, then closed.
fn formatted(rig: &Rig) -> Arc<Leaf> {
    let leaf = fresh_leaf();
    let layer = rig.open(&leaf, SIZE);
    for unit in BEFORE {
        rig.write_unit(&*layer, unit);
    }
    rig.flush(&*layer);
    leaf
}

#[test]
fn a_live_raise_places_map_pages_and_keeps_the_data() {
    let rig = Rig::new();
    let leaf = formatted(&rig);
    let layer = rig.open(&leaf, SIZE);
    let before = report(&*layer);
    rig.run(layer.grow(&rig.ctx, BIG)).unwrap();
    assert_eq!(layer.size(), BIG);
    // Four map pages (two 4 KiB slots each) came out of the data area.
    let grown = report(&*layer);
    assert_eq!(before.free_bytes - grown.free_bytes, 4 * 2 * 4096);
    rig.check(&*layer, &BEFORE, "after the raise");
    for unit in AFTER {
        rig.write_unit(&*layer, unit);
    }
    rig.write_unit(&*layer, 1);
    rig.flush(&*layer);
    let all: Vec<u64> = BEFORE.iter().chain(&AFTER).copied().collect();
    rig.check(&*layer, &all, "written after the raise");
    drop(layer);
    let layer = rig.open(&leaf, BIG);
    assert_eq!(layer.size(), BIG);
    assert_eq!(report(&*layer).free_bytes, grown.free_bytes - 3 * UNIT);
    rig.check(&*layer, &all, "reopened");
    // Raised again: the map gains one more run.
    rig.run(layer.grow(&rig.ctx, 2 * BIG)).unwrap();
    rig.write_unit(&*layer, 1000);
    rig.flush(&*layer);
    drop(layer);
    let layer = rig.open(&leaf, 2 * BIG);
    let mut all = all;
    all.push(1000);
    rig.check(&*layer, &all, "raised twice and reopened");
    drop(layer);
    // Opening at the old size is a shrink: refused, nothing written.
    let image = leaf.image();
    leaf.take_events();
    let err = rig
        .try_open(&leaf, Some(SIZE))
        .err()
        .expect("opened smaller");
    assert!(
        err.contains(&format!("exposed size is {}", 2 * BIG))
            && err.contains(&format!("asks for {SIZE}")),
        "{err}"
    );
    assert!(leaf.image() == image && leaf.take_events().is_empty());
}

#[test]
fn a_larger_size_in_the_config_raises_it_at_open() {
    let rig = Rig::new();
    let leaf = formatted(&rig);
    let layer = rig.open(&leaf, BIG);
    assert_eq!(layer.size(), BIG);
    rig.check(&*layer, &BEFORE, "raised at open");
    for unit in AFTER {
        rig.write_unit(&*layer, unit);
    }
    rig.flush(&*layer);
    drop(layer);
    let layer = rig.open(&leaf, BIG);
    let all: Vec<u64> = BEFORE.iter().chain(&AFTER).copied().collect();
    rig.check(&*layer, &all, "reopened");
}

/// Without `size` the exposed size follows the device below: a grown one
/// raises it at open (a version 2 layer refused this).
#[test]
fn a_default_size_follows_a_grown_device_below() {
    let rig = Rig::new();
    let leaf = Leaf::new(vec![0u8; 512 << 10]);
    let layer = rig.try_open(&leaf, None).unwrap();
    let size = layer.size();
    // The default ends in a short unit (never written: it may grow).
    assert_ne!(size % UNIT, 0);
    rig.write_unit(&*layer, 0);
    rig.write_unit(&*layer, size / UNIT - 1);
    rig.flush(&*layer);
    drop(layer);
    leaf.state().image.resize(8 << 20, 0xa5);
    let layer = rig.try_open(&leaf, None).unwrap();
    let grown = layer.size();
    assert!(grown > 8 * size, "{size} -> {grown}");
    let mut tail = vec![1u8; (UNIT - size % UNIT) as usize];
    rig.run(layer.read_bytes(&rig.ctx, size, &mut tail))
        .unwrap();
    assert!(tail.iter().all(|&b| b == 0), "past the old end");
    rig.check(&*layer, &[0, size / UNIT - 1], "grown by default");
    rig.write_unit(&*layer, grown / UNIT - 1);
    rig.flush(&*layer);
    drop(layer);
    let layer = rig.try_open(&leaf, None).unwrap();
    assert_eq!(layer.size(), grown);
    rig.check(
        &*layer,
        &[0, size / UNIT - 1, grown / UNIT - 1],
        "reopened by default",
    );
}

/// A crash at every write and flush of a live raise and of the writes
/// after it (every write possibly torn or lost after the last flush): the
/// device opens at the config's larger size (growing again if the raise
/// was not durable), with every flushed unit, an unflushed one as written
/// or zeros, and zeros elsewhere; once the raise returned, the old size is
/// a shrink.
#[test]
fn a_crash_at_every_event_of_a_raise_loses_nothing() {
    let rig = Rig::new();
    let leaf = formatted(&rig);
    let layer = rig.open(&leaf, SIZE);
    leaf.take_events();
    let opened = leaf.image();
    rig.run(layer.grow(&rig.ctx, BIG)).unwrap();
    let grown_at = leaf.state().events.len();
    rig.write_unit(&*layer, AFTER[0]);
    rig.write_unit(&*layer, AFTER[1]);
    rig.flush(&*layer);
    let flushed_at = leaf.state().events.len();
    rig.write_unit(&*layer, AFTER[2]);
    let events = leaf.take_events();
    drop(layer);
    let mut rng = Rng::new(11);
    for k in 0..=events.len() {
        for _ in 0..6 {
            let image = crash_image(&opened, &events[..k], &mut rng);
            let what = format!("crash after {k} of {} events", events.len());
            if k >= grown_at {
                let leaf = Leaf::new(image.clone());
                let err = rig.try_open(&leaf, Some(SIZE)).err();
                assert!(err.is_some(), "{what}: opened at the old size");
            }
            let leaf = Leaf::new(image);
            let layer = rig
                .try_open(&leaf, Some(BIG))
                .unwrap_or_else(|e| panic!("{what}: cannot open: {e}"));
            assert_eq!(layer.size(), BIG, "{what}");
            for unit in 0..BIG / UNIT {
                let got = rig.read_unit(&*layer, unit);
                let zeros = got.iter().all(|&b| b == 0);
                let durable =
                    BEFORE.contains(&unit) || (AFTER[..2].contains(&unit) && k >= flushed_at);
                let ok = if durable {
                    got == contents(unit)
                } else if AFTER.contains(&unit) {
                    zeros || got == contents(unit)
                } else {
                    zeros
                };
                assert!(ok, "{what}: unit {unit}");
            }
            // The space the map runs hold is in use, the rest takes writes.
            for unit in [2, 200, 400] {
                rig.write_unit(&*layer, unit);
            }
            rig.flush(&*layer);
            drop(layer);
            let layer = rig.open(&leaf, BIG);
            for unit in [2, 200, 400] {
                assert!(rig.read_unit(&*layer, unit) == contents(unit), "{what}");
            }
        }
    }
}

/// Text that lz4 packs: a short unit of it is stored packed at its short
/// length.
fn text(len: usize) -> Vec<u8> {
    b"a short last unit that holds data; "
        .iter()
        .cycle()
        .take(len)
        .copied()
        .collect()
}

/// An old size ending in a short unit that holds data (packed, or raw):
/// the raise writes it whole, and its data reads back, live, at open and
/// reopened, with zeros past the old end.
#[test]
fn a_short_last_unit_that_holds_data_is_made_whole() {
    let rig = Rig::new();
    let short = SIZE + 3 * 4096;
    let tails = [text(3 * 4096), contents(7)[..3 * 4096].to_vec()];
    for (i, tail) in tails.iter().enumerate() {
        for live in [true, false] {
            let what = format!("tail {i}, live {live}");
            let leaf = fresh_leaf();
            let layer = rig.open(&leaf, short);
            rig.write_unit(&*layer, 0);
            rig.run(layer.write_bytes(&rig.ctx, SIZE, tail)).unwrap();
            let layer = if live {
                rig.run(layer.grow(&rig.ctx, BIG))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                layer
            } else {
                rig.flush(&*layer);
                drop(layer);
                rig.open(&leaf, BIG)
            };
            assert_eq!(layer.size(), BIG, "{what}");
            let mut whole = tail.clone();
            whole.resize(UNIT as usize, 0);
            assert!(rig.read_unit(&*layer, SIZE / UNIT) == whole, "{what}");
            rig.check_but(&*layer, &[0], SIZE / UNIT, &what);
            drop(layer);
            let layer = rig.open(&leaf, BIG);
            assert!(
                rig.read_unit(&*layer, SIZE / UNIT) == whole,
                "{what}: reopened"
            );
            // The unit takes whole writes again.
            rig.write_unit(&*layer, SIZE / UNIT);
            rig.flush(&*layer);
            drop(layer);
            let layer = rig.open(&leaf, BIG);
            rig.check(&*layer, &[0, SIZE / UNIT], &what);
        }
    }
}

/// A crash at every write and flush of a raise that makes a short last
/// unit whole: the layer opens at the old size with the unit as written,
/// or at the new size with it whole (zeros past the old end); never
/// damaged.
#[test]
fn a_crash_while_a_short_unit_is_made_whole_loses_nothing() {
    let rig = Rig::new();
    let short = SIZE + 3 * 4096;
    let leaf = fresh_leaf();
    let layer = rig.open(&leaf, short);
    let tail = text(3 * 4096);
    rig.run(layer.write_bytes(&rig.ctx, SIZE, &tail)).unwrap();
    rig.write_unit(&*layer, 1);
    rig.flush(&*layer);
    leaf.take_events();
    let opened = leaf.image();
    rig.run(layer.grow(&rig.ctx, BIG)).unwrap();
    let events = leaf.take_events();
    drop(layer);
    let mut whole = tail.clone();
    whole.resize(UNIT as usize, 0);
    let mut rng = Rng::new(5);
    let (mut old, mut new) = (0, 0);
    for k in 0..=events.len() {
        for _ in 0..6 {
            let image = crash_image(&opened, &events[..k], &mut rng);
            let what = format!("crash after {k} of {} events", events.len());
            let leaf = Leaf::new(image.clone());
            match rig.try_open(&leaf, Some(short)) {
                Ok(layer) => {
                    old += 1;
                    let mut got = vec![0u8; tail.len()];
                    rig.run(layer.read_bytes(&rig.ctx, SIZE, &mut got))
                        .unwrap_or_else(|e| panic!("{what}: at the old size: {e:?}"));
                    assert!(got == tail, "{what}: at the old size");
                }
                Err(e) => {
                    new += 1;
                    assert!(e.contains("shrinking"), "{what}: {e}");
                }
            }
            let leaf = Leaf::new(image);
            let layer = rig
                .try_open(&leaf, Some(BIG))
                .unwrap_or_else(|e| panic!("{what}: cannot open: {e}"));
            assert!(rig.read_unit(&*layer, SIZE / UNIT) == whole, "{what}");
            rig.check_but(&*layer, &[1], SIZE / UNIT, &what);
        }
    }
    assert!(
        old > 0 && new > 0,
        "{old} crashes at the old size, {new} at the new"
    );
}

#[test]
fn raises_that_cannot_be_done_are_refused_and_write_nothing() {
    let rig = Rig::new();
    // Not a multiple of the block size.
    let leaf = formatted(&rig);
    let layer = rig.open(&leaf, SIZE);
    leaf.take_events();
    let err = rig
        .run(layer.grow(&rig.ctx, BIG + 512))
        .expect_err("a part block");
    assert!(err.contains("block size"), "{err}");
    // More map pages than free space below: nothing is taken.
    let free = report(&*layer).free_bytes;
    let err = rig
        .run(layer.grow(&rig.ctx, 1 << 40))
        .expect_err("a map larger than the space below");
    assert!(err.contains("pages of map"), "{err}");
    assert_eq!(report(&*layer).free_bytes, free);
    assert_eq!(layer.size(), SIZE);
    assert!(!leaf
        .take_events()
        .iter()
        .any(|e| !matches!(e, journal::Event::Flush)));
}

/// Placed map headers that lie (bad crc, runs outside the data area or
/// past the device below, overlapping runs, coverage the runs do not
/// hold) are refused at open with a reason, never a panic.
#[test]
fn hostile_placed_headers_are_refused_at_open() {
    let rig = Rig::new();
    let leaf = formatted(&rig);
    let layer = rig.open(&leaf, BIG);
    rig.run(layer.grow(&rig.ctx, 2 * BIG)).unwrap();
    drop(layer);
    let image = leaf.image();
    let slot = |s: u64| {
        let at = (HEADER_AT + s * PAGE_BYTES as u64) as usize;
        decode_header(&image[at..at + PAGE_BYTES])
    };
    let (newest, slot_at) = match (slot(0), slot(1)) {
        (Some(a), Some(b)) if b.seq > a.seq => (b, 1),
        (Some(a), _) => (a, 0),
        (None, Some(b)) => (b, 1),
        (None, None) => panic!("no header"),
    };
    let placed = newest.placed.clone().expect("a placed header");
    assert_eq!(placed.runs.len(), 2);
    let with = |change: &dyn Fn(&mut Vec<PlacedRun>, &mut u64)| {
        let mut h = newest.clone();
        let p = h.placed.as_mut().unwrap();
        change(&mut p.runs, &mut p.entries);
        let mut bytes = image.clone();
        let at = (HEADER_AT + slot_at * PAGE_BYTES as u64) as usize;
        bytes[at..at + PAGE_BYTES].copy_from_slice(&encode_header(&h));
        bytes
    };
    let first = placed.runs[0];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "past the device below",
            with(&|runs, _| runs[1].at = LEAF - 4096),
            "outside the data area",
        ),
        (
            "far past the end",
            with(&|runs, _| runs[1].at = u64::MAX - 4095),
            "outside the data area",
        ),
        (
            "over the flat map",
            with(&|runs, _| runs[0].at = 8192),
            "outside the data area",
        ),
        (
            "overlapping",
            with(&|runs, _| runs[1].at = first.at + 4096),
            "overlap",
        ),
        (
            "not following",
            with(&|runs, _| runs[1].first += 1),
            "does not follow",
        ),
        (
            "more entries than pages",
            with(&|_, entries| *entries += 1000),
            "damaged",
        ),
    ];
    for (what, bytes, want) in cases {
        let leaf = Leaf::new(bytes.clone());
        let err = rig
            .try_open(&leaf, Some(2 * BIG))
            .err()
            .unwrap_or_else(|| panic!("{what}: opened"));
        assert!(err.contains(want), "{what}: {err}");
        assert!(leaf.image() == bytes, "{what}: wrote");
    }
    // A torn newest slot (bad crc): the other slot is used, the open works
    // at the size it records or refuses as a shrink, never panics.
    let mut torn = image.clone();
    torn[(HEADER_AT + slot_at * PAGE_BYTES as u64 + 60) as usize] ^= 1;
    let leaf = Leaf::new(torn);
    let _ = rig.try_open(&leaf, Some(2 * BIG));
}

/// Reads, writes and flushes of the old units run while a raise runs, and
/// nothing waits forever (a deadlock would hang here).
#[test]
fn requests_run_during_a_live_raise() {
    let rig = Rig::new();
    let leaf = formatted(&rig);
    let layer = rig.open(&leaf, SIZE);
    let ctx = &rig.ctx;
    let layer = &*layer;
    let mut futs: Vec<LocalBoxFuture<'_, Result<(), String>>> = Vec::new();
    futs.push(Box::pin(layer.grow(ctx, BIG)));
    for unit in 0..SIZE / UNIT / 8 {
        futs.push(Box::pin(busy_unit(
            layer,
            ctx,
            unit,
            BEFORE.contains(&unit),
            "raise",
        )));
    }
    for res in rig.run(join_all(futs)) {
        res.unwrap();
    }
    assert_eq!(layer.size(), BIG);
    rig.write_unit(layer, 500);
    rig.flush(layer);
    assert!(rig.read_unit(layer, 500) == contents(500));
}

//! The write-intent bitmap in memory: which regions may differ between the legs
//! after a crash, and which can be marked clean again.
//!
//! Invariant: a region set here is set in the record on every leg that is not
//! failed (bits are set in memory only after the record holding them was
//! written and flushed, and cleared in memory before the record without them is
//! written). A write therefore proceeds without touching the record when its
//! regions are set here, and otherwise has the record rewritten first.
//!
//! Clearing is lazy: every FLUSH starts a new epoch ([`take_epoch`]), and a
//! write stamps its regions with the current epoch when it starts *and* when it
//! finishes. A FLUSH that began epoch `e + 1` and made every leg durable clears
//! the regions with no write in flight whose stamp is older than `e`: their
//! last write finished before the previous FLUSH began, hence before this one
//! flushed the legs, and a region written steadily stays set instead of costing
//! a record write per FLUSH. The stamps, not a per-epoch set, decide, because
//! FLUSHes overlap: one that began earlier may finish after a later one began,
//! and a write that finished in between is not covered by its leg flushes.
//!
//! [`take_epoch`]: WriteIntent::take_epoch

use std::ops::Range;

pub struct WriteIntent {
    region_bytes: u64,
    dirty: Vec<bool>,
    in_flight: Vec<u32>,
    /// The epoch in which a write to each region last started or finished.
    touched: Vec<u64>,
    /// The current epoch; +1 when a FLUSH starts.
    epoch: u64,
}

impl WriteIntent {
    /// `dirty` as loaded from the newest record (one entry per region).
    pub fn new(region_bytes: u64, dirty: Vec<bool>) -> WriteIntent {
        assert!(region_bytes.is_power_of_two());
        let regions = dirty.len();
        WriteIntent {
            region_bytes,
            dirty,
            in_flight: vec![0; regions],
            touched: vec![0; regions],
            epoch: 1,
        }
    }

    pub fn region_bytes(&self) -> u64 {
        self.region_bytes
    }

    pub fn regions(&self) -> usize {
        self.dirty.len()
    }

    /// The regions `[offset, offset+len)` touches, clamped to the bitmap.
    pub fn regions_of(&self, offset: u64, len: u64) -> Range<usize> {
        let first = offset / self.region_bytes;
        let last = offset.saturating_add(len.max(1) - 1) / self.region_bytes;
        let n = self.dirty.len() as u64;
        first.min(n) as usize..(last + 1).min(n) as usize
    }

    /// A write to `regions` starts: returns the regions whose bits must be
    /// made durable before it may touch any leg.
    pub fn begin(&mut self, regions: Range<usize>) -> Vec<usize> {
        let mut missing = Vec::new();
        for r in regions {
            self.in_flight[r] += 1;
            self.touched[r] = self.epoch;
            if !self.dirty[r] {
                missing.push(r);
            }
        }
        missing
    }

    /// A write that `begin` counted has finished (either way).
    pub fn end(&mut self, regions: Range<usize>) {
        for r in regions {
            debug_assert!(self.in_flight[r] > 0);
            self.in_flight[r] = self.in_flight[r].saturating_sub(1);
            self.touched[r] = self.epoch;
        }
    }

    /// Which of `regions` are still clear.
    pub fn still_missing(&self, regions: &[usize]) -> Vec<usize> {
        regions
            .iter()
            .copied()
            .filter(|&r| !self.dirty[r])
            .collect()
    }

    /// The bitmap with `regions` set, to write before setting them here.
    pub fn with_set(&self, regions: &[usize]) -> Vec<bool> {
        let mut out = self.dirty.clone();
        for &r in regions {
            out[r] = true;
        }
        out
    }

    /// Mark `regions` set, once a record holding them is durable.
    pub fn set(&mut self, regions: &[usize]) {
        for &r in regions {
            self.dirty[r] = true;
        }
    }

    /// A FLUSH starts, before it flushes any leg: returns the epoch it closes.
    /// Writes stamped with it or earlier finished or started before now.
    pub fn take_epoch(&mut self) -> u64 {
        let closed = self.epoch;
        self.epoch += 1;
        closed
    }

    /// After the FLUSH that closed epoch `closed` made every leg durable: clear
    /// the regions with no write in flight and none started or finished since
    /// the previous FLUSH began. Returns how many it cleared.
    pub fn clear_idle(&mut self, closed: u64) -> usize {
        let mut cleared = 0;
        for r in 0..self.dirty.len() {
            let idle = self.in_flight[r] == 0 && self.touched[r] < closed;
            if self.dirty[r] && idle {
                self.dirty[r] = false;
                cleared += 1;
            }
        }
        cleared
    }

    /// The mirror grew to `regions` regions: the new ones are clear (the legs
    /// read zeros there, all alike). Caller holds `meta_lock`, after the
    /// record with them was made durable.
    pub fn grow(&mut self, regions: usize) {
        if regions > self.dirty.len() {
            self.dirty.resize(regions, false);
            self.in_flight.resize(regions, 0);
            self.touched.resize(regions, 0);
        }
    }

    /// Clear every region (after the open-time resync made the legs equal).
    pub fn clear_all(&mut self) {
        self.dirty.fill(false);
    }

    pub fn dirty(&self) -> &[bool] {
        &self.dirty
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.iter().filter(|&&d| d).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_needs_its_bits_once() {
        let mut w = WriteIntent::new(1 << 16, vec![false; 8]);
        let r = w.regions_of(60 << 10, 8 << 10);
        assert_eq!(r, 0..2);
        assert_eq!(w.begin(r.clone()), vec![0, 1]);
        assert_eq!(w.with_set(&[0, 1])[..3], [true, true, false]);
        w.set(&[0, 1]);
        w.end(r.clone());
        assert!(w.begin(r.clone()).is_empty());
        w.end(r);
        assert_eq!(w.regions_of(u64::MAX - 10, 5), 8..8);
    }

    #[test]
    fn bits_clear_only_after_an_idle_epoch() {
        let mut w = WriteIntent::new(1 << 16, vec![false; 4]);
        w.begin(0..1);
        w.set(&[0]);
        // Flush 1 while the write is in flight: nothing clears.
        let e1 = w.take_epoch();
        assert_eq!(w.clear_idle(e1), 0);
        w.end(0..1);
        // Flush 2: the write finished during epoch 2, still not idle.
        let e2 = w.take_epoch();
        assert_eq!(w.clear_idle(e2), 0);
        // Flush 3: idle since flush 2 began.
        let e3 = w.take_epoch();
        assert_eq!(w.clear_idle(e3), 1);
        assert_eq!(w.dirty_count(), 0);
    }

    #[test]
    fn an_earlier_flush_finishing_late_keeps_a_write_it_did_not_cover() {
        let mut w = WriteIntent::new(1 << 16, vec![false; 2]);
        // The write starts before flush 0 and is in flight all through epoch 2.
        w.begin(0..1);
        w.set(&[0]);
        let e0 = w.take_epoch();
        assert_eq!(w.clear_idle(e0), 0);
        // Flush 1 starts (its leg flushes may miss the write), then the write
        // finishes, then flush 2 starts.
        let e1 = w.take_epoch();
        w.end(0..1);
        let e2 = w.take_epoch();
        // Flush 1 finishes first: the write is not durable yet.
        assert_eq!(w.clear_idle(e1), 0);
        assert_eq!(w.dirty(), [true, false]);
        // Flush 2 covered it, but the region was written during its epoch.
        assert_eq!(w.clear_idle(e2), 0);
        let e3 = w.take_epoch();
        assert_eq!(w.clear_idle(e3), 1);
    }

    #[test]
    fn a_failed_flush_clears_nothing() {
        let mut w = WriteIntent::new(1 << 16, vec![true; 2]);
        w.begin(1..2);
        w.end(1..2);
        // The failed flush takes its epoch and returns without clear_idle.
        let _failed = w.take_epoch();
        w.begin(1..2);
        let e = w.take_epoch();
        assert_eq!(w.clear_idle(e), 1, "only region 0 was idle");
        assert_eq!(w.dirty(), [false, true], "region 1 has a write in flight");
        w.end(1..2);
        let e = w.take_epoch();
        assert_eq!(
            w.clear_idle(e),
            0,
            "region 1 finished a write in this epoch"
        );
        let e = w.take_epoch();
        assert_eq!(w.clear_idle(e), 1);
    }
}

//! The write-intent bitmap in memory: which regions may differ between the legs
//! after a crash, and which can be marked clean again.
//!
//! Invariant: a region set here is set in the record on every leg that is not
//! failed (bits are set in memory only after the record holding them was
//! written and flushed, and cleared in memory before the record without them is
//! written). A write therefore proceeds without touching the record when its
//! regions are set here, and otherwise has the record rewritten first.
//!
//! Clearing is lazy: a FLUSH clears the regions that had no write in flight and
//! none started or finished since the previous FLUSH began ([`take_epoch`]), so
//! a region written steadily stays set instead of costing a record write per
//! FLUSH. Every write to a cleared region finished before the current FLUSH
//! started (a write marks its region at start *and* at completion), so that
//! FLUSH made it durable on every leg.
//!
//! [`take_epoch`]: WriteIntent::take_epoch

use std::ops::Range;

pub struct WriteIntent {
    region_bytes: u64,
    dirty: Vec<bool>,
    in_flight: Vec<u32>,
    /// Regions whose writes started or finished since the last `take_epoch`.
    written: Vec<bool>,
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
            written: vec![false; regions],
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
            self.written[r] = true;
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
            self.written[r] = true;
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

    /// Start a FLUSH: returns the regions written in the closing epoch.
    pub fn take_epoch(&mut self) -> Vec<bool> {
        std::mem::replace(&mut self.written, vec![false; self.dirty.len()])
    }

    /// A FLUSH failed: its epoch's writes are not known durable.
    pub fn restore_epoch(&mut self, previous: &[bool]) {
        for (w, &p) in self.written.iter_mut().zip(previous) {
            *w |= p;
        }
    }

    /// After a FLUSH succeeded: clear the regions idle since the previous FLUSH
    /// (`previous` is what `take_epoch` returned). Returns how many it cleared.
    pub fn clear_idle(&mut self, previous: &[bool]) -> usize {
        let mut cleared = 0;
        for r in 0..self.dirty.len() {
            let idle = self.in_flight[r] == 0
                && !self.written[r]
                && !previous.get(r).copied().unwrap_or(true);
            if self.dirty[r] && idle {
                self.dirty[r] = false;
                cleared += 1;
            }
        }
        cleared
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
        assert_eq!(w.clear_idle(&e1), 0);
        w.end(0..1);
        // Flush 2: the write finished during epoch 2, still not idle.
        let e2 = w.take_epoch();
        assert_eq!(w.clear_idle(&e2), 0);
        // Flush 3: idle since flush 2 began.
        let e3 = w.take_epoch();
        assert_eq!(w.clear_idle(&e3), 1);
        assert_eq!(w.dirty_count(), 0);
    }

    #[test]
    fn a_failed_flush_keeps_its_epoch() {
        let mut w = WriteIntent::new(1 << 16, vec![true; 2]);
        w.begin(1..2);
        w.end(1..2);
        let e = w.take_epoch();
        w.restore_epoch(&e);
        let e = w.take_epoch();
        assert_eq!(w.clear_idle(&e), 1, "only region 0 was idle");
        assert_eq!(
            w.dirty(),
            [false, true],
            "region 1 was written before the failed flush"
        );
        let e = w.take_epoch();
        assert_eq!(w.clear_idle(&e), 1);
    }
}

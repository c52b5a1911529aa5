//! Where a grouped table's pages and data blocks lie, so the device can grow
//! without moving a byte.
//!
//! From the byte after the table header, the layer below holds groups, one
//! after the other; group `k` is `pages(k)` page pairs (reserved in full, 8 KiB
//! each), then the `pages(k) × per` data blocks those pages describe (`per`
//! entries a page). `pages(k) = min(2^k, max)`: the groups double from one
//! page up to `max` pages, then stay at `max`, which is the largest power of
//! two whose group holds at most [`GROUP_DATA`] bytes of data. So a small
//! device reserves little, a large one is split into groups of about 64 MiB
//! (requests that cross a group's edge are split in two), and a grown device
//! only lengthens its last group and appends new ones: every earlier byte
//! stays where it is.

use super::PAGE_BYTES;

/// About how many bytes of data a full group holds.
pub const GROUP_DATA: u64 = 64 << 20;
const PAIR: u64 = 2 * PAGE_BYTES as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Groups {
    /// Entries (so data blocks) per page.
    per: u64,
    /// Bytes per data block.
    block: u64,
    /// log2 of the pages of a full group.
    shift: u32,
}

impl Groups {
    pub fn new(per: u64, block: u64) -> Groups {
        let per_page_data = per.max(1) * block.max(1);
        let fit = (GROUP_DATA / per_page_data).max(1);
        Groups {
            per: per.max(1),
            block: block.max(1),
            shift: fit.ilog2(),
        }
    }

    /// Bytes per data block.
    pub fn block(&self) -> u64 {
        self.block
    }

    fn max_pages(&self) -> u64 {
        1 << self.shift
    }

    /// Pages of group `k`.
    pub fn pages(&self, k: u64) -> u64 {
        if k < u64::from(self.shift) {
            1 << k
        } else {
            self.max_pages()
        }
    }

    /// Pages of the groups before group `k` (saturating, for absurd `k`).
    pub fn pages_before(&self, k: u64) -> u64 {
        if k <= u64::from(self.shift) {
            (1 << k) - 1
        } else {
            (k - u64::from(self.shift))
                .saturating_mul(self.max_pages())
                .saturating_add(self.max_pages() - 1)
        }
    }

    /// The group page `p` belongs to.
    pub fn group_of_page(&self, p: u64) -> u64 {
        let ramp = self.max_pages() - 1;
        if p < ramp {
            (p + 1).ilog2().into()
        } else {
            u64::from(self.shift) + (p - ramp) / self.max_pages()
        }
    }

    pub fn group_of_block(&self, index: u64) -> u64 {
        self.group_of_page(index / self.per)
    }

    /// The first block after group `k`.
    pub fn blocks_through(&self, k: u64) -> u64 {
        self.pages_before(k + 1).saturating_mul(self.per)
    }

    /// Byte of block `index`'s data, from the end of the table header.
    pub fn data_at(&self, index: u64) -> u64 {
        let k = self.group_of_block(index);
        index * self.block + self.pages_before(k + 1) * PAIR
    }

    /// Byte of page `p`'s pair, from the end of the table header.
    pub fn page_at(&self, p: u64) -> u64 {
        let k = self.group_of_page(p);
        p * PAIR + self.pages_before(k) * self.per * self.block
    }

    /// Pages kept for a table covering `blocks` blocks: every page of the
    /// groups they touch (the last group's are reserved in full).
    pub fn pages_for(&self, blocks: u64) -> u64 {
        if blocks == 0 {
            return 0;
        }
        self.pages_before(self.group_of_block(blocks - 1) + 1)
    }

    /// How many blocks fit in `room` bytes after the table header.
    pub fn blocks_that_fit(&self, room: u64) -> u64 {
        let (per, block) = (u128::from(self.per), u128::from(self.block));
        let mut room = u128::from(room);
        let mut blocks = 0u128;
        let mut k = 0u64;
        loop {
            let pages = u128::from(self.pages(k));
            let full = pages * PAIR as u128 + pages * per * block;
            if k >= u64::from(self.shift) {
                // Every later group is full-sized: take all whole ones at once.
                let whole = room / full;
                blocks += whole * pages * per;
                room -= whole * full;
            } else if room >= full {
                blocks += pages * per;
                room -= full;
                k += 1;
                continue;
            }
            let tail = room.saturating_sub(pages * PAIR as u128) / block;
            blocks += tail.min(pages * per);
            return u64::try_from(blocks).unwrap_or(u64::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walk the groups one by one and check every formula against the walk.
    #[test]
    fn formulas_match_a_walk_of_the_groups() {
        for (per, block) in [(255, 4096), (63, 4096), (255, 512), (63, 512), (1, 4096)] {
            let g = Groups::new(per, block);
            assert!(g.max_pages() * per * block <= GROUP_DATA || g.max_pages() == 1);
            assert!(2 * g.max_pages() * per * block > GROUP_DATA);
            let (mut at, mut page, mut index) = (0u64, 0u64, 0u64);
            for k in 0..(g.shift as u64 + 3) {
                assert_eq!(g.pages_before(k), page, "per {per} block {block} k {k}");
                for _ in 0..g.pages(k) {
                    assert_eq!(g.group_of_page(page), k);
                    assert_eq!(g.page_at(page), at);
                    at += PAIR;
                    page += 1;
                }
                for _ in 0..g.pages(k) * per {
                    assert_eq!(g.group_of_block(index), k);
                    assert_eq!(g.data_at(index), at);
                    at += block;
                    index += 1;
                }
                assert_eq!(g.blocks_through(k), index);
                // Exactly at the end of a group, and one byte short of it.
                assert_eq!(g.blocks_that_fit(at), index);
                assert_eq!(g.blocks_that_fit(at - 1), index - 1);
                assert_eq!(g.pages_for(index), page);
            }
        }
    }

    #[test]
    fn fit_is_monotone_and_never_overflows() {
        let g = Groups::new(255, 512);
        let mut last = 0;
        let mut room = 0u64;
        while room < 1 << 30 {
            let n = g.blocks_that_fit(room);
            assert!(n >= last);
            if n > 0 {
                assert!(g.data_at(n - 1) + 512 <= room, "room {room}: {n}");
            }
            last = n;
            room = room * 5 / 4 + 3001;
        }
        for (per, block) in [(255, 512), (63, 4096), (1, 1)] {
            let n = Groups::new(per, block).blocks_that_fit(u64::MAX);
            assert!(n > 0 && n < u64::MAX / block);
        }
    }
}

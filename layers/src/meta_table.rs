//! A table of fixed-size per-block entries stored in 4 KiB pages on the layer
//! below, with a full copy in memory.
//!
//! Used by `checksum` (crc per block), `crypt` (nonce and tag per block) and
//! `compress` (where each block lives). Reads come from memory; an update changes
//! the entries in memory, then writes their whole page below.
//!
//! Every page has two slots on disk, side by side, so a torn or lost page write
//! can never destroy its last flushed version:
//!
//! | bytes of a slot | contents                                        |
//! |-----------------|-------------------------------------------------|
//! | 0..4080         | entries, `4080 / entry size` of them            |
//! | 4080..4088      | sequence number, u64 LE, +1 per page write      |
//! | 4088..4092      | crc32 of bytes 0..4088, u32 LE                  |
//! | 4092..4096      | zero                                            |
//!
//! An all-zero slot is a valid, empty page with sequence 0. Page writes always go
//! to the slot that does *not* hold the last flushed version; [`MetaTable::flush`]
//! holds the locks of the pages written since the previous flush while the layer
//! below flushes, then marks their newest slot as the flushed one. At load, the
//! valid slot with the higher sequence number wins; a slot that fails its crc (or
//! reads as EIO from a checksummed layer below) is the torn one.
//!
//! Writes of one page are serialised by a per-page [`AsyncLock`], and each
//! carries the page as it is when its write starts, so the newest write to reach
//! the disk always holds the newest entries. Memory: the table's entries (e.g.
//! 8 bytes per 4 KiB block for `checksum` = 2 MiB per GiB).

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::async_lock::AsyncLock;
use crate::exec::IoCtx;
use crate::join::try_join_all;
use crate::{Error, Layer, LocalBoxFuture, Result};

pub const PAGE_BYTES: usize = 4096;
const ENTRIES_BYTES: usize = 4080;
const SEQ_AT: usize = 4080;
const CRC_AT: usize = 4088;

struct Page {
    entries: Box<[u8]>,
    seq: u64,
    /// The slot holding the last flushed version, if any was ever written.
    durable_slot: Option<u8>,
    /// The slot written last.
    last_slot: Option<u8>,
}

pub struct MetaTable {
    entry_bytes: usize,
    entries: u64,
    /// Byte offset of page 0, slot 0, on the layer below.
    start: u64,
    pages: Vec<Mutex<Page>>,
    locks: Vec<AsyncLock>,
    /// Pages written since the last flush.
    dirty: Mutex<BTreeSet<usize>>,
}

fn per_page(entry_bytes: usize) -> u64 {
    (ENTRIES_BYTES / entry_bytes) as u64
}

/// Decode one slot: `Some((seq, entries))` when valid.
fn decode_slot(slot: &[u8]) -> Option<(u64, &[u8])> {
    if slot.iter().all(|&b| b == 0) {
        return Some((0, &slot[..ENTRIES_BYTES]));
    }
    let seq = u64::from_le_bytes(slot[SEQ_AT..SEQ_AT + 8].try_into().ok()?);
    let crc = u32::from_le_bytes(slot[CRC_AT..CRC_AT + 4].try_into().ok()?);
    (crc32fast::hash(&slot[..CRC_AT]) == crc).then_some((seq, &slot[..ENTRIES_BYTES]))
}

fn encode_slot(entries: &[u8], seq: u64) -> Vec<u8> {
    let mut slot = vec![0u8; PAGE_BYTES];
    slot[..ENTRIES_BYTES].copy_from_slice(entries);
    slot[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&slot[..CRC_AT]);
    slot[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    slot
}

impl MetaTable {
    /// Bytes the table of `entries` entries of `entry_bytes` takes below.
    pub fn bytes_for(entries: u64, entry_bytes: usize) -> u64 {
        entries.div_ceil(per_page(entry_bytes)) * 2 * PAGE_BYTES as u64
    }

    /// How many `block`-byte blocks, each with an `entry_bytes` entry, fit in
    /// `room` bytes together with their table.
    ///
    /// The space `n` blocks take grows with `n`, so the answer is found by
    /// bisection: logarithmic in the device size, so `validate` of a huge
    /// device costs no more than of a small one.
    pub fn blocks_that_fit(room: u64, block: u64, entry_bytes: usize) -> u64 {
        let per = u128::from(per_page(entry_bytes));
        // In 128 bits: the table of 2^64 bytes of small blocks overflows u64.
        let needs = |n: u64| {
            let n = u128::from(n);
            n.div_ceil(per) * 2 * PAGE_BYTES as u128 + n * u128::from(block)
        };
        // Invariant: `low` fits, `high` does not.
        let (mut low, mut high) = (0u64, room / block.max(1) + 1);
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if needs(mid) <= u128::from(room) {
                low = mid;
            } else {
                high = mid;
            }
        }
        low
    }

    /// Load the table from `lower` at byte `start` (a fresh device reads as zeros).
    pub async fn load(
        ctx: &IoCtx,
        lower: &dyn Layer,
        start: u64,
        entries: u64,
        entry_bytes: usize,
    ) -> Result<MetaTable> {
        assert!(entry_bytes <= ENTRIES_BYTES && entry_bytes > 0);
        let page_count = entries.div_ceil(per_page(entry_bytes)) as usize;
        let mut pages = Vec::with_capacity(page_count);
        let mut pair = vec![0u8; 2 * PAGE_BYTES];
        for page in 0..page_count {
            let at = start + (page * 2 * PAGE_BYTES) as u64;
            // Read each slot alone: a slot torn under a checksummed layer reads as
            // EIO, and must not hide its twin.
            let mut valid: Vec<(u64, u8)> = Vec::with_capacity(2);
            for slot in 0..2u8 {
                let buf = &mut pair[slot as usize * PAGE_BYTES..(slot as usize + 1) * PAGE_BYTES];
                match lower
                    .read(ctx, at + u64::from(slot) * PAGE_BYTES as u64, buf)
                    .await
                {
                    Ok(()) => {
                        if let Some((seq, _)) = decode_slot(buf) {
                            valid.push((seq, slot));
                        }
                    }
                    Err(Error::Corrupt { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let Some(&(seq, slot)) = valid.iter().max() else {
                tracing::error!(page, "metadata page: both copies are damaged");
                return Err(Error::Corrupt { offset: at });
            };
            let bytes = &pair[slot as usize * PAGE_BYTES..(slot as usize + 1) * PAGE_BYTES];
            pages.push(Mutex::new(Page {
                entries: bytes[..ENTRIES_BYTES].to_vec().into_boxed_slice(),
                seq,
                durable_slot: Some(slot),
                last_slot: Some(slot),
            }));
        }
        Ok(MetaTable {
            entry_bytes,
            entries,
            start,
            locks: (0..page_count).map(|_| AsyncLock::default()).collect(),
            pages,
            dirty: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn locate(&self, index: u64) -> (usize, usize) {
        debug_assert!(index < self.entries);
        let per = per_page(self.entry_bytes);
        (
            (index / per) as usize,
            (index % per) as usize * self.entry_bytes,
        )
    }

    /// A copy of entry `index`.
    pub fn get(&self, index: u64, out: &mut [u8]) {
        let (page, at) = self.locate(index);
        let page = self.pages[page].lock().unwrap_or_else(|e| e.into_inner());
        out.copy_from_slice(&page.entries[at..at + self.entry_bytes]);
    }

    /// Change entries `first..first+count` with `f(index, entry)` and write their
    /// pages below. Returns once every touched page is written (not flushed).
    pub async fn update(
        &self,
        ctx: &IoCtx,
        lower: &dyn Layer,
        first: u64,
        count: u64,
        f: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let per = per_page(self.entry_bytes);
        let first_page = self.locate(first).0;
        let last_page = self.locate(first + count - 1).0;
        // Lock pages in ascending order, so two updates never deadlock.
        let mut guards = Vec::with_capacity(last_page - first_page + 1);
        for page in first_page..=last_page {
            guards.push(self.locks[page].lock().await);
        }
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::with_capacity(guards.len());
        for page_index in first_page..=last_page {
            let mut page = self.pages[page_index]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let lo = (page_index as u64 * per).max(first);
            let hi = ((page_index as u64 + 1) * per).min(first + count);
            for index in lo..hi {
                let at = (index % per) as usize * self.entry_bytes;
                f(index, &mut page.entries[at..at + self.entry_bytes]);
            }
            page.seq += 1;
            let slot = match page.durable_slot {
                Some(d) => 1 - d,
                None => 0,
            };
            page.last_slot = Some(slot);
            let offset = self.start + ((page_index * 2 + slot as usize) * PAGE_BYTES) as u64;
            writes.push((offset, encode_slot(&page.entries, page.seq)));
        }
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(first_page..=last_page);
        let futs: Vec<LocalBoxFuture<'_, Result<()>>> = writes
            .iter()
            .map(|(offset, slot)| lower.write(ctx, *offset, slot))
            .collect();
        let res = try_join_all(futs).await;
        drop(guards);
        res
    }

    /// Flush `lower` and, once it succeeded, make the pages written before it the
    /// flushed versions. Layers call this instead of flushing `lower` directly.
    pub async fn flush(&self, ctx: &IoCtx, lower: &dyn Layer) -> Result<()> {
        let dirty: Vec<usize> =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        // Hold the dirty pages so that no write lands in a slot between the flush
        // and its marking as flushed.
        let mut guards = Vec::with_capacity(dirty.len());
        for &page in &dirty {
            guards.push(self.locks[page].lock().await);
        }
        let res = lower.flush(ctx).await;
        match res {
            Ok(()) => {
                for &page in &dirty {
                    let mut page = self.pages[page].lock().unwrap_or_else(|e| e.into_inner());
                    page.durable_slot = page.last_slot;
                }
            }
            Err(_) => self
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(dirty),
        }
        drop(guards);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_damage_is_detected() {
        let entries = vec![7u8; ENTRIES_BYTES];
        let mut slot = encode_slot(&entries, 42);
        assert_eq!(decode_slot(&slot), Some((42, &entries[..])));
        assert_eq!(decode_slot(&[0u8; PAGE_BYTES]).map(|s| s.0), Some(0));
        slot[100] ^= 1;
        assert_eq!(decode_slot(&slot), None);
    }

    /// The fit the bisection finds is the largest: checked against a count
    /// down from the naive bound, over many sizes and both block sizes.
    #[test]
    fn blocks_that_fit_is_the_largest_count_that_fits() {
        let naive = |room: u64, block: u64, entry_bytes: usize| {
            let mut n = room / (block + entry_bytes as u64);
            while n > 0 && MetaTable::bytes_for(n, entry_bytes) + n * block > room {
                n -= 1;
            }
            n
        };
        let mut room = 0u64;
        while room < 64 << 20 {
            for (block, entry_bytes) in [(4096, 8), (512, 8), (4096, 64), (512, 64), (4096, 4080)] {
                assert_eq!(
                    MetaTable::blocks_that_fit(room, block, entry_bytes),
                    naive(room, block, entry_bytes),
                    "room {room}, block {block}, entry {entry_bytes}"
                );
            }
            room = room * 9 / 8 + 4093;
        }
    }

    #[test]
    fn blocks_that_fit_handles_the_largest_rooms_at_once() {
        for (block, entry_bytes) in [(512, 8), (4096, 64), (512, 4080)] {
            let n = MetaTable::blocks_that_fit(u64::MAX, block, entry_bytes);
            let fits = |n: u64| {
                u128::from(MetaTable::bytes_for(n, entry_bytes)) + u128::from(n) * u128::from(block)
                    <= u128::from(u64::MAX)
            };
            assert!(n > 0 && fits(n) && !fits(n + 1), "block {block}: {n}");
        }
    }

    #[test]
    fn table_size_counts_both_slots() {
        assert_eq!(MetaTable::bytes_for(510, 8), 8192);
        assert_eq!(MetaTable::bytes_for(511, 8), 16384);
        assert_eq!(MetaTable::bytes_for(63, 64), 8192);
    }
}

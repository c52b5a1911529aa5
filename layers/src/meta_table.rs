//! A table of fixed-size per-block entries stored in 4 KiB pages on the layer
//! below, with a full copy in memory, and the flush protocol of the layers that
//! keep one.
//!
//! Used by `checksum` (crc per block), `crypt` (nonce and tag per block) and
//! `compress` (where each block lives). Reads come from memory; an update changes
//! the entries in memory, then writes their whole page below. The full format is
//! `docs/formats/superblock.md`.
//!
//! Layout below, from byte `start`:
//!
//! | bytes                 | contents                                         |
//! |-----------------------|--------------------------------------------------|
//! | 0..8192               | header, two 4 KiB slots (`meta_table/header.rs`) |
//! | 8192..                | flat: pages, each two 4 KiB slots side by side;  |
//! |                       | grouped: groups of pages, each followed by the   |
//! |                       | data blocks they describe (`meta_table/groups.rs`) |
//!
//! A grouped table can grow (`MetaTable::grow`): its header records how many
//! entries it covers, and new entries only ever take pages and blocks past
//! the old ones. A placed table (`compress` from format version 3) is flat
//! pages, then runs of pages its layer placed in its data area when it grew
//! (`MetaTable::grow_placed`); its header records the coverage and the runs.
//!
//! | bytes of a page slot  | contents                                        |
//! |-----------------------|-------------------------------------------------|
//! | 0..4080               | entries, `4080 / entry size` of them            |
//! | 4080..4088            | sequence number, u64 LE, +1 per page write      |
//! | 4088..4092            | crc32 of bytes 0..4088, u32 LE                  |
//! | 4092..4096            | zero                                            |
//!
//! The last 8 bytes of every entry are the table's: the flush epoch (u64 LE) in
//! which the entry's `cur` was written; the layer owns the rest (`cur`, `prev`).
//!
//! **Flush protocol.** Every write of the layer holds a [`Writer`] of the current
//! epoch from before its table update until its data write below finished, and
//! stamps the entries it changes with that epoch. [`MetaTable::flush`] runs one
//! at a time: it closes the epoch (new writes enter the next one), waits for the
//! writes of the closed epoch, flushes below (their data and table pages are
//! durable), writes the header with the closed epoch as the *flushed epoch* and
//! flushes below again. Only then is the FLUSH acknowledged. A read may accept a
//! block's `prev` only while its `cur` is newer than the flushed epoch: once a
//! flush covered a write, the version before it never verifies again, so a
//! rolled back or lost block is an error, not old data. A write that replaces a
//! `cur` of its own epoch keeps the older `prev`, so `prev` is always the last
//! version a flush may have made durable. A FLUSH with nothing written since the
//! previous one is a single flush below.
//!
//! Torn page writes: every page has two slots; page writes always go to the slot
//! that does *not* hold the last flushed version, and a flush holds the locks of
//! the pages written since the previous flush while the layer below flushes, then
//! marks their newest slot as the flushed one. At load, the valid slot with the
//! higher sequence number wins; a slot that fails its crc (or reads as EIO from a
//! checksummed layer below) is the torn one. The header works the same way.
//!
//! Writes of one page are serialised by a per-page [`AsyncLock`], and each
//! carries the page as it is when its write starts, so the newest write to reach
//! the disk always holds the newest entries. Memory: the table's entries (e.g.
//! 16 bytes per 4 KiB block for `checksum` = 4 MiB per GiB).
//!
//! **Growing.** One grow at a time zeroes the new pages and data blocks below,
//! flushes, then writes the header with the new coverage under the flush lock
//! (so it never interleaves with a flush's header) and flushes again; only
//! then do the new entries exist in memory. It waits for no writer, so it
//! cannot deadlock with a flush; requests never touch the new entries before
//! the layer's size says they exist. A crash before the header write leaves
//! the old coverage, and the layer grows again at its next open.

mod data;
mod epochs;
mod groups;
mod header;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::async_lock::AsyncLock;
use crate::exec::IoCtx;
use crate::join::try_join_all;
use crate::{Error, IoBuf, IoBufMut, Layer, LocalBoxFuture, Result};

pub use epochs::Writer;
pub use groups::{Groups, GROUP_DATA};
pub use header::{
    decode_header, encode_header, newest as newest_header, Header, Placed, PlacedRun,
    MAX_PLACED_RUNS,
};

use epochs::Epochs;
use header::newest;

pub const PAGE_BYTES: usize = 4096;
/// Reads again of a block that failed while writes were in flight.
const RACE_RETRIES: usize = 8;
/// Bytes of the header in front of the pages.
pub const HEADER_BYTES: u64 = 2 * PAGE_BYTES as u64;
/// Bytes at the end of every entry that hold its epoch.
pub const EPOCH_BYTES: usize = 8;
const ENTRIES_BYTES: usize = 4080;
const SEQ_AT: usize = 4080;
const CRC_AT: usize = 4088;
/// Runs of pages one open may hold: the first, then one per grow.
const MAX_RUNS: usize = 32;

struct Page {
    entries: Box<[u8]>,
    seq: u64,
    /// The slot holding the last flushed version, if any was ever written.
    durable_slot: Option<u8>,
    /// The slot written last.
    last_slot: Option<u8>,
    /// The last write of this page failed: its slot may hold anything, so
    /// the next flush writes the page again before calling it durable.
    unwritten: bool,
}

/// A page in memory and the lock that serialises its writes.
struct Cell {
    page: Mutex<Page>,
    lock: AsyncLock,
}

impl Cell {
    fn blank() -> Cell {
        Cell {
            page: Mutex::new(Page {
                entries: vec![0u8; ENTRIES_BYTES].into_boxed_slice(),
                seq: 0,
                durable_slot: None,
                last_slot: None,
                unwritten: false,
            }),
            lock: AsyncLock::default(),
        }
    }
}

/// Pages `first..first + cells.len()`. Runs are only ever appended and never
/// move, so finding a page takes no lock.
struct Run {
    first: usize,
    /// Byte below of the run's first pair, for a placed run.
    at: Option<u64>,
    cells: Box<[Cell]>,
}

/// Where the pages lie below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// All pages side by side after the header; the layer keeps its data
    /// elsewhere. A placed header's runs are not this table's (a grow cut
    /// before its layer switched to the placed layout): they are ignored at
    /// load. Grows into placed runs as [`Layout::Placed`] does, for a layer
    /// that switches once the runs are durable.
    Flat,
    /// Groups of pages, each followed by its data blocks (`groups.rs`).
    Grouped(Groups),
    /// Flat pages, then runs of pages at byte offsets the header records;
    /// grows by [`MetaTable::grow_placed`].
    Placed,
}

impl Layout {
    /// The grouped layout of a table of `entry_bytes` entries, one per
    /// `block`-byte data block.
    pub fn grouped(entry_bytes: usize, block: u64) -> Layout {
        Layout::Grouped(Groups::new(per_page(entry_bytes), block))
    }
}

/// How many entries a table being loaded covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// This many (a flat table; a grouped table being formatted).
    Exactly(u64),
    /// What the header records, or this many if it records nothing yet (a
    /// grouped table whose header no flush wrote since its format).
    RecordedOr(u64),
}

/// How an update stamps the entries it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// A write of epoch `e`: the entry's epoch becomes `e`. The layer moves `cur`
    /// to `prev` unless `cur` was written in epoch `e` too (then `prev` already
    /// is the last version a flush may have made durable).
    Write(u64),
    /// Leave the epoch as it is (a change that does not replace `cur`).
    Keep,
}

pub struct MetaTable {
    entry_bytes: usize,
    entries: AtomicU64,
    layout: Layout,
    /// Byte offset of the header, slot 0, on the layer below.
    start: u64,
    runs: [OnceLock<Run>; MAX_RUNS],
    /// Pages written since the last flush.
    dirty: Mutex<BTreeSet<usize>>,
    epochs: Epochs,
    /// The flushed epoch of the header on disk.
    flushed: AtomicU64,
    /// Entries on disk carry epochs newer than the header's (a crash's
    /// leftovers): the next flush writes the header even if nothing was written.
    uncovered: AtomicBool,
    /// The header as last written, and the slot it went to.
    header: Mutex<(Header, u8)>,
    /// One flush at a time.
    flush_lock: AsyncLock,
    /// One grow at a time.
    grow_lock: AsyncLock,
}

fn per_page(entry_bytes: usize) -> u64 {
    (ENTRIES_BYTES / entry_bytes) as u64
}

/// Decode one page slot: `Some((seq, entries))` when valid. Never panics.
pub fn decode_slot(slot: &[u8]) -> Option<(u64, &[u8])> {
    if slot.len() != PAGE_BYTES {
        return None;
    }
    if slot.iter().all(|&b| b == 0) {
        return Some((0, &slot[..ENTRIES_BYTES]));
    }
    let seq = u64::from_le_bytes(slot[SEQ_AT..SEQ_AT + 8].try_into().ok()?);
    let crc = u32::from_le_bytes(slot[CRC_AT..CRC_AT + 4].try_into().ok()?);
    (crc32fast::hash(&slot[..CRC_AT]) == crc).then_some((seq, &slot[..ENTRIES_BYTES]))
}

/// Encode a page's slot into `slot` (`PAGE_BYTES` long, any contents).
fn encode_slot(entries: &[u8], seq: u64, slot: &mut [u8]) {
    slot[..ENTRIES_BYTES].copy_from_slice(entries);
    slot[ENTRIES_BYTES..].fill(0);
    slot[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&slot[..CRC_AT]);
    slot[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Read two 4 KiB slots at `at` alone each (a slot torn under a checksummed
/// layer reads as EIO, and must not hide its twin); `None` for a bad slot.
async fn read_pair(ctx: &IoCtx, lower: &dyn Layer, at: u64, pair: &mut [u8]) -> Result<[bool; 2]> {
    let mut ok = [false; 2];
    for slot in 0..2usize {
        let buf = &mut pair[slot * PAGE_BYTES..(slot + 1) * PAGE_BYTES];
        match lower
            .read_bytes(ctx, at + (slot * PAGE_BYTES) as u64, buf)
            .await
        {
            Ok(()) => ok[slot] = true,
            Err(Error::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ok)
}

impl MetaTable {
    /// Bytes the pages of a flat table of `entries` entries of `entry_bytes`
    /// take below (the header, [`HEADER_BYTES`], comes in front of them).
    pub fn bytes_for(entries: u64, entry_bytes: usize) -> u64 {
        entries.div_ceil(per_page(entry_bytes)) * 2 * PAGE_BYTES as u64
    }

    /// Byte below of page `page`'s pair (its slot 0) in a grouped table at
    /// `start` of `entry_bytes` entries over `block`-byte blocks.
    pub fn grouped_page_at(start: u64, entry_bytes: usize, block: u64, page: u64) -> u64 {
        start + HEADER_BYTES + Groups::new(per_page(entry_bytes), block).page_at(page)
    }

    /// Byte below of data block `index` of the same grouped table.
    pub fn grouped_data_at(start: u64, entry_bytes: usize, block: u64, index: u64) -> u64 {
        start + HEADER_BYTES + Groups::new(per_page(entry_bytes), block).data_at(index)
    }

    /// How many `block`-byte blocks a grouped table at `start` of
    /// `entry_bytes` entries covers on a device of `lower_size` bytes.
    pub fn grouped_fit(start: u64, entry_bytes: usize, block: u64, lower_size: u64) -> u64 {
        Groups::new(per_page(entry_bytes), block)
            .blocks_that_fit(lower_size.saturating_sub(start + HEADER_BYTES))
    }

    /// The coverage the header at `start` records (`None`: none yet, or a
    /// flat table's header), so a layer can check the device below still
    /// holds it before it loads the pages.
    pub async fn recorded(ctx: &IoCtx, lower: &dyn Layer, start: u64) -> Result<Option<u64>> {
        let mut pair = vec![0u8; 2 * PAGE_BYTES];
        let ok = read_pair(ctx, lower, start, &mut pair).await?;
        let decode = |s: usize| {
            ok[s]
                .then(|| decode_header(&pair[s * PAGE_BYTES..(s + 1) * PAGE_BYTES]))
                .flatten()
        };
        match newest([decode(0), decode(1)]) {
            Some((header, _)) => Ok(header.covered),
            None => Err(Error::Corrupt { offset: start }),
        }
    }

    /// The newest valid header at `start`, so a layer can check what it
    /// records before the pages are loaded.
    pub async fn header_at(ctx: &IoCtx, lower: &dyn Layer, start: u64) -> Result<Header> {
        let mut pair = vec![0u8; 2 * PAGE_BYTES];
        let ok = read_pair(ctx, lower, start, &mut pair).await?;
        let decode = |s: usize| {
            ok[s]
                .then(|| decode_header(&pair[s * PAGE_BYTES..(s + 1) * PAGE_BYTES]))
                .flatten()
        };
        newest([decode(0), decode(1)])
            .map(|(h, _)| h)
            .ok_or(Error::Corrupt { offset: start })
    }

    /// Check a placed header's runs against a table whose flat pages hold
    /// `flat_entries` entries of `entry_bytes`: each run follows the pages
    /// before it, and the runs end with the last page of the coverage.
    /// Where the runs lie below is the layer's to check.
    pub fn check_placed(
        header: &Header,
        flat_entries: u64,
        entry_bytes: usize,
    ) -> std::result::Result<(), String> {
        let Some(placed) = &header.placed else {
            return Ok(());
        };
        let per = per_page(entry_bytes);
        if placed.entries < flat_entries {
            return Err(format!(
                "the map header covers {} entries, fewer than the {flat_entries} it was \
                 formatted with",
                placed.entries
            ));
        }
        let mut next = flat_entries.div_ceil(per);
        for (i, run) in placed.runs.iter().enumerate() {
            if run.first != next || run.pages == 0 || run.at % PAGE_BYTES as u64 != 0 {
                return Err(format!(
                    "map page run {i} (first page {}, {} pages at byte {}) does not follow \
                     page {next}",
                    run.first, run.pages, run.at
                ));
            }
            next = next.saturating_add(run.pages);
        }
        let want = placed.entries.div_ceil(per);
        if next != want {
            return Err(format!(
                "the map header covers {} entries ({want} pages) but its runs end at page \
                 {next}",
                placed.entries
            ));
        }
        Ok(())
    }

    /// Load the table from `lower` at byte `start` (a fresh device reads as
    /// zeros). `entry_bytes` includes the [`EPOCH_BYTES`] of each entry.
    pub async fn load(
        ctx: &IoCtx,
        lower: &dyn Layer,
        start: u64,
        layout: Layout,
        entries: Entries,
        entry_bytes: usize,
    ) -> Result<MetaTable> {
        assert!(entry_bytes <= ENTRIES_BYTES && entry_bytes > EPOCH_BYTES);
        let mut pair = vec![0u8; 2 * PAGE_BYTES];
        let ok = read_pair(ctx, lower, start, &mut pair).await?;
        let decode = |s: usize| {
            ok[s]
                .then(|| decode_header(&pair[s * PAGE_BYTES..(s + 1) * PAGE_BYTES]))
                .flatten()
        };
        let Some(mut header) = newest([decode(0), decode(1)]) else {
            tracing::error!("metadata table header: both copies are damaged");
            return Err(Error::Corrupt { offset: start });
        };
        let flat_entries = match entries {
            Entries::Exactly(n) | Entries::RecordedOr(n) => n,
        };
        let entries = match (layout, entries) {
            (Layout::Grouped(_), Entries::RecordedOr(n)) => header.0.covered.unwrap_or(n),
            (Layout::Placed, Entries::RecordedOr(n)) => {
                header.0.placed.as_ref().map_or(n, |p| p.entries)
            }
            (_, Entries::Exactly(n) | Entries::RecordedOr(n)) => n,
        };
        if layout == Layout::Placed {
            if let Err(why) = MetaTable::check_placed(&header.0, flat_entries, entry_bytes) {
                tracing::error!(why, "metadata table header");
                return Err(Error::Corrupt { offset: start });
            }
        }
        if let Layout::Grouped(_) = layout {
            // Every header a grouped table writes records its coverage.
            header.0.covered = Some(entries);
        }
        if layout == Layout::Flat {
            // Runs a grow recorded before its layer switched layout are
            // free space again; the next header drops them.
            header.0.placed = None;
        }
        let flushed = header.0.flushed;
        let per = per_page(entry_bytes);
        let used = entries.div_ceil(per);
        let kept = match layout {
            Layout::Flat => used,
            Layout::Placed => flat_entries.div_ceil(per).min(used),
            Layout::Grouped(g) => g.pages_for(entries),
        };
        let table = MetaTable {
            entry_bytes,
            entries: AtomicU64::new(entries),
            layout,
            start,
            runs: std::array::from_fn(|_| OnceLock::new()),
            dirty: Mutex::new(BTreeSet::new()),
            epochs: Epochs::new(1),
            flushed: AtomicU64::new(flushed),
            uncovered: AtomicBool::new(false),
            header: Mutex::new(header),
            flush_lock: AsyncLock::default(),
            grow_lock: AsyncLock::default(),
        };
        let cells: Box<[Cell]> = (0..kept).map(|_| Cell::blank()).collect();
        let _ = table.runs[0].set(Run {
            first: 0,
            at: None,
            cells,
        });
        let placed = table
            .header
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .placed
            .clone();
        for (slot, run) in placed.iter().flat_map(|p| &p.runs).enumerate() {
            let cells: Box<[Cell]> = (0..run.pages).map(|_| Cell::blank()).collect();
            let _ = table.runs[slot + 1].set(Run {
                first: run.first as usize,
                at: Some(run.at),
                cells,
            });
        }
        let mut newest_epoch = flushed;
        // Only pages holding covered entries are read: the rest of the last
        // group is reserved, and zeroed when the table grows into it.
        for page in 0..used as usize {
            let at = table.page_offset(page, 0);
            let ok = read_pair(ctx, lower, at, &mut pair).await?;
            let mut valid: Vec<(u64, u8)> = Vec::with_capacity(2);
            for slot in 0..2u8 {
                let bytes = &pair[slot as usize * PAGE_BYTES..(slot as usize + 1) * PAGE_BYTES];
                if let (true, Some((seq, _))) = (ok[slot as usize], decode_slot(bytes)) {
                    valid.push((seq, slot));
                }
            }
            let Some(&(seq, slot)) = valid.iter().max() else {
                tracing::error!(page, "metadata page: both copies are damaged");
                return Err(Error::Corrupt { offset: at });
            };
            let bytes = &pair[slot as usize * PAGE_BYTES..(slot as usize + 1) * PAGE_BYTES];
            for entry in bytes[..ENTRIES_BYTES].chunks_exact(entry_bytes) {
                newest_epoch = newest_epoch.max(entry_epoch(entry));
            }
            *table.page(page) = Page {
                entries: bytes[..ENTRIES_BYTES].to_vec().into_boxed_slice(),
                seq,
                durable_slot: Some(slot),
                last_slot: Some(slot),
                unwritten: false,
            };
        }
        // Epochs on disk newer than the header's are a crash's leftovers:
        // new writes must never share them.
        Ok(MetaTable {
            epochs: Epochs::new(newest_epoch.saturating_add(1)),
            uncovered: AtomicBool::new(newest_epoch > flushed),
            ..table
        })
    }

    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Acquire)
    }

    /// The page cell of page `page`, which exists for every covered entry.
    /// Page `index`'s state, locked (a poisoned lock taken as it is, as for
    /// every lock of the table).
    fn page(&self, index: usize) -> MutexGuard<'_, Page> {
        self.cell(index)
            .page
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn cell(&self, page: usize) -> &Cell {
        for run in &self.runs {
            let run = run.get().expect("a page for every covered entry");
            if let Some(cell) = run.cells.get(page.wrapping_sub(run.first)) {
                return cell;
            }
        }
        unreachable!("page {page} past every run")
    }

    fn locate(&self, index: u64) -> (usize, usize) {
        debug_assert!(index < self.entries());
        let per = per_page(self.entry_bytes);
        (
            (index / per) as usize,
            (index % per) as usize * self.entry_bytes,
        )
    }

    /// A copy of entry `index` without its epoch (`out` is `entry_bytes -
    /// EPOCH_BYTES` long), and the epoch.
    pub fn get(&self, index: u64, out: &mut [u8]) -> u64 {
        let (page, at) = self.locate(index);
        let page = self.page(page);
        let entry = &page.entries[at..at + self.entry_bytes];
        out.copy_from_slice(&entry[..self.entry_bytes - EPOCH_BYTES]);
        entry_epoch(entry)
    }

    /// Whether a block whose `cur` was written in `epoch` may still read as its
    /// `prev`: only while no flush covered that write.
    pub fn prev_allowed(&self, epoch: u64) -> bool {
        epoch > self.flushed.load(Ordering::SeqCst)
    }

    /// The flushed epoch: writes of this epoch and older are durable.
    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::SeqCst)
    }

    /// Wait until no flush is still running for epoch `epoch`, so that
    /// [`MetaTable::flushed`] tells for good whether writes of `epoch` are
    /// durable. A write replacing a `cur` of an earlier epoch waits here
    /// before it picks the `prev` it keeps: while that flush runs, either the
    /// old `cur` or the old `prev` may turn out to be the durable version.
    pub async fn settled(&self, epoch: u64) {
        self.epochs.settled(epoch).await
    }

    /// Enter the current epoch for a write; hold it until the data is written.
    pub fn begin_write(&self) -> Writer<'_> {
        self.epochs.enter()
    }

    fn groups(&self) -> Groups {
        match self.layout {
            Layout::Grouped(g) => g,
            Layout::Flat | Layout::Placed => unreachable!("only a grouped table holds data blocks"),
        }
    }

    /// Where the data at byte `offset` of the layer above lies below, and how
    /// many bytes from there (at most `len`) are contiguous: up to the end of
    /// the block's group. Grouped tables only; `block` is the layout's.
    pub fn data_run(&self, block: u64, offset: u64, len: u64) -> (u64, u64) {
        let g = self.groups();
        let index = offset / block;
        let end = g
            .blocks_through(g.group_of_block(index))
            .saturating_mul(block);
        (
            self.start + HEADER_BYTES + g.data_at(index) + offset % block,
            len.min(end - offset),
        )
    }

    /// Read the data blocks of `offset..offset + buf.len()` (grouped tables:
    /// each run of them from its group), and check each
    /// with `check`. A block
    /// that fails while a write was in flight may have been read half way
    /// through that write (entry or data), so it is read again, up to
    /// [`RACE_RETRIES`] times. Returns the first block that still fails.
    pub async fn read_checked(
        &self,
        ctx: &IoCtx,
        lower: &dyn Layer,
        block: u64,
        offset: u64,
        buf: &mut IoBufMut,
        check: &dyn Fn(u64, &mut [u8]) -> bool,
    ) -> Result<Option<u64>> {
        let mut finished = self.epochs.finished();
        let len = buf.len() as u64;
        let (at, run) = self.data_run(block, offset, len);
        if run == len {
            lower.read(ctx, at, buf).await?;
        } else {
            // Across a group's edge (rare: groups hold tens of MiB).
            let mut done = 0;
            while done < len {
                let (at, run) = self.data_run(block, offset + done, len - done);
                let range = done as usize..(done + run) as usize;
                let mut parts = buf.split_around(range);
                let res = lower.read(ctx, at, &mut parts[1]).await;
                buf.join(parts);
                res?;
                done += run;
            }
        }
        let first = offset / block;
        let bs = block as usize;
        for i in 0..buf.len() / bs {
            let index = first + i as u64;
            let range = i * bs..(i + 1) * bs;
            let mut ok = check(index, &mut buf[range.clone()]);
            let mut retries = 0;
            while !ok && retries < RACE_RETRIES && self.epochs.raced_since(finished) {
                retries += 1;
                finished = self.epochs.finished();
                let mut parts = buf.split_around(range.clone());
                let at = self.data_run(block, index * block, block).0;
                let reread = lower.read(ctx, at, &mut parts[1]).await;
                buf.join(parts);
                reread?;
                ok = check(index, &mut buf[range.clone()]);
            }
            if !ok {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// Indices of the entries written in an epoch no flush covered (a crash's
    /// leftovers, at open).
    pub fn unflushed(&self) -> Vec<u64> {
        let flushed = self.flushed();
        let per = per_page(self.entry_bytes);
        let entries = self.entries();
        let mut out = Vec::new();
        for p in 0..entries.div_ceil(per) as usize {
            let page = self.page(p);
            for (i, entry) in page.entries.chunks_exact(self.entry_bytes).enumerate() {
                let index = p as u64 * per + i as u64;
                if index < entries && entry_epoch(entry) > flushed {
                    out.push(index);
                }
            }
        }
        out
    }

    /// Change entries `first..first+count` with `f(index, entry, epoch)` (entry
    /// without its epoch; `epoch`: the one its `cur` was written in, see
    /// [`Stamp`]) and write their pages below. Returns once every touched page is written (not
    /// flushed).
    pub async fn update(
        &self,
        ctx: &IoCtx,
        lower: &dyn Layer,
        first: u64,
        count: u64,
        stamp: Stamp,
        f: &mut dyn FnMut(u64, &mut [u8], u64),
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
            guards.push(self.cell(page).lock.lock().await);
        }
        let layer_bytes = self.entry_bytes - EPOCH_BYTES;
        // Each slot is encoded straight into a request buffer of the queue's
        // pool: no temporary page and no second copy per write.
        let mut writes: Vec<(u64, IoBuf)> = Vec::with_capacity(guards.len());
        for page_index in first_page..=last_page {
            let mut page = self.page(page_index);
            let lo = (page_index as u64 * per).max(first);
            let hi = ((page_index as u64 + 1) * per).min(first + count);
            for index in lo..hi {
                let at = (index % per) as usize * self.entry_bytes;
                let entry = &mut page.entries[at..at + self.entry_bytes];
                let old = entry_epoch(entry);
                let (body, epoch) = entry.split_at_mut(layer_bytes);
                f(index, body, old);
                if let Stamp::Write(e) = stamp {
                    epoch.copy_from_slice(&old.max(e).to_le_bytes());
                }
            }
            page.seq += 1;
            let slot = match page.durable_slot {
                Some(d) => 1 - d,
                None => 0,
            };
            page.last_slot = Some(slot);
            let offset = self.page_offset(page_index, slot);
            let mut slot = ctx.buf(PAGE_BYTES);
            encode_slot(&page.entries, page.seq, &mut slot);
            writes.push((offset, slot.freeze()));
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
        // Which write failed is not known: each page is written again.
        for page_index in first_page..=last_page {
            let mut page = self.page(page_index);
            page.unwritten = res.is_err();
        }
        drop(guards);
        res
    }

    fn page_offset(&self, page: usize, slot: u8) -> u64 {
        if !matches!(self.layout, Layout::Grouped(_)) {
            for run in self.runs.iter().filter_map(OnceLock::get) {
                if let (Some(at), Some(_)) = (run.at, run.cells.get(page.wrapping_sub(run.first))) {
                    let pair = ((page - run.first) * 2 * PAGE_BYTES) as u64;
                    return at + pair + u64::from(slot) * PAGE_BYTES as u64;
                }
            }
        }
        let pair = match self.layout {
            Layout::Flat | Layout::Placed => (page * 2 * PAGE_BYTES) as u64,
            Layout::Grouped(g) => g.page_at(page as u64),
        };
        self.start + HEADER_BYTES + pair + u64::from(slot) * PAGE_BYTES as u64
    }

    /// Write the next header (the last one, changed by `change`) to the
    /// slot the last one is not in, and flush below. The caller holds
    /// `flush_lock`.
    async fn put_header(
        &self,
        ctx: &IoCtx,
        lower: &dyn Layer,
        change: impl FnOnce(&mut Header),
    ) -> Result<()> {
        let (header, slot) = {
            let (last, slot) = self
                .header
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut header = Header {
                seq: last.seq + 1,
                ..last
            };
            change(&mut header);
            (header, 1 - slot)
        };
        let at = self.start + u64::from(slot) * PAGE_BYTES as u64;
        lower.write_bytes(ctx, at, &encode_header(&header)).await?;
        lower.flush(ctx).await?;
        *self.header.lock().unwrap_or_else(|e| e.into_inner()) = (header, slot);
        Ok(())
    }

    /// Record a grouped table's coverage in its header now (at format, so
    /// that nothing left in the header area by an earlier use decides it).
    pub async fn record_coverage(&self, ctx: &IoCtx, lower: &dyn Layer) -> Result<()> {
        let _serial = self.flush_lock.lock().await;
        self.put_header(ctx, lower, |_| {}).await
    }

    /// The value a flat table's header records for its layer (`None`: none
    /// recorded yet). `compress` keeps the size of the device below there.
    pub fn recorded_value(&self) -> Option<u64> {
        match self.layout {
            Layout::Flat | Layout::Placed => {
                self.header
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    .covered
            }
            Layout::Grouped(_) => None,
        }
    }

    /// Record `value` in a flat table's header (the grouped form of the slot,
    /// its `covered` field; every later header keeps it): written to the slot
    /// the last header is not in and flushed, so a torn write leaves the
    /// previous value.
    pub async fn record_value(&self, ctx: &IoCtx, lower: &dyn Layer, value: u64) -> Result<()> {
        assert!(
            !matches!(self.layout, Layout::Grouped(_)),
            "a grouped header records its coverage"
        );
        let _serial = self.flush_lock.lock().await;
        self.put_header(ctx, lower, |h| h.covered = Some(value))
            .await
    }

    /// The placed runs and the layer's second value a placed table's header
    /// records (`None`: not grown yet).
    pub fn placed(&self) -> Option<Placed> {
        self.header
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .placed
            .clone()
    }

    /// Grow a placed table to `entries` entries whose new pages lie in
    /// `runs` (page pairs at byte offsets the layer allocated; together they
    /// follow the pages in use), recording `value` for the layer: the runs
    /// are zeroed (both slots: blank pages) and flushed below, then the
    /// header records the runs and the coverage (under the flush lock, then
    /// flushed); only then do the new entries exist. A crash before the
    /// header is durable leaves the old coverage and runs.
    pub async fn grow_placed(
        &self,
        ctx: &IoCtx,
        lower: &dyn Layer,
        entries: u64,
        runs: &[PlacedRun],
        value: u64,
    ) -> std::result::Result<(), String> {
        if let Layout::Grouped(_) = self.layout {
            return Err("this table cannot take placed pages".into());
        }
        let _serial = self.grow_lock.lock().await;
        let old = self.entries();
        if entries < old {
            return Err(format!(
                "shrinking is not supported: {old} entries are in use, {entries} asked for"
            ));
        }
        let mut placed = self.placed().unwrap_or_default();
        if placed.runs.len() + runs.len() > MAX_PLACED_RUNS {
            return Err(format!(
                "the map already has {} of its {MAX_PLACED_RUNS} page runs",
                placed.runs.len()
            ));
        }
        let per = per_page(self.entry_bytes);
        let mut next = old.div_ceil(per);
        for run in runs {
            if run.first != next || run.pages == 0 {
                return Err(format!(
                    "page run from {} does not follow page {next}",
                    run.first
                ));
            }
            next += run.pages;
        }
        if next != entries.div_ceil(per) {
            return Err(format!(
                "page runs end at {next}, not with {entries} entries"
            ));
        }
        let io = |e: Error| format!("cannot grow the map: {e}");
        for run in runs {
            lower
                .write_zeroes(ctx, run.at, run.pages * 2 * PAGE_BYTES as u64)
                .await
                .map_err(io)?;
        }
        // The blank pages are durable before the header points at them.
        lower.flush(ctx).await.map_err(io)?;
        placed.entries = entries;
        placed.value = value;
        placed.runs.extend_from_slice(runs);
        {
            let _flushes = self.flush_lock.lock().await;
            self.put_header(ctx, lower, |h| h.placed = Some(placed))
                .await
                .map_err(io)?;
        }
        // The runs exist in memory only once they are durable, so a failed
        // grow leaves nothing a retry would collide with.
        let mut free = self.runs.iter().filter(|r| r.get().is_none());
        for run in runs {
            let slot = free.next().expect("MAX_RUNS exceeds MAX_PLACED_RUNS");
            let cells: Box<[Cell]> = (0..run.pages).map(|_| Cell::blank()).collect();
            let _ = slot.set(Run {
                first: run.first as usize,
                at: Some(run.at),
                cells,
            });
        }
        self.entries.store(entries, Ordering::Release);
        Ok(())
    }

    /// Grow a grouped table to `entries` entries (see the module doc): new
    /// pages and data blocks are zeroed and flushed below, then the header
    /// records the coverage. Fewer entries than now is refused, untouched.
    pub async fn grow(
        &self,
        ctx: &IoCtx,
        lower: &dyn Layer,
        entries: u64,
    ) -> std::result::Result<(), String> {
        let Layout::Grouped(g) = self.layout else {
            return Err("this table cannot grow".into());
        };
        let _serial = self.grow_lock.lock().await;
        let old = self.entries();
        if entries < old {
            return Err(format!(
                "shrinking is not supported: {old} blocks are in use, {entries} asked for"
            ));
        }
        if entries == old {
            return Ok(());
        }
        let io = |e: Error| format!("cannot grow the table: {e}");
        let kept = g.pages_for(old) as usize;
        let needed = g.pages_for(entries) as usize;
        let slot = self.runs.iter().position(|r| r.get().is_none());
        if needed > kept && slot.is_none() {
            return Err(format!(
                "grown {} times since it was opened; take the device down and up \
                 to grow it again",
                MAX_RUNS - 1
            ));
        }
        // The pages no entry used so far: those past the last group (new) and
        // those of the last group reserved beyond the old coverage. Below, they
        // may hold anything.
        let per = per_page(self.entry_bytes);
        let mut page = old.div_ceil(per);
        let pages_end = entries.div_ceil(per);
        while page < pages_end {
            let run = (g.pages_before(g.group_of_page(page) + 1)).min(pages_end) - page;
            let at = self.page_offset(page as usize, 0);
            lower
                .write_zeroes(ctx, at, run * 2 * PAGE_BYTES as u64)
                .await
                .map_err(io)?;
            page += run;
        }
        // The new data blocks read as zeros, as never-written blocks do.
        let block = g.block();
        let mut done = old * block;
        while done < entries * block {
            let (at, run) = self.data_run(block, done, entries * block - done);
            lower.write_zeroes(ctx, at, run).await.map_err(io)?;
            done += run;
        }
        // The zeros are durable before the header says they are entries.
        lower.flush(ctx).await.map_err(io)?;
        {
            let _flushes = self.flush_lock.lock().await;
            self.put_header(ctx, lower, |h| h.covered = Some(entries))
                .await
                .map_err(io)?;
        }
        // The new pages exist in memory only once the header is durable, so
        // a failed grow takes no slot from a retry.
        if needed > kept {
            let cells: Box<[Cell]> = (kept..needed).map(|_| Cell::blank()).collect();
            let slot = slot.expect("checked above");
            let _ = self.runs[slot].set(Run {
                first: kept,
                at: None,
                cells,
            });
        }
        self.entries.store(entries, Ordering::Release);
        Ok(())
    }

    /// FLUSH for the layer (see the module doc): layers call this instead of
    /// flushing `lower` directly.
    pub async fn flush(&self, ctx: &IoCtx, lower: &dyn Layer) -> Result<()> {
        let _serial = self.flush_lock.lock().await;
        let (epoch, wrote) = self.epochs.close();
        // However this flush ends, writers waiting in `settled` learn it.
        let _ended = FlushEnded(&self.epochs, epoch);
        self.epochs.drained(epoch).await;
        let dirty: Vec<usize> =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if !wrote && dirty.is_empty() && !self.uncovered.load(Ordering::SeqCst) {
            // Nothing written since the last flush: the header already covers it.
            return lower.flush(ctx).await;
        }
        // Hold the dirty pages so that no write lands in a slot between the flush
        // and its marking as flushed.
        let mut guards = Vec::with_capacity(dirty.len());
        for &page in &dirty {
            guards.push(self.cell(page).lock.lock().await);
        }
        if let Err(e) = self.rewrite_unwritten(ctx, lower, &dirty).await {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(dirty);
            return Err(e);
        }
        if let Err(e) = lower.flush(ctx).await {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(dirty);
            return Err(e);
        }
        for &page in &dirty {
            let mut page = self.page(page);
            page.durable_slot = page.last_slot;
        }
        drop(guards);
        // Data and pages of the closed epoch are durable: record it.
        self.put_header(ctx, lower, |h| h.flushed = epoch).await?;
        self.flushed.store(epoch, Ordering::SeqCst);
        self.uncovered.store(false, Ordering::SeqCst);
        Ok(())
    }
}

impl MetaTable {
    /// Write again, to the slot written last, each page of `pages` whose last
    /// write failed (the caller holds their locks).
    async fn rewrite_unwritten(
        &self,
        ctx: &IoCtx,
        lower: &dyn Layer,
        pages: &[usize],
    ) -> Result<()> {
        let mut writes: Vec<(usize, u64, IoBuf)> = Vec::new();
        for &index in pages {
            let mut page = self.page(index);
            let Some(slot) = page.last_slot.filter(|_| page.unwritten) else {
                continue;
            };
            page.seq += 1;
            let mut buf = ctx.buf(PAGE_BYTES);
            encode_slot(&page.entries, page.seq, &mut buf);
            writes.push((index, self.page_offset(index, slot), buf.freeze()));
        }
        for (index, offset, buf) in writes {
            lower.write(ctx, offset, &buf).await?;
            self.page(index).unwritten = false;
        }
        Ok(())
    }
}

struct FlushEnded<'a>(&'a Epochs, u64);

impl Drop for FlushEnded<'_> {
    fn drop(&mut self) {
        self.0.flush_ended(self.1);
    }
}

fn entry_epoch(entry: &[u8]) -> u64 {
    let at = entry.len() - EPOCH_BYTES;
    u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|i| entry[at + i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_damage_is_detected() {
        let entries = vec![7u8; ENTRIES_BYTES];
        let mut slot = vec![0xa5u8; PAGE_BYTES];
        encode_slot(&entries, 42, &mut slot);
        assert_eq!(decode_slot(&slot), Some((42, &entries[..])));
        assert_eq!(decode_slot(&[0u8; PAGE_BYTES]).map(|s| s.0), Some(0));
        slot[100] ^= 1;
        assert_eq!(decode_slot(&slot), None);
        assert_eq!(decode_slot(&slot[..10]), None);
    }

    #[test]
    fn table_size_counts_both_slots() {
        assert_eq!(MetaTable::bytes_for(255, 16), 8192);
        assert_eq!(MetaTable::bytes_for(256, 16), 16384);
        assert_eq!(MetaTable::bytes_for(63, 64), 8192);
    }
}

//! A table of fixed-size per-block entries stored in 4 KiB pages on the layer
//! below, with a full copy in memory.
//!
//! Used by `checksum` (crc per block), `crypt` (nonce and tag per block) and
//! `compress` (where each block lives). Reads come from memory. An update changes
//! the entries in memory and then writes their whole page below; writes of one
//! page are serialised by a per-page [`AsyncLock`] and each carries the page as it
//! is when its write starts, so the last write to reach the disk always holds
//! the newest entries. Memory: the table's size on disk (e.g. 8 bytes per 4 KiB
//! block for `checksum` = 2 MiB per GiB).

use std::sync::Mutex;

use crate::async_lock::AsyncLock;
use crate::exec::IoCtx;
use crate::join::try_join_all;
use crate::{Layer, LocalBoxFuture, Result};

pub const PAGE_BYTES: usize = 4096;

pub struct MetaTable {
    entry_bytes: usize,
    entries: u64,
    /// Byte offset of page 0 on the layer below.
    start: u64,
    pages: Vec<Mutex<Box<[u8]>>>,
    locks: Vec<AsyncLock>,
}

impl MetaTable {
    /// Bytes the table of `entries` entries of `entry_bytes` takes below.
    pub fn bytes_for(entries: u64, entry_bytes: usize) -> u64 {
        let per_page = (PAGE_BYTES / entry_bytes) as u64;
        entries.div_ceil(per_page) * PAGE_BYTES as u64
    }

    /// Load the table from `lower` at byte `start` (a fresh device reads as zeros).
    pub async fn load(
        ctx: &IoCtx,
        lower: &dyn Layer,
        start: u64,
        entries: u64,
        entry_bytes: usize,
    ) -> Result<MetaTable> {
        assert!(
            PAGE_BYTES % entry_bytes == 0,
            "entries never straddle pages"
        );
        let bytes = Self::bytes_for(entries, entry_bytes);
        let page_count = (bytes / PAGE_BYTES as u64) as usize;
        let mut pages = Vec::with_capacity(page_count);
        const BATCH: usize = 256;
        let mut buf = vec![0u8; PAGE_BYTES * BATCH];
        let mut page = 0;
        while page < page_count {
            let n = (page_count - page).min(BATCH);
            let chunk = &mut buf[..n * PAGE_BYTES];
            lower
                .read(ctx, start + (page * PAGE_BYTES) as u64, chunk)
                .await?;
            pages.extend(
                chunk
                    .chunks(PAGE_BYTES)
                    .map(|p| Mutex::new(p.to_vec().into_boxed_slice())),
            );
            page += n;
        }
        Ok(MetaTable {
            entry_bytes,
            entries,
            start,
            locks: (0..page_count).map(|_| AsyncLock::default()).collect(),
            pages,
        })
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn per_page(&self) -> u64 {
        (PAGE_BYTES / self.entry_bytes) as u64
    }

    fn locate(&self, index: u64) -> (usize, usize) {
        debug_assert!(index < self.entries);
        let page = (index / self.per_page()) as usize;
        let at = (index % self.per_page()) as usize * self.entry_bytes;
        (page, at)
    }

    /// A copy of entry `index`.
    pub fn get(&self, index: u64, out: &mut [u8]) {
        let (page, at) = self.locate(index);
        let page = self.pages[page].lock().unwrap_or_else(|e| e.into_inner());
        out.copy_from_slice(&page[at..at + self.entry_bytes]);
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
        let first_page = self.locate(first).0;
        let last_page = self.locate(first + count - 1).0;
        // Lock pages in ascending order, so two updates never deadlock.
        let mut guards = Vec::with_capacity(last_page - first_page + 1);
        for page in first_page..=last_page {
            guards.push(self.locks[page].lock().await);
        }
        let mut snapshots = Vec::with_capacity(guards.len());
        for page in first_page..=last_page {
            let mut data = self.pages[page].lock().unwrap_or_else(|e| e.into_inner());
            let lo = (page as u64 * self.per_page()).max(first);
            let hi = ((page as u64 + 1) * self.per_page()).min(first + count);
            for index in lo..hi {
                let at = (index % self.per_page()) as usize * self.entry_bytes;
                f(index, &mut data[at..at + self.entry_bytes]);
            }
            snapshots.push(data.to_vec());
        }
        let writes: Vec<LocalBoxFuture<'_, Result<()>>> = snapshots
            .iter()
            .enumerate()
            .map(|(i, snap)| {
                let offset = self.start + ((first_page + i) * PAGE_BYTES) as u64;
                lower.write(ctx, offset, snap)
            })
            .collect();
        let res = try_join_all(writes).await;
        drop(guards);
        res
    }
}

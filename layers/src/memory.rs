//! `memory` leaf: RAM-backed, for tests and demos; contents are lost at exit.
//!
//! Storage is split into 1 MiB extents, each behind its own lock and allocated on
//! first write, so queues rarely contend and an untouched device costs nothing.
//! Discard and write_zeroes free whole extents. FLUSH does nothing (nothing is
//! durable). Growing appends unallocated extents (reads of them are zeros).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use crate::buf::AlignedBuf;
use crate::exec::IoCtx;
use crate::report::{LayerReport, NoDetails};
use crate::{AsyncLayer, IoBuf, IoBufMut, Result};

const EXTENT_BYTES: u64 = 1 << 20;

type Extents = Vec<RwLock<Option<AlignedBuf>>>;

pub struct MemoryLeaf {
    size: AtomicU64,
    /// The outer lock is taken for writing only by `grow`.
    extents: RwLock<Extents>,
}

/// The table of `size.div_ceil(EXTENT_BYTES)` unallocated extents, or an
/// error (not an abort) when even the table cannot be allocated.
fn extent_table(size: u64, have: usize) -> std::result::Result<Extents, String> {
    let refuse = || format!("cannot allocate the extent table of a {size}-byte memory device");
    let count = usize::try_from(size.div_ceil(EXTENT_BYTES)).map_err(|_| refuse())?;
    let mut extents = Vec::new();
    extents
        .try_reserve_exact(count.saturating_sub(have))
        .map_err(|_| refuse())?;
    extents.extend((have..count).map(|_| RwLock::new(None)));
    Ok(extents)
}

impl MemoryLeaf {
    /// Fails, rather than aborting the process, when even the table of extents
    /// (24 bytes per MiB of `size`) cannot be allocated.
    pub fn new(size: u64) -> std::result::Result<MemoryLeaf, String> {
        Ok(MemoryLeaf {
            size: AtomicU64::new(size),
            extents: RwLock::new(extent_table(size, 0)?),
        })
    }

    fn table(&self) -> RwLockReadGuard<'_, Extents> {
        self.extents.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Split `[offset, offset+len)` into (extent index, offset in extent, length).
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (usize, usize, usize)> {
        let end = offset + len;
        let mut at = offset;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let index = at / EXTENT_BYTES;
            let inner = at % EXTENT_BYTES;
            let n = (EXTENT_BYTES - inner).min(end - at);
            at += n;
            Some((index as usize, inner as usize, n as usize))
        })
    }

    fn read_now(&self, offset: u64, buf: &mut [u8]) {
        let mut done = 0;
        let extents = self.table();
        for (index, inner, n) in Self::pieces(offset, buf.len() as u64) {
            let extent = extents[index].read().unwrap_or_else(|e| e.into_inner());
            let out = &mut buf[done..done + n];
            match extent.as_ref() {
                Some(data) => out.copy_from_slice(&data.as_slice()[inner..inner + n]),
                None => out.fill(0),
            }
            done += n;
        }
    }

    fn write_now(&self, offset: u64, buf: &[u8]) {
        let mut done = 0;
        let extents = self.table();
        for (index, inner, n) in Self::pieces(offset, buf.len() as u64) {
            let mut extent = extents[index].write().unwrap_or_else(|e| e.into_inner());
            let data = extent.get_or_insert_with(|| AlignedBuf::new(EXTENT_BYTES as usize));
            data.as_mut_slice()[inner..inner + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
    }

    fn zero_now(&self, offset: u64, len: u64) {
        let extents = self.table();
        for (index, inner, n) in Self::pieces(offset, len) {
            let mut extent = extents[index].write().unwrap_or_else(|e| e.into_inner());
            if n as u64 == EXTENT_BYTES {
                *extent = None;
            } else if let Some(data) = extent.as_mut() {
                data.as_mut_slice()[inner..inner + n].fill(0);
            }
        }
    }
}

impl AsyncLayer for MemoryLeaf {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn grow(&self, _: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        let size = self.size();
        if new_size < size {
            return Err(format!(
                "shrinking a memory leaf ({size} to {new_size} bytes) is not supported"
            ));
        }
        let mut extents = self.extents.write().unwrap_or_else(|e| e.into_inner());
        // The last extent may already reach past the old end: it stays, and
        // the bytes past the old end in it were never written (zeros).
        let more = extent_table(new_size, extents.len())?;
        extents.extend(more);
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    async fn read(&self, _: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.read_now(offset, buf);
        Ok(())
    }

    async fn write(&self, _: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.write_now(offset, buf);
        Ok(())
    }

    async fn flush(&self, _: &IoCtx) -> Result<()> {
        Ok(())
    }

    async fn discard(&self, _: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero_now(offset, len);
        Ok(())
    }

    async fn write_zeroes(&self, _: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero_now(offset, len);
        Ok(())
    }

    fn discard_frees_space(&self) -> bool {
        true
    }
    fn report(&self) -> LayerReport {
        LayerReport::Memory(NoDetails {})
    }
}

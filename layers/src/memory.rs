//! `memory` leaf: RAM-backed, for tests and demos; contents are lost at exit.
//!
//! Storage is split into 1 MiB extents, each behind its own lock and allocated on
//! first write, so queues rarely contend and an untouched device costs nothing.
//! Discard and write_zeroes free whole extents. FLUSH does nothing (nothing is
//! durable).

use std::sync::RwLock;

use crate::buf::AlignedBuf;
use crate::exec::IoCtx;
use crate::report::{LayerReport, NoDetails};
use crate::{AsyncLayer, IoBuf, IoBufMut, Result};

const EXTENT_BYTES: u64 = 1 << 20;

pub struct MemoryLeaf {
    size: u64,
    extents: Vec<RwLock<Option<AlignedBuf>>>,
}

impl MemoryLeaf {
    /// Fails, rather than aborting the process, when even the table of extents
    /// (24 bytes per MiB of `size`) cannot be allocated.
    pub fn new(size: u64) -> std::result::Result<MemoryLeaf, String> {
        let refuse = || format!("cannot allocate the extent table of a {size}-byte memory device");
        let count = usize::try_from(size.div_ceil(EXTENT_BYTES)).map_err(|_| refuse())?;
        let mut extents = Vec::new();
        extents.try_reserve_exact(count).map_err(|_| refuse())?;
        extents.extend((0..count).map(|_| RwLock::new(None)));
        Ok(MemoryLeaf { size, extents })
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
        for (index, inner, n) in Self::pieces(offset, buf.len() as u64) {
            let extent = self.extents[index]
                .read()
                .unwrap_or_else(|e| e.into_inner());
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
        for (index, inner, n) in Self::pieces(offset, buf.len() as u64) {
            let mut extent = self.extents[index]
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let data = extent.get_or_insert_with(|| AlignedBuf::new(EXTENT_BYTES as usize));
            data.as_mut_slice()[inner..inner + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
    }

    fn zero_now(&self, offset: u64, len: u64) {
        for (index, inner, n) in Self::pieces(offset, len) {
            let mut extent = self.extents[index]
                .write()
                .unwrap_or_else(|e| e.into_inner());
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
        self.size
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

//! `checksum`: a crc32 per block, verified on every read.
//!
//! On-disk layout of the layer below (format version 3, little endian; the full
//! description is `docs/formats/checksum.md`):
//!
//! | bytes                 | contents                                          |
//! |-----------------------|---------------------------------------------------|
//! | 0..4096               | superblock (`superblock.rs`), params = `crc32`    |
//! | 4096..12288           | table header: the flushed epoch and the blocks    |
//! |                       | covered (`meta_table.rs`)                         |
//! | 12288..               | groups: table pages (16 bytes per block: `cur`    |
//! |                       | u32, `prev` u32, epoch of `cur` u64), then the    |
//! |                       | data blocks they describe (`meta_table/groups.rs`) |
//!
//! The layer grows (`grow`, or at open when the device below is larger than
//! the table covers) without moving anything: see `meta_table.rs`.
//!
//! A block's value is `crc32(block index as u64 LE ‖ data)`, so a block written to
//! the wrong place is caught too; an all-zero block has value 0 (never written,
//! discarded or zeroed) and a computed 0 is stored as 1.
//!
//! Write ordering and flushes follow the table's protocol (`meta_table.rs`): the
//! table page with `cur = new` (and `prev` = the last version a flush may have
//! made durable) is written before the data. A read matches the data against
//! `cur`, or against `prev` only while no FLUSH covered `cur`'s write. So after a
//! crash a block whose unflushed data write was lost reads as its previous
//! contents, one whose data was torn reads as EIO, and a block that is lost,
//! misdirected, flipped or rolled back after a FLUSH covered its write reads as
//! EIO: never as old data. A read that matches neither is EIO for the request,
//! logged with its block, and counted in `status` (`mismatches`). At open, the
//! blocks a crash left unflushed are settled (read, and their entry set to the
//! version they hold) and flushed, so a later FLUSH cannot turn a block that
//! reads as its previous contents into an error. No live keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::exec::IoCtx;
use crate::meta_table::{Entries, Layout, MetaTable, Stamp};
use crate::report::{ChecksumReport, LayerReport};
use crate::superblock::{self, Superblock, SUPERBLOCK_BYTES};
use crate::{AsyncLayer, Error, IoBuf, IoBufMut, Layer, Result};

const FORMAT_VERSION: u32 = 3;
/// `cur` u32, `prev` u32 and the table's epoch u64.
const ENTRY_BYTES: usize = 16;

pub struct Checksum {
    lower: Arc<dyn Layer>,
    table: MetaTable,
    block: u64,
    size: AtomicU64,
    mismatches: AtomicU64,
}

/// The size this layer exposes over a lower device of `lower_size` bytes.
pub fn exposed_size(lower_size: u64, block_size: u32) -> u64 {
    fit_blocks(lower_size, u64::from(block_size)) * u64::from(block_size)
}

/// Blocks that fit below `lower_size` together with their table.
fn fit_blocks(lower_size: u64, block: u64) -> u64 {
    MetaTable::grouped_fit(SUPERBLOCK_BYTES, ENTRY_BYTES, block, lower_size)
}

fn block_value(index: u64, data: &[u8]) -> u32 {
    if data.iter().all(|&b| b == 0) {
        return 0;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(data);
    hasher.finalize().max(1)
}

impl Checksum {
    /// Open (formatting a fresh, all-zero device) the checksum layer over `lower`.
    pub async fn open(
        ctx: &IoCtx,
        lower: Arc<dyn Layer>,
        block_size: u32,
    ) -> std::result::Result<Checksum, String> {
        let block = u64::from(block_size);
        let blocks = fit_blocks(lower.size(), block);
        if blocks == 0 {
            return Err(format!(
                "the device below ({} bytes) is too small",
                lower.size()
            ));
        }
        let existing = superblock::read(ctx, &*lower).await?;
        let layout = Layout::grouped(ENTRY_BYTES, block);
        let entries = match &existing {
            Some(sb) => {
                sb.expect("checksum", FORMAT_VERSION, block_size)?;
                if sb.params != b"crc32" {
                    return Err(format!(
                        "formatted with algorithm {:?}, the config says crc32",
                        String::from_utf8_lossy(&sb.params)
                    ));
                }
                // The size at format, until a header records the coverage.
                let recorded = MetaTable::recorded(ctx, &*lower, SUPERBLOCK_BYTES)
                    .await
                    .map_err(|e| format!("cannot read the checksum table header: {e}"))?;
                MetaTable::check_room(recorded.unwrap_or(sb.size / block), blocks, block)?;
                Entries::RecordedOr(sb.size / block)
            }
            None => Entries::Exactly(blocks),
        };
        let table = MetaTable::load(ctx, &*lower, SUPERBLOCK_BYTES, layout, entries, ENTRY_BYTES)
            .await
            .map_err(|e| format!("cannot read the checksum table: {e}"))?;
        if existing.is_none() {
            let sb = Superblock {
                layer_type: "checksum".into(),
                version: FORMAT_VERSION,
                block_size,
                uuid: superblock::random_bytes(),
                size: blocks * block,
                params: b"crc32".to_vec(),
            };
            superblock::write(ctx, &*lower, &sb)
                .await
                .map_err(|e| format!("cannot write the superblock: {e}"))?;
            table
                .record_coverage(ctx, &*lower)
                .await
                .map_err(|e| format!("cannot write the checksum table header: {e}"))?;
        }
        let layer = Checksum {
            size: AtomicU64::new(table.entries() * block),
            lower,
            table,
            block,
            mismatches: AtomicU64::new(0),
        };
        if existing.is_some() {
            layer
                .settle(ctx)
                .await
                .map_err(|e| format!("cannot settle the blocks a crash left unflushed: {e}"))?;
            // A larger device below (or a grow a crash cut short): grow now.
            layer
                .table
                .grow(ctx, &*layer.lower, blocks)
                .await
                .map_err(|e| format!("cannot grow into the larger device below: {e}"))?;
            layer
                .size
                .store(layer.table.entries() * block, Ordering::Release);
        }
        Ok(layer)
    }

    /// At open: give every block whose last write no flush covered the entry of
    /// the version it holds, then flush (what a crash left is what later writes
    /// build on, and a later FLUSH must not turn it into an error).
    async fn settle(&self, ctx: &IoCtx) -> Result<()> {
        let mut data = vec![0u8; self.block as usize];
        for index in self.table.unflushed() {
            let offset = self
                .table
                .data_run(self.block, index * self.block, self.block)
                .0;
            match self.lower.read_bytes(ctx, offset, &mut data).await {
                Ok(()) => {}
                Err(Error::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            }
            let value = block_value(index, &data);
            let (cur, prev, _) = self.entry(index);
            if value != cur && value == prev {
                self.table
                    .update(ctx, &*self.lower, index, 1, Stamp::Keep, &mut |_, e, _| {
                        e[0..4].copy_from_slice(&prev.to_le_bytes())
                    })
                    .await?;
            }
        }
        self.table.flush(ctx, &*self.lower).await
    }

    /// `(cur, prev, epoch of cur)`.
    fn entry(&self, index: u64) -> (u32, u32, u64) {
        let mut e = [0u8; ENTRY_BYTES - 8];
        let epoch = self.table.get(index, &mut e);
        (
            u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            epoch,
        )
    }

    fn verifies(&self, index: u64, data: &[u8]) -> bool {
        let value = block_value(index, data);
        let (cur, prev, epoch) = self.entry(index);
        value == cur || (value == prev && self.table.prev_allowed(epoch))
    }

    async fn read_verified(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        let failed = self
            .table
            .read_checked(
                ctx,
                &*self.lower,
                self.block,
                offset,
                buf,
                &|index, data| self.verifies(index, data),
            )
            .await?;
        if let Some(index) = failed {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                block = index,
                offset = index * self.block,
                "checksum mismatch"
            );
            return Err(Error::Corrupt {
                offset: index * self.block,
            });
        }
        Ok(())
    }

    /// Record new values for the blocks of `[offset, offset+len)`, `None` = zeros.
    async fn set_values(
        &self,
        ctx: &IoCtx,
        epoch: u64,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let first = offset / self.block;
        let count = len / self.block;
        let block = self.block as usize;
        self.table
            .update(
                ctx,
                &*self.lower,
                first,
                count,
                Stamp::Write(epoch),
                &mut |index, entry, old| {
                    let value = match data {
                        Some(d) => {
                            let at = (index - first) as usize * block;
                            block_value(index, &d[at..at + block])
                        }
                        None => 0,
                    };
                    if old != epoch {
                        entry.copy_within(0..4, 4);
                    }
                    entry[0..4].copy_from_slice(&value.to_le_bytes());
                },
            )
            .await
    }

    async fn write_ordered(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        // Inside the epoch until the data is written: a flush waits for it.
        let writer = self.table.begin_write();
        self.set_values(ctx, writer.epoch, offset, buf.len() as u64, Some(buf))
            .await?;
        self.table
            .write_data(&*self.lower, ctx, self.block, offset, buf)
            .await
    }

    async fn zero(&self, ctx: &IoCtx, offset: u64, len: u64, discard: bool) -> Result<()> {
        let writer = self.table.begin_write();
        self.set_values(ctx, writer.epoch, offset, len, None)
            .await?;
        self.table
            .zero_data(&*self.lower, ctx, self.block, offset, len, discard)
            .await
    }
}

impl AsyncLayer for Checksum {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn grow(&self, ctx: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        let fit = fit_blocks(self.lower.size(), self.block);
        self.table
            .grow_to(&*self.lower, ctx, self.block, &self.size, new_size, fit)
            .await
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.read_verified(ctx, offset, buf).await
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.write_ordered(ctx, offset, buf).await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        self.table.flush(ctx, &*self.lower).await
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(ctx, offset, len, true).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(ctx, offset, len, false).await
    }

    fn discard_frees_space(&self) -> bool {
        self.lower.discard_frees_space()
    }

    fn report(&self) -> LayerReport {
        LayerReport::Checksum(ChecksumReport {
            algorithm: "crc32".into(),
            mismatches: self.mismatches.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_data_fit_below() {
        for (lower, block) in [(1 << 20, 4096), (1 << 30, 4096), ((1 << 20) + 12345, 512)] {
            let n = fit_blocks(lower, block);
            let end = |n: u64| {
                MetaTable::grouped_data_at(SUPERBLOCK_BYTES, ENTRY_BYTES, block, n - 1) + block
            };
            assert!(end(n) <= lower);
            assert!(end(n + 1) > lower);
        }
    }

    #[test]
    fn values_bind_the_block_index_and_zero_is_reserved() {
        let data = [1u8; 512];
        assert_ne!(block_value(1, &data), block_value(2, &data));
        assert_eq!(block_value(5, &[0u8; 512]), 0);
        assert_ne!(block_value(5, &data), 0);
    }
}

//! Where the data of a layer that keeps a grouped table lies below, and how it
//! grows: the part of `checksum` and `crypt` that only the table's layout
//! decides.

use std::sync::atomic::{AtomicU64, Ordering};

use super::MetaTable;
use crate::exec::IoCtx;
use crate::{IoBuf, Layer, Result};

impl MetaTable {
    /// Write `buf`, the data of bytes `offset..` of the layer above, below: in one
    /// piece unless it crosses a group's edge.
    pub(crate) async fn write_data(
        &self,
        lower: &dyn Layer,
        ctx: &IoCtx,
        block: u64,
        offset: u64,
        buf: &IoBuf,
    ) -> Result<()> {
        let len = buf.len() as u64;
        let (at, run) = self.data_run(block, offset, len);
        if run == len {
            return lower.write(ctx, at, buf).await;
        }
        let mut done = 0;
        while done < len {
            let (at, run) = self.data_run(block, offset + done, len - done);
            let piece = buf.slice(done as usize..(done + run) as usize);
            lower.write(ctx, at, &piece).await?;
            done += run;
        }
        Ok(())
    }

    /// Discard or zero the data of bytes `offset..offset + len` below, a piece
    /// per group.
    pub(crate) async fn zero_data(
        &self,
        lower: &dyn Layer,
        ctx: &IoCtx,
        block: u64,
        offset: u64,
        len: u64,
        discard: bool,
    ) -> Result<()> {
        let mut done = 0;
        while done < len {
            let (at, run) = self.data_run(block, offset + done, len - done);
            if discard {
                lower.discard(ctx, at, run).await?;
            } else {
                lower.write_zeroes(ctx, at, run).await?;
            }
            done += run;
        }
        Ok(())
    }

    /// At open: the device below must hold every block the table covers.
    pub(crate) fn check_room(
        covered: u64,
        fit: u64,
        block: u64,
    ) -> std::result::Result<(), String> {
        if fit < covered {
            return Err(format!(
                "the device below shrank: it has room for {} bytes, but {} bytes are in use; \
                 refusing to open (nothing was written)",
                fit * block,
                covered * block
            ));
        }
        Ok(())
    }

    /// A live grow to `new_size` bytes; the device
    /// below has room for `fit` blocks.
    pub(crate) async fn grow_to(
        &self,
        lower: &dyn Layer,
        ctx: &IoCtx,
        block: u64,
        size: &AtomicU64,
        new_size: u64,
        fit: u64,
    ) -> std::result::Result<(), String> {
        let now = size.load(Ordering::Acquire);
        if new_size < now {
            return Err(format!(
                "cannot shrink from {now} to {new_size} bytes (nothing was written)"
            ));
        }
        if new_size % block != 0 {
            return Err(format!(
                "{new_size} bytes is not a whole number of {block}-byte blocks"
            ));
        }
        let room = fit * block;
        if new_size > room {
            return Err(format!(
                "the device below ({} bytes) has room for {room} bytes, not {new_size}",
                lower.size()
            ));
        }
        self.grow(ctx, lower, new_size / block).await?;
        size.store(self.entries() * block, Ordering::Release);
        Ok(())
    }
}

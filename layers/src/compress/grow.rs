//! Growing a running `compress`: taking in the space of a grown device below.
//!
//! The data area runs to the end of the device below, so a larger device
//! below is more granules for the allocator. The size taken in is recorded
//! in the map header (two slots, written and flushed: a torn write leaves
//! the previous record) before any new granule is handed out, so a device
//! below that shrinks again under data is refused at open instead of
//! reading as damaged entries. A crash before the record is durable leaves
//! the old one, and the next open takes the space in again.

use std::sync::atomic::Ordering;

use crate::exec::IoCtx;

use super::Compress;

impl Compress {
    /// Why growing to expose `new_size` bytes would be refused, checked
    /// before any layer below grows; `None` when it may go ahead.
    pub fn grow_refusal(&self, new_size: u64) -> Option<String> {
        let size = self.geo.size;
        if new_size < size {
            return Some(format!(
                "shrinking a compress layer from {size} to {new_size} bytes is not supported"
            ));
        }
        if new_size > size {
            // The map has one entry per unit of the formatted size, in place.
            return Some(format!(
                "raising the exposed size from {size} to {new_size} bytes needs a map that can \
                 grow, which a compress layer of format version 2 does not have; set \
                 `size = {size}` to keep the exposed size and use the new space below for data"
            ));
        }
        None
    }

    /// A live grow: the device below grew and the exposed size stays.
    pub(super) async fn grow_to(&self, ctx: &IoCtx, new_size: u64) -> Result<(), String> {
        if let Some(why) = self.grow_refusal(new_size) {
            return Err(format!("{why} (nothing was written)"));
        }
        self.take_in_lower(ctx).await
    }

    /// Extend the data area to the end of the device below, if it grew.
    pub(super) async fn take_in_lower(&self, ctx: &IoCtx) -> Result<(), String> {
        let _serial = self.grow_lock.lock().await;
        let now = self.lower.size();
        let taken = self.lower_bytes.load(Ordering::Acquire);
        if now < taken {
            return Err(format!(
                "the device below has {now} bytes but this layer uses {taken} bytes of it: \
                 the layer below shrank"
            ));
        }
        if now == taken {
            return Ok(());
        }
        self.table
            .record_value(ctx, &*self.lower, now)
            .await
            .map_err(|e| format!("cannot record the new size of the device below: {e}"))?;
        self.lower_bytes.store(now, Ordering::Release);
        let granules = self.geo.granules_over(now);
        let before = self.alloc.granules();
        self.alloc.grow(granules);
        tracing::info!(
            lower_bytes = now,
            new_bytes = (granules - before) * u64::from(self.geo.granule_bytes),
            "compress: took in the grown device below"
        );
        Ok(())
    }
}

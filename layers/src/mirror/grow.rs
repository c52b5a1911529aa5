//! Growing a running mirror once its legs have grown.
//!
//! The new size is recorded in the state record (two slots, generation +1,
//! written and flushed on every leg that is not failed: a torn write loses
//! only that record), never in the superblock, which keeps the size the
//! mirror was formatted at. A crash before the record is durable leaves the
//! older record: the next open finds legs bigger than it says and grows then
//! (`open.rs`). The new regions join the write-intent bitmap clear: every leg
//! reads zeros there (what a grown layer gives), so the legs agree.
//!
//! A mirror with a failed or rebuilding leg does not grow: the rebuild copies
//! up to the size it started with, and a failed leg's records would keep the
//! old size. Re-add the leg and let the resync finish first.

use std::sync::atomic::Ordering;

use super::open::too_many_regions;
use super::state::{exposed_size, MAX_REGIONS};
use super::{Health, Mirror};
use crate::exec::IoCtx;

impl Mirror {
    /// Why growing to `new_size` would be refused now, checked before any
    /// layer below grows; `None` when it may go ahead.
    pub fn grow_refusal(&self, new_size: u64) -> Option<String> {
        let size = self.bytes();
        if new_size < size {
            return Some(format!(
                "shrinking a mirror ({size} to {new_size} bytes) is not supported"
            ));
        }
        let region_bytes = self
            .intent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .region_bytes();
        if new_size.div_ceil(region_bytes) > MAX_REGIONS {
            return Some(too_many_regions(size, new_size, region_bytes));
        }
        let not_ok: Vec<String> = (0..self.legs.len())
            .filter(|&i| self.health_of(i) != Health::Ok)
            .map(|i| format!("leg {i} is {}", self.health_of(i).as_str()))
            .collect();
        if !not_ok.is_empty() {
            return Some(format!(
                "a mirror grows only with every leg ok ({}); re-add the leg and let the \
                 resync finish first",
                not_ok.join(", ")
            ));
        }
        None
    }

    pub(super) async fn grow_to(&self, ctx: &IoCtx, new_size: u64) -> Result<(), String> {
        if new_size == self.bytes() {
            return Ok(());
        }
        let leg_size = self.legs[0].layer.size();
        if let Some(leg) = self.legs.iter().position(|l| l.layer.size() != leg_size) {
            return Err(format!(
                "leg {leg} is {} bytes and leg 0 {leg_size}: the legs must grow alike",
                self.legs[leg].layer.size()
            ));
        }
        let given = exposed_size(leg_size, self.block_size);
        if given != new_size {
            return Err(format!(
                "the legs give {given} bytes, not the {new_size} to grow to"
            ));
        }
        // Health and bits change only under `meta_lock`: checked under it.
        let _meta = self.meta_lock.lock().await;
        if let Some(why) = self.grow_refusal(new_size) {
            return Err(why);
        }
        let regions = {
            let intent = self.intent.lock().unwrap_or_else(|e| e.into_inner());
            new_size.div_ceil(intent.region_bytes()) as usize
        };
        let mut dirty = self.dirty_snapshot();
        dirty.resize(regions, false);
        self.persist_sized(ctx, &dirty, new_size)
            .await
            .map_err(|e| format!("cannot record the new size on any leg: {e}"))?;
        self.intent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .grow(regions);
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
}

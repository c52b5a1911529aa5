//! `cache`: a RAM block cache over one layer, shared by all queues.

use super::{Host, Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::params::{CacheMode, LayerId, LiveChange};
use crate::units::size::{format_exact, format_human};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheParams {
    pub over: LayerId,
    pub capacity_bytes: u64,
    pub mode: CacheMode,
}

impl Kind for CacheParams {
    const NAME: &'static str = "cache";
    const KEYS: &'static [Key] = &[
        Key::over(),
        Key::required("capacity", "how much the cache holds").live(),
        Key::optional(
            "mode",
            "write-through",
            "write-through, or write-back (writes reach the layer below on flush)",
        )
        .live(),
    ];
    const SYNONYMS: &'static [&'static str] = &["caching", "bcache", "writeback"];
    const GROWS: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<CacheParams> {
        let over = keys.over();
        let capacity_bytes = keys
            .require(
                "capacity",
                "how much the cache holds, like capacity = \"256MiB\"",
            )
            .and_then(|item| keys.size(item));
        let mode = keys.optional("mode", CacheMode::WriteThrough, |keys, item| {
            keys.choice(item, &CacheMode::NAMES)
                .and_then(CacheMode::parse)
        });
        Some(CacheParams {
            over: over?,
            capacity_bytes: capacity_bytes?,
            mode: mode?,
        })
    }

    fn children(&self) -> Vec<LayerId> {
        vec![self.over]
    }

    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("over", Some(name(self.over))),
            ("capacity", Some(format_exact(self.capacity_bytes))),
            ("mode", Some(self.mode.as_str().into())),
        ]
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        sizing.lower()
    }

    fn check_host(&self, host: &mut Host<'_>) {
        let Some(memory) = host.memory else { return };
        if self.capacity_bytes > memory {
            host.report(
                Some("capacity"),
                format!(
                    "capacity {} is more than the memory a cache can have: {}",
                    format_human(self.capacity_bytes),
                    Host::machine(memory)
                ),
            );
        }
    }

    fn live_changes(&self, new: &Self) -> Vec<(LiveChange, &'static [&'static str])> {
        let mut changes: Vec<(LiveChange, &'static [&'static str])> = Vec::new();
        // The mode first: a switch to write-through writes dirty data back,
        // and a smaller capacity then has less to evict.
        if self.mode != new.mode {
            changes.push((LiveChange::CacheMode(new.mode), &["mode"]));
        }
        if self.capacity_bytes != new.capacity_bytes {
            changes.push((LiveChange::CacheCapacity(new.capacity_bytes), &["capacity"]));
        }
        changes
    }

    fn apply_live(&mut self, change: &LiveChange) {
        match change {
            LiveChange::CacheCapacity(bytes) => self.capacity_bytes = *bytes,
            LiveChange::CacheMode(mode) => self.mode = *mode,
            _ => {}
        }
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        let knobs = crate::cache::CacheKnobs {
            capacity_bytes: self.capacity_bytes,
            mode: self.mode,
        };
        Ok(Opened::of(crate::cache::Cache::new(
            opening.child()?,
            opening.block_size,
            knobs,
        )))
    }
}

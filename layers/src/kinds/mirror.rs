//! `mirror`: every write goes to every leg; reads from one.

use std::sync::Arc;

use super::{Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::mirror::Mirror;
use crate::params::{LayerId, LiveChange, ReadPolicy};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorParams {
    pub legs: Vec<LayerId>,
    pub read_policy: ReadPolicy,
}

impl Kind for MirrorParams {
    const NAME: &'static str = "mirror";
    const SUPERBLOCK: bool = true;
    const KEYS: &'static [Key] = &[
        Key::layers("legs", "the layers to mirror"),
        Key::optional(
            "read_policy",
            "round-robin",
            "which leg serves a read: round-robin, first or least-pending",
        )
        .live(),
    ];
    const SYNONYMS: &'static [&'static str] = &["raid1", "mirrored", "mirroring"];
    const GROWS: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<MirrorParams> {
        let legs = keys.children("legs", "mirror");
        let read_policy = keys.optional("read_policy", ReadPolicy::RoundRobin, |keys, item| {
            keys.choice(item, &ReadPolicy::NAMES)
                .and_then(ReadPolicy::parse)
        });
        Some(MirrorParams {
            legs: legs?,
            read_policy: read_policy?,
        })
    }

    fn children(&self) -> Vec<LayerId> {
        self.legs.clone()
    }

    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        let legs: Vec<String> = self.legs.iter().map(|&id| name(id)).collect();
        vec![
            ("legs", Some(format!("{legs:?}"))),
            ("read_policy", Some(self.read_policy.as_str().into())),
        ]
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let leg = sizing.equal_children("legs", Self::NAME)?;
        let exposed = crate::mirror::exposed_size(leg, sizing.block_size as u32);
        sizing.not_empty(Self::NAME, leg, exposed)
    }

    fn live_changes(&self, new: &Self) -> Vec<(LiveChange, &'static [&'static str])> {
        if self.read_policy == new.read_policy {
            return Vec::new();
        }
        vec![(LiveChange::ReadPolicy(new.read_policy), &["read_policy"])]
    }

    fn apply_live(&mut self, change: &LiveChange) {
        if let LiveChange::ReadPolicy(policy) = change {
            self.read_policy = *policy;
        }
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        let legs = std::mem::take(&mut opening.children);
        let open = Mirror::open(opening.io(), legs, self.read_policy, opening.block_size);
        let mirror = Arc::new(opening.block_on(open)?);
        // For re-add, resync and scrub, which are no `Layer` operations.
        opening.keep(mirror.clone());
        Ok(Opened::new(mirror))
    }
}

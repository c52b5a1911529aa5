//! A cached block's state, and the outcomes of the shard's operations on it.
//!
//! A block present in `entries` is in one of these states:
//!
//! | `data` | `busy` | meaning                                                        |
//! |--------|--------|----------------------------------------------------------------|
//! | None   | yes    | placeholder: a task loads it, or writes it through             |
//! | Some   | no     | cached, clean or dirty                                          |
//! | Some   | yes    | cached, and a task has lower I/O on it in flight (write-back,  |
//! |        |        | write-through, zeroing); readers still hit the data             |
//!
//! `busy` is a per-block claim on the lower I/O: whoever sets it is the only one
//! who writes that block below, or installs data read from below, until it
//! releases the claim; waiters queue their wakers on the entry. A claim remembers
//! the entry's `version`, which every write into the cache bumps, so a claim
//! completing after a newer write-back write leaves the newer data alone. Only a
//! claimant removes a busy entry.

use std::sync::Arc;
use std::task::Waker;

pub(super) struct Entry {
    pub(super) data: Option<Arc<[u8]>>,
    pub(super) dirty: bool,
    pub(super) version: u64,
    pub(super) busy: bool,
    /// A dirty victim being written back before it goes (not tracked by the policy).
    pub(super) evicting: bool,
    pub(super) waiters: Vec<Waker>,
}

impl Entry {
    pub(super) fn placeholder() -> Entry {
        Entry {
            data: None,
            dirty: false,
            version: 0,
            busy: true,
            evicting: false,
            waiters: Vec::new(),
        }
    }

    /// Put `bytes` in: into the entry's own buffer, or `spare` (an evicted
    /// block's) when it has none, or a new one (also while a write-back still
    /// holds the old one). Returns whether the entry held no data before.
    pub(super) fn fill(&mut self, bytes: &[u8], spare: Option<Arc<[u8]>>) -> bool {
        self.version += 1;
        let fresh = self.data.is_none();
        let mut data = self.data.take().or(spare);
        match data.as_mut().and_then(Arc::get_mut) {
            Some(buf) if buf.len() == bytes.len() => buf.copy_from_slice(bytes),
            _ => data = Some(Arc::from(bytes)),
        }
        self.data = data;
        fresh
    }

    pub(super) fn release(&mut self) {
        self.busy = false;
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

/// What a read found for one block.
pub enum Lookup {
    /// The data was copied out.
    Hit,
    /// A placeholder was created: the caller loads the block (claim at `version`).
    Claimed(u64),
    /// Another task is loading the block, or it is being zeroed: try again later.
    Wait,
}

/// Outcome of trying to claim a block's lower I/O.
pub enum Claim {
    Claimed(u64),
    Busy,
    Zeroing,
}

/// Outcome of a write-back write into the cache.
pub enum Store {
    Stored,
    /// Over the dirty limit (or the mode changed): write it through instead.
    Full,
    Zeroing,
}

/// Outcome of trying to claim a dirty block for writing it back.
pub enum DirtyClaim {
    Claimed { version: u64, data: Arc<[u8]> },
    Clean,
    Blocked,
}

//! One shard of the cache: the blocks whose numbers hash here, their states and
//! the shard's policy. Everything here runs under the shard's mutex and never
//! waits; the async code around it decides what to wait for.
//!
//! Block states and claims are described in `entry.rs`. The policy tracks
//! exactly the entries with data, minus dirty victims being written back
//! (`evicting`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::Waker;

use super::entry::{Claim, DirtyClaim, Entry, Lookup, Store};
use super::policy::S3Fifo;

#[derive(Default)]
pub struct Shard {
    entries: BTreeMap<u64, Entry>,
    policy: S3Fifo,
    resident: usize,
    /// Dirty blocks, so FLUSH costs what is dirty rather than what is cached.
    dirty: BTreeSet<u64>,
    evicting: usize,
    evictions: u64,
    /// Block ranges `[first, end)` being discarded or zeroed, with their ids.
    zeroing: Vec<(u64, u64, u64)>,
    zeroing_waiters: Vec<Waker>,
}

impl Shard {
    /// (blocks with data, dirty blocks).
    pub fn usage(&self) -> (usize, usize) {
        (self.resident, self.dirty.len())
    }

    /// Blocks evicted since the shard was made.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn over(&self, capacity: usize) -> bool {
        self.resident - self.evicting > capacity
    }

    fn zeroing(&self, block: u64) -> bool {
        self.zeroing
            .iter()
            .any(|&(first, end, _)| first <= block && block < end)
    }

    /// Copy `block` into `out` on a hit; otherwise claim it for loading, unless
    /// someone else is loading it or it is being zeroed.
    pub fn read(&mut self, block: u64, out: &mut [u8]) -> Lookup {
        if let Some(e) = self.entries.get(&block) {
            return match &e.data {
                Some(data) => {
                    out.copy_from_slice(data);
                    self.policy.touch(block);
                    Lookup::Hit
                }
                None => Lookup::Wait,
            };
        }
        if self.zeroing(block) {
            return Lookup::Wait;
        }
        self.entries.insert(block, Entry::placeholder());
        Lookup::Claimed(0)
    }

    /// Claim `block` for lower I/O. A zeroing range blocks the claim when
    /// `respect_zeroing` (everyone but the zeroing task itself).
    pub fn claim(&mut self, block: u64, respect_zeroing: bool) -> Claim {
        if respect_zeroing && self.zeroing(block) {
            return Claim::Zeroing;
        }
        match self.entries.get_mut(&block) {
            Some(e) if e.busy => Claim::Busy,
            Some(e) => {
                e.busy = true;
                Claim::Claimed(e.version)
            }
            None => {
                self.entries.insert(block, Entry::placeholder());
                Claim::Claimed(0)
            }
        }
    }

    /// Queue `waker` until `block` is released. False when it is not busy.
    pub fn wait_busy(&mut self, block: u64, waker: &Waker) -> bool {
        match self.entries.get_mut(&block) {
            Some(e) if e.busy => {
                if !e.waiters.iter().any(|w| w.will_wake(waker)) {
                    e.waiters.push(waker.clone());
                }
                true
            }
            _ => false,
        }
    }

    /// Queue `waker` until no zeroing range covers `block`. False when none does.
    pub fn wait_zeroing(&mut self, block: u64, waker: &Waker) -> bool {
        if !self.zeroing(block) {
            return false;
        }
        if !self.zeroing_waiters.iter().any(|w| w.will_wake(waker)) {
            self.zeroing_waiters.push(waker.clone());
        }
        true
    }

    pub fn add_zeroing(&mut self, first: u64, end: u64, id: u64) {
        self.zeroing.push((first, end, id));
    }

    pub fn remove_zeroing(&mut self, id: u64) {
        self.zeroing.retain(|&(_, _, i)| i != id);
        for w in self.zeroing_waiters.drain(..) {
            w.wake();
        }
    }

    /// Cached blocks in `[first, end)`.
    pub fn blocks_in(&self, first: u64, end: u64) -> Vec<u64> {
        self.entries.range(first..end).map(|(&b, _)| b).collect()
    }

    pub fn dirty_blocks(&self) -> Vec<u64> {
        self.dirty.iter().copied().collect()
    }

    /// A write-back write of `bytes` into the cache. `limit` bounds dirty blocks.
    pub fn store_dirty(
        &mut self,
        block: u64,
        bytes: &[u8],
        limit: usize,
        capacity: usize,
    ) -> Store {
        if self.zeroing(block) {
            return Store::Zeroing;
        }
        let already = self.entries.get(&block).is_some_and(|e| e.dirty);
        if !already && self.dirty.len() >= limit {
            return Store::Full;
        }
        let spare = self.make_room(block, capacity);
        let e = self.entries.entry(block).or_insert_with(|| Entry {
            busy: false,
            ..Entry::placeholder()
        });
        let fresh = e.fill(bytes, spare);
        e.dirty = true;
        if !already {
            self.dirty.insert(block);
        }
        self.track(block, fresh, capacity);
        Store::Stored
    }

    /// When caching data for `block` (which holds none yet) would go past
    /// `capacity`, evict a clean victim now and hand back its buffer: a full
    /// cache then replaces blocks without allocating, and stays within its
    /// share. Dirty victims are left to [`Shard::take_victims`].
    fn make_room(&mut self, block: u64, capacity: usize) -> Option<Arc<[u8]>> {
        if self.entries.get(&block).is_some_and(|e| e.data.is_some())
            || self.resident - self.evicting < capacity
        {
            return None;
        }
        let Shard {
            entries, policy, ..
        } = self;
        let mut pinned = |b: u64| entries.get(&b).map_or(true, |e| e.busy || e.dirty);
        let victim = policy.evict(capacity, &mut pinned)?;
        let e = self.entries.remove(&victim)?;
        self.resident -= 1;
        self.evictions += 1;
        e.data
    }

    /// After a fill: a block new to the cache starts in the policy; an update
    /// counts as a use.
    fn track(&mut self, block: u64, fresh: bool, capacity: usize) {
        if fresh {
            self.resident += 1;
            self.policy.insert(block, capacity);
        } else {
            self.policy.touch(block);
        }
    }

    /// End a claim taken at `version` for a load or a write-through: install
    /// `bytes` (what is now below) unless newer data arrived meanwhile; `None`
    /// means the lower I/O failed. Returns whether `bytes` were installed.
    pub fn finish(
        &mut self,
        block: u64,
        version: u64,
        bytes: Option<&[u8]>,
        capacity: usize,
    ) -> bool {
        let Some(e) = self.entries.get_mut(&block) else {
            debug_assert!(false, "claimed entry {block} vanished");
            return false;
        };
        if e.version != version {
            e.release();
            return false;
        }
        match bytes {
            Some(bytes) => {
                let spare = self.make_room(block, capacity);
                let Some(e) = self.entries.get_mut(&block) else {
                    return false;
                };
                let fresh = e.fill(bytes, spare);
                let was_dirty = std::mem::replace(&mut e.dirty, false);
                e.release();
                if was_dirty {
                    self.dirty.remove(&block);
                }
                self.track(block, fresh, capacity);
                true
            }
            None => {
                self.abandon(block);
                false
            }
        }
    }

    /// Release a claim whose I/O failed or never finished: dirty data stays (it
    /// is still to be written back); anything else is dropped, since what is
    /// below is unknown.
    pub fn abandon(&mut self, block: u64) {
        let Some(e) = self.entries.get_mut(&block) else {
            return;
        };
        e.release();
        if !e.dirty {
            self.remove(block);
        }
    }

    /// Drop `block` whatever its state (the zeroing task, holding its claim).
    pub fn remove(&mut self, block: u64) {
        let Some(mut e) = self.entries.remove(&block) else {
            return;
        };
        e.release();
        if e.data.is_some() {
            self.resident -= 1;
            self.policy.remove(block);
        }
        if e.evicting {
            self.evicting -= 1;
        }
        if e.dirty {
            self.dirty.remove(&block);
        }
    }

    /// Claim a dirty block for writing it back; `Blocked` while another claim
    /// or a zeroing range holds it.
    pub fn claim_dirty(&mut self, block: u64) -> DirtyClaim {
        let zeroing = self.zeroing(block);
        match self.entries.get_mut(&block) {
            Some(e) if e.dirty && (e.busy || zeroing) => DirtyClaim::Blocked,
            Some(Entry {
                dirty: true,
                data: Some(data),
                busy,
                version,
                ..
            }) => {
                *busy = true;
                DirtyClaim::Claimed {
                    version: *version,
                    data: data.clone(),
                }
            }
            _ => DirtyClaim::Clean,
        }
    }

    /// End a write-back claim; the block is clean if it succeeded and was not
    /// written again meanwhile.
    pub fn finish_write_back(&mut self, block: u64, version: u64, ok: bool) {
        let Some(e) = self.entries.get_mut(&block) else {
            return;
        };
        e.release();
        if ok && e.version == version && e.dirty {
            e.dirty = false;
            self.dirty.remove(&block);
        }
    }

    /// Evict until at most `capacity` blocks stay: clean victims go at once (their
    /// count is returned); up to `max_dirty` dirty victims are set aside for the
    /// caller to write back and then [`Shard::finish_eviction`].
    pub fn take_victims(&mut self, capacity: usize, max_dirty: usize) -> (u64, Vec<u64>) {
        let mut evicted = 0;
        let mut dirty = Vec::new();
        // Bounds the time the lock is held when a big shrink evicts many blocks.
        let mut budget = 4096;
        while self.over(capacity) && budget > 0 && dirty.len() < max_dirty {
            budget -= 1;
            let Shard {
                entries,
                policy,
                zeroing,
                ..
            } = self;
            let mut pinned = |b: u64| {
                entries.get(&b).map_or(true, |e| {
                    e.busy || (e.dirty && zeroing.iter().any(|&(f, end, _)| f <= b && b < end))
                })
            };
            let Some(victim) = policy.evict(capacity, &mut pinned) else {
                break;
            };
            let Some(e) = self.entries.get_mut(&victim) else {
                debug_assert!(false, "tracked block {victim} is not cached");
                continue;
            };
            if e.dirty {
                e.evicting = true;
                self.evicting += 1;
                dirty.push(victim);
            } else {
                self.entries.remove(&victim);
                self.resident -= 1;
                self.evictions += 1;
                evicted += 1;
            }
        }
        (evicted, dirty)
    }

    /// After writing back a dirty victim: drop it if it is clean and idle now,
    /// otherwise it stays cached and tracked. Returns whether it was evicted.
    pub fn finish_eviction(&mut self, block: u64, capacity: usize) -> bool {
        let Some(e) = self.entries.get_mut(&block) else {
            return false; // removed by a zeroing task, which settled the counts
        };
        if !e.evicting {
            return false; // removed and cached again meanwhile
        }
        e.evicting = false;
        self.evicting -= 1;
        if !e.dirty && !e.busy {
            self.entries.remove(&block);
            self.resident -= 1;
            self.evictions += 1;
            true
        } else {
            self.policy.insert(block, capacity);
            false
        }
    }
}

#[cfg(test)]
mod tests;

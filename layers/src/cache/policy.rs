//! The replacement policy of the `cache` layer: S3-FIFO, on block numbers only.
//!
//! Plain LRU lets one sequential pass larger than the cache push out everything
//! else. S3-FIFO keeps three FIFO queues:
//!
//! - `small` (about a tenth of the capacity) takes every newly cached block. A
//!   block leaving it that was hit meanwhile moves to `main`; one that was not goes
//!   to `ghost` and out of the cache. A scan touches each block once, so it only
//!   ever churns `small`.
//! - `main` holds blocks that proved themselves. Each carries a hit count (capped
//!   at 3); leaving the tail of `main` costs one count, so a block goes only once
//!   it is no longer hit.
//! - `ghost` remembers recently evicted block numbers (no data): a block cached
//!   again soon after leaving `small` goes straight to `main`.
//!
//! The structure holds no data and does no I/O, so it is tested on its own. The
//! caller keeps one per shard, decides how many blocks may stay (`capacity`), and
//! may veto a victim (`pinned`: a block with I/O in flight), which then gets
//! another round. Queues delete lazily: every queued position carries a stamp, and
//! one whose stamp no longer matches is skipped; queues are compacted when stale
//! positions outnumber live ones.

use std::collections::{HashMap, VecDeque};

/// Highest hit count a block keeps: how many passes over `main` it survives.
const MAX_FREQ: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    queue: Queue,
    freq: u8,
    stamp: u64,
}

/// S3-FIFO over block numbers.
#[derive(Default)]
pub struct S3Fifo {
    meta: HashMap<u64, Meta>,
    small: VecDeque<(u64, u64)>,
    main: VecDeque<(u64, u64)>,
    small_len: usize,
    main_len: usize,
    /// Block → stamp of its ghost position.
    ghost: HashMap<u64, u64>,
    ghost_queue: VecDeque<(u64, u64)>,
    next_stamp: u64,
}

impl S3Fifo {
    pub fn new() -> S3Fifo {
        S3Fifo::default()
    }

    /// Blocks tracked (cached).
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    pub fn contains(&self, block: u64) -> bool {
        self.meta.contains_key(&block)
    }

    /// Whether `block` was recently evicted from `small`.
    pub fn in_ghost(&self, block: u64) -> bool {
        self.ghost.contains_key(&block)
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// A hit on a cached block (untracked blocks are ignored).
    pub fn touch(&mut self, block: u64) {
        if let Some(m) = self.meta.get_mut(&block) {
            m.freq = (m.freq + 1).min(MAX_FREQ);
        }
    }

    /// Start tracking a newly cached block. `capacity` bounds the ghost list.
    pub fn insert(&mut self, block: u64, capacity: usize) {
        if self.meta.contains_key(&block) {
            self.touch(block);
            return;
        }
        let stamp = self.stamp();
        let queue = if self.ghost.remove(&block).is_some() {
            self.main.push_back((block, stamp));
            self.main_len += 1;
            Queue::Main
        } else {
            self.small.push_back((block, stamp));
            self.small_len += 1;
            Queue::Small
        };
        self.meta.insert(
            block,
            Meta {
                queue,
                freq: 0,
                stamp,
            },
        );
        self.trim_ghost(capacity);
        self.compact();
    }

    /// Stop tracking a block that left the cache for another reason than
    /// eviction (discarded, overwritten with an error). It is not remembered.
    pub fn remove(&mut self, block: u64) -> bool {
        match self.meta.remove(&block) {
            Some(m) => {
                match m.queue {
                    Queue::Small => self.small_len -= 1,
                    Queue::Main => self.main_len -= 1,
                }
                self.compact();
                true
            }
            None => false,
        }
    }

    /// Choose a block to evict so that at most `capacity` stay, and stop tracking
    /// it. `pinned` blocks are passed over (they go round again). `None` when
    /// nothing is tracked or every candidate is pinned.
    pub fn evict(&mut self, capacity: usize, pinned: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let small_target = (capacity / 10).max(1);
        // Every block is looked at no more than MAX_FREQ + 2 times (a move from
        // small to main, then one visit per hit count): past that, all are pinned.
        let mut steps = (self.meta.len() + 1) * (usize::from(MAX_FREQ) + 2);
        while steps > 0 && !self.meta.is_empty() {
            steps -= 1;
            let from_small =
                self.small_len > 0 && (self.small_len >= small_target || self.main_len == 0);
            let queue = if from_small {
                Queue::Small
            } else {
                Queue::Main
            };
            let (block, mut meta) = self.pop_live(queue)?;
            if pinned(block) {
                self.push(block, meta);
                continue;
            }
            match (queue, meta.freq) {
                (Queue::Small, 0) => {
                    self.meta.remove(&block);
                    self.small_len -= 1;
                    let stamp = self.stamp();
                    self.ghost.insert(block, stamp);
                    self.ghost_queue.push_back((block, stamp));
                    self.trim_ghost(capacity);
                    return Some(block);
                }
                (Queue::Small, _) => {
                    self.small_len -= 1;
                    self.main_len += 1;
                    meta.queue = Queue::Main;
                    meta.freq = 0;
                    self.push(block, meta);
                }
                (Queue::Main, 0) => {
                    self.meta.remove(&block);
                    self.main_len -= 1;
                    return Some(block);
                }
                (Queue::Main, _) => {
                    meta.freq -= 1;
                    self.push(block, meta);
                }
            }
        }
        None
    }

    /// The oldest live position of `queue`, dropping stale ones on the way.
    fn pop_live(&mut self, queue: Queue) -> Option<(u64, Meta)> {
        loop {
            let (block, stamp) = match queue {
                Queue::Small => self.small.pop_front()?,
                Queue::Main => self.main.pop_front()?,
            };
            match self.meta.get(&block) {
                Some(m) if m.stamp == stamp && m.queue == queue => return Some((block, *m)),
                _ => continue,
            }
        }
    }

    /// Queue `block` at the back of `meta.queue` with a fresh stamp.
    fn push(&mut self, block: u64, mut meta: Meta) {
        meta.stamp = self.stamp();
        match meta.queue {
            Queue::Small => self.small.push_back((block, meta.stamp)),
            Queue::Main => self.main.push_back((block, meta.stamp)),
        }
        self.meta.insert(block, meta);
    }

    fn trim_ghost(&mut self, capacity: usize) {
        while self.ghost.len() > capacity {
            let Some((block, stamp)) = self.ghost_queue.pop_front() else {
                break;
            };
            if self.ghost.get(&block) == Some(&stamp) {
                self.ghost.remove(&block);
            }
        }
    }

    /// Drop stale positions once they outnumber live ones, so memory follows the
    /// number of cached blocks (and shrinks with it).
    fn compact(&mut self) {
        let stale = |q: &VecDeque<(u64, u64)>, len: usize| q.len() > 2 * len + 64;
        if stale(&self.small, self.small_len) || stale(&self.main, self.main_len) {
            let meta = &self.meta;
            let keep = |&(b, s): &(u64, u64)| meta.get(&b).is_some_and(|m| m.stamp == s);
            self.small.retain(keep);
            self.main.retain(keep);
            self.small.shrink_to_fit();
            self.main.shrink_to_fit();
        }
        if self.ghost_queue.len() > 2 * self.ghost.len() + 64 {
            let ghost = &self.ghost;
            self.ghost_queue.retain(|&(b, s)| ghost.get(&b) == Some(&s));
            self.ghost_queue.shrink_to_fit();
            self.ghost.shrink_to_fit();
        }
        if self.meta.capacity() > 4 * self.meta.len() + 64 {
            self.meta.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cache `block` (evicting as needed to stay within `capacity`) or count a hit.
    fn access(p: &mut S3Fifo, block: u64, capacity: usize) -> bool {
        if p.contains(block) {
            p.touch(block);
            return true;
        }
        p.insert(block, capacity);
        while p.len() > capacity {
            p.evict(capacity, &mut |_| false).expect("a victim");
        }
        false
    }

    #[test]
    fn stays_within_capacity_and_evicts_each_block_once() {
        let mut p = S3Fifo::new();
        for b in 0..1000 {
            access(&mut p, b % 300, 100);
            assert!(p.len() <= 100);
        }
        let mut seen = std::collections::HashSet::new();
        while let Some(b) = p.evict(0, &mut |_| false) {
            assert!(seen.insert(b), "block {b} evicted twice");
        }
        assert_eq!(seen.len(), 100);
        assert!(p.is_empty());
    }

    #[test]
    fn hot_set_survives_a_scan_larger_than_the_cache() {
        let capacity = 1000;
        let mut p = S3Fifo::new();
        let hot: Vec<u64> = (0..500).collect();
        for _ in 0..4 {
            for &b in &hot {
                access(&mut p, b, capacity);
            }
        }
        // One pass over 20 times the capacity, with the hot set still in use.
        let mut hits = 0;
        let mut lookups = 0;
        for (i, b) in (1_000_000..1_020_000).enumerate() {
            access(&mut p, b, capacity);
            if i % 8 == 0 {
                lookups += 1;
                hits += u64::from(access(&mut p, hot[i / 8 % hot.len()], capacity));
            }
        }
        assert!(hot.iter().all(|&b| p.contains(b)), "hot set was flushed");
        assert_eq!(hits, lookups);
    }

    #[test]
    fn blocks_with_hits_outlive_a_scan_without_hits() {
        // With no hits during the scan, blocks with hit counts still outlive it.
        let capacity = 100;
        let mut p = S3Fifo::new();
        for _ in 0..3 {
            for b in 0..50 {
                access(&mut p, b, capacity);
            }
        }
        for b in 10_000..20_000 {
            access(&mut p, b, capacity);
        }
        let kept = (0..50).filter(|&b| p.contains(b)).count();
        assert_eq!(kept, 50);
    }

    #[test]
    fn a_block_evicted_from_small_and_used_again_goes_to_main() {
        let mut p = S3Fifo::new();
        for b in 0..20 {
            access(&mut p, b, 10);
        }
        assert!(p.in_ghost(0));
        access(&mut p, 0, 10);
        assert!(p.contains(0));
        assert!(!p.in_ghost(0));
        // In main with no hits: survives a pass of single-use blocks through small.
        for b in 100..130 {
            access(&mut p, b, 10);
        }
        assert!(p.contains(0));
    }

    #[test]
    fn pinned_blocks_are_passed_over() {
        let mut p = S3Fifo::new();
        for b in 0..10 {
            p.insert(b, 10);
        }
        let victim = p.evict(5, &mut |b| b < 5).expect("a victim");
        assert!(victim >= 5);
        assert!((0..5).all(|b| p.contains(b)));
        assert_eq!(p.evict(0, &mut |_| true), None);
        assert_eq!(p.len(), 9);
    }

    #[test]
    fn removed_blocks_are_not_evicted_and_memory_is_compacted() {
        let mut p = S3Fifo::new();
        for round in 0..50u64 {
            for b in 0..100 {
                p.insert(round * 1000 + b, 100);
            }
            for b in 0..100 {
                assert!(p.remove(round * 1000 + b));
            }
        }
        assert!(p.is_empty());
        assert_eq!(p.evict(0, &mut |_| false), None);
        assert!(
            p.small.len() <= 264,
            "stale positions kept: {}",
            p.small.len()
        );
    }
}

//! The space allocator of the data area: one bit per granule, in groups.
//!
//! Shared by every queue. Each group of [`GROUP_GRANULES`] granules has its own
//! lock, free count and rover (next-fit position), and each queue starts its
//! search in a different group, so queues rarely meet on a lock; no lock is held
//! across I/O. An extent never straddles groups. Contiguous runs are needed (an
//! extent is one run), so a fragmented area can refuse a run while holding enough
//! free granules in total: the caller reports `NoSpace` then.
//!
//! The area only ever grows (`grow`, when the device below grew): the last
//! group is lengthened, then new groups are appended, all free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// 32768 granules of 4 KiB = 128 MiB per group, a 4 KiB bitmap.
pub const GROUP_GRANULES: u64 = 32768;

pub struct Allocator {
    /// Written only by `grow`; every other access holds a read guard for a
    /// short synchronous section.
    groups: RwLock<Vec<Mutex<Group>>>,
    granules: AtomicU64,
    free: AtomicU64,
}

struct Group {
    /// Bit set = granule used.
    words: Vec<u64>,
    len: u64,
    free: u64,
    rover: u64,
}

impl Group {
    fn used(&self, at: u64) -> bool {
        self.words[(at / 64) as usize] >> (at % 64) & 1 == 1
    }

    fn set(&mut self, at: u64, used: bool) {
        let word = &mut self.words[(at / 64) as usize];
        if used {
            *word |= 1 << (at % 64);
        } else {
            *word &= !(1 << (at % 64));
        }
    }

    /// First run of `count` free granules in `from..to`.
    fn scan(&self, from: u64, to: u64, count: u64) -> Option<u64> {
        let (mut at, mut run_start, mut run) = (from, from, 0);
        while at < to {
            let word = self.words[(at / 64) as usize];
            if at % 64 == 0 && at + 64 <= to && (word == u64::MAX || word == 0) {
                // Whole words at a time: a full word ends the run, an empty one extends it.
                if word == u64::MAX {
                    run = 0;
                } else {
                    if run == 0 {
                        run_start = at;
                    }
                    run += 64;
                }
                at += 64;
            } else {
                if word >> (at % 64) & 1 == 1 {
                    run = 0;
                } else {
                    if run == 0 {
                        run_start = at;
                    }
                    run += 1;
                }
                at += 1;
            }
            if run >= count {
                return Some(run_start);
            }
        }
        None
    }

    fn alloc(&mut self, count: u64) -> Option<u64> {
        if self.free < count {
            return None;
        }
        let rover = self.rover.min(self.len);
        let start = self
            .scan(rover, self.len, count)
            .or_else(|| self.scan(0, (rover + count).min(self.len), count))?;
        for at in start..start + count {
            debug_assert!(!self.used(at));
            self.set(at, true);
        }
        self.free -= count;
        self.rover = start + count;
        Some(start)
    }
}

impl Allocator {
    /// An allocator of `granules` granules, all free.
    pub fn new(granules: u64) -> Allocator {
        let a = Allocator {
            groups: RwLock::new(Vec::new()),
            granules: AtomicU64::new(0),
            free: AtomicU64::new(0),
        };
        a.grow(granules);
        a
    }

    /// Extend the area to `granules` granules (fewer than now is ignored); the
    /// new ones are free.
    pub fn grow(&self, granules: u64) {
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        let old = self.granules.load(Ordering::Acquire);
        if granules <= old {
            return;
        }
        if let Some(last) = groups.last_mut() {
            let last = last.get_mut().unwrap_or_else(|e| e.into_inner());
            let len = (last.len + granules - old).min(GROUP_GRANULES);
            last.words.resize(len.div_ceil(64) as usize, 0);
            last.free += len - last.len;
            last.len = len;
        }
        let mut covered = (groups.len() as u64).saturating_sub(1) * GROUP_GRANULES
            + groups
                .last_mut()
                .map_or(0, |g| g.get_mut().unwrap_or_else(|e| e.into_inner()).len);
        while covered < granules {
            let len = (granules - covered).min(GROUP_GRANULES);
            groups.push(Mutex::new(Group {
                words: vec![0; len.div_ceil(64) as usize],
                len,
                free: len,
                rover: 0,
            }));
            covered += len;
        }
        self.free.fetch_add(granules - old, Ordering::Relaxed);
        // Last: extents up to here may now be handed out and decoded.
        self.granules.store(granules, Ordering::Release);
    }

    pub fn free_granules(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Granules in the data area.
    pub fn granules(&self) -> u64 {
        self.granules.load(Ordering::Acquire)
    }

    fn groups(&self) -> RwLockReadGuard<'_, Vec<Mutex<Group>>> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Set or clear `count` granules from `start`; returns how many changed.
    fn mark(&self, start: u64, count: u64, used: bool) -> u64 {
        debug_assert!(start + count <= self.granules());
        let groups = self.groups();
        let mut changed = 0;
        let mut at = start;
        while at < start + count {
            let mut group = lock(&groups[(at / GROUP_GRANULES) as usize]);
            let base = at / GROUP_GRANULES * GROUP_GRANULES;
            let end = (start + count).min(base + group.len);
            for g in at - base..end - base {
                if group.used(g) != used {
                    group.set(g, used);
                    changed += 1;
                    if used {
                        group.free -= 1;
                    } else {
                        group.free += 1;
                    }
                }
            }
            at = end;
        }
        if used {
            self.free.fetch_sub(changed, Ordering::Relaxed);
        } else {
            self.free.fetch_add(changed, Ordering::Relaxed);
        }
        changed
    }

    /// Mark an extent found in the map as used (at open). Returns false when some
    /// granule was already used, i.e. two extents overlap.
    pub fn mark_used(&self, start: u64, count: u64) -> bool {
        self.mark(start, count, true) == count
    }

    /// Whether no granule of `start..start+count` is used.
    pub fn all_free(&self, start: u64, count: u64) -> bool {
        let groups = self.groups();
        (start..start + count).all(|at| {
            let group = lock(&groups[(at / GROUP_GRANULES) as usize]);
            !group.used(at % GROUP_GRANULES)
        })
    }

    /// Give an extent back. Returns false when some granule was free already
    /// (only a damaged map, whose extents overlap, can cause that).
    pub fn release(&self, start: u64, count: u64) -> bool {
        self.mark(start, count, false) == count
    }

    /// A run of `count` free granules, searched from the group `hint` picks.
    pub fn alloc(&self, count: u64, hint: u64) -> Option<u64> {
        if count == 0 || count > GROUP_GRANULES || self.free_granules() < count {
            return None;
        }
        let groups = self.groups();
        let n = groups.len() as u64;
        let first = hint % n;
        for i in 0..n {
            let index = (first + i) % n;
            if let Some(at) = lock(&groups[index as usize]).alloc(count) {
                self.free.fetch_sub(count, Ordering::Relaxed);
                return Some(index * GROUP_GRANULES + at);
            }
        }
        None
    }
}

fn lock(group: &Mutex<Group>) -> MutexGuard<'_, Group> {
    group.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn allocates_until_full_then_reuses_released_runs() {
        let a = Allocator::new(100);
        let mut got = Vec::new();
        while let Some(at) = a.alloc(8, 0) {
            got.push(at);
        }
        assert_eq!(got.len(), 12);
        assert_eq!(a.free_granules(), 4);
        assert_eq!(a.alloc(8, 0), None);
        assert_eq!(a.alloc(4, 0), Some(96));
        assert!(a.release(got[3], 8));
        assert!(!a.release(got[3], 1), "double release is reported");
        assert_eq!(a.alloc(8, 0), Some(got[3]));
        assert_eq!(a.free_granules(), 0);
    }

    #[test]
    fn runs_never_straddle_groups_and_hints_pick_groups() {
        let a = Allocator::new(GROUP_GRANULES * 2 + 10);
        assert_eq!(a.alloc(4, 1), Some(GROUP_GRANULES));
        assert_eq!(a.alloc(4, 2), Some(2 * GROUP_GRANULES));
        assert_eq!(a.alloc(16, 2), Some(0), "the small last group is skipped");
        assert!(!a.mark_used(0, 1), "overlap is reported");
        assert!(a.mark_used(100, 3));
        assert_eq!(a.free_granules(), GROUP_GRANULES * 2 + 10 - 27);
    }

    #[test]
    fn random_alloc_and_release_keep_counts_and_never_overlap() {
        let total = GROUP_GRANULES + 500;
        let a = Allocator::new(total);
        let mut owner = vec![false; total as usize];
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut rng = Rng::new(5);
        for _ in 0..20_000 {
            if rng.chance(55) {
                let count = 1 + rng.below(16);
                if let Some(at) = a.alloc(count, rng.below(4)) {
                    for g in at..at + count {
                        assert!(!owner[g as usize], "granule {g} handed out twice");
                        owner[g as usize] = true;
                    }
                    live.push((at, count));
                }
            } else if !live.is_empty() {
                let (at, count) = live.swap_remove(rng.below(live.len() as u64) as usize);
                assert!(a.release(at, count));
                for g in at..at + count {
                    owner[g as usize] = false;
                }
            }
            let used: u64 = live.iter().map(|l| l.1).sum();
            assert_eq!(a.free_granules(), total - used);
        }
    }

    #[test]
    fn growing_lengthens_the_last_group_then_adds_free_ones() {
        let a = Allocator::new(100);
        assert!(a.mark_used(0, 100));
        assert_eq!(a.alloc(1, 0), None);
        a.grow(GROUP_GRANULES + 40);
        assert_eq!(a.granules(), GROUP_GRANULES + 40);
        assert_eq!(a.free_granules(), GROUP_GRANULES + 40 - 100);
        assert_eq!(
            a.alloc(8, 0),
            Some(100),
            "the first group took the new space"
        );
        assert_eq!(a.alloc(40, 1), Some(GROUP_GRANULES));
        assert_eq!(a.alloc(1, 1), Some(108), "the new group is full");
        a.grow(10);
        assert_eq!(a.granules(), GROUP_GRANULES + 40, "never shrinks");
        assert!(a.release(GROUP_GRANULES, 40));
        assert!(a.all_free(GROUP_GRANULES, 40));
        assert_eq!(a.free_granules(), GROUP_GRANULES + 40 - 109);
    }
}

//! Which shard of every layer's counters a thread's requests count in.
//!
//! A layer's counters (`stats.rs`) are kept in shards. Each I/O context
//! ([`crate::IoCtx`], one per queue thread, never sent to another thread)
//! claims a shard of its own while it lives, so its counts are a plain load
//! and store, not a locked read-modify-write: two of those per layer per
//! request were a measurable part of a page-cache 4 KiB read. Contexts that
//! find every shard taken share the last one, where counts are atomic
//! additions, so no count is ever lost.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

/// Shards per layer; the last one is shared.
pub const SHARDS: usize = 32;
const SHARED: usize = SHARDS - 1;
/// Bit `i` set: shard `i` is claimed (never the shared one's bit).
static CLAIMED: AtomicU32 = AtomicU32::new(0);
const EXCLUSIVE: u32 = (1 << SHARED) - 1;

/// A shard of the counters, held by one context. Not `Send`: its counts
/// rely on only this thread writing the shard.
#[derive(Debug)]
pub struct CounterShard {
    index: usize,
    _one_thread: PhantomData<*const ()>,
}

impl CounterShard {
    /// A shard no other live context writes, or the shared one.
    pub fn claim() -> CounterShard {
        let mut claimed = CLAIMED.load(Ordering::Acquire);
        loop {
            let free = !claimed & EXCLUSIVE;
            if free == 0 {
                return CounterShard::shared();
            }
            let index = free.trailing_zeros();
            // Acquire: the last holder's counts, stored before its release,
            // are what this thread's loads see.
            match CLAIMED.compare_exchange_weak(
                claimed,
                claimed | 1 << index,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return CounterShard {
                        index: index as usize,
                        _one_thread: PhantomData,
                    }
                }
                Err(now) => claimed = now,
            }
        }
    }

    /// The shard every context may write (atomic additions).
    pub fn shared() -> CounterShard {
        CounterShard {
            index: SHARED,
            _one_thread: PhantomData,
        }
    }

    #[inline]
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether only this holder writes the shard.
    #[inline]
    pub fn is_exclusive(&self) -> bool {
        self.index != SHARED
    }
}

impl Drop for CounterShard {
    fn drop(&mut self) {
        if self.is_exclusive() {
            // Release: the next holder sees every count stored here.
            CLAIMED.fetch_and(!(1 << self.index), Ordering::Release);
        }
    }
}

//! Flush epochs: which writes a FLUSH covers.
//!
//! Every write of a table-keeping layer enters the current epoch for its whole
//! duration (table page and data). A FLUSH closes the epoch: writes that start
//! afterwards enter the next one at once, and the flush waits only for the
//! writes of the epochs it closed. So when that wait ends, every write that
//! belongs to the closed epoch has finished below, and a flush of the layer
//! below makes all of it durable. Like `AsyncLock` it suspends tasks, not
//! threads.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

pub struct Epochs {
    state: Mutex<State>,
    /// Writes started and finished (for readers that race a write).
    started: AtomicU64,
    finished: AtomicU64,
}

struct State {
    current: u64,
    /// Writes that entered the current epoch.
    entered: u64,
    /// Writes inside, per epoch (the current one and those being closed).
    inside: BTreeMap<u64, usize>,
    /// The newest epoch whose flush has ended, successfully or not. Epochs
    /// after it and before `current` are closed with their flush still running.
    ended: u64,
    waiters: Vec<Waker>,
}

/// A write inside its epoch; dropping it leaves.
pub struct Writer<'a> {
    epochs: &'a Epochs,
    pub epoch: u64,
}

impl Epochs {
    /// Start at epoch `current` (greater than every epoch on disk).
    pub fn new(current: u64) -> Epochs {
        Epochs {
            state: Mutex::new(State {
                current,
                entered: 0,
                inside: BTreeMap::new(),
                ended: current.saturating_sub(1),
                waiters: Vec::new(),
            }),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enter the current epoch (never waits).
    pub fn enter(&self) -> Writer<'_> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state();
        let epoch = state.current;
        state.entered += 1;
        *state.inside.entry(epoch).or_insert(0) += 1;
        Writer {
            epochs: self,
            epoch,
        }
    }

    /// Close the current epoch: later writes enter the next one. Returns the
    /// closed epoch and whether any write entered it.
    pub fn close(&self) -> (u64, bool) {
        let mut state = self.state();
        let closed = state.current;
        let wrote = state.entered > 0;
        state.current += 1;
        state.entered = 0;
        (closed, wrote)
    }

    /// Ready once no write of epoch `epoch` or older is inside.
    pub fn drained(&self, epoch: u64) -> Drained<'_> {
        Drained {
            epochs: self,
            epoch,
        }
    }

    /// The flush that closed `epoch` has ended (the caller ran it).
    pub fn flush_ended(&self, epoch: u64) {
        let waiters = {
            let mut state = self.state();
            state.ended = state.ended.max(epoch);
            std::mem::take(&mut state.waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }

    /// Ready once no flush is still running for `epoch`: either it ended, or
    /// `epoch` is still open (no flush has closed it yet).
    pub fn settled(&self, epoch: u64) -> Settled<'_> {
        Settled {
            epochs: self,
            epoch,
        }
    }

    /// Writes finished so far; with [`Epochs::raced_since`] a reader tells whether
    /// a write was in flight while it read.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    /// Whether a write was in flight at any time since [`Epochs::finished`]
    /// returned `finished`.
    pub fn raced_since(&self, finished: u64) -> bool {
        self.started.load(Ordering::SeqCst) > finished
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.epochs.state();
            if let Some(n) = state.inside.get_mut(&self.epoch) {
                *n -= 1;
                if *n == 0 {
                    state.inside.remove(&self.epoch);
                }
            }
            std::mem::take(&mut state.waiters)
        };
        self.epochs.finished.fetch_add(1, Ordering::SeqCst);
        for waker in waiters {
            waker.wake();
        }
    }
}

pub struct Drained<'a> {
    epochs: &'a Epochs,
    epoch: u64,
}

impl Future for Drained<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.epochs.state();
        if state.inside.range(..=self.epoch).next().is_none() {
            return Poll::Ready(());
        }
        if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            state.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

pub struct Settled<'a> {
    epochs: &'a Epochs,
    epoch: u64,
}

impl Future for Settled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.epochs.state();
        if self.epoch >= state.current || self.epoch <= state.ended {
            return Poll::Ready(());
        }
        if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            state.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(Mutex<bool>);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() = true;
        }
    }

    fn poll<F: Future + Unpin>(fut: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
        let waker = Waker::from(flag.clone());
        Pin::new(fut).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_close_waits_for_the_closed_epoch_only() {
        let epochs = Epochs::new(5);
        let flag = Arc::new(Flag(Mutex::new(false)));
        let old = epochs.enter();
        assert_eq!(old.epoch, 5);
        assert_eq!(epochs.close(), (5, true));
        let new = epochs.enter();
        assert_eq!(new.epoch, 6);
        let mut drained = epochs.drained(5);
        assert!(poll(&mut drained, &flag).is_pending());
        drop(old);
        assert!(*flag.0.lock().unwrap(), "the flush was woken");
        assert!(poll(&mut drained, &flag).is_ready());
        assert_eq!(epochs.close(), (6, true));
        assert!(poll(&mut epochs.drained(6), &flag).is_pending());
        drop(new);
        assert_eq!(epochs.close(), (7, false));
        assert!(poll(&mut epochs.drained(7), &flag).is_ready());
    }

    #[test]
    fn settled_waits_for_the_flush_that_closed_the_epoch() {
        let epochs = Epochs::new(3);
        let flag = Arc::new(Flag(Mutex::new(false)));
        assert!(
            poll(&mut epochs.settled(2), &flag).is_ready(),
            "before the start"
        );
        assert!(poll(&mut epochs.settled(3), &flag).is_ready(), "still open");
        assert_eq!(epochs.close(), (3, false));
        let mut settled = epochs.settled(3);
        assert!(poll(&mut settled, &flag).is_pending(), "its flush runs");
        epochs.flush_ended(3);
        assert!(*flag.0.lock().unwrap(), "the waiter was woken");
        assert!(poll(&mut settled, &flag).is_ready());
    }

    #[test]
    fn readers_see_writes_in_flight() {
        let epochs = Epochs::new(1);
        let before = epochs.finished();
        assert!(!epochs.raced_since(before));
        let w = epochs.enter();
        assert!(epochs.raced_since(before));
        drop(w);
        assert!(!epochs.raced_since(epochs.finished()));
    }
}

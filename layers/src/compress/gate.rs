//! A gate between map updates and the start of a flush.
//!
//! Map updates pass the gate (shared, many at once) while they choose a unit's
//! fallback and write its map page; a flush closes it (exclusive) to move to the
//! next epoch, which waits for the updates inside and holds new ones back. So an
//! update is wholly before a flush's epoch switch (and its page is in that
//! flush's dirty set) or wholly after. Like `AsyncLock` it suspends tasks, not
//! threads, and wakes every waiter on each change: there are few.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    inside: usize,
    closing: bool,
    waiters: Vec<Waker>,
}

impl State {
    fn wait(&mut self, waker: &Waker) {
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
    }
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut self.state().waiters);
        for waker in waiters {
            waker.wake();
        }
    }

    /// Pass the gate (shared).
    pub fn enter(&self) -> Enter<'_> {
        Enter { gate: self }
    }

    /// Close the gate (one closer at a time): ready once nobody is inside.
    pub fn close(&self) -> Close<'_> {
        Close {
            gate: self,
            started: false,
        }
    }
}

pub struct Enter<'a> {
    gate: &'a Gate,
}

pub struct Inside<'a> {
    gate: &'a Gate,
}

impl<'a> Future for Enter<'a> {
    type Output = Inside<'a>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Inside<'a>> {
        let mut state = self.gate.state();
        if state.closing {
            state.wait(cx.waker());
            return Poll::Pending;
        }
        state.inside += 1;
        Poll::Ready(Inside { gate: self.gate })
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.gate.state();
            state.inside -= 1;
            state.inside == 0
        };
        if last {
            self.gate.wake_all();
        }
    }
}

pub struct Close<'a> {
    gate: &'a Gate,
    started: bool,
}

pub struct Closed<'a> {
    gate: &'a Gate,
}

impl<'a> Future for Close<'a> {
    type Output = Closed<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Closed<'a>> {
        let gate = self.gate;
        let mut state = gate.state();
        debug_assert!(self.started || !state.closing, "one closer at a time");
        state.closing = true;
        self.started = true;
        if state.inside > 0 {
            state.wait(cx.waker());
            return Poll::Pending;
        }
        drop(state);
        // The guard reopens the gate from now on.
        self.started = false;
        Poll::Ready(Closed { gate })
    }
}

impl Drop for Close<'_> {
    fn drop(&mut self) {
        // Dropped while waiting: reopen, or entrants would wait for ever.
        if self.started {
            self.gate.state().closing = false;
            self.gate.wake_all();
        }
    }
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.gate.state().closing = false;
        self.gate.wake_all();
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
    fn closing_waits_for_those_inside_and_holds_back_new_ones() {
        let gate = Gate::default();
        let flag = Arc::new(Flag(Mutex::new(false)));
        let Poll::Ready(inside) = poll(&mut gate.enter(), &flag) else {
            panic!("open gate")
        };
        let mut close = gate.close();
        assert!(poll(&mut close, &flag).is_pending());
        assert!(poll(&mut gate.enter(), &flag).is_pending());
        drop(inside);
        assert!(*flag.0.lock().unwrap(), "the closer was woken");
        let Poll::Ready(closed) = poll(&mut close, &flag) else {
            panic!("nobody inside")
        };
        drop(closed);
        assert!(poll(&mut gate.enter(), &flag).is_ready());
    }

    #[test]
    fn a_dropped_closer_reopens_the_gate() {
        let gate = Gate::default();
        let flag = Arc::new(Flag(Mutex::new(false)));
        let Poll::Ready(_inside) = poll(&mut gate.enter(), &flag) else {
            panic!("open gate")
        };
        let mut close = gate.close();
        assert!(poll(&mut close, &flag).is_pending());
        drop(close);
        assert!(poll(&mut gate.enter(), &flag).is_ready());
    }
}

//! A lock that suspends the task, not the thread, usable across queues.
//!
//! Used to serialise writes of one metadata page: a queue that finds the page
//! being written waits as a task while its thread serves other requests. Unlock
//! wakes every waiter (there are few per page), so a waiter that was dropped while
//! queued can never strand the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct AsyncLock {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    locked: bool,
    waiters: Vec<Waker>,
}

pub struct Guard<'a> {
    lock: &'a AsyncLock,
}

impl AsyncLock {
    pub fn lock(&self) -> Lock<'_> {
        Lock { lock: self }
    }
}

pub struct Lock<'a> {
    lock: &'a AsyncLock,
}

impl<'a> Future for Lock<'a> {
    type Output = Guard<'a>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Guard<'a>> {
        let mut state = self.lock.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.locked {
            state.locked = true;
            return Poll::Ready(Guard { lock: self.lock });
        }
        if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            state.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.lock.state.lock().unwrap_or_else(|e| e.into_inner());
            state.locked = false;
            std::mem::take(&mut state.waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Executor, IoCtx};
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::Arc;

    #[test]
    fn tasks_take_turns() {
        let ctx = IoCtx::new(0, 16).unwrap();
        let exec = Executor::new().unwrap();
        let lock = Arc::new(AsyncLock::default());
        let inside = Rc::new(Cell::new(0));
        let done = Rc::new(Cell::new(0));
        for _ in 0..8 {
            let (lock, inside, done) = (lock.clone(), inside.clone(), done.clone());
            exec.spawn(async move {
                let _g = lock.lock().await;
                inside.set(inside.get() + 1);
                assert_eq!(inside.get(), 1);
                // Yield while holding the lock.
                let mut yielded = false;
                std::future::poll_fn(|cx| {
                    if yielded {
                        Poll::Ready(())
                    } else {
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
                inside.set(inside.get() - 1);
                done.set(done.get() + 1);
            });
        }
        exec.run_until_idle(&ctx).unwrap();
        assert_eq!(done.get(), 8);
    }
}

/// Many sharers or one exclusive holder. Sharers wait while an exclusive holder
/// is in; the exclusive side only ever *tries* (`try_exclusive`), so it can never
/// starve sharers and is used for opportunistic work such as repairs.
#[derive(Default)]
pub struct SharedLock {
    state: Mutex<SharedState>,
}

#[derive(Default)]
struct SharedState {
    sharers: usize,
    exclusive: bool,
    waiters: Vec<Waker>,
}

pub struct SharedGuard<'a> {
    lock: &'a SharedLock,
}

pub struct ExclusiveGuard<'a> {
    lock: &'a SharedLock,
}

impl SharedLock {
    /// Wait until no exclusive holder is in, then share.
    pub fn share(&self) -> impl Future<Output = SharedGuard<'_>> {
        std::future::poll_fn(move |cx| {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !state.exclusive {
                state.sharers += 1;
                return Poll::Ready(SharedGuard { lock: self });
            }
            if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    /// Take the lock alone if nobody holds it now.
    pub fn try_exclusive(&self) -> Option<ExclusiveGuard<'_>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.exclusive || state.sharers > 0 {
            return None;
        }
        state.exclusive = true;
        Some(ExclusiveGuard { lock: self })
    }
}

impl Drop for SharedGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.lock.state.lock().unwrap_or_else(|e| e.into_inner());
        state.sharers -= 1;
    }
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.lock.state.lock().unwrap_or_else(|e| e.into_inner());
            state.exclusive = false;
            std::mem::take(&mut state.waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

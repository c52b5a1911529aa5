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

//! The per-queue executor and I/O context.
//!
//! Each queue thread owns one [`IoCtx`] (its io_uring and buffer pool) and one
//! [`Executor`] with one task per in-flight request. A *turn* polls every woken
//! task (they push SQEs), submits them all with one syscall, sleeps until at least
//! one completion or cross-thread wake, and dispatches completions (waking their
//! tasks, or handing front-end CQEs back). Liveness: a task that returns `Pending`
//! has either an SQE in flight or a waker registered with shared state whose owner
//! will wake it; wakes from other threads interrupt the sleep through an eventfd
//! polled on the ring.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use io_uring::{opcode, types};

use crate::buf::{AlignedBuf, BufPool, IoBufMut};
use crate::uring::{Uring, FOREIGN_BIT};
use crate::LocalBoxFuture;

/// `user_data` of the executor's own eventfd poll.
const WAKE_TAG: u64 = FOREIGN_BIT | (FOREIGN_BIT - 2);
/// Task id of the future driven by [`Executor::block_on`].
const MAIN_TASK: usize = usize::MAX;

/// Everything a layer needs from the queue it runs on.
pub struct IoCtx {
    queue: u16,
    uring: Uring,
    pool: Rc<RefCell<BufPool>>,
}

impl IoCtx {
    /// A context for queue `queue` with a ring of `ring_entries` SQEs.
    pub fn new(queue: u16, ring_entries: u32) -> io::Result<IoCtx> {
        Ok(IoCtx {
            queue,
            uring: Uring::new(ring_entries)?,
            pool: Rc::default(),
        })
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }

    pub fn uring(&self) -> &Uring {
        &self.uring
    }

    /// An aligned buffer of `len` bytes from this queue's pool (contents unspecified).
    pub fn take_buf(&self, len: usize) -> AlignedBuf {
        self.pool.borrow_mut().take(len)
    }

    /// Return a buffer to this queue's pool.
    pub fn put_buf(&self, buf: AlignedBuf) {
        self.pool.borrow_mut().put(buf)
    }

    /// A request buffer of `len` bytes from this queue's pool (contents
    /// unspecified), aligned for O_DIRECT. Its memory goes back to the pool when
    /// the last handle on it, and the last operation holding it, are gone.
    pub fn buf(&self, len: usize) -> IoBufMut {
        IoBufMut::pooled(self.take_buf(len), self.pool.clone())
    }
}

struct Shared {
    ready: Mutex<Vec<usize>>,
    sleeping: AtomicBool,
    eventfd: File,
}

impl Shared {
    fn wake(&self, id: usize) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        if self.sleeping.load(Ordering::SeqCst) {
            // A failed write means the counter is already non-zero: the sleeper
            // wakes anyway.
            drop((&self.eventfd).write(&1u64.to_ne_bytes()));
        }
    }
}

struct TaskWaker {
    id: usize,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.shared.wake(self.id)
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.wake(self.id)
    }
}

/// A single-threaded executor for one queue.
pub struct Executor {
    tasks: RefCell<Vec<Option<LocalBoxFuture<'static, ()>>>>,
    wakers: RefCell<Vec<Waker>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
    shared: Arc<Shared>,
    main_waker: Waker,
    wake_armed: Cell<bool>,
    /// Scratch list swapped with the shared ready list each round.
    scratch: RefCell<Vec<usize>>,
}

impl Executor {
    pub fn new() -> io::Result<Executor> {
        let eventfd = File::from(new_eventfd()?);
        let shared = Arc::new(Shared {
            ready: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            eventfd,
        });
        let main_waker = Waker::from(Arc::new(TaskWaker {
            id: MAIN_TASK,
            shared: shared.clone(),
        }));
        Ok(Executor {
            tasks: RefCell::new(Vec::new()),
            wakers: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            live: Cell::new(0),
            shared,
            main_waker,
            wake_armed: Cell::new(false),
            scratch: RefCell::new(Vec::new()),
        })
    }

    /// Tasks spawned and not yet finished.
    pub fn live_tasks(&self) -> usize {
        self.live.get()
    }

    /// Start `fut` as a task; it is first polled on the next turn.
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        let fut: LocalBoxFuture<'static, ()> = Box::pin(fut);
        let id = match self.free.borrow_mut().pop() {
            Some(id) => {
                self.tasks.borrow_mut()[id] = Some(fut);
                id
            }
            None => {
                let mut tasks = self.tasks.borrow_mut();
                tasks.push(Some(fut));
                let id = tasks.len() - 1;
                self.wakers
                    .borrow_mut()
                    .push(Waker::from(Arc::new(TaskWaker {
                        id,
                        shared: self.shared.clone(),
                    })));
                id
            }
        };
        self.live.set(self.live.get() + 1);
        self.shared.wake(id);
    }

    /// Poll every woken task until none is woken. Returns whether the
    /// `block_on` future was woken.
    fn run_ready(&self) -> bool {
        let mut main_woken = false;
        loop {
            let mut batch = self.scratch.take();
            std::mem::swap(
                &mut batch,
                &mut *self.shared.ready.lock().unwrap_or_else(|e| e.into_inner()),
            );
            if batch.is_empty() {
                *self.scratch.borrow_mut() = batch;
                return main_woken;
            }
            for &id in &batch {
                if id == MAIN_TASK {
                    main_woken = true;
                    continue;
                }
                self.poll_task(id);
            }
            batch.clear();
            *self.scratch.borrow_mut() = batch;
        }
    }

    fn poll_task(&self, id: usize) {
        // Take the future out so it may spawn or wake tasks while it runs.
        let Some(mut fut) = self.tasks.borrow_mut().get_mut(id).and_then(Option::take) else {
            return; // a stale wake for a finished task
        };
        let waker = self.wakers.borrow()[id].clone();
        let mut cx = Context::from_waker(&waker);
        match fut.as_mut().poll(&mut cx) {
            Poll::Pending => self.tasks.borrow_mut()[id] = Some(fut),
            Poll::Ready(()) => {
                self.free.borrow_mut().push(id);
                self.live.set(self.live.get() - 1);
            }
        }
    }

    /// One turn for a front end whose own commands are in flight on the ring (the
    /// ublk FETCH / COMMIT commands, the NBD socket operations): run woken tasks,
    /// submit their SQEs, then wait for a completion (unless something is already
    /// runnable) and dispatch completions. Front-end CQEs go to `foreign`.
    /// `front_busy` says whether the front end has commands on the ring; it is
    /// asked after the woken tasks ran. The turn sleeps only if something can end
    /// the sleep: a live task (its CQE or a wake), a leaf operation, or a
    /// front-end command. A turn whose woken tasks finished the last task with
    /// nothing in flight returns at once, so the caller's loop sees it is done
    /// (a stop that arrives before the queue's first turn ends the last task in
    /// that turn). Returns whether the `block_on` future was woken.
    pub fn turn(
        &self,
        ctx: &IoCtx,
        front_busy: &dyn Fn() -> bool,
        foreign: &mut dyn FnMut(u64, i32),
    ) -> io::Result<bool> {
        self.turn_inner(ctx, front_busy, foreign)
    }

    fn turn_inner(
        &self,
        ctx: &IoCtx,
        front_busy: &dyn Fn() -> bool,
        foreign: &mut dyn FnMut(u64, i32),
    ) -> io::Result<bool> {
        let mut main_woken = self.run_ready();
        // Nothing on the ring could end a sleep now.
        let idle = self.live.get() == 0 && ctx.uring.in_flight() == 0 && !front_busy();
        let runnable = idle
            || main_woken
            || !self
                .shared
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        if runnable {
            ctx.uring.submit_and_wait(0)?;
        } else {
            self.arm_wake(ctx);
            self.shared.sleeping.store(true, Ordering::SeqCst);
            let woken = !self
                .shared
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            let res = ctx.uring.submit_and_wait(if woken { 0 } else { 1 });
            self.shared.sleeping.store(false, Ordering::SeqCst);
            res?;
        }
        ctx.uring.reap(&mut |user_data, res| {
            if user_data == WAKE_TAG {
                self.wake_armed.set(false);
                let mut counter = [0u8; 8];
                drop((&self.shared.eventfd).read(&mut counter));
            } else {
                foreign(user_data, res)
            }
        });
        main_woken |= self.run_ready();
        Ok(main_woken)
    }

    fn arm_wake(&self, ctx: &IoCtx) {
        if self.wake_armed.get() {
            return;
        }
        let entry = opcode::PollAdd::new(
            types::Fd(self.shared.eventfd.as_raw_fd()),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(WAKE_TAG);
        #[allow(unsafe_code)]
        // SAFETY: a poll SQE refers to no memory; the eventfd lives in `shared`,
        // which outlives the ring's use by this executor.
        unsafe {
            ctx.uring.push(&entry)
        };
        self.wake_armed.set(true);
    }

    /// Drive spawned tasks until every one has finished. Front-end CQEs are not
    /// expected here.
    pub fn run_until_idle(&self, ctx: &IoCtx) -> io::Result<()> {
        while self.live.get() > 0 {
            self.turn_inner(ctx, &|| false, &mut |user_data, _| {
                panic!("unexpected front-end CQE {user_data:#x} in run_until_idle")
            })?;
        }
        Ok(())
    }

    /// Drive `fut` (and every spawned task) on this thread until `fut` finishes.
    /// Panics if nothing can make progress, which is a bug in a layer.
    pub fn block_on<F: Future>(&self, ctx: &IoCtx, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        let mut woken = true;
        loop {
            if woken {
                let mut cx = Context::from_waker(&self.main_waker);
                if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                    return out;
                }
            }
            woken = self
                .turn_inner(ctx, &|| false, &mut |user_data, _| {
                    panic!("unexpected front-end CQE {user_data:#x} in block_on")
                })
                .expect("io_uring wait failed");
        }
    }
}

fn new_eventfd() -> io::Result<OwnedFd> {
    #[allow(unsafe_code)]
    // SAFETY: eventfd has no memory arguments; the result is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: fd was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn block_on_runs_spawned_tasks() {
        let ctx = IoCtx::new(0, 64).unwrap();
        let exec = Executor::new().unwrap();
        let counter = Rc::new(Cell::new(0));
        for _ in 0..10 {
            let counter = counter.clone();
            exec.spawn(async move { counter.set(counter.get() + 1) });
        }
        exec.block_on(
            &ctx,
            std::future::poll_fn(|cx| {
                if exec.live_tasks() == 0 {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }),
        );
        assert_eq!(counter.get(), 10);
        assert_eq!(exec.live_tasks(), 0);
    }

    #[test]
    fn wake_from_another_thread_interrupts_the_sleep() {
        let ctx = IoCtx::new(0, 64).unwrap();
        let exec = Executor::new().unwrap();
        let flag = Arc::new(AtomicBool::new(false));
        let waker_slot: Arc<Mutex<Option<Waker>>> = Arc::default();
        let (f2, w2) = (flag.clone(), waker_slot.clone());
        let helper = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            f2.store(true, Ordering::SeqCst);
            if let Some(w) = w2.lock().unwrap().take() {
                w.wake();
            }
        });
        exec.block_on(
            &ctx,
            std::future::poll_fn(|cx| {
                if flag.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                *waker_slot.lock().unwrap() = Some(cx.waker().clone());
                if flag.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                Poll::Pending
            }),
        );
        helper.join().unwrap();
    }

    /// A task that ends in the first turn (the NBD queue's inbox task when the
    /// stop comes before that turn) leaves nothing that could wake a sleep: the
    /// turn must return, not wait for a completion that never comes.
    #[test]
    fn a_turn_that_ends_the_last_task_does_not_sleep() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ctx = IoCtx::new(0, 8).unwrap();
            let exec = Executor::new().unwrap();
            exec.spawn(async {});
            while exec.live_tasks() > 0 {
                exec.turn(&ctx, &|| false, &mut |_, _| {}).unwrap();
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the turn slept with no task and nothing in flight");
    }

    /// While the front end has a command on the ring, a turn with no task
    /// sleeps until the command completes (one turn, not a spin) and hands its
    /// CQE back.
    #[test]
    fn a_turn_sleeps_on_the_front_ends_commands() {
        let ctx = IoCtx::new(0, 8).unwrap();
        let exec = Executor::new().unwrap();
        let tag = FOREIGN_BIT | 7;
        let spec = Box::new(types::Timespec::new().nsec(20_000_000));
        let entry = opcode::Timeout::new(&*spec).build().user_data(tag);
        #[allow(unsafe_code)]
        // SAFETY: the timespec is boxed and outlives the turns below, which
        // see its CQE.
        unsafe {
            ctx.uring.push(&entry)
        };
        let seen = Cell::new(None);
        let mut turns = 0;
        while seen.get().is_none() {
            turns += 1;
            exec.turn(&ctx, &|| seen.get().is_none(), &mut |user_data, res| {
                seen.set(Some((user_data, res)))
            })
            .unwrap();
        }
        assert_eq!(seen.get(), Some((tag, -libc::ETIME)));
        assert!(
            turns <= 2,
            "{turns} turns: the turn spun instead of sleeping"
        );
    }
}

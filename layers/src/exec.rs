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
use crate::counter_shard::CounterShard;
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
    counters: CounterShard,
}

impl IoCtx {
    /// A context for queue `queue` with a ring of `ring_entries` SQEs.
    pub fn new(queue: u16, ring_entries: u32) -> io::Result<IoCtx> {
        Ok(IoCtx {
            queue,
            uring: Uring::new(ring_entries)?,
            pool: Rc::default(),
            counters: CounterShard::claim(),
        })
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }

    pub fn uring(&self) -> &Uring {
        &self.uring
    }

    /// The shard of every layer's counters this context's requests count in.
    pub fn counter_shard(&self) -> &CounterShard {
        &self.counters
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
    /// Whether `ready` may hold ids: spares the executor the lock when no other
    /// thread woke anything (written under the lock).
    has_ready: AtomicBool,
    sleeping: AtomicBool,
    eventfd: File,
}

impl Shared {
    fn wake(&self, id: usize) {
        let local = LOCAL.with(|l| {
            if std::ptr::eq(l.running.get(), self) {
                l.ready.borrow_mut().push(id);
                true
            } else {
                false
            }
        });
        if local {
            return;
        }
        {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.push(id);
            self.has_ready.store(true, Ordering::SeqCst);
        }
        if self.sleeping.load(Ordering::SeqCst) {
            // A failed write means the counter is already non-zero: the sleeper
            // wakes anyway.
            drop((&self.eventfd).write(&1u64.to_ne_bytes()));
        }
    }
}

/// The executor in a turn on this thread, and the tasks woken on this thread
/// during that turn. Most wakes come from the queue's own thread (a CQE, a
/// layer's lock or channel) while its executor runs: they are a push here, with
/// no lock and no eventfd. Wakes from other threads, or for an executor not in
/// a turn here, take the shared list.
struct LocalWakes {
    running: Cell<*const Shared>,
    ready: RefCell<Vec<usize>>,
}

thread_local! {
    static LOCAL: LocalWakes = const {
        LocalWakes {
            running: Cell::new(std::ptr::null()),
            ready: RefCell::new(Vec::new()),
        }
    };
}

/// Makes `shared` the executor running on this thread until dropped; restores
/// the one before (an executor driven from inside another's task), and hands
/// any wake still in the local list to the shared one, so none is lost. The
/// local list's memory is the executor's `spare`, lent for the turn and given
/// back after, so that a turn's wakes do not grow a fresh list each time.
struct Running<'a> {
    shared: &'a Shared,
    spare: &'a RefCell<Vec<usize>>,
    prev: *const Shared,
    prev_ready: Vec<usize>,
}

impl<'a> Running<'a> {
    fn enter(shared: &'a Shared, spare: &'a RefCell<Vec<usize>>) -> Running<'a> {
        let mine = spare.take();
        let (prev, prev_ready) = LOCAL.with(|l| {
            (
                l.running.replace(shared),
                std::mem::replace(&mut *l.ready.borrow_mut(), mine),
            )
        });
        Running {
            shared,
            spare,
            prev,
            prev_ready,
        }
    }

    /// Move this thread's local wakes into `batch`.
    fn drain_into(&self, batch: &mut Vec<usize>) {
        LOCAL.with(|l| batch.append(&mut l.ready.borrow_mut()));
    }

    fn any_local(&self) -> bool {
        LOCAL.with(|l| !l.ready.borrow().is_empty())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut left = LOCAL.with(|l| {
            l.running.set(self.prev);
            std::mem::replace(
                &mut *l.ready.borrow_mut(),
                std::mem::take(&mut self.prev_ready),
            )
        });
        if !left.is_empty() {
            let mut ready = self.shared.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.append(&mut left);
            self.shared.has_ready.store(true, Ordering::SeqCst);
        }
        *self.spare.borrow_mut() = left;
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

struct Task {
    fut: Option<LocalBoxFuture<'static, ()>>,
    /// Kept across the task ids' reuse; `None` only while the task runs.
    waker: Option<Waker>,
}

/// A single-threaded executor for one queue.
pub struct Executor {
    tasks: RefCell<Vec<Task>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
    shared: Arc<Shared>,
    main_waker: Waker,
    wake_armed: Cell<bool>,
    /// Scratch list swapped with the shared ready list each round.
    scratch: RefCell<Vec<usize>>,
    /// The memory of this thread's local wake list while a turn runs.
    local_spare: RefCell<Vec<usize>>,
}

impl Executor {
    pub fn new() -> io::Result<Executor> {
        let eventfd = File::from(new_eventfd()?);
        let shared = Arc::new(Shared {
            ready: Mutex::new(Vec::new()),
            has_ready: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            eventfd,
        });
        let main_waker = Waker::from(Arc::new(TaskWaker {
            id: MAIN_TASK,
            shared: shared.clone(),
        }));
        Ok(Executor {
            tasks: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            live: Cell::new(0),
            shared,
            main_waker,
            wake_armed: Cell::new(false),
            scratch: RefCell::new(Vec::new()),
            local_spare: RefCell::new(Vec::new()),
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
                self.tasks.borrow_mut()[id].fut = Some(fut);
                id
            }
            None => {
                let mut tasks = self.tasks.borrow_mut();
                let id = tasks.len();
                tasks.push(Task {
                    fut: Some(fut),
                    waker: Some(Waker::from(Arc::new(TaskWaker {
                        id,
                        shared: self.shared.clone(),
                    }))),
                });
                id
            }
        };
        self.live.set(self.live.get() + 1);
        self.shared.wake(id);
    }

    /// Poll every woken task until none is woken. Returns whether the
    /// `block_on` future was woken.
    fn run_ready(&self, running: &Running<'_>) -> bool {
        let mut main_woken = false;
        loop {
            let mut batch = self.scratch.take();
            running.drain_into(&mut batch);
            if self.shared.has_ready.load(Ordering::SeqCst) {
                let mut shared = self.shared.ready.lock().unwrap_or_else(|e| e.into_inner());
                batch.append(&mut shared);
                self.shared.has_ready.store(false, Ordering::SeqCst);
            }
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
        // Take the future (and its waker, to lend it without a reference
        // count) out so that it may spawn or wake tasks while it runs.
        let (mut fut, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(task) = tasks.get_mut(id) else {
                return;
            };
            let Some(fut) = task.fut.take() else {
                return; // a stale wake for a finished task
            };
            let waker = task
                .waker
                .take()
                .expect("a task's waker is out only while it runs");
            (fut, waker)
        };
        let poll = fut.as_mut().poll(&mut Context::from_waker(&waker));
        let mut tasks = self.tasks.borrow_mut();
        tasks[id].waker = Some(waker);
        match poll {
            Poll::Pending => tasks[id].fut = Some(fut),
            Poll::Ready(()) => {
                drop(tasks);
                drop(fut);
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
        self.turn_inner(ctx, front_busy, &mut |user_data, res, _| {
            foreign(user_data, res)
        })
    }

    /// [`Executor::turn`], also passing each front-end CQE's flags.
    pub fn turn_with_flags(
        &self,
        ctx: &IoCtx,
        front_busy: &dyn Fn() -> bool,
        foreign: &mut dyn FnMut(u64, i32, u32),
    ) -> io::Result<bool> {
        self.turn_inner(ctx, front_busy, foreign)
    }

    fn turn_inner(
        &self,
        ctx: &IoCtx,
        front_busy: &dyn Fn() -> bool,
        foreign: &mut dyn FnMut(u64, i32, u32),
    ) -> io::Result<bool> {
        let running = Running::enter(&self.shared, &self.local_spare);
        let mut main_woken = self.run_ready(&running);
        // Nothing on the ring could end a sleep now.
        let idle = self.live.get() == 0 && ctx.uring.in_flight() == 0 && !front_busy();
        let runnable = idle
            || main_woken
            || running.any_local()
            || self.shared.has_ready.load(Ordering::SeqCst);
        if runnable {
            ctx.uring.submit_and_wait(0)?;
        } else {
            self.arm_wake(ctx);
            self.shared.sleeping.store(true, Ordering::SeqCst);
            // Only other threads wake tasks while this one sleeps.
            let woken = self.shared.has_ready.load(Ordering::SeqCst);
            let res = ctx.uring.submit_and_wait(if woken { 0 } else { 1 });
            self.shared.sleeping.store(false, Ordering::SeqCst);
            res?;
        }
        ctx.uring.reap_with_flags(&mut |user_data, res, flags| {
            if user_data == WAKE_TAG {
                self.wake_armed.set(false);
                let mut counter = [0u8; 8];
                drop((&self.shared.eventfd).read(&mut counter));
            } else {
                foreign(user_data, res, flags)
            }
        });
        main_woken |= self.run_ready(&running);
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
            self.turn_inner(ctx, &|| false, &mut |user_data, _, _| {
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
                .turn_inner(ctx, &|| false, &mut |user_data, _, _| {
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

    /// An executor driven from inside another's task (as `block_on` in a
    /// task does): wakes for the outer one made during the inner one's turn
    /// are not lost, and each executor runs only its own tasks.
    #[test]
    fn nested_executors_keep_their_wakes_apart() {
        // A lost wake makes the outer turn sleep for ever: run it on a thread
        // and give it a deadline.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            nested_executors_run();
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the outer task's wake was lost");
    }

    fn nested_executors_run() {
        let ctx = IoCtx::new(0, 64).unwrap();
        let outer = Rc::new(Executor::new().unwrap());
        let slot: Rc<RefCell<Option<Waker>>> = Rc::default();
        let flag = Rc::new(Cell::new(false));
        let (s2, f2) = (slot.clone(), flag.clone());
        // Waits until the flag is set, re-registering its waker each poll.
        outer.spawn(std::future::poll_fn(move |cx| {
            if f2.get() {
                return Poll::Ready(());
            }
            *s2.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }));
        let inner_ran = Rc::new(Cell::new(0));
        let (ir, s3, f3) = (inner_ran.clone(), slot.clone(), flag.clone());
        let ctx2 = IoCtx::new(1, 64).unwrap();
        outer.spawn(async move {
            let inner = Executor::new().unwrap();
            for _ in 0..5 {
                let ir = ir.clone();
                inner.spawn(async move { ir.set(ir.get() + 1) });
            }
            inner.block_on(&ctx2, async {
                // Wake the outer task from inside the inner executor's turn.
                f3.set(true);
                if let Some(w) = s3.borrow_mut().take() {
                    w.wake();
                }
            });
            inner.run_until_idle(&ctx2).unwrap();
        });
        let mut turns = 0;
        while outer.live_tasks() > 0 {
            turns += 1;
            assert!(turns < 100, "the outer task's wake was lost");
            outer.turn(&ctx, &|| false, &mut |_, _| {}).unwrap();
        }
        assert_eq!(inner_ran.get(), 5);
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

//! The io_uring engine of one queue: the only code in this crate that builds SQEs.
//!
//! Every leaf operation gets a slot in an in-flight table keyed by the SQE's
//! `user_data`. The slot holds the memory of the operation's request buffer (a
//! `buf::Hold`) until the CQE arrives, so a future dropped mid-I/O never lets
//! memory the kernel may still write be freed or go to a later request: its slot
//! becomes `Orphaned` and is released by the completion (the libublk-rs / crosvm
//! rule). Front ends may share the ring for their own commands (the ublk FETCH /
//! COMMIT commands): those carry [`FOREIGN_BIT`] in `user_data` and are handed back
//! by [`Uring::reap`].
//!
//! Zero copy: a request buffer the kernel registered in this ring's fixed-buffer
//! table (`buf.rs`) is read or written with READ_FIXED / WRITE_FIXED at its
//! table index, the address being the offset into the registered buffer. The
//! slot's hold is what keeps the front end from committing the request (which
//! unregisters the index) while such an operation is in flight.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};

use crate::buf::{Hold, IoBuf, IoBufMut};

/// `user_data` values with this bit set belong to the front end, not to a slot.
pub const FOREIGN_BIT: u64 = 1 << 63;

/// A leaf operation. A read or write names a range of a request buffer; the
/// ring holds that buffer's memory until the CQE (see `buf.rs`).
pub enum Op<'a> {
    Read {
        fd: RawFd,
        offset: u64,
        buf: &'a mut IoBufMut,
        range: Range<usize>,
    },
    Write {
        fd: RawFd,
        offset: u64,
        buf: &'a IoBuf,
        range: Range<usize>,
    },
    /// fdatasync (or fsync when `data_only` is false).
    Fsync { fd: RawFd, data_only: bool },
    Fallocate {
        fd: RawFd,
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// Complete after `nanos` nanoseconds (the CQE result is -ETIME).
    Sleep { nanos: u64 },
    /// A passthrough command with a 16-byte payload and no memory of ours
    /// (ublk's buffer registration commands).
    UringCmd16 {
        fd: RawFd,
        cmd_op: u32,
        cmd: [u8; 16],
    },
}

/// What the kernel may still read or write for an operation in flight.
// Only kept alive for the kernel, never read by us.
#[allow(dead_code)]
enum Held {
    Buf(Hold),
    Time(Box<types::Timespec>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Pending,
    Done,
    /// The future was dropped before the CQE; the memory waits for it here.
    Orphaned,
    /// Submitted with [`Uring::submit_notify`]: no future waits; the CQE frees
    /// the slot and its result goes to [`Uring::reap`]'s callback under the
    /// slot's `token`.
    Notify,
}

/// One operation's place in the in-flight table. Its fields are changed in
/// place, never moved as a whole: that is a few stores per step of a request.
struct Slot {
    state: State,
    /// The CQE result, once `Done`.
    res: i32,
    /// The next free slot, while `Free`.
    next: usize,
    /// The last task that waited here, kept for the next operation in the slot.
    /// A task that submits again as its operation completes gets the slot it
    /// just freed (the free list is last in, first out), so its waker is
    /// already there and is neither cloned nor dropped per operation.
    waker: Option<Waker>,
    /// What the kernel may still use, until the CQE.
    held: Option<Held>,
    /// What `reap` reports the CQE as, while `Notify`.
    token: u64,
}

const NO_SLOT: usize = usize::MAX;

/// One queue's io_uring and its in-flight table. Not `Sync`: it lives on one queue
/// thread.
pub struct Uring {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Slot>>,
    free_head: Cell<usize>,
    in_flight: Cell<usize>,
    backlog: RefCell<VecDeque<squeue::Entry>>,
}

fn submit_retrying(ring: &IoUring, wait: usize) -> io::Result<usize> {
    loop {
        match ring.submit_and_wait(wait) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            // The completion queue is backed up: the caller reaps, then comes back.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(0),
            other => return other,
        }
    }
}

impl Uring {
    pub fn new(entries: u32) -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| {
                // Kernels before 5.19 lack COOP_TASKRUN.
                IoUring::new(entries)
            })?;
        Ok(Uring {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free_head: Cell::new(NO_SLOT),
            in_flight: Cell::new(0),
            backlog: RefCell::new(VecDeque::new()),
        })
    }

    /// Operations submitted (or queued for submission) whose CQE has not arrived.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// The ring, for a front end that registers files or pushes its own commands.
    pub fn ring(&self) -> &RefCell<IoUring> {
        &self.ring
    }

    fn alloc_slot(&self, held: Option<Held>) -> usize {
        let mut slots = self.slots.borrow_mut();
        let head = self.free_head.get();
        if head == NO_SLOT {
            slots.push(Slot {
                state: State::Pending,
                res: 0,
                next: NO_SLOT,
                waker: None,
                held,
                token: 0,
            });
            slots.len() - 1
        } else {
            let slot = &mut slots[head];
            debug_assert_eq!(slot.state, State::Free, "free list points at a used slot");
            self.free_head.set(slot.next);
            slot.state = State::Pending;
            slot.held = held;
            head
        }
    }

    /// Put slot `index`, whose memory has been taken out, on the free list.
    fn free_slot(&self, slot: &mut Slot, index: usize) {
        slot.state = State::Free;
        slot.next = self.free_head.get();
        self.free_head.set(index);
    }

    /// Queue `op`; the returned future resolves to the CQE result (negative errno
    /// on failure).
    pub fn submit(&self, op: Op<'_>) -> OpFuture<'_> {
        let slot = self.start(op);
        OpFuture {
            uring: self,
            slot,
            finished: false,
        }
    }

    /// Queue `op` with no future to wait on it: its CQE frees the slot (and the
    /// memory it held) and is handed to [`Uring::reap`]'s callback as
    /// `(token, result)`, like a foreign CQE. For a front end that runs a
    /// request without a task (`direct.rs`); `token` must not collide with its
    /// own foreign `user_data`.
    pub fn submit_notify(&self, op: Op<'_>, token: u64) {
        let slot = self.start(op);
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[slot];
        slot.state = State::Notify;
        slot.token = token;
    }

    /// Build `op`'s SQE, give it a slot holding its memory and push it; returns
    /// the slot.
    fn start(&self, op: Op<'_>) -> usize {
        let (entry, buf) = match op {
            Op::Read {
                fd,
                offset,
                buf,
                range,
            } => {
                assert!(range.start <= range.end && range.end <= buf.len());
                let len = u32::try_from(range.len()).expect("leaf I/O under 4 GiB");
                let fixed = buf.fixed();
                let (ptr, hold) = buf.as_mut_ptr_held();
                let entry = match fixed {
                    // The address of a kernel-registered buffer is the offset
                    // into it.
                    Some((index, start)) => opcode::ReadFixed::new(
                        types::Fd(fd),
                        (start + range.start) as *mut u8,
                        len,
                        index,
                    )
                    .offset(offset)
                    .build(),
                    None => {
                        // SAFETY: range.start <= buf.len(), checked above.
                        let ptr = unsafe { ptr.add(range.start) };
                        opcode::Read::new(types::Fd(fd), ptr, len)
                            .offset(offset)
                            .build()
                    }
                };
                (entry, Some(Held::Buf(hold)))
            }
            Op::Write {
                fd,
                offset,
                buf,
                range,
            } => {
                assert!(range.start <= range.end && range.end <= buf.len());
                let len = u32::try_from(range.len()).expect("leaf I/O under 4 GiB");
                let fixed = buf.fixed();
                let (ptr, hold) = buf.as_ptr_held();
                let entry = match fixed {
                    Some((index, start)) => opcode::WriteFixed::new(
                        types::Fd(fd),
                        (start + range.start) as *const u8,
                        len,
                        index,
                    )
                    .offset(offset)
                    .build(),
                    None => {
                        // SAFETY: range.start <= buf.len(), checked above.
                        let ptr = unsafe { ptr.add(range.start) };
                        opcode::Write::new(types::Fd(fd), ptr, len)
                            .offset(offset)
                            .build()
                    }
                };
                (entry, Some(Held::Buf(hold)))
            }
            Op::Fsync { fd, data_only } => {
                let flags = if data_only {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                };
                (opcode::Fsync::new(types::Fd(fd)).flags(flags).build(), None)
            }
            Op::Fallocate {
                fd,
                mode,
                offset,
                len,
            } => (
                opcode::Fallocate::new(types::Fd(fd), len)
                    .offset(offset)
                    .mode(mode)
                    .build(),
                None,
            ),
            Op::Sleep { nanos } => {
                let time = Box::new(
                    types::Timespec::new()
                        .sec(nanos / 1_000_000_000)
                        .nsec((nanos % 1_000_000_000) as u32),
                );
                let entry = opcode::Timeout::new(&*time as *const types::Timespec).build();
                (entry, Some(Held::Time(time)))
            }
            Op::UringCmd16 { fd, cmd_op, cmd } => (
                opcode::UringCmd16::new(types::Fd(fd), cmd_op)
                    .cmd(cmd)
                    .build(),
                None,
            ),
        };
        let slot = self.alloc_slot(buf);
        let entry = entry.user_data(slot as u64);
        // SAFETY: the SQE points at a request buffer's memory (or names its
        // fixed-buffer index) or a timespec that slot `slot` holds (a `Hold`
        // keeps the memory, and a fixed buffer's registration, away from any
        // later request; the timespec is boxed) until `reap` sees this SQE's
        // CQE, even if the future is dropped. The fd belongs to a leaf of the
        // compiled stack, which outlives every queue's ring, or is a front
        // end's device, which it keeps open until its ring is gone.
        unsafe { self.push(&entry) };
        self.in_flight.set(self.in_flight.get() + 1);
        slot
    }

    /// Push an SQE. When the submission queue is full, what is there is handed to
    /// the kernel first; if it still has no room the entry waits in a backlog that
    /// [`Uring::submit_and_wait`] drains, so pushing never blocks or fails.
    ///
    /// # Safety
    /// Whatever memory and fds the entry refers to must stay valid until its CQE.
    pub unsafe fn push(&self, entry: &squeue::Entry) {
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() {
            let mut ring = self.ring.borrow_mut();
            // SAFETY: forwarded from the caller.
            if unsafe { ring.submission().push(entry) }.is_ok() {
                return;
            }
            if ring.submit().is_ok() {
                // SAFETY: forwarded from the caller.
                if unsafe { ring.submission().push(entry) }.is_ok() {
                    return;
                }
            }
        }
        backlog.push_back(entry.clone());
    }

    /// Submit queued SQEs and, if `wait` > 0, block until at least that many CQEs
    /// are ready.
    pub fn submit_and_wait(&self, wait: usize) -> io::Result<usize> {
        let mut ring = self.ring.borrow_mut();
        let mut backlog = self.backlog.borrow_mut();
        while let Some(entry) = backlog.front() {
            // SAFETY: entries in the backlog were pushed under `push`'s contract.
            if unsafe { ring.submission().push(entry) }.is_err() {
                submit_retrying(&ring, 0)?;
                continue;
            }
            backlog.pop_front();
        }
        submit_retrying(&ring, wait)
    }
    /// Handle every available CQE: finish leaf slots (waking their futures) and pass
    /// foreign ones (`user_data` with [`FOREIGN_BIT`]) to `foreign`. Returns how many
    /// CQEs were seen.
    pub fn reap(&self, foreign: &mut dyn FnMut(u64, i32)) -> usize {
        self.reap_with_flags(&mut |user_data, res, _| foreign(user_data, res))
    }

    /// [`Uring::reap`], also passing each foreign CQE's flags (multishot
    /// commands say with IORING_CQE_F_MORE whether more CQEs follow).
    pub fn reap_with_flags(&self, foreign: &mut dyn FnMut(u64, i32, u32)) -> usize {
        let mut seen = 0;
        loop {
            // Take a batch out so that wakers and `foreign` run without the ring
            // borrowed (they may push new SQEs).
            let mut batch: [(u64, i32, u32); 32] = [(0, 0, 0); 32];
            let mut n = 0;
            {
                let mut ring = self.ring.borrow_mut();
                for cqe in ring.completion() {
                    batch[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                    n += 1;
                    if n == batch.len() {
                        break;
                    }
                }
            }
            if n == 0 {
                return seen;
            }
            seen += n;
            for &(user_data, res, flags) in &batch[..n] {
                if user_data & FOREIGN_BIT != 0 {
                    foreign(user_data, res, flags);
                } else if let Some(token) = self.complete(user_data as usize, res) {
                    foreign(token, res, 0);
                }
            }
        }
    }

    /// Finish slot `index`'s operation; a `Notify` slot's token is returned, for
    /// the caller to report.
    fn complete(&self, index: usize, res: i32) -> Option<u64> {
        self.in_flight.set(self.in_flight.get() - 1);
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[index];
        match slot.state {
            State::Notify => {
                let (token, held) = (slot.token, slot.held.take());
                self.free_slot(slot, index);
                drop(slots);
                drop(held);
                return Some(token);
            }
            State::Pending => {
                slot.state = State::Done;
                slot.res = res;
                // Woken by reference, so that the waker stays with the slot
                // (see `Slot::waker`). A waker only queues its task (the
                // executor's, or a test's); none touches the ring.
                if let Some(waker) = &slot.waker {
                    waker.wake_by_ref();
                }
            }
            State::Orphaned => {
                let held = slot.held.take();
                self.free_slot(slot, index);
                drop(slots);
                drop(held);
            }
            State::Free | State::Done => {
                unreachable!("CQE for slot {index} that is not in flight")
            }
        }
        None
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still write into orphaned buffers: wait for every CQE
        // before the slots (and their buffers) are freed.
        if self.in_flight.get() > 0 {
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(FOREIGN_BIT | (FOREIGN_BIT - 1));
            // SAFETY: the cancel SQE refers to no memory.
            unsafe { self.push(&entry) };
        }
        while self.in_flight.get() > 0 {
            if self.submit_and_wait(1).is_err() {
                break;
            }
            self.reap(&mut |_, _| {});
        }
    }
}

/// Completion of one [`Op`]: the CQE result.
pub struct OpFuture<'a> {
    uring: &'a Uring,
    slot: usize,
    finished: bool,
}

impl Future for OpFuture<'_> {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slots = self.uring.slots.borrow_mut();
        let slot = &mut slots[self.slot];
        match slot.state {
            State::Pending => {
                match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Done => {
                let (res, held) = (slot.res, slot.held.take());
                self.uring.free_slot(slot, self.slot);
                drop(slots);
                self.finished = true;
                drop(held);
                Poll::Ready(res)
            }
            State::Free | State::Orphaned | State::Notify => unreachable!("polled a finished op"),
        }
    }
}

impl Drop for OpFuture<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut slots = self.uring.slots.borrow_mut();
        let slot = &mut slots[self.slot];
        match slot.state {
            // The kernel may still use the memory: it stays held until the CQE.
            State::Pending => slot.state = State::Orphaned,
            State::Done => {
                let held = slot.held.take();
                self.uring.free_slot(slot, self.slot);
                drop(slots);
                drop(held);
            }
            State::Free | State::Orphaned | State::Notify => {}
        }
    }
}

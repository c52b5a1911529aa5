//! What one NBD queue thread's tasks share: its ring, executor and buffer
//! pool ([`Queue`]); its [`Inbox`], through which connections past their
//! handshake and [`Job`]s offloaded by other queue threads arrive (a
//! mutex-guarded list plus the waker of the queue's inbox task, so a hand-off
//! interrupts the queue's sleep through the executor's eventfd).

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use layers::buf::AlignedBuf;
use layers::{Executor, IoCtx, Stack};

use super::handshake::Negotiated;
use super::limits::{Limits, Permit};
use super::request::Action;
use super::ring::SocketRing;

/// Buffers up to this size go back to the queue's pool; bigger ones (rare
/// large READs and WRITEs) are freed.
const POOLED_BUF_BYTES: usize = 1 << 20;

/// State of one queue thread, shared by its tasks.
pub struct Queue {
    pub ctx: IoCtx,
    pub exec: Executor,
    pub sockets: SocketRing,
    pub stack: Arc<Stack>,
    pub limits: Limits,
    /// Every queue's inbox (this one's at `ctx.queue()`), for offloaded jobs.
    peers: Vec<Arc<Inbox>>,
    next_peer: Cell<usize>,
}

impl Queue {
    /// Queue thread `index`'s state, with a ring of `entries`; `peers` holds
    /// every queue's inbox.
    pub fn new(
        index: u16,
        entries: u32,
        stack: Arc<Stack>,
        limits: Limits,
        peers: Vec<Arc<Inbox>>,
    ) -> io::Result<Queue> {
        Ok(Queue {
            ctx: IoCtx::new(index, entries)?,
            exec: Executor::new()?,
            sockets: SocketRing::default(),
            stack,
            limits,
            peers,
            next_peer: Cell::new(0),
        })
    }

    /// A buffer of `len` bytes from the queue's pool.
    pub fn take_buf(&self, len: usize) -> AlignedBuf {
        if len <= POOLED_BUF_BYTES {
            self.ctx.take_buf(len)
        } else {
            AlignedBuf::new(len)
        }
    }

    pub fn recycle(&self, buf: AlignedBuf) {
        if buf.capacity() <= POOLED_BUF_BYTES {
            self.ctx.put_buf(buf);
        }
    }

    /// Hand `job` to the next other queue thread; the job back if there is
    /// none or it is stopping.
    pub fn offload(&self, job: Job) -> Result<(), Job> {
        let others = self.peers.len().saturating_sub(1);
        if others == 0 {
            return Err(job);
        }
        let me = usize::from(self.ctx.queue());
        let step = 1 + self.next_peer.get() % others;
        self.next_peer.set(self.next_peer.get().wrapping_add(1));
        self.peers[(me + step) % self.peers.len()].push_job(job)
    }
}

/// Connections waiting for a queue thread, and that thread's waker.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    /// Sockets past their handshake, with what each negotiated and its
    /// place in the connection count.
    sockets: VecDeque<(OwnedFd, Negotiated, Permit)>,
    jobs: VecDeque<Job>,
    waker: Option<Waker>,
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hand a connection to the queue; false (and the socket is closed) once
    /// the queue is stopping.
    pub fn push(&self, socket: OwnedFd, negotiated: Negotiated, permit: Permit) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.sockets.push_back((socket, negotiated, permit));
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        true
    }

    /// Hand a job to the queue; the job back once the queue is stopping.
    fn push_job(&self, job: Job) -> Result<(), Job> {
        let mut state = self.lock();
        if state.closed {
            return Err(job);
        }
        state.jobs.push_back(job);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Wait for sockets or jobs, or the close: what arrived, and whether the
    /// inbox is closed.
    pub async fn take(&self) -> Arrivals {
        poll_fn(|cx| {
            let mut state = self.lock();
            if state.sockets.is_empty() && state.jobs.is_empty() && !state.closed {
                state.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Arrivals {
                sockets: std::mem::take(&mut state.sockets),
                jobs: std::mem::take(&mut state.jobs),
                closed: state.closed,
            })
        })
        .await
    }
}

/// What [`Inbox::take`] hands over.
pub struct Arrivals {
    pub sockets: VecDeque<(OwnedFd, Negotiated, Permit)>,
    pub jobs: VecDeque<Job>,
    pub closed: bool,
}

/// A READ or WRITE handed to another queue thread.
pub struct Job {
    pub action: Action,
    pub buf: AlignedBuf,
    pub done: Arc<JobDone>,
}

/// What a job hands back: the stack's result and the buffer.
type Finished = (layers::Result<()>, AlignedBuf);

/// Where the other thread leaves the result, and the waker of the task
/// waiting for it.
#[derive(Default)]
pub struct JobDone {
    state: Mutex<(Option<Finished>, Option<Waker>)>,
}

impl JobDone {
    pub fn complete(&self, result: layers::Result<()>, buf: AlignedBuf) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = Some((result, buf));
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    }

    pub async fn wait(&self) -> Finished {
        poll_fn(|cx| {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match state.0.take() {
                Some(done) => Poll::Ready(done),
                None => {
                    state.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

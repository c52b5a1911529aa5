//! The NBD server: the listener and accept thread of [`super::accept`], and
//! one thread per queue of the config.
//!
//! Each queue thread owns an [`IoCtx`] (its io_uring) and an [`Executor`], like
//! a ublk queue, and serves the connections handed to it: after its handshake a
//! connection goes to the next queue round-robin, through that queue's
//! [`Inbox`] (a mutex-guarded list plus the waker of the queue's inbox task, so
//! the hand-off interrupts the queue's sleep through the executor's eventfd).
//!
//! Stopping: the accept thread is told to stop (and woken by a connection of
//! our own), then every inbox is closed; each queue stops reading from its
//! connections, lets the requests in flight finish and their replies go out,
//! closes the sockets and ends. The caller then flushes the stack.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use layers::uring::AlignedBuf;
use layers::{Executor, IoCtx, Stack};

use super::accept::{accept_loop, Address, HandOff, Listener};
use super::conn::{self, Conn};
use super::handshake::{Export, Negotiated};
use super::limits::{Limits, Permit};
use super::offload::{run_job, Job};
use super::ring::SocketRing;

/// Buffers up to this size go back to the queue's pool; bigger ones (rare
/// large READs and WRITEs) are freed.
const POOLED_BUF_BYTES: usize = 1 << 20;
/// How long a stop waits for connections to drain before shutting their
/// sockets down (a client that stopped reading its replies must not keep the
/// daemon up).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// State of one queue thread, shared by its tasks.
pub struct Queue {
    pub ctx: IoCtx,
    pub exec: Executor,
    pub sockets: SocketRing,
    pub stack: Arc<Stack>,
    pub limits: Limits,
    conns: RefCell<Vec<Weak<Conn>>>,
    stopping: Cell<bool>,
    /// Every queue's inbox (this one's at `ctx.queue()`), for offloaded jobs.
    peers: Vec<Arc<Inbox>>,
    next_peer: Cell<usize>,
    /// The stop's grace timer, cancelled when the last connection ends.
    grace_timer: Cell<Option<u64>>,
}

impl Queue {
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

    /// A connection ended: drop it from the list `stop` walks.
    pub fn forget(&self, conn: &Rc<Conn>) {
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| c.upgrade().is_some_and(|c| !Rc::ptr_eq(&c, conn)));
        if conns.is_empty() {
            if let Some(token) = self.grace_timer.take() {
                self.sockets.cancel(&self.ctx, token);
            }
        }
    }

    fn live_conns(&self) -> Vec<Rc<Conn>> {
        self.conns
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
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
    fn push(&self, socket: OwnedFd, negotiated: Negotiated, permit: Permit) -> bool {
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

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// Run one queue thread until its inbox is closed and its connections are done.
fn run_queue(
    index: u16,
    stack: Arc<Stack>,
    peers: Vec<Arc<Inbox>>,
    limits: Limits,
) -> io::Result<()> {
    let inbox = peers[usize::from(index)].clone();
    // Room for the connections' sends and receives plus the leaves' I/O;
    // overflow waits in the engine's backlog.
    let entries = (limits.max_in_flight.min(2048) as u32 * 2)
        .next_power_of_two()
        .clamp(64, 4096);
    let queue = Rc::new(Queue {
        ctx: IoCtx::new(index, entries)?,
        exec: Executor::new()?,
        sockets: SocketRing::default(),
        stack,
        limits,
        conns: RefCell::new(Vec::new()),
        stopping: Cell::new(false),
        peers,
        next_peer: Cell::new(0),
        grace_timer: Cell::new(None),
    });
    queue.exec.spawn(take_connections(queue.clone(), inbox));
    while queue.exec.live_tasks() > 0 || queue.sockets.in_flight() > 0 {
        queue.exec.turn(&queue.ctx, &mut |user_data, res| {
            queue.sockets.complete(user_data, res)
        })?;
    }
    Ok(())
}

/// The queue's inbox task: start a connection for every socket handed over;
/// when the inbox closes, stop every connection.
async fn take_connections(queue: Rc<Queue>, inbox: Arc<Inbox>) {
    loop {
        let (sockets, jobs, closed) = poll_fn(|cx| {
            let mut state = inbox.lock();
            if state.sockets.is_empty() && state.jobs.is_empty() && !state.closed {
                state.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready((
                std::mem::take(&mut state.sockets),
                std::mem::take(&mut state.jobs),
                state.closed,
            ))
        })
        .await;
        for job in jobs {
            queue.exec.spawn(run_job(queue.clone(), job));
        }
        for (socket, negotiated, permit) in sockets {
            let conn = Rc::new(Conn::new(socket, negotiated, permit));
            queue.conns.borrow_mut().push(Rc::downgrade(&conn));
            queue.exec.spawn(conn::run(queue.clone(), conn));
        }
        if closed {
            queue.stopping.set(true);
            for conn in queue.live_conns() {
                conn.stop(&queue);
            }
            queue.exec.spawn(close_after_grace(queue.clone()));
            return;
        }
    }
}

/// During a stop: after [`STOP_GRACE`], shut down the sockets of connections
/// still draining. Ends at once when none is left.
async fn close_after_grace(queue: Rc<Queue>) {
    if queue.live_conns().is_empty() {
        return;
    }
    let timer = queue.sockets.sleep(&queue.ctx, STOP_GRACE);
    queue.grace_timer.set(Some(timer.token()));
    let (res, _) = timer.await;
    queue.grace_timer.set(None);
    if res == -libc::ECANCELED {
        return;
    }
    for conn in queue.live_conns() {
        tracing::warn!(
            queue = queue.ctx.queue(),
            "NBD: a connection did not drain in time; closing it"
        );
        conn.force_close(&queue).await;
    }
}

/// A running server.
pub struct Server {
    listener: Arc<Listener>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    inboxes: Vec<Arc<Inbox>>,
    queues: Vec<JoinHandle<io::Result<()>>>,
    local_addr: Option<std::net::SocketAddr>,
}

impl Server {
    /// Bind `address` and start the accept thread and `queues` queue threads.
    pub fn start(
        address: &Address,
        stack: Arc<Stack>,
        queues: u16,
        limits: Limits,
        name: &str,
    ) -> Result<Server, String> {
        let listener = Arc::new(Listener::bind(address)?);
        let local_addr = listener.local_addr();
        let export = Arc::new(Export {
            name: name.to_string(),
            size_bytes: stack.size(),
            block_size: stack.block_size(),
        });
        let inboxes: Vec<Arc<Inbox>> = (0..queues.max(1)).map(|_| Arc::default()).collect();
        let mut threads = Vec::new();
        for index in 0..queues.max(1) {
            let (stack, peers) = (stack.clone(), inboxes.clone());
            let thread = std::thread::Builder::new()
                .name(format!("nbd-queue-{index}"))
                .spawn(move || {
                    let result = run_queue(index, stack, peers, limits);
                    if let Err(e) = &result {
                        tracing::error!(queue = index, "NBD queue failed: {e}");
                    }
                    result
                })
                .map_err(|e| format!("starting queue thread: {e}"))?;
            threads.push(thread);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (listener, stop) = (listener.clone(), stop.clone());
            let hand_off = hand_off_round_robin(inboxes.clone());
            std::thread::Builder::new()
                .name("nbd-accept".into())
                .spawn(move || accept_loop(&listener, &stop, &export, limits, &hand_off))
                .map_err(|e| format!("starting accept thread: {e}"))?
        };
        Ok(Server {
            listener,
            stop,
            acceptor: Some(acceptor),
            inboxes,
            queues: threads,
            local_addr,
        })
    }

    /// The TCP address actually bound (the port when 0 was asked for).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local_addr
    }

    /// Whether a queue thread ended without being asked to.
    pub fn any_queue_ended(&self) -> bool {
        self.queues.iter().any(JoinHandle::is_finished)
    }

    /// Stop accepting, drain every connection, and wait for the queue threads.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        self.listener.poke();
        if let Some(acceptor) = self.acceptor.take() {
            drop(acceptor.join());
        }
        for inbox in &self.inboxes {
            inbox.close();
        }
        let mut failed = Vec::new();
        for (index, thread) in self.queues.drain(..).enumerate() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(format!("queue {index}: {e}")),
                Err(_) => failed.push(format!("queue {index} panicked")),
            }
        }
        if let Some(path) = self.listener.path() {
            drop(std::fs::remove_file(path));
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// Hand connections past their handshake to the queues in turn.
fn hand_off_round_robin(inboxes: Vec<Arc<Inbox>>) -> Arc<HandOff> {
    let next = AtomicUsize::new(0);
    Arc::new(move |socket, negotiated, permit| {
        let queue = next.fetch_add(1, Ordering::Relaxed) % inboxes.len();
        if !inboxes[queue].push(socket, negotiated, permit) {
            tracing::debug!("NBD: connection arrived while stopping; closed");
        }
    })
}

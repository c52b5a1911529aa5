//! The NBD server: the listener and accept thread of [`super::accept`], and
//! one thread per queue of the config.
//!
//! Each queue thread owns a [`Queue`] (its io_uring and executor), like a ublk
//! queue, and serves the connections handed to it: after its handshake a
//! connection goes to the next queue round-robin, through that queue's
//! [`Inbox`].
//!
//! Stopping: the accept thread is told to stop (and woken by a connection of
//! our own), then every inbox is closed; each queue stops reading from its
//! connections, lets the requests in flight finish and their replies go out,
//! closes the sockets and ends. The caller then flushes the stack.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use layers::Stack;

use super::accept::{accept_loop, Address, HandOff, Listener};
use super::conn::{self, Conn};
use super::handshake::Export;
use super::limits::{ConnectionCounts, Connections, Limits};
use super::offload::run_job;
use super::queue::{Inbox, Queue};

/// How long a stop waits for connections to drain before shutting their
/// sockets down (a client that stopped reading its replies must not keep the
/// daemon up).
const STOP_GRACE: Duration = Duration::from_secs(10);

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
    let queue = Rc::new(Queue::new(index, entries, stack, limits, peers)?);
    queue
        .exec
        .spawn(take_connections(queue.clone(), inbox, Rc::default()));
    while queue.exec.live_tasks() > 0 || queue.sockets.in_flight() > 0 {
        queue.exec.turn(
            &queue.ctx,
            &|| queue.sockets.in_flight() > 0,
            &mut |user_data, res| queue.sockets.complete(user_data, res),
        )?;
    }
    Ok(())
}

/// The connections of one queue thread, for a stop to walk.
#[derive(Default)]
struct Conns {
    list: RefCell<Vec<Weak<Conn>>>,
    /// The stop's grace timer, cancelled when the last connection ends.
    grace_timer: Cell<Option<u64>>,
}

impl Conns {
    fn live(&self) -> Vec<Rc<Conn>> {
        self.list
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// A connection ended: drop it from the list.
    fn forget(&self, queue: &Queue, conn: &Rc<Conn>) {
        let mut list = self.list.borrow_mut();
        list.retain(|c| c.upgrade().is_some_and(|c| !Rc::ptr_eq(&c, conn)));
        if list.is_empty() {
            if let Some(token) = self.grace_timer.take() {
                queue.sockets.cancel(&queue.ctx, token);
            }
        }
    }
}

/// The queue's inbox task: start a connection for every socket handed over,
/// and a task for every job; when the inbox closes, stop every connection.
async fn take_connections(queue: Rc<Queue>, inbox: Arc<Inbox>, conns: Rc<Conns>) {
    loop {
        let arrivals = inbox.take().await;
        for job in arrivals.jobs {
            queue.exec.spawn(run_job(queue.clone(), job));
        }
        for (socket, negotiated, permit) in arrivals.sockets {
            let conn = Rc::new(Conn::new(socket, negotiated, permit));
            conns.list.borrow_mut().push(Rc::downgrade(&conn));
            queue
                .exec
                .spawn(serve_connection(queue.clone(), conn, conns.clone()));
        }
        if arrivals.closed {
            for conn in conns.live() {
                conn.stop(&queue);
            }
            queue.exec.spawn(close_after_grace(queue.clone(), conns));
            return;
        }
    }
}

async fn serve_connection(queue: Rc<Queue>, conn: Rc<Conn>, conns: Rc<Conns>) {
    conn::run(queue.clone(), conn.clone()).await;
    conns.forget(&queue, &conn);
    // The last reference: the socket closes, after every operation on it.
    drop(conn);
    // What the connection's requests and replies held is free now; hand it
    // back to the system, or the daemon stays as large as its busiest client
    // made it.
    layers::release_free_memory();
}

/// During a stop: after [`STOP_GRACE`], shut down the sockets of connections
/// still draining. Ends at once when none is left.
async fn close_after_grace(queue: Rc<Queue>, conns: Rc<Conns>) {
    if conns.live().is_empty() {
        return;
    }
    let timer = queue.sockets.sleep(&queue.ctx, STOP_GRACE);
    conns.grace_timer.set(Some(timer.token()));
    let (res, _) = timer.await;
    conns.grace_timer.set(None);
    if res == -libc::ECANCELED {
        return;
    }
    for conn in conns.live() {
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
    connections: Arc<Connections>,
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
        // Each new client is told the size the device has then: a grown
        // device (a reload) shows to clients that connect after it.
        let export = {
            let (name, stack) = (name.to_string(), stack.clone());
            move || Export {
                name: name.clone(),
                size_bytes: stack.size(),
                block_size: stack.block_size(),
            }
        };
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
        let connections = Arc::new(Connections::default());
        let acceptor = {
            let (listener, stop) = (listener.clone(), stop.clone());
            let hand_off = hand_off_round_robin(inboxes.clone());
            let connections = connections.clone();
            std::thread::Builder::new()
                .name("nbd-accept".into())
                .spawn(move || {
                    accept_loop(&listener, &stop, &export, limits, &connections, &hand_off);
                })
                .map_err(|e| format!("starting accept thread: {e}"))?
        };
        Ok(Server {
            listener,
            stop,
            acceptor: Some(acceptor),
            inboxes,
            queues: threads,
            local_addr,
            connections,
        })
    }

    /// A way to read the connection counts while the server runs (for the
    /// metrics endpoint).
    pub fn connection_counts(&self) -> impl Fn() -> ConnectionCounts + Send + Sync + 'static {
        let connections = self.connections.clone();
        move || connections.counts()
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

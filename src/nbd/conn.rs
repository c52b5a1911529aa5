//! One NBD connection in the transmission phase, on its queue thread.
//!
//! Two tasks per connection. The *reader* receives into a 256 KiB buffer and
//! parses every complete request in it (one recv often carries a whole batch
//! from a client with a deep queue), checks each one, and spawns one task per
//! request on the queue's executor; requests run concurrently and finish in
//! any order. Each request task queues its reply and wakes the *writer*, which
//! runs after the executor's current batch of tasks, so the replies finished
//! in one turn go out in one sendmsg.
//!
//! With structured replies negotiated, a READ is answered with one
//! OFFSET_DATA chunk (its buffer still sent as it is, after the chunk header)
//! or one ERROR chunk; every other command keeps the simple reply, which the
//! protocol allows for replies without payload. BLOCK_STATUS (only with
//! `base:allocation` selected) gets one BLOCK_STATUS chunk.
//!
//! Bounds: a request is in flight from the moment its header is read until
//! its reply has been sent, so replies waiting for a client that does not
//! read them count. At most `max_in_flight` requests and
//! `max_in_flight_bytes` of their payload (WRITE data received, READ data
//! produced) are in flight per connection; at either limit the reader stops
//! reading until a reply goes out, so a client cannot make the daemon buffer
//! without limit: it gets backpressure instead.
//!
//! Ending: on EOF, a receive error, NBD_CMD_DISC, a bad magic, or a server stop,
//! the reader stops; the requests in flight finish and their replies are sent
//! (after a stop, requests already received get ESHUTDOWN); then the writer
//! closes the socket. The socket is closed only after every operation on it has
//! completed.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};

use layers::buf::AlignedBuf;
use layers::Layer;

use super::handshake::Negotiated;
use super::limits::{Limits, Permit};
use super::offload::transfer;
use super::proto::{self, Request, REQUEST_BYTES};
use super::queue::Queue;
use super::request::{allocation_descriptors, check, status_end, Action};
use super::ring::{Outgoing, Owned, Reply};

/// Receive buffer of each connection: room for a few hundred request headers.
const RECV_BUF_BYTES: usize = 256 << 10;
/// Largest piece of TRIM / WRITE_ZEROES handed to the stack at once (the ublk
/// front end's limit for those).
const ZERO_PIECE_BYTES: u64 = 64 << 20;

/// A single-threaded wake-up flag with one waiter.
#[derive(Default)]
pub struct Notify {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves once `notify` was called since the last wait returned.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.flag.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// State shared by a connection's tasks (all on one queue thread).
pub struct Conn {
    socket: OwnedFd,
    negotiated: Negotiated,
    /// Requests read whose reply is not sent yet, and their payload bytes.
    in_flight: Cell<usize>,
    in_flight_bytes: Cell<u64>,
    /// Replies queued for the writer.
    pending: RefCell<Vec<Reply>>,
    /// Wakes the writer: a reply is queued, or the reader finished.
    writer_wake: Notify,
    /// Wakes the reader: a request finished (credit is back).
    reader_wake: Notify,
    reader_done: Cell<bool>,
    /// Set by the writer as it ends, after the last send.
    closed: Notify,
    /// The client is gone (a send failed): replies are dropped.
    broken: Cell<bool>,
    /// The server is stopping: read no more.
    stopping: Cell<bool>,
    /// The reader's receive in flight, to cancel on stop.
    recv_token: Cell<Option<u64>>,
    /// This connection's place in the server's count, freed with it.
    _permit: Permit,
}

impl Conn {
    pub fn new(socket: OwnedFd, negotiated: Negotiated, permit: Permit) -> Conn {
        Conn {
            socket,
            negotiated,
            in_flight: Cell::new(0),
            in_flight_bytes: Cell::new(0),
            pending: RefCell::new(Vec::new()),
            writer_wake: Notify::default(),
            reader_wake: Notify::default(),
            reader_done: Cell::new(false),
            closed: Notify::default(),
            broken: Cell::new(false),
            stopping: Cell::new(false),
            recv_token: Cell::new(None),
            _permit: permit,
        }
    }

    /// Wait until one more request of `bytes` fits within `limits`, and count
    /// it. One request larger than the byte limit still runs, alone.
    async fn acquire(&self, limits: &Limits, bytes: u64) {
        while self.in_flight.get() >= limits.max_in_flight
            || (self.in_flight.get() > 0
                && self.in_flight_bytes.get() + bytes > limits.max_in_flight_bytes)
        {
            self.reader_wake.wait().await;
        }
        self.in_flight.set(self.in_flight.get() + 1);
        self.in_flight_bytes.set(self.in_flight_bytes.get() + bytes);
    }

    /// A request counted by `acquire` is done: its reply was sent or dropped.
    fn release(&self, bytes: u64) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.in_flight_bytes.set(self.in_flight_bytes.get() - bytes);
        self.reader_wake.notify();
    }

    /// Stop reading (server shutdown): cancel the receive in flight, if any.
    pub fn stop(&self, queue: &Queue) {
        self.stopping.set(true);
        if let Some(token) = self.recv_token.get() {
            queue.sockets.cancel(&queue.ctx, token);
        }
    }

    /// Shut the socket down (a stop's grace period ran out): receives and
    /// sends in flight fail, and the connection ends.
    pub async fn force_close(&self, queue: &Queue) {
        queue
            .sockets
            .shutdown(&queue.ctx, self.socket.as_raw_fd())
            .await;
    }

    /// Queue a reply: `header` then `data` as they are; its request counted
    /// `charge` bytes.
    fn queue_reply(&self, header: &[u8], data: Option<AlignedBuf>, charge: u64) {
        if self.broken.get() {
            self.release(charge);
        } else {
            let reply = Reply::new(header, data).charged(charge);
            self.pending.borrow_mut().push(reply);
        }
        self.writer_wake.notify();
    }

    /// A simple reply (to anything but a READ when structured replies are on).
    fn reply(&self, cookie: u64, error: u32, charge: u64) {
        self.queue_reply(&proto::simple_reply(cookie, error), None, charge);
    }

    /// The reply to a READ at `offset`: `data` on success.
    fn read_reply(
        &self,
        cookie: u64,
        offset: u64,
        error: u32,
        data: Option<AlignedBuf>,
        charge: u64,
    ) {
        match (self.negotiated.structured, data) {
            (true, Some(data)) => {
                let header = proto::read_chunk(cookie, offset, data.len() as u32);
                self.queue_reply(&header, Some(data), charge);
            }
            (true, None) => {
                let error = if error == 0 { proto::EIO } else { error };
                self.queue_reply(&proto::error_chunk(cookie, error), None, charge);
            }
            (false, data) => self.queue_reply(&proto::simple_reply(cookie, error), data, charge),
        }
    }
}

/// Serve `conn` until it ends: the reader here, the writer in a task of its
/// own; returns once both are done and no operation on the socket is left.
pub async fn run(queue: Rc<Queue>, conn: Rc<Conn>) {
    queue.exec.spawn(write_loop(queue.clone(), conn.clone()));
    if let Err(why) = read_loop(&queue, &conn).await {
        tracing::debug!(queue = queue.ctx.queue(), "NBD connection: {why}");
    }
    conn.reader_done.set(true);
    conn.recv_token.set(None);
    conn.writer_wake.notify();
    conn.closed.wait().await;
}

/// The reader's receive window: bytes `start..end` of `buf` are unparsed.
struct Window {
    buf: Option<AlignedBuf>,
    start: usize,
    end: usize,
}

impl Window {
    fn available(&self) -> &[u8] {
        &self
            .buf
            .as_ref()
            .expect("window holds its buffer")
            .as_slice()[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// Receive more bytes into the window; `Ok(false)` at end of stream.
async fn fill(queue: &Queue, conn: &Conn, window: &mut Window) -> Result<bool, String> {
    let mut buf = window.buf.take().expect("window holds its buffer");
    if window.start > 0 {
        buf.as_mut_slice().copy_within(window.start..window.end, 0);
        window.end -= window.start;
        window.start = 0;
    }
    let op = queue
        .sockets
        .recv(&queue.ctx, conn.socket.as_raw_fd(), buf, window.end, false);
    conn.recv_token.set(Some(op.token()));
    let (res, owned) = op.await;
    conn.recv_token.set(None);
    let Owned::Recv(buf) = owned else {
        unreachable!("a recv hands back its buffer")
    };
    window.buf = Some(buf);
    match res {
        0 => Ok(false),
        n if n > 0 => {
            window.end += n as usize;
            Ok(true)
        }
        e if e == -libc::ECANCELED => Ok(false),
        e => Err(format!("recv: {}", std::io::Error::from_raw_os_error(-e))),
    }
}

async fn read_loop(queue: &Rc<Queue>, conn: &Rc<Conn>) -> Result<(), String> {
    let mut window = Window {
        buf: Some(AlignedBuf::new(RECV_BUF_BYTES)),
        start: 0,
        end: 0,
    };
    let (size, block_size) = (queue.stack.size(), queue.stack.block_size());
    let negotiated = conn.negotiated;
    loop {
        while window.available().len() < REQUEST_BYTES {
            if conn.stopping.get() || !fill(queue, conn, &mut window).await? {
                return Ok(());
            }
        }
        let header: &[u8; REQUEST_BYTES] = window.available()[..REQUEST_BYTES]
            .try_into()
            .expect("sliced to the header size");
        let req = Request::decode(header).map_err(|m| format!("bad request magic {:#x}", m.0))?;
        window.consume(REQUEST_BYTES);
        let checked = check(&req, size, block_size, negotiated);
        if checked == Ok(Action::Disconnect) {
            return Ok(());
        }
        // The payload follows whatever the checks say; an oversized one
        // cannot be skipped safely, so the connection ends.
        let write = req.kind == proto::CMD_WRITE;
        if write && req.length > proto::MAX_PAYLOAD_BYTES {
            return Err(format!("write of {} bytes", req.length));
        }
        // Every request waits for room before anything is received or
        // produced for it, and holds it until its reply is sent.
        let bytes = match checked {
            _ if write => u64::from(req.length),
            Ok(Action::Read { len, .. }) => u64::from(len),
            _ => 0,
        };
        conn.acquire(&queue.limits, bytes).await;
        let payload = if write {
            match receive_payload(queue, conn, &mut window, req.length as usize).await {
                Ok(Some(payload)) => Some(payload),
                ended => {
                    conn.release(bytes);
                    return ended.map(|_| ());
                }
            }
        } else {
            None
        };
        let action = match checked {
            Ok(action) if !conn.stopping.get() => action,
            // Received after a stop began, or refused by the checks: answered
            // without touching the stack.
            other => {
                if let Some(payload) = payload {
                    queue.recycle(payload);
                }
                let error = other.err().unwrap_or(proto::ESHUTDOWN);
                if req.kind == proto::CMD_READ {
                    conn.read_reply(req.cookie, req.offset, error, None, bytes);
                } else {
                    conn.reply(req.cookie, error, bytes);
                }
                continue;
            }
        };
        queue.exec.spawn(serve(
            queue.clone(),
            conn.clone(),
            Charged {
                cookie: req.cookie,
                action,
                bytes,
            },
            payload,
        ));
    }
}

/// A WRITE's payload: what the window already holds, then the rest received
/// straight into the payload buffer. `None` if the stream ended first.
async fn receive_payload(
    queue: &Queue,
    conn: &Conn,
    window: &mut Window,
    len: usize,
) -> Result<Option<AlignedBuf>, String> {
    let mut payload = queue.take_buf(len);
    let have = window.available().len().min(len);
    payload.as_mut_slice()[..have].copy_from_slice(&window.available()[..have]);
    window.consume(have);
    let mut filled = have;
    while filled < len {
        if conn.stopping.get() {
            return Ok(None);
        }
        let op = queue
            .sockets
            .recv(&queue.ctx, conn.socket.as_raw_fd(), payload, filled, true);
        conn.recv_token.set(Some(op.token()));
        let (res, owned) = op.await;
        conn.recv_token.set(None);
        let Owned::Recv(buf) = owned else {
            unreachable!("a recv hands back its buffer")
        };
        payload = buf;
        match res {
            n if n > 0 => filled += n as usize,
            0 => return Ok(None),
            e if e == -libc::ECANCELED => return Ok(None),
            e => return Err(format!("recv: {}", std::io::Error::from_raw_os_error(-e))),
        }
    }
    Ok(Some(payload))
}

/// A request admitted by [`Conn::acquire`], with the bytes it counted.
struct Charged {
    cookie: u64,
    action: Action,
    bytes: u64,
}

/// Run one request on the stack and queue its reply.
async fn serve(queue: Rc<Queue>, conn: Rc<Conn>, request: Charged, payload: Option<AlignedBuf>) {
    let Charged {
        cookie,
        action,
        bytes,
    } = request;
    let top = queue.stack.top();
    let ctx = &queue.ctx;
    let (result, data) = match action {
        Action::BlockStatus {
            offset,
            len,
            req_one,
        } => {
            // Synchronous: a few lseeks on a file leaf, nothing elsewhere.
            let (size, block) = (queue.stack.size(), u64::from(queue.stack.block_size()));
            let runs = top.allocation(offset, status_end(offset, len, size, block) - offset);
            let descriptors = allocation_descriptors(runs, offset, len, size, block, req_one);
            let mut buf = queue.take_buf(descriptors.len() * 8);
            for (slot, (length, flags)) in buf.as_mut_slice().chunks_exact_mut(8).zip(descriptors) {
                slot[..4].copy_from_slice(&length.to_be_bytes());
                slot[4..].copy_from_slice(&flags.to_be_bytes());
            }
            (Ok(()), Some(buf))
        }
        Action::Read { len, .. } => {
            let buf = queue.take_buf(len as usize);
            match transfer(&queue, action, buf).await {
                (Ok(()), buf) => (Ok(()), Some(buf)),
                (Err(e), buf) => {
                    queue.recycle(buf);
                    (Err(e), None)
                }
            }
        }
        Action::Write { fua, .. } => {
            let buf = payload.expect("a WRITE carries its payload");
            let (mut result, buf) = transfer(&queue, action, buf).await;
            queue.recycle(buf);
            if fua && result.is_ok() {
                result = top.flush(ctx).await;
            }
            (result, None)
        }
        Action::Flush => (top.flush(ctx).await, None),
        Action::Trim { offset, len, fua } => {
            (zero(&queue, top, offset, len, true, fua).await, None)
        }
        Action::WriteZeroes {
            offset,
            len,
            fua,
            no_hole,
        } => {
            // Without NO_HOLE the client does not mind a hole: punch one when
            // that frees space (discard reads back as zeros on every layer).
            let discard = !no_hole && queue.stack.discard_frees_space();
            (zero(&queue, top, offset, len, discard, fua).await, None)
        }
        Action::Disconnect => (Ok(()), None),
    };
    let error = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(queue = ctx.queue(), ?action, "NBD request failed: {e}");
            proto::error_value(e.errno())
        }
    };
    match (action, data) {
        (Action::Read { offset, .. }, data) => conn.read_reply(cookie, offset, error, data, bytes),
        (Action::BlockStatus { .. }, Some(data)) => {
            let count = data.len() / 8;
            let header = proto::block_status_chunk(cookie, proto::ALLOCATION_CONTEXT_ID, count);
            conn.queue_reply(&header, Some(data), bytes);
        }
        (_, data) => {
            if let Some(data) = data {
                queue.recycle(data);
            }
            conn.reply(cookie, error, bytes);
        }
    }
}

async fn zero(
    queue: &Queue,
    top: &dyn Layer,
    offset: u64,
    len: u32,
    discard: bool,
    fua: bool,
) -> layers::Result<()> {
    let ctx = &queue.ctx;
    let end = offset + u64::from(len);
    let mut at = offset;
    while at < end {
        let piece = (end - at).min(ZERO_PIECE_BYTES);
        if discard {
            top.discard(ctx, at, piece).await?;
        } else {
            top.write_zeroes(ctx, at, piece).await?;
        }
        at += piece;
    }
    if fua {
        top.flush(ctx).await?;
    }
    Ok(())
}

/// Send queued replies until the reader is done and nothing is left in flight.
async fn write_loop(queue: Rc<Queue>, conn: Rc<Conn>) {
    let mut spare = Vec::new();
    loop {
        let batch = std::mem::replace(&mut *conn.pending.borrow_mut(), spare);
        if batch.is_empty() {
            spare = batch;
            if conn.reader_done.get() && conn.in_flight.get() == 0 {
                break;
            }
            conn.writer_wake.wait().await;
            continue;
        }
        let mut out = Outgoing::new(batch);
        while !out.finished() && !conn.broken.get() {
            let op = queue.sockets.send(&queue.ctx, conn.socket.as_raw_fd(), out);
            let (res, owned) = op.await;
            let Owned::Send(back) = owned else {
                unreachable!("a send hands back its replies")
            };
            out = back;
            if res <= 0 {
                tracing::debug!(queue = queue.ctx.queue(), "NBD send failed: {res}");
                conn.broken.set(true);
                conn.stop(&queue);
            } else {
                out.advance(res as usize);
            }
        }
        // Sent (or dropped with the client): their requests are done.
        let mut replies = std::mem::take(&mut out.replies);
        for reply in replies.drain(..) {
            conn.release(reply.charge);
            if let Some(data) = reply.data {
                queue.recycle(data);
            }
        }
        spare = replies;
        if conn.broken.get() {
            let dropped = std::mem::take(&mut *conn.pending.borrow_mut());
            for reply in dropped {
                conn.release(reply.charge);
            }
        }
    }
    // Every operation on the socket has completed: the reader returned and so
    // did the last send.
    conn.closed.notify();
}

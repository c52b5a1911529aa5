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

use layers::uring::AlignedBuf;
use layers::Layer;

use super::handshake::Negotiated;
use super::limits::{Limits, Permit};
use super::offload::transfer;
use super::proto::{self, Request, REQUEST_BYTES};
use super::ring::{Outgoing, Owned, Reply};
use super::server::Queue;

/// Receive buffer of each connection: room for a few hundred request headers.
const RECV_BUF_BYTES: usize = 256 << 10;
/// Largest piece of TRIM / WRITE_ZEROES handed to the stack at once (the ublk
/// front end's limit for those).
const ZERO_PIECE_BYTES: u64 = 64 << 20;
/// Most descriptors in one BLOCK_STATUS reply; the protocol lets the server
/// describe less than asked, and clients ask again from where it stopped.
const MAX_DESCRIPTORS: usize = 1024;

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

/// What a checked request asks of the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Disconnect,
}

/// Check a request against the export: the protocol error for a bad one.
/// WRITE payloads are received before this is acted on either way.
pub fn check(
    req: &Request,
    size: u64,
    block_size: u32,
    negotiated: Negotiated,
) -> Result<Action, u32> {
    let allowed = match req.kind {
        proto::CMD_WRITE | proto::CMD_TRIM => proto::CMD_FLAG_FUA,
        proto::CMD_WRITE_ZEROES => proto::CMD_FLAG_FUA | proto::CMD_FLAG_NO_HOLE,
        proto::CMD_BLOCK_STATUS => proto::CMD_FLAG_REQ_ONE,
        _ => 0,
    };
    if req.flags & !allowed != 0 {
        return Err(proto::EINVAL);
    }
    let fua = req.flags & proto::CMD_FLAG_FUA != 0;
    let (offset, len) = (req.offset, req.length);
    // `whole_blocks`: the length must be on the block grid too.
    let ranged = |too_far: u32, whole_blocks: bool| -> Result<(), u32> {
        let block = u64::from(block_size);
        if len == 0 || offset % block != 0 || (whole_blocks && u64::from(len) % block != 0) {
            return Err(proto::EINVAL);
        }
        match offset.checked_add(u64::from(len)) {
            Some(end) if end <= size => Ok(()),
            _ => Err(too_far),
        }
    };
    match req.kind {
        proto::CMD_READ | proto::CMD_WRITE if len > proto::MAX_PAYLOAD_BYTES => {
            Err(proto::EOVERFLOW)
        }
        proto::CMD_READ => ranged(proto::EINVAL, true).map(|()| Action::Read { offset, len }),
        proto::CMD_WRITE => {
            ranged(proto::ENOSPC, true).map(|()| Action::Write { offset, len, fua })
        }
        proto::CMD_FLUSH => Ok(Action::Flush),
        proto::CMD_TRIM => ranged(proto::EINVAL, true).map(|()| Action::Trim { offset, len, fua }),
        proto::CMD_WRITE_ZEROES => ranged(proto::ENOSPC, true).map(|()| Action::WriteZeroes {
            offset,
            len,
            fua,
            no_hole: req.flags & proto::CMD_FLAG_NO_HOLE != 0,
        }),
        proto::CMD_BLOCK_STATUS if negotiated.allocation => {
            // The length need not be on the block grid (libnbd asks for
            // whatever is left, capped at 2^31 - 1): the reply rounds instead.
            ranged(proto::EINVAL, false).map(|()| Action::BlockStatus {
                offset,
                len,
                req_one: req.flags & proto::CMD_FLAG_REQ_ONE != 0,
            })
        }
        proto::CMD_DISC => Ok(Action::Disconnect),
        _ => Err(proto::EINVAL),
    }
}

/// The end of what a BLOCK_STATUS for `offset..+len` describes: the request
/// rounded up to the block grid, inside the export.
pub fn status_end(offset: u64, len: u32, size: u64, block: u64) -> u64 {
    (offset + u64::from(len))
        .div_ceil(block)
        .saturating_mul(block)
        .min(size)
}

/// base:allocation descriptors, (length, flags), for the range `offset..+len`
/// of an export of `size` bytes, from a layer's runs of (length, is_hole)
/// starting at `offset` and asked for up to [`status_end`] (`None`:
/// everything is data).
///
/// Holes shrink to the block grid and data grows to it, so a partly allocated
/// block is data, every length is a multiple of `block` (except at the export
/// end), and the last descriptor may reach past an unaligned `len` to the
/// next block boundary, as the protocol allows; with `req_one`, exactly one
/// descriptor no longer than `len`. Runs that stop short of the range end the
/// reply where they stop (the client asks again from there).
pub fn allocation_descriptors(
    runs: Option<Vec<(u64, bool)>>,
    offset: u64,
    len: u32,
    size: u64,
    block: u64,
    req_one: bool,
) -> Vec<(u32, u32)> {
    let round_up = |x: u64| x.div_ceil(block).saturating_mul(block);
    let mut end = status_end(offset, len, size, block);
    let runs = runs.unwrap_or_default();
    let covered = runs
        .iter()
        .fold(offset, |at, &(run, _)| at.saturating_add(run));
    if !runs.is_empty() && covered < end {
        // At least one block (the client must make progress); no clamp(),
        // which panics when the export ends inside that block.
        end = round_up(covered).max(offset + block).min(end);
    }
    // (length, hole) with neighbours of one kind merged.
    let mut extents: Vec<(u64, bool)> = Vec::new();
    let mut push = |length: u64, hole: bool| match extents.last_mut() {
        Some((last, kind)) if *kind == hole => *last += length,
        _ if length > 0 => extents.push((length, hole)),
        _ => {}
    };
    let (mut pos, mut at) = (offset, offset);
    for (run, hole) in runs {
        let (start, stop) = (pos, pos.saturating_add(run));
        pos = stop;
        if !hole {
            continue;
        }
        let hole_start = round_up(start).max(at);
        let hole_end = (stop / block * block).min(end);
        if hole_start < hole_end {
            push(hole_start - at, false);
            push(hole_end - hole_start, true);
            at = hole_end;
        }
        if at >= end {
            break;
        }
    }
    push(end.saturating_sub(at), false);
    let flags = |hole: bool| {
        if hole {
            proto::STATE_HOLE | proto::STATE_ZERO
        } else {
            0
        }
    };
    if req_one {
        let first = extents.first().copied().unwrap_or((end - offset, false));
        let aligned = u64::from(len) / block * block;
        let cap = if aligned > 0 { aligned } else { u64::from(len) };
        return vec![(first.0.min(cap) as u32, flags(first.1))];
    }
    // A descriptor length is a u32: split longer extents on the block grid.
    let max_piece = u64::from(u32::MAX) / block * block;
    let mut out = Vec::new();
    for (mut length, hole) in extents {
        while length > 0 && out.len() < MAX_DESCRIPTORS {
            let piece = length.min(max_piece);
            out.push((piece as u32, flags(hole)));
            length -= piece;
        }
    }
    out
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

/// Serve `conn` until it ends; spawned once per connection.
pub async fn run(queue: Rc<Queue>, conn: Rc<Conn>) {
    queue.exec.spawn(write_loop(queue.clone(), conn.clone()));
    if let Err(why) = read_loop(&queue, &conn).await {
        tracing::debug!(queue = queue.ctx.queue(), "NBD connection: {why}");
    }
    conn.reader_done.set(true);
    conn.recv_token.set(None);
    conn.writer_wake.notify();
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
    queue.forget(&conn);
    // Every operation on the socket has completed: the reader returned and so
    // did the last send. Dropping the last Rc closes it.
    drop(conn);
    // What the connection's requests and replies held is free now; hand it
    // back to the system, or the daemon stays as large as its busiest client
    // made it.
    layers::release_free_memory();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            kind,
            cookie: 1,
            offset,
            length,
        }
    }

    const SIZE: u64 = 1 << 20;
    const PLAIN: Negotiated = Negotiated {
        structured: false,
        allocation: false,
    };
    const ALLOCATION: Negotiated = Negotiated {
        structured: true,
        allocation: true,
    };

    #[test]
    fn block_status_needs_the_context_and_a_range_inside_the_device() {
        let bs = |flags, offset, len| req(proto::CMD_BLOCK_STATUS, flags, offset, len);
        assert_eq!(
            check(&bs(0, 0, 4096), SIZE, 4096, PLAIN),
            Err(proto::EINVAL)
        );
        let structured_only = Negotiated {
            structured: true,
            allocation: false,
        };
        assert_eq!(
            check(&bs(0, 0, 4096), SIZE, 4096, structured_only),
            Err(proto::EINVAL)
        );
        assert_eq!(
            check(
                &bs(proto::CMD_FLAG_REQ_ONE, 8192, 100),
                SIZE,
                4096,
                ALLOCATION
            ),
            Ok(Action::BlockStatus {
                offset: 8192,
                len: 100,
                req_one: true
            })
        );
        for bad in [
            bs(0, 512, 4096),
            bs(0, 0, 0),
            bs(0, SIZE - 4096, 8192),
            bs(0, u64::MAX - 4095, 4096),
            bs(proto::CMD_FLAG_FUA, 0, 4096),
        ] {
            assert_eq!(
                check(&bad, SIZE, 4096, ALLOCATION),
                Err(proto::EINVAL),
                "{bad:?}"
            );
        }
    }

    const HOLE: u32 = proto::STATE_HOLE | proto::STATE_ZERO;

    #[test]
    fn descriptors_round_to_blocks_conservatively() {
        // No information: all data, the unaligned tail rounded up.
        assert_eq!(
            allocation_descriptors(None, 0, 10_000, SIZE, 4096, false),
            [(12288, 0)]
        );
        // A hole that covers only part of a block leaves that block data; a
        // data run inside a block makes the whole block data.
        let runs = vec![(6000, true), (100, false), (20_000, true), (SIZE, false)];
        assert_eq!(
            allocation_descriptors(Some(runs.clone()), 0, 65536, SIZE, 4096, false),
            [(4096, HOLE), (4096, 0), (16384, HOLE), (40960, 0)]
        );
        // REQ_ONE: the first extent only, never past the request.
        assert_eq!(
            allocation_descriptors(Some(runs.clone()), 0, 65536, SIZE, 4096, true),
            [(4096, HOLE)]
        );
        assert_eq!(
            allocation_descriptors(Some(vec![(SIZE, true)]), 0, 10_000, SIZE, 4096, true),
            [(8192, HOLE)]
        );
        assert_eq!(
            allocation_descriptors(Some(vec![(SIZE, true)]), 0, 100, SIZE, 4096, true),
            [(100, HOLE)]
        );
        // An unaligned length is described to the end of its block.
        assert_eq!(
            allocation_descriptors(Some(vec![(4096, true)]), 0, 100, SIZE, 4096, false),
            [(4096, HOLE)]
        );
        // Neighbours of one kind merge; runs past the range are ignored.
        assert_eq!(
            allocation_descriptors(
                Some(vec![(4096, true), (4096, true), (SIZE, false)]),
                4096,
                8192,
                SIZE,
                4096,
                false
            ),
            [(8192, HOLE)]
        );
        // Runs that stop short end the reply where they stop.
        assert_eq!(
            allocation_descriptors(
                Some(vec![(4096, false), (5000, true)]),
                0,
                65536,
                SIZE,
                4096,
                false
            ),
            [(4096, 0), (4096, HOLE), (4096, 0)]
        );
        // An export that ends inside a block: its tail is described as is.
        assert_eq!(
            allocation_descriptors(Some(vec![(100, false)]), 8192, 1000, 9192, 4096, false),
            [(1000, 0)]
        );
        assert_eq!(
            allocation_descriptors(Some(vec![(1000, true)]), 8192, 1000, 9192, 4096, false),
            [(1000, 0)]
        );
        // Never past the export's end.
        assert_eq!(
            allocation_descriptors(
                Some(vec![(4096, true)]),
                SIZE - 4096,
                4096,
                SIZE,
                4096,
                false
            ),
            [(4096, HOLE)]
        );
    }

    #[test]
    fn long_extents_split_on_the_block_grid() {
        let size = 8u64 << 30;
        let out = allocation_descriptors(Some(vec![(size, true)]), 0, u32::MAX, size, 4096, false);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], ((u32::MAX / 4096 * 4096), HOLE));
        assert_eq!(u64::from(out[0].0) + u64::from(out[1].0), 1 << 32);
    }

    #[test]
    fn requests_inside_the_device_and_on_the_block_grid_pass() {
        assert_eq!(
            check(&req(proto::CMD_READ, 0, 4096, 8192), SIZE, 4096, PLAIN),
            Ok(Action::Read {
                offset: 4096,
                len: 8192
            })
        );
        assert_eq!(
            check(
                &req(proto::CMD_WRITE, proto::CMD_FLAG_FUA, SIZE - 4096, 4096),
                SIZE,
                4096,
                PLAIN
            ),
            Ok(Action::Write {
                offset: SIZE - 4096,
                len: 4096,
                fua: true
            })
        );
        assert_eq!(
            check(&req(proto::CMD_FLUSH, 0, 0, 0), SIZE, 4096, PLAIN),
            Ok(Action::Flush)
        );
    }

    #[test]
    fn bad_requests_get_protocol_errors() {
        let cases = [
            (req(proto::CMD_READ, 0, 512, 4096), proto::EINVAL),
            (req(proto::CMD_READ, 0, 0, 100), proto::EINVAL),
            (req(proto::CMD_READ, 0, 0, 0), proto::EINVAL),
            (req(proto::CMD_READ, 0, SIZE, 4096), proto::EINVAL),
            (req(proto::CMD_WRITE, 0, SIZE, 4096), proto::ENOSPC),
            (
                req(proto::CMD_READ, 0, u64::MAX - 4095, 4096),
                proto::EINVAL,
            ),
            (req(proto::CMD_READ, 0, 0, 64 << 20), proto::EOVERFLOW),
            (
                req(proto::CMD_READ, proto::CMD_FLAG_FUA, 0, 4096),
                proto::EINVAL,
            ),
            (req(proto::CMD_WRITE, 1 << 4, 0, 4096), proto::EINVAL),
            (req(proto::CMD_BLOCK_STATUS, 0, 0, 4096), proto::EINVAL),
            (req(99, 0, 0, 0), proto::EINVAL),
        ];
        for (request, error) in cases {
            assert_eq!(
                check(&request, SIZE, 4096, PLAIN),
                Err(error),
                "{request:?}"
            );
        }
    }
}

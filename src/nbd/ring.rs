//! Socket receives and sends on the queue's io_uring, as futures.
//!
//! The NBD connections of a queue thread share that queue's ring with the
//! leaves' file I/O, so one `io_uring_enter` per executor turn carries the
//! socket traffic and the storage traffic together. These operations are the
//! front end's own SQEs: their `user_data` carries [`FOREIGN_BIT`], the
//! executor hands their CQEs to [`SocketRing::complete`], and a slot in the
//! table here owns each operation's memory (buffers, iovecs, msghdr) until the
//! CQE arrives, even if the future that started it is dropped (the same rule
//! as `layers::uring`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types};
use layers::buf::AlignedBuf;
use layers::uring::FOREIGN_BIT;
use layers::IoCtx;

use super::proto::MAX_REPLY_HEADER_BYTES;

/// `user_data` of cancel requests: their CQEs carry nothing we need.
const CANCEL_TAG: u64 = FOREIGN_BIT | (1 << 62);
/// Most iovecs handed to one sendmsg (the kernel's UIO_MAXIOV is 1024).
const MAX_IOVECS: usize = 1024;

/// One reply on its way out: a header (simple reply, or a structured chunk
/// header with the fixed fields of its payload), kept inline, and the buffer
/// sent after it as it is (READ data, BLOCK_STATUS descriptors).
pub struct Reply {
    header: [u8; MAX_REPLY_HEADER_BYTES],
    header_len: u8,
    pub data: Option<AlignedBuf>,
    /// Bytes its request counts against the connection's limit until the
    /// reply is sent (the ring itself ignores it).
    pub charge: u64,
}

impl Reply {
    pub fn new(header: &[u8], data: Option<AlignedBuf>) -> Reply {
        let mut inline = [0u8; MAX_REPLY_HEADER_BYTES];
        inline[..header.len()].copy_from_slice(header);
        Reply {
            header: inline,
            header_len: header.len() as u8,
            data,
            charge: 0,
        }
    }

    pub fn charged(self, charge: u64) -> Reply {
        Reply { charge, ..self }
    }

    fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }

    fn len(&self) -> usize {
        self.header().len() + self.data.as_ref().map_or(0, AlignedBuf::len)
    }
}

/// Replies sent with one sendmsg, and how far the sending has got.
pub struct Outgoing {
    pub replies: Vec<Reply>,
    /// Replies fully sent.
    done: usize,
    /// Bytes of `replies[done]` already sent.
    partial: usize,
    iovecs: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
}

impl Outgoing {
    pub fn new(replies: Vec<Reply>) -> Outgoing {
        Outgoing {
            replies,
            done: 0,
            partial: 0,
            iovecs: Vec::new(),
            // SAFETY: msghdr is plain data; all-zero is an empty message.
            msg: Box::new(unsafe { std::mem::zeroed() }),
        }
    }

    pub fn finished(&self) -> bool {
        self.done == self.replies.len()
    }

    /// Account for `sent` bytes written by the kernel.
    pub fn advance(&mut self, mut sent: usize) {
        while sent > 0 && self.done < self.replies.len() {
            let left = self.replies[self.done].len() - self.partial;
            if sent >= left {
                sent -= left;
                self.done += 1;
                self.partial = 0;
            } else {
                self.partial += sent;
                sent = 0;
            }
        }
    }

    /// Point the iovecs and the msghdr at what is still to send.
    fn prepare(&mut self) {
        self.iovecs.clear();
        let mut skip = self.partial;
        for reply in &self.replies[self.done..] {
            if self.iovecs.len() + 2 > MAX_IOVECS {
                break;
            }
            let data = reply.data.as_ref().map_or(&[][..], AlignedBuf::as_slice);
            for part in [reply.header(), data] {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                let rest = &part[skip..];
                skip = 0;
                self.iovecs.push(libc::iovec {
                    iov_base: rest.as_ptr() as *mut libc::c_void,
                    iov_len: rest.len(),
                });
            }
        }
        self.msg.msg_iov = self.iovecs.as_mut_ptr();
        self.msg.msg_iovlen = self.iovecs.len();
    }
}

/// What a finished operation hands back.
pub enum Owned {
    Recv(AlignedBuf),
    Send(Outgoing),
    /// Held only so the kernel's pointer stays valid until the CQE.
    Timer(#[allow(dead_code)] Box<types::Timespec>),
    Nothing,
}

enum Slot {
    Free,
    Pending {
        waker: Option<Waker>,
        owned: Owned,
    },
    Done {
        res: i32,
        owned: Owned,
    },
    /// The future was dropped before the CQE; the memory waits here for it.
    Orphaned {
        _owned: Owned,
    },
}

/// The in-flight table of one queue thread's socket operations.
#[derive(Default)]
pub struct SocketRing {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    in_flight: Cell<usize>,
}

impl SocketRing {
    /// Operations whose CQE has not arrived.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    fn alloc(&self, owned: Owned) -> usize {
        let slot = Slot::Pending { waker: None, owned };
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(index) => {
                slots[index] = slot;
                index
            }
            None => {
                slots.push(slot);
                slots.len() - 1
            }
        }
    }

    fn release(&self, slots: &mut [Slot], index: usize) {
        slots[index] = Slot::Free;
        self.free.borrow_mut().push(index);
    }

    /// Receive into `buf[start..]`. With `wait_all` the kernel keeps going until
    /// that whole range is filled (or the peer closes or fails).
    pub fn recv<'a>(
        &'a self,
        ctx: &'a IoCtx,
        fd: RawFd,
        mut buf: AlignedBuf,
        start: usize,
        wait_all: bool,
    ) -> SocketOp<'a> {
        let range = &mut buf.as_mut_slice()[start..];
        let (ptr, len) = (
            range.as_mut_ptr(),
            range.len().min(u32::MAX as usize) as u32,
        );
        let flags = if wait_all { libc::MSG_WAITALL } else { 0 };
        let index = self.alloc(Owned::Recv(buf));
        let entry = opcode::Recv::new(types::Fd(fd), ptr, len)
            .flags(flags)
            .build()
            .user_data(FOREIGN_BIT | index as u64);
        // SAFETY: the buffer is owned by slot `index` (heap memory that does not
        // move when the AlignedBuf value moves) until `complete` sees this CQE,
        // even if the future is dropped. The socket stays open until every
        // operation on it has completed (the connection closes it last).
        unsafe { ctx.uring().push(&entry) };
        self.started(index)
    }

    /// Send what `out` still holds, in one sendmsg.
    pub fn send<'a>(&'a self, ctx: &'a IoCtx, fd: RawFd, mut out: Outgoing) -> SocketOp<'a> {
        out.prepare();
        let msg: *const libc::msghdr = &*out.msg;
        let index = self.alloc(Owned::Send(out));
        let entry = opcode::SendMsg::new(types::Fd(fd), msg)
            .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
            .build()
            .user_data(FOREIGN_BIT | index as u64);
        // SAFETY: the msghdr (boxed), the iovecs (a Vec's heap buffer) and the
        // reply headers and data they point at all belong to the Outgoing owned
        // by slot `index`, unchanged and unmoved on the heap until the CQE. The
        // socket outlives the operation as for `recv`.
        unsafe { ctx.uring().push(&entry) };
        self.started(index)
    }

    /// A timer: completes (with -ETIME) after `duration`, or when cancelled.
    pub fn sleep<'a>(&'a self, ctx: &'a IoCtx, duration: std::time::Duration) -> SocketOp<'a> {
        let timespec = Box::new(
            types::Timespec::new()
                .sec(duration.as_secs())
                .nsec(duration.subsec_nanos()),
        );
        let ptr: *const types::Timespec = &*timespec;
        let index = self.alloc(Owned::Timer(timespec));
        let entry = opcode::Timeout::new(ptr)
            .build()
            .user_data(FOREIGN_BIT | index as u64);
        // SAFETY: the timespec is boxed and owned by slot `index` until the CQE.
        unsafe { ctx.uring().push(&entry) };
        self.started(index)
    }

    /// shutdown(2) both directions of a socket: its pending receives and
    /// sends fail, so a connection that a client stopped reading can end.
    pub fn shutdown<'a>(&'a self, ctx: &'a IoCtx, fd: RawFd) -> SocketOp<'a> {
        let index = self.alloc(Owned::Nothing);
        let entry = opcode::Shutdown::new(types::Fd(fd), libc::SHUT_RDWR)
            .build()
            .user_data(FOREIGN_BIT | index as u64);
        // SAFETY: no memory; the caller keeps the socket open until the CQE.
        unsafe { ctx.uring().push(&entry) };
        self.started(index)
    }

    fn started(&self, index: usize) -> SocketOp<'_> {
        self.in_flight.set(self.in_flight.get() + 1);
        SocketOp {
            ring: self,
            index,
            finished: false,
        }
    }

    /// Ask the kernel to cancel operation `token` (a [`SocketOp::token`]); it
    /// then completes, with -ECANCELED or whatever it had done.
    pub fn cancel(&self, ctx: &IoCtx, token: u64) {
        let entry = opcode::AsyncCancel::new(token)
            .build()
            .user_data(CANCEL_TAG);
        // SAFETY: a cancel SQE refers to no memory and no fd.
        unsafe { ctx.uring().push(&entry) };
    }

    /// A CQE of ours, handed over by the executor.
    pub fn complete(&self, user_data: u64, res: i32) {
        if user_data == CANCEL_TAG {
            return;
        }
        let index = (user_data & !FOREIGN_BIT) as usize;
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(index) else {
            tracing::error!("NBD: completion for unknown user_data {user_data:#x}");
            return;
        };
        match std::mem::replace(slot, Slot::Free) {
            Slot::Pending { waker, owned } => {
                *slot = Slot::Done { res, owned };
                drop(slots);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Slot::Orphaned { .. } => self.release(&mut slots, index),
            other => {
                *slot = other;
                tracing::error!("NBD: completion for slot {index} that is not in flight");
                return;
            }
        }
        self.in_flight.set(self.in_flight.get() - 1);
    }
}

/// A socket operation in flight; resolves to the CQE result and what it owned.
pub struct SocketOp<'a> {
    ring: &'a SocketRing,
    index: usize,
    finished: bool,
}

impl SocketOp<'_> {
    /// The operation's `user_data`, for [`SocketRing::cancel`].
    pub fn token(&self) -> u64 {
        FOREIGN_BIT | self.index as u64
    }
}

impl Future for SocketOp<'_> {
    type Output = (i32, Owned);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slots = self.ring.slots.borrow_mut();
        let index = self.index;
        match &mut slots[index] {
            Slot::Pending { waker, .. } => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Slot::Done { .. } => {
                let Slot::Done { res, owned } = std::mem::replace(&mut slots[index], Slot::Free)
                else {
                    unreachable!("matched Done above")
                };
                self.ring.release(&mut slots, index);
                self.finished = true;
                Poll::Ready((res, owned))
            }
            Slot::Free | Slot::Orphaned { .. } => unreachable!("polled a finished socket op"),
        }
    }
}

impl Drop for SocketOp<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut slots = self.ring.slots.borrow_mut();
        match std::mem::replace(&mut slots[self.index], Slot::Free) {
            Slot::Pending { owned, .. } => slots[self.index] = Slot::Orphaned { _owned: owned },
            Slot::Done { .. } => self.ring.release(&mut slots, self.index),
            other => slots[self.index] = other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(data_len: usize) -> Reply {
        Reply::new(&[1; 16], (data_len > 0).then(|| AlignedBuf::new(data_len)))
    }

    #[test]
    fn short_sends_resume_mid_reply() {
        let mut out = Outgoing::new(vec![reply(0), reply(4096), reply(0)]);
        out.prepare();
        assert_eq!(out.iovecs.len(), 4);
        out.advance(16 + 10);
        assert!(!out.finished());
        out.prepare();
        // Rest of reply 2's header, its data, reply 3's header.
        assert_eq!(out.iovecs.len(), 3);
        assert_eq!(out.iovecs[0].iov_len, 6);
        out.advance(6 + 4096 + 16);
        assert!(out.finished());
    }

    #[test]
    fn headers_of_any_length_are_sent_whole() {
        let mut out = Outgoing::new(vec![
            Reply::new(&[2; 28], Some(AlignedBuf::new(512))),
            Reply::new(&[3; 26], None),
        ]);
        out.prepare();
        let lens: Vec<usize> = out.iovecs.iter().map(|v| v.iov_len).collect();
        assert_eq!(lens, [28, 512, 26]);
        out.advance(30);
        out.prepare();
        assert_eq!(out.iovecs[0].iov_len, 510);
        out.advance(510 + 26);
        assert!(out.finished());
    }
}

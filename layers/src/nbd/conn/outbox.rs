//! Sending requests in batches. A request puts its header (and a small
//! payload) in the link's outbox; if nobody is sending, it becomes the
//! *sender* and writes what the outbox holds, again and again, until it is
//! empty, so requests queued while a write is in flight leave together in
//! the next one. A request with a large payload waits to be the sender
//! itself and writes that payload straight from the request's buffer right
//! after its header, so the payload is never copied (TLS aside).

use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::{write_all, Conn, Link, Step, LOST};
use crate::buf::IoBuf;
use crate::exec::IoCtx;

/// Payloads up to this size travel in the outbox with their header; larger
/// ones are written from the request's own buffer.
pub(super) const INLINE_PAYLOAD: usize = 16 << 10;

/// Bytes of whole requests not yet handed to the socket. One per link.
#[derive(Default)]
pub(super) struct Outbox {
    bytes: Vec<u8>,
    /// A request is writing the outbox out.
    sending: bool,
    /// The link failed: nothing more is sent on it.
    closed: bool,
    /// Requests with a large payload waiting to be the sender.
    waiters: Vec<Waker>,
}

fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    outbox.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a request must write its payload itself.
pub(super) fn large(payload: Option<&IoBuf>) -> bool {
    payload.is_some_and(|p| p.len() > INLINE_PAYLOAD)
}

impl Link {
    /// Queues a request with a small payload (or none); true if the caller
    /// is now the sender and must call [`Conn::send_queued`].
    pub(super) fn queue(&self, header: &[u8], payload: Option<&IoBuf>) -> bool {
        let mut outbox = lock(&self.outbox);
        outbox.bytes.extend_from_slice(header);
        if let Some(payload) = payload {
            outbox.bytes.extend_from_slice(payload);
        }
        !std::mem::replace(&mut outbox.sending, true)
    }

    /// Waits to be the sender, then queues `header`; the caller must then
    /// write its payload with [`Conn::send_queued`]. [`LOST`] if the link
    /// failed meanwhile.
    pub(super) async fn queue_as_sender(&self, header: &[u8]) -> std::result::Result<(), i32> {
        poll_fn(|cx| {
            let mut outbox = lock(&self.outbox);
            if outbox.closed {
                return Poll::Ready(Err(LOST));
            }
            if !outbox.sending {
                outbox.sending = true;
                outbox.bytes.extend_from_slice(header);
                return Poll::Ready(Ok(()));
            }
            if !outbox.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                outbox.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The link failed: wakes the requests waiting to send on it.
    pub(super) fn close_outbox(&self) {
        let waiters = {
            let mut outbox = lock(&self.outbox);
            outbox.closed = true;
            std::mem::take(&mut outbox.waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

impl Conn {
    /// As the sender: writes what the outbox holds, then `payload` (which
    /// belongs right after the first batch: its header ends it), then
    /// whatever was queued meanwhile, until the outbox is empty.
    pub(super) async fn send_queued(
        &self,
        ctx: &IoCtx,
        link: &Link,
        mut payload: Option<&IoBuf>,
    ) -> Step {
        loop {
            let batch = {
                let mut outbox = lock(&link.outbox);
                if outbox.bytes.is_empty() && payload.is_none() {
                    outbox.sending = false;
                    // One of them becomes the sender; the others wait again.
                    std::mem::take(&mut outbox.waiters)
                        .into_iter()
                        .for_each(Waker::wake);
                    return Ok(());
                }
                let mut batch = ctx.buf(outbox.bytes.len());
                batch.copy_from_slice(&outbox.bytes);
                outbox.bytes.clear();
                batch.freeze()
            };
            if !batch.is_empty() {
                self.write(ctx, link, &batch).await?;
            }
            if let Some(payload) = payload.take() {
                self.write(ctx, link, payload).await?;
            }
        }
    }

    /// Writes `bytes` to the link: straight from the buffer on a plain
    /// socket, through the TLS session otherwise.
    async fn write(&self, ctx: &IoCtx, link: &Link, bytes: &IoBuf) -> Step {
        match &link.tls {
            Some(secure) => self.send_secure(ctx, link, secure, bytes).await,
            None => write_all(ctx, link, bytes).await,
        }
    }
}

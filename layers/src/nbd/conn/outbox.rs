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
    /// write its payload with [`Conn::send_queued`], passing the returned
    /// length of the outbox up to the end of `header`: the payload goes
    /// there, ahead of requests other queues put in the outbox meanwhile.
    /// [`LOST`] if the link failed meanwhile.
    pub(super) async fn queue_as_sender(&self, header: &[u8]) -> std::result::Result<usize, i32> {
        poll_fn(|cx| {
            let mut outbox = lock(&self.outbox);
            if outbox.closed {
                return Poll::Ready(Err(LOST));
            }
            if !outbox.sending {
                outbox.sending = true;
                outbox.bytes.extend_from_slice(header);
                return Poll::Ready(Ok(outbox.bytes.len()));
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

impl Outbox {
    /// How many of the queued bytes the sender writes next: all of them, or,
    /// with a large payload to follow (`payload_at`, from
    /// [`Link::queue_as_sender`]), those up to the end of its header. A
    /// request another queue put in the outbox after that header waits
    /// behind the payload, or the server would read it as the payload.
    fn batch_len(&self, payload_at: Option<usize>) -> usize {
        payload_at.map_or(self.bytes.len(), |at| at.min(self.bytes.len()))
    }
}

impl Conn {
    /// As the sender: writes what the outbox holds up to `payload`'s header,
    /// then `payload` (its offset in the outbox from
    /// [`Link::queue_as_sender`], and its bytes), then whatever else was
    /// queued, until the outbox is empty.
    pub(super) async fn send_queued(
        &self,
        ctx: &IoCtx,
        link: &Link,
        mut payload: Option<(usize, &IoBuf)>,
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
                let len = outbox.batch_len(payload.map(|(at, _)| at));
                let mut batch = ctx.buf(len);
                batch.copy_from_slice(&outbox.bytes[..len]);
                outbox.bytes.drain(..len);
                batch.freeze()
            };
            if !batch.is_empty() {
                self.write(ctx, link, &batch).await?;
            }
            if let Some((_, payload)) = payload.take() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A large write's header is queued, then another queue's small request
    /// lands in the outbox before the sender takes its batch (the two run
    /// on different threads): the first batch ends at the large header, so
    /// the payload follows its own header and the small request follows
    /// the payload.
    #[test]
    fn a_request_queued_after_a_large_header_waits_behind_its_payload() {
        let mut outbox = Outbox::default();
        outbox.bytes.extend_from_slice(b"LARGE-HEADER");
        let payload_at = outbox.bytes.len();
        outbox.bytes.extend_from_slice(b"small-header+payload");
        let first = outbox.batch_len(Some(payload_at));
        assert_eq!(&outbox.bytes[..first], b"LARGE-HEADER");
        outbox.bytes.drain(..first);
        assert_eq!(outbox.batch_len(None), b"small-header+payload".len());
    }
}

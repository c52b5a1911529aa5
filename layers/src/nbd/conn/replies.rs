//! Reading the server's replies. One socket read brings as many replies as
//! it holds into the link's inbox, and the reader parses every whole one
//! there: each is checked against the request it names before a byte of its
//! payload is taken, a READ's data is copied from the inbox straight into the
//! buffer the request brought, and its owner is woken. A payload larger than
//! what the inbox holds is taken piece by piece as it arrives.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::task::Waker;

use std::collections::HashMap;

use super::{lost, lost_by, Conn, Ledger, Link, Pending, Step};
use crate::buf::{AlignedBuf, IoBufMut};
use crate::exec::IoCtx;
use crate::nbd::wire::*;
use crate::uring::Op;

/// Longest message an error chunk may carry (the protocol's limit), with its
/// fixed fields.
const MAX_ERROR_CHUNK: u32 = 4 + 2 + 4096 + 8;
/// Room of a link's inbox: the most one socket read brings.
const INBOX_BYTES: usize = 256 << 10;
/// Everything of a message but a READ's data is parsed whole from the inbox,
/// so the longest such part must fit with room for the read that completes it.
const _: () = assert!(CHUNK_HEADER_BYTES + MAX_ERROR_CHUNK as usize <= INBOX_BYTES / 2);

/// What the server sent that is not parsed yet, and where the data of the
/// reply being read goes. One per link; the reader of the moment holds it.
pub(super) struct Inbox {
    /// `None` only while a socket read into it is in flight.
    buf: Option<AlignedBuf>,
    start: usize,
    end: usize,
    fill: Option<Fill>,
}

/// A READ's data still to come.
struct Fill {
    cookie: u64,
    /// Where the next byte goes in the request's buffer.
    at: usize,
    left: usize,
    /// The data ends a simple reply (`None`) or a chunk (whether it is the
    /// reply's last).
    last_chunk: Option<bool>,
}

impl Inbox {
    pub(super) fn new() -> Inbox {
        Inbox {
            buf: Some(AlignedBuf::new(INBOX_BYTES)),
            start: 0,
            end: 0,
            fill: None,
        }
    }

    /// Moves what is not parsed yet to the front of `buf`: the room after it.
    fn compact(&mut self, buf: &mut AlignedBuf) -> Range<usize> {
        buf.as_mut_slice().copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        self.end..buf.len()
    }

    /// Takes what fits of `bytes` after what is not parsed yet, as a socket
    /// read into the room [`Conn::refill`] makes would: how many it took.
    pub(super) fn receive(&mut self, bytes: &[u8]) -> usize {
        let mut buf = self
            .buf
            .take()
            .expect("an inbox between reads has its buffer");
        let room = self.compact(&mut buf);
        let n = bytes.len().min(room.len());
        buf.as_mut_slice()[room.start..room.start + n].copy_from_slice(&bytes[..n]);
        self.end += n;
        self.buf = Some(buf);
        n
    }
}

/// How a message at the head of the inbox was taken.
enum Parsed {
    /// So many bytes were used.
    Used(usize),
    /// Not all of it is here yet.
    Partial,
}

type Parse = std::result::Result<Parsed, super::Broken>;

impl Conn {
    /// Reads and files replies until `cookie`'s is complete (or the link
    /// breaks). Replies to other requests wake their owners as they come.
    pub(super) async fn read_replies(&self, ctx: &IoCtx, link: &Link, cookie: u64) -> Step {
        let taken = link.inbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut inbox) = taken else {
            return Err(lost("a reply was abandoned half read".into()));
        };
        let mut wakers = Vec::new();
        let result = loop {
            let parsed = self.parse(&mut inbox, link.structured, &mut wakers);
            for waker in wakers.drain(..) {
                waker.wake();
            }
            if let Err(broken) = parsed {
                break Err(broken);
            }
            if self.answered(cookie) {
                break Ok(());
            }
            if let Err(broken) = self.refill(ctx, link, &mut inbox).await {
                break Err(broken);
            }
        };
        // A link that broke keeps no inbox: its replies are not read again.
        if result.is_ok() {
            *link.inbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(inbox);
        }
        result
    }

    /// Whether `cookie` has its reply (or is gone with a failed link).
    fn answered(&self, cookie: u64) -> bool {
        !matches!(self.state().pending.get(&cookie), Some(entry) if !entry.done)
    }

    /// Moves what is left to the front of the inbox and reads what the
    /// socket has after it (at least one byte).
    async fn refill(&self, ctx: &IoCtx, link: &Link, inbox: &mut Inbox) -> Step {
        let mut buf = inbox
            .buf
            .take()
            .expect("an inbox between reads has its buffer");
        let room = inbox.compact(&mut buf);
        let got = if let Some(secure) = &link.tls {
            let got = self
                .recv_secure(ctx, link, secure, &mut buf.as_mut_slice()[room])
                .await;
            inbox.buf = Some(buf);
            got?
        } else {
            let mut buf = IoBufMut::from_aligned(buf);
            let op = Op::Read {
                fd: link.fd(),
                offset: 0,
                buf: &mut buf,
                range: room,
            };
            let res = ctx.uring().submit(op).await;
            // The ring let go of the buffer with the completion.
            inbox.buf = Some(
                buf.into_aligned()
                    .map_err(|_| lost("the inbox is still held by the ring".into()))?,
            );
            match res {
                n if n > 0 => n as usize,
                0 => return Err(lost("the server closed the connection".into())),
                errno => return Err(lost_by("reading from the server", errno)),
            }
        };
        inbox.end += got;
        Ok(())
    }

    /// Files every whole reply (and every piece of READ data) in the inbox.
    /// Owners to wake are added to `wakers`, to be woken without the lock.
    fn parse(&self, inbox: &mut Inbox, structured: bool, wakers: &mut Vec<Waker>) -> Step {
        let mut guard = self.state();
        let mut filed = Filed {
            pending: &mut guard.pending,
            ledger: &self.ledger,
        };
        parse(&mut filed, inbox, structured, wakers)
    }
}

/// The requests in flight that replies are filed under, and the ledger a
/// finished write counts in.
pub(super) struct Filed<'a> {
    pub(super) pending: &'a mut HashMap<u64, Pending>,
    pub(super) ledger: &'a Ledger,
}

/// Files every whole reply (and every piece of READ data) in `inbox` under
/// the requests of `state`. Owners to wake are added to `wakers`.
pub(super) fn parse(
    state: &mut Filed,
    inbox: &mut Inbox,
    structured: bool,
    wakers: &mut Vec<Waker>,
) -> Step {
    let Inbox {
        buf,
        start,
        end,
        fill,
    } = inbox;
    let buf = buf.as_ref().expect("an inbox between reads has its buffer");
    loop {
        let bytes = &buf.as_slice()[*start..*end];
        if let Some(data) = fill {
            let n = data.left.min(bytes.len());
            deliver(state, data.cookie, data.at, &bytes[..n])?;
            *start += n;
            data.at += n;
            data.left -= n;
            if data.left > 0 {
                return Ok(());
            }
            let Fill {
                cookie, last_chunk, ..
            } = fill.take().expect("just seen");
            match last_chunk {
                None => finish(state, cookie, None, wakers),
                Some(last) => end_chunk(state, cookie, last, wakers)?,
            }
            continue;
        }
        if bytes.len() < 4 {
            return Ok(());
        }
        let parsed = match u32::from_be_bytes(take(bytes, 0)) {
            SIMPLE_REPLY_MAGIC => simple(state, bytes, fill, wakers)?,
            STRUCTURED_REPLY_MAGIC if structured => chunk(state, bytes, fill, wakers)?,
            STRUCTURED_REPLY_MAGIC => {
                return Err("a structured reply, which was not negotiated"
                    .to_string()
                    .into())
            }
            other => return Err(format!("a reply with the bad magic {other:#010x}").into()),
        };
        match parsed {
            Parsed::Used(n) => *start += n,
            Parsed::Partial => return Ok(()),
        }
    }
}

fn simple(
    state: &mut Filed,
    bytes: &[u8],
    fill: &mut Option<Fill>,
    wakers: &mut Vec<Waker>,
) -> Parse {
    if bytes.len() < SIMPLE_REPLY_BYTES {
        return Ok(Parsed::Partial);
    }
    let error = u32::from_be_bytes(take(bytes, 4));
    let cookie = u64::from_be_bytes(take(bytes, 8));
    let (kind, len, _) = lookup(state, cookie)?;
    if error != 0 {
        // A failed simple reply carries no data.
        finish(state, cookie, Some(errno(error)), wakers);
    } else if kind == CMD_READ {
        if state.pending.get(&cookie).is_some_and(|e| e.covered != 0) {
            // Its chunks would count toward a reply that no longer says
            // which bytes came.
            return Err(format!(
                "a simple reply to read {cookie}, which structured chunks had begun to answer"
            )
            .into());
        }
        *fill = Some(Fill {
            cookie,
            at: 0,
            left: len as usize,
            last_chunk: None,
        });
    } else {
        finish(state, cookie, None, wakers);
    }
    Ok(Parsed::Used(SIMPLE_REPLY_BYTES))
}

fn chunk(
    state: &mut Filed,
    bytes: &[u8],
    fill: &mut Option<Fill>,
    wakers: &mut Vec<Waker>,
) -> Parse {
    if bytes.len() < CHUNK_HEADER_BYTES {
        return Ok(Parsed::Partial);
    }
    let flags = u16::from_be_bytes(take(bytes, 4));
    let chunk = u16::from_be_bytes(take(bytes, 6));
    let cookie = u64::from_be_bytes(take(bytes, 8));
    let length = u32::from_be_bytes(take(bytes, 16));
    let last = flags & REPLY_FLAG_DONE != 0;
    let (kind, len, start) = lookup(state, cookie)?;
    let end = start + u64::from(len);
    // The header alone decides whether the chunk is acceptable; only then
    // is its body waited for.
    let body = &bytes[CHUNK_HEADER_BYTES..];
    let used = match chunk {
        REPLY_TYPE_NONE if length == 0 => CHUNK_HEADER_BYTES,
        REPLY_TYPE_OFFSET_DATA if kind == CMD_READ && length >= 8 && length - 8 <= len => {
            if body.len() < 8 {
                return Ok(Parsed::Partial);
            }
            let at = u64::from_be_bytes(take(body, 0));
            let n = u64::from(length - 8);
            if at < start || at.saturating_add(n) > end {
                return Err(
                    format!("a data chunk at {at}+{n} outside its read {start}..{end}").into(),
                );
            }
            cover(state, cookie, n)?;
            *fill = Some(Fill {
                cookie,
                at: (at - start) as usize,
                left: n as usize,
                last_chunk: Some(last),
            });
            return Ok(Parsed::Used(CHUNK_HEADER_BYTES + 8));
        }
        REPLY_TYPE_OFFSET_HOLE if kind == CMD_READ && length == 12 => {
            if body.len() < 12 {
                return Ok(Parsed::Partial);
            }
            let at = u64::from_be_bytes(take(body, 0));
            let n = u64::from(u32::from_be_bytes(take(body, 8)));
            if at < start || at.saturating_add(n) > end {
                return Err(
                    format!("a hole chunk at {at}+{n} outside its read {start}..{end}").into(),
                );
            }
            cover(state, cookie, n)?;
            zero(state, cookie, (at - start) as usize, n as usize)?;
            CHUNK_HEADER_BYTES + 12
        }
        chunk if chunk & (1 << 15) != 0 && (6..=MAX_ERROR_CHUNK).contains(&length) => {
            let Some(body) = body.get(..length as usize) else {
                return Ok(Parsed::Partial);
            };
            let value = u32::from_be_bytes(take(body, 0));
            let text_len = usize::from(u16::from_be_bytes(take(body, 4)));
            let text = body.get(6..6 + text_len).unwrap_or_default();
            tracing::warn!(
                cookie,
                error = value,
                message = %String::from_utf8_lossy(text),
                "nbd server reported an error"
            );
            if let Some(entry) = state.pending.get_mut(&cookie) {
                let errno = if value == 0 { libc::EIO } else { errno(value) };
                entry.error = entry.error.or(Some(errno));
            }
            CHUNK_HEADER_BYTES + length as usize
        }
        _ => {
            return Err(format!(
            "an unexpected reply chunk (type {chunk}, {length} bytes) to a request of type {kind}"
        )
            .into())
        }
    };
    end_chunk(state, cookie, last, wakers)?;
    Ok(Parsed::Used(used))
}

/// A chunk of `cookie`'s reply is taken; the reply is complete if it was
/// the last, and then a read must be covered whole.
fn end_chunk(state: &mut Filed, cookie: u64, last: bool, wakers: &mut Vec<Waker>) -> Step {
    if !last {
        return Ok(());
    }
    // Gone when the link failed while the chunk's data was coming.
    let Some(entry) = state.pending.get(&cookie) else {
        return Ok(());
    };
    if entry.kind == CMD_READ && entry.error.is_none() && entry.covered != u64::from(entry.len) {
        return Err(format!(
            "a read reply covering {} of its {} bytes",
            entry.covered, entry.len
        )
        .into());
    }
    finish(state, cookie, None, wakers);
    Ok(())
}

/// The reply to `cookie` is complete: its owner is to be woken (or the
/// entry dropped, if the owner is gone).
fn finish(state: &mut Filed, cookie: u64, error: Option<i32>, wakers: &mut Vec<Waker>) {
    let Some(entry) = state.pending.get_mut(&cookie) else {
        return;
    };
    if entry.done {
        // Failed with its link meanwhile.
        return;
    }
    entry.error = entry.error.or(error);
    entry.done = true;
    if entry.error.is_none() && matches!(entry.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
        state.ledger.writes_done.fetch_add(1, Ordering::SeqCst);
    }
    if entry.abandoned {
        state.pending.remove(&cookie);
    } else if let Some(waker) = entry.waker.take() {
        wakers.push(waker);
    }
}

/// The request a reply names: its type, length and offset.
fn lookup(state: &Filed, cookie: u64) -> std::result::Result<(u16, u32, u64), String> {
    match state.pending.get(&cookie) {
        Some(entry) if !entry.done => Ok((entry.kind, entry.len, entry.offset)),
        _ => Err(format!(
            "a reply to cookie {cookie}, which is not in flight"
        )),
    }
}

fn cover(state: &mut Filed, cookie: u64, n: u64) -> std::result::Result<(), String> {
    let entry = state.pending.get_mut(&cookie).expect("looked up");
    entry.covered += n;
    if entry.covered > u64::from(entry.len) {
        return Err(format!(
            "read chunks covering more than the {} bytes asked",
            entry.len
        ));
    }
    Ok(())
}

/// Copies `bytes` into `cookie`'s buffer at `at`; nothing if the request is
/// gone, finished, or was abandoned.
fn deliver(state: &mut Filed, cookie: u64, at: usize, bytes: &[u8]) -> Step {
    if bytes.is_empty() {
        return Ok(());
    }
    if let Some(dest) = state
        .pending
        .get_mut(&cookie)
        .filter(|e| !e.done)
        .and_then(|e| e.dest.as_mut())
    {
        dest.slice()
            .get_mut(at..at + bytes.len())
            .ok_or_else(|| format!("read data past the end of cookie {cookie}'s buffer"))?
            .copy_from_slice(bytes);
    }
    Ok(())
}

fn zero(state: &mut Filed, cookie: u64, at: usize, n: usize) -> Step {
    if let Some(dest) = state
        .pending
        .get_mut(&cookie)
        .filter(|e| !e.done)
        .and_then(|e| e.dest.as_mut())
    {
        dest.slice()
            .get_mut(at..at + n)
            .ok_or_else(|| format!("a hole past the end of cookie {cookie}'s buffer"))?
            .fill(0);
    }
    Ok(())
}

/// The protocol's error value as an errno.
fn errno(value: u32) -> i32 {
    match value {
        EPERM => libc::EPERM,
        ENOMEM => libc::ENOMEM,
        EINVAL => libc::EINVAL,
        ENOSPC => libc::ENOSPC,
        EOVERFLOW => libc::EOVERFLOW,
        ENOTSUP => libc::EOPNOTSUPP,
        ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

//! Reading the server's replies: simple replies and structured chunks, each
//! checked against the request it names before a byte of its payload is
//! read, and filed under that request.

use std::sync::atomic::Ordering;

use super::{Conn, Link, Step};
use crate::exec::IoCtx;
use crate::nbd::wire::*;

/// Longest message an error chunk may carry (the protocol's limit), with its
/// fixed fields.
const MAX_ERROR_CHUNK: u32 = 4 + 2 + 4096 + 8;

impl Conn {
    /// Reads one reply (or one structured chunk) and files it.
    pub(super) async fn read_reply(&self, ctx: &IoCtx, link: &Link) -> Step {
        let mut magic = [0u8; 4];
        self.recv(ctx, link, &mut magic).await?;
        match u32::from_be_bytes(magic) {
            SIMPLE_REPLY_MAGIC => self.read_simple(ctx, link).await,
            STRUCTURED_REPLY_MAGIC if link.structured => self.read_chunk(ctx, link).await,
            STRUCTURED_REPLY_MAGIC => Err("a structured reply, which was not negotiated"
                .to_string()
                .into()),
            other => Err(format!("a reply with the bad magic {other:#010x}").into()),
        }
    }

    async fn read_simple(&self, ctx: &IoCtx, link: &Link) -> Step {
        let mut rest = [0u8; SIMPLE_REPLY_BYTES - 4];
        self.recv(ctx, link, &mut rest).await?;
        let error = u32::from_be_bytes(take(&rest, 0));
        let cookie = u64::from_be_bytes(take(&rest, 4));
        let (kind, len) = self.lookup(cookie)?;
        if error != 0 {
            // A failed simple reply carries no data.
            return self.finish(cookie, Some(errno(error)));
        }
        if kind == CMD_READ {
            self.fill(ctx, link, cookie, 0, len as usize).await?;
        }
        self.finish(cookie, None)
    }

    async fn read_chunk(&self, ctx: &IoCtx, link: &Link) -> Step {
        let mut rest = [0u8; CHUNK_HEADER_BYTES - 4];
        self.recv(ctx, link, &mut rest).await?;
        let flags = u16::from_be_bytes(take(&rest, 0));
        let chunk = u16::from_be_bytes(take(&rest, 2));
        let cookie = u64::from_be_bytes(take(&rest, 4));
        let length = u32::from_be_bytes(take(&rest, 12));
        let (kind, len) = self.lookup(cookie)?;
        let (start, end) = self.range_of(cookie);
        let mut error = None;
        match chunk {
            REPLY_TYPE_NONE if length == 0 => {}
            REPLY_TYPE_OFFSET_DATA if kind == CMD_READ && length >= 8 && length - 8 <= len => {
                let mut at = [0u8; 8];
                self.recv(ctx, link, &mut at).await?;
                let at = u64::from_be_bytes(at);
                let n = u64::from(length - 8);
                if at < start || at.saturating_add(n) > end {
                    return Err(format!("a data chunk at {at}+{n} outside its read {start}..{end}").into());
                }
                self.cover(cookie, n)?;
                self.fill(ctx, link, cookie, (at - start) as usize, n as usize).await?;
            }
            REPLY_TYPE_OFFSET_HOLE if kind == CMD_READ && length == 12 => {
                let mut hole = [0u8; 12];
                self.recv(ctx, link, &mut hole).await?;
                let at = u64::from_be_bytes(take(&hole, 0));
                let n = u64::from(u32::from_be_bytes(take(&hole, 8)));
                if at < start || at.saturating_add(n) > end {
                    return Err(format!("a hole chunk at {at}+{n} outside its read {start}..{end}").into());
                }
                self.cover(cookie, n)?;
                self.zero(cookie, (at - start) as usize, n as usize);
            }
            chunk if chunk & (1 << 15) != 0 && (6..=MAX_ERROR_CHUNK).contains(&length) => {
                let mut body = vec![0u8; length as usize];
                self.recv(ctx, link, &mut body).await?;
                let value = u32::from_be_bytes(take(&body, 0));
                let text_len = usize::from(u16::from_be_bytes(take(&body, 4)));
                let text = body.get(6..6 + text_len).unwrap_or_default();
                tracing::warn!(
                    cookie,
                    error = value,
                    message = %String::from_utf8_lossy(text),
                    "nbd server reported an error"
                );
                error = Some(if value == 0 { libc::EIO } else { errno(value) });
            }
            _ => {
                return Err(format!(
                    "an unexpected reply chunk (type {chunk}, {length} bytes) to a request of type {kind}"
                )
                .into())
            }
        }
        if error.is_some() {
            self.set_error(cookie, error);
        }
        if flags & REPLY_FLAG_DONE == 0 {
            return Ok(());
        }
        let covered = self.state().pending.get(&cookie).map_or(0, |e| e.covered);
        let failed = self
            .state()
            .pending
            .get(&cookie)
            .is_some_and(|e| e.error.is_some());
        if kind == CMD_READ && !failed && covered != u64::from(len) {
            return Err(format!("a read reply covering {covered} of its {len} bytes").into());
        }
        self.finish(cookie, None)
    }

    /// The request a reply names: its type and length.
    fn lookup(&self, cookie: u64) -> std::result::Result<(u16, u32), String> {
        match self.state().pending.get(&cookie) {
            Some(entry) if !entry.done => Ok((entry.kind, entry.len)),
            _ => Err(format!(
                "a reply to cookie {cookie}, which is not in flight"
            )),
        }
    }

    fn range_of(&self, cookie: u64) -> (u64, u64) {
        let state = self.state();
        let entry = &state.pending[&cookie];
        (entry.offset, entry.offset + u64::from(entry.len))
    }

    fn cover(&self, cookie: u64, n: u64) -> std::result::Result<(), String> {
        let mut state = self.state();
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

    fn set_error(&self, cookie: u64, error: Option<i32>) {
        let mut state = self.state();
        let entry = state.pending.get_mut(&cookie).expect("looked up");
        entry.error = entry.error.or(error);
    }

    /// Reads `n` bytes of data into `cookie`'s buffer at `at`.
    async fn fill(&self, ctx: &IoCtx, link: &Link, cookie: u64, at: usize, n: usize) -> Step {
        let mut data = self
            .state()
            .pending
            .get_mut(&cookie)
            .and_then(|entry| entry.data.take())
            .ok_or_else(|| format!("read data for cookie {cookie}, which is no read"))?;
        let read = self.recv(ctx, link, &mut data[at..at + n]).await;
        if let Some(entry) = self.state().pending.get_mut(&cookie) {
            entry.data = Some(data);
        }
        read
    }

    fn zero(&self, cookie: u64, at: usize, n: usize) {
        let mut state = self.state();
        if let Some(data) = state.pending.get_mut(&cookie).and_then(|e| e.data.as_mut()) {
            data[at..at + n].fill(0);
        }
    }

    /// The reply to `cookie` is complete: wake its owner (or drop it, if the
    /// owner is gone).
    fn finish(&self, cookie: u64, error: Option<i32>) -> Step {
        let waker = {
            let mut state = self.state();
            let entry = state.pending.get_mut(&cookie).expect("looked up");
            entry.error = entry.error.or(error);
            entry.done = true;
            if entry.error.is_none() && matches!(entry.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
                self.ledger.writes_done.fetch_add(1, Ordering::SeqCst);
            }
            if entry.abandoned {
                state.pending.remove(&cookie);
                None
            } else {
                entry.waker.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
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

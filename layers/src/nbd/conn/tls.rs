//! `nbds://` in the transmission phase: rustls does no I/O of its own; the
//! ciphertext it makes and takes goes through the queues' rings like the
//! bytes of a plain socket.
//!
//! A link's session is shared by the sender of the moment (under the send
//! lock) and the reader of the moment, each holding its thread lock only
//! while handing rustls plaintext or ciphertext, never across a ring
//! operation. Records leave in the order rustls makes them: only senders
//! drain it, one at a time, so a record the reader's processing queued (an
//! answer to a key update) leaves with the next request.
//!
//! Ciphertext that does not verify is a broken protocol, as a bad reply
//! magic is: the connection fails for good rather than trust the stream.

use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard};

use rustls::ClientConnection;

use super::{lost, lost_by, write_all, Broken, Conn, Link, Step};
use crate::exec::IoCtx;
use crate::uring::Op;

/// Plaintext handed to rustls at once: bounds the ciphertext held before it
/// is sent.
const PLAIN_PIECE: usize = 256 << 10;
/// Most ciphertext read from the socket at once.
const CIPHER_READ: usize = 64 << 10;

/// The TLS session of one link.
pub(super) struct Secure {
    session: ClientConnection,
    /// Ciphertext read from the socket that rustls has not taken yet.
    inbox: Vec<u8>,
    /// How much of `inbox` rustls has taken.
    taken: usize,
}

impl Secure {
    pub(super) fn new(session: ClientConnection) -> Mutex<Secure> {
        Mutex::new(Secure {
            session,
            inbox: Vec::new(),
            taken: 0,
        })
    }
}

fn lock(secure: &Mutex<Secure>) -> MutexGuard<'_, Secure> {
    secure.lock().unwrap_or_else(|e| e.into_inner())
}

fn broken(what: &str, error: impl std::fmt::Display) -> Broken {
    Broken::from(format!("TLS {what}: {error}"))
}

impl Conn {
    /// Encrypts `bytes` and writes the records, in pieces of at most
    /// [`PLAIN_PIECE`] bytes of plaintext.
    pub(super) async fn send_secure(
        &self,
        ctx: &IoCtx,
        link: &Link,
        secure: &Mutex<Secure>,
        bytes: &[u8],
    ) -> Step {
        let mut rest = bytes;
        loop {
            let records = {
                let mut guard = lock(secure);
                let session = &mut guard.session;
                let piece = rest.len().min(PLAIN_PIECE);
                session
                    .writer()
                    .write_all(&rest[..piece])
                    .map_err(|e| broken("sending", e))?;
                rest = &rest[piece..];
                let mut records = Vec::new();
                while session.wants_write() {
                    session
                        .write_tls(&mut records)
                        .map_err(|e| broken("sending", e))?;
                }
                records
            };
            self.write_raw(ctx, link, &records).await?;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// Reads plaintext into `out`, at least one byte, reading and decrypting
    /// records as needed; how many bytes came.
    pub(super) async fn recv_secure(
        &self,
        ctx: &IoCtx,
        link: &Link,
        secure: &Mutex<Secure>,
        out: &mut [u8],
    ) -> std::result::Result<usize, Broken> {
        let mut got = 0;
        while got == 0 {
            let mut inbox = {
                let mut guard = lock(secure);
                let Secure {
                    session,
                    inbox,
                    taken,
                } = &mut *guard;
                // Plaintext first: rustls holds only a bounded amount, and
                // takes no more ciphertext once that is full.
                match session.reader().read(&mut out[got..]) {
                    Ok(0) => return Err(lost("the server ended the TLS session".into())),
                    Ok(n) => {
                        got += n;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(lost(format!("TLS: {e}"))),
                }
                if *taken < inbox.len() {
                    let mut unread = &inbox[*taken..];
                    *taken += session
                        .read_tls(&mut unread)
                        .map_err(|e| broken("receiving", e))?;
                    session
                        .process_new_packets()
                        .map_err(|e| broken("receiving", e))?;
                    continue;
                }
                *taken = 0;
                std::mem::take(inbox)
            };
            let read = self.read_raw(ctx, link, &mut inbox).await;
            lock(secure).inbox = inbox;
            read?;
        }
        Ok(got)
    }

    /// Writes all of `bytes` to the socket, through a queue-pool buffer that
    /// the ring holds until each write's CQE.
    async fn write_raw(&self, ctx: &IoCtx, link: &Link, bytes: &[u8]) -> Step {
        let mut buf = ctx.buf(bytes.len());
        buf.copy_from_slice(bytes);
        write_all(ctx, link, &buf.freeze()).await
    }

    /// Replaces `inbox` with the next bytes the socket has (at least one).
    async fn read_raw(&self, ctx: &IoCtx, link: &Link, inbox: &mut Vec<u8>) -> Step {
        inbox.clear();
        let mut buf = ctx.buf(CIPHER_READ);
        let op = Op::Read {
            fd: link.fd(),
            offset: 0,
            buf: &mut buf,
            range: 0..CIPHER_READ,
        };
        match ctx.uring().submit(op).await {
            n if n > 0 => {
                inbox.extend_from_slice(&buf[..n as usize]);
                Ok(())
            }
            0 => Err(lost("the server closed the connection".into())),
            errno => Err(lost_by("reading from the server", errno)),
        }
    }
}

//! One NBD connection in the transmission phase, shared by every queue and
//! driven on the ring of whichever queue's request is using it.
//!
//! Sending ([`outbox`]): a request queues its header (and a small payload)
//! in the link's outbox, and one request at a time, the *sender*, writes
//! what is queued through its own queue's ring, many requests per write.
//!
//! Receiving ([`replies`]): the reply stream is read by one request at a
//! time, the *reader*: a waiting request that finds nobody reading becomes
//! the reader and reads what the socket has, many replies per read, filing
//! each under its cookie (a READ's data goes straight into the buffer the
//! request brought) and waking its owner (on whatever queue), until its own
//! reply has come; then it hands the role to another waiting request. So
//! there is no thread of its own and no task beyond the requests, and while
//! requests wait, one of them reads.
//!
//! A socket that fails or closes is *lost*, and so is a TCP link the server
//! has acknowledged nothing on for `timeout` (a cut link, a host gone; see
//! `Stream::detect_silence`): a thread connects again with backoff (the
//! handshake is blocking, so it stays off the queues) for up to `timeout`
//! since the server was last heard, and the requests in flight are sent
//! again on the new socket; past that they fail with EIO, and so does every
//! later one until the thread, still trying, gets through. Writes
//! acknowledged since the last flush may have been lost with the server, so
//! the first flush after a reconnect fails with EIO (a mirror then fails the
//! leg rather than trust it).
//!
//! A server that breaks the protocol (a bad magic, a reply to a cookie not in
//! flight, a chunk longer than its request or outside it, a reply that does
//! not cover a read) fails the connection for good: every request in flight
//! and every later one fails with EIO. Nothing the server sends makes the
//! client allocate: read data lands in the buffer the request brought, and
//! every other payload is bounded by a constant.
//!
//! Parts: [`outbox`] sends requests; [`replies`] reads and files what the
//! server sends; [`redial`]
//! connects again after a loss; [`tls`] carries the bytes of an `nbds://`
//! link through its TLS session.

use std::collections::HashMap;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::handshake::{Stream, Transport};
use super::tls::TlsClient;
use super::uri::NbdUri;
use super::wire::*;
use crate::buf::IoBuf;
use crate::exec::IoCtx;
use crate::uring::Op;
use crate::{Error, Result};

#[doc(hidden)]
pub(crate) mod fuzzing;
mod outbox;
mod redial;
mod replies;
mod tls;

use outbox::Outbox;
use replies::Inbox;
/// The error an entry carries when its socket was lost: send it again.
const LOST: i32 = -1;

/// How to connect again, and what the server must still offer.
pub(super) struct Redial {
    pub uri: NbdUri,
    pub tls: Option<TlsClient>,
    pub timeout: Duration,
    pub size: u64,
}

/// What the leaf's connections share to keep FLUSH honest across a lost
/// connection: writes acknowledged, and how many a flush has covered.
#[derive(Default)]
pub(super) struct Ledger {
    writes_done: AtomicU64,
    flushed: AtomicU64,
    /// Acknowledged writes were not covered by a flush when a connection was
    /// lost: the next flush reports EIO.
    lost_unflushed: AtomicBool,
}

pub(super) struct Conn {
    me: Weak<Conn>,
    redial: Redial,
    ledger: Arc<Ledger>,
    state: Mutex<State>,
}

/// One socket of the connection: replaced by a new one after a reconnect.
#[derive(Clone)]
struct Link {
    stream: Arc<Stream>,
    /// The TLS session on `stream`, for `nbds://`.
    tls: Option<Arc<Mutex<tls::Secure>>>,
    generation: u64,
    structured: bool,
    /// Requests not yet written.
    outbox: Arc<Mutex<Outbox>>,
    /// Replies read and not yet parsed; `None` while the reader holds it,
    /// and for good once a reader broke off mid-reply.
    inbox: Arc<Mutex<Option<Inbox>>>,
}

impl Link {
    fn new(transport: Transport, generation: u64, structured: bool) -> Link {
        Link {
            stream: Arc::new(transport.stream),
            tls: transport
                .tls
                .map(|session| Arc::new(tls::Secure::new(session))),
            generation,
            structured,
            outbox: Arc::default(),
            inbox: Arc::new(Mutex::new(Some(Inbox::new()))),
        }
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Health {
    Up,
    /// Lost at this instant; a thread is connecting again.
    Down(Instant),
    Failed,
}

struct State {
    link: Link,
    health: Health,
    next_cookie: u64,
    pending: HashMap<u64, Pending>,
    /// A request is reading replies of the current link.
    reading: bool,
    /// Why the connection is down or failed.
    broken: Option<String>,
    /// Requests waiting for the connection to come back.
    link_waiters: Vec<Waker>,
}

struct Pending {
    kind: u16,
    offset: u64,
    len: u32,
    /// Where a READ's data goes: the request's buffer, `len` bytes; `None`
    /// once the request is abandoned.
    dest: Option<Dest>,
    /// Bytes of a READ covered by structured chunks so far.
    covered: u64,
    /// The first error the server reported, as an errno ([`LOST`]: the
    /// socket was lost).
    error: Option<i32>,
    done: bool,
    waker: Option<Waker>,
    /// The request's future was dropped: its reply is read and thrown away.
    abandoned: bool,
}

/// A READ's buffer, which the reader fills from whatever queue it runs on.
struct Dest {
    ptr: *mut u8,
    len: usize,
}

// The one unsafe part of the client: a READ's data is copied into the
// request's buffer by whichever request is reading, on any queue, with no
// copy through memory of its own.
// SAFETY: a `Dest` is made from a `&mut [u8]` that the request's future
// borrows for as long as its entry is filed (`Conn::attempt`), and it is only
// written through under the state lock, while the entry is filed and not
// done; the owner reads its buffer only after taking the finished entry out
// under the same lock, and a dropped owner clears `dest` under it first.
#[allow(unsafe_code)]
unsafe impl Send for Dest {}

impl Dest {
    #[allow(unsafe_code)]
    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: see `unsafe impl Send for Dest`: the buffer is alive and
        // nothing else touches it while the state lock is held.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Why a link stopped: its socket was lost (connect again), or the server
/// broke the protocol (give up).
pub(super) struct Broken {
    lost: bool,
    /// Lost because the server acknowledged nothing for `timeout` (see
    /// [`Stream::detect_silence`]): it has been unreachable that long already.
    silent: bool,
    reason: String,
}

impl From<String> for Broken {
    fn from(reason: String) -> Broken {
        Broken {
            lost: false,
            silent: false,
            reason,
        }
    }
}

fn lost(reason: String) -> Broken {
    Broken {
        lost: true,
        silent: false,
        reason,
    }
}

/// A socket call failed with `errno` (negative): lost, and silent when the
/// kernel gave up on an unanswered TCP link.
fn lost_by(what: &str, errno: i32) -> Broken {
    let silent = matches!(
        -errno,
        libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH
    );
    Broken {
        lost: true,
        silent,
        reason: format!("{what}: {}", std::io::Error::from_raw_os_error(-errno)),
    }
}

type Step = std::result::Result<(), Broken>;

/// Writes all of `buf` to the socket; the ring holds `buf` until each write's
/// CQE. Plain and TLS links both send through here.
async fn write_all(ctx: &IoCtx, link: &Link, buf: &crate::buf::IoBuf) -> Step {
    let mut sent = 0;
    while sent < buf.len() {
        let op = Op::Write {
            fd: link.fd(),
            offset: 0,
            buf,
            range: sent..buf.len(),
        };
        sent += match ctx.uring().submit(op).await {
            n if n > 0 => n as usize,
            0 => return Err(lost("the server stopped taking data".into())),
            errno => return Err(lost_by("sending to the server", errno)),
        };
    }
    Ok(())
}

enum Turn {
    Done(std::result::Result<(), i32>),
    Read(Link),
}

impl Conn {
    pub(super) fn new(
        transport: Transport,
        structured: bool,
        redial: Redial,
        ledger: Arc<Ledger>,
    ) -> Arc<Conn> {
        Arc::new_cyclic(|me| Conn {
            me: me.clone(),
            redial,
            ledger,
            state: Mutex::new(State {
                link: Link::new(transport, 0, structured),
                health: Health::Up,
                next_cookie: 1,
                pending: HashMap::new(),
                reading: false,
                broken: None,
                link_waiters: Vec::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the connection is down or failed, if it is.
    pub(super) fn broken(&self) -> Option<String> {
        self.state().broken.clone()
    }

    /// Whether structured replies are in use.
    pub(super) fn structured(&self) -> bool {
        self.state().link.structured
    }

    /// The current link once the connection is up (after a reconnect, if one
    /// is under way); EIO once it has failed.
    async fn up(&self) -> Result<Link> {
        poll_fn(|cx| {
            let mut state = self.state();
            match state.health {
                Health::Up => Poll::Ready(Ok(state.link.clone())),
                Health::Failed => Poll::Ready(Err(Error::Io(libc::EIO))),
                Health::Down(_) => {
                    if !state.link_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        state.link_waiters.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Sends one request (with `payload` for a WRITE) and waits for its
    /// reply; a READ's data lands in `dest`. A request whose socket is lost
    /// is sent again once the connection is back.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn request(
        &self,
        ctx: &IoCtx,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&IoBuf>,
        mut dest: Option<&mut [u8]>,
    ) -> Result<()> {
        loop {
            let link = self.up().await?;
            let flushed_upto = self.ledger.writes_done.load(Ordering::SeqCst);
            match self
                .attempt(
                    ctx,
                    &link,
                    kind,
                    flags,
                    offset,
                    len,
                    payload,
                    dest.as_deref_mut(),
                )
                .await
            {
                Ok(reply) => {
                    if kind == CMD_FLUSH {
                        self.ledger
                            .flushed
                            .fetch_max(flushed_upto, Ordering::SeqCst);
                        if self.ledger.lost_unflushed.swap(false, Ordering::SeqCst) {
                            return Err(Error::Io(libc::EIO));
                        }
                    }
                    return Ok(reply);
                }
                Err(LOST) => continue,
                Err(errno) => return Err(Error::from_res(-errno)),
            }
        }
    }

    /// One try of a request on `link`: done, or an errno ([`LOST`]).
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        ctx: &IoCtx,
        link: &Link,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&IoBuf>,
        dest: Option<&mut [u8]>,
    ) -> std::result::Result<(), i32> {
        debug_assert!(dest.as_ref().map_or(true, |d| d.len() == len as usize));
        let cookie = {
            let mut state = self.state();
            if state.health != Health::Up || state.link.generation != link.generation {
                return Err(LOST);
            }
            let cookie = state.next_cookie;
            state.next_cookie = cookie.wrapping_add(1);
            // Filed before the request is sent: its reply may be read by
            // another request before this one's send returns.
            state.pending.insert(
                cookie,
                Pending {
                    kind,
                    offset,
                    len,
                    dest: dest.map(|d| Dest {
                        ptr: d.as_mut_ptr(),
                        len: d.len(),
                    }),
                    covered: 0,
                    error: None,
                    done: false,
                    waker: None,
                    abandoned: false,
                },
            );
            cookie
        };
        let mut waiting = Waiting {
            conn: self,
            cookie,
            finished: false,
        };
        let mut header = [0u8; REQUEST_BYTES];
        header[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        header[4..6].copy_from_slice(&flags.to_be_bytes());
        header[6..8].copy_from_slice(&kind.to_be_bytes());
        header[8..16].copy_from_slice(&cookie.to_be_bytes());
        header[16..24].copy_from_slice(&offset.to_be_bytes());
        header[24..28].copy_from_slice(&len.to_be_bytes());
        let (sender, payload_at) = if outbox::large(payload) {
            (true, Some(link.queue_as_sender(&header).await?))
        } else {
            (link.queue(&header, payload), None)
        };
        if sender {
            // A send cut short by a dropped future leaves half a request on
            // the wire: the stream is lost.
            let mut on_drop = BreakOnDrop {
                conn: self,
                link: Some(link.clone()),
                what: "a request was abandoned half sent",
            };
            let sent = self.send_queued(ctx, link, payload_at.zip(payload)).await;
            on_drop.link = None;
            if let Err(broken) = sent {
                self.fail(link.generation, broken);
            }
        }
        let result = self.wait(ctx, cookie).await;
        waiting.finished = true;
        result
    }

    /// Waits for `cookie`'s reply, reading replies while nobody else does.
    async fn wait(&self, ctx: &IoCtx, cookie: u64) -> std::result::Result<(), i32> {
        loop {
            let turn = poll_fn(|cx| {
                let mut guard = self.state();
                let State {
                    pending,
                    reading,
                    link,
                    ..
                } = &mut *guard;
                let entry = pending
                    .get_mut(&cookie)
                    .expect("a waiting request stays filed until it returns");
                if entry.done {
                    let entry = pending.remove(&cookie).expect("just seen");
                    return Poll::Ready(Turn::Done(match entry.error {
                        Some(errno) => Err(errno),
                        None => Ok(()),
                    }));
                }
                if !*reading {
                    *reading = true;
                    return Poll::Ready(Turn::Read(link.clone()));
                }
                match &entry.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => entry.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            })
            .await;
            match turn {
                Turn::Done(result) => {
                    self.hand_off();
                    return result;
                }
                Turn::Read(link) => {
                    let mut on_drop = BreakOnDrop {
                        conn: self,
                        link: Some(link.clone()),
                        what: "a reply was abandoned half read",
                    };
                    let read = self.read_replies(ctx, &link, cookie).await;
                    on_drop.link = None;
                    self.stop_reading(&link);
                    if let Err(broken) = read {
                        self.fail(link.generation, broken);
                    }
                }
            }
        }
    }

    /// The reader of `link` is done; a new link has a reader of its own.
    fn stop_reading(&self, link: &Link) {
        let mut state = self.state();
        if state.link.generation == link.generation {
            state.reading = false;
        }
    }

    /// If nobody reads, wakes a waiting request to take the reader's role.
    fn hand_off(&self) {
        let waker = {
            let mut state = self.state();
            if state.reading {
                return;
            }
            state
                .pending
                .values_mut()
                .filter(|entry| !entry.done)
                .find_map(|entry| entry.waker.take())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Link `generation` stopped. A lost one is dialled again and its
    /// requests sent again; one that broke the protocol fails them, and
    /// every later one, with EIO. Nothing if that link is already replaced.
    fn fail(&self, generation: u64, broken: Broken) {
        let redial = broken.lost;
        let (wakers, link) = {
            let mut state = self.state();
            if state.link.generation != generation || state.health != Health::Up {
                return;
            }
            if redial {
                tracing::warn!(reason = %broken.reason, uri = %self.redial.uri, "nbd connection lost; connecting again");
                // A link that went silent has been unreachable for `timeout`
                // already: the time left to come back is counted from then.
                let now = Instant::now();
                let since = if broken.silent {
                    now.checked_sub(self.redial.timeout).unwrap_or(now)
                } else {
                    now
                };
                state.health = Health::Down(since);
                let ledger = &self.ledger;
                if ledger.writes_done.load(Ordering::SeqCst) > ledger.flushed.load(Ordering::SeqCst)
                {
                    ledger.lost_unflushed.store(true, Ordering::SeqCst);
                }
            } else {
                tracing::error!(reason = %broken.reason, uri = %self.redial.uri, "nbd server broke the protocol; its requests fail with EIO");
                state.health = Health::Failed;
            }
            state.broken = Some(broken.reason);
            let error = if redial { LOST } else { libc::EIO };
            state.pending.retain(|_, entry| !entry.abandoned);
            let mut wakers: Vec<Waker> = state
                .pending
                .values_mut()
                .filter(|entry| !entry.done)
                .filter_map(|entry| {
                    entry.done = true;
                    entry.error = Some(error);
                    entry.waker.take()
                })
                .collect();
            if !redial {
                wakers.append(&mut state.link_waiters);
            }
            (wakers, state.link.clone())
        };
        // Wakes a read or write of another queue stuck on the socket, and the
        // requests waiting to send on it.
        link.stream.shutdown();
        link.close_outbox();
        for waker in wakers {
            waker.wake();
        }
        if redial {
            let conn = self.me.clone();
            std::thread::Builder::new()
                .name("nbd-redial".into())
                .spawn(move || redial::redial(conn))
                .map_err(|e| self.give_up(format!("cannot start connecting again: {e}")))
                .ok();
        }
    }
}

/// Fails `link` if dropped while it holds one: the stream is mid-message.
struct BreakOnDrop<'a> {
    conn: &'a Conn,
    link: Option<Link>,
    what: &'static str,
}

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            self.conn.stop_reading(&link);
            self.conn.fail(link.generation, lost(self.what.to_string()));
        }
    }
}

/// A request's entry, abandoned if its future is dropped before the reply.
struct Waiting<'a> {
    conn: &'a Conn,
    cookie: u64,
    finished: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        {
            let mut state = self.conn.state();
            match state.pending.get_mut(&self.cookie) {
                Some(entry) if entry.done => {
                    state.pending.remove(&self.cookie);
                }
                Some(entry) => {
                    entry.abandoned = true;
                    entry.waker = None;
                    // The buffer goes with the future.
                    entry.dest = None;
                }
                None => {}
            }
        }
        // It may have been the one chosen to read next.
        self.conn.hand_off();
    }
}

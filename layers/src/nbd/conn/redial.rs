//! Connecting again after a lost socket: on a thread of its own, since the
//! handshake blocks, with backoff until `timeout` has passed since the loss.
//! Past that the connection's requests fail with EIO, and the thread keeps
//! trying, slowly, so that the leaf serves again once its server is back (a
//! mirror then takes the leg back with `readd`); it ends when the leaf is
//! dropped or the server comes back. An `nbds://` connection starts TLS
//! again, with the same certificates.

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{Conn, Health, Link};
use crate::nbd::handshake::{self, Transport};

/// First and longest pause between attempts to connect again.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Pause between attempts once the requests have failed.
const GAVE_UP_BACKOFF: Duration = Duration::from_secs(2);
/// Least time one attempt is given, even right at the deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Connects `conn` again with backoff until `timeout` has passed since the
/// loss, then gives its requests up and goes on trying every
/// [`GAVE_UP_BACKOFF`]. Holds the connection only while it tries.
pub(super) fn redial(conn: Weak<Conn>) {
    let Some((since, timeout, size)) = conn.upgrade().and_then(|c| match c.state().health {
        Health::Down(since) => Some((since, c.redial.timeout, c.redial.size)),
        _ => None,
    }) else {
        return;
    };
    let deadline = since + timeout;
    let mut pause = FIRST_BACKOFF;
    let mut last = String::new();
    let mut gave_up = false;
    loop {
        let Some(conn) = conn.upgrade() else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !gave_up && left.is_zero() {
            conn.give_up(format!("unreachable for {timeout:?}: {last}"));
            gave_up = true;
        }
        let bound = if gave_up {
            timeout
        } else {
            left.max(MIN_ATTEMPT)
        };
        match handshake::connect(&conn.redial.uri, conn.redial.tls.as_ref(), bound) {
            Ok((transport, export)) if export.size == size => {
                match transport.stream.detect_silence(timeout) {
                    Ok(()) => return conn.install(transport, export.structured),
                    Err(e) => last = format!("{}: {e}", conn.redial.uri),
                }
            }
            Ok((_, export)) => {
                return conn.give_up(format!(
                    "the server came back with an export of {} bytes, not {size}",
                    export.size
                ))
            }
            Err(error) => last = error,
        }
        drop(conn);
        let wait = if gave_up {
            GAVE_UP_BACKOFF
        } else {
            pause.min(deadline.saturating_duration_since(Instant::now()))
        };
        std::thread::sleep(wait);
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

impl Conn {
    fn install(&self, transport: Transport, structured: bool) {
        let wakers = {
            let mut state = self.state();
            let generation = state.link.generation + 1;
            state.link = Link::new(transport, generation, structured);
            state.health = Health::Up;
            state.reading = false;
            state.broken = None;
            std::mem::take(&mut state.link_waiters)
        };
        tracing::info!(uri = %self.redial.uri, "nbd connection back");
        for waker in wakers {
            waker.wake();
        }
    }

    pub(super) fn give_up(&self, reason: String) {
        let wakers = {
            let mut state = self.state();
            tracing::error!(%reason, uri = %self.redial.uri, "nbd server gone; its requests fail with EIO");
            state.health = Health::Failed;
            state.broken = Some(reason);
            std::mem::take(&mut state.link_waiters)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

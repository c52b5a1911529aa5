//! The reply parser driven from a byte slice, for the `nbd_reply` fuzz
//! target: the bytes are what a server sends on a link with a few requests in
//! flight, taken the way socket reads bring them into the inbox.

use std::collections::HashMap;

use super::replies::{self, Filed, Inbox};
use super::{Dest, Ledger, Pending};
use crate::nbd::wire::{CMD_FLUSH, CMD_READ, CMD_WRITE};

/// Reads in flight: cookie, offset, length.
const READS: [(u64, u64, u32); 4] = [
    (1, 0, 1),
    (2, 4096, 512),
    (3, 1 << 20, 4096),
    (4, 8192, 65536),
];
/// A write and a flush in flight: cookie, type, offset, length.
const OTHERS: [(u64, u16, u64, u32); 2] = [(5, CMD_WRITE, 0, 4096), (6, CMD_FLUSH, 0, 0)];
/// Bytes on each side of a read's buffer that no reply may touch.
const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xa5;

/// Parses `bytes` as the server's replies, `step` bytes per socket read (all
/// it can at once for 0); with `abandon`, the 512-byte read's owner is gone.
/// The server's error, if it broke the protocol or closed before every
/// request had its reply. Panics if the parser broke its own rules: data
/// outside a read's buffer, a read finished with only some of its chunks, an inbox
/// full of a message it cannot finish.
pub(crate) fn replies(
    bytes: &[u8],
    structured: bool,
    step: usize,
    abandon: bool,
) -> Result<(), String> {
    let mut bufs: Vec<Vec<u8>> = READS
        .iter()
        .map(|&(_, _, len)| vec![GUARD_BYTE; len as usize + 2 * GUARD])
        .collect();
    let ledger = Ledger::default();
    let mut pending = HashMap::new();
    for (&(cookie, offset, len), buf) in READS.iter().zip(&mut bufs) {
        let gone = abandon && cookie == 2;
        let dest = &mut buf[GUARD..GUARD + len as usize];
        let dest = (!gone).then_some(Dest {
            ptr: dest.as_mut_ptr(),
            len: dest.len(),
        });
        pending.insert(cookie, entry(CMD_READ, offset, len, dest, gone));
    }
    for (cookie, kind, offset, len) in OTHERS {
        pending.insert(cookie, entry(kind, offset, len, None, false));
    }
    let result = run(&mut pending, &ledger, bytes, structured, step);
    // The buffers are looked at only once no entry points into them.
    drop(pending);
    for (&(cookie, _, len), buf) in READS.iter().zip(&bufs) {
        let (head, rest) = buf.split_at(GUARD);
        let tail = &rest[len as usize..];
        assert!(
            head.iter().chain(tail).all(|&b| b == GUARD_BYTE),
            "a reply wrote outside the buffer of read {cookie}"
        );
    }
    result
}

fn entry(kind: u16, offset: u64, len: u32, dest: Option<Dest>, abandoned: bool) -> Pending {
    Pending {
        kind,
        offset,
        len,
        dest,
        covered: 0,
        error: None,
        done: false,
        waker: None,
        abandoned,
    }
}

fn run(
    pending: &mut HashMap<u64, Pending>,
    ledger: &Ledger,
    mut bytes: &[u8],
    structured: bool,
    step: usize,
) -> Result<(), String> {
    let mut inbox = Inbox::new();
    let mut wakers = Vec::new();
    loop {
        if pending.is_empty() {
            return Ok(());
        }
        if bytes.is_empty() {
            return Err("the server closed the connection".into());
        }
        let want = if step == 0 {
            bytes.len()
        } else {
            step.min(bytes.len())
        };
        let got = inbox.receive(&bytes[..want]);
        assert!(got > 0, "the inbox is full of a message it cannot finish");
        bytes = &bytes[got..];
        let mut filed = Filed {
            pending: &mut *pending,
            ledger,
        };
        replies::parse(&mut filed, &mut inbox, structured, &mut wakers).map_err(|b| b.reason)?;
        // The owners take their finished entries, as `Conn::wait` does. A
        // read answered by chunks (a simple reply covers none) has them all.
        pending.retain(|cookie, entry| {
            if entry.done && entry.error.is_none() && entry.covered != 0 {
                assert_eq!(
                    entry.covered,
                    u64::from(entry.len),
                    "read {cookie} finished without all its bytes"
                );
            }
            !entry.done
        });
    }
}

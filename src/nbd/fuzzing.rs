//! Entry points for the fuzz targets in `fuzz/`: the handshake over a byte
//! stream, and the transmission-phase request parsing of a connection, on bytes
//! a client sends. Not an API: the signatures follow the protocol code.

use std::io::{self, Read, Write};

use super::handshake::{negotiate, Export, Negotiated, Outcome};
use super::proto::{Request, CMD_WRITE, MAX_PAYLOAD_BYTES, REQUEST_BYTES};
use super::request::{allocation_descriptors, check, Action};

/// A client that sends `input` and then hangs up; what the server sends it is
/// counted and dropped.
struct Client<'a> {
    input: &'a [u8],
    received: usize,
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Client<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.received += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The handshake with a client that sends `input`: `Some((structured,
/// allocation))` when it reaches the transmission phase.
pub fn handshake(input: &[u8], size_bytes: u64, block_size: u32) -> Option<(bool, bool)> {
    let export = Export {
        name: "fuzz".into(),
        size_bytes,
        block_size,
    };
    let mut client = Client { input, received: 0 };
    match negotiate(&mut client, &export) {
        Ok(Outcome::Transmission(n)) => Some((n.structured, n.allocation)),
        _ => None,
    }
}

/// The requests in `input`, parsed as a connection's read loop does: header,
/// checks against an export of `size` bytes, a WRITE's payload skipped, and for
/// a BLOCK_STATUS the reply's descriptors (from allocation runs made of the
/// request's cookie), until the bytes run out or the stream is out of step.
/// Returns how many requests passed the checks.
pub fn requests(
    input: &[u8],
    size: u64,
    block_size: u32,
    structured: bool,
    allocation: bool,
) -> usize {
    let negotiated = Negotiated {
        structured,
        allocation,
    };
    let mut accepted = 0;
    let mut at = 0usize;
    while let Some(header) = input
        .get(at..at.saturating_add(REQUEST_BYTES))
        .and_then(|h| <&[u8; REQUEST_BYTES]>::try_from(h).ok())
    {
        at += REQUEST_BYTES;
        let Ok(req) = Request::decode(header) else {
            return accepted;
        };
        let checked = check(&req, size, block_size, negotiated);
        if req.kind == CMD_WRITE {
            if req.length > MAX_PAYLOAD_BYTES {
                return accepted;
            }
            at = at.saturating_add(req.length as usize);
        }
        match checked {
            Ok(Action::Disconnect) => return accepted,
            Ok(Action::BlockStatus {
                offset,
                len,
                req_one,
            }) => {
                let runs = (req.cookie != 0).then(|| {
                    req.cookie.to_le_bytes()[..(req.cookie & 7) as usize]
                        .iter()
                        .map(|&b| (u64::from(b) * 512 + u64::from(b & 1), b & 0x80 != 0))
                        .collect()
                });
                let descriptors =
                    allocation_descriptors(runs, offset, len, size, u64::from(block_size), req_one);
                accepted += usize::from(!descriptors.is_empty());
            }
            Ok(_) => accepted += 1,
            Err(_) => {}
        }
    }
    accepted
}

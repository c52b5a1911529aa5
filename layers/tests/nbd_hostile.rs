//! The `nbd` leaf against a hand-written server that breaks the protocol
//! after a correct handshake: short replies, oversized and out-of-range
//! chunks, replies to cookies never sent, bad magics, a closed socket. Each
//! fails the leaf's requests with EIO (this one and every later one); none
//! panics, hangs, or makes the client allocate what the server asks for.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;

use layers::exec::{Executor, IoCtx};
use layers::nbd::uri::NbdUri;
use layers::nbd::wire::*;
use layers::plan::NbdParams;
use layers::report::LayerReport;
use layers::testing::PlanBuilder;
use layers::{compile, Error, Stack};

const SIZE: u64 = 1 << 20;

/// One request as the server read it.
struct Request {
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

/// A server that negotiates `SIZE` bytes correctly (structured replies when
/// `structured`), then answers every request with `answer`.
struct Hostile {
    _dir: tempfile::TempDir,
    uri: String,
    thread: Option<JoinHandle<()>>,
}

impl Hostile {
    fn start(
        structured: bool,
        answer: impl FnMut(&mut UnixStream, Request) -> std::io::Result<()> + Send + 'static,
    ) -> Hostile {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hostile.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let mut answer = answer;
        let thread = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            if handshake(&mut s, structured).is_err() {
                return;
            }
            loop {
                let mut header = [0u8; REQUEST_BYTES];
                if s.read_exact(&mut header).is_err() {
                    return;
                }
                let req = Request {
                    kind: u16::from_be_bytes(take(&header, 6)),
                    cookie: u64::from_be_bytes(take(&header, 8)),
                    offset: u64::from_be_bytes(take(&header, 16)),
                    len: u32::from_be_bytes(take(&header, 24)),
                };
                if req.kind == CMD_WRITE {
                    let mut payload = vec![0u8; req.len as usize];
                    if s.read_exact(&mut payload).is_err() {
                        return;
                    }
                }
                if req.kind == CMD_DISC || answer(&mut s, req).is_err() {
                    return;
                }
            }
        });
        Hostile {
            uri: format!("nbd+unix:///?socket={}", socket.display()),
            _dir: dir,
            thread: Some(thread),
        }
    }

    fn stack(&self) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let top = b.layer(
            "n",
            NbdParams {
                uri: NbdUri::parse(&self.uri).unwrap(),
                size_bytes: Some(SIZE),
                connections: 1,
                timeout_us: 300_000,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
            },
        );
        compile(&b.build(top)).unwrap()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The client's socket is closed by now, so the server returns.
            drop(thread.join());
        }
    }
}

fn handshake(s: &mut UnixStream, structured: bool) -> std::io::Result<()> {
    let mut hello = INIT_MAGIC.to_be_bytes().to_vec();
    hello.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags)?;
    loop {
        let mut header = [0u8; OPTION_HEADER_BYTES];
        s.read_exact(&mut header)?;
        let option = u32::from_be_bytes(take(&header, 8));
        let len = u32::from_be_bytes(take(&header, 12));
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_STRUCTURED_REPLY if structured => s.write_all(&reply(option, REP_ACK, &[]))?,
            OPT_GO => {
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&SIZE.to_be_bytes());
                let tx = TX_HAS_FLAGS | TX_SEND_FLUSH | TX_SEND_WRITE_ZEROES;
                info.extend_from_slice(&tx.to_be_bytes());
                s.write_all(&reply(option, REP_INFO, &info))?;
                s.write_all(&reply(option, REP_ACK, &[]))?;
                return Ok(());
            }
            _ => s.write_all(&reply(option, REP_ERR_UNSUP, &[]))?,
        }
    }
}

fn reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut out = REP_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn simple(cookie: u64, error: u32) -> Vec<u8> {
    let mut out = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out
}

fn chunk(cookie: u64, flags: u16, kind: u16, length: u32) -> Vec<u8> {
    let mut out = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out
}

/// Reads 8 KiB at 4 KiB, then writes and reads again: the results, and the
/// leaf's report.
fn exercise(stack: &Stack) -> (Vec<Result<(), Error>>, LayerReport) {
    let ctx = IoCtx::new(0, 64).unwrap();
    let exec = Executor::new().unwrap();
    let results = exec.block_on(&ctx, async {
        let mut buf = vec![0u8; 8192];
        let first = stack.top().read_bytes(&ctx, 4096, &mut buf).await;
        let second = stack.top().write_bytes(&ctx, 0, &buf).await;
        let third = stack.top().read_bytes(&ctx, 0, &mut buf).await;
        vec![first, second, third]
    });
    (results, stack.layer("n").unwrap().report())
}

/// The first request fails with EIO, and the connection is gone: later
/// requests fail too, and `status` says why.
fn assert_broken(
    answer: impl FnMut(&mut UnixStream, Request) -> std::io::Result<()> + Send + 'static,
    structured: bool,
    why: &str,
) {
    let server = Hostile::start(structured, answer);
    let stack = server.stack();
    let (results, report) = exercise(&stack);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(*result, Err(Error::Io(libc::EIO)), "{why}: request {i}");
    }
    let LayerReport::Nbd(report) = report else {
        panic!("an nbd leaf reports as nbd")
    };
    assert!(!report.connected, "{why}: still connected");
    let failure = report.failure.unwrap_or_default();
    eprintln!("{why}: {failure}");
    assert!(!failure.is_empty());
}

#[test]
fn a_short_read_reply_then_a_closed_socket_fails_with_eio() {
    assert_broken(
        |s, req| {
            s.write_all(&simple(req.cookie, 0))?;
            s.write_all(&vec![7u8; req.len as usize / 2])?;
            s.shutdown(std::net::Shutdown::Both)
        },
        false,
        "short simple reply",
    );
}

#[test]
fn a_reply_to_a_cookie_never_sent_fails_with_eio() {
    assert_broken(
        |s, req| s.write_all(&simple(req.cookie ^ 0xdead_0000, 0)),
        false,
        "unknown cookie",
    );
}

#[test]
fn a_bad_reply_magic_fails_with_eio() {
    assert_broken(
        |s, _| s.write_all(b"HTTP/1.1 500 Oops\r\n\r\n"),
        false,
        "bad magic",
    );
}

#[test]
fn a_structured_reply_not_negotiated_fails_with_eio() {
    assert_broken(
        |s, req| s.write_all(&chunk(req.cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)),
        false,
        "structured reply without negotiation",
    );
}

/// A data chunk claiming 4 GiB: refused from its header, before anything
/// is read or allocated.
#[test]
fn an_oversized_data_chunk_fails_with_eio() {
    assert_broken(
        |s, req| {
            let mut out = chunk(
                req.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                u32::MAX,
            );
            out.extend_from_slice(&req.offset.to_be_bytes());
            s.write_all(&out)
        },
        true,
        "oversized data chunk",
    );
}

/// An error chunk claiming 4 GiB of message: refused from its header.
#[test]
fn an_oversized_error_chunk_fails_with_eio() {
    assert_broken(
        |s, req| {
            let mut out = chunk(req.cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, u32::MAX);
            out.extend_from_slice(&EIO.to_be_bytes());
            out.extend_from_slice(&u16::MAX.to_be_bytes());
            s.write_all(&out)
        },
        true,
        "oversized error chunk",
    );
}

/// Data placed outside the range that was read.
#[test]
fn a_data_chunk_outside_its_read_fails_with_eio() {
    assert_broken(
        |s, req| {
            if req.kind != CMD_READ {
                return s.write_all(&simple(req.cookie, 0));
            }
            let mut out = chunk(
                req.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                8 + 4096,
            );
            out.extend_from_slice(&(req.offset + u64::from(req.len)).to_be_bytes());
            out.extend_from_slice(&[1u8; 4096]);
            s.write_all(&out)
        },
        true,
        "data chunk outside the read",
    );
}

/// A structured read reply that ends without covering the whole read: the
/// rest would be stale memory.
#[test]
fn a_structured_read_reply_that_covers_half_fails_with_eio() {
    assert_broken(
        |s, req| {
            if req.kind != CMD_READ {
                return s.write_all(&simple(req.cookie, 0));
            }
            let half = req.len / 2;
            let mut out = chunk(
                req.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                8 + half,
            );
            out.extend_from_slice(&req.offset.to_be_bytes());
            out.extend_from_slice(&vec![1u8; half as usize]);
            s.write_all(&out)
        },
        true,
        "half-covered read",
    );
}

/// A data chunk (not the last) for half of a read, then a simple reply to
/// the same cookie: the simple reply would finish the read with only the
/// chunk's bytes counted, the rest stale memory.
#[test]
fn a_simple_reply_to_a_read_that_chunks_began_to_answer_fails_with_eio() {
    assert_broken(
        |s, req| {
            if req.kind != CMD_READ {
                return s.write_all(&simple(req.cookie, 0));
            }
            let half = req.len / 2;
            let mut out = chunk(req.cookie, 0, REPLY_TYPE_OFFSET_DATA, 8 + half);
            out.extend_from_slice(&req.offset.to_be_bytes());
            out.extend_from_slice(&vec![1u8; half as usize]);
            out.extend_from_slice(&simple(req.cookie, 0));
            out.extend_from_slice(&vec![2u8; req.len as usize]);
            s.write_all(&out)
        },
        true,
        "simple reply after read chunks",
    );
}

/// Two replies to one cookie: the second names a request no longer in flight.
#[test]
fn a_second_reply_to_one_cookie_fails_with_eio() {
    let server = Hostile::start(false, |s, req| {
        let mut out = simple(req.cookie, 0);
        if req.kind == CMD_READ {
            out.extend_from_slice(&vec![3u8; req.len as usize]);
        }
        s.write_all(&out)?;
        s.write_all(&out)
    });
    let stack = server.stack();
    let (results, report) = exercise(&stack);
    assert_eq!(results[0], Ok(()), "the first reply is a good one");
    assert!(
        results[1..].contains(&Err(Error::Io(libc::EIO))),
        "{results:?}"
    );
    let LayerReport::Nbd(report) = report else {
        panic!()
    };
    assert!(!report.connected);
}

/// Errors the server reports are that request's errors, not the
/// connection's: both reply forms, with the protocol's error values.
#[test]
fn server_errors_fail_only_their_request() {
    for structured in [false, true] {
        let mut count = 0;
        let server = Hostile::start(structured, move |s, req| {
            count += 1;
            if count == 1 {
                if structured {
                    let message = b"disk on fire";
                    let length = 6 + message.len() as u32;
                    let mut out = chunk(req.cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, length);
                    out.extend_from_slice(&ENOSPC.to_be_bytes());
                    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
                    out.extend_from_slice(message);
                    return s.write_all(&out);
                }
                return s.write_all(&simple(req.cookie, ENOSPC));
            }
            let mut out = simple(req.cookie, 0);
            if req.kind == CMD_READ {
                out.extend_from_slice(&vec![5u8; req.len as usize]);
            }
            s.write_all(&out)
        });
        let stack = server.stack();
        let (results, report) = exercise(&stack);
        assert_eq!(
            results,
            vec![Err(Error::NoSpace), Ok(()), Ok(())],
            "structured {structured}"
        );
        let LayerReport::Nbd(report) = report else {
            panic!()
        };
        assert!(report.connected);
    }
}

/// Holes and data in separate chunks, out of order, make up one read.
#[test]
fn a_read_in_hole_and_data_chunks_is_assembled() {
    let server = Hostile::start(true, |s, req| {
        if req.kind != CMD_READ {
            return s.write_all(&simple(req.cookie, 0));
        }
        let half = req.len / 2;
        let mut out = chunk(req.cookie, 0, REPLY_TYPE_OFFSET_DATA, 8 + half);
        out.extend_from_slice(&(req.offset + u64::from(half)).to_be_bytes());
        out.extend_from_slice(&vec![9u8; half as usize]);
        out.extend(chunk(
            req.cookie,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_HOLE,
            12,
        ));
        out.extend_from_slice(&req.offset.to_be_bytes());
        out.extend_from_slice(&half.to_be_bytes());
        s.write_all(&out)
    });
    let stack = server.stack();
    let ctx = IoCtx::new(0, 64).unwrap();
    let exec = Executor::new().unwrap();
    let mut buf = vec![0xffu8; 8192];
    exec.block_on(&ctx, stack.top().read_bytes(&ctx, 0, &mut buf))
        .unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert!(buf[4096..].iter().all(|&b| b == 9));
}

/// Sixteen reads in flight, answered together in reverse order, half by
/// simple replies and half by two data chunks each: the replies reach the
/// client in one write, split every 7 bytes (headers and data cut
/// anywhere), or in pieces a little longer than a simple reply, paced so
/// that each arrives alone with the next header cut short. Each read gets
/// its own data every way.
#[test]
fn replies_run_together_or_cut_anywhere_are_each_filed_whole() {
    const READS: usize = 16;
    for (piece, pause) in [(usize::MAX, 0), (7, 0), (16 + 4096 + 9, 2)] {
        let mut queued: Vec<Vec<u8>> = Vec::new();
        let server = Hostile::start(true, move |s, req| {
            let fill = (req.offset / 4096) as u8 + 1;
            let mut out;
            if queued.len() % 2 == 0 {
                out = simple(req.cookie, 0);
                out.extend(vec![fill; req.len as usize]);
            } else {
                let half = req.len / 2;
                out = chunk(req.cookie, 0, REPLY_TYPE_OFFSET_DATA, 8 + half);
                out.extend_from_slice(&req.offset.to_be_bytes());
                out.extend(vec![fill; half as usize]);
                out.extend(chunk(
                    req.cookie,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_OFFSET_DATA,
                    8 + half,
                ));
                out.extend_from_slice(&(req.offset + u64::from(half)).to_be_bytes());
                out.extend(vec![fill; half as usize]);
            }
            queued.push(out);
            if queued.len() < READS {
                return Ok(());
            }
            let all: Vec<u8> = queued.drain(..).rev().flatten().collect();
            for part in all.chunks(piece.min(all.len())) {
                s.write_all(part)?;
                std::thread::sleep(std::time::Duration::from_millis(pause));
            }
            Ok(())
        });
        let stack = std::sync::Arc::new(server.stack());
        let ctx = std::rc::Rc::new(IoCtx::new(0, 64).unwrap());
        let exec = Executor::new().unwrap();
        let results = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        for i in 0..READS {
            let (stack, ctx, results) = (stack.clone(), ctx.clone(), results.clone());
            exec.spawn(async move {
                let mut buf = layers::IoBufMut::zeroed(4096);
                let read = stack.top().read(&ctx, i as u64 * 4096, &mut buf).await;
                let right = buf.iter().all(|&b| b == i as u8 + 1);
                results.borrow_mut().push((i, read, right));
            });
        }
        exec.run_until_idle(&ctx).unwrap();
        let results = results.borrow();
        assert_eq!(results.len(), READS, "pieces of {piece}");
        for (i, read, right) in results.iter() {
            assert_eq!(*read, Ok(()), "pieces of {piece}: read {i}");
            assert!(right, "pieces of {piece}: read {i} got another read's data");
        }
    }
}

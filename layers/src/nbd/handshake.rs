//! The client's side of the fixed newstyle handshake, on a blocking socket
//! with read and write timeouts, done at `up` (and by `validate` when the
//! config gives no `size`, and by the reconnecting thread) before the socket
//! moves to the queues' rings.
//!
//! Order: greeting; client flags; for `nbds://`, NBD_OPT_STARTTLS and the
//! TLS handshake, everything after it inside TLS (a server that refuses
//! STARTTLS is refused: the URI asks for TLS); NBD_OPT_STRUCTURED_REPLY
//! (used when the server acknowledges it); NBD_OPT_GO with the export name,
//! asking for the block size constraints. A server that does not know GO
//! gets the old NBD_OPT_EXPORT_NAME instead. Every length the server sends
//! is checked against [`MAX_OPTION_BYTES`] before anything is read, so a
//! hostile server cannot make the client allocate more.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use rustls::ClientConnection;

use super::tls::TlsClient;
use super::uri::{Address, NbdUri};
use super::wire::*;

/// The magic an oldstyle server sends where a newstyle one sends IHAVEOPT.
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Transmission flag: the export cannot be written.
const TX_READ_ONLY: u16 = 1 << 1;

/// A connected socket of either family.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }

    /// Makes a TCP link that goes silent fail instead of waiting forever:
    /// data the server has not acknowledged for `timeout` (a cut link, a
    /// host gone) ends the connection with ETIMEDOUT (TCP_USER_TIMEOUT), and
    /// keepalive probes make an idle link, or one waiting only for replies,
    /// count the same. A server that is alive but slow still acknowledges,
    /// so it is never cut off. Nothing to do on a unix socket: its peer
    /// cannot become unreachable while the socket stays open.
    pub fn detect_silence(&self, timeout: Duration) -> io::Result<()> {
        let Stream::Tcp(s) = self else {
            return Ok(());
        };
        let timeout_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        // Probes start after a quarter of the timeout of silence, so the
        // user timeout, not the probe count, decides when the link is dead.
        let probe_secs = (timeout.as_secs() / 4).clamp(1, 3600) as u32;
        setsockopt(s, sockopt::TcpUserTimeout, &timeout_ms)?;
        setsockopt(s, sockopt::KeepAlive, &true)?;
        setsockopt(s, sockopt::TcpKeepIdle, &probe_secs)?;
        setsockopt(s, sockopt::TcpKeepInterval, &probe_secs)?;
        Ok(())
    }

    /// Ends both directions, waking any read or write in progress.
    pub fn shutdown(&self) {
        // Shutting down a socket that is already closed is no news.
        drop(match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        });
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the server said about the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    /// Transmission flags (`TX_*`).
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The server's minimum block size (1 when it names none).
    pub min_block: u32,
    /// The largest READ or WRITE payload to send.
    pub max_payload: u32,
}

/// A socket in the transmission phase, with its TLS session for `nbds://`.
pub struct Transport {
    pub stream: Stream,
    pub tls: Option<ClientConnection>,
}

impl Transport {
    /// Writes the last `bytes` of the connection (through TLS when in use,
    /// which then ends), on the blocking socket.
    pub fn send_last(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.stream.write_all(bytes),
            Some(session) => {
                let mut secure = rustls::Stream::new(session, &mut self.stream);
                secure.write_all(bytes)?;
                secure.conn.send_close_notify();
                secure.flush()
            }
        }
    }
}

/// Connects to `uri` and negotiates its export (over TLS with `tls`), each
/// step bounded by `timeout`.
pub fn connect(
    uri: &NbdUri,
    tls: Option<&TlsClient>,
    timeout: Duration,
) -> Result<(Transport, Export), String> {
    let stream = open_socket(uri, timeout)?;
    stream
        .set_timeouts(Some(timeout))
        .map_err(|e| format!("{uri}: {e}"))?;
    let mut stream = stream;
    let (export, session) =
        negotiate(&mut stream, &uri.export, tls).map_err(|e| format!("{uri}: {e}"))?;
    stream
        .set_timeouts(None)
        .map_err(|e| format!("{uri}: {e}"))?;
    Ok((
        Transport {
            stream,
            tls: session,
        },
        export,
    ))
}

fn open_socket(uri: &NbdUri, timeout: Duration) -> Result<Stream, String> {
    match &uri.address {
        Address::Unix(path) => UnixStream::connect(path)
            .map(Stream::Unix)
            .map_err(|e| format!("{uri}: cannot connect to {}: {e}", path.display())),
        Address::Tcp { host, port } => {
            let addrs = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| format!("{uri}: cannot resolve {host}: {e}"))?;
            let mut last = format!("{host} has no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(stream) => {
                        // Requests are small and latency-bound: no Nagle delay.
                        stream
                            .set_nodelay(true)
                            .map_err(|e| format!("{uri}: TCP_NODELAY: {e}"))?;
                        return Ok(Stream::Tcp(stream));
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            Err(format!("{uri}: cannot connect: {last}"))
        }
    }
}

/// The largest minimum block size the protocol lets a server name.
const MAX_MIN_BLOCK: u32 = 64 << 10;

/// A handshake failure, worded for the user.
fn protocol(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// The whole handshake: the export, and the TLS session it ran in.
pub(crate) fn negotiate<S: Read + Write>(
    stream: &mut S,
    export: &str,
    tls: Option<&TlsClient>,
) -> io::Result<(Export, Option<ClientConnection>)> {
    let no_zeroes = greet(stream)?;
    let Some(tls) = tls else {
        return Ok((options(stream, export, no_zeroes, false)?, None));
    };
    send_option(stream, OPT_STARTTLS, &[])?;
    let (kind, data) = read_option_reply(stream, OPT_STARTTLS)?;
    match kind {
        REP_ACK if data.is_empty() => {}
        REP_ACK => return Err(protocol("an acknowledgement of STARTTLS that carries data")),
        REP_ERR_UNSUP | REP_ERR_POLICY => {
            return Err(protocol(format!(
            "the server does not offer TLS (it refused NBD_OPT_STARTTLS{}); nbds:// requires it",
            message(&data)
        )))
        }
        other => {
            return Err(protocol(format!(
                "the server refused NBD_OPT_STARTTLS (error {other:#x}){}",
                message(&data)
            )))
        }
    }
    let mut session = tls.session()?;
    let mut secure = rustls::Stream::new(&mut session, stream);
    // The handshake is finished before any option goes out, so that a
    // certificate that does not verify is named as such.
    while secure.conn.is_handshaking() {
        secure
            .conn
            .complete_io(&mut secure.sock)
            .map_err(|e| tls.explain(e))?;
    }
    let export = options(&mut secure, export, no_zeroes, true).map_err(|e| tls.explain(e))?;
    Ok((export, Some(session)))
}

/// Reads the greeting and answers with the client's flags; whether the
/// server leaves out the zeros after NBD_OPT_EXPORT_NAME's reply.
fn greet<S: Read + Write>(stream: &mut S) -> io::Result<bool> {
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            protocol("the server closed the connection before its greeting")
        } else {
            e
        }
    })?;
    if u64::from_be_bytes(take(&greeting, 0)) != INIT_MAGIC {
        return Err(protocol("this is not an NBD server (no NBDMAGIC greeting)"));
    }
    match u64::from_be_bytes(take(&greeting, 8)) {
        OPTS_MAGIC => {}
        OLDSTYLE_MAGIC => return Err(protocol("oldstyle NBD servers are not supported")),
        other => return Err(protocol(format!("unknown handshake magic {other:#x}"))),
    }
    let server_flags = u16::from_be_bytes(take(&greeting, 16));
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(protocol("the server does not speak fixed newstyle NBD"));
    }
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags = CLIENT_FIXED_NEWSTYLE | if no_zeroes { CLIENT_NO_ZEROES } else { 0 };
    stream.write_all(&client_flags.to_be_bytes())?;
    Ok(no_zeroes)
}

/// The options after the greeting (and after STARTTLS, inside TLS): the
/// export's size and flags.
fn options<S: Read + Write>(
    stream: &mut S,
    export: &str,
    no_zeroes: bool,
    secure: bool,
) -> io::Result<Export> {
    send_option(stream, OPT_STRUCTURED_REPLY, &[])?;
    let (kind, _) = read_option_reply(stream, OPT_STRUCTURED_REPLY)?;
    if kind == REP_ERR_TLS_REQD && !secure {
        return Err(tls_required());
    }
    let structured = kind == REP_ACK;

    let mut go = Vec::with_capacity(4 + export.len() + 4);
    go.extend_from_slice(&(export.len() as u32).to_be_bytes());
    go.extend_from_slice(export.as_bytes());
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(stream, OPT_GO, &go)?;
    let mut export_info = None;
    let mut min_block = 1;
    let mut max_payload = MAX_PAYLOAD_BYTES;
    loop {
        let (kind, data) = read_option_reply(stream, OPT_GO)?;
        match kind {
            REP_ACK => break,
            REP_INFO if data.len() >= 2 => match u16::from_be_bytes(take(&data, 0)) {
                INFO_EXPORT if data.len() == 12 => {
                    export_info = Some((
                        u64::from_be_bytes(take(&data, 2)),
                        u16::from_be_bytes(take(&data, 10)),
                    ))
                }
                INFO_BLOCK_SIZE if data.len() == 14 => {
                    min_block = u32::from_be_bytes(take(&data, 2)).max(1);
                    // The protocol's bound; a larger one would also exceed
                    // the largest payload sent.
                    if !min_block.is_power_of_two() || min_block > MAX_MIN_BLOCK {
                        return Err(protocol(format!(
                            "a minimum block size of {min_block} bytes (a power of two \
                             up to {MAX_MIN_BLOCK} is accepted)"
                        )));
                    }
                    let max = u32::from_be_bytes(take(&data, 10));
                    max_payload = max.clamp(min_block, MAX_PAYLOAD_BYTES);
                }
                INFO_EXPORT | INFO_BLOCK_SIZE => {
                    return Err(protocol(format!(
                        "an information reply of the wrong length ({} bytes)",
                        data.len()
                    )))
                }
                // Other information is not needed.
                _ => {}
            },
            REP_INFO => return Err(protocol("an empty information reply")),
            REP_ERR_UNSUP => {
                // A server older than NBD_OPT_GO.
                return export_name(stream, export, no_zeroes, structured);
            }
            REP_ERR_UNKNOWN => {
                return Err(protocol(format!(
                    "the server has no export named {export:?}{}",
                    message(&data)
                )))
            }
            REP_ERR_TLS_REQD if !secure => return Err(tls_required()),
            other if other & REP_ERROR != 0 => {
                return Err(protocol(format!(
                    "the server refused the export {export:?} (error {:#x}){}",
                    other,
                    message(&data)
                )))
            }
            other => return Err(protocol(format!("unexpected option reply {other:#x}"))),
        }
    }
    let (size, flags) =
        export_info.ok_or_else(|| protocol("the server did not say the export's size"))?;
    check_flags(flags)?;
    Ok(Export {
        size,
        flags,
        structured,
        min_block,
        max_payload,
    })
}

fn tls_required() -> io::Error {
    protocol("the server requires TLS: use an nbds:// uri with tls_ca")
}

fn check_flags(flags: u16) -> io::Result<()> {
    if flags & TX_HAS_FLAGS == 0 {
        return Err(protocol(
            "the server sent transmission flags without HAS_FLAGS",
        ));
    }
    if flags & TX_READ_ONLY != 0 {
        return Err(protocol("the export is read-only; a leaf must be writable"));
    }
    Ok(())
}

/// The old way to pick an export: the server answers with its size and
/// flags, or closes the connection if it has no such export.
fn export_name<S: Read + Write>(
    stream: &mut S,
    export: &str,
    no_zeroes: bool,
    structured: bool,
) -> io::Result<Export> {
    send_option(stream, OPT_EXPORT_NAME, export.as_bytes())?;
    let mut reply = [0u8; 10 + 124];
    let len = if no_zeroes { 10 } else { reply.len() };
    stream.read_exact(&mut reply[..len]).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            protocol(format!("the server has no export named {export:?}"))
        } else {
            e
        }
    })?;
    let flags = u16::from_be_bytes(take(&reply, 8));
    check_flags(flags)?;
    Ok(Export {
        size: u64::from_be_bytes(take(&reply, 0)),
        flags,
        structured,
        min_block: 1,
        max_payload: MAX_PAYLOAD_BYTES,
    })
}

fn send_option<S: Write>(stream: &mut S, option: u32, data: &[u8]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(OPTION_HEADER_BYTES + data.len());
    bytes.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&option.to_be_bytes());
    bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
    bytes.extend_from_slice(data);
    stream.write_all(&bytes)
}

/// One option reply to `option`: its type and data (at most
/// [`MAX_OPTION_BYTES`]).
fn read_option_reply<S: Read>(stream: &mut S, option: u32) -> io::Result<(u32, Vec<u8>)> {
    let mut header = [0u8; OPTION_REPLY_BYTES];
    stream.read_exact(&mut header).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            protocol("the server closed the connection during the handshake")
        } else {
            e
        }
    })?;
    if u64::from_be_bytes(take(&header, 0)) != REP_MAGIC {
        return Err(protocol("an option reply with a bad magic"));
    }
    let echoed = u32::from_be_bytes(take(&header, 8));
    if echoed != option {
        return Err(protocol(format!(
            "a reply to option {echoed} where {option} was asked"
        )));
    }
    let kind = u32::from_be_bytes(take(&header, 12));
    let len = u32::from_be_bytes(take(&header, 16));
    if len > MAX_OPTION_BYTES {
        return Err(protocol(format!(
            "an option reply of {len} bytes (at most {MAX_OPTION_BYTES} are accepted)"
        )));
    }
    let mut data = vec![0u8; len as usize];
    stream.read_exact(&mut data)?;
    Ok((kind, data))
}

/// An error reply's text, if it has one, for the message.
fn message(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted server: the bytes it sends, whatever the client writes.
    struct Script {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn greeting() -> Vec<u8> {
        let mut out = INIT_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
        out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        out
    }

    fn reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
        let mut out = REP_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn info_export(size: u64, flags: u16) -> Vec<u8> {
        let mut out = INFO_EXPORT.to_be_bytes().to_vec();
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out
    }

    fn run(server: Vec<u8>) -> io::Result<Export> {
        let mut script = Script {
            input: io::Cursor::new(server),
            output: Vec::new(),
        };
        negotiate(&mut script, "e", None).map(|(export, _)| export)
    }

    #[test]
    fn go_gives_size_flags_and_structured_replies() {
        let mut server = greeting();
        server.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        server.extend(reply(OPT_GO, REP_INFO, &info_export(1 << 20, 0x1ff & !2)));
        let mut block = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for value in [512u32, 4096, 1 << 20] {
            block.extend_from_slice(&value.to_be_bytes());
        }
        server.extend(reply(OPT_GO, REP_INFO, &block));
        server.extend(reply(OPT_GO, REP_ACK, &[]));
        let export = run(server).unwrap();
        assert_eq!(export.size, 1 << 20);
        assert!(export.structured);
        assert_eq!(export.min_block, 512);
        assert_eq!(export.max_payload, 1 << 20);
    }

    #[test]
    fn a_minimum_block_size_past_the_protocols_bound_is_refused() {
        for min in [3u32, 128 << 10, 0xcd66_8e33] {
            let mut server = greeting();
            server.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
            server.extend(reply(OPT_GO, REP_INFO, &info_export(1 << 20, 0x1ff & !2)));
            let mut block = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            for value in [min, 4096, 1 << 20] {
                block.extend_from_slice(&value.to_be_bytes());
            }
            server.extend(reply(OPT_GO, REP_INFO, &block));
            server.extend(reply(OPT_GO, REP_ACK, &[]));
            let error = run(server).unwrap_err().to_string();
            assert!(
                error.contains(&format!("a minimum block size of {min} bytes")),
                "{error}"
            );
        }
    }

    #[test]
    fn refusals_are_worded() {
        let mut unknown = greeting();
        unknown.extend(reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[]));
        unknown.extend(reply(OPT_GO, REP_ERR_UNKNOWN, b"no such export"));
        let error = run(unknown).unwrap_err().to_string();
        assert!(
            error.contains("no export named \"e\": no such export"),
            "{error}"
        );

        let mut read_only = greeting();
        read_only.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        read_only.extend(reply(OPT_GO, REP_INFO, &info_export(4096, 1 | 2)));
        read_only.extend(reply(OPT_GO, REP_ACK, &[]));
        assert!(run(read_only)
            .unwrap_err()
            .to_string()
            .contains("read-only"));

        let mut huge = greeting();
        huge.extend(&REP_MAGIC.to_be_bytes());
        huge.extend(&OPT_STRUCTURED_REPLY.to_be_bytes());
        huge.extend(&REP_ACK.to_be_bytes());
        huge.extend(&u32::MAX.to_be_bytes());
        assert!(run(huge).unwrap_err().to_string().contains("at most"));

        let mut no_size = greeting();
        no_size.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        no_size.extend(reply(OPT_GO, REP_ACK, &[]));
        assert!(run(no_size).unwrap_err().to_string().contains("size"));

        assert!(run(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec())
            .unwrap_err()
            .to_string()
            .contains("not an NBD server"));
        assert!(run(greeting()[..10].to_vec())
            .unwrap_err()
            .to_string()
            .contains("closed"));
    }

    fn run_tls(server: Vec<u8>) -> String {
        let mut script = Script {
            input: io::Cursor::new(server),
            output: Vec::new(),
        };
        let tls = TlsClient::trusting_nothing();
        match negotiate(&mut script, "e", Some(&tls)) {
            Ok(_) => panic!("negotiated"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn tls_is_asked_for_first_and_its_refusal_is_worded() {
        let mut refused = greeting();
        refused.extend(reply(OPT_STARTTLS, REP_ERR_POLICY, b"no TLS here"));
        let error = run_tls(refused);
        assert!(error.contains("the server does not offer TLS"), "{error}");
        assert!(error.contains("no TLS here"), "{error}");

        let mut garbage = greeting();
        garbage.extend(reply(OPT_STARTTLS, REP_ACK, &[]));
        garbage.extend((0..600u32).map(|i| (i * 13) as u8));
        let error = run_tls(garbage);
        assert!(error.contains("TLS handshake"), "{error}");

        let mut closed = greeting();
        closed.extend(reply(OPT_STARTTLS, REP_ACK, &[]));
        let error = run_tls(closed);
        assert!(error.contains("tls_cert and tls_key"), "{error}");
    }

    #[test]
    fn a_plain_client_is_told_the_server_requires_tls() {
        let mut server = greeting();
        server.extend(reply(OPT_STRUCTURED_REPLY, REP_ERR_TLS_REQD, &[]));
        let error = run(server).unwrap_err().to_string();
        assert!(error.contains("the server requires TLS"), "{error}");
        let mut server = greeting();
        server.extend(reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[]));
        server.extend(reply(OPT_GO, REP_ERR_TLS_REQD, &[]));
        let error = run(server).unwrap_err().to_string();
        assert!(error.contains("use an nbds:// uri"), "{error}");
    }

    #[test]
    fn a_server_without_go_gets_export_name() {
        let mut server = greeting();
        server.extend(reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[]));
        server.extend(reply(OPT_GO, REP_ERR_UNSUP, &[]));
        server.extend(&(8192u64).to_be_bytes());
        server.extend(&(1u16 | TX_SEND_FLUSH).to_be_bytes());
        let export = run(server).unwrap();
        assert_eq!(export.size, 8192);
        assert!(!export.structured);
    }
}

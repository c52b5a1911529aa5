//! The listener, the accept thread, and a short-lived thread per handshake.
//!
//! Every connection takes a [`Permit`] before its handshake starts and keeps it
//! until its socket closes, so at most `max_connections` are open at once,
//! handshaking or not; past that, new connections are closed at once, with one
//! warning per episode (not one per connection). A handshake has one deadline
//! for all of it: a client trickling a byte at a time cannot hold its place
//! longer than `handshake_timeout`. TCP connections get keepalive, so a peer
//! that vanished is noticed.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handshake::{self, Export, Negotiated, Outcome};
use super::keepalive;
use super::limits::{Connections, Limits, Permit};

/// Where a connection goes once its handshake is done: the socket, what it
/// negotiated, and its place in the count.
pub type HandOff = dyn Fn(OwnedFd, Negotiated, Permit) + Send + Sync;

/// Where to listen: `unix:PATH` or `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("--nbd unix:PATH needs a path".into());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(text.to_string()))
            }
            _ => Err(format!(
                "--nbd {text}: expected unix:PATH or HOST:PORT (e.g. 127.0.0.1:10809)"
            )),
        }
    }

    /// The NBD URI clients can use (nbdinfo, nbdcopy, qemu).
    pub fn uri(&self, listening_on: Option<std::net::SocketAddr>) -> String {
        match self {
            Address::Unix(path) => format!("nbd+unix:///?socket={}", path.display()),
            Address::Tcp(text) => match listening_on {
                Some(addr) => format!("nbd://{addr}"),
                None => format!("nbd://{text}"),
            },
        }
    }
}

pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tcp(s) => s.set_read_timeout(timeout),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(timeout),
            Stream::Tcp(s) => s.set_write_timeout(timeout),
        }
    }

    fn into_fd(self) -> OwnedFd {
        match self {
            Stream::Unix(s) => s.into(),
            Stream::Tcp(s) => s.into(),
        }
    }
}

/// A stream whose every read and write must finish by one instant: each waits
/// at most for the time left.
struct Deadline<'a> {
    stream: &'a mut Stream,
    until: Instant,
}

impl Deadline<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the handshake took too long",
            ));
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        match self.stream {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        match self.stream {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Listener {
    pub fn bind(address: &Address) -> Result<Listener, String> {
        match address {
            Address::Unix(path) => {
                if path.exists() {
                    if UnixStream::connect(path).is_ok() {
                        return Err(format!(
                            "{}: another server is listening there",
                            path.display()
                        ));
                    }
                    std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
                }
                let listener =
                    UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
            Address::Tcp(text) => TcpListener::bind(text)
                .map(Listener::Tcp)
                .map_err(|e| format!("{text}: {e}")),
        }
    }

    /// The TCP address actually bound (the port when 0 was asked for).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// The socket file of a Unix listener, removed at stop.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Listener::Unix(_, path) => Some(path),
            Listener::Tcp(_) => None,
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                // Replies are small and latency-bound: no Nagle delay.
                s.set_nodelay(true)?;
                keepalive::enable(&s)?;
                Ok(Stream::Tcp(s))
            }
        }
    }

    /// Connect to ourselves, to wake a blocked `accept` at stop.
    pub fn poke(&self) {
        match self {
            Listener::Unix(_, path) => drop(UnixStream::connect(path)),
            Listener::Tcp(l) => {
                if let Ok(addr) = l.local_addr() {
                    drop(TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
                }
            }
        }
    }
}

/// Accept connections until `stop`; each within the limit gets a handshake
/// thread, and `hand_off` once its handshake is done. `export` says what to
/// advertise, asked at each connection (the device may have grown since).
pub fn accept_loop(
    listener: &Listener,
    stop: &AtomicBool,
    export: &dyn Fn() -> Export,
    limits: Limits,
    connections: &Arc<Connections>,
    hand_off: &Arc<HandOff>,
) {
    // Connections refused since the limit was last reached.
    let mut refused = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("NBD accept: {e}");
                // Out of fds and the like: do not spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Some(permit) = connections.admit(limits.max_connections) else {
            if refused == 0 {
                tracing::warn!(
                    "NBD: connection limit reached ({} open, --nbd-max-connections); \
                     closing new connections until one ends",
                    limits.max_connections
                );
            }
            refused += 1;
            continue;
        };
        if refused > 0 {
            tracing::info!("NBD: accepting connections again ({refused} closed at the limit)");
            refused = 0;
        }
        let (export, hand_off) = (export(), hand_off.clone());
        let spawned = std::thread::Builder::new()
            .name("nbd-handshake".into())
            .spawn(move || {
                if let Some((socket, negotiated)) = handshake(stream, &export, limits) {
                    hand_off(socket, negotiated, permit);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("NBD: cannot start a handshake thread: {e}");
        }
    }
}

/// The handshake, within `limits.handshake_timeout` in all; the socket ready
/// for the transmission phase, or `None` (and it is closed).
fn handshake(mut stream: Stream, export: &Export, limits: Limits) -> Option<(OwnedFd, Negotiated)> {
    let mut deadline = Deadline {
        stream: &mut stream,
        until: Instant::now() + limits.handshake_timeout,
    };
    let negotiated = match handshake::negotiate(&mut deadline, export) {
        Ok(Outcome::Transmission(negotiated)) => negotiated,
        Ok(Outcome::Closed) => return None,
        Err(e) => {
            tracing::debug!("NBD handshake failed: {e}");
            return None;
        }
    };
    let untimed = stream
        .set_read_timeout(None)
        .and(stream.set_write_timeout(None));
    if let Err(e) = untimed {
        tracing::debug!("NBD handshake: {e}");
        return None;
    }
    Some((stream.into_fd(), negotiated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("unix:/tmp/x.sock"),
            Ok(Address::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            Address::parse("127.0.0.1:10809"),
            Ok(Address::Tcp("127.0.0.1:10809".into()))
        );
        assert!(Address::parse("[::1]:10809").is_ok());
        assert!(Address::parse("unix:").is_err());
        assert!(Address::parse("localhost").is_err());
        assert!(Address::parse("host:notaport").is_err());
        assert_eq!(
            Address::Unix("/s".into()).uri(None),
            "nbd+unix:///?socket=/s"
        );
    }

    #[test]
    fn tcp_connections_get_keepalive() {
        let listener = Listener::bind(&Address::Tcp("127.0.0.1:0".into())).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        let Stream::Tcp(accepted) = listener.accept().unwrap() else {
            panic!("a TCP listener accepts TCP streams")
        };
        assert_eq!(
            keepalive::settings(&accepted).unwrap(),
            (
                true,
                keepalive::IDLE_SECS,
                keepalive::INTERVAL_SECS,
                keepalive::PROBES
            )
        );
    }

    #[test]
    fn a_deadline_covers_the_whole_exchange() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut stream = Stream::Unix(ours);
        let mut deadline = Deadline {
            stream: &mut stream,
            until: Instant::now() + Duration::from_millis(300),
        };
        let started = Instant::now();
        let mut got = 0;
        // The peer sends a byte every 50 ms: each read is quick, yet the
        // whole exchange ends at the deadline.
        let error = loop {
            theirs.write_all(&[1]).unwrap();
            let mut one = [0u8; 1];
            match deadline.read(&mut one) {
                Ok(_) => got += 1,
                Err(e) => break e,
            }
            std::thread::sleep(Duration::from_millis(50));
            assert!(started.elapsed() < Duration::from_secs(5), "no deadline");
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(got >= 2, "{got}");
    }
}

//! A small blocking HTTP/1.1 responder for `GET /metrics`, std only.
//!
//! It answers one request per connection and closes it. What a client can
//! make it hold is bounded: [`MAX_CONNECTIONS`] connections at once (more are
//! closed at once), a request head of at most [`MAX_HEAD`] bytes, and
//! [`DEADLINE`] for the whole request however slowly it arrives, and again for
//! the reply however slowly it is read. Other paths get 404, other methods
//! 405, anything else malformed 400.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::render::Format;

/// Connections served at once; a scraper needs one.
pub const MAX_CONNECTIONS: usize = 8;
/// The request line and headers; a scraper sends a few hundred bytes.
pub const MAX_HEAD: usize = 8192;
/// For reading the whole request head, and for writing the whole reply.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Renders the page in the format asked for.
pub type Render = dyn Fn(Format) -> String + Send + Sync;

/// Accept connections on `listener` on a thread of its own, for as long as
/// the process runs; each connection is answered on a thread of its own.
pub fn serve(listener: TcpListener, render: Arc<Render>) -> io::Result<()> {
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!("metrics accept: {e}");
                        // Out of fds and the like: do not spin.
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                let Some(slot) = Slot::take(&busy) else {
                    tracing::debug!(
                        "metrics: {MAX_CONNECTIONS} connections open; closing one more"
                    );
                    continue;
                };
                let render = render.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        if let Err(e) = answer(&stream, &*render, DEADLINE) {
                            tracing::debug!("metrics connection: {e}");
                        }
                        drop(stream.shutdown(Shutdown::Both));
                        drop(slot);
                    });
                if let Err(e) = spawned {
                    tracing::warn!("metrics: cannot start a connection thread: {e}");
                }
            }
        })?;
    Ok(())
}

/// One of the [`MAX_CONNECTIONS`] places, freed when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Option<Slot> {
        busy.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(busy.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Read one request from `stream` within `deadline` and write its reply.
pub fn answer(stream: &TcpStream, render: &Render, deadline: Duration) -> io::Result<()> {
    let until = Instant::now() + deadline;
    let reply = match read_head(stream, until)? {
        Head::Complete(head) => respond(&head, render),
        Head::TooLarge => Reply::error(431, "Request Header Fields Too Large"),
        Head::TimedOut => Reply::error(408, "Request Timeout"),
        Head::Closed => return Ok(()),
    };
    stream.set_write_timeout(Some(deadline))?;
    let mut writer = stream;
    writer.write_all(&reply.bytes())?;
    writer.flush()?;
    stream.shutdown(Shutdown::Write)?;
    discard_unread(stream);
    Ok(())
}

/// Closing a socket with unread input resets the connection, and a client
/// may then lose the reply it has not read yet: when the client sent more
/// than its head (a body, an oversized head), read that (a bounded amount,
/// for a bounded time) after the reply went out.
fn discard_unread(mut stream: &TcpStream) {
    let mut chunk = [0u8; 4096];
    let pending =
        stream.set_nonblocking(true).is_ok() && matches!(stream.read(&mut chunk), Ok(n) if n > 0);
    if !pending || stream.set_nonblocking(false).is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut left = LINGER_BYTES;
    while left > 0 {
        let time = until.saturating_duration_since(Instant::now());
        if time.is_zero() || stream.set_read_timeout(Some(time)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// How long, and how much, [`discard_unread`] reads.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 << 10;

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    TimedOut,
    /// The client closed before finishing its request.
    Closed,
}

/// The request line and headers, up to the blank line.
fn read_head(mut stream: &TcpStream, until: Instant) -> io::Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = end_of_head(&head) {
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if head.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Head::TimedOut);
        }
        stream.set_read_timeout(Some(left))?;
        let room = (MAX_HEAD - head.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Ok(Head::Closed),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Head::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where the head ends (the blank line, CRLF or bare LF), if it does yet.
fn end_of_head(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub reason: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// HEAD: the headers of the GET reply, no body.
    pub head_only: bool,
}

impl Reply {
    fn error(status: u16, reason: &'static str) -> Reply {
        Reply {
            status,
            reason,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: format!("{status} {reason}\n").into_bytes(),
            head_only: false,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The reply to a complete request head.
pub fn respond(head: &[u8], render: &Render) -> Reply {
    let Ok(head) = std::str::from_utf8(head) else {
        return Reply::error(400, "Bad Request");
    };
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Reply::error(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Reply::error(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Reply::error(404, "Not Found");
    }
    if method != "GET" && method != "HEAD" {
        let mut reply = Reply::error(405, "Method Not Allowed");
        reply.headers.push(("Allow", "GET, HEAD".into()));
        return reply;
    }
    let accept = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("accept")
            .then(|| value.trim())
    });
    let format = negotiate(accept);
    Reply {
        status: 200,
        reason: "OK",
        headers: vec![("Content-Type", format.content_type().into())],
        body: render(format).into_bytes(),
        head_only: method == "HEAD",
    }
}

/// OpenMetrics when the client asks for it at least as much as for plain
/// text (Prometheus sends both with q-values), else the text format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Prometheus;
    };
    let mut openmetrics = 0.0f64;
    let mut text = 0.0f64;
    for range in accept.split(',') {
        let mut params = range.split(';').map(str::trim);
        let media = params.next().unwrap_or_default().to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f64>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(format: Format) -> String {
        match format {
            Format::Prometheus => "text\n".into(),
            Format::OpenMetrics => "open\n# EOF\n".into(),
        }
    }

    fn reply(head: &str) -> Reply {
        respond(head.as_bytes(), &page)
    }

    #[test]
    fn get_metrics_is_answered_in_the_text_format() {
        let r = reply("GET /metrics HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"text\n");
        let bytes = String::from_utf8(r.bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
        assert!(bytes.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(bytes.contains("Content-Length: 5\r\n"));
        assert!(bytes.contains("Connection: close\r\n\r\ntext\n"));
        // A query string is ignored; HTTP/1.0 is fine.
        assert_eq!(reply("GET /metrics?x=1 HTTP/1.0\n").status, 200);
    }

    #[test]
    fn head_has_the_headers_without_the_body() {
        let r = reply("HEAD /metrics HTTP/1.1\r\n");
        assert_eq!(r.status, 200);
        let bytes = String::from_utf8(r.bytes()).unwrap();
        assert!(
            bytes.ends_with("Content-Length: 5\r\nConnection: close\r\n\r\n"),
            "{bytes}"
        );
    }

    #[test]
    fn other_paths_methods_and_garbage_are_refused() {
        assert_eq!(reply("GET / HTTP/1.1\r\n").status, 404);
        assert_eq!(reply("GET /metricsx HTTP/1.1\r\n").status, 404);
        let post = reply("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n");
        assert_eq!(post.status, 405);
        assert!(post.headers.contains(&("Allow", "GET, HEAD".into())));
        assert_eq!(reply("DELETE /metrics HTTP/1.1\r\n").status, 405);
        assert_eq!(reply("GET /metrics\r\n").status, 400);
        assert_eq!(reply("GET /metrics SPDY/3\r\n").status, 400);
        assert_eq!(reply("\r\n").status, 400);
        assert_eq!(respond(b"GET /metrics HTTP/1.1\xff\r\n", &page).status, 400);
    }

    #[test]
    fn openmetrics_is_served_when_asked_for() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        let r = reply(&format!(
            "GET /metrics HTTP/1.1\r\naccept: {prometheus}\r\n"
        ));
        assert_eq!(r.body, b"open\n# EOF\n");
        assert!(r
            .headers
            .iter()
            .any(|(_, v)| v.starts_with("application/openmetrics-text")));
        assert_eq!(negotiate(None), Format::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0.2, text/plain")),
            Format::Prometheus
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::Prometheus
        );
    }

    /// A served connection, on a listener of the test's own.
    fn exchange(send: &[u8], deadline: Duration) -> (Vec<u8>, Duration) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(send).unwrap();
        let start = Instant::now();
        answer(&server, &page, deadline).unwrap();
        drop(server);
        let took = start.elapsed();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        (got, took)
    }

    #[test]
    fn a_request_that_never_ends_times_out() {
        let (got, took) = exchange(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
            Duration::from_millis(300),
        );
        assert!(
            got.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn an_oversized_head_is_refused_without_reading_it_all() {
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        let (got, _) = exchange(&huge, Duration::from_secs(5));
        assert!(
            got.starts_with(b"HTTP/1.1 431 "),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    #[test]
    fn a_whole_request_is_answered() {
        let (got, _) = exchange(b"GET /metrics HTTP/1.1\r\n\r\n", Duration::from_secs(5));
        let got = String::from_utf8(got).unwrap();
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\ntext\n"),
            "{got}"
        );
    }
}

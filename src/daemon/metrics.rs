//! `up … --metrics ADDR`: the daemon's counters for Prometheus at
//! `http://ADDR/metrics` (docs/metrics.md lists every metric).
//!
//! - `catalog`: every metric's name, type, labels and help.
//! - `families`: one scrape's samples, from the typed data `status` reports.
//! - `render`: the text exposition format and OpenMetrics.
//! - `http`: the small HTTP/1.1 responder that serves it.
//!
//! The address is bound by `up` before the stack is compiled, so a bad
//! address or a port in use stops `up` before any leaf is created; the page is
//! served once the device is. A scrape reads the same atomics `status` does,
//! from the scrape's thread: nothing on the I/O path waits for it.

mod catalog;
mod families;
mod http;
mod render;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;

use layers::Stack;

use super::front_end::ConnectionCounter;
use super::reload::Reloader;
pub use catalog::{Def, CATALOG};
pub use render::{Format, Kind};

/// A bound metrics address, not yet served.
pub struct Endpoint {
    listener: TcpListener,
    url: String,
}

/// What the page is made of: the running device.
pub struct Source {
    pub device: String,
    pub path: String,
    pub queues: u16,
    pub stack: Arc<Stack>,
    pub reloader: Arc<Reloader>,
    pub connections: Option<ConnectionCounter>,
}

impl Endpoint {
    /// Bind `--metrics ADDR`. Errors are whole messages for the user.
    pub fn bind(text: &str) -> Result<Endpoint, String> {
        let addresses = parse(text)?;
        let mut last = None;
        for address in &addresses {
            match TcpListener::bind(address) {
                Ok(listener) => {
                    let local = listener
                        .local_addr()
                        .map_err(|e| format!("--metrics {text}: {e}"))?;
                    if !local.ip().is_loopback() {
                        tracing::info!("metrics: serving {local} beyond this host, as asked");
                    }
                    return Ok(Endpoint {
                        listener,
                        url: format!("http://{local}/metrics"),
                    });
                }
                Err(e) => last = Some(format!("{address}: {e}")),
            }
        }
        Err(format!(
            "--metrics {text}: cannot listen there ({})",
            last.unwrap_or_else(|| "no address".into())
        ))
    }

    /// `http://HOST:PORT/metrics`, with the port bound when 0 was asked for.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serve the page on threads of their own for as long as the process runs.
    pub fn serve(self, source: Source) -> std::io::Result<()> {
        tracing::info!("metrics: serving {}", self.url);
        let render =
            move |format: Format| render::render(&families::collect(&source.snapshot()), format);
        http::serve(self.listener, Arc::new(render))
    }
}

impl Source {
    fn snapshot(&self) -> families::Snapshot {
        let record = self.reloader.record();
        families::Snapshot {
            device: self.device.clone(),
            path: self.path.clone(),
            size: self.stack.size(),
            block_size: self.stack.block_size(),
            queues: self.queues,
            layers: self.stack.status(),
            generation: record.generation,
            last_reload: record.last.as_ref().map(|outcome| outcome.summary()),
            connections: self.connections.as_ref().map(|counts| counts()),
        }
    }
}

/// The addresses `--metrics ADDR` names: `PORT` alone is this host only
/// (127.0.0.1); `HOST:PORT` is that host, an IP address (`[::1]:9474`) or a
/// name (`localhost:9474`). Listening beyond this host takes an address that
/// says so (`0.0.0.0:9474`): an empty host (`:9474`) is refused, not taken
/// as every interface.
fn parse(text: &str) -> Result<Vec<SocketAddr>, String> {
    let usage = "give PORT (this host only), or HOST:PORT such as 127.0.0.1:9474, \
                 [::1]:9474 or 0.0.0.0:9474 (every interface)";
    if let Ok(port) = text.parse::<u16>() {
        return Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]);
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(vec![address]);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "--metrics {text}: not an address to listen on; {usage}"
        ));
    };
    if host.is_empty() {
        return Err(format!(
            "--metrics {text}: no host: say 127.0.0.1:{port} (or just {port}) for this host \
             only, or 0.0.0.0:{port} to listen on every interface"
        ));
    }
    if port.parse::<u16>().is_err() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!(
            "--metrics {text}: not an address to listen on; {usage}"
        ));
    }
    let found: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("--metrics {text}: cannot resolve {host}: {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("--metrics {text}: {host} has no address"));
    }
    Ok(found)
}

#[cfg(test)]
mod tests;

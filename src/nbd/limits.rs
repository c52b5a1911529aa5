//! What bounds the NBD server's memory and time, and the `up` options that set
//! it.
//!
//! Per connection: requests in flight and their payload bytes, counted from
//! the moment a request is read until its reply has left for the socket, so
//! replies queued for a client that does not read them count too; at either
//! limit the server stops reading that connection's requests. Per server: the
//! number of connections (handshaking or not), and one deadline for a whole
//! handshake.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Payload bytes in flight per connection unless `--nbd-max-inflight-bytes`
/// says otherwise: room for what real clients keep in flight (qemu: up to
/// 16 requests, usually of at most 2 MiB; nbdcopy: 64 of 256 KiB; fio:
/// iodepth × bs), and always for one request of the protocol's 32 MiB maximum.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Connections at once unless `--nbd-max-connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// The handshake's deadline unless `--nbd-handshake-timeout` says otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `up` options that bound the NBD server (meaningful only with `--nbd`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NbdOptions {
    /// NBD: requests in flight per connection, replies not yet sent included
    /// [default: the config's queue_depth].
    #[arg(long, requires = "nbd", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub nbd_max_inflight: Option<u32>,
    /// NBD: payload bytes in flight per connection, replies not yet read by
    /// the client included [default: 64MiB].
    #[arg(long, requires = "nbd", value_name = "SIZE", value_parser = parse_bytes)]
    pub nbd_max_inflight_bytes: Option<u64>,
    /// NBD: connections at once, handshakes included; more are closed at once
    /// [default: 128].
    #[arg(long, requires = "nbd", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub nbd_max_connections: Option<u32>,
    /// NBD: time a client has for its whole handshake, e.g. "10s" or "500ms"
    /// [default: 10s].
    #[arg(long, requires = "nbd", value_name = "DURATION", value_parser = parse_timeout)]
    pub nbd_handshake_timeout: Option<Duration>,
}

impl NbdOptions {
    /// The limits these options give, for a config whose `queue_depth` is
    /// `queue_depth`.
    pub fn limits(&self, queue_depth: u16) -> Limits {
        Limits {
            max_in_flight: self
                .nbd_max_inflight
                .map_or(usize::from(queue_depth), |n| n as usize),
            max_in_flight_bytes: self
                .nbd_max_inflight_bytes
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT_BYTES),
            max_connections: self
                .nbd_max_connections
                .map_or(DEFAULT_MAX_CONNECTIONS, |n| n as usize),
            handshake_timeout: self
                .nbd_handshake_timeout
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    match crate::config::size::parse_size(text) {
        Ok(0) => Err("must be more than 0".into()),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(format!("\"{text}\" {e}")),
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    if text.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{text}\" needs a unit: \"10s\" or \"500ms\""));
    }
    match crate::config::duration::parse_duration_us(text) {
        Ok(0) => Err("must be more than 0".into()),
        Ok(us) => Ok(Duration::from_micros(us)),
        Err(e) => Err(format!("\"{text}\" {e}")),
    }
}

/// What the server runs with.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests in flight per connection.
    pub max_in_flight: usize,
    /// Payload bytes in flight per connection; one request larger than this
    /// still runs, alone.
    pub max_in_flight_bytes: u64,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// The count of open connections, shared by the accept thread and every
/// connection's [`Permit`], and how many were accepted and refused (for the
/// metrics endpoint).
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// [`Connections`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Open now, handshaking or not.
    pub open: u64,
    /// Admitted since the server started.
    pub accepted: u64,
    /// Closed at once since the server started, at `--nbd-max-connections`.
    pub refused: u64,
}

impl Connections {
    /// A permit for one more connection, unless `max` are open.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<Permit> {
        let admitted = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok();
        let counter = if admitted {
            &self.accepted
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        admitted.then(|| Permit(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn counts(&self) -> ConnectionCounts {
        ConnectionCounts {
            open: self.open() as u64,
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// One connection's place in the count; it travels with the socket from the
/// accept thread to the queue thread, and the place is freed when it drops.
pub struct Permit(Arc<Connections>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_open_connections() {
        let connections = Arc::new(Connections::default());
        let a = connections.admit(2).unwrap();
        let b = connections.admit(2).unwrap();
        assert!(connections.admit(2).is_none());
        drop(a);
        assert_eq!(connections.open(), 1);
        let c = connections.admit(2).unwrap();
        drop((b, c));
        assert_eq!(connections.open(), 0);
        let counts = connections.counts();
        assert_eq!((counts.open, counts.accepted, counts.refused), (0, 3, 1));
    }

    #[test]
    fn options_parse_with_units_and_default_sensibly() {
        assert_eq!(parse_bytes("32MiB"), Ok(32 << 20));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("3s"), Ok(Duration::from_secs(3)));
        assert!(parse_timeout("10").is_err());
        assert!(parse_timeout("0s").is_err());
        let limits = NbdOptions::default().limits(128);
        assert_eq!(limits.max_in_flight, 128);
        assert_eq!(limits.max_in_flight_bytes, DEFAULT_MAX_IN_FLIGHT_BYTES);
        assert_eq!(limits.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(limits.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
    }
}

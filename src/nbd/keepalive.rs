//! TCP keepalive on accepted connections, so that a peer that vanished (a
//! crashed host, a cut cable) is noticed and its connection ends instead of
//! holding its place and its buffers forever.

use std::io;
use std::os::fd::AsFd;

use nix::sys::socket::{setsockopt, sockopt};

/// Idle time before the first probe, in seconds.
pub const IDLE_SECS: u32 = 30;
/// Time between probes, in seconds.
pub const INTERVAL_SECS: u32 = 10;
/// Unanswered probes before the connection is dropped: a dead peer is noticed
/// within IDLE + COUNT × INTERVAL = 60 s.
pub const PROBES: u32 = 3;

/// Turn keepalive on for a TCP socket, with the timings above.
pub fn enable(socket: &impl AsFd) -> io::Result<()> {
    setsockopt(socket, sockopt::KeepAlive, &true)?;
    setsockopt(socket, sockopt::TcpKeepIdle, &IDLE_SECS)?;
    setsockopt(socket, sockopt::TcpKeepInterval, &INTERVAL_SECS)?;
    setsockopt(socket, sockopt::TcpKeepCount, &PROBES)?;
    Ok(())
}

/// (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of a TCP socket.
#[cfg(test)]
pub fn settings(socket: &impl AsFd) -> io::Result<(bool, u32, u32, u32)> {
    use nix::sys::socket::getsockopt;
    Ok((
        getsockopt(socket, sockopt::KeepAlive)?,
        getsockopt(socket, sockopt::TcpKeepIdle)?,
        getsockopt(socket, sockopt::TcpKeepInterval)?,
        getsockopt(socket, sockopt::TcpKeepCount)?,
    ))
}

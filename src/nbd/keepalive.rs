//! TCP keepalive on accepted connections, so that a peer that vanished (a
//! crashed host, a cut cable) is noticed and its connection ends instead of
//! holding its place and its buffers forever.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Idle time before the first probe, in seconds.
pub const IDLE_SECS: i32 = 30;
/// Time between probes, in seconds.
pub const INTERVAL_SECS: i32 = 10;
/// Unanswered probes before the connection is dropped: a dead peer is noticed
/// within IDLE + COUNT × INTERVAL = 60 s.
pub const PROBES: i32 = 3;

/// Turn keepalive on for a TCP socket, with the timings above.
pub fn enable(socket: &impl AsRawFd) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    set(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, IDLE_SECS)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, INTERVAL_SECS)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, PROBES)
}

/// (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of a TCP socket.
#[cfg(test)]
pub fn settings(socket: &impl AsRawFd) -> io::Result<(bool, i32, i32, i32)> {
    let fd = socket.as_raw_fd();
    Ok((
        get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE)? != 0,
        get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)?,
        get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL)?,
        get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT)?,
    ))
}

fn set(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length passed is its size; the
    // kernel only reads it. A bad fd is an error, not undefined behaviour.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
fn get(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and writable, and `len` holds the
    // size of `value`, which is all the kernel writes.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

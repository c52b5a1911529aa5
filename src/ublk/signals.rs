//! SIGINT / SIGTERM (and SIGHUP, which reloads the config) as events: the signals
//! are blocked in every thread and a dedicated thread takes them with sigwait(2),
//! so no handler runs in the middle of the I/O path. This sits in `ublk/` only because it is the crate's unsafe
//! boundary.

use std::io;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it and sigaddset
    // only sets bits of valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it starts
/// afterwards. Call first thing, before any thread exists.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset_t; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Wait for SIGINT, SIGTERM or SIGHUP (blocked beforehand) and return its number.
pub fn wait_termination_signal() -> io::Result<i32> {
    let set = termination_set();
    let mut signal = 0;
    // SAFETY: both pointers are valid for the call.
    let rc = unsafe { libc::sigwait(&set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}

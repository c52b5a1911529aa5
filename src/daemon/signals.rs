//! SIGINT / SIGTERM (and SIGHUP, which reloads the config) as events: the
//! signals are blocked in every thread and a dedicated thread takes them with
//! sigwait(2), so no handler runs in the middle of the I/O path, whichever
//! front end serves the stack.

use std::io;

use nix::sys::signal::{SigSet, Signal};

fn termination_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

/// Block SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it
/// starts afterwards. Call first thing, before any thread exists.
pub fn block_termination_signals() -> io::Result<()> {
    termination_set().thread_block().map_err(io::Error::from)
}

/// Wait for SIGINT, SIGTERM or SIGHUP (blocked beforehand) and return it.
pub fn wait_termination_signal() -> io::Result<Signal> {
    termination_set().wait().map_err(io::Error::from)
}

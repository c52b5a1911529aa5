//! Standard output for every command: when the reader goes away (`ublk-stack
//! list | head -1`), the command ends quietly with status 141, as a Unix tool
//! killed by SIGPIPE does, instead of panicking with "failed printing to
//! stdout: Broken pipe".
//!
//! SIGPIPE itself stays ignored (Rust's default), so that a write to a closed
//! socket (an NBD connection, a control socket) is an error the code handles,
//! not the end of the process. `lib.rs` declares this module first with
//! `#[macro_use]`, so the `print!` and `println!` below replace the standard
//! ones in the whole crate; anything else written to stdout goes through
//! [`write_all`].

use std::io::{self, Write};

/// The exit status of a process ended by SIGPIPE, as a shell reports it.
pub const BROKEN_PIPE_STATUS: i32 = 128 + libc::SIGPIPE;

/// Write `bytes` to stdout and flush; end the process quietly if the reader
/// has gone. Other errors are returned.
pub fn write_all(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    quiet_on_broken_pipe(out.write_all(bytes).and_then(|()| out.flush()))
}

/// `print!`: formats to stdout; a broken pipe ends the process quietly, any
/// other error is reported on stderr once and ends it with status 1 (std's
/// `print!` panics on both).
pub fn print(args: std::fmt::Arguments<'_>) {
    let written = io::stdout().lock().write_fmt(args);
    if let Err(error) = quiet_on_broken_pipe(written) {
        eprintln!("ublk-stack: writing to stdout: {error}");
        std::process::exit(1);
    }
}

fn quiet_on_broken_pipe(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
            std::process::exit(BROKEN_PIPE_STATUS)
        }
        other => other,
    }
}

macro_rules! print {
    ($($arg:tt)*) => {
        $crate::stdout::print(format_args!($($arg)*))
    };
}

macro_rules! println {
    () => {
        $crate::stdout::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

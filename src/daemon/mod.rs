//! The daemon: bringing a device up and down (`lifecycle`) through any front
//! end (`front_end`: ublk, NBD), talking to a running one through its control
//! socket (`control`), its config reloads (`reload`, triggered by `watch` and
//! SIGHUP, which `signals` turns into an event with SIGINT and SIGTERM) and
//! `status`.

pub mod control;
pub mod front_end;
pub mod lifecycle;
pub mod logging;
pub mod reload;
pub mod repair;
mod signals;
pub mod status;
pub mod watch;

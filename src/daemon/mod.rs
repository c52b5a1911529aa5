//! The daemon: bringing a device up and down (`lifecycle`), talking to a
//! running one through its control socket (`control`), its config reloads
//! (`reload`, triggered by `watch` and SIGHUP) and `status`.

pub mod control;
pub mod lifecycle;
pub mod logging;
pub mod reload;
pub mod repair;
pub mod status;
pub mod watch;

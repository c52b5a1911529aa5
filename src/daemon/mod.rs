//! The daemon: bringing a device up and down (`lifecycle`) through any front
//! end (`front_end`: ublk, NBD), talking to a running one through its control
//! socket (`control`), its config reloads (`reload`, triggered by `watch` and
//! SIGHUP, which `signals` turns into an event with SIGINT and SIGTERM),
//! `status`, `features` (what the kernel's ublk driver offers), the Prometheus
//! endpoint (`metrics`), telling systemd where the daemon is (`notify`), and
//! handing a device to a new daemon process (`upgrade`).

pub mod control;
pub mod features;
pub mod front_end;
pub mod lifecycle;
pub mod list;
pub mod logging;
pub mod metrics;
mod notify;
pub mod plan;
pub mod reload;
pub mod repair;
mod signals;
pub mod status;
pub mod upgrade;
pub mod watch;

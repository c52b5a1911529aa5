//! The daemon: bringing a device up and down (`lifecycle`) and talking to a
//! running one through its control socket (`control`).

pub mod control;
pub mod lifecycle;
pub mod logging;
pub mod reload;
pub mod watch;

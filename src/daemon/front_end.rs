//! What `up` needs from a front end, the part that hands the compiled stack
//! to its users: the kernel's ublk driver ([`Ublk`]), NBD clients ([`Nbd`]).
//! Everything else about a running daemon (config, logging, signals, the
//! control socket, reloads, the clean stop with its final flush) is written
//! once, in `lifecycle::up`, for all of them.

mod nbd;
mod ublk;

use std::path::PathBuf;
use std::sync::Arc;

use layers::{Plan, Stack};

use super::status::UblkStatus;
pub use crate::nbd::ConnectionCounts;

pub use nbd::Nbd;
pub use ublk::Ublk;

/// What a started front end serves, for the ready line, `list` and `status`.
pub struct Serving {
    /// The block device node, or the NBD URI.
    pub path: PathBuf,
    pub queues: u16,
    /// Said last inside the ready line's parentheses (", recovered"), or "".
    pub note: &'static str,
    /// The front end's client connections, for the metrics endpoint; `None`
    /// when it has none of its own (ublk: the kernel is the client).
    pub connections: Option<ConnectionCounter>,
    /// The ublk driver's side, for `status`; `None` for other front ends.
    pub ublk: Option<UblkStatus>,
    /// How a reload that grows the device tells the front end.
    pub resize: Option<Arc<dyn Resize>>,
}

/// Changes the size of what a front end serves, for a reload that grows the
/// device.
pub trait Resize: Send + Sync {
    /// Why the served device cannot change size while it runs, if it cannot:
    /// asked before any layer grows, so that a refusal changes nothing.
    fn refusal(&self) -> Option<String>;
    /// Serve `bytes` from now on (the stack has grown to it).
    fn resize(&self, bytes: u64) -> Result<(), String>;
}

/// Reads a front end's connection counts at the moment it is called.
pub type ConnectionCounter = Arc<dyn Fn() -> ConnectionCounts + Send + Sync>;

/// One way of serving a stack. `up` calls, in order: `prepare` once the config
/// is loaded, `start` once the stack is compiled, `any_queue_ended` while it
/// runs (and `stop_if_unused` for each `down` without `--force`), then on the
/// way out `stop`, the stack's final flush, and `remove`; or, for `upgrade`,
/// `hand_over`, the flush, and `mark_clean_handover` (or `resume`).
/// Errors are whole messages for the user.
pub trait FrontEnd {
    /// Refuse early what can be refused before any leaf is opened (no root,
    /// no driver, a malformed address).
    fn prepare(&mut self, plan: &Plan) -> Result<(), String>;
    /// Serve `stack` until `stop`.
    fn start(&mut self, plan: &Plan, stack: Arc<Stack>) -> Result<Serving, String>;
    /// Whether a queue ended without being asked to (polled while serving).
    fn any_queue_ended(&self) -> bool;
    /// What `up` says when it stopped because a queue ended on its own.
    fn queue_ended(&self, name: &str) -> String;
    /// `down` without `--force`: begin `stop` only if nobody uses what the
    /// front end serves; otherwise go on serving and say who uses it (the
    /// whole message, naming the device). NBD clients are not checked: the
    /// default lets the stop go ahead.
    fn stop_if_unused(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Stop taking requests and finish those in flight: after it, nothing
    /// writes to the stack, so the flush that follows covers every write that
    /// was acknowledged.
    fn stop(&mut self) -> Result<(), String>;
    /// After the final flush: take down what `start` set up for the users.
    fn remove(&mut self) -> Result<(), String>;
    /// `upgrade`: why what this front end serves cannot be handed to another
    /// daemon process, if it cannot.
    fn handover_refusal(&self) -> Option<String> {
        Some("only ublk devices can be handed to a new daemon".into())
    }
    /// `upgrade`: stop taking requests and finish those in flight, like
    /// `stop`, but leave the device (and the requests it holds meanwhile) for
    /// another process to take over.
    fn hand_over(&mut self) -> Result<(), Handover> {
        Err(Handover::Refused("not supported".into()))
    }
    /// `upgrade`, after `hand_over` and a successful flush of the whole stack:
    /// record durably that the device was handed over with nothing unflushed,
    /// so that the next daemon may resume it even though its stack has a cache.
    fn mark_clean_handover(&mut self) -> Result<(), String> {
        Err("not supported".into())
    }
    /// Serve again after a `hand_over` that went no further (removing the
    /// mark of `mark_clean_handover` first).
    fn resume(&mut self, _stack: Arc<Stack>) -> Result<(), String> {
        Err("not supported".into())
    }
}

/// Why a `hand_over` failed.
#[derive(Debug)]
pub enum Handover {
    /// Nothing changed: the device is served as before.
    Refused(String),
    /// The device is left held (its I/O waits) for the next `up` to take over.
    Stranded(String),
}

//! The NBD front end: `ublk-stack up CONFIG --nbd unix:PATH | HOST:PORT` serves
//! the compiled stack over the NBD protocol instead of ublk, for hosts without
//! `ublk_drv` and for remote clients.
//!
//! - `proto`: the wire format (fixed-size messages, magics, codes).
//! - `handshake`: fixed-newstyle option haggling, on a thread per handshake.
//! - `accept`: listener, accept thread, the connection limit, and the
//!   handshake's deadline.
//! - `limits`: what bounds memory and time per connection, and the `up`
//!   options that set it.
//! - `keepalive`: TCP keepalive, so that dead peers are noticed.
//! - `server`: one thread per queue of the config; connections are spread
//!   over the queues round-robin.
//! - `queue`: what a queue thread's tasks share, and its inbox.
//! - `request`: a request checked against the export, and BLOCK_STATUS
//!   descriptors.
//! - `conn`: one connection in the transmission phase: many requests in flight,
//!   replies in completion order.
//! - `offload`: large READs and WRITEs run on another queue thread, so one
//!   streaming client uses more than one core.
//! - `ring`: socket receives and sends as io_uring operations on the queue's
//!   ring (the module's only unsafe code).
//!
//! Offsets are bytes here as everywhere; a request is checked (inside the
//! device, aligned to the block size, payload at most 32 MiB) before it reaches
//! the stack, and a client that breaks the protocol loses its connection, never
//! the daemon. What a client can make the daemon hold is bounded by
//! [`Limits`], never by what it sends.

mod accept;
mod conn;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod keepalive;
mod limits;
mod offload;
mod proto;
mod queue;
mod request;
#[allow(unsafe_code)]
mod ring;
mod server;

pub use accept::Address;
pub use limits::{ConnectionCounts, Limits, NbdOptions};
pub use server::Server;

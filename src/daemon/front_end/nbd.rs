//! `up CONFIG --nbd ADDR`: the stack served by the NBD server to clients on a
//! Unix socket or a TCP port; its path is the NBD URI. `stop` closes the
//! listener, drains the requests in flight and waits for the queue threads.

use std::path::PathBuf;
use std::sync::Arc;

use layers::{Plan, Stack};

use super::{ConnectionCounter, FrontEnd, Resize, Serving};
use crate::nbd::{Address, NbdOptions, Server};

pub struct Nbd {
    address: String,
    options: NbdOptions,
    parsed: Option<Address>,
    server: Option<Server>,
}

impl Nbd {
    /// `address` as given to `--nbd`: `unix:PATH` or `HOST:PORT`.
    pub fn new(address: &str, options: NbdOptions) -> Nbd {
        Nbd {
            address: address.to_string(),
            options,
            parsed: None,
            server: None,
        }
    }
}

impl FrontEnd for Nbd {
    fn prepare(&mut self, _plan: &Plan) -> Result<(), String> {
        self.parsed = Some(Address::parse(&self.address)?);
        Ok(())
    }

    fn start(&mut self, plan: &Plan, stack: Arc<Stack>) -> Result<Serving, String> {
        let address = self.parsed.as_ref().ok_or("NBD address not prepared")?;
        let limits = self.options.limits(plan.device.queue_depth);
        let queues = plan.device.queues;
        let server = Server::start(address, stack, queues, limits, &plan.device.name)?;
        let uri = address.uri(server.local_addr());
        let connections: ConnectionCounter = Arc::new(server.connection_counts());
        self.server = Some(server);
        Ok(Serving {
            path: PathBuf::from(uri),
            queues,
            note: "",
            connections: Some(connections),
            ublk: None,
            resize: Some(Arc::new(NbdResize)),
        })
    }

    fn any_queue_ended(&self) -> bool {
        self.server.as_ref().is_some_and(Server::any_queue_ended)
    }

    fn queue_ended(&self, name: &str) -> String {
        format!("{name}: an NBD queue stopped on its own")
    }

    fn stop(&mut self) -> Result<(), String> {
        self.server.take().map_or(Ok(()), Server::stop)
    }

    fn remove(&mut self) -> Result<(), String> {
        // The server removed its Unix socket when it stopped.
        Ok(())
    }
}

/// New clients are told the stack's size at their handshake, so a grown
/// stack needs nothing more. Connected clients keep the size they were told
/// (NBD has no way to announce a new one) until they reconnect.
struct NbdResize;

impl Resize for NbdResize {
    fn refusal(&self) -> Option<String> {
        None
    }

    fn resize(&self, _bytes: u64) -> Result<(), String> {
        Ok(())
    }
}

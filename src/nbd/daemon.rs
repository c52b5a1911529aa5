//! `ublk-stack up CONFIG --nbd ADDR`: the same lifecycle as the ublk front end,
//! with the NBD server in place of the kernel device. Prints
//! `NAME: nbd+unix:///?socket=PATH ready (SIZE, Q queues)` once clients can
//! connect; SIGINT/SIGTERM or `down` stop accepting, drain the requests in
//! flight, flush the stack, and exit 0. `list` and `status` answer from the
//! same control socket as for a ublk device, with the NBD URI as the path.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use serde_json::json;

use super::accept::Address;
use super::limits::NbdOptions;
use super::server::Server;
use crate::daemon::control;
use crate::daemon::lifecycle::{self, DeviceReport, Stop};
use crate::daemon::reload::Reloader;

fn fail(message: impl std::fmt::Display) -> u8 {
    eprintln!("ublk-stack: {message}");
    1
}

pub fn up(config: &Path, address: &str, options: &NbdOptions) -> u8 {
    // Before any thread exists, so that only the signal thread takes them.
    if let Err(e) = crate::ublk::signals::block_termination_signals() {
        return fail(format!("blocking signals: {e}"));
    }
    let plan = match lifecycle::load_plan(config) {
        Ok(plan) => plan,
        Err(errors) => {
            eprint!("{errors}");
            if !errors.ends_with('\n') {
                eprintln!();
            }
            return 1;
        }
    };
    let set_log_level = crate::daemon::logging::init(&plan);
    let address = match Address::parse(address) {
        Ok(address) => address,
        Err(e) => return fail(e),
    };
    let stack = match layers::compile(&plan) {
        Ok(stack) => Arc::new(stack),
        Err(e) => return fail(format!("{}: {e}", config.display())),
    };
    let name = plan.device.name.clone();
    let (control_listener, socket) = match control::bind(&name) {
        Ok(bound) => bound,
        Err(e) => return fail(e),
    };
    let limits = options.limits(plan.device.queue_depth);
    let queues = plan.device.queues;
    let server = match Server::start(&address, stack.clone(), queues, limits, &name) {
        Ok(server) => server,
        Err(e) => {
            drop(std::fs::remove_file(&socket));
            return fail(e);
        }
    };
    let uri = address.uri(server.local_addr());
    // Absolute, so that reloads find the file whatever the working directory.
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let reloader = Arc::new(Reloader::new(config, plan, stack.clone(), set_log_level));
    // A rebuild cut short by a restart goes on.
    crate::daemon::repair::resume_resync(stack.clone());
    let report = DeviceReport {
        name: name.clone(),
        path: PathBuf::from(&uri),
        queues,
        stack: stack.clone(),
        reloader: reloader.clone(),
    };
    let (events_tx, events) = mpsc::channel();
    let started = lifecycle::start_control_threads(reloader, control_listener, report, events_tx);
    // Kept until the daemon exits: dropping it stops watching the config.
    let _watch = match started {
        Ok(watch) => watch,
        Err(e) => {
            drop(server.stop());
            drop(std::fs::remove_file(&socket));
            return fail(format!("starting the control threads: {e}"));
        }
    };
    println!(
        "{name}: {uri} ready ({}, {queues} queues)",
        crate::config::size::format_human(stack.size())
    );
    drop(std::io::Write::flush(&mut std::io::stdout()));

    let stop = lifecycle::wait_for_stop(&events, &|| server.any_queue_ended());
    let stopped = server.stop();
    let flushed = lifecycle::flush_stack(&stack).map_err(|e| format!("flushing the stack: {e}"));
    drop(std::fs::remove_file(&socket));
    let result = stopped.and(flushed);
    if result.is_ok() {
        tracing::info!("{name}: stopped; every acknowledged write is flushed");
    }
    let reply = match &result {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    match (stop, result) {
        (Stop::Down(client), result) => {
            drop(control::reply_to(client, &reply));
            result.map_or_else(fail, |()| 0)
        }
        (Stop::Signal, result) => result.map_or_else(fail, |()| 0),
        (Stop::QueueEnded, Ok(())) => fail(format!("{name}: an NBD queue stopped on its own")),
        (Stop::QueueEnded, Err(e)) => fail(e),
    }
}

//! `up`, `down` and `list` (`status` and `reload` have files of their own).
//!
//! `up` runs in the foreground, the same for every front end (see
//! `front_end`): load the config, prepare the front end, compile the stack,
//! bind the control socket, start serving, print
//! `NAME: PATH ready (SIZE, Q queues)` (PATH is /dev/ublkbN or the NBD URI),
//! then wait for SIGINT/SIGTERM, `down`, or a queue ending on its own. A
//! `down` without `--force` is refused, and the device goes on serving, while
//! the front end finds the device in use (mounted, or held open). The
//! clean stop: the front end stops taking requests and finishes those in
//! flight, the stack is flushed so every acknowledged write is durable on
//! every leaf, the front end takes down what it set up (the ublk device), and
//! only then is `down` answered and the exit code 0.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use layers::escape::escape_controls;
use layers::{Executor, IoCtx, Plan, Stack};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use super::control::{self, Event, ProgressLines, Report};
use super::front_end::FrontEnd;
use super::metrics::{Endpoint, Source};
use super::reload::Reloader;
use super::status::UblkStatus;
use super::{logging, notify, signals, status, watch};
use crate::config::size::format_human;

pub(super) fn fail(message: impl std::fmt::Display) -> u8 {
    // Layer names and paths in a message may come from a config file.
    eprintln!("ublk-stack: {}", escape_controls(&message.to_string()));
    1
}

/// The plan of `config` after every check `validate` makes (sizes, memory,
/// keys, distinct leaf files, O_DIRECT alignment), so that `up` refuses what
/// `validate` refuses, with the same messages, before it opens any leaf.
fn load_plan(config: &Path) -> Result<Plan, String> {
    crate::config::check_file(config)
        .map(|checked| checked.plan)
        .map_err(|errors| errors.to_string())
}

/// What the control socket reports about this daemon's device, whichever
/// front end serves it (the NBD one gives its URI as the path).
pub(crate) struct DeviceReport {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) queues: u16,
    pub(crate) stack: Arc<Stack>,
    pub(crate) reloader: Arc<Reloader>,
    /// The running or last scrub.
    pub(crate) scrub: super::repair::ScrubRun,
    /// The metrics endpoint's URL, with `--metrics`.
    pub(crate) metrics: Option<String>,
    pub(crate) ublk: Option<UblkStatus>,
}

impl Report for DeviceReport {
    fn info(&self) -> Value {
        json!({
            "ok": true,
            "name": self.name,
            "path": self.path,
            "size": self.stack.size(),
            "block_size": self.stack.block_size(),
            "queues": self.queues,
            "state": "running",
            "pid": std::process::id(),
        })
    }

    fn status(&self) -> Value {
        let device = status::Device {
            name: &self.name,
            path: self.path.display().to_string(),
            queues: self.queues,
            stack: &self.stack,
            scrub: self.scrub.status(),
            metrics: self.metrics.clone(),
            ublk: self.ublk.clone(),
        };
        let reply = status::StatusReply::new(device, &self.reloader.record());
        match serde_json::to_value(reply) {
            Ok(mut reply) => {
                reply["ok"] = json!(true);
                reply
            }
            Err(error) => json!({"ok": false, "error": error.to_string()}),
        }
    }

    fn scrub(&self, progress: &mut ProgressLines) -> Value {
        super::repair::scrub(&self.stack, &self.scrub, progress)
    }

    fn readd(&self, layer: &str, leg: usize, wait: bool, progress: &mut ProgressLines) -> Value {
        super::repair::readd(&self.stack, layer, leg, wait, progress)
    }

    fn plan(&self, text: &str, path: &Path) -> Value {
        self.reloader.plan(text, path)
    }

    fn reload(&self) -> Value {
        let outcome = self.reloader.reload(super::reload::Trigger::Command);
        let mut reply = outcome.to_json();
        reply["ok"] = json!(outcome.refused.is_empty());
        if !outcome.refused.is_empty() {
            reply["error"] = json!(format!("reload {}", outcome.verdict.as_str()));
        }
        reply
    }
}

/// `ublk-stack up CONFIG`, served by `front`, with its metrics at `metrics`
/// (`--metrics ADDR`) when given.
pub fn up(config: &Path, front: &mut dyn FrontEnd, metrics: Option<&str>) -> u8 {
    // Before any thread exists, so that every thread inherits the mask and only
    // the signal thread takes SIGINT/SIGTERM.
    if let Err(e) = signals::block_termination_signals() {
        return fail(format!("blocking signals: {e}"));
    }
    // Started by `upgrade`: the old daemon holds the leaves until it exits.
    if let Err(e) = super::upgrade::wait_for_predecessor() {
        return fail(e);
    }
    let plan = match load_plan(config) {
        Ok(plan) => plan,
        Err(errors) => {
            eprint!("{errors}");
            if !errors.ends_with('\n') {
                eprintln!();
            }
            return 1;
        }
    };
    let set_log_level = logging::init(&plan);
    if let Err(e) = control::refuse_if_running(&plan.device.name) {
        return fail(e);
    }
    // Before anything is created: a port in use is refused like a bad config.
    let endpoint = match metrics.map(Endpoint::bind).transpose() {
        Ok(endpoint) => endpoint,
        Err(e) => return fail(e),
    };
    if let Err(e) = front.prepare(&plan) {
        return fail(e);
    }
    let stack = match layers::compile(&plan) {
        Ok(stack) => Arc::new(stack),
        Err(e) => return fail(format!("{}: {e}", config.display())),
    };
    let name = plan.device.name.clone();
    let (listener, socket) = match control::bind(&name) {
        Ok(bound) => bound,
        Err(e) => return fail(e),
    };
    let serving = match front.start(&plan, stack.clone()) {
        Ok(serving) => serving,
        Err(e) => {
            drop(std::fs::remove_file(&socket));
            return fail(e);
        }
    };
    let (events_tx, events) = mpsc::channel();
    // Absolute, so that reloads find the file whatever the working directory.
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let reloader = Arc::new(
        Reloader::new(config.clone(), plan, stack.clone(), set_log_level)
            .with_resize(serving.resize.clone()),
    );
    // A rebuild cut short by a restart goes on, by itself.
    drop(super::repair::resume_resync(stack.clone()));
    let report = DeviceReport {
        name: name.clone(),
        path: serving.path.clone(),
        queues: serving.queues,
        stack: stack.clone(),
        reloader: reloader.clone(),
        scrub: Default::default(),
        metrics: endpoint.as_ref().map(|e| e.url().to_string()),
        ublk: serving.ublk.clone(),
    };
    let metrics_source = Source {
        device: name.clone(),
        path: serving.path.display().to_string(),
        queues: serving.queues,
        stack: stack.clone(),
        reloader: reloader.clone(),
        connections: serving.connections.clone(),
    };
    let started = start_control_threads(reloader, listener, report, events_tx).and_then(|watch| {
        if let Some(endpoint) = endpoint {
            endpoint.serve(metrics_source)?;
        }
        Ok(watch)
    });
    // Kept until the daemon exits: dropping it stops watching the config.
    let _watch = match started {
        Ok(watch) => watch,
        Err(e) => {
            drop(clean_stop(front, &stack));
            drop(std::fs::remove_file(&socket));
            return fail(format!("starting the control threads: {e}"));
        }
    };
    println!(
        "{name}: {} ready ({}, {} queues{})",
        serving.path.display(),
        format_human(stack.size()),
        serving.queues,
        serving.note
    );
    drop(std::io::Write::flush(&mut std::io::stdout()));
    notify::notify(&format!(
        "READY=1\n{}",
        notify::status(&format!(
            "{} ready ({}, {} queues{})",
            serving.path.display(),
            format_human(stack.size()),
            serving.queues,
            serving.note
        ))
    ));

    let stop = loop {
        let (client, binary) = match wait_for_stop(&events, front) {
            Stop::Upgrade { client, binary } => (client, binary),
            stop => break stop,
        };
        let successor = super::upgrade::Successor {
            binary: &binary,
            config: &config,
            metrics,
        };
        let outcome = super::upgrade::hand_over(front, &stack, &successor, flush_stack);
        let (reply, code) = match outcome {
            super::upgrade::Outcome::Started(pid) => {
                tracing::info!(pid, "handed the device over to a new daemon");
                let reply = json!({
                    "ok": true,
                    "pid": pid,
                    "previous_pid": std::process::id(),
                    "previous_binary": std::env::current_exe().ok(),
                    "config": config,
                    "path": serving.path,
                });
                (reply, 0)
            }
            super::upgrade::Outcome::Refused(why) => {
                tracing::warn!("upgrade refused: {why}");
                let reply = json!({"ok": false, "refused": true, "error": why});
                drop(control::reply_to(client, &reply));
                notify::notify(&notify::status(&format!(
                    "{} ready (upgrade refused)",
                    serving.path.display()
                )));
                continue;
            }
            super::upgrade::Outcome::Stranded(why) => {
                tracing::error!("upgrade failed: {why}");
                let error = format!(
                    "{why}; {} stays with its I/O held: run `ublk-stack up {}` to serve it again",
                    serving.path.display(),
                    config.display()
                );
                (json!({"ok": false, "error": error}), 1)
            }
        };
        // The socket goes first: the new daemon binds its own.
        drop(std::fs::remove_file(&socket));
        drop(control::reply_to(client, &reply));
        return code;
    };
    notify::notify("STOPPING=1\nSTATUS=stopping: flushing every acknowledged write");
    let result = clean_stop(front, &stack);
    drop(std::fs::remove_file(&socket));
    if result.is_ok() {
        tracing::info!("{name}: stopped; every acknowledged write is flushed");
    }
    let reply = match &result {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    match (stop, result) {
        // Upgrades never leave the loop above; answered like a `down` anyway.
        (Stop::Down(client) | Stop::Upgrade { client, .. }, result) => {
            drop(control::reply_to(client, &reply));
            result.map_or_else(fail, |()| 0)
        }
        (Stop::Signal, result) => result.map_or_else(fail, |()| 0),
        (Stop::QueueEnded, Ok(())) => fail(front.queue_ended(&name)),
        (Stop::QueueEnded, Err(e)) => fail(e),
    }
}

/// Stop the front end, flush the stack, then let the front end take down what
/// it set up. Each step runs even when one before it failed (a device that
/// failed to stop is still flushed and deleted); the first error is returned.
fn clean_stop(front: &mut dyn FrontEnd, stack: &Stack) -> Result<(), String> {
    let stopped = front.stop();
    let flushed = flush_stack(stack).map_err(|e| format!("flushing the stack: {e}"));
    let removed = front.remove();
    stopped.and(flushed).and(removed)
}

/// Why the daemon stops.
enum Stop {
    Signal,
    /// `down`: answer on this connection once the device is gone.
    Down(std::os::unix::net::UnixStream),
    /// A queue thread ended without being asked (the device was stopped from
    /// outside, or a queue failed): the daemon exits 1 after cleaning up.
    QueueEnded,
    /// `upgrade`: hand the device to a new daemon run from `binary`, and
    /// answer on this connection.
    Upgrade {
        client: std::os::unix::net::UnixStream,
        binary: PathBuf,
    },
}

/// Block until a signal, a `down` that goes ahead, or a queue ending on its
/// own (polled through `front`, for either front end). A `down` without
/// `force` is answered at once, and waiting goes on, when the front end finds
/// the device in use.
fn wait_for_stop(events: &mpsc::Receiver<Event>, front: &mut dyn FrontEnd) -> Stop {
    loop {
        match events.recv_timeout(Duration::from_millis(250)) {
            Ok(Event::Signal(signal)) => {
                tracing::info!("signal {signal}: stopping");
                return Stop::Signal;
            }
            Ok(Event::Down { client, force }) => {
                if !force {
                    if let Err(why) = front.stop_if_unused() {
                        tracing::warn!("down refused: {why}");
                        let reply = json!({"ok": false, "refused": true, "error": why});
                        drop(control::reply_to(client, &reply));
                        continue;
                    }
                }
                tracing::info!(force, "down requested: stopping");
                return Stop::Down(client);
            }
            Ok(Event::Upgrade { client, binary }) => {
                tracing::info!("upgrade requested: {}", binary.display());
                return Stop::Upgrade { client, binary };
            }
            Err(mpsc::RecvTimeoutError::Timeout) if front.any_queue_ended() => {
                tracing::error!("a queue ended on its own: stopping");
                return Stop::QueueEnded;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Stop::Signal,
        }
    }
}

/// Start what every front end runs beside its queues: the config watch, the
/// control socket, and the thread that turns SIGINT/SIGTERM into a stop and
/// SIGHUP into a reload. The returned watch must be kept until the daemon exits.
fn start_control_threads(
    reloader: Arc<Reloader>,
    listener: std::os::unix::net::UnixListener,
    report: DeviceReport,
    events_tx: mpsc::Sender<Event>,
) -> io::Result<watch::Watch> {
    let watch = watch::start(reloader)?;
    control::serve(listener, Arc::new(report), events_tx.clone())?;
    let sighup = watch.waker();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = signals::wait_termination_signal() {
                if signal == Signal::SIGHUP {
                    if sighup.send(watch::Wake::Sighup).is_err() {
                        tracing::warn!("SIGHUP: the reload thread has stopped");
                    }
                    continue;
                }
                if events_tx.send(Event::Signal(signal as i32)).is_err() {
                    break;
                }
            }
        })?;
    Ok(watch)
}

/// The final flush of a clean stop. It runs twice: a mirror clears the
/// write-intent bits of regions that stayed quiet since the previous flush, so
/// the second one leaves no region to resync at the next start.
fn flush_stack(stack: &Stack) -> Result<(), String> {
    let ctx = IoCtx::new(0, 64).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    for _ in 0..2 {
        exec.block_on(&ctx, stack.flush(&ctx))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `ublk-stack down NAME [--force]`: without `force`, the daemon refuses
/// while the device is in use.
pub fn down(name: &str, force: bool) -> u8 {
    let socket = match control::find(name) {
        Ok(socket) => socket,
        Err(reason) => return fail(reason),
    };
    let request = json!({"cmd": "down", "force": force});
    // Teardown flushes every leaf; give it time.
    match control::request_value(&socket, &request, Duration::from_secs(600)) {
        Ok(reply) if reply["ok"] == true => 0,
        Ok(reply) => fail(format!(
            "{name}: {}",
            reply["error"].as_str().unwrap_or("down failed")
        )),
        Err(e) => fail(control::unreachable(name, &socket, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_every_layer_with_counters_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = layers::testing::plans::PlanBuilder::new(dir.path(), 4096);
        let a = plan.memory("a", 1 << 20);
        let b = plan.memory("b", 1 << 20);
        let mirror = plan.mirror("m", &[a, b], layers::plan::ReadPolicy::First);
        let plan = plan.build(mirror);
        let stack = Arc::new(layers::compile(&plan).unwrap());
        let config = dir.path().join("test.toml");
        let reloader = Reloader::new(config, plan, stack.clone(), Box::new(|_| Ok(())));
        let report = DeviceReport {
            name: "test".into(),
            path: PathBuf::from("/dev/ublkb9"),
            queues: 2,
            stack,
            reloader: Arc::new(reloader),
            scrub: Default::default(),
            metrics: None,
            ublk: None,
        };
        let status = report.status();
        assert_eq!(status["ok"], true);
        // The mirror keeps its metadata at the start of each leg.
        assert_eq!(status["size"], layers::mirror::exposed_size(1 << 20, 4096));
        assert_eq!(status["generation"], 1);
        assert!(status["last_reload"].is_null());
        let layers = status["layers"].as_array().unwrap();
        let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["m", "a", "b"]);
        assert_eq!(layers[1]["depth"], 1);
        assert_eq!(layers[0]["stats"]["errors"], 0);
        assert_eq!(report.info()["path"], "/dev/ublkb9");
    }

    /// The `FrontEnd` methods a stand-in that never serves has no use for.
    macro_rules! inert_front_end {
        () => {
            fn prepare(&mut self, _plan: &Plan) -> Result<(), String> {
                Ok(())
            }
            fn start(
                &mut self,
                _plan: &Plan,
                _stack: Arc<Stack>,
            ) -> Result<crate::daemon::front_end::Serving, String> {
                Err("not used".into())
            }
            fn any_queue_ended(&self) -> bool {
                false
            }
            fn queue_ended(&self, _name: &str) -> String {
                String::new()
            }
            fn stop(&mut self) -> Result<(), String> {
                Ok(())
            }
            fn remove(&mut self) -> Result<(), String> {
                Ok(())
            }
        };
    }

    /// A front end whose device is in use until `free` is set.
    struct Busy {
        free: bool,
        stopped: bool,
    }

    impl FrontEnd for Busy {
        inert_front_end!();
        fn stop_if_unused(&mut self) -> Result<(), String> {
            if !self.free {
                return Err("/dev/ublkb9 is in use (mounted on /mnt)".into());
            }
            self.stopped = true;
            Ok(())
        }
    }

    fn send_down(events: &mpsc::Sender<Event>, force: bool) -> std::os::unix::net::UnixStream {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        events
            .send(Event::Down {
                client: server,
                force,
            })
            .unwrap();
        client
    }

    fn reply(client: std::os::unix::net::UnixStream) -> Value {
        let mut line = String::new();
        io::BufRead::read_line(&mut io::BufReader::new(client), &mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn down_is_refused_while_in_use_and_forced_down_goes_ahead() {
        let (tx, rx) = mpsc::channel();
        let mut front = Busy {
            free: false,
            stopped: false,
        };
        let refused = send_down(&tx, false);
        let forced = send_down(&tx, true);
        let Stop::Down(_) = wait_for_stop(&rx, &mut front) else {
            panic!("a forced down stops")
        };
        let answer = reply(refused);
        assert_eq!(answer["ok"], false);
        assert_eq!(answer["refused"], true);
        assert!(answer["error"]
            .as_str()
            .unwrap()
            .contains("/dev/ublkb9 is in use"));
        assert!(!front.stopped, "force skips the check");
        drop(forced);

        front.free = true;
        let _client = send_down(&tx, false);
        let Stop::Down(_) = wait_for_stop(&rx, &mut front) else {
            panic!("an unused device stops")
        };
        assert!(front.stopped);
    }

    /// A front end that hands over at once and records what `hand_over` asks
    /// of it, and what `leaf` held when the handover was marked clean.
    #[derive(Default)]
    struct Handing {
        calls: Vec<&'static str>,
        leaf: PathBuf,
        leaf_at_mark: Vec<u8>,
    }

    impl FrontEnd for Handing {
        inert_front_end!();
        fn handover_refusal(&self) -> Option<String> {
            None
        }
        fn hand_over(&mut self) -> Result<(), crate::daemon::front_end::Handover> {
            self.calls.push("hand_over");
            Ok(())
        }
        fn mark_clean_handover(&mut self) -> Result<(), String> {
            self.calls.push("mark");
            self.leaf_at_mark = std::fs::read(&self.leaf).unwrap();
            Ok(())
        }
        fn resume(&mut self, _stack: Arc<Stack>) -> Result<(), String> {
            self.calls.push("resume");
            Ok(())
        }
    }

    /// A write-back cache over a file leaf, with `data` written at 0 and
    /// still only in the cache; and the leaf's path.
    fn dirty_cache(dir: &Path, data: &[u8]) -> (Arc<Stack>, PathBuf) {
        let mut plan = layers::testing::plans::PlanBuilder::new(dir, 4096);
        let leaf = plan.file("leaf", 1 << 20);
        let cache = plan.cache("wb", leaf, 256 << 10, layers::plan::CacheMode::WriteBack);
        let stack = Arc::new(layers::compile(&plan.build(cache)).unwrap());
        let ctx = IoCtx::new(0, 8).unwrap();
        let exec = Executor::new().unwrap();
        exec.block_on(&ctx, stack.top().write_bytes(&ctx, 0, data))
            .unwrap();
        let leaf = dir.join("leaf.img");
        assert_ne!(
            &std::fs::read(&leaf).unwrap()[..data.len()],
            data,
            "not dirty"
        );
        (stack, leaf)
    }

    #[test]
    fn a_handover_writes_the_cache_back_before_it_marks_the_device_clean() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![0x5a; 8192];
        let (stack, leaf) = dirty_cache(dir.path(), &data);
        let config = dir.path().join("c.toml");
        let successor = super::super::upgrade::Successor {
            binary: Path::new("/bin/true"),
            config: &config,
            metrics: None,
        };
        let mut front = Handing {
            leaf,
            ..Handing::default()
        };
        let outcome = super::super::upgrade::hand_over(&mut front, &stack, &successor, flush_stack);
        assert!(
            matches!(outcome, super::super::upgrade::Outcome::Started(_)),
            "the handover did not go ahead"
        );
        assert_eq!(front.calls, ["hand_over", "mark"]);
        assert!(
            front.leaf_at_mark.starts_with(&data),
            "marked clean before the cache was written back"
        );
    }

    #[test]
    fn a_failed_flush_refuses_the_handover_unmarked_and_serves_on() {
        let dir = tempfile::tempdir().unwrap();
        let (stack, _) = dirty_cache(dir.path(), &[1; 4096]);
        let config = dir.path().join("c.toml");
        let successor = super::super::upgrade::Successor {
            binary: Path::new("/bin/true"),
            config: &config,
            metrics: None,
        };
        let mut front = Handing::default();
        let outcome = super::super::upgrade::hand_over(&mut front, &stack, &successor, |_| {
            Err("leaf \"leaf\": Input/output error".into())
        });
        let super::super::upgrade::Outcome::Refused(why) = outcome else {
            panic!("a failed flush must refuse the handover")
        };
        assert!(why.contains("flushing the stack: leaf"), "{why}");
        assert!(why.contains("served by this daemon again"), "{why}");
        assert_eq!(front.calls, ["hand_over", "resume"]);
    }
}

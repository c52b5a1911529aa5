//! `up`, `down` and `list` (`status` and `reload` have files of their own).
//!
//! `up` runs in the foreground: load and compile the config, create the ublk device
//! (one pinned thread per queue), print `NAME: /dev/ublkbN ready (SIZE, Q queues)`,
//! then wait for SIGINT/SIGTERM or `down`. Teardown: STOP_DEV (the kernel drains
//! in-flight requests, which the queues keep serving, then removes /dev/ublkbN and
//! aborts every tag), join the queue threads, flush the stack so every
//! acknowledged write is durable on every leaf, DEL_DEV (removes /dev/ublkcN), and
//! only then answer `down` and exit 0.
//!
//! Crash recovery: when the kernel offers user recovery (see `ublk::device`), `up`
//! records the device's id in `$UBLK_STACK_RUN_DIR/NAME.device`. If the daemon is
//! killed, the kernel keeps /dev/ublkbN with its I/O held; the next `up` of the
//! same name finds the id there, checks the device still has the config's size
//! and block size (refusing otherwise), takes it over, and prints the ready line
//! with "recovered" in it. A clean stop deletes the device and the record.
//! `UBLK_STACK_USER_RECOVERY=off` in the environment creates devices without
//! recovery (a killed daemon's device then goes away with its I/O failed).
//!
//! Recovery is only asked for when every write the daemon acknowledged is in the
//! kernel's hands (leaf files and disks, the on-disk tables of `checksum`, `crypt`
//! and `compress`) and so survives the process: not with a `memory` leaf, whose
//! data dies with the process, nor with a `cache`, whose `mode` may become
//! write-back (dirty blocks in the daemon's memory only). Recovering those would
//! let the filesystem run on over writes it was told were done and that are gone;
//! without recovery it sees the loss as I/O errors instead.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use layers::escape::escape_controls;
use layers::{Executor, IoCtx, Layer, LayerSpec, Plan, Stack};
use serde_json::{json, Value};

use super::control::{self, Event, Report};
use super::reload::Reloader;
use super::{logging, status, watch};
use crate::config::size::format_human;
use crate::ublk::{self, Control, CtrlError, Device, DeviceConfig, DeviceError, TopLayer};

/// Said when the kernel has no ublk: the contract names `--nbd` as the way out.
const NO_UBLK: &str =
    "ublk_drv not loaded: modprobe ublk_drv (Linux ≥ 6.0 with CONFIG_BLK_DEV_UBLK), or serve the same stack with --nbd";

impl TopLayer for Stack {
    fn top(&self) -> &dyn Layer {
        Stack::top(self)
    }
}

fn fail(message: impl std::fmt::Display) -> u8 {
    // Layer names and paths in a message may come from a config file.
    eprintln!("ublk-stack: {}", escape_controls(&message.to_string()));
    1
}

/// The plan of `config` after every check `validate` makes (sizes, memory,
/// keys, distinct leaf files, O_DIRECT alignment), so that `up` refuses what
/// `validate` refuses, with the same messages, before it opens any leaf.
pub(crate) fn load_plan(config: &Path) -> Result<Plan, String> {
    crate::config::check_file(config)
        .map(|checked| checked.plan)
        .map_err(|errors| errors.to_string())
}

fn is_root() -> bool {
    // The owner of /proc/self is the process's effective uid.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Open /dev/ublk-control, loading the driver first if it is missing.
fn open_control() -> Result<Control, String> {
    match Control::open() {
        Err(CtrlError::NotLoaded) => {
            // modprobe's own complaint would make the error two lines; ours says it.
            drop(
                Command::new("modprobe")
                    .arg("ublk_drv")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status(),
            );
            Control::open().map_err(|e| match e {
                CtrlError::NotLoaded => NO_UBLK.to_string(),
                other => other.to_string(),
            })
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// `$UBLK_STACK_RUN_DIR/NAME.device`: which ublk device serves NAME, so that the
/// next `up` after a crash can find the device the kernel kept for recovery.
fn device_record_path(name: &str) -> PathBuf {
    control::run_dir().join(format!("{name}.device"))
}

/// The id in a device record; `None` when there is none or it is unreadable
/// (then there is nothing to recover and a new device is created).
fn read_device_record(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("id "))
        .and_then(|id| id.trim().parse().ok())
}

fn write_device_record(path: &Path, dev_id: u32) -> io::Result<()> {
    // Written whole then renamed, so a crash never leaves half a record.
    let partial = path.with_extension("device.partial");
    std::fs::write(&partial, format!("id {dev_id}\n"))?;
    std::fs::rename(&partial, path)
}

/// Ids recorded for other names: their devices may be waiting for their own
/// daemon to recover them, so this `up` must not reap them.
fn ids_held_for_others(name: &str) -> Vec<u32> {
    let own = device_record_path(name);
    std::fs::read_dir(control::run_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "device") && *path != own)
        .filter_map(|path| read_device_record(&path))
        .collect()
}

fn recovery_wanted(plan: &Plan) -> bool {
    if std::env::var("UBLK_STACK_USER_RECOVERY").as_deref() == Ok("off") {
        return false;
    }
    match layer_lost_with_the_daemon(plan) {
        Some(layer) => {
            tracing::info!(
                "user recovery off: layer \"{layer}\" keeps acknowledged writes in the daemon's memory"
            );
            false
        }
        None => true,
    }
}

/// The first layer whose acknowledged writes may exist only in this process.
fn layer_lost_with_the_daemon(plan: &Plan) -> Option<&str> {
    plan.layers
        .iter()
        .find(|layer| matches!(layer.spec, LayerSpec::Memory { .. } | LayerSpec::Cache(_)))
        .map(|layer| layer.name.as_str())
}

/// Take over the device a killed daemon of this name left, or create a new one.
/// Returns the device and whether it was recovered.
fn start_device(
    mut ctrl: Control,
    config: &DeviceConfig,
    stack: Arc<Stack>,
    record: &Path,
) -> Result<(Device, bool), DeviceError> {
    if let Some(dev_id) = read_device_record(record) {
        if let Some(info) = Device::find_recoverable(&mut ctrl, dev_id)? {
            tracing::info!(dev_id, "recovering the device left by a killed daemon");
            return Device::recover(ctrl, info, config, stack).map(|device| (device, true));
        }
        // Deleted or stopped since the record was written: nothing to recover.
        drop(std::fs::remove_file(record));
    }
    let device = Device::create(ctrl, config, stack)?;
    if device.recoverable() {
        if let Err(e) = write_device_record(record, device.dev_id()) {
            tracing::warn!(
                "{}: {e}: a later `up` could not recover this device after a crash",
                record.display()
            );
        }
    }
    Ok((device, false))
}

/// What the control socket reports about this daemon's device (also used by
/// the NBD front end, with its URI as the path).
pub(crate) struct DeviceReport {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) queues: u16,
    pub(crate) stack: Arc<Stack>,
    pub(crate) reloader: Arc<Reloader>,
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
        let mut info = self.info();
        let (generation, last_reload) = status::reload_json(&self.reloader.record());
        info["generation"] = generation;
        info["last_reload"] = last_reload;
        info["layers"] = status::layers_json(&self.stack);
        info
    }

    fn scrub(&self) -> Value {
        super::repair::scrub(&self.stack)
    }

    fn readd(&self, layer: &str, leg: usize) -> Value {
        super::repair::readd(&self.stack, layer, leg)
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

/// `ublk-stack up CONFIG`.
pub fn up(config: &Path) -> u8 {
    // Before any thread exists, so that every thread inherits the mask and only
    // the signal thread takes SIGINT/SIGTERM.
    if let Err(e) = ublk::signals::block_termination_signals() {
        return fail(format!("blocking signals: {e}"));
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
    if !is_root() {
        return fail("ublk devices need root: run `ublk-stack up` as root");
    }
    let ctrl = match open_control() {
        Ok(ctrl) => ctrl,
        Err(e) => return fail(e),
    };
    let stack = match layers::compile(&plan) {
        Ok(stack) => Arc::new(stack),
        Err(e) => return fail(format!("{}: {e}", config.display())),
    };
    let name = plan.device.name.clone();
    let (listener, socket) = match control::bind(&name) {
        Ok(bound) => bound,
        Err(e) => return fail(e),
    };
    let device_config = DeviceConfig {
        id: plan.device.id,
        queues: plan.device.queues,
        depth: plan.device.queue_depth,
        block_size: stack.block_size(),
        size_bytes: stack.size(),
        discard: stack.discard_frees_space(),
        recovery: recovery_wanted(&plan),
        held_ids: ids_held_for_others(&name),
    };
    let record = device_record_path(&name);
    let (device, recovered) = match start_device(ctrl, &device_config, stack.clone(), &record) {
        Ok(started) => started,
        Err(e @ DeviceError::Mismatch(_)) => {
            drop(std::fs::remove_file(&socket));
            return fail(format!(
                "{name}: {e} (restore the config, or remove {} so that the next `up` deletes that device, failing its held I/O)",
                record.display()
            ));
        }
        Err(e) => {
            drop(std::fs::remove_file(&socket));
            return fail(format!("{name}: {e}"));
        }
    };
    let (events_tx, events) = mpsc::channel();
    // Absolute, so that reloads find the file whatever the working directory.
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let reloader = Arc::new(Reloader::new(config, plan, stack.clone(), set_log_level));
    // A rebuild cut short by a restart goes on.
    super::repair::resume_resync(stack.clone());
    let report = DeviceReport {
        name: name.clone(),
        path: device.block_path(),
        queues: device.queues(),
        stack: stack.clone(),
        reloader: reloader.clone(),
    };
    let started = start_control_threads(reloader, listener, report, events_tx);
    // Kept until the daemon exits: dropping it stops watching the config.
    let _watch = match started {
        Ok(watch) => watch,
        Err(e) => {
            drop(std::fs::remove_file(&socket));
            return fail(format!("starting the control threads: {e}"));
        }
    };
    println!(
        "{name}: {} ready ({}, {} queues{})",
        device.block_path().display(),
        format_human(stack.size()),
        device.queues(),
        if recovered { ", recovered" } else { "" }
    );
    drop(std::io::Write::flush(&mut std::io::stdout()));

    let stop = wait_for_stop(&events, &|| device.any_queue_ended());
    let result = teardown(device, &stack, &record);
    drop(std::fs::remove_file(&socket));
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
        (Stop::QueueEnded, Ok(())) => fail(format!(
            "{name}: a queue stopped on its own; device removed"
        )),
        (Stop::QueueEnded, Err(e)) => fail(e),
    }
}

/// Why the daemon stops.
pub(crate) enum Stop {
    Signal,
    /// `down`: answer on this connection once the device is gone.
    Down(std::os::unix::net::UnixStream),
    /// A queue thread ended without being asked (the device was stopped from
    /// outside, or a queue failed): the daemon exits 1 after cleaning up.
    QueueEnded,
}

/// Block until a signal, `down`, or a queue ending on its own (polled with
/// `queue_ended`, for either front end).
pub(crate) fn wait_for_stop(
    events: &mpsc::Receiver<Event>,
    queue_ended: &dyn Fn() -> bool,
) -> Stop {
    loop {
        match events.recv_timeout(Duration::from_millis(250)) {
            Ok(Event::Signal(signal)) => {
                tracing::info!("signal {signal}: stopping");
                return Stop::Signal;
            }
            Ok(Event::Down(client)) => {
                tracing::info!("down requested: stopping");
                return Stop::Down(client);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if queue_ended() => {
                tracing::error!("a queue ended on its own: stopping");
                return Stop::QueueEnded;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Stop::Signal,
        }
    }
}

fn teardown(mut device: Device, stack: &Stack, record: &Path) -> Result<(), String> {
    let stopped = device.stop();
    if let Ok(reports) = &stopped {
        let requests: u64 = reports.iter().map(|r| r.requests).sum();
        let errors: u64 = reports.iter().map(|r| r.errors).sum();
        tracing::info!(requests, errors, "queues stopped");
    }
    let flushed = flush_stack(stack);
    let deleted = device.delete();
    if deleted.is_ok() {
        // The device is gone: nothing is left to recover.
        drop(std::fs::remove_file(record));
    }
    stopped.map_err(|e| e.to_string())?;
    flushed.map_err(|e| format!("flushing the stack: {e}"))?;
    deleted.map_err(|e| e.to_string())
}

/// Start what every front end runs beside its queues: the config watch, the
/// control socket, and the thread that turns SIGINT/SIGTERM into a stop and
/// SIGHUP into a reload. The returned watch must be kept until the daemon exits.
pub(crate) fn start_control_threads(
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
            while let Ok(signal) = ublk::signals::wait_termination_signal() {
                if signal == libc::SIGHUP {
                    if sighup.send(watch::Wake::Sighup).is_err() {
                        tracing::warn!("SIGHUP: the reload thread has stopped");
                    }
                    continue;
                }
                if events_tx.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })?;
    Ok(watch)
}

/// The final flush of a clean stop. It runs twice: a mirror clears the
/// write-intent bits of regions that stayed quiet since the previous flush, so
/// the second one leaves no region to resync at the next start.
pub(crate) fn flush_stack(stack: &Stack) -> Result<(), String> {
    let ctx = IoCtx::new(0, 64).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    for _ in 0..2 {
        exec.block_on(&ctx, stack.flush(&ctx))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `ublk-stack down NAME`.
pub fn down(name: &str) -> u8 {
    let socket = match control::find(name) {
        Ok(socket) => socket,
        Err(reason) => return fail(reason),
    };
    // Teardown flushes every leaf; give it time.
    match control::request(&socket, "down", Duration::from_secs(600)) {
        Ok(reply) if reply["ok"] == true => 0,
        Ok(reply) => fail(format!(
            "{name}: {}",
            reply["error"].as_str().unwrap_or("down failed")
        )),
        Err(e) => fail(control::unreachable(name, &socket, &e)),
    }
}

/// `ublk-stack list`: one line per running device, "no devices running" when
/// there is none. Exit 1 when a device could not be asked for lack of
/// permission (its socket is 0600): an empty or partial list must not pass
/// for the truth.
pub fn list() -> u8 {
    let run_dir = control::run_dir();
    let sockets = match control::sockets() {
        Ok(sockets) => sockets,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return fail(format!(
            "permission denied: cannot read {}; run as root or as the user that runs the devices",
            run_dir.display()
        ))
        }
        Err(e) => return fail(format!("{}: {e}", run_dir.display())),
    };
    if sockets.is_empty() {
        println!("no devices running");
        return 0;
    }
    let mut denied = Vec::new();
    for (name, socket) in sockets {
        match control::request(&socket, "info", Duration::from_secs(5)) {
            Ok(info) => println!(
                "{}\t{}\t{}\t{}",
                escape_controls(&name),
                escape_controls(info["path"].as_str().unwrap_or("-")),
                format_human(info["size"].as_u64().unwrap_or(0)),
                escape_controls(info["state"].as_str().unwrap_or("unknown"))
            ),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied.push(name),
            Err(_) => println!("{}\t-\t-\tnot responding", escape_controls(&name)),
        }
    }
    if denied.is_empty() {
        return 0;
    }
    fail(format!(
        "permission denied: cannot reach the control socket of {} in {}; run as root or as the user that runs the devices",
        denied
            .iter()
            .map(|name| format!("\"{}\"", escape_controls(name)))
            .collect::<Vec<_>>()
            .join(", "),
        run_dir.display()
    ))
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

    #[test]
    fn recovery_is_off_when_a_layer_keeps_writes_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = layers::testing::plans::PlanBuilder::new(dir.path(), 4096);
        let a = plan.memory("a", 1 << 20);
        let b = plan.memory("b", 1 << 20);
        let mirror = plan.mirror("m", &[a, b], layers::plan::ReadPolicy::First);
        assert_eq!(layer_lost_with_the_daemon(&plan.build(mirror)), Some("a"));

        let mut plan = layers::testing::plans::PlanBuilder::new(dir.path(), 4096);
        let a = plan.file("a", 1 << 20);
        let checksum = plan.checksum("c", a);
        assert_eq!(layer_lost_with_the_daemon(&plan.build(checksum)), None);
    }

    #[test]
    fn device_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k9.device");
        assert_eq!(read_device_record(&path), None);
        write_device_record(&path, 5).unwrap();
        assert_eq!(read_device_record(&path), Some(5));
        assert!(!dir.path().join("k9.device.partial").exists());
        std::fs::write(&path, "garbage\n").unwrap();
        assert_eq!(read_device_record(&path), None);
    }
}

//! `up CONFIG`: the stack served as /dev/ublkbN by the kernel's ublk driver
//! (one pinned thread per queue). `stop` is STOP_DEV (the kernel drains
//! in-flight requests, which the queues keep serving, then removes
//! /dev/ublkbN and aborts every tag) and joins the queue threads; `remove`,
//! after the final flush, deletes the device (removes /dev/ublkcN). A `down`
//! without `--force` first asks the device to stop only if unused
//! (`ublk::device::stop`): refused, the device goes on serving.
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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use layers::{Layer, LayerSpec, Plan, Stack};

use super::{FrontEnd, Handover, Serving};
use crate::daemon::control;
use crate::daemon::status::UblkStatus;
use crate::ublk::{
    batch, zero_copy, Control, CtrlError, Device, DeviceConfig, DeviceError, TopLayer,
};

/// Said when the kernel has no ublk: the contract names `--nbd` as the way out.
const NO_UBLK: &str =
    "ublk_drv not loaded: modprobe ublk_drv (Linux ≥ 6.0 with CONFIG_BLK_DEV_UBLK), or serve the same stack with --nbd";

impl TopLayer for Stack {
    fn top(&self) -> &dyn Layer {
        Stack::top(self)
    }
}

/// The ublk front end: the control device once `prepare` opened it, the
/// device once `start` made it.
#[derive(Default)]
pub struct Ublk {
    ctrl: Option<Control>,
    device: Option<Device>,
    /// What `start` asked for, for `resume`.
    config: Option<DeviceConfig>,
    record: PathBuf,
}

impl Ublk {
    pub fn new() -> Ublk {
        Ublk::default()
    }
}

impl FrontEnd for Ublk {
    fn prepare(&mut self, _plan: &Plan) -> Result<(), String> {
        if !control::is_root() {
            return Err("ublk devices need root: run `ublk-stack up` as root".into());
        }
        self.ctrl = Some(open_control()?);
        Ok(())
    }

    fn start(&mut self, plan: &Plan, stack: Arc<Stack>) -> Result<Serving, String> {
        let name = &plan.device.name;
        let ctrl = self.ctrl.take().ok_or("ublk control device not open")?;
        let zero_copy_blocker = zero_copy::blocker(
            plan.walk()
                .into_iter()
                .map(|id| plan.layers[id].spec.type_name()),
        )
        .map(String::from);
        let data_path = zero_copy::Wanted::from_env()
            .map(|wanted| match wanted {
                zero_copy::Wanted::Auto if has_memory_backed_file(plan) => zero_copy::Wanted::Off,
                other => other,
            })
            .and_then(|wanted| {
                zero_copy::choose(ctrl.features(), zero_copy_blocker.as_deref(), wanted)
            })
            .map_err(|e| format!("{name}: {e}"))?;
        let batch_io = batch::choose::Wanted::from_env()
            .and_then(|wanted| batch::choose::choose(ctrl.features(), wanted))
            .map_err(|e| format!("{name}: {e}"))?;
        let device_config = DeviceConfig {
            batch_io,
            data_path,
            zero_copy_blocker,
            id: plan.device.id,
            queues: plan.device.queues,
            depth: plan.device.queue_depth,
            block_size: stack.block_size(),
            size_bytes: stack.size(),
            discard: stack.discard_frees_space(),
            recovery: recovery_wanted(plan),
            held_ids: ids_held_for_others(name),
        };
        self.record = device_record_path(name);
        let (device, recovered) = match start_device(ctrl, &device_config, stack, &self.record)
        {
            Ok(started) => started,
            Err(e @ DeviceError::Mismatch(_)) => {
                return Err(format!(
                    "{name}: {e} (restore the config, or remove {} so that the next `up` deletes that device, failing its held I/O)",
                    self.record.display()
                ))
            }
            Err(e) => return Err(format!("{name}: {e}")),
        };
        let serving = Serving {
            path: device.block_path(),
            queues: device.queues(),
            note: if recovered { ", recovered" } else { "" },
            connections: None,
            ublk: Some(UblkStatus::new(
                device.kernel_features(),
                device.features_in_use(),
            )),
        };
        self.device = Some(device);
        self.config = Some(device_config);
        Ok(serving)
    }

    fn any_queue_ended(&self) -> bool {
        self.device.as_ref().is_some_and(Device::any_queue_ended)
    }

    fn queue_ended(&self, name: &str) -> String {
        format!("{name}: a queue stopped on its own; device removed")
    }

    fn stop_if_unused(&mut self) -> Result<(), String> {
        let Some(device) = self.device.as_mut() else {
            return Ok(());
        };
        device.stop_if_unused().map_err(|e| match e {
            DeviceError::InUse(..) => format!(
                "{e}; unmount or close it and run `down` again, or `down --force` to remove it anyway"
            ),
            other => format!(
                "cannot tell whether {} is in use: {other}; `down --force` removes it anyway",
                device.block_path().display()
            ),
        })
    }

    fn stop(&mut self) -> Result<(), String> {
        let Some(device) = self.device.as_mut() else {
            return Ok(());
        };
        let reports = device.stop().map_err(|e| e.to_string())?;
        let requests: u64 = reports.iter().map(|r| r.requests).sum();
        let errors: u64 = reports.iter().map(|r| r.errors).sum();
        tracing::info!(requests, errors, "queues stopped");
        Ok(())
    }

    fn handover_refusal(&self) -> Option<String> {
        match &self.device {
            Some(device) => device.handover_refusal(),
            None => Some("the device is not running".into()),
        }
    }

    fn hand_over(&mut self) -> Result<(), Handover> {
        let Some(device) = self.device.as_mut() else {
            return Err(Handover::Refused("the device is not running".into()));
        };
        match device.quiesce_for_handover() {
            Ok(reports) => {
                let requests: u64 = reports.iter().map(|r| r.requests).sum();
                tracing::info!(requests, "queues quiesced for the handover");
                Ok(())
            }
            // The kernel refused the command: the queues go on serving.
            Err(e @ DeviceError::Ctrl(_)) => Err(Handover::Refused(e.to_string())),
            Err(e) => Err(Handover::Stranded(e.to_string())),
        }
    }

    fn resume(&mut self, stack: Arc<Stack>) -> Result<(), String> {
        let (Some(device), Some(config)) = (self.device.as_mut(), self.config.as_ref()) else {
            return Err("the device is not running".into());
        };
        device.resume(config, stack).map_err(|e| e.to_string())
    }

    fn remove(&mut self) -> Result<(), String> {
        let Some(device) = self.device.take() else {
            return Ok(());
        };
        device.delete().map_err(|e| e.to_string())?;
        // The device is gone: nothing is left to recover.
        drop(std::fs::remove_file(&self.record));
        Ok(())
    }
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

/// Whether a `file` leaf of `plan` is served on the queue thread (a buffered
/// file on tmpfs or ramfs, see `layers/src/file.rs`). Such a leaf cannot read
/// into a kernel-registered buffer without io_uring handing each request to a
/// worker thread, which measured slower than copy mode (benches/vm/README.md),
/// so `auto` keeps copy mode for its device; `UBLK_STACK_ZERO_COPY=on` still
/// asks for zero copy.
fn has_memory_backed_file(plan: &Plan) -> bool {
    plan.walk()
        .into_iter()
        .any(|id| match &plan.layers[id].spec {
            LayerSpec::File(p) => {
                !p.direct
                    && std::fs::File::open(&p.path).is_ok_and(|f| layers::os::is_memory_backed(&f))
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! `up CONFIG`: the stack served as /dev/ublkbN by the kernel's ublk driver
//! (one thread per queue, or `UBLK_STACK_QUEUE_THREADS`). `stop` is STOP_DEV (the kernel drains
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
//! Recovery is asked for when every write the daemon acknowledged is in the
//! kernel's hands (leaf files and disks, the on-disk tables of `checksum`, `crypt`
//! and `compress`) and so survives the process; never with a `memory` leaf, whose
//! data dies with the process. A `cache` may hold acknowledged writes in the
//! daemon's memory only (write-back mode, which a reload can turn on), so its
//! device is created with recovery only where the kernel can quiesce it, for
//! `upgrade`, and is resumed only after a clean handover (see `clean_handover`):
//! a device of a cache stack left by a daemon that died is stopped and deleted
//! instead, failing its held and later I/O, as a dead disk would, and `up` says
//! so. Recovering it would let the filesystem run on over writes it was told
//! were done and that are gone.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use layers::{LayerSpec, Plan, Stack};

mod clean_handover;

use super::{FrontEnd, Handover, Resize, Serving};
use crate::daemon::control;
use crate::daemon::status::UblkStatus;
use crate::ublk::{
    batch, queue_threads, sys, user_copy, zero_copy, Control, CtrlError, Device, DeviceConfig,
    DeviceError, TopLayer,
};

/// Said when the kernel has no ublk: the contract names `--nbd` as the way out.
const NO_UBLK: &str =
    "ublk_drv not loaded: modprobe ublk_drv (Linux ≥ 6.0 with CONFIG_BLK_DEV_UBLK), or serve the same stack with --nbd";

impl TopLayer for Stack {
    fn stack(&self) -> &Stack {
        self
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
    /// The clean-handover mark's path (`clean_handover`).
    mark: PathBuf,
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
        let batch_io = batch::choose::Wanted::from_env()
            .and_then(|wanted| batch::choose::choose(ctrl.features(), wanted))
            .map_err(|e| format!("{name}: {e}"))?;
        // A buffered file on tmpfs or ramfs: see `zero_copy::for_memory_file`.
        let offered = ctrl.features();
        let user_copy_max = user_copy_max().map_err(|e| format!("{name}: {e}"))?;
        let small_by_user_copy = !batch_io
            && user_copy_max.is_on()
            && offered & sys::UBLK_F_USER_COPY != 0
            && stack.direct().is_some_and(|top| top.serves_on_the_spot());
        let wanted = match zero_copy::Wanted::from_env().map_err(|e| format!("{name}: {e}"))? {
            zero_copy::Wanted::Auto if has_memory_backed_file(plan) => {
                zero_copy::for_memory_file(offered, small_by_user_copy)
            }
            zero_copy::Wanted::UserCopy if batch_io => {
                return Err(format!(
                    "{name}: {}=user-copy cannot be served with the batch protocol (UBLK_STACK_BATCH_IO)",
                    zero_copy::ENV
                ))
            }
            other => other,
        };
        let data_path = zero_copy::choose(offered, zero_copy_blocker.as_deref(), wanted)
            .map_err(|e| format!("{name}: {e}"))?;
        let queue_threads = queue_threads::from_env()
            .and_then(|wanted| {
                queue_threads::choose(ctrl.features(), batch_io, plan.device.queue_depth, wanted)
            })
            .map_err(|e| format!("{name}: {e}"))?;
        let device_config = DeviceConfig {
            batch_io,
            queue_threads,
            data_path,
            user_copy_max: if small_by_user_copy {
                user_copy_max
            } else {
                user_copy::Max::default()
            },
            zero_copy_blocker,
            id: plan.device.id,
            queues: plan.device.queues,
            depth: plan.device.queue_depth,
            block_size: stack.block_size(),
            size_bytes: stack.size(),
            discard: stack.discard_frees_space(),
            recovery: recovery_wanted(plan, ctrl.features()),
            held_ids: ids_held_for_others(name),
            dma_align: if data_path.is_zero_copy() {
                dma_align(plan, stack.block_size())
            } else {
                // The daemon's own buffers are aligned, and a direct file
                // leaf copies a misaligned one.
                0
            },
        };
        self.record = device_record_path(name);
        self.mark = clean_handover::path(name);
        let files = Records {
            device: &self.record,
            mark: &self.mark,
        };
        let cache = cache_layer(plan);
        let (device, recovered) = start_device(ctrl, &device_config, stack, files, cache)
            .map_err(|e| match e {
                Start::Device(e @ DeviceError::Mismatch(_)) => format!(
                    "{name}: {e} (restore the config, or remove {} so that the next `up` deletes that device, failing its held I/O)",
                    self.record.display()
                ),
                Start::Device(e) => format!("{name}: {e}"),
                Start::Abandoned(why) => format!("{name}: {why}"),
            })?;
        let serving = Serving {
            path: device.block_path(),
            queues: device.queues(),
            note: if recovered { ", recovered" } else { "" },
            connections: None,
            ublk: Some(UblkStatus::new(
                device.kernel_features(),
                device.features_in_use(),
                device.dma_alignment(),
            )),
            resize: Some(Arc::new(UblkResize {
                dev_id: device.dev_id(),
                features: device.kernel_features(),
            })),
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
        let registered_here: u64 = reports.iter().map(|r| r.registered_here).sum();
        let user_copied: u64 = reports.iter().map(|r| r.user_copied).sum();
        let mapped: u64 = reports.iter().map(|r| r.mapped).sum();
        // Each queue thread's count, queue by queue: with several threads per
        // queue this shows the kernel shared the requests among them.
        let by_thread: Vec<u64> = reports.iter().map(|r| r.requests).collect();
        tracing::info!(
            requests,
            errors,
            registered_here,
            user_copied,
            mapped,
            ?by_thread,
            "queues stopped"
        );
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
            Err(e @ (DeviceError::Ctrl(_) | DeviceError::HandoverNotBegun(_))) => {
                Err(Handover::Refused(e.to_string()))
            }
            Err(e) => Err(Handover::Stranded(e.to_string())),
        }
    }

    fn mark_clean_handover(&mut self) -> Result<(), String> {
        let Some(device) = self.device.as_ref() else {
            return Err("the device is not running".into());
        };
        let mark = clean_handover::Mark {
            dev_id: device.dev_id(),
            pid: std::process::id() as i32,
        };
        clean_handover::write(&self.mark, mark).map_err(|e| format!("{}: {e}", self.mark.display()))
    }

    fn resume(&mut self, stack: Arc<Stack>) -> Result<(), String> {
        let (Some(device), Some(config)) = (self.device.as_mut(), self.config.as_ref()) else {
            return Err("the device is not running".into());
        };
        // Before any request reaches the stack again: from then on the mark
        // would vouch for writes that are not flushed.
        clean_handover::remove(&self.mark).map_err(|e| format!("{}: {e}", self.mark.display()))?;
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

/// The kernel version that added UBLK_U_CMD_UPDATE_SIZE (UBLK_F_UPDATE_SIZE).
const UPDATE_SIZE_SINCE: &str = "Linux 6.14";

/// Grows /dev/ublkbN with UPDATE_SIZE, through a control device of its own
/// (the one `start` used belongs to the device).
struct UblkResize {
    dev_id: u32,
    features: u64,
}

impl Resize for UblkResize {
    fn refusal(&self) -> Option<String> {
        (self.features & crate::ublk::sys::UBLK_F_UPDATE_SIZE == 0).then(|| {
            format!(
                "this kernel's ublk driver cannot resize a running device (UBLK_F_UPDATE_SIZE \
                 needs {UPDATE_SIZE_SINCE} or later); take the device down and up to grow it"
            )
        })
    }

    fn resize(&self, bytes: u64) -> Result<(), String> {
        let mut ctrl = Control::open().map_err(|e| e.to_string())?;
        ctrl.update_size(self.dev_id, bytes)
            .map_err(|e| e.to_string())
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

/// The cache layer a device record names: the stack that served the device
/// had one, whatever the config says now.
fn read_record_cache(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("cache "))
        .map(|name| name.trim().to_string())
}

/// Record that device `dev_id` serves this name, with the stack's cache layer.
fn write_device_record(path: &Path, dev_id: u32, cache: Option<&str>) -> io::Result<()> {
    // Written whole then renamed, so a crash never leaves half a record.
    let partial = path.with_extension("device.partial");
    let mut text = format!("id {dev_id}\n");
    if let Some(cache) = cache {
        text.push_str(&format!("cache {cache}\n"));
    }
    std::fs::write(&partial, text)?;
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

/// Requests up to how many bytes a tmpfs top copies by USER_COPY:
/// `UBLK_STACK_USER_COPY_MAX` (a size, 0 for none), else the default.
fn user_copy_max() -> Result<user_copy::Max, String> {
    parse_user_copy_max(std::env::var(user_copy::ENV).ok().as_deref())
}

fn parse_user_copy_max(value: Option<&str>) -> Result<user_copy::Max, String> {
    let Some(text) = value.filter(|t| !t.is_empty()) else {
        return Ok(user_copy::Max::DEFAULT);
    };
    let bytes = crate::config::size::parse_size(text)
        .map_err(|e| format!("{}={text:?}: {e}", user_copy::ENV))?;
    // Each tag's own buffer holds a copied request; 1 MiB is the most a
    // request can be under zero copy.
    if bytes > 1 << 20 || bytes % 512 != 0 {
        return Err(format!(
            "{}={text:?}: expected a multiple of 512 bytes from 0 to 1MiB",
            user_copy::ENV
        ));
    }
    Ok(user_copy::Max(bytes))
}

fn recovery_wanted(plan: &Plan, offered: u64) -> bool {
    if std::env::var("UBLK_STACK_USER_RECOVERY").as_deref() == Ok("off") {
        return false;
    }
    if let Some(layer) = memory_leaf(plan) {
        tracing::info!(
            "user recovery off: layer \"{layer}\" keeps its data in the daemon's memory"
        );
        return false;
    }
    match cache_layer(plan) {
        // Such a device is only ever resumed after a clean handover, which
        // needs QUIESCE: without it, recovery would only hold the I/O of a
        // device that cannot be resumed.
        Some(layer) if offered & sys::UBLK_F_QUIESCE == 0 => {
            tracing::info!(
                "user recovery off: layer \"{layer}\" may hold acknowledged writes in the daemon's memory, and the kernel cannot quiesce a device for a clean handover"
            );
            false
        }
        _ => true,
    }
}

/// The first `memory` leaf of `plan`: its data lives in this process only.
fn memory_leaf(plan: &Plan) -> Option<&str> {
    plan.layers
        .iter()
        .find(|layer| matches!(layer.spec, LayerSpec::Memory { .. }))
        .map(|layer| layer.name.as_str())
}

/// The first `cache` layer of `plan`: it may hold acknowledged writes in this
/// process only, whatever its mode now (a reload can make it write-back).
fn cache_layer(plan: &Plan) -> Option<&str> {
    plan.layers
        .iter()
        .find(|layer| matches!(layer.spec, LayerSpec::Cache(_)))
        .map(|layer| layer.name.as_str())
}

/// Why a device left held for recovery must not be resumed: a cache layer
/// was in the stack that served it (`recorded`, from the device record) or is
/// in the config's (`configured`), and no mark vouches that it was handed over
/// clean (device `dev_id`, last served by `server_pid`). `None`: resume it.
fn resume_refusal(
    recorded: Option<&str>,
    configured: Option<&str>,
    mark: Option<clean_handover::Mark>,
    dev_id: u32,
    server_pid: i32,
) -> Option<String> {
    // The stack that served the device counts first: a config edited since
    // the crash to drop its cache does not bring its writes back.
    let cache = recorded.or(configured)?;
    if mark.is_some_and(|mark| mark.vouches_for(dev_id, server_pid)) {
        return None;
    }
    let server = if server_pid > 0 {
        format!(" (pid {server_pid})")
    } else {
        String::new()
    };
    Some(format!(
        "/dev/ublkb{dev_id} is not resumed: the daemon serving it{server} died without handing it over, \
         and writes it had acknowledged may have been in cache layer \"{cache}\"'s memory only, so they are lost; \
         the device is stopped and deleted, failing its held and later I/O. \
         Check the filesystem on it (unmount it, fsck); the next `up` makes the device anew"
    ))
}

/// The files `up` keeps in the run folder for a device.
#[derive(Clone, Copy)]
struct Records<'a> {
    /// `NAME.device`: which device to recover.
    device: &'a Path,
    /// `NAME.handover`: the clean-handover mark.
    mark: &'a Path,
}

/// Why `start_device` served nothing.
enum Start {
    Device(DeviceError),
    /// The device left held was not resumed, but stopped and deleted: why.
    Abandoned(String),
}

impl From<DeviceError> for Start {
    fn from(e: DeviceError) -> Self {
        Start::Device(e)
    }
}

/// Take over the device a daemon of this name left (killed, or handing it
/// over), or create a new one. Returns the device and whether it was recovered.
/// `cache` names the stack's cache layer, if it has one: then only a device
/// handed over clean is taken over.
fn start_device(
    mut ctrl: Control,
    config: &DeviceConfig,
    stack: Arc<Stack>,
    files: Records<'_>,
    cache: Option<&str>,
) -> Result<(Device, bool), Start> {
    if let Some(dev_id) = read_device_record(files.device) {
        if let Some(info) = Device::find_recoverable(&mut ctrl, dev_id)? {
            let mark = clean_handover::read(files.mark);
            let recorded = read_record_cache(files.device);
            let refusal = resume_refusal(
                recorded.as_deref(),
                cache,
                mark,
                info.dev_id,
                info.ublksrv_pid,
            );
            if let Some(why) = refusal {
                tracing::error!("{why}");
                Device::abandon(ctrl, info)
                    .map_err(|e| Start::Abandoned(format!("{why}; stopping it failed: {e}")))?;
                drop(std::fs::remove_file(files.device));
                drop(clean_handover::remove(files.mark));
                return Err(Start::Abandoned(why));
            }
            tracing::info!(dev_id, "recovering the device left by another daemon");
            // Consumed just before requests reach this process: a crash
            // after this serves writes the mark would not vouch for.
            let consume = || {
                clean_handover::remove(files.mark)
                    .map_err(|e| format!("{}: {e}", files.mark.display()))
            };
            let device = Device::recover(ctrl, info, config, stack, consume)?;
            // The device is now served by this stack.
            if recorded.as_deref() != cache {
                record_device(files.device, &device, cache);
            }
            return Ok((device, true));
        }
        // Deleted or stopped since the record was written: nothing to recover.
        drop(std::fs::remove_file(files.device));
    }
    // A mark left for a device that is gone must not vouch for this one.
    clean_handover::remove(files.mark)
        .map_err(|e| Start::Device(DeviceError::CharDevice(files.mark.to_path_buf(), e)))?;
    let device = Device::create(ctrl, config, stack)?;
    if device.recoverable() {
        record_device(files.device, &device, cache);
    }
    Ok((device, false))
}

fn record_device(path: &Path, device: &Device, cache: Option<&str>) {
    if let Err(e) = write_device_record(path, device.dev_id(), cache) {
        tracing::warn!(
            "{}: {e}: a later `up` could not recover this device after a crash",
            path.display()
        );
    }
}

/// The DMA_ALIGN mask for a zero-copy device: the largest O_DIRECT alignment
/// of its direct leaves (memory or offset, from statx; else the block size,
/// which they are opened with), minus one; 0 without direct leaves.
fn dma_align(plan: &Plan, block_size: u32) -> u32 {
    plan.walk()
        .into_iter()
        .filter_map(|id| match &plan.layers[id].spec {
            LayerSpec::File(p) if p.direct => Some(p.path.as_path()),
            LayerSpec::Disk(p) if p.direct => Some(p.path.as_path()),
            _ => None,
        })
        .map(|path| match layers::os::dio_alignment(path) {
            Ok(Some(align)) if align > 0 => align,
            _ => block_size,
        })
        .max()
        // A mask must be below the page size.
        .map_or(0, |align| align.clamp(1, 4096).next_power_of_two() - 1)
}

/// Whether a `file` leaf of `plan` is served on the queue thread (a buffered
/// file on tmpfs or ramfs, see `layers/src/file.rs`). Such a leaf cannot read
/// into a kernel-registered buffer without io_uring handing each request to a
/// worker thread, which for small requests measured slower than copy mode
/// (benches/vm/README.md), so `auto` gives its device copy mode, or zero copy
/// with user copy for the small requests where the file is the top.
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
    fn user_copy_max_is_a_size_up_to_one_mib_and_zero_turns_it_off() {
        use user_copy::Max;
        assert_eq!(parse_user_copy_max(None), Ok(Max::DEFAULT));
        assert_eq!(parse_user_copy_max(Some("")), Ok(Max::DEFAULT));
        assert_eq!(parse_user_copy_max(Some("0")), Ok(Max(0)));
        assert!(!Max(0).is_on());
        assert_eq!(parse_user_copy_max(Some("16KiB")), Ok(Max(16 << 10)));
        assert_eq!(parse_user_copy_max(Some("1MiB")), Ok(Max(1 << 20)));
        assert!(Max::DEFAULT.takes(8 << 10) && !Max::DEFAULT.takes(12 << 10));
        for bad in ["2MiB", "1000", "lots"] {
            let err = parse_user_copy_max(Some(bad)).unwrap_err();
            assert!(err.starts_with("UBLK_STACK_USER_COPY_MAX="), "{bad}: {err}");
        }
    }

    #[test]
    fn recovery_is_off_with_a_memory_leaf_and_for_a_cache_without_quiesce() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = layers::testing::plans::PlanBuilder::new(dir.path(), 4096);
        let a = plan.memory("a", 1 << 20);
        let b = plan.memory("b", 1 << 20);
        let mirror = plan.mirror("m", &[a, b], layers::plan::ReadPolicy::First);
        let plan = plan.build(mirror);
        assert_eq!(memory_leaf(&plan), Some("a"));
        assert!(!recovery_wanted(&plan, sys::UBLK_F_QUIESCE));

        let mut plan = layers::testing::plans::PlanBuilder::new(dir.path(), 4096);
        let a = plan.file("a", 1 << 20);
        let checksum = plan.checksum("c", a);
        let plan = plan.build(checksum);
        assert_eq!(memory_leaf(&plan), None);
        assert_eq!(cache_layer(&plan), None);
        assert!(recovery_wanted(&plan, 0));

        let mut plan = layers::testing::plans::PlanBuilder::new(dir.path(), 4096);
        let a = plan.file("a", 1 << 20);
        let cache = plan.cache("wb", a, 1 << 16, layers::plan::CacheMode::WriteBack);
        let plan = plan.build(cache);
        assert_eq!(cache_layer(&plan), Some("wb"));
        assert!(recovery_wanted(&plan, sys::UBLK_F_QUIESCE));
        assert!(!recovery_wanted(&plan, sys::UBLK_F_USER_RECOVERY));
    }

    #[test]
    fn a_cache_stack_is_resumed_only_with_a_mark_for_its_device_and_server() {
        let mark = clean_handover::Mark { dev_id: 2, pid: 90 };
        // Without a cache, crash recovery stays as it was.
        assert_eq!(resume_refusal(None, None, None, 2, 90), None);
        assert_eq!(resume_refusal(None, Some("wb"), Some(mark), 2, 90), None);
        let why = resume_refusal(None, Some("wb"), None, 2, 90).unwrap();
        assert!(why.contains("/dev/ublkb2 is not resumed"), "{why}");
        assert!(why.contains("cache layer \"wb\""), "{why}");
        assert!(why.contains("fsck"), "{why}");
        assert!(resume_refusal(None, Some("wb"), Some(mark), 3, 90).is_some());
        assert!(resume_refusal(None, Some("wb"), Some(mark), 2, 91).is_some());
        assert_eq!(resume_refusal(None, Some("wb"), Some(mark), 2, -1), None);
        assert!(resume_refusal(None, Some("wb"), Some(mark), 3, -1).is_some());
        // The stack that died had a cache: a config without one changes nothing.
        let why = resume_refusal(Some("old"), None, None, 2, 90).unwrap();
        assert!(why.contains("cache layer \"old\""), "{why}");
        assert_eq!(resume_refusal(Some("old"), None, Some(mark), 2, 90), None);
    }

    #[test]
    fn device_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k9.device");
        assert_eq!(read_device_record(&path), None);
        write_device_record(&path, 5, None).unwrap();
        assert_eq!(read_device_record(&path), Some(5));
        assert_eq!(read_record_cache(&path), None);
        write_device_record(&path, 6, Some("wb")).unwrap();
        assert_eq!(read_device_record(&path), Some(6));
        assert_eq!(read_record_cache(&path).as_deref(), Some("wb"));
        assert!(!dir.path().join("k9.device.partial").exists());
        std::fs::write(&path, "garbage\n").unwrap();
        assert_eq!(read_device_record(&path), None);
    }
}

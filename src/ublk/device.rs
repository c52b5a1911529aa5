//! A ublk device from creation to deletion: ADD_DEV, SET_PARAMS, one thread per
//! queue, START_DEV; and on the way out STOP_DEV, join the queues, DEL_DEV.
//!
//! User recovery: when the kernel offers UBLK_F_USER_RECOVERY together with
//! UBLK_F_USER_RECOVERY_REISSUE, devices are created with both. If the daemon then
//! dies without deleting its device, the kernel keeps /dev/ublkbN, quiesces its
//! queue and holds every request (new ones, and with REISSUE also the ones the dead
//! daemon had fetched but not committed) until a new daemon takes over with
//! [`Device::recover`]: START_USER_RECOVERY, open /dev/ublkcN, arm every tag, and
//! END_USER_RECOVERY, which lets the held requests through.
//!
//! Why REISSUE rather than failing the requests that were in flight at the crash:
//! none of them had been completed, so the layer above (a filesystem) has not seen
//! them finish and cannot have ordered anything after them; it only relies on the
//! order of completions, and of FLUSH against completed writes. A re-issued write
//! writes the same data to the same sectors again, which is idempotent, and a
//! write the dead daemon may have partly done is overwritten in full. Failing them
//! instead would hand the filesystem an EIO for a device that has recovered, which
//! ext4 answers by going read-only.
//!
//! Without those features (kernels that cannot report them, before 6.5's
//! GET_FEATURES, or when the caller turns recovery off) a killed daemon's device
//! is stopped by the kernel, its I/O fails, and the next `up` deletes the leftover
//! /dev/ublkcN.
//!
//! The other flags asked for are in `features::add_dev_flags`; stopping only
//! an unused device (`down` without `--force`) is in `stop`.

mod handover;
mod stop;

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;

use super::batch;
use super::ctrl::{Control, CtrlError, DAEMON_MARK};
use super::features;
use super::queue::{self, QueueReport, QueueSetup, TopLayer};
use super::queue_threads::{self, TagShare};
use super::sys::{self, DevInfo, Params};
use super::user_copy;
use super::zero_copy::{AutoRegMiss, DataPath};

/// Largest request the kernel sends us in copy mode, and the size of each
/// tag's buffer (all of it touched by the largest requests).
pub const MAX_IO_BUF_BYTES: u32 = 512 * 1024;
/// Largest request under zero copy, where the request's own pages carry the
/// data and the tag buffers stay untouched: 1 MiB requests then reach the
/// leaf whole instead of as two.
pub const MAX_ZERO_COPY_IO_BYTES: u32 = 1024 * 1024;
/// Bound on one discard or write-zeroes request, so that one request never runs
/// for long.
const MAX_ZEROING_SECTORS: u32 = (64 << 20) >> 9;

/// What the device should look like; from the config and the compiled stack.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Fixed device id, or `None` to let the kernel pick.
    pub id: Option<u32>,
    pub queues: u16,
    pub depth: u16,
    pub block_size: u32,
    pub size_bytes: u64,
    /// Advertise discard (only when a discard really frees space below).
    pub discard: bool,
    /// Ask for user recovery (used when the kernel offers it).
    pub recovery: bool,
    /// Devices held for recovery by another device's daemon: never reaped as
    /// stale, and a fixed `id` among them is taken.
    pub held_ids: Vec<u32>,
    /// How a new device moves request data (`zero_copy::choose`).
    pub data_path: DataPath,
    /// The first layer type of the stack that cannot use zero copy, if any: a
    /// device left in zero-copy mode by a killed daemon is then not taken over.
    pub zero_copy_blocker: Option<String>,
    /// Serve a new device with the batch protocol (`batch::choose`).
    pub batch_io: bool,
    /// Threads serving each queue (`queue_threads::choose`).
    pub queue_threads: u16,
    /// Zero copy with UBLK_F_USER_COPY as well, for reads and writes up to
    /// this size to a top served on the queue thread (`user_copy`);
    /// `Max::default()` (0) for none. Asked for only where the kernel
    /// offers it, with per-tag commands.
    pub user_copy_max: user_copy::Max,
    /// Request buffers' memory alignment as a mask, sent as
    /// UBLK_PARAM_TYPE_DMA_ALIGN (0: not sent). Zero copy hands request pages
    /// to O_DIRECT leaves as they are, so they must be aligned as the leaves
    /// need.
    pub dma_align: u32,
}

#[derive(Debug)]
pub enum DeviceError {
    Ctrl(CtrlError),
    /// The requested fixed id belongs to another live device.
    IdTaken(u32),
    /// The device geometry cannot be expressed to the kernel.
    Geometry(String),
    CharDevice(PathBuf, io::Error),
    Queue(u16, io::Error),
    /// The device left by a killed daemon does not match the config.
    Mismatch(String),
    /// A handover could not begin; the device is served as before.
    HandoverNotBegun(String),
    /// The device left by a killed daemon cannot be taken over (yet).
    Recovery(u32, String),
    /// `stop_if_unused` found the block device in use: its path, and who
    /// uses it as far as can be seen.
    InUse(PathBuf, Vec<String>),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Ctrl(e) => e.fmt(f),
            DeviceError::IdTaken(id) => {
                write!(f, "ublk id {id} is already taken (/dev/ublkc{id} exists)")
            }
            DeviceError::Geometry(why) => write!(f, "device geometry: {why}"),
            DeviceError::CharDevice(path, e) => write!(f, "{}: {e}", path.display()),
            DeviceError::Queue(q, e) => write!(f, "queue {q}: {e}"),
            DeviceError::Mismatch(why) => write!(f, "{why}"),
            DeviceError::HandoverNotBegun(why) => write!(f, "{why}"),
            DeviceError::Recovery(id, why) => write!(f, "recovering /dev/ublkb{id}: {why}"),
            DeviceError::InUse(path, users) if users.is_empty() => write!(
                f,
                "{} is in use (open by a process this daemon cannot see)",
                path.display()
            ),
            DeviceError::InUse(path, users) => {
                write!(f, "{} is in use ({})", path.display(), users.join(", "))
            }
        }
    }
}

impl std::error::Error for DeviceError {}

impl From<CtrlError> for DeviceError {
    fn from(e: CtrlError) -> Self {
        DeviceError::Ctrl(e)
    }
}

/// The kernel parameters for a device of this shape.
pub fn device_params(config: &DeviceConfig, max_io_buf_bytes: u32) -> Result<Params, DeviceError> {
    let bs = config.block_size;
    if !bs.is_power_of_two() || !(512..=4096).contains(&bs) {
        return Err(DeviceError::Geometry(format!(
            "block size {bs} is not 512..=4096 and a power of two"
        )));
    }
    if config.size_bytes == 0 || config.size_bytes % u64::from(bs) != 0 {
        return Err(DeviceError::Geometry(format!(
            "size {} is not a non-zero multiple of the block size {bs}",
            config.size_bytes
        )));
    }
    let shift = bs.trailing_zeros() as u8;
    let mut params = Params {
        len: std::mem::size_of::<Params>() as u32,
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        ..Params::default()
    };
    params.basic = sys::ParamBasic {
        // A volatile cache makes the kernel send FLUSH, which the stack needs to
        // make writes durable.
        attrs: sys::UBLK_ATTR_VOLATILE_CACHE,
        logical_bs_shift: shift,
        physical_bs_shift: shift,
        io_opt_shift: shift,
        io_min_shift: shift,
        max_sectors: max_io_buf_bytes >> 9,
        chunk_sectors: 0,
        dev_sectors: config.size_bytes >> 9,
        virt_boundary_mask: 0,
    };
    // The discard block also carries the write-zeroes limit, so it is always sent;
    // discard itself is enabled only when it frees space.
    params.discard = sys::ParamDiscard {
        discard_alignment: 0,
        discard_granularity: bs,
        max_discard_sectors: if config.discard {
            MAX_ZEROING_SECTORS
        } else {
            0
        },
        max_write_zeroes_sectors: MAX_ZEROING_SECTORS,
        max_discard_segments: 1,
        reserved0: 0,
    };
    if config.dma_align != 0 {
        let mask = config.dma_align;
        if mask >= 4096 || !(mask + 1).is_power_of_two() {
            return Err(DeviceError::Geometry(format!(
                "DMA alignment mask {mask:#x} is not a power of two minus one below 4096"
            )));
        }
        params.types |= sys::UBLK_PARAM_TYPE_DMA_ALIGN;
        params.dma.alignment = mask;
    }
    Ok(params)
}

/// The DMA_ALIGN mask in `params`, if they carry one.
fn dma_align_of(params: &Params) -> Option<u32> {
    (params.types & sys::UBLK_PARAM_TYPE_DMA_ALIGN != 0).then_some(params.dma.alignment)
}

/// A created (and, after `create` returns, started) device with its queue threads.
pub struct Device {
    ctrl: Control,
    info: DevInfo,
    /// Every queue's threads, queue by queue.
    queues: Vec<JoinHandle<io::Result<QueueReport>>>,
    /// Threads per queue (`queue_threads`).
    threads: u16,
    /// Batch protocol: each queue's drain eventfd (`handover`).
    drains: Vec<Arc<EventFd>>,
    /// The DMA_ALIGN mask the kernel holds for the device, if one was sent.
    dma_align: Option<u32>,
    stopped: bool,
    deleted: bool,
    /// On drop, leave the device to the kernel instead of stopping and deleting
    /// it: set while a recovery is under way, so that a failed attempt leaves the
    /// device (and the I/O it holds) for the next one.
    keep_on_drop: bool,
}

/// UBLK_F_USER_COPY when `config` wants it beside zero copy on per-tag
/// commands and the kernel (`offered`) has it; else nothing.
fn user_copy_flag(config: &DeviceConfig, offered: u64) -> u64 {
    let wanted = config.user_copy_max.is_on()
        && config.data_path.is_zero_copy()
        && !config.batch_io
        && offered & sys::UBLK_F_USER_COPY != 0;
    if wanted {
        sys::UBLK_F_USER_COPY
    } else {
        0
    }
}

impl Device {
    /// Create, configure and start a device serving `stack`.
    pub fn create<T: TopLayer>(
        mut ctrl: Control,
        config: &DeviceConfig,
        stack: Arc<T>,
    ) -> Result<Device, DeviceError> {
        reap_stale(&mut ctrl, config.id, &config.held_ids)?;
        let asked_io = if config.data_path.is_zero_copy() {
            MAX_ZERO_COPY_IO_BYTES
        } else {
            MAX_IO_BUF_BYTES
        };
        let params = device_params(config, asked_io)?;
        let mut info = DevInfo {
            nr_hw_queues: config.queues,
            queue_depth: config.depth,
            max_io_buf_bytes: asked_io,
            dev_id: config.id.unwrap_or(u32::MAX),
            // Stored by ADD_DEV as given: lets a later `up` tell a device whose
            // daemon died before START_DEV from one being set up right now.
            ublksrv_pid: std::process::id() as i32,
            flags: features::add_dev_flags(ctrl.features(), config.recovery)
                | config.data_path.flag()
                | batch::choose::flag(config.batch_io)
                | user_copy_flag(config, ctrl.features()),
            ublksrv_flags: DAEMON_MARK,
            ..DevInfo::default()
        };
        match ctrl.add_dev(&mut info) {
            Err(CtrlError::Command { error, .. }) if error.raw_os_error() == Some(libc::EEXIST) => {
                return Err(DeviceError::IdTaken(config.id.unwrap_or(u32::MAX)))
            }
            other => other?,
        }
        let mut device = Device {
            ctrl,
            info,
            queues: Vec::new(),
            drains: Vec::new(),
            threads: 1,
            dma_align: dma_align_of(&params),
            stopped: false,
            deleted: false,
            keep_on_drop: false,
        };
        // From here on, dropping `device` on an error stops and deletes it.
        let max_io = device.info.max_io_buf_bytes.min(asked_io);
        let params = if max_io == asked_io {
            params
        } else {
            device_params(config, max_io)?
        };
        device.ctrl.set_params(device.info.dev_id, &params)?;
        device.start_queues(config, stack)?;
        device
            .ctrl
            .start_dev(device.info.dev_id, std::process::id() as i32)?;
        wait_for_path(&device.block_path(), Duration::from_secs(5));
        Ok(device)
    }

    /// The device `dev_id` if it was left by a daemon of ours that died, with
    /// user recovery on, so that [`Device::recover`] can take it over. `None`
    /// when there is nothing to recover: no such device, another server's, one
    /// created without recovery, or one the kernel has already stopped.
    pub fn find_recoverable(
        ctrl: &mut Control,
        dev_id: u32,
    ) -> Result<Option<DevInfo>, DeviceError> {
        let Some(info) = ctrl.dev_info(dev_id)? else {
            return Ok(None);
        };
        let recoverable = info.ublksrv_flags == DAEMON_MARK
            && info.flags & sys::UBLK_F_USER_RECOVERY != 0
            && info.state != sys::UBLK_S_DEV_DEAD;
        Ok(recoverable.then_some(info))
    }

    /// Take over a device found by [`Device::find_recoverable`]: check it
    /// matches `config`, START_USER_RECOVERY (retried while the dead daemon's
    /// process is still going away), arm every queue on the device's own queue
    /// count and depth, `release` (the last word before requests reach this
    /// process; an error leaves the device held), END_USER_RECOVERY. Requests
    /// held by the kernel, including the ones in flight at the crash, are then
    /// served by `stack`.
    pub fn recover<T: TopLayer>(
        mut ctrl: Control,
        info: DevInfo,
        config: &DeviceConfig,
        stack: Arc<T>,
        release: impl FnOnce() -> Result<(), String>,
    ) -> Result<Device, DeviceError> {
        let dev_id = info.dev_id;
        let params = ctrl.get_params(dev_id)?;
        check_same_geometry(dev_id, &params, config)?;
        if let (true, Some(layer)) = (
            DataPath::of_flags(info.flags).is_zero_copy(),
            &config.zero_copy_blocker,
        ) {
            return Err(DeviceError::Mismatch(format!(
                "/dev/ublkb{dev_id} was created for zero copy, which the config's `{layer}` layer cannot use"
            )));
        }
        start_recovery_when_quiesced(&mut ctrl, &info, Duration::from_secs(30))?;
        let mut device = Device {
            ctrl,
            info,
            queues: Vec::new(),
            drains: Vec::new(),
            threads: 1,
            // As the device was created, whatever this config would send.
            dma_align: dma_align_of(&params),
            stopped: false,
            deleted: false,
            keep_on_drop: true,
        };
        device.start_queues(config, stack)?;
        release().map_err(|why| DeviceError::Recovery(dev_id, why))?;
        device
            .ctrl
            .end_user_recovery(dev_id, std::process::id() as i32)?;
        device.keep_on_drop = false;
        wait_for_path(&device.block_path(), Duration::from_secs(5));
        Ok(device)
    }

    /// Stop and delete a device found by [`Device::find_recoverable`] instead
    /// of taking it over: the requests it holds, and any later ones, fail with
    /// EIO, as on a disk that died.
    pub fn abandon(mut ctrl: Control, info: DevInfo) -> Result<(), DeviceError> {
        ctrl.stop_dev(info.dev_id)?;
        delete_device(&mut ctrl, info.dev_id)?;
        Ok(())
    }

    /// Whether the kernel will hold this device's I/O for a new daemon if this
    /// one dies (the device was created with user recovery).
    pub fn recoverable(&self) -> bool {
        self.info.flags & sys::UBLK_F_USER_RECOVERY != 0
    }

    /// What GET_FEATURES reported for the driver (0 before Linux 6.5).
    pub fn kernel_features(&self) -> u64 {
        self.ctrl.features()
    }

    /// The memory alignment the device asks of request buffers, as a mask
    /// (UBLK_PARAM_TYPE_DMA_ALIGN); `None` when none was sent.
    pub fn dma_alignment(&self) -> Option<u32> {
        self.dma_align
    }

    /// The feature flags this daemon uses on this device (see
    /// `features::in_use`).
    pub fn features_in_use(&self) -> u64 {
        features::in_use(self.info.flags, self.ctrl.features()) | queue_threads::flag(self.threads)
    }

    fn start_queues<T: TopLayer>(
        &mut self,
        config: &DeviceConfig,
        stack: Arc<T>,
    ) -> Result<(), DeviceError> {
        let dev_id = self.info.dev_id;
        let char_path = PathBuf::from(format!("/dev/ublkc{dev_id}"));
        let char_fd = Arc::new(
            open_char_device(&char_path).map_err(|e| DeviceError::CharDevice(char_path, e))?,
        );
        let ioctl_encode = self.info.flags & sys::UBLK_F_CMD_IOCTL_ENCODE != 0;
        let batch = self.info.flags & sys::UBLK_F_BATCH_IO != 0;
        let data_path = DataPath::of_flags(self.info.flags);
        // From the device's flags, as the data path: a recovered device keeps
        // what it was created with.
        let user_copy_max = match data_path {
            // USER_COPY alone: the queue copies every request.
            DataPath::UserCopy if batch => {
                return Err(DeviceError::Mismatch(format!(
                    "/dev/ublkb{dev_id} has both BATCH_IO and USER_COPY without zero copy, which this daemon does not serve"
                )))
            }
            DataPath::UserCopy => user_copy::Max::ALL,
            path if path.is_zero_copy() && !batch && self.info.flags & sys::UBLK_F_USER_COPY != 0 => {
                config.user_copy_max
            }
            _ => user_copy::Max::default(),
        };
        let auto_reg_miss = AutoRegMiss::from_env(self.info.queue_depth).map_err(|why| {
            DeviceError::Queue(0, io::Error::new(io::ErrorKind::InvalidInput, why))
        })?;
        if auto_reg_miss.is_on() && data_path == DataPath::AutoRegister {
            tracing::warn!(
                "{}: making the kernel's buffer registration fail for some tags (a test setting)",
                AutoRegMiss::ENV
            );
        }
        let drain_hold = if batch {
            batch::drain_hold::from_env().map_err(|why| {
                DeviceError::Queue(0, io::Error::new(io::ErrorKind::InvalidInput, why))
            })?
        } else {
            Duration::ZERO
        };
        if !drain_hold.is_zero() {
            tracing::warn!(
                "{}: a handover's drain waits {} ms longer (a test setting)",
                batch::drain_hold::ENV,
                drain_hold.as_millis()
            );
        }
        // Several threads per queue need the kernel to send each tag's
        // requests to the thread that armed it (PER_IO_DAEMON, which it sets
        // on the device itself); a recovered device is served as the config
        // now asks, where the kernel allows.
        let threads = if !batch && self.info.flags & sys::UBLK_F_PER_IO_DAEMON != 0 {
            config.queue_threads.clamp(1, self.info.queue_depth.max(1))
        } else {
            1
        };
        self.threads = threads;
        self.drains.clear();
        let (armed_tx, armed_rx) = mpsc::channel();
        for (queue, index) in (0..self.info.nr_hw_queues)
            .flat_map(|queue| (0..threads).map(move |index| (queue, index)))
        {
            // Queue threads are left to the scheduler unless asked otherwise.
            // Pinned to its queue's CPUs, a queue thread shares that CPU with the
            // submitter whose requests it serves, and each request becomes two
            // context switches on one CPU while the others idle: on the 2-vCPU
            // test VM, fio 4K randread QD32 on 2 pinned queues ran at 0.63x of
            // the same queues unpinned (22k vs 35k IOPS); with one fio job per
            // CPU both ran alike (40k). UBLK_STACK_PIN_QUEUES=1 restores
            // pinning, for hosts that want each queue's work kept on its CPUs.
            let cpus = if pin_queues() {
                self.ctrl.queue_affinity(dev_id, queue)?
            } else {
                Vec::new()
            };
            let setup = QueueSetup {
                queue,
                depth: self.info.queue_depth,
                share: TagShare { index, of: threads },
                // As the device was created (a recovered one may predate
                // this build's sizes).
                buf_bytes: self.info.max_io_buf_bytes.min(MAX_ZERO_COPY_IO_BYTES) as usize,
                block_size: config.block_size,
                ioctl_encode,
                cpus,
                // From the device's own flags: a recovered device keeps the
                // data path it was created with.
                data_path,
                user_copy_max,
                batch,
                drain: None,
                auto_reg_miss,
                drain_hold,
            };
            let setup = if batch {
                let drain =
                    Arc::new(handover::drain_eventfd().map_err(|e| DeviceError::Queue(queue, e))?);
                self.drains.push(drain.clone());
                QueueSetup {
                    drain: Some(drain),
                    ..setup
                }
            } else {
                setup
            };
            let (char_fd, stack, armed_tx) = (char_fd.clone(), stack.clone(), armed_tx.clone());
            let name = if threads == 1 {
                format!("ublk{dev_id}-q{queue}")
            } else {
                format!("ublk{dev_id}-q{queue}.{index}")
            };
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let armed = |armed| drop(armed_tx.send((queue, armed)));
                    if setup.batch {
                        batch::run(setup, char_fd, stack, armed)
                    } else {
                        queue::run(setup, char_fd, stack, armed)
                    }
                })
                .map_err(|e| DeviceError::Queue(queue, e))?;
            self.queues.push(handle);
        }
        // Only the queue threads may keep the char device open: DEL_DEV waits for
        // its last close.
        drop(char_fd);
        drop(armed_tx);
        for _ in 0..self.queues.len() {
            match armed_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((queue, Err(e))) => return Err(DeviceError::Queue(queue, e)),
                Err(_) => {
                    return Err(DeviceError::Queue(
                        0,
                        io::Error::other("queue thread ended before arming"),
                    ))
                }
            }
        }
        Ok(())
    }

    pub fn dev_id(&self) -> u32 {
        self.info.dev_id
    }

    pub fn queues(&self) -> u16 {
        self.info.nr_hw_queues
    }

    pub fn block_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/ublkb{}", self.info.dev_id))
    }

    /// Whether a queue thread has ended (the device was stopped from outside, or
    /// a queue failed).
    pub fn any_queue_ended(&self) -> bool {
        self.queues.iter().any(JoinHandle::is_finished)
    }

    /// STOP_DEV and wait for the queues: the kernel drains in-flight requests
    /// (which the queues keep serving), removes /dev/ublkbN and aborts every tag.
    pub fn stop(&mut self) -> Result<Vec<QueueReport>, DeviceError> {
        if !self.stopped {
            // Without STOP_DEV the tags are never aborted and joining the queues
            // would wait forever; leave them running (the kernel cleans up when
            // the process exits) and report.
            self.ctrl.stop_dev(self.info.dev_id)?;
            self.stopped = true;
        }
        let mut reports = Vec::new();
        let mut first_error = None;
        let threads = usize::from(self.threads.max(1));
        for (thread, handle) in self.queues.drain(..).enumerate() {
            let queue = thread / threads;
            match handle.join() {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(e)) => {
                    first_error.get_or_insert(DeviceError::Queue(queue as u16, e));
                }
                Err(_) => {
                    first_error.get_or_insert(DeviceError::Queue(
                        queue as u16,
                        io::Error::other("queue thread panicked"),
                    ));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }

    /// Removes /dev/ublkcN (see [`delete_device`]). Call after `stop`.
    pub fn delete(mut self) -> Result<(), DeviceError> {
        self.deleted = true;
        delete_device(&mut self.ctrl, self.info.dev_id)?;
        Ok(())
    }
}

/// How long [`delete_device`] waits for the kernel to free a deleted device's id.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Delete device `dev_id`. DEL_DEV waits until the device is released, that
/// is until every opener of /dev/ublkbN has closed it and a file system on it
/// is unmounted: after a forced stop of a device in use that can be forever.
/// So DEL_DEV_ASYNC is used where the kernel knows it, followed by a bounded
/// wait for the id to be freed, which is at once when nobody holds the device
/// (the id is then free for the next `up`, as after DEL_DEV); past the wait
/// the kernel frees it when the last user lets go. Kernels before 6.9 get
/// DEL_DEV.
fn delete_device(ctrl: &mut Control, dev_id: u32) -> Result<(), CtrlError> {
    if !ctrl.del_dev_async(dev_id)? {
        return ctrl.del_dev(dev_id);
    }
    let deadline = Instant::now() + RELEASE_WAIT;
    while ctrl.dev_info(dev_id)?.is_some() {
        if Instant::now() >= deadline {
            tracing::warn!(
                "ublk device {dev_id} is deleted but still held open; the kernel frees its id when the last user closes it"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.deleted || self.keep_on_drop {
            return;
        }
        if let Err(e) = self.stop() {
            tracing::warn!("stopping ublk device {}: {e}", self.info.dev_id);
        }
        if let Err(e) = delete_device(&mut self.ctrl, self.info.dev_id) {
            tracing::warn!("deleting ublk device {}: {e}", self.info.dev_id);
        }
    }
}

/// Refuse to serve a device with another size or block size than the config's:
/// the filesystem on it was laid out for the old geometry.
fn check_same_geometry(
    dev_id: u32,
    params: &Params,
    config: &DeviceConfig,
) -> Result<(), DeviceError> {
    let size_bytes = params.basic.dev_sectors.saturating_mul(512);
    let block_size = 1u32
        .checked_shl(u32::from(params.basic.logical_bs_shift))
        .unwrap_or(0);
    let mut differences = Vec::new();
    if let Some(id) = config.id {
        if id != dev_id {
            differences.push(format!("id {dev_id} (config: {id})"));
        }
    }
    if size_bytes != config.size_bytes {
        differences.push(format!(
            "size {size_bytes} bytes (config: {})",
            config.size_bytes
        ));
    }
    if block_size != config.block_size {
        differences.push(format!(
            "block size {block_size} (config: {})",
            config.block_size
        ));
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(DeviceError::Mismatch(format!(
        "/dev/ublkb{dev_id}, left by a killed daemon with its I/O held, has {}; refusing to recover it with this config",
        differences.join(", ")
    )))
}

/// START_USER_RECOVERY, retried while the kernel says EBUSY: right after a
/// kill -9 the old process may still be closing /dev/ublkcN (its io_uring is torn
/// down asynchronously) and the device may not be quiesced yet.
fn start_recovery_when_quiesced(
    ctrl: &mut Control,
    info: &DevInfo,
    limit: Duration,
) -> Result<(), DeviceError> {
    let dev_id = info.dev_id;
    let deadline = Instant::now() + limit;
    loop {
        match ctrl.start_user_recovery(dev_id) {
            Ok(()) => return Ok(()),
            Err(CtrlError::Command { error, .. })
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(CtrlError::Command { error, .. }) if error.raw_os_error() == Some(libc::EBUSY) => {
                return Err(DeviceError::Recovery(
                    dev_id,
                    format!(
                        "still not quiesced after {} s (is pid {} still serving it?)",
                        limit.as_secs(),
                        info.ublksrv_pid
                    ),
                ))
            }
            Err(e) => return Err(DeviceError::Recovery(dev_id, e.to_string())),
        }
    }
}

fn open_char_device(path: &Path) -> io::Result<OwnedFd> {
    // udev (where there is one) may create the node a moment after ADD_DEV.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => return Ok(OwnedFd::from(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e),
        }
    }
}

fn wait_for_path(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Delete devices this daemon created whose daemon is gone (killed before it
/// could delete them: the kernel stops such a device but keeps /dev/ublkcN and
/// its id). Only devices carrying [`DAEMON_MARK`] are touched. With a fixed `id`,
/// a live device there is an error.
///
/// Devices in `held` wait for their own daemon to recover them and are left alone.
fn reap_stale(ctrl: &mut Control, id: Option<u32>, held: &[u32]) -> Result<(), DeviceError> {
    let mut ids: Vec<u32> = std::fs::read_dir("/sys/class/ublk-char")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("ublkc")?
                .parse()
                .ok()
        })
        .collect();
    if let Some(id) = id {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    for dev_id in ids {
        let Some(info) = ctrl.dev_info(dev_id)? else {
            continue;
        };
        if held.contains(&dev_id) {
            if Some(dev_id) == id {
                return Err(DeviceError::IdTaken(dev_id));
            }
            continue;
        }
        let ours = info.ublksrv_flags == DAEMON_MARK;
        let server_gone =
            info.ublksrv_pid <= 0 || !Path::new(&format!("/proc/{}", info.ublksrv_pid)).exists();
        if ours && server_gone {
            tracing::info!("deleting stale ublk device {dev_id} left by a dead daemon");
            // STOP_DEV first in case the kernel has not stopped it yet.
            ctrl.stop_dev(dev_id)?;
            delete_device(ctrl, dev_id)?;
        } else if Some(dev_id) == id {
            return Err(DeviceError::IdTaken(dev_id));
        }
    }
    Ok(())
}

/// Whether `UBLK_STACK_PIN_QUEUES=1` asks for queue threads pinned to their
/// queue's CPUs (see `start_queues`).
fn pin_queues() -> bool {
    std::env::var("UBLK_STACK_PIN_QUEUES").as_deref() == Ok("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(discard: bool) -> DeviceConfig {
        DeviceConfig {
            id: None,
            queues: 2,
            depth: 64,
            block_size: 4096,
            size_bytes: 1 << 30,
            discard,
            recovery: true,
            held_ids: Vec::new(),
            data_path: DataPath::Copy,
            zero_copy_blocker: None,
            batch_io: false,
            queue_threads: 1,
            user_copy_max: user_copy::Max::default(),
            dma_align: 0,
        }
    }

    #[test]
    fn user_copy_is_asked_for_only_beside_zero_copy_per_tag_and_where_offered() {
        let offered = 0x1f_ffff;
        let mut config = config(false);
        config.user_copy_max = user_copy::Max::DEFAULT;
        assert_eq!(user_copy_flag(&config, offered), 0, "copy mode");
        for path in [DataPath::AutoRegister, DataPath::ExplicitRegister] {
            config.data_path = path;
            assert_eq!(user_copy_flag(&config, offered), sys::UBLK_F_USER_COPY);
            assert_eq!(
                user_copy_flag(&config, offered & !sys::UBLK_F_USER_COPY),
                0,
                "not offered"
            );
        }
        config.batch_io = true;
        assert_eq!(user_copy_flag(&config, offered), 0, "batch");
        config.batch_io = false;
        config.user_copy_max = user_copy::Max::default();
        assert_eq!(user_copy_flag(&config, offered), 0, "not wanted");
    }

    #[test]
    fn params_describe_the_stack() {
        let params = device_params(&config(false), MAX_IO_BUF_BYTES).unwrap();
        assert_eq!(params.len, 120);
        assert_eq!(params.types & sys::UBLK_PARAM_TYPE_DMA_ALIGN, 0);
        assert_eq!(params.basic.logical_bs_shift, 12);
        assert_eq!(params.basic.physical_bs_shift, 12);
        assert_eq!(params.basic.dev_sectors, (1 << 30) / 512);
        assert_eq!(params.basic.max_sectors, MAX_IO_BUF_BYTES / 512);
        assert_ne!(params.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
        assert_eq!(params.discard.max_discard_sectors, 0);
        assert_ne!(params.discard.max_write_zeroes_sectors, 0);
        assert_eq!(params.discard.discard_granularity, 4096);
    }

    #[test]
    fn dma_alignment_is_sent_when_asked_and_checked() {
        let mut config = config(false);
        config.dma_align = 4095;
        let params = device_params(&config, MAX_IO_BUF_BYTES).unwrap();
        assert_ne!(params.types & sys::UBLK_PARAM_TYPE_DMA_ALIGN, 0);
        assert_eq!(params.dma.alignment, 4095);
        for bad in [4096, 8191, 1000] {
            config.dma_align = bad;
            let Err(DeviceError::Geometry(why)) = device_params(&config, MAX_IO_BUF_BYTES) else {
                panic!("mask {bad} accepted");
            };
            assert!(why.contains("DMA alignment"), "{why}");
        }
    }

    #[test]
    fn discard_is_advertised_only_when_it_frees_space() {
        let params = device_params(&config(true), MAX_IO_BUF_BYTES).unwrap();
        assert_ne!(params.discard.max_discard_sectors, 0);
        assert_eq!(params.discard.max_discard_segments, 1);
    }

    #[test]
    fn recovery_refuses_another_geometry() {
        let config = config(false);
        let params = device_params(&config, MAX_IO_BUF_BYTES).unwrap();
        assert!(check_same_geometry(3, &params, &config).is_ok());
        let mut bigger = config.clone();
        bigger.size_bytes *= 2;
        let why = check_same_geometry(3, &params, &bigger)
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("size 1073741824 bytes (config: 2147483648)"),
            "{why}"
        );
        let mut small_blocks = config.clone();
        small_blocks.block_size = 512;
        small_blocks.id = Some(4);
        let why = check_same_geometry(3, &params, &small_blocks)
            .unwrap_err()
            .to_string();
        assert!(why.contains("block size 4096 (config: 512)"), "{why}");
        assert!(why.contains("id 3 (config: 4)"), "{why}");
    }

    #[test]
    fn odd_geometry_is_refused() {
        let mut bad = config(false);
        bad.block_size = 1024 + 512;
        assert!(device_params(&bad, MAX_IO_BUF_BYTES).is_err());
        let mut bad = config(false);
        bad.size_bytes = 4096 + 512;
        assert!(device_params(&bad, MAX_IO_BUF_BYTES).is_err());
    }
}

//! Handing a running device to another process (`ublk-stack upgrade`).
//!
//! QUIESCE_DEV makes the kernel hold new requests and abort this daemon's idle
//! FETCH commands; the queues finish and commit the requests they were serving,
//! then end, and closing /dev/ublkcN leaves the device QUIESCED: /dev/ublkbN
//! stays, its I/O waits, and a new process takes it over as after a crash
//! ([`Device::recover`]). If the handover cannot go on, [`Device::resume`]
//! takes the device back in this process the same way.

use std::sync::Arc;
use std::time::Duration;

use super::{start_recovery_when_quiesced, Device, DeviceConfig, DeviceError};
use crate::ublk::queue::{QueueReport, TopLayer};
use crate::ublk::sys;

/// The first kernel whose ublk driver has UBLK_F_QUIESCE.
pub const QUIESCE_SINCE: &str = "Linux 6.16";

impl Device {
    /// Why this device cannot be handed over, if it cannot.
    pub fn handover_refusal(&self) -> Option<String> {
        if self.ctrl.features() & sys::UBLK_F_QUIESCE == 0 {
            return Some(format!(
                "the kernel's ublk driver cannot quiesce a device (no UBLK_F_QUIESCE in its features {:#x}; {QUIESCE_SINCE} or later is needed)",
                self.ctrl.features()
            ));
        }
        if self.info.flags & sys::UBLK_F_USER_RECOVERY == 0 {
            return Some(
                "the device was created without user recovery, so the kernel would remove it when this daemon lets go"
                    .into(),
            );
        }
        if self.info.flags & sys::UBLK_F_QUIESCE == 0 {
            return Some(
                "the device was created without UBLK_F_QUIESCE (by a daemon that did not ask for it); it can be handed over after its next `down` and `up`"
                    .into(),
            );
        }
        None
    }

    /// QUIESCE_DEV, then wait for the queues to end. The wait has no limit:
    /// after a QUIESCE_DEV that timed out the kernel goes on holding every new
    /// request until the server's commands are gone, so a limit would turn a
    /// slow handover into a device that serves nothing; the queues end as soon
    /// as the requests in flight do. On success the device is left to the
    /// kernel when `self` is dropped.
    pub fn quiesce_for_handover(&mut self) -> Result<Vec<QueueReport>, DeviceError> {
        self.ctrl.quiesce_dev(self.info.dev_id, 0)?;
        self.keep_on_drop = true;
        self.stopped = true;
        self.stop()
    }

    /// Serve the device again from this process after
    /// [`Device::quiesce_for_handover`]: START_USER_RECOVERY once the kernel has
    /// seen /dev/ublkcN closed, arm every queue, END_USER_RECOVERY. The
    /// requests held meanwhile then reach `stack`.
    pub fn resume<T: TopLayer>(
        &mut self,
        config: &DeviceConfig,
        stack: Arc<T>,
    ) -> Result<(), DeviceError> {
        start_recovery_when_quiesced(&mut self.ctrl, &self.info, Duration::from_secs(30))?;
        self.start_queues(config, stack)?;
        self.ctrl
            .end_user_recovery(self.info.dev_id, std::process::id() as i32)?;
        self.keep_on_drop = false;
        self.stopped = false;
        Ok(())
    }
}

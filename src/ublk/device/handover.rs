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
        refusal(self.ctrl.features(), self.info.flags)
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

/// Why a device created with `flags` on a kernel offering `features` cannot
/// be handed over, if it cannot.
fn refusal(features: u64, flags: u64) -> Option<String> {
    if features & sys::UBLK_F_QUIESCE == 0 {
        return Some(format!(
            "the kernel's ublk driver cannot quiesce a device (no UBLK_F_QUIESCE in its features {features:#x}; {QUIESCE_SINCE} or later is needed)"
        ));
    }
    if flags & sys::UBLK_F_USER_RECOVERY == 0 {
        return Some(
            "the device was created without user recovery, so the kernel would remove it when this daemon lets go"
                .into(),
        );
    }
    if flags & sys::UBLK_F_QUIESCE == 0 {
        return Some(
            "the device was created without UBLK_F_QUIESCE (by a daemon that did not ask for it); it can be handed over after its next `down` and `up`"
                .into(),
        );
    }
    if flags & sys::UBLK_F_BATCH_IO != 0 {
        // The driver's QUIESCE_DEV cancels a batch queue by failing every
        // request that arrives until a new daemon has armed the queue again
        // (it sets the queue's force_abort), so mounted file systems would
        // see write errors.
        return Some(format!(
            "the device uses batch I/O (UBLK_F_BATCH_IO), and the kernel fails a batch device's new requests while it is quiesced; it can be handed over after a `down` and an `up` with {}=off",
            crate::ublk::batch::choose::ENV
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_7_3: u64 = 0x1f_ffff;
    const RECOVERY: u64 = sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE;

    #[test]
    fn a_recoverable_quiescable_per_tag_device_can_be_handed_over() {
        assert_eq!(refusal(LINUX_7_3, RECOVERY | sys::UBLK_F_QUIESCE), None);
    }

    #[test]
    fn each_missing_piece_is_named() {
        let why = refusal(0x1fe, RECOVERY).unwrap();
        assert!(why.contains("Linux 6.16 or later"), "{why}");
        let why = refusal(LINUX_7_3, sys::UBLK_F_QUIESCE).unwrap();
        assert!(why.contains("without user recovery"), "{why}");
        let why = refusal(LINUX_7_3, RECOVERY).unwrap();
        assert!(why.contains("without UBLK_F_QUIESCE"), "{why}");
    }

    #[test]
    fn a_batch_device_is_refused_naming_the_way_out() {
        let flags = RECOVERY | sys::UBLK_F_QUIESCE | sys::UBLK_F_BATCH_IO;
        let why = refusal(LINUX_7_3, flags).unwrap();
        assert!(why.contains("UBLK_F_BATCH_IO"), "{why}");
        assert!(why.contains("UBLK_STACK_BATCH_IO=off"), "{why}");
    }
}

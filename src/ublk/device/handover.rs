//! Handing a running device to another process (`ublk-stack upgrade`).
//!
//! Per-tag devices: QUIESCE_DEV makes the kernel hold new requests and abort
//! this daemon's idle FETCH commands; the queues finish and commit the
//! requests they were serving, then end, and closing /dev/ublkcN leaves the
//! device QUIESCED: /dev/ublkbN stays, its I/O waits, and a new process takes
//! it over as after a crash ([`Device::recover`]). If the handover cannot go
//! on, [`Device::resume`] takes the device back in this process the same way.
//!
//! Batch devices (UBLK_F_BATCH_IO) are not quiesced: the driver's QUIESCE_DEV
//! cancels a batch queue with `force_abort`, which fails every request that
//! arrives until a new daemon has prepared the queue again. They are drained
//! instead, and then let go as a crash lets go, which the driver answers by
//! requeueing only:
//! 1. each queue's drain eventfd is written: the queue starts no request from
//!    then on, finishes and commits those it serves, and ends;
//! 2. its ring closes with the FETCHes still armed: io_uring cancels them
//!    through the driver's batch cancel function, which marks the device
//!    `canceling` (new requests are requeued and held) but, unlike
//!    QUIESCE_DEV, does not set `force_abort`;
//! 3. the last queue's close of /dev/ublkcN runs the driver's release work:
//!    requests handed to this daemon but never started (owned by the server,
//!    or still in the queue's tag FIFO) go through `__ublk_fail_req`, which
//!    requeues them when the device has USER_RECOVERY and
//!    USER_RECOVERY_REISSUE and fails them with EIO otherwise; the device
//!    becomes QUIESCED, as after kill -9.
//!
//! Nothing is in the stack after step 1, so the write-back flush that
//! follows sees every write this daemon completed.

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::io;

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
        if self.info.flags & sys::UBLK_F_BATCH_IO != 0 {
            self.signal_drain()?;
        } else {
            self.ctrl.quiesce_dev(self.info.dev_id, 0)?;
        }
        self.keep_on_drop = true;
        self.stopped = true;
        self.stop()
    }

    /// Step 1 of the module doc, for every batch queue.
    fn signal_drain(&self) -> Result<(), DeviceError> {
        if self.drains.len() != usize::from(self.info.nr_hw_queues) {
            return Err(DeviceError::HandoverNotBegun(
                "a batch queue has no drain signal".into(),
            ));
        }
        for (queue, drain) in self.drains.iter().enumerate() {
            if let Err(e) = drain.write(1).map_err(io::Error::from) {
                let e = DeviceError::Queue(queue as u16, e);
                // Before the first queue drains nothing has changed.
                return Err(if queue == 0 {
                    DeviceError::HandoverNotBegun(e.to_string())
                } else {
                    e
                });
            }
        }
        Ok(())
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

/// An eventfd for a batch queue's drain signal.
pub(super) fn drain_eventfd() -> io::Result<EventFd> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(io::Error::from)
}

/// Why a device created with `flags` on a kernel offering `features` cannot
/// be handed over, if it cannot.
fn refusal(features: u64, flags: u64) -> Option<String> {
    if flags & sys::UBLK_F_BATCH_IO != 0 {
        return batch_refusal(flags);
    }
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
    None
}

/// A batch device is drained, not quiesced (module doc): the requests the
/// kernel hands out meanwhile must be requeued, which takes REISSUE.
fn batch_refusal(flags: u64) -> Option<String> {
    if flags & sys::UBLK_F_USER_RECOVERY == 0 {
        return Some(
            "the device was created without user recovery, so the kernel would remove it when this daemon lets go"
                .into(),
        );
    }
    if flags & sys::UBLK_F_USER_RECOVERY_REISSUE == 0 {
        return Some(
            "the batch device was created without UBLK_F_USER_RECOVERY_REISSUE, so the kernel would fail the requests it hands out while the queues drain"
                .into(),
        );
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
    fn a_recoverable_batch_device_can_be_handed_over_without_quiesce() {
        let flags = RECOVERY | sys::UBLK_F_BATCH_IO;
        assert_eq!(refusal(LINUX_7_3, flags), None);
        assert_eq!(refusal(LINUX_7_3, flags | sys::UBLK_F_QUIESCE), None);
    }

    #[test]
    fn a_batch_device_without_reissue_is_refused() {
        let flags = sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_BATCH_IO;
        let why = refusal(LINUX_7_3, flags).unwrap();
        assert!(why.contains("UBLK_F_USER_RECOVERY_REISSUE"), "{why}");
        let why = refusal(LINUX_7_3, sys::UBLK_F_BATCH_IO).unwrap();
        assert!(why.contains("without user recovery"), "{why}");
    }
}

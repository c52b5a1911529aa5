//! `down` without `--force`: stop the device only when nobody uses it.
//!
//! Where the kernel offers UBLK_F_SAFE_STOP_DEV (7.3), TRY_STOP_DEV decides:
//! under the disk's open lock it refuses with EBUSY while /dev/ublkbN has an
//! opener, and otherwise stops the device and refuses every later open, so
//! nothing can slip in between the check and the stop. Older kernels get
//! the check of `openers` and then STOP_DEV: a process opening the device in
//! between loses its I/O, as with `down --force`.

use super::{Device, DeviceError};
use crate::ublk::{openers, sys};

impl Device {
    /// Stop the device (as [`Device::stop`] does before joining the queues)
    /// unless its block device is open; then leave it serving and say who
    /// uses it ([`DeviceError::InUse`]).
    pub fn stop_if_unused(&mut self) -> Result<(), DeviceError> {
        if self.stopped {
            return Ok(());
        }
        let path = self.block_path();
        let dev_id = self.info.dev_id;
        if self.ctrl.features() & sys::UBLK_F_SAFE_STOP_DEV != 0 {
            if self.ctrl.try_stop_dev(dev_id)? {
                self.stopped = true;
                return Ok(());
            }
            // Refused by the kernel: name the users where they can be seen.
            let users = openers::users(&path).unwrap_or_default();
            return Err(DeviceError::InUse(path, users));
        }
        let users = openers::users(&path).map_err(|e| DeviceError::CharDevice(path.clone(), e))?;
        if !users.is_empty() {
            return Err(DeviceError::InUse(path, users));
        }
        self.ctrl.stop_dev(dev_id)?;
        self.stopped = true;
        Ok(())
    }
}

//! `down` without `--force`: stop the device only when nobody uses it.
//!
//! Where the kernel offers UBLK_F_SAFE_STOP_DEV (7.3), TRY_STOP_DEV decides:
//! under the disk's open lock it refuses with EBUSY while /dev/ublkbN has an
//! opener, and otherwise stops the device and refuses every later open, so
//! nothing can slip in between the check and the stop. Older kernels get
//! the check of `openers` and then STOP_DEV: a process opening the device in
//! between loses its I/O, as with `down --force`.
//!
//! Either way a device found in use is looked at again a few times over a
//! third of a second before the answer is no: a short-lived opener (udev's
//! probe after a write, `blkid`) should not make `down` fail.

use std::time::Duration;

use super::{Device, DeviceError};
use crate::ublk::{openers, sys};

/// Looks before a device is called in use, and the pause between them.
const LOOKS: u32 = 4;
const PAUSE: Duration = Duration::from_millis(100);

impl Device {
    /// Stop the device (as [`Device::stop`] does before joining the queues)
    /// unless its block device is open; then leave it serving and say who
    /// uses it ([`DeviceError::InUse`]).
    pub fn stop_if_unused(&mut self) -> Result<(), DeviceError> {
        let mut look = 1;
        loop {
            match self.stop_if_unused_now() {
                Err(DeviceError::InUse(..)) if look < LOOKS => {
                    look += 1;
                    std::thread::sleep(PAUSE);
                }
                other => return other,
            }
        }
    }

    fn stop_if_unused_now(&mut self) -> Result<(), DeviceError> {
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

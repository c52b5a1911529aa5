//! The ublk feature bits by name, and which of them this daemon asks for and
//! uses. Decoding is pure, so `features`, `status` and the tests share it.

use super::sys;
use super::zero_copy::DataPath;

/// Every feature bit of Linux 7.3's `ublk_cmd.h`, lowest first, without the
/// `UBLK_F_` prefix.
pub const NAMES: [(u64, &str); 20] = [
    (sys::UBLK_F_SUPPORT_ZERO_COPY, "SUPPORT_ZERO_COPY"),
    (sys::UBLK_F_URING_CMD_COMP_IN_TASK, "URING_CMD_COMP_IN_TASK"),
    (sys::UBLK_F_NEED_GET_DATA, "NEED_GET_DATA"),
    (sys::UBLK_F_USER_RECOVERY, "USER_RECOVERY"),
    (sys::UBLK_F_USER_RECOVERY_REISSUE, "USER_RECOVERY_REISSUE"),
    (sys::UBLK_F_UNPRIVILEGED_DEV, "UNPRIVILEGED_DEV"),
    (sys::UBLK_F_CMD_IOCTL_ENCODE, "CMD_IOCTL_ENCODE"),
    (sys::UBLK_F_USER_COPY, "USER_COPY"),
    (sys::UBLK_F_ZONED, "ZONED"),
    (sys::UBLK_F_USER_RECOVERY_FAIL_IO, "USER_RECOVERY_FAIL_IO"),
    (sys::UBLK_F_UPDATE_SIZE, "UPDATE_SIZE"),
    (sys::UBLK_F_AUTO_BUF_REG, "AUTO_BUF_REG"),
    (sys::UBLK_F_QUIESCE, "QUIESCE"),
    (sys::UBLK_F_PER_IO_DAEMON, "PER_IO_DAEMON"),
    (sys::UBLK_F_BUF_REG_OFF_DAEMON, "BUF_REG_OFF_DAEMON"),
    (sys::UBLK_F_BATCH_IO, "BATCH_IO"),
    (sys::UBLK_F_INTEGRITY, "INTEGRITY"),
    (sys::UBLK_F_SAFE_STOP_DEV, "SAFE_STOP_DEV"),
    (sys::UBLK_F_NO_AUTO_PART_SCAN, "NO_AUTO_PART_SCAN"),
    (sys::UBLK_F_SHMEM_ZC, "SHMEM_ZC"),
];

/// How request data moves between the kernel and the daemon on a device using
/// the flags `in_use`: `copy` (the kernel copies it to and from each tag's
/// buffer in the daemon's memory) or `zero-copy` (the leaves read and write
/// the request's own pages; see `zero_copy`).
pub fn data_path(in_use: u64) -> &'static str {
    DataPath::of_flags(in_use).name()
}

/// Every bit this build knows a name for.
const KNOWN: u64 = {
    let mut mask = 0;
    let mut i = 0;
    while i < NAMES.len() {
        mask |= NAMES[i].0;
        i += 1;
    }
    mask
};

/// The flags ADD_DEV may ask for: what this daemon knows how to serve.
const ASKED: u64 = sys::UBLK_F_CMD_IOCTL_ENCODE
    | sys::UBLK_F_SUPPORT_ZERO_COPY
    | sys::UBLK_F_AUTO_BUF_REG
    // Beside AUTO_BUF_REG only, for small requests (`user_copy`).
    | sys::UBLK_F_USER_COPY
    | sys::UBLK_F_USER_RECOVERY
    | sys::UBLK_F_USER_RECOVERY_REISSUE
    | sys::UBLK_F_QUIESCE
    | sys::UBLK_F_NO_AUTO_PART_SCAN
    | sys::UBLK_F_BATCH_IO;

/// The names of the known bits set in `mask`, lowest bit first.
pub fn names(mask: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|&(_, name)| name)
        .collect()
}

/// Bits set in `mask` that this build has no name for (a newer kernel).
pub fn unknown_bits(mask: u64) -> Vec<u32> {
    (0..64)
        .filter(|bit| mask & !KNOWN & (1 << bit) != 0)
        .collect()
}

/// The flags for ADD_DEV on a kernel that offers `offered`: never a bit it
/// did not offer. The zero-copy flag, which depends on the stack, is added by
/// the caller (`zero_copy::choose` picks only offered bits). Recovery is asked for only with REISSUE (see `device`) and
/// when the stack allows it (`recovery`); the ioctl encoding and skipping the
/// partition scan (a device built from a TOML file carries no partition
/// table that the kernel should act on) whenever offered.
pub fn add_dev_flags(offered: u64, recovery: bool) -> u64 {
    let recovery_pair = sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE;
    let mut flags = offered & (sys::UBLK_F_CMD_IOCTL_ENCODE | sys::UBLK_F_NO_AUTO_PART_SCAN);
    if recovery && offered & recovery_pair == recovery_pair {
        // QUIESCE (which the kernel grants only with recovery) lets `upgrade`
        // hand the device to a new daemon.
        flags |= recovery_pair | (offered & sys::UBLK_F_QUIESCE);
    }
    flags
}

/// What the daemon uses on a device whose ADD_DEV granted `granted`, on a
/// kernel offering `offered`: the asked-for flags the kernel kept, and
/// SAFE_STOP_DEV, through which `down` stops only an unused device.
pub fn in_use(granted: u64, offered: u64) -> u64 {
    (granted & ASKED) | (offered & sys::UBLK_F_SAFE_STOP_DEV)
}

/// `0x1fe`.
pub fn hex(mask: u64) -> String {
    format!("{mask:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian's 6.12 cloud kernel answers to GET_FEATURES.
    const LINUX_6_12: u64 = 0x1fe;

    #[test]
    fn bits_are_named_as_in_the_header() {
        // Spot checks against include/uapi/linux/ublk_cmd.h of 7.3.
        assert_eq!(NAMES[0], (1, "SUPPORT_ZERO_COPY"));
        assert_eq!(NAMES[6], (1 << 6, "CMD_IOCTL_ENCODE"));
        assert_eq!(NAMES[17], (1 << 17, "SAFE_STOP_DEV"));
        assert_eq!(NAMES[18], (1 << 18, "NO_AUTO_PART_SCAN"));
        assert_eq!(NAMES[19], (1 << 19, "SHMEM_ZC"));
        for (index, (bit, _)) in NAMES.iter().enumerate() {
            assert_eq!(*bit, 1 << index, "{index}");
        }
    }

    #[test]
    fn a_6_12_mask_decodes_to_its_names() {
        assert_eq!(
            names(LINUX_6_12),
            [
                "URING_CMD_COMP_IN_TASK",
                "NEED_GET_DATA",
                "USER_RECOVERY",
                "USER_RECOVERY_REISSUE",
                "UNPRIVILEGED_DEV",
                "CMD_IOCTL_ENCODE",
                "USER_COPY",
                "ZONED"
            ]
        );
        assert!(unknown_bits(LINUX_6_12).is_empty());
    }

    #[test]
    fn bits_newer_than_this_build_are_reported_by_number() {
        let mask = 0x1f_ffff;
        assert_eq!(names(mask).len(), 20);
        assert_eq!(unknown_bits(mask), [20]);
        assert_eq!(unknown_bits(1 << 63 | 1), [63]);
        assert_eq!(hex(mask), "0x1fffff");
    }

    #[test]
    fn add_dev_never_asks_for_a_bit_not_offered() {
        for offered in [
            0,
            LINUX_6_12,
            0x1f_ffff,
            u64::MAX,
            sys::UBLK_F_USER_RECOVERY,
        ] {
            for recovery in [false, true] {
                let flags = add_dev_flags(offered, recovery);
                assert_eq!(flags & !offered, 0, "{offered:#x} {recovery}");
            }
        }
        // Recovery only as the pair, and only when the stack allows it.
        assert_eq!(add_dev_flags(sys::UBLK_F_USER_RECOVERY, true), 0);
        assert_eq!(
            names(add_dev_flags(LINUX_6_12, true)),
            ["USER_RECOVERY", "USER_RECOVERY_REISSUE", "CMD_IOCTL_ENCODE"]
        );
        assert_eq!(
            names(add_dev_flags(LINUX_6_12, false)),
            ["CMD_IOCTL_ENCODE"]
        );
        assert_eq!(
            names(add_dev_flags(0x1f_ffff, false)),
            ["CMD_IOCTL_ENCODE", "NO_AUTO_PART_SCAN"]
        );
        // QUIESCE comes with recovery, where offered (7.3, not 6.12).
        assert_eq!(
            names(add_dev_flags(0x1f_ffff, true)),
            [
                "USER_RECOVERY",
                "USER_RECOVERY_REISSUE",
                "CMD_IOCTL_ENCODE",
                "QUIESCE",
                "NO_AUTO_PART_SCAN"
            ]
        );
    }

    #[test]
    fn in_use_is_what_was_granted_and_safe_stop_where_offered() {
        // The kernel adds flags of its own to a device (COMP_IN_TASK,
        // PER_IO_DAEMON, SAFE_STOP_DEV); only what the daemon uses is listed.
        let granted = add_dev_flags(0x1f_ffff, true)
            | sys::UBLK_F_URING_CMD_COMP_IN_TASK
            | sys::UBLK_F_PER_IO_DAEMON;
        assert_eq!(
            names(in_use(granted, 0x1f_ffff)),
            [
                "USER_RECOVERY",
                "USER_RECOVERY_REISSUE",
                "CMD_IOCTL_ENCODE",
                "QUIESCE",
                "SAFE_STOP_DEV",
                "NO_AUTO_PART_SCAN"
            ]
        );
        let zero_copy = granted | sys::UBLK_F_AUTO_BUF_REG;
        assert!(names(in_use(zero_copy, 0x1f_ffff)).contains(&"AUTO_BUF_REG"));
        assert_eq!(data_path(in_use(zero_copy, 0x1f_ffff)), "zero-copy");
        assert_eq!(data_path(in_use(granted, 0x1f_ffff)), "copy");
        let granted = add_dev_flags(LINUX_6_12, true);
        assert!(!names(in_use(granted, LINUX_6_12)).contains(&"SAFE_STOP_DEV"));
        assert!(!names(in_use(granted, LINUX_6_12)).contains(&"NO_AUTO_PART_SCAN"));
    }
}

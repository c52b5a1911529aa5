//! Zero copy: the leaves read and write the request's own pages, which the
//! kernel registers in the queue ring's fixed-buffer table, instead of the
//! kernel copying each request to and from a buffer in the daemon.
//!
//! Two ways to get the buffer registered, chosen per device at `up`:
//! - UBLK_F_AUTO_BUF_REG (Linux 6.16+): FETCH and COMMIT_AND_FETCH carry a
//!   `ublk_auto_buf_reg` in the SQE's `addr` (index = tag; the command's own
//!   `addr` stays 0), and the kernel registers the
//!   request buffer at that index before it delivers the request and
//!   unregisters it when the request is committed. With
//!   UBLK_AUTO_BUF_REG_FALLBACK a failed registration still delivers the
//!   request, flagged UBLK_IO_F_NEED_REG_BUF, and the queue registers it itself
//!   (which needs UBLK_F_SUPPORT_ZERO_COPY as well, so both are asked for).
//! - UBLK_F_SUPPORT_ZERO_COPY alone (Linux 6.15): the queue sends
//!   UBLK_U_IO_REGISTER_IO_BUF before the request's leaf I/O and
//!   UBLK_U_IO_UNREGISTER_IO_BUF after it, both on the same ring.
//!
//! Only stacks whose layers move request bytes without looking at them can
//! take a kernel buffer: `file` and `disk` leaves under `raid0`, `mirror` and
//! `fault`. A `memory` or `null` leaf reads and writes bytes in the daemon, and
//! `checksum`, `crypt`, `compress` and `cache` transform or keep them, so those
//! stacks stay in copy mode (see `queue.rs` for why copy rather than
//! USER_COPY). `UBLK_STACK_ZERO_COPY` overrides the choice (`off` forces copy
//! mode; `on` and `explicit` make a kernel or stack that cannot do it an error;
//! `user-copy` asks for USER_COPY alone, on any stack).
//! A buffered tmpfs or ramfs file, which io_uring cannot read inline, keeps
//! copy mode under `auto`, unless it is the whole stack: then zero copy (the
//! queue registering each buffer) serves its large requests and USER_COPY its
//! small ones (`user_copy.rs`); on a kernel without zero copy (6.12),
//! USER_COPY serves them all, one copy between the request and the mapped
//! file where copy mode makes two.

use super::sys;

const fn io_cmd_iowr(nr: u32) -> u32 {
    // _IOWR('u', nr, struct ublksrv_io_cmd), as in sys.rs.
    (3 << 30) | ((std::mem::size_of::<sys::IoCmd>() as u32) << 16) | ((b'u' as u32) << 8) | nr
}

/// Register the request buffer of (q_id, tag) at fixed-buffer index `addr`.
pub const UBLK_U_IO_REGISTER_IO_BUF: u32 = io_cmd_iowr(0x23);
/// Undo UBLK_U_IO_REGISTER_IO_BUF (same q_id, tag and index).
pub const UBLK_U_IO_UNREGISTER_IO_BUF: u32 = io_cmd_iowr(0x24);
/// In a descriptor's flags: auto registration failed, register it yourself.
pub const UBLK_IO_F_NEED_REG_BUF: u32 = 1 << 17;
/// In `ublk_auto_buf_reg.flags`: on a failed registration, deliver the request
/// flagged UBLK_IO_F_NEED_REG_BUF instead of failing it.
pub const UBLK_AUTO_BUF_REG_FALLBACK: u8 = 1 << 0;

/// `struct ublk_auto_buf_reg`, which travels packed in the command's `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoBufReg {
    pub index: u16,
    pub flags: u8,
    pub reserved0: u8,
    pub reserved1: u32,
}
const _: () = assert!(std::mem::size_of::<AutoBufReg>() == 8);
const _: () = assert!(std::mem::offset_of!(AutoBufReg, flags) == 2);
const _: () = assert!(std::mem::offset_of!(AutoBufReg, reserved1) == 4);

impl AutoBufReg {
    /// The value of the command's `addr` (index in bits 0-15, flags 16-23).
    pub fn to_addr(self) -> u64 {
        u64::from(self.index)
            | u64::from(self.flags) << 16
            | u64::from(self.reserved0) << 24
            | u64::from(self.reserved1) << 32
    }
}

/// For tests of the fallback path: `UBLK_STACK_TEST_AUTO_REG_MISS=N` gives
/// every Nth tag (tags 0, N, 2N...) an automatic-registration index one past
/// the queue ring's sparse buffer table, so the kernel's registration of
/// their requests fails (io_uring refuses an index beyond the table) and,
/// with UBLK_AUTO_BUF_REG_FALLBACK, it delivers them flagged
/// UBLK_IO_F_NEED_REG_BUF for the queue to register at the tag's own index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoRegMiss {
    /// 0: off.
    every: u16,
    /// The table's size: one entry per tag.
    depth: u16,
}

impl AutoRegMiss {
    pub const ENV: &'static str = "UBLK_STACK_TEST_AUTO_REG_MISS";

    /// From the environment, for a queue of `depth` tags.
    pub fn from_env(depth: u16) -> Result<AutoRegMiss, String> {
        Self::parse(std::env::var(Self::ENV).ok().as_deref(), depth)
    }

    fn parse(value: Option<&str>, depth: u16) -> Result<AutoRegMiss, String> {
        let every = match value {
            None | Some("") => 0,
            Some(text) => text.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("{}={text:?}: expected a number from 1 to 65535", Self::ENV)
            })?,
        };
        Ok(AutoRegMiss { every, depth })
    }

    pub fn is_on(self) -> bool {
        self.every > 0
    }

    /// The table index where the kernel should register `tag`'s request.
    pub fn index(self, tag: u16) -> u16 {
        if self.every > 0 && tag % self.every == 0 {
            self.depth
        } else {
            tag
        }
    }
}

/// How request data moves between the kernel and the daemon on one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPath {
    /// The kernel copies to and from a buffer per tag in the daemon.
    Copy,
    /// Zero copy, the kernel registering each request's buffer itself.
    AutoRegister,
    /// Zero copy, the queue registering each request's buffer.
    ExplicitRegister,
    /// UBLK_F_USER_COPY alone: the kernel copies nothing, and the queue
    /// reads and writes every request's data through /dev/ublkcN
    /// (`user_copy`), straight to or from a mapped tmpfs file where it can.
    UserCopy,
}

impl DataPath {
    /// The data path of a device created with `flags`.
    pub fn of_flags(flags: u64) -> DataPath {
        if flags & sys::UBLK_F_AUTO_BUF_REG != 0 {
            DataPath::AutoRegister
        } else if flags & sys::UBLK_F_SUPPORT_ZERO_COPY != 0 {
            DataPath::ExplicitRegister
        } else if flags & sys::UBLK_F_USER_COPY != 0 {
            // Beside zero copy USER_COPY serves only small requests, and the
            // data path is zero copy (above).
            DataPath::UserCopy
        } else {
            DataPath::Copy
        }
    }

    /// The ADD_DEV flag that asks for it.
    pub fn flag(self) -> u64 {
        match self {
            DataPath::Copy => 0,
            // With SUPPORT_ZERO_COPY too, which the queue's own registration
            // needs when the kernel's fails (UBLK_IO_F_NEED_REG_BUF).
            DataPath::AutoRegister => sys::UBLK_F_AUTO_BUF_REG | sys::UBLK_F_SUPPORT_ZERO_COPY,
            DataPath::ExplicitRegister => sys::UBLK_F_SUPPORT_ZERO_COPY,
            DataPath::UserCopy => sys::UBLK_F_USER_COPY,
        }
    }

    pub fn is_zero_copy(self) -> bool {
        matches!(self, DataPath::AutoRegister | DataPath::ExplicitRegister)
    }

    /// As `status` and `features` say it.
    pub fn name(self) -> &'static str {
        match self {
            DataPath::Copy => "copy",
            DataPath::AutoRegister | DataPath::ExplicitRegister => "zero-copy",
            DataPath::UserCopy => "user-copy",
        }
    }
}

/// What `UBLK_STACK_ZERO_COPY` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Unset or `auto`: zero copy where the kernel and the stack allow it.
    Auto,
    /// `off`: copy mode.
    Off,
    /// `on`: zero copy, or an error saying why not.
    On,
    /// `explicit`: zero copy with the queue registering each buffer, even
    /// where the kernel offers automatic registration.
    Explicit,
    /// `user-copy`: USER_COPY for every request, or an error saying why not.
    UserCopy,
}

pub const ENV: &str = "UBLK_STACK_ZERO_COPY";

impl Wanted {
    pub fn parse(value: Option<&str>) -> Result<Wanted, String> {
        match value {
            None | Some("") | Some("auto") => Ok(Wanted::Auto),
            Some("off") => Ok(Wanted::Off),
            Some("on") => Ok(Wanted::On),
            Some("explicit") => Ok(Wanted::Explicit),
            Some("user-copy") => Ok(Wanted::UserCopy),
            Some(other) => Err(format!(
                "{ENV}={other:?}: expected auto, off, on, explicit or user-copy"
            )),
        }
    }

    pub fn from_env() -> Result<Wanted, String> {
        Wanted::parse(std::env::var(ENV).ok().as_deref())
    }
}

/// Layer types that only pass request bytes between the request and files or
/// disks, so that the request's kernel buffer can stand for them.
pub const PASS_THROUGH: [&str; 5] = ["file", "disk", "raid0", "mirror", "fault"];

/// The first of `types` (a stack's layer types) that needs the request's bytes
/// in the daemon, if any.
pub fn blocker<'a>(types: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    types.into_iter().find(|t| !PASS_THROUGH.contains(t))
}

/// What `auto` asks for where the stack holds a buffered tmpfs or ramfs file,
/// on a kernel offering `offered`; `small_by_user_copy`: that file is the
/// whole stack and its small requests may go by USER_COPY (`user_copy`).
/// Zero copy with the queue registering the buffers (the kernel's automatic
/// registration would cost every small request too), or USER_COPY alone
/// where there is no zero copy (one copy through the file's mapping, where
/// copy mode makes two); otherwise copy mode, as zero copy would hand each
/// request to an io_uring worker.
pub fn for_memory_file(offered: u64, small_by_user_copy: bool) -> Wanted {
    if !small_by_user_copy {
        Wanted::Off
    } else if offered & sys::UBLK_F_SUPPORT_ZERO_COPY != 0 {
        Wanted::Explicit
    } else {
        Wanted::UserCopy
    }
}

/// The data path for a new device, on a kernel offering `offered`, for a stack
/// whose first layer type that needs its bytes in the daemon is `blocker`.
pub fn choose(offered: u64, blocker: Option<&str>, wanted: Wanted) -> Result<DataPath, String> {
    let auto = offered & sys::UBLK_F_AUTO_BUF_REG != 0;
    let explicit = offered & sys::UBLK_F_SUPPORT_ZERO_COPY != 0;
    let refuse_stack = |layer: &str| {
        format!(
            "{ENV} asks for zero copy, but the stack has a `{layer}` layer, which needs the request's bytes in the daemon (zero copy serves only file and disk leaves under raid0, mirror and fault)"
        )
    };
    match wanted {
        Wanted::Off => Ok(DataPath::Copy),
        Wanted::Auto => Ok(match blocker {
            Some(_) => DataPath::Copy,
            None if auto => DataPath::AutoRegister,
            None if explicit => DataPath::ExplicitRegister,
            None => DataPath::Copy,
        }),
        Wanted::On => match blocker {
            Some(layer) => Err(refuse_stack(layer)),
            None if auto => Ok(DataPath::AutoRegister),
            None if explicit => Ok(DataPath::ExplicitRegister),
            None => Err(format!(
                "{ENV}=on: this kernel's ublk driver has no zero copy (it needs UBLK_F_SUPPORT_ZERO_COPY, Linux 6.15 or later, or UBLK_F_AUTO_BUF_REG, Linux 6.16 or later; it offers {offered:#x})"
            )),
        },
        Wanted::Explicit => match blocker {
            Some(layer) => Err(refuse_stack(layer)),
            None if explicit => Ok(DataPath::ExplicitRegister),
            None => Err(format!(
                "{ENV}=explicit: this kernel's ublk driver cannot register request buffers on request (it needs UBLK_F_SUPPORT_ZERO_COPY, Linux 6.15 or later; it offers {offered:#x})"
            )),
        },
        // Any stack: the queue copies each request into or out of its own
        // buffer when the top cannot take it straight from the mapped file.
        Wanted::UserCopy if offered & sys::UBLK_F_USER_COPY != 0 => Ok(DataPath::UserCopy),
        Wanted::UserCopy => Err(format!(
            "{ENV}=user-copy: this kernel's ublk driver has no user copy (it needs UBLK_F_USER_COPY, Linux 6.5 or later; it offers {offered:#x})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_6_12: u64 = 0x1fe;
    const LINUX_7_3: u64 = 0x1f_ffff;

    #[test]
    fn auto_reg_miss_sends_every_nth_tag_past_the_table() {
        let off = AutoRegMiss::parse(None, 32).unwrap();
        assert!(!off.is_on());
        assert_eq!(off.index(0), 0);
        let miss = AutoRegMiss::parse(Some("4"), 32).unwrap();
        assert_eq!(
            (0..9).map(|t| miss.index(t)).collect::<Vec<_>>(),
            [32, 1, 2, 3, 32, 5, 6, 7, 32]
        );
        for bad in ["0", "-1", "x", "70000"] {
            let why = AutoRegMiss::parse(Some(bad), 32).unwrap_err();
            assert!(why.contains("UBLK_STACK_TEST_AUTO_REG_MISS"), "{why}");
        }
    }
    const LINUX_6_15: u64 = 0x3ff | sys::UBLK_F_SUPPORT_ZERO_COPY;

    #[test]
    fn buffer_commands_match_the_header_encoding() {
        // _IOWR('u', 0x23, struct ublksrv_io_cmd) and 0x24, as in ublk_cmd.h.
        assert_eq!(UBLK_U_IO_REGISTER_IO_BUF, 0xc010_7523);
        assert_eq!(UBLK_U_IO_UNREGISTER_IO_BUF, 0xc010_7524);
        assert_eq!(UBLK_IO_F_NEED_REG_BUF, 0x20000);
    }

    #[test]
    fn auto_buf_reg_packs_into_addr_as_the_header_says() {
        let reg = AutoBufReg {
            index: 0x1234,
            flags: UBLK_AUTO_BUF_REG_FALLBACK,
            ..AutoBufReg::default()
        };
        assert_eq!(reg.to_addr(), 0x1_1234);
        let all = AutoBufReg {
            index: 0xffff,
            flags: 0xab,
            reserved0: 0xcd,
            reserved1: 0x0102_0304,
        };
        assert_eq!(all.to_addr(), 0x0102_0304_cdab_ffff);
    }

    #[test]
    fn only_pass_through_stacks_get_zero_copy() {
        assert_eq!(blocker(["mirror", "file", "file"]), None);
        assert_eq!(blocker(["fault", "raid0", "disk", "file"]), None);
        assert_eq!(blocker(["checksum", "file"]), Some("checksum"));
        assert_eq!(blocker(["mirror", "file", "memory"]), Some("memory"));
        for layer in ["null", "crypt", "compress", "cache", "nbd"] {
            assert_eq!(blocker(["raid0", layer]), Some(layer));
        }
    }

    #[test]
    fn a_memory_file_alone_takes_user_copy_beside_or_instead_of_zero_copy() {
        assert_eq!(for_memory_file(LINUX_7_3, true), Wanted::Explicit);
        assert_eq!(for_memory_file(LINUX_6_12, true), Wanted::UserCopy);
        assert_eq!(for_memory_file(LINUX_7_3, false), Wanted::Off);
        assert_eq!(for_memory_file(LINUX_6_12, false), Wanted::Off);
    }

    #[test]
    fn the_kernel_and_the_stack_decide_unless_told_otherwise() {
        let auto = Wanted::Auto;
        assert_eq!(choose(LINUX_7_3, None, auto), Ok(DataPath::AutoRegister));
        assert_eq!(
            choose(LINUX_6_15, None, auto),
            Ok(DataPath::ExplicitRegister)
        );
        // 6.12 has neither bit 0 nor bit 11: copy mode, and no error.
        assert_eq!(choose(LINUX_6_12, None, auto), Ok(DataPath::Copy));
        assert_eq!(choose(LINUX_7_3, Some("crypt"), auto), Ok(DataPath::Copy));
        assert_eq!(choose(LINUX_7_3, None, Wanted::Off), Ok(DataPath::Copy));
        assert_eq!(
            choose(LINUX_7_3, None, Wanted::Explicit),
            Ok(DataPath::ExplicitRegister)
        );
        let err = choose(LINUX_6_12, None, Wanted::On).unwrap_err();
        assert!(err.contains("Linux 6.15") && err.contains("0x1fe"), "{err}");
        let err = choose(LINUX_6_12, None, Wanted::Explicit).unwrap_err();
        assert!(err.contains("Linux 6.15"), "{err}");
        let err = choose(LINUX_7_3, Some("checksum"), Wanted::On).unwrap_err();
        assert!(err.contains("`checksum`"), "{err}");
        // User copy suits any stack, on a kernel that has it.
        for kernel in [LINUX_6_12, LINUX_7_3] {
            assert_eq!(
                choose(kernel, Some("checksum"), Wanted::UserCopy),
                Ok(DataPath::UserCopy)
            );
        }
        let err = choose(0x7e, None, Wanted::UserCopy).unwrap_err();
        assert!(err.contains("Linux 6.5") && err.contains("0x7e"), "{err}");
    }

    #[test]
    fn the_data_path_follows_the_device_flags() {
        let no_user_copy = LINUX_6_12 & !sys::UBLK_F_USER_COPY;
        for path in [
            DataPath::Copy,
            DataPath::AutoRegister,
            DataPath::ExplicitRegister,
            DataPath::UserCopy,
        ] {
            assert_eq!(DataPath::of_flags(path.flag() | no_user_copy), path);
        }
        // A zero-copy device with USER_COPY for its small requests.
        assert_eq!(
            DataPath::of_flags(sys::UBLK_F_SUPPORT_ZERO_COPY | sys::UBLK_F_USER_COPY),
            DataPath::ExplicitRegister
        );
        assert!(!DataPath::UserCopy.is_zero_copy());
        assert_eq!(DataPath::Copy.name(), "copy");
        assert_eq!(DataPath::AutoRegister.name(), "zero-copy");
        assert_eq!(DataPath::UserCopy.name(), "user-copy");
        assert_eq!(Wanted::parse(Some("user-copy")), Ok(Wanted::UserCopy));
        assert_eq!(
            Wanted::parse(Some("sometimes")).unwrap_err(),
            "UBLK_STACK_ZERO_COPY=\"sometimes\": expected auto, off, on, explicit or user-copy"
        );
    }
}

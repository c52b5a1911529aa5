//! The kernel interface of ublk, as in `include/uapi/linux/ublk_cmd.h` of Linux 6.12,
//! with the feature bits and control commands of 7.3 that this daemon names or uses.
//!
//! Every struct is `#[repr(C)]` and its size and field offsets are checked at
//! compile time against the header, so a mistake here fails the build instead of
//! corrupting a command. Only what this daemon uses is spelled out.

/// Builds an ioctl number the way `_IOC()` does (asm-generic layout, as on x86-64).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const fn ior(nr: u32, size: usize) -> u32 {
    ioc(IOC_READ, nr, size)
}
const fn iowr(nr: u32, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, size)
}

// Legacy (plain number) control opcodes; kernels without UBLK_F_CMD_IOCTL_ENCODE
// (before 6.4) only understand these.
pub const UBLK_CMD_GET_QUEUE_AFFINITY: u32 = 0x01;
pub const UBLK_CMD_GET_DEV_INFO: u32 = 0x02;
pub const UBLK_CMD_ADD_DEV: u32 = 0x04;
pub const UBLK_CMD_DEL_DEV: u32 = 0x05;
pub const UBLK_CMD_START_DEV: u32 = 0x06;
pub const UBLK_CMD_STOP_DEV: u32 = 0x07;
pub const UBLK_CMD_SET_PARAMS: u32 = 0x08;
pub const UBLK_CMD_GET_PARAMS: u32 = 0x09;
pub const UBLK_CMD_START_USER_RECOVERY: u32 = 0x10;
pub const UBLK_CMD_END_USER_RECOVERY: u32 = 0x11;
pub const UBLK_CMD_GET_FEATURES: u32 = 0x13;

const CTRL_CMD_SIZE: usize = std::mem::size_of::<CtrlCmd>();
pub const UBLK_U_CMD_GET_QUEUE_AFFINITY: u32 = ior(UBLK_CMD_GET_QUEUE_AFFINITY, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_GET_DEV_INFO: u32 = ior(UBLK_CMD_GET_DEV_INFO, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_ADD_DEV: u32 = iowr(UBLK_CMD_ADD_DEV, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_DEL_DEV: u32 = iowr(UBLK_CMD_DEL_DEV, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_START_DEV: u32 = iowr(UBLK_CMD_START_DEV, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_STOP_DEV: u32 = iowr(UBLK_CMD_STOP_DEV, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_SET_PARAMS: u32 = iowr(UBLK_CMD_SET_PARAMS, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_GET_PARAMS: u32 = ior(UBLK_CMD_GET_PARAMS, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_GET_FEATURES: u32 = ior(UBLK_CMD_GET_FEATURES, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_START_USER_RECOVERY: u32 = iowr(UBLK_CMD_START_USER_RECOVERY, CTRL_CMD_SIZE);
pub const UBLK_U_CMD_END_USER_RECOVERY: u32 = iowr(UBLK_CMD_END_USER_RECOVERY, CTRL_CMD_SIZE);
// Newer commands exist only ioctl-encoded (no plain number).
/// DEL_DEV without waiting for the device's last user to let go (6.9+; no
/// feature bit: an older kernel answers EOPNOTSUPP).
pub const UBLK_U_CMD_DEL_DEV_ASYNC: u32 = ior(0x14, CTRL_CMD_SIZE);
/// STOP_DEV only when the block device has no opener, else EBUSY; new opens
/// fail from then on (UBLK_F_SAFE_STOP_DEV).
pub const UBLK_U_CMD_TRY_STOP_DEV: u32 = iowr(0x17, CTRL_CMD_SIZE);
/// Set the device's capacity to `data[0]` 512-byte sectors and tell the block
/// layer (UBLK_F_UPDATE_SIZE, Linux 6.14+).
pub const UBLK_U_CMD_UPDATE_SIZE: u32 = iowr(0x15, CTRL_CMD_SIZE);
/// Hold new requests, wait until every queue has an idle tag, then abort the
/// server's FETCH commands (UBLK_F_QUIESCE, Linux 6.16+); `data[0]` is the wait
/// in ms, 0 for no limit.
pub const UBLK_U_CMD_QUIESCE_DEV: u32 = iowr(0x16, CTRL_CMD_SIZE);

// I/O commands on /dev/ublkcN.
pub const UBLK_IO_FETCH_REQ: u32 = 0x20;
pub const UBLK_IO_COMMIT_AND_FETCH_REQ: u32 = 0x21;
const IO_CMD_SIZE: usize = std::mem::size_of::<IoCmd>();
pub const UBLK_U_IO_FETCH_REQ: u32 = iowr(UBLK_IO_FETCH_REQ, IO_CMD_SIZE);
pub const UBLK_U_IO_COMMIT_AND_FETCH_REQ: u32 = iowr(UBLK_IO_COMMIT_AND_FETCH_REQ, IO_CMD_SIZE);

/// FETCH / COMMIT results: a request is ready in the tag's descriptor.
pub const UBLK_IO_RES_OK: i32 = 0;
/// Only with UBLK_F_NEED_GET_DATA, which this daemon never asks for.
pub const UBLK_IO_RES_NEED_GET_DATA: i32 = 1;
/// The device is stopping: the command will not be re-armed.
pub const UBLK_IO_RES_ABORT: i32 = -libc::ENODEV;

/// Offset of queue `q`'s descriptor array in the char device's mmap space: each
/// queue gets room for the largest possible depth.
pub const UBLKSRV_CMD_BUF_OFFSET: u64 = 0;
pub const UBLK_MAX_QUEUE_DEPTH: usize = 4096;
pub const UBLK_FEATURES_LEN: u16 = 8;

// Device feature flags (ublksrv_ctrl_dev_info.flags and GET_FEATURES).
pub const UBLK_F_SUPPORT_ZERO_COPY: u64 = 1 << 0;
pub const UBLK_F_URING_CMD_COMP_IN_TASK: u64 = 1 << 1;
pub const UBLK_F_NEED_GET_DATA: u64 = 1 << 2;
pub const UBLK_F_USER_RECOVERY: u64 = 1 << 3;
pub const UBLK_F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
pub const UBLK_F_UNPRIVILEGED_DEV: u64 = 1 << 5;
pub const UBLK_F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
pub const UBLK_F_USER_COPY: u64 = 1 << 7;
pub const UBLK_F_ZONED: u64 = 1 << 8;
pub const UBLK_F_USER_RECOVERY_FAIL_IO: u64 = 1 << 9;
pub const UBLK_F_UPDATE_SIZE: u64 = 1 << 10;
pub const UBLK_F_AUTO_BUF_REG: u64 = 1 << 11;
pub const UBLK_F_QUIESCE: u64 = 1 << 12;
pub const UBLK_F_PER_IO_DAEMON: u64 = 1 << 13;
pub const UBLK_F_BUF_REG_OFF_DAEMON: u64 = 1 << 14;
pub const UBLK_F_BATCH_IO: u64 = 1 << 15;
pub const UBLK_F_INTEGRITY: u64 = 1 << 16;
/// The kernel offers UBLK_U_CMD_TRY_STOP_DEV (set by the kernel itself on
/// every device; never asked for in ADD_DEV).
pub const UBLK_F_SAFE_STOP_DEV: u64 = 1 << 17;
/// START_DEV does not scan the new disk for partitions.
pub const UBLK_F_NO_AUTO_PART_SCAN: u64 = 1 << 18;
pub const UBLK_F_SHMEM_ZC: u64 = 1 << 19;

// Device states.
pub const UBLK_S_DEV_DEAD: u16 = 0;
pub const UBLK_S_DEV_LIVE: u16 = 1;
pub const UBLK_S_DEV_QUIESCED: u16 = 2;

// Operations in ublksrv_io_desc.op_flags (bits 0-7) and flags (bits 8-31).
pub const UBLK_IO_OP_READ: u8 = 0;
pub const UBLK_IO_OP_WRITE: u8 = 1;
pub const UBLK_IO_OP_FLUSH: u8 = 2;
pub const UBLK_IO_OP_DISCARD: u8 = 3;
pub const UBLK_IO_OP_WRITE_SAME: u8 = 4;
pub const UBLK_IO_OP_WRITE_ZEROES: u8 = 5;
pub const UBLK_IO_F_FUA: u32 = 1 << 13;
pub const UBLK_IO_F_NOUNMAP: u32 = 1 << 15;

// ublk_param_basic.attrs
pub const UBLK_ATTR_READ_ONLY: u32 = 1 << 0;
pub const UBLK_ATTR_ROTATIONAL: u32 = 1 << 1;
pub const UBLK_ATTR_VOLATILE_CACHE: u32 = 1 << 2;
pub const UBLK_ATTR_FUA: u32 = 1 << 3;

// ublk_params.types
pub const UBLK_PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const UBLK_PARAM_TYPE_DISCARD: u32 = 1 << 1;
pub const UBLK_PARAM_TYPE_DEVT: u32 = 1 << 2;
pub const UBLK_PARAM_TYPE_ZONED: u32 = 1 << 3;
/// Linux 6.14+; older drivers drop the type (and the bytes past their
/// `struct ublk_params`) from SET_PARAMS without an error.
pub const UBLK_PARAM_TYPE_DMA_ALIGN: u32 = 1 << 4;

/// `struct ublksrv_ctrl_cmd`: the payload of a control command, carried inline in
/// the 80-byte command area of an SQE128.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlCmd {
    /// Target device; `u32::MAX` in ADD_DEV lets the kernel pick.
    pub dev_id: u32,
    /// `u16::MAX` unless the command is about one queue.
    pub queue_id: u16,
    /// Length of the buffer at `addr`.
    pub len: u16,
    pub addr: u64,
    /// Inline argument (START_DEV: server pid; GET_QUEUE_AFFINITY: queue).
    pub data: [u64; 1],
    pub dev_path_len: u16,
    pub pad: u16,
    pub reserved: u32,
}
const _: () = assert!(std::mem::size_of::<CtrlCmd>() == 32);
const _: () = assert!(std::mem::offset_of!(CtrlCmd, queue_id) == 4);
const _: () = assert!(std::mem::offset_of!(CtrlCmd, len) == 6);
const _: () = assert!(std::mem::offset_of!(CtrlCmd, addr) == 8);
const _: () = assert!(std::mem::offset_of!(CtrlCmd, data) == 16);
const _: () = assert!(std::mem::offset_of!(CtrlCmd, dev_path_len) == 24);
const _: () = assert!(std::mem::offset_of!(CtrlCmd, reserved) == 28);

impl CtrlCmd {
    /// The command as the 80 bytes of an SQE128's command area (little-endian,
    /// fields at their C offsets, the rest zero).
    pub fn to_sqe_cmd(&self) -> [u8; 80] {
        let mut out = [0u8; 80];
        out[0..4].copy_from_slice(&self.dev_id.to_ne_bytes());
        out[4..6].copy_from_slice(&self.queue_id.to_ne_bytes());
        out[6..8].copy_from_slice(&self.len.to_ne_bytes());
        out[8..16].copy_from_slice(&self.addr.to_ne_bytes());
        out[16..24].copy_from_slice(&self.data[0].to_ne_bytes());
        out[24..26].copy_from_slice(&self.dev_path_len.to_ne_bytes());
        out[26..28].copy_from_slice(&self.pad.to_ne_bytes());
        out[28..32].copy_from_slice(&self.reserved.to_ne_bytes());
        out
    }
}

/// `struct ublksrv_ctrl_dev_info`: what ADD_DEV asks for and GET_DEV_INFO returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevInfo {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub state: u16,
    pub pad0: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    pub ublksrv_pid: i32,
    pub pad1: u32,
    pub flags: u64,
    /// Private to the server; the kernel stores and returns it untouched. This
    /// daemon marks its devices here (see `ctrl::DAEMON_MARK`).
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub reserved1: u64,
    pub reserved2: u64,
}
const _: () = assert!(std::mem::size_of::<DevInfo>() == 64);
const _: () = assert!(std::mem::offset_of!(DevInfo, max_io_buf_bytes) == 8);
const _: () = assert!(std::mem::offset_of!(DevInfo, dev_id) == 12);
const _: () = assert!(std::mem::offset_of!(DevInfo, ublksrv_pid) == 16);
const _: () = assert!(std::mem::offset_of!(DevInfo, flags) == 24);
const _: () = assert!(std::mem::offset_of!(DevInfo, ublksrv_flags) == 32);
const _: () = assert!(std::mem::offset_of!(DevInfo, owner_uid) == 40);
const _: () = assert!(std::mem::offset_of!(DevInfo, reserved1) == 48);

/// `struct ublksrv_io_desc`: one request, written by the kernel into the queue's
/// shared (read-only for us) descriptor array at index `tag`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoDesc {
    /// op in bits 0-7, UBLK_IO_F_* flags in bits 8-31.
    pub op_flags: u32,
    /// Length in 512-byte sectors (nr_zones for REPORT_ZONES).
    pub nr_sectors: u32,
    pub start_sector: u64,
    /// The buffer address this tag was armed with.
    pub addr: u64,
}
const _: () = assert!(std::mem::size_of::<IoDesc>() == 24);
const _: () = assert!(std::mem::offset_of!(IoDesc, nr_sectors) == 4);
const _: () = assert!(std::mem::offset_of!(IoDesc, start_sector) == 8);
const _: () = assert!(std::mem::offset_of!(IoDesc, addr) == 16);

impl IoDesc {
    pub fn op(&self) -> u8 {
        (self.op_flags & 0xff) as u8
    }

    /// Whether a UBLK_IO_F_* flag (given at its position in `op_flags`) is set.
    pub fn has_flag(&self, flag: u32) -> bool {
        self.op_flags & flag != 0
    }
}

/// `struct ublksrv_io_cmd`: FETCH / COMMIT_AND_FETCH, inline in a 64-byte SQE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCmd {
    pub q_id: u16,
    pub tag: u16,
    /// COMMIT: bytes done or a negative errno.
    pub result: i32,
    /// The tag's buffer in copy mode (zone_append_lba shares this slot).
    pub addr: u64,
}
const _: () = assert!(std::mem::size_of::<IoCmd>() == 16);
const _: () = assert!(std::mem::offset_of!(IoCmd, tag) == 2);
const _: () = assert!(std::mem::offset_of!(IoCmd, result) == 4);
const _: () = assert!(std::mem::offset_of!(IoCmd, addr) == 8);

impl IoCmd {
    pub fn to_sqe_cmd(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..2].copy_from_slice(&self.q_id.to_ne_bytes());
        out[2..4].copy_from_slice(&self.tag.to_ne_bytes());
        out[4..8].copy_from_slice(&self.result.to_ne_bytes());
        out[8..16].copy_from_slice(&self.addr.to_ne_bytes());
        out
    }
}

/// `struct ublk_param_basic`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamBasic {
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    /// Largest request, in sectors; at most max_io_buf_bytes / 512.
    pub max_sectors: u32,
    pub chunk_sectors: u32,
    pub dev_sectors: u64,
    pub virt_boundary_mask: u64,
}
const _: () = assert!(std::mem::size_of::<ParamBasic>() == 32);
const _: () = assert!(std::mem::offset_of!(ParamBasic, max_sectors) == 8);
const _: () = assert!(std::mem::offset_of!(ParamBasic, dev_sectors) == 16);
const _: () = assert!(std::mem::offset_of!(ParamBasic, virt_boundary_mask) == 24);

/// `struct ublk_param_discard` (also carries the write-zeroes limit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamDiscard {
    pub discard_alignment: u32,
    pub discard_granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_discard_segments: u16,
    pub reserved0: u16,
}
const _: () = assert!(std::mem::size_of::<ParamDiscard>() == 20);
const _: () = assert!(std::mem::offset_of!(ParamDiscard, max_write_zeroes_sectors) == 12);
const _: () = assert!(std::mem::offset_of!(ParamDiscard, max_discard_segments) == 16);

/// `struct ublk_param_devt` (read-only: filled by GET_PARAMS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamDevt {
    pub char_major: u32,
    pub char_minor: u32,
    pub disk_major: u32,
    pub disk_minor: u32,
}
const _: () = assert!(std::mem::size_of::<ParamDevt>() == 16);

/// `struct ublk_param_zoned` (unused: this daemon serves no zoned devices).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamZoned {
    pub max_open_zones: u32,
    pub max_active_zones: u32,
    pub max_zone_append_sectors: u32,
    pub reserved: [u8; 20],
}
const _: () = assert!(std::mem::size_of::<ParamZoned>() == 32);

/// `struct ublk_param_dma_align`: the memory alignment of request buffers,
/// as a mask (a power of two minus one, below the page size).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamDmaAlign {
    pub alignment: u32,
    pub pad: [u8; 4],
}
const _: () = assert!(std::mem::size_of::<ParamDmaAlign>() == 8);

/// `struct ublk_params`: SET_PARAMS / GET_PARAMS, up to `dma` (the segment
/// and integrity blocks after it are not used).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// Size of this struct as the server knows it.
    pub len: u32,
    /// UBLK_PARAM_TYPE_* present.
    pub types: u32,
    pub basic: ParamBasic,
    pub discard: ParamDiscard,
    pub devt: ParamDevt,
    pub zoned: ParamZoned,
    pub dma: ParamDmaAlign,
}
// 116 bytes of fields, padded to the 8-byte alignment of `basic`; the
// header's next block (`seg`, with a __u64) starts at 120 too.
const _: () = assert!(std::mem::size_of::<Params>() == 120);
const _: () = assert!(std::mem::offset_of!(Params, basic) == 8);
const _: () = assert!(std::mem::offset_of!(Params, discard) == 40);
const _: () = assert!(std::mem::offset_of!(Params, devt) == 60);
const _: () = assert!(std::mem::offset_of!(Params, zoned) == 76);
const _: () = assert!(std::mem::offset_of!(Params, dma) == 108);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_opcodes_match_the_header_encoding() {
        // _IOWR('u', 0x20, struct ublksrv_io_cmd) and _IOR('u', 0x13, ctrl_cmd).
        assert_eq!(UBLK_U_IO_FETCH_REQ, 0xc010_7520);
        assert_eq!(UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc010_7521);
        assert_eq!(UBLK_U_CMD_UPDATE_SIZE, 0xc020_7515);
        assert_eq!(UBLK_U_CMD_GET_FEATURES, 0x8020_7513);
        assert_eq!(UBLK_U_CMD_ADD_DEV, 0xc020_7504);
        assert_eq!(UBLK_U_CMD_START_USER_RECOVERY, 0xc020_7510);
        assert_eq!(UBLK_U_CMD_END_USER_RECOVERY, 0xc020_7511);
        // _IOR('u', 0x14, ctrl_cmd) and _IOWR('u', 0x17, ctrl_cmd).
        assert_eq!(UBLK_U_CMD_DEL_DEV_ASYNC, 0x8020_7514);
        assert_eq!(UBLK_U_CMD_TRY_STOP_DEV, 0xc020_7517);
        assert_eq!(UBLK_U_CMD_QUIESCE_DEV, 0xc020_7516);
    }

    #[test]
    fn ctrl_cmd_bytes_sit_at_c_offsets() {
        let cmd = CtrlCmd {
            dev_id: 7,
            queue_id: u16::MAX,
            len: 64,
            addr: 0x1122_3344_5566_7788,
            data: [42],
            ..CtrlCmd::default()
        };
        let bytes = cmd.to_sqe_cmd();
        assert_eq!(&bytes[0..4], &7u32.to_ne_bytes());
        assert_eq!(&bytes[4..6], &[0xff, 0xff]);
        assert_eq!(&bytes[8..16], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&bytes[16..24], &42u64.to_ne_bytes());
        assert!(bytes[32..].iter().all(|&b| b == 0));
    }

    #[test]
    fn io_desc_splits_op_and_flags() {
        let desc = IoDesc {
            op_flags: u32::from(UBLK_IO_OP_WRITE) | UBLK_IO_F_FUA,
            ..IoDesc::default()
        };
        assert_eq!(desc.op(), UBLK_IO_OP_WRITE);
        assert!(desc.has_flag(UBLK_IO_F_FUA));
        assert!(!desc.has_flag(UBLK_IO_F_NOUNMAP));
    }
}

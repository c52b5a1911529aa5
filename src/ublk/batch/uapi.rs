//! The batch I/O interface of ublk (UBLK_F_BATCH_IO), as in
//! `include/uapi/linux/ublk_cmd.h` of Linux 7.3, and the encodings this
//! daemon reads and writes: the element arrays of PREP_IO_CMDS and
//! COMMIT_IO_CMDS, and the tags FETCH_IO_CMDS writes into a provided buffer.
//!
//! Every struct is `#[repr(C)]` with its size and offsets checked at compile
//! time against the header.

use crate::ublk::zero_copy::AutoRegMiss;

/// `_IOWR('u', nr, struct ublk_batch_io)`.
const fn batch_iowr(nr: u32) -> u32 {
    (3 << 30) | ((std::mem::size_of::<BatchIo>() as u32) << 16) | ((b'u' as u32) << 8) | nr
}

/// Hand the kernel every tag of a queue at once (with its buffer address in
/// copy mode, or its fixed-buffer index with AUTO_BUF_REG). Answers 0 or a
/// negative errno; on an error no tag is prepared.
pub const UBLK_U_IO_PREP_IO_CMDS: u32 = batch_iowr(0x25);
/// Complete many requests in one command. Answers how many bytes of the
/// element array the kernel handled (elements past them are not committed),
/// or a negative errno when it handled none.
pub const UBLK_U_IO_COMMIT_IO_CMDS: u32 = batch_iowr(0x26);
/// Multishot: each CQE says how many bytes of 2-byte tags the kernel wrote
/// into the command's provided buffer; each tag names a request ready in the
/// queue's descriptor array.
pub const UBLK_U_IO_FETCH_IO_CMDS: u32 = batch_iowr(0x27);

/// `ublk_batch_io.flags`: each element carries a zone-append LBA (zoned only).
pub const UBLK_BATCH_F_HAS_ZONE_LBA: u16 = 1 << 0;
/// Each element carries the tag's buffer address (copy mode, which needs it).
pub const UBLK_BATCH_F_HAS_BUF_ADDR: u16 = 1 << 1;
/// With AUTO_BUF_REG: a failed registration delivers the request flagged
/// UBLK_IO_F_NEED_REG_BUF instead of failing it.
pub const UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK: u16 = 1 << 2;

/// `struct ublk_batch_io`: the 16-byte payload of the three batch commands.
/// PREP and COMMIT find their element array at the SQE's `addr` (`len`
/// bytes); FETCH names a provided-buffer group in the SQE's `buf_group`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchIo {
    pub q_id: u16,
    pub flags: u16,
    pub nr_elem: u16,
    /// Bytes per element: 8, plus 8 with HAS_BUF_ADDR (and 8 with HAS_ZONE_LBA);
    /// 2 for FETCH (one tag).
    pub elem_bytes: u8,
    pub reserved: u8,
    pub reserved2: u64,
}
const _: () = assert!(std::mem::size_of::<BatchIo>() == 16);
const _: () = assert!(std::mem::offset_of!(BatchIo, flags) == 2);
const _: () = assert!(std::mem::offset_of!(BatchIo, nr_elem) == 4);
const _: () = assert!(std::mem::offset_of!(BatchIo, elem_bytes) == 6);
const _: () = assert!(std::mem::offset_of!(BatchIo, reserved) == 7);
const _: () = assert!(std::mem::offset_of!(BatchIo, reserved2) == 8);

impl BatchIo {
    pub fn to_sqe_cmd(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..2].copy_from_slice(&self.q_id.to_ne_bytes());
        out[2..4].copy_from_slice(&self.flags.to_ne_bytes());
        out[4..6].copy_from_slice(&self.nr_elem.to_ne_bytes());
        out[6] = self.elem_bytes;
        out[7] = self.reserved;
        out[8..16].copy_from_slice(&self.reserved2.to_ne_bytes());
        out
    }
}

/// `struct ublk_elem_header`: the first 8 bytes of every PREP / COMMIT
/// element; with HAS_BUF_ADDR the tag's buffer address follows as a u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElemHeader {
    pub tag: u16,
    /// The fixed-buffer index for AUTO_BUF_REG (ignored otherwise).
    pub buf_index: u16,
    /// COMMIT: bytes done or a negative errno.
    pub result: i32,
}
const _: () = assert!(std::mem::size_of::<ElemHeader>() == 8);
const _: () = assert!(std::mem::offset_of!(ElemHeader, buf_index) == 2);
const _: () = assert!(std::mem::offset_of!(ElemHeader, result) == 4);

/// `struct io_uring_buf`: one entry of a provided-buffer ring. In the ring's
/// first entry `resv` is the ring's tail, written by the application.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingBuf {
    pub addr: u64,
    pub len: u32,
    pub bid: u16,
    pub resv: u16,
}
const _: () = assert!(std::mem::size_of::<RingBuf>() == 16);
const _: () = assert!(std::mem::offset_of!(RingBuf, len) == 8);
const _: () = assert!(std::mem::offset_of!(RingBuf, bid) == 12);
const _: () = assert!(std::mem::offset_of!(RingBuf, resv) == 14);

/// How a device's PREP and COMMIT elements look, from its data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElemFormat {
    /// `ublk_batch_io.flags`.
    pub flags: u16,
    /// Copy mode: each element carries its tag's buffer address.
    pub with_addr: bool,
    /// AUTO_BUF_REG: each element names the table index (the tag) where the
    /// kernel registers the tag's next request.
    pub with_index: bool,
    /// Test only: tags given an index past the table (`AutoRegMiss`).
    pub miss: AutoRegMiss,
}

impl ElemFormat {
    /// For a device in copy mode (`copy`), or zero copy with the kernel
    /// registering buffers (`auto_register`), or zero copy with the queue
    /// registering them (neither).
    pub fn new(copy: bool, auto_register: bool) -> ElemFormat {
        if copy {
            ElemFormat {
                flags: UBLK_BATCH_F_HAS_BUF_ADDR,
                with_addr: true,
                with_index: false,
                miss: AutoRegMiss::default(),
            }
        } else if auto_register {
            ElemFormat {
                flags: UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK,
                with_addr: false,
                with_index: true,
                miss: AutoRegMiss::default(),
            }
        } else {
            ElemFormat {
                flags: 0,
                with_addr: false,
                with_index: false,
                miss: AutoRegMiss::default(),
            }
        }
    }

    /// With `miss` applied to the table indexes (AUTO_BUF_REG only).
    pub fn with_miss(self, miss: AutoRegMiss) -> ElemFormat {
        ElemFormat { miss, ..self }
    }

    pub fn elem_bytes(self) -> usize {
        std::mem::size_of::<ElemHeader>() + if self.with_addr { 8 } else { 0 }
    }

    /// Append one element for `tag` with `result` (0 for PREP) and, in copy
    /// mode, the tag's buffer at `addr`.
    pub fn push(self, out: &mut Vec<u8>, tag: u16, result: i32, addr: u64) {
        let header = ElemHeader {
            tag,
            buf_index: if self.with_index {
                self.miss.index(tag)
            } else {
                0
            },
            result,
        };
        out.extend_from_slice(&header.tag.to_ne_bytes());
        out.extend_from_slice(&header.buf_index.to_ne_bytes());
        out.extend_from_slice(&header.result.to_ne_bytes());
        if self.with_addr {
            out.extend_from_slice(&addr.to_ne_bytes());
        }
    }

    /// The tag of the element at `index` in `elems` (for reporting a refused one).
    pub fn tag_at(self, elems: &[u8], index: usize) -> Option<u16> {
        let at = index * self.elem_bytes();
        elems
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    }
}

/// The tags in `bytes`, as FETCH_IO_CMDS wrote them (native-endian u16s). A
/// trailing odd byte, which the kernel never writes, is ignored.
pub fn decode_tags(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|pair| u16::from_ne_bytes([pair[0], pair[1]]))
}

/// The PREP / COMMIT header for `nr_elem` elements of `format` on queue `q_id`.
pub fn header(q_id: u16, format: ElemFormat, nr_elem: u16) -> BatchIo {
    BatchIo {
        q_id,
        flags: format.flags,
        nr_elem,
        elem_bytes: format.elem_bytes() as u8,
        ..BatchIo::default()
    }
}

/// The FETCH header: elements are single tags, no flags.
pub fn fetch_header(q_id: u16, nr_elem: u16) -> BatchIo {
    BatchIo {
        q_id,
        flags: 0,
        nr_elem,
        elem_bytes: 2,
        ..BatchIo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_commands_match_the_header_encoding() {
        // _IOWR('u', 0x25..0x27, struct ublk_batch_io), 16 bytes.
        assert_eq!(UBLK_U_IO_PREP_IO_CMDS, 0xc010_7525);
        assert_eq!(UBLK_U_IO_COMMIT_IO_CMDS, 0xc010_7526);
        assert_eq!(UBLK_U_IO_FETCH_IO_CMDS, 0xc010_7527);
        assert_eq!(UBLK_BATCH_F_HAS_BUF_ADDR, 2);
        assert_eq!(UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK, 4);
    }

    #[test]
    fn header_bytes_sit_at_c_offsets() {
        let cmd = header(3, ElemFormat::new(true, false), 0x0102).to_sqe_cmd();
        assert_eq!(&cmd[0..2], &3u16.to_ne_bytes());
        assert_eq!(&cmd[2..4], &UBLK_BATCH_F_HAS_BUF_ADDR.to_ne_bytes());
        assert_eq!(&cmd[4..6], &0x0102u16.to_ne_bytes());
        assert_eq!(cmd[6], 16);
        assert_eq!(&cmd[7..16], &[0u8; 9]);
        let fetch = fetch_header(1, 64).to_sqe_cmd();
        assert_eq!(fetch[6], 2);
        assert_eq!(&fetch[2..4], &[0, 0]);
    }

    #[test]
    fn copy_mode_elements_carry_the_buffer_address() {
        let format = ElemFormat::new(true, false);
        assert_eq!(format.elem_bytes(), 16);
        let mut out = Vec::new();
        format.push(&mut out, 7, -5, 0x1122_3344_5566_7788);
        format.push(&mut out, 9, 4096, 0x10_0000);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[0..2], &7u16.to_ne_bytes());
        assert_eq!(&out[2..4], &[0, 0]);
        assert_eq!(&out[4..8], &(-5i32).to_ne_bytes());
        assert_eq!(&out[8..16], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&out[16..18], &9u16.to_ne_bytes());
        assert_eq!(&out[20..24], &4096i32.to_ne_bytes());
        assert_eq!(format.tag_at(&out, 1), Some(9));
        assert_eq!(format.tag_at(&out, 2), None);
    }

    #[test]
    fn zero_copy_elements_are_headers_only() {
        let auto = ElemFormat::new(false, true);
        assert_eq!(auto.flags, UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK);
        let mut out = Vec::new();
        auto.push(&mut out, 5, 512, 0xdead);
        // The table index is the tag; no address follows.
        assert_eq!(out.len(), 8);
        assert_eq!(&out[2..4], &5u16.to_ne_bytes());
        let explicit = ElemFormat::new(false, false);
        assert_eq!(explicit.flags, 0);
        let mut out = Vec::new();
        explicit.push(&mut out, 5, 0, 0xdead);
        assert_eq!(&out[2..4], &[0, 0]);
        assert_eq!(header(0, explicit, 1).elem_bytes, 8);
    }

    #[test]
    fn tags_decode_from_the_fetch_buffer() {
        let mut bytes = Vec::new();
        for tag in [0u16, 31, 4095, 2] {
            bytes.extend_from_slice(&tag.to_ne_bytes());
        }
        assert_eq!(decode_tags(&bytes).collect::<Vec<_>>(), [0, 31, 4095, 2]);
        assert_eq!(decode_tags(&bytes[..3]).collect::<Vec<_>>(), [0]);
        assert_eq!(decode_tags(&[]).count(), 0);
    }
}

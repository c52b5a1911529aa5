//! User copy (UBLK_F_USER_COPY) beside zero copy, for the small requests of a
//! device whose top is a buffered `file` on tmpfs or ramfs.
//!
//! Such a file is read and written with `pread`/`pwrite` on the queue thread:
//! io_uring cannot do it inline and hands every ring operation on it to a
//! worker thread. Zero copy has to go through the ring (the request's pages
//! are only reachable as a registered buffer), so it pays that hand-off on
//! every request. For a large request the hand-off is small next to the
//! copies zero copy saves; for a 4 KiB one it costs more than they do, and it
//! triples the latency at queue depth 1 (benches/vm/README.md, "tmpfs: zero
//! copy for large requests, user copy for small ones").
//!
//! So such a device asks for USER_COPY as well as zero copy, and the queue
//! may then also read and write a request's pages through /dev/ublkcN. A
//! request of at most [`Max::DEFAULT`] bytes (or `UBLK_STACK_USER_COPY_MAX`)
//! is copied straight between the request's pages and the file's, where the
//! leaf has them mapped (`layers::file_map`): a WRITE by one `pread` of the
//! char device into the mapping, a READ of pages known to hold data by one
//! `pwrite` of the char device from it. Otherwise it goes through the tag's
//! own buffer: a WRITE's data is read from the char device, then written to
//! the file; a READ (of a hole, say) is read from the file, then written to
//! the char device. Larger
//! ones use the registered buffer, one copy in the kernel (or, on a kernel
//! without zero copy, go by user copy too: [`Max::ALL`]). `auto` registers
//! those buffers from the queue (SUPPORT_ZERO_COPY), not by AUTO_BUF_REG,
//! whose registration of every request's buffer the small ones would pay
//! for too: measured, 4 KiB random reads ran 6% faster so.

use std::io;
use std::os::fd::RawFd;

/// Requests up to this many bytes, reads and writes alike, go by user
/// copy; larger ones by zero copy. 0: none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Max(pub u64);

impl Max {
    /// Measured on 7.3 (benches/vm/README.md): a write lands in the file's
    /// mapped pages, and a read of pages holding data comes from them, in one
    /// system call, faster than zero copy up to 8 KiB at QD32 (each zero-copy
    /// request waits for an io_uring worker; larger ones gain more from the
    /// copy done on another CPU).
    pub const DEFAULT: Max = Max(8 << 10);
    /// Every request: USER_COPY without zero copy.
    pub const ALL: Max = Max(u64::MAX);

    pub fn is_on(self) -> bool {
        self.0 > 0
    }

    /// Whether a request of `len` bytes goes by user copy.
    pub fn takes(self, len: u64) -> bool {
        len <= self.0
    }
}

/// Overrides [`Max::DEFAULT`] (a size; 0 turns user copy off).
pub const ENV: &str = "UBLK_STACK_USER_COPY_MAX";

// ublk_cmd.h: the char device offset of a request's data.
const UBLKSRV_IO_BUF_OFFSET: u64 = 0x8000_0000;
const UBLK_IO_BUF_BITS: u32 = 25;
const UBLK_TAG_OFF: u32 = UBLK_IO_BUF_BITS;
const UBLK_TAG_BITS: u32 = 16;
const UBLK_QID_OFF: u32 = UBLK_TAG_OFF + UBLK_TAG_BITS;

/// Where request (q_id, tag)'s data starts on /dev/ublkcN.
pub fn offset(q_id: u16, tag: u16) -> u64 {
    UBLKSRV_IO_BUF_OFFSET + (u64::from(q_id) << UBLK_QID_OFF) + (u64::from(tag) << UBLK_TAG_OFF)
}

/// A WRITE's data, from the request's pages into `buf`.
pub fn copy_in(char_fd: RawFd, q_id: u16, tag: u16, buf: &mut [u8]) -> io::Result<()> {
    // SAFETY: `buf` is valid for writes of its length.
    unsafe { copy_in_at(char_fd, q_id, tag, buf.as_mut_ptr(), buf.len()) }.map_err(short_request)
}

/// A WRITE's `len` bytes of data, from the request's pages to `dst` (a
/// file's pages mapped into memory, say). The driver stops short where a
/// page of `dst` cannot be faulted in (a full tmpfs, a file truncated
/// behind the mapping) as where the request ends: a copy that makes no
/// progress fails with EFAULT, for the caller to retry another way.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes by the kernel for the call.
pub unsafe fn copy_in_at(
    char_fd: RawFd,
    q_id: u16,
    tag: u16,
    dst: *mut u8,
    len: usize,
) -> io::Result<()> {
    let base = offset(q_id, tag);
    whole(len, |done| {
        // SAFETY: `dst + done .. dst + len` is inside what the caller vouched
        // for; the kernel writes at most `len - done` bytes there.
        unsafe {
            libc::pread(
                char_fd,
                dst.add(done).cast(),
                len - done,
                (base + done as u64) as libc::off_t,
            )
        }
    })
}

/// A READ's data, from `buf` into the request's pages.
pub fn copy_out(char_fd: RawFd, q_id: u16, tag: u16, buf: &[u8]) -> io::Result<()> {
    // SAFETY: `buf` is valid for reads of its length.
    unsafe { copy_out_from(char_fd, q_id, tag, buf.as_ptr(), buf.len()) }.map_err(short_request)
}

/// A READ's `len` bytes of data, from `src` (a file's pages mapped into
/// memory, say) into the request's pages; a copy that makes no progress
/// fails with EFAULT, as in [`copy_in_at`].
///
/// # Safety
/// `src` must be valid for reads of `len` bytes by the kernel for the call.
pub unsafe fn copy_out_from(
    char_fd: RawFd,
    q_id: u16,
    tag: u16,
    src: *const u8,
    len: usize,
) -> io::Result<()> {
    let base = offset(q_id, tag);
    whole(len, |done| {
        // SAFETY: `src + done .. src + len` is inside what the caller vouched
        // for; the kernel reads at most `len - done` bytes there.
        unsafe {
            libc::pwrite(
                char_fd,
                src.add(done).cast(),
                len - done,
                (base + done as u64) as libc::off_t,
            )
        }
    })
}

/// A copy to or from the daemon's own buffer that made no progress (EFAULT
/// from [`whole`]): the buffer is always there, so the request is shorter
/// than its descriptor said.
fn short_request(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::EFAULT) {
        io::Error::from_raw_os_error(libc::EIO)
    } else {
        e
    }
}

/// Call `step(bytes done so far)`, a `pread` or `pwrite`, until `len` bytes
/// are moved; retried on EINTR. A step that moves nothing fails with EFAULT.
fn whole(len: usize, mut step: impl FnMut(usize) -> isize) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        match step(done) {
            n if n > 0 => done += n as usize,
            // The request is shorter than its descriptor said, or our memory
            // could not be faulted in: never pass a partly filled buffer off
            // as its data.
            0 => return Err(io::Error::from_raw_os_error(libc::EFAULT)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_header_layout() {
        // ublk_cmd.h: 0x80000000 + (q_id << 41) + (tag << 25) + byte offset.
        assert_eq!(offset(0, 0), 0x8000_0000);
        assert_eq!(offset(0, 1), 0x8000_0000 + (1 << 25));
        assert_eq!(offset(1, 0), 0x8000_0000 + (1 << 41));
        assert_eq!(offset(3, 7), 0x8000_0000 + (3 << 41) + (7 << 25));
        // A whole 32 MiB of data per tag, the header's 25 bits.
        assert_eq!(offset(0, 1) - offset(0, 0), 1 << UBLK_IO_BUF_BITS);
    }

    #[test]
    fn a_copy_lands_at_its_requests_offset_and_comes_back_whole() {
        // A sparse file stands in for the char device: same offsets.
        let file = tempfile::tempfile().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        copy_out(fd, 1, 2, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        copy_in(fd, 1, 2, &mut back).unwrap();
        assert_eq!(back, data);
        // Another tag's data is elsewhere: nothing was written there.
        let mut other = vec![7u8; 16];
        assert!(
            copy_in(fd, 1, 3, &mut other).is_err(),
            "past the end of file"
        );
        assert_eq!(
            std::os::unix::fs::FileExt::read_at(&file, &mut other, offset(1, 2) - 16).unwrap(),
            16
        );
        assert_eq!(other, [0u8; 16]);
    }

    #[test]
    fn a_short_char_device_read_is_an_error_not_a_partial_buffer() {
        // /dev/null reads as empty: the copy must fail, not stop early.
        let null = std::fs::File::open("/dev/null").unwrap();
        let mut buf = [1u8; 16];
        let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
        let err = copy_in(fd, 0, 0, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        // Into other memory (a mapped file's pages), the caller may retry.
        // SAFETY: `buf` is valid for writes of its length.
        let err = unsafe { copy_in_at(fd, 0, 0, buf.as_mut_ptr(), buf.len()) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    }
}

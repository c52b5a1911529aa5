//! The memory a queue shares with the kernel: the read-only request descriptor
//! array mapped from /dev/ublkcN, and the per-tag data buffers the kernel copies
//! into and out of (copy mode). Also the queue thread's CPU pinning, the other
//! system call a queue makes at start.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use layers::ZeroPrefix;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::{sysconf, Pid, SysconfVar};

use super::sys::{self, IoDesc};

/// The queue's view of its descriptor array, mapped read-only from /dev/ublkcN.
pub(super) struct Descriptors {
    ptr: NonNull<IoDesc>,
    map_bytes: usize,
    depth: u16,
}

impl Descriptors {
    pub(super) fn map(fd: RawFd, queue: u16, depth: u16) -> io::Result<Descriptors> {
        let page = page_size();
        let map_bytes = (usize::from(depth) * std::mem::size_of::<IoDesc>()).next_multiple_of(page);
        // Each queue's array starts where the previous one would end at the largest
        // depth (the kernel's ublk_max_cmd_buf_size()).
        let stride =
            (sys::UBLK_MAX_QUEUE_DEPTH * std::mem::size_of::<IoDesc>()).next_multiple_of(page);
        let offset = sys::UBLKSRV_CMD_BUF_OFFSET + u64::from(queue) * stride as u64;
        // SAFETY: a fresh shared read-only mapping chosen by the kernel (null hint);
        // it aliases no Rust object. The result is checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset as libc::off_t,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(raw.cast::<IoDesc>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Descriptors {
            ptr,
            map_bytes,
            depth,
        })
    }

    /// A copy of tag `tag`'s descriptor. Call only between the tag's FETCH
    /// completion and its COMMIT, while the kernel leaves the entry alone.
    pub(super) fn get(&self, tag: u16) -> IoDesc {
        debug_assert!(tag < self.depth);
        // SAFETY: tag < depth, so the entry lies inside the mapping, which lives as
        // long as `self`; IoDesc is plain old data valid for any bytes, and the
        // mapping is 4096-aligned, so every 24-byte entry is 8-aligned. Volatile,
        // because the kernel writes it behind the compiler's back.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(usize::from(tag))) }
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it
        // survives (`get` returns copies).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_bytes) };
    }
}

/// One page-aligned buffer per tag, in one anonymous mapping (pages are only
/// backed once the kernel or a layer touches them).
pub(super) struct TagBuffers {
    base: NonNull<u8>,
    per_tag: usize,
    map_bytes: usize,
    /// Per tag, the zeros a null leaf left in its buffer (see `lend_buffer`).
    zeros: Vec<ZeroPrefix>,
}

impl TagBuffers {
    pub(super) fn new(depth: u16, per_tag: usize) -> io::Result<TagBuffers> {
        let per_tag = per_tag.next_multiple_of(page_size());
        let map_bytes = per_tag
            .checked_mul(usize::from(depth))
            .ok_or_else(|| io::Error::other("tag buffers overflow"))?;
        // SAFETY: a fresh private anonymous mapping; aliases nothing; checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(raw.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(TagBuffers {
            base,
            per_tag,
            map_bytes,
            zeros: (0..depth).map(|_| ZeroPrefix::new()).collect(),
        })
    }

    /// Bytes per tag (max_io_buf_bytes rounded up to a page).
    pub(super) fn per_tag(&self) -> usize {
        self.per_tag
    }

    pub(super) fn addr(&self, tag: u16) -> *mut u8 {
        debug_assert!((usize::from(tag) + 1) * self.per_tag <= self.map_bytes);
        // SAFETY: tag < depth (checked by callers against the queue depth), so the
        // offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(usize::from(tag) * self.per_tag) }
    }

    /// What is known zero in the tag's buffer.
    pub(super) fn zeros(&self, tag: u16) -> &ZeroPrefix {
        &self.zeros[usize::from(tag)]
    }

    /// Keep the memory mapped forever. Used when the queue stops abnormally and
    /// the kernel might still copy into a tag's buffer.
    pub(super) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for TagBuffers {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`. Reached only after every
        // tag was aborted (the kernel holds no command that names these buffers)
        // and every task that borrowed a buffer has finished.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_bytes) };
    }
}

pub(super) fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    // A CPU past the set's capacity cannot be named: it is left out.
    for &cpu in cpus.iter().filter(|&&cpu| cpu < CpuSet::count()) {
        set.set(cpu)?;
    }
    // Pid 0 is this thread.
    Ok(sched_setaffinity(Pid::from_raw(0), &set)?)
}

fn page_size() -> usize {
    let size = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096);
    usize::try_from(size).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_buffers_are_page_aligned_and_disjoint() {
        let buffers = TagBuffers::new(4, 5000).unwrap();
        assert_eq!(buffers.per_tag(), 8192);
        for tag in 0..4u16 {
            let addr = buffers.addr(tag);
            assert_eq!(addr as usize % 4096, 0);
            // SAFETY: the tag's 8192 bytes are inside the mapping and nothing else
            // refers to them in this test.
            let buf = unsafe { std::slice::from_raw_parts_mut(addr, buffers.per_tag()) };
            assert!(buf.iter().all(|&b| b == 0));
            buf.fill(tag as u8 + 1);
        }
        // SAFETY: as above; the fills above did not overlap.
        let first = unsafe { std::slice::from_raw_parts(buffers.addr(0), buffers.per_tag()) };
        assert!(first.iter().all(|&b| b == 1));
    }
}

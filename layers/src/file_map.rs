//! A `file` leaf on tmpfs or ramfs, mapped shared and writable: a ublk write
//! copied by USER_COPY goes from the request's pages straight into the file's
//! pages (one `pread` of `/dev/ublkcN` into the mapping), where it would
//! otherwise cross the daemon's buffer (a `pread`, then a `pwrite` of the
//! file): one system call and one copy fewer per request.
//!
//! Only writes: a read through a mapping faults in a page for every hole it
//! touches, so reading a sparse file would fill the tmpfs, where `pread`
//! returns zeros without allocating. A write allocates its pages either way.
//!
//! The mapping covers the file's size when the leaf was opened; a range past
//! it (after a live grow) takes the `pwrite` path. The daemon never touches
//! the mapping itself: it only hands the kernel a pointer into it, so a file
//! truncated behind the daemon's back fails that request with EFAULT instead
//! of killing the daemon with SIGBUS.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

pub(crate) struct FileMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory that no Rust reference ever points
// into: it is only handed to the kernel as a raw pointer, as a file descriptor
// would be, so any thread may use it.
unsafe impl Send for FileMap {}
// SAFETY: as for Send; `FileMap` has no interior state besides the mapping.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Map `file`'s first `len` bytes, shared and writable.
    pub(crate) fn new(file: &File, len: u64) -> std::io::Result<FileMap> {
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("file too large"))?;
        // SAFETY: a fresh mapping at an address the kernel picks, of a file
        // open for reading and writing; nothing else refers to that range.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(FileMap { ptr, len })
    }

    /// Where the file's bytes `offset..offset + len` are mapped, if they are.
    pub(crate) fn at(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let start = usize::try_from(offset).ok()?;
        (start.checked_add(len)? <= self.len).then(|| {
            // SAFETY: `start + len <= self.len`: inside the mapping.
            unsafe { self.ptr.as_ptr().add(start) }
        })
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: the range mapped in `new`, unmapped once; no pointer into it
        // outlives the leaf, whose requests have all ended by now.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn bytes_stored_through_the_map_are_the_files_and_ranges_past_it_are_not_mapped() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(16 << 10).unwrap();
        let map = FileMap::new(&file, 16 << 10).unwrap();
        let dst = map.at(4096, 512).unwrap();
        let data = [0x5au8; 512];
        // SAFETY: `dst` points at 512 mapped bytes of the file.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        let mut back = [0u8; 512];
        file.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
        assert!(map.at(16 << 10, 1).is_none());
        assert!(map.at((16 << 10) - 512, 513).is_none());
        assert!(map.at((16 << 10) - 512, 512).is_some());
        assert!(map.at(u64::MAX, 1).is_none());
    }
}

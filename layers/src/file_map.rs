//! A `file` leaf on tmpfs or ramfs, mapped shared and writable: a ublk write
//! copied by USER_COPY goes from the request's pages straight into the file's
//! pages (one `pread` of `/dev/ublkcN` into the mapping), where it would
//! otherwise cross the daemon's buffer (a `pread`, then a `pwrite` of the
//! file): one system call and one copy fewer per request. A read goes the
//! other way (one `pwrite` of `/dev/ublkcN` from the mapping).
//!
//! A read through a mapping faults in a page for every hole it touches, so
//! reading a sparse file that way would fill the tmpfs, where `pread` returns
//! zeros without allocating. So the map keeps a bit per page that is known to
//! hold data: set from SEEK_DATA / SEEK_HOLE at open and by every write that
//! succeeds, cleared by a hole punch. Only a read whose pages are all known
//! to hold data goes through the mapping. A bit wrongly clear costs a `pread`;
//! one wrongly set (a write racing a discard of the same page) costs a page of
//! memory, and if the tmpfs is full the read fails with EFAULT and its caller
//! falls back to `pread`.
//!
//! The mapping covers the file's size when the leaf was opened; a range past
//! it (after a live grow) takes the `pwrite` path. The daemon never touches
//! the mapping itself: it only hands the kernel a pointer into it, so a file
//! truncated behind the daemon's back fails that request with EFAULT instead
//! of killing the daemon with SIGBUS.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// The unit the "holds data" bits count in: the page size of tmpfs here.
const PAGE: u64 = 4096;
/// Largest file whose pages get "holds data" bits (4 MiB of them); a larger
/// one is mapped for writes only.
const MAX_HELD_PAGES: u64 = 1 << 25;
/// Most runs of data looked up at open (two `lseek`s each).
const MAX_FOUND_RUNS: usize = 1 << 16;

pub(crate) struct FileMap {
    ptr: NonNull<u8>,
    len: usize,
    /// A bit per page: set when the page is known to hold data (see the
    /// module comment). `None`: reads are not mapped.
    held: Option<Box<[AtomicU64]>>,
}

// SAFETY: the mapping is shared memory that no Rust reference ever points
// into: it is only handed to the kernel as a raw pointer, as a file descriptor
// would be, so any thread may use it.
unsafe impl Send for FileMap {}
// SAFETY: as for Send; the bits are atomics.
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
        let mut map = FileMap {
            ptr,
            len,
            held: None,
        };
        let pages = (len as u64).div_ceil(PAGE);
        if pages <= MAX_HELD_PAGES {
            map.held = Some((0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect());
            // A file whose data cannot be found is read by `pread`.
            if let Err(e) = map.find_data(file) {
                tracing::info!("reads not mapped: cannot find the file's data: {e}");
                map.held = None;
            }
        }
        Ok(map)
    }

    /// Set the bits of the pages SEEK_DATA / SEEK_HOLE say hold data. A
    /// file in more than [`MAX_FOUND_RUNS`] pieces keeps the rest clear
    /// (read by `pread` until written) rather than delay the open.
    fn find_data(&self, file: &File) -> std::io::Result<()> {
        let end = self.len as u64;
        let mut at = 0;
        for _ in 0..MAX_FOUND_RUNS {
            if at >= end {
                break;
            }
            let Some(data) = crate::os::seek_data_or_hole(file, at, true)? else {
                break;
            };
            if data >= end {
                break;
            }
            let hole = crate::os::seek_data_or_hole(file, data, false)?.map_or(end, |h| h.min(end));
            self.wrote(data, hole - data);
            at = hole;
        }
        Ok(())
    }

    /// Where the file's bytes `offset..offset + len` are mapped, if they are.
    pub(crate) fn at(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let start = usize::try_from(offset).ok()?;
        (start.checked_add(len)? <= self.len).then(|| {
            // SAFETY: `start + len <= self.len`: inside the mapping.
            unsafe { self.ptr.as_ptr().add(start) }
        })
    }

    /// Where the file's bytes `offset..offset + len` are mapped, if they are
    /// and every page of them is known to hold data: reading them there
    /// allocates nothing.
    pub(crate) fn held_at(&self, offset: u64, len: usize) -> Option<*const u8> {
        let held = self.held.as_deref()?;
        let at = self.at(offset, len)?;
        touched(offset, len as u64)
            .all(|page| {
                held[(page / 64) as usize].load(Ordering::Relaxed) & (1 << (page % 64)) != 0
            })
            .then_some(at.cast_const())
    }

    /// A write of `offset..offset + len` succeeded: its pages hold data.
    pub(crate) fn wrote(&self, offset: u64, len: u64) {
        self.mark(touched(offset, len), true);
    }

    /// `offset..offset + len` was punched out: the pages it covers whole
    /// hold no data (a page it covers in part still does).
    pub(crate) fn punched(&self, offset: u64, len: u64) {
        self.mark(
            offset.div_ceil(PAGE)..offset.saturating_add(len) / PAGE,
            false,
        );
    }

    /// Reads of `offset..offset + len` go by `pread` until it is written
    /// again: each page it touches is no longer known to hold data.
    pub(crate) fn forget(&self, offset: u64, len: u64) {
        self.mark(touched(offset, len), false);
    }

    /// Set or clear the bits of `pages`, a word at a time.
    fn mark(&self, pages: Range<u64>, holds_data: bool) {
        let Some(held) = self.held.as_deref() else {
            return;
        };
        let end = pages.end.min(held.len() as u64 * 64);
        let mut page = pages.start;
        while page < end {
            let word = page / 64;
            let bits = (end - page).min(64 - page % 64);
            let mask = if bits == 64 {
                u64::MAX
            } else {
                ((1 << bits) - 1) << (page % 64)
            };
            let word = &held[word as usize];
            if holds_data {
                word.fetch_or(mask, Ordering::Relaxed);
            } else {
                word.fetch_and(!mask, Ordering::Relaxed);
            }
            page += bits;
        }
    }
}

/// The pages `offset..offset + len` touches.
fn touched(offset: u64, len: u64) -> Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / PAGE..offset.saturating_add(len).div_ceil(PAGE)
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

    #[test]
    fn pages_hold_data_from_open_and_writes_until_a_punch_covers_them_whole() {
        use std::os::unix::fs::FileExt;
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        // Data at open: the page at 64 KiB, found by SEEK_DATA.
        file.write_all_at(&[1; 100], (64 << 10) + 10).unwrap();
        let map = FileMap::new(&file, 1 << 20).unwrap();
        assert!(map.held_at(64 << 10, 4096).is_some());
        assert!(map.held_at(0, 4096).is_none());
        assert!(map.held_at((64 << 10) - 512, 1024).is_none(), "half hole");
        // A write of part of two pages: both hold data.
        map.wrote(8192 + 4000, 200);
        assert!(map.held_at(8192, 8192).is_some());
        // A punch of one and a half pages clears the whole one only.
        map.punched(8192 + 2048, 6144);
        assert!(map.held_at(8192, 4096).is_some());
        assert!(map.held_at(12288, 4096).is_none());
        // Forgetting takes every page touched; ranges past the end are no-ops.
        map.forget(8192 + 4095, 1);
        assert!(map.held_at(8192, 4096).is_none());
        // Across words of bits: pages 60 to 69 exactly.
        map.wrote(60 * 4096, 10 * 4096);
        assert!(map.held_at(60 * 4096, 10 * 4096).is_some());
        assert!(map.held_at(59 * 4096, 4096).is_none());
        assert!(map.held_at(70 * 4096, 4096).is_none());
        map.punched(61 * 4096, 8 * 4096);
        assert!(map.held_at(60 * 4096, 4096).is_some());
        assert!(map.held_at(69 * 4096, 4096).is_some());
        assert!(map.held_at(61 * 4096, 4096).is_none());
        assert!(map.held_at(68 * 4096, 4096).is_none());
        // The whole file, 256 pages: four whole words.
        map.wrote(0, 1 << 20);
        assert!(map.held_at(0, 1 << 20).is_some());
        map.wrote(1 << 20, 4096);
        map.punched(0, u64::MAX);
        assert!(map.held_at(64 << 10, 4096).is_none());
        assert!(map.held_at(1 << 20, 4096).is_none());
    }
}

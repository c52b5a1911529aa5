//! The few synchronous syscalls leaves need outside the data path (locking,
//! block-device size and sector size, O_DIRECT alignment, finding holes, the
//! machine's memory), through nix. Three calls nix has no safe form of keep a
//! small `unsafe` each: the BLKSSZGET ioctl, statx and glibc's malloc_trim.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, FlockArg};
use nix::sys::statfs::{fstatfs, FsType, TMPFS_MAGIC};
use nix::unistd::{lseek, Whence};

/// Take an exclusive advisory lock so that two daemons never serve one leaf.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    // The lock belongs to the open file and must last as long as the leaf's
    // `File`; nix's owning `Flock` guard would have to take that `File` from
    // its holder, so the plain call it deprecated is the one that fits.
    #[allow(deprecated)]
    nix::fcntl::flock(file.as_raw_fd(), FlockArg::LockExclusiveNonblock)?;
    Ok(())
}

/// Size in bytes of an open block device: where its end is (lseek(SEEK_END)
/// on a block device gives the size BLKGETSIZE64 reports).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    // Moves the file position, which no user of these files relies on (all
    // their I/O gives its offset).
    let end = lseek(file, 0, Whence::SeekEnd)?;
    u64::try_from(end).map_err(|_| io::Error::from(Errno::EINVAL))
}

// BLKSSZGET is _IO(0x12, 104) but returns an int through its argument, which
// nix calls a "bad" ioctl.
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);

/// Logical sector size of an open block device (BLKSSZGET): the smallest
/// offset and length O_DIRECT I/O to it may use.
// nix has no safe call for this ioctl: its macro declares an `unsafe fn`.
#[allow(unsafe_code)]
pub fn logical_sector_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at a
    // live, properly aligned c_int for the duration of the call.
    unsafe { blksszget(file.as_raw_fd(), &mut size) }?;
    u32::try_from(size).map_err(|_| io::Error::from(Errno::EINVAL))
}

/// The file-offset alignment O_DIRECT I/O to the file at `path` needs, from
/// statx(STATX_DIOALIGN) (Linux 6.1+): `Ok(None)` when the kernel or the
/// filesystem does not say, `Ok(Some(0))` when the file does not support
/// O_DIRECT at all.
pub fn dio_offset_align(path: &Path) -> io::Result<Option<u32>> {
    Ok(dio_align(path)?.map(|(_, offset)| offset))
}

/// The larger of the memory and file-offset alignments O_DIRECT I/O to the
/// file at `path` needs, as [`dio_offset_align`] says them.
pub fn dio_alignment(path: &Path) -> io::Result<Option<u32>> {
    Ok(dio_align(path)?.map(|(mem, offset)| mem.max(offset)))
}

/// statx(STATX_DIOALIGN): (memory, offset) alignment.
// nix has no statx.
#[allow(unsafe_code)]
fn dio_align(path: &Path) -> io::Result<Option<(u32, u32)>> {
    let name =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(Errno::EINVAL))?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the path is a live NUL-terminated string and statx fills the
    // struct it points to, which is live and writable for the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            name.as_ptr(),
            0,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    Errno::result(rc)?;
    // SAFETY: statx succeeded, so it initialised the struct (it was zeroed anyway).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align)))
}

/// The process's effective user id.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The machine's memory in bytes: MemTotal from /proc/meminfo, else sysinfo(2).
pub fn memory_total() -> io::Result<u64> {
    if let Some(bytes) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .as_deref()
        .and_then(mem_total_from_meminfo)
    {
        return Ok(bytes);
    }
    Ok(nix::sys::sysinfo::sysinfo()?.ram_total())
}

/// `MemTotal:  16318480 kB` → bytes.
fn mem_total_from_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Return the allocator's free pages to the system (glibc keeps them otherwise),
/// e.g. after a cache shrank.
// nix has no malloc_trim (it is glibc's, not a system call).
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no
    // pointers and may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether `file` lives on a filesystem whose pages are memory (tmpfs, ramfs):
/// reading or writing it is a copy that never waits for a device.
pub fn is_memory_backed(file: &File) -> bool {
    // nix names no ramfs magic; this is RAMFS_MAGIC of <linux/magic.h>.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    fstatfs(file).is_ok_and(|stat| {
        let magic = stat.filesystem_type();
        magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
    })
}

/// `fallocate(2)` on the calling thread; returns 0 or a negative errno, like a CQE.
pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> i32 {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return -libc::EINVAL;
    };
    let mode = FallocateFlags::from_bits_retain(mode);
    loop {
        match nix::fcntl::fallocate(file, mode, offset, len) {
            Ok(()) => return 0,
            Err(Errno::EINTR) => continue,
            Err(errno) => return -(errno as i32),
        }
    }
}

/// `lseek(2)` with SEEK_DATA (`data`) or SEEK_HOLE from `offset`: the offset
/// found, or `None` on ENXIO (for SEEK_DATA: no data at or after `offset`, so a
/// hole to the end; for either: `offset` is at or past the end of the file).
pub fn seek_data_or_hole(file: &File, offset: u64, data: bool) -> io::Result<Option<u64>> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from(Errno::EINVAL))?;
    let whence = if data {
        Whence::SeekData
    } else {
        Whence::SeekHole
    };
    // Moves the file position, which no user of these files relies on (all
    // their I/O gives its offset).
    match lseek(file, offset, whence) {
        Ok(found) => Ok(Some(found as u64)),
        Err(Errno::ENXIO) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemFree:  1 kB\nMemTotal:       16318480 kB\nSwapTotal: 0 kB\n";
        assert_eq!(mem_total_from_meminfo(text), Some(16_318_480 * 1024));
        assert_eq!(mem_total_from_meminfo("MemFree: 1 kB\n"), None);
        assert!(memory_total().unwrap() > 0);
    }

    #[test]
    fn a_second_lock_on_a_file_is_refused_until_the_first_holder_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let first = File::create(&path).unwrap();
        lock_exclusive(&first).unwrap();
        let second = File::open(&path).unwrap();
        let refused = lock_exclusive(&second).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EWOULDBLOCK));
        drop(first);
        lock_exclusive(&second).unwrap();
    }

    #[test]
    fn data_and_holes_are_found_and_failures_are_negative_errnos() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(4 << 20).unwrap();
        file.write_all_at(&[1; 4096], 2 << 20).unwrap();
        // A filesystem may count holes as data, never data as a hole.
        let data = seek_data_or_hole(&file, 0, true).unwrap().unwrap();
        assert!(data <= 2 << 20, "{data}");
        let hole = seek_data_or_hole(&file, 2 << 20, false).unwrap().unwrap();
        assert!(hole >= (2 << 20) + 4096, "{hole}");
        assert_eq!(seek_data_or_hole(&file, 8 << 20, true).unwrap(), None);
        let read_only = File::open(&path).unwrap();
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(fallocate(&read_only, punch, 0, 4096), -libc::EBADF);
        assert_eq!(fallocate(&file, punch, 0, u64::MAX), -libc::EINVAL);
        assert_eq!(effective_uid(), std::fs::metadata(&path).unwrap().uid());
    }

    #[test]
    fn dio_alignment_of_a_file_is_a_power_of_two_or_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        match dio_offset_align(&path).unwrap() {
            None | Some(0) => {}
            Some(align) => assert!(align.is_power_of_two(), "{align}"),
        }
        assert!(dio_offset_align(&dir.path().join("missing")).is_err());
    }
}

//! The few synchronous syscalls leaves need outside the data path (locking,
//! block-device size and sector size, O_DIRECT alignment, finding holes, the
//! machine's memory).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Take an exclusive advisory lock so that two daemons never serve one leaf.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock takes no memory arguments; the fd is open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Size in bytes of an open block device.
pub fn block_device_size(file: &File) -> io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272; // _IOR(0x12, 114, size_t)
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a
    // live, properly aligned u64 for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc == 0 {
        Ok(size)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Logical sector size of an open block device (BLKSSZGET): the smallest
/// offset and length O_DIRECT I/O to it may use.
pub fn logical_sector_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at a
    // live, properly aligned c_int for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::BLKSSZGET,
            &mut size as *mut libc::c_int,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The file-offset alignment O_DIRECT I/O to the file at `path` needs, from
/// statx(STATX_DIOALIGN) (Linux 6.1+): `Ok(None)` when the kernel or the
/// filesystem does not say, `Ok(Some(0))` when the file does not support
/// O_DIRECT at all.
pub fn dio_offset_align(path: &Path) -> io::Result<Option<u32>> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
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
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded, so it initialised the struct (it was zeroed anyway).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    Ok(Some(stx.stx_dio_offset_align))
}

/// The process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
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
    let mut info = std::mem::MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: sysinfo fills the struct it points to, which is live and writable
    // for the call.
    let rc = unsafe { libc::sysinfo(info.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sysinfo succeeded, so it initialised the struct (zeroed anyway).
    let info = unsafe { info.assume_init() };
    // c_ulong is u32 on 32-bit targets, where the conversion is not useless.
    #[allow(clippy::useless_conversion)]
    let total = u64::from(info.totalram);
    Ok(total.saturating_mul(u64::from(info.mem_unit.max(1))))
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
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs fills the statfs it points to, which is live and writable
    // for the call; the fd is open.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded, so it initialised the struct (it was zeroed anyway).
    let magic = unsafe { stat.assume_init() }.f_type;
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

/// `fallocate(2)` on the calling thread; returns 0 or a negative errno, like a CQE.
pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> i32 {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return -libc::EINVAL;
    };
    loop {
        // SAFETY: fallocate takes no memory arguments; the fd is open for the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return 0;
        }
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if errno != libc::EINTR {
            return -errno;
        }
    }
}

/// `lseek(2)` with SEEK_DATA (`data`) or SEEK_HOLE from `offset`: the offset
/// found, or `None` on ENXIO (for SEEK_DATA: no data at or after `offset`, so a
/// hole to the end; for either: `offset` is at or past the end of the file).
pub fn seek_data_or_hole(file: &File, offset: u64, data: bool) -> io::Result<Option<u64>> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    // SAFETY: lseek takes no memory arguments; the fd is open for the call. It
    // moves the file position, which no user of these files relies on (all
    // their I/O gives its offset).
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found >= 0 {
        return Ok(Some(found as u64));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemFree:  1 kB\nMemTotal:       16318480 kB\nSwapTotal: 0 kB\n";
        assert_eq!(mem_total_from_meminfo(text), Some(16_318_480 * 1024));
        assert_eq!(mem_total_from_meminfo("MemFree: 1 kB\n"), None);
        assert!(memory_total().unwrap() > 0);
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

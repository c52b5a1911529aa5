//! `disk` leaf: a raw block device. Same I/O path as `file` (see `file.rs`): reads
//! and writes through io_uring, `fdatasync` on FLUSH, and `fallocate` on the device
//! for discard (punch hole → discard) and write_zeroes (zero range). The size comes
//! from BLKGETSIZE64; `direct` defaults to true so the page cache is bypassed.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use crate::file::FileLeaf;
use crate::os;
use crate::plan::DiskParams;

pub fn open(params: &DiskParams, block_size: u32) -> Result<FileLeaf, String> {
    let path = &params.path;
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    // O_EXCL on a block device: fail if it is mounted or claimed by another holder.
    let mut flags = libc::O_EXCL;
    if params.direct {
        flags |= libc::O_DIRECT;
    }
    options.custom_flags(flags);
    let file = options
        .open(path)
        .map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: cannot stat: {e}", path.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!(
            "{}: not a block device (use a `file` layer for regular files)",
            path.display()
        ));
    }
    let size = os::block_device_size(&file)
        .map_err(|e| format!("{}: cannot read its size: {e}", path.display()))?;
    let usable = size - size % u64::from(block_size);
    if usable == 0 {
        return Err(format!(
            "{}: {size} bytes is smaller than one {block_size}-byte block",
            path.display()
        ));
    }
    Ok(FileLeaf::new(
        file,
        usable,
        "disk",
        params.direct.then_some(block_size),
    ))
}

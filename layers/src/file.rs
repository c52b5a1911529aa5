//! `file` leaf: a regular file, read and written through the queue's io_uring.
//!
//! - FLUSH is `fdatasync` on the file.
//! - discard punches a hole (the file stays sparse); write_zeroes uses
//!   `FALLOC_FL_ZERO_RANGE`; when the filesystem supports neither, zeros are written.
//! - `direct = true` opens with O_DIRECT; the queue's bounce buffers are 4 KiB
//!   aligned, so any block-aligned request qualifies.
//! - No on-disk metadata: the file holds the device's bytes at their offsets.
//! - Holes in the file are reported by `allocation` (SEEK_DATA / SEEK_HOLE), for
//!   NBD BLOCK_STATUS.
//! - An exclusive `flock` keeps a second daemon off the same file.
//! - A file on tmpfs or ramfs (not opened `direct`) is read and written with
//!   plain `pread`/`pwrite` on the queue thread, straight into the caller's
//!   buffer. Those filesystems cannot complete buffered I/O inline in io_uring, so
//!   each request would be handed to an io-wq worker thread and back: two context
//!   switches around a copy that is the whole cost. The kernel's loop driver
//!   serves such files the same way, synchronously in its worker.
//!
//! The same I/O path serves `disk` leaves (see `disk.rs`): `fallocate` on a block
//! device discards or zeroes the range.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::exec::IoCtx;
use crate::plan::FileParams;
use crate::uring::Op;
use crate::{os, AsyncLayer, Error, Result};

/// Largest single leaf I/O; bigger requests are issued in pieces.
const MAX_IO_BYTES: usize = 1 << 20;
/// Most runs one allocation query returns: bounds its lseeks on a file
/// fragmented into many small extents (the caller asks again for the rest).
const MAX_ALLOCATION_RUNS: usize = 512;

/// A leaf over an open file descriptor (regular file or block device).
pub struct FileLeaf {
    file: File,
    size: u64,
    /// Whether hole punching works here; cleared after the first EOPNOTSUPP.
    punch_ok: AtomicBool,
    zero_range_ok: AtomicBool,
    kind: &'static str,
    /// Serve I/O synchronously (tmpfs/ramfs; see the module comment).
    sync_io: bool,
}

/// Open (and with `create`, create) the file of a `file` leaf.
pub fn open(params: &FileParams, block_size: u32) -> std::result::Result<FileLeaf, String> {
    let path = &params.path;
    let exists = path.exists();
    if !exists && !params.create {
        return Err(format!(
            "{}: no such file (set `create = true` to create it)",
            path.display()
        ));
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if params.direct {
        options.custom_flags(libc::O_DIRECT);
    }
    if !exists {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create folder: {e}", dir.display()))?;
        }
        options.create_new(true);
    }
    let file = options
        .open(path)
        .map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
    os::lock_exclusive(&file)
        .map_err(|e| format!("{}: in use by another process (flock: {e})", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: cannot stat: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{}: not a regular file (use a `disk` layer for block devices)",
            path.display()
        ));
    }
    let size = match (exists, params.size_bytes) {
        (false, Some(size)) => {
            file.set_len(size)
                .map_err(|e| format!("{}: cannot size to {size} bytes: {e}", path.display()))?;
            size
        }
        (false, None) => {
            return Err(format!(
                "{}: `size` is required with `create`",
                path.display()
            ))
        }
        (true, Some(size)) if size != meta.len() => {
            return Err(format!(
                "{}: file is {} bytes but the config says size = {size}",
                path.display(),
                meta.len()
            ))
        }
        (true, _) => meta.len(),
    };
    if size == 0 || size % u64::from(block_size) != 0 {
        return Err(format!(
            "{}: size {size} is not a non-zero multiple of the block size {block_size}",
            path.display()
        ));
    }
    let sync_io = !params.direct && os::is_memory_backed(&file);
    let mut leaf = FileLeaf::new(file, size, "file");
    leaf.sync_io = sync_io;
    Ok(leaf)
}

impl FileLeaf {
    pub(crate) fn new(file: File, size: u64, kind: &'static str) -> FileLeaf {
        FileLeaf {
            file,
            size,
            punch_ok: AtomicBool::new(true),
            zero_range_ok: AtomicBool::new(true),
            kind,
            sync_io: false,
        }
    }

    /// `pread` until `buf` is full; end of file inside the device is EIO.
    fn read_sync(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                tracing::error!(kind = self.kind, offset, "read past the end of the leaf");
                return Error::Io(libc::EIO);
            }
            Error::from(e)
        })
    }

    /// `pwrite` until all of `buf` is written.
    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.file.write_all_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WriteZero {
                tracing::error!(kind = self.kind, offset, "write made no progress");
                return Error::Io(libc::EIO);
            }
            Error::from(e)
        })
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    async fn read_at(&self, ctx: &IoCtx, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        if self.sync_io {
            return self.read_sync(offset, buf);
        }
        while !buf.is_empty() {
            let len = buf.len().min(MAX_IO_BYTES);
            let bounce = ctx.take_buf(len);
            let (res, bounce) = ctx
                .uring()
                .submit(Op::Read {
                    fd: self.fd(),
                    offset,
                    buf: bounce,
                })
                .await;
            let bounce = bounce.expect("read returns its buffer");
            if res < 0 {
                ctx.put_buf(bounce);
                return Err(Error::from_res(res));
            }
            if res == 0 {
                // End of file inside the device: the file was truncated, or the
                // block device below went away. Never pass that off as zeros.
                ctx.put_buf(bounce);
                tracing::error!(kind = self.kind, offset, "read past the end of the leaf");
                return Err(Error::Io(libc::EIO));
            }
            let done = res as usize;
            let (head, tail) = std::mem::take(&mut buf).split_at_mut(done);
            head.copy_from_slice(&bounce.as_slice()[..done]);
            ctx.put_buf(bounce);
            buf = tail;
            offset += head.len() as u64;
        }
        Ok(())
    }

    async fn write_at(&self, ctx: &IoCtx, mut offset: u64, mut buf: &[u8]) -> Result<()> {
        if self.sync_io {
            return self.write_sync(offset, buf);
        }
        while !buf.is_empty() {
            let len = buf.len().min(MAX_IO_BYTES);
            let mut bounce = ctx.take_buf(len);
            bounce.as_mut_slice().copy_from_slice(&buf[..len]);
            let (res, bounce) = ctx
                .uring()
                .submit(Op::Write {
                    fd: self.fd(),
                    offset,
                    buf: bounce,
                })
                .await;
            if let Some(bounce) = bounce {
                ctx.put_buf(bounce);
            }
            if res == -libc::ENOSPC && self.kind == "disk" {
                // A block device has no free space to run out of: ENOSPC means
                // the write fell past its end, i.e. the device shrank or vanished.
                tracing::error!(offset, "write past the end of the disk leaf");
                return Err(Error::Io(libc::EIO));
            }
            if res < 0 {
                return Err(Error::from_res(res));
            }
            if res == 0 {
                tracing::error!(kind = self.kind, offset, "write made no progress");
                return Err(Error::Io(libc::EIO));
            }
            buf = &buf[res as usize..];
            offset += res as u64;
        }
        Ok(())
    }

    async fn fallocate(&self, ctx: &IoCtx, mode: i32, offset: u64, len: u64) -> i32 {
        if self.sync_io {
            return os::fallocate(&self.file, mode, offset, len);
        }
        let (res, _) = ctx
            .uring()
            .submit(Op::Fallocate {
                fd: self.fd(),
                mode,
                offset,
                len,
            })
            .await;
        res
    }

    async fn zero_range(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: u64,
        prefer_punch: bool,
    ) -> Result<()> {
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let order = if prefer_punch {
            [(punch, &self.punch_ok), (zero, &self.zero_range_ok)]
        } else {
            [(zero, &self.zero_range_ok), (punch, &self.punch_ok)]
        };
        for (mode, ok) in order {
            if !ok.load(Ordering::Relaxed) {
                continue;
            }
            match self.fallocate(ctx, mode, offset, len).await {
                0 => return Ok(()),
                res if res == -libc::EOPNOTSUPP || res == -libc::EINVAL => {
                    ok.store(false, Ordering::Relaxed)
                }
                res => return Err(Error::from_res(res)),
            }
        }
        self.write_zero_blocks(ctx, offset, len).await
    }

    async fn write_zero_blocks(&self, ctx: &IoCtx, mut offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        let zeros = vec![0u8; MAX_IO_BYTES.min(len as usize)];
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            self.write_at(ctx, offset, &zeros[..n]).await?;
            offset += n as u64;
        }
        Ok(())
    }
}

impl AsyncLayer for FileLeaf {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at(ctx, offset, buf).await
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_at(ctx, offset, buf).await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        if self.sync_io {
            return self.file.sync_data().map_err(Error::from);
        }
        let (res, _) = ctx
            .uring()
            .submit(Op::Fsync {
                fd: self.fd(),
                data_only: true,
            })
            .await;
        if res < 0 {
            return Err(Error::from_res(res));
        }
        Ok(())
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero_range(ctx, offset, len, true).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero_range(ctx, offset, len, false).await
    }

    fn discard_frees_space(&self) -> bool {
        self.punch_ok.load(Ordering::Relaxed)
    }

    /// Holes found with SEEK_DATA / SEEK_HOLE; they read as zeros. Block
    /// devices (`disk`) cannot tell, and neither can a failed lseek.
    fn allocation(&self, offset: u64, len: u64) -> Option<Vec<(u64, bool)>> {
        if self.kind != "file" {
            return None;
        }
        let end = offset.checked_add(len)?.min(self.size);
        let mut runs = Vec::new();
        let mut at = offset;
        while at < end && runs.len() < MAX_ALLOCATION_RUNS {
            let data = os::seek_data_or_hole(&self.file, at, true)
                .ok()?
                .map_or(end, |d| d.min(end));
            if data > at {
                runs.push((data - at, true));
                at = data;
            }
            if at >= end {
                break;
            }
            // Past the end of the file (it shrank under us) reads as EIO,
            // never as a hole: stop rather than guess.
            let hole = os::seek_data_or_hole(&self.file, at, false).ok()??.min(end);
            if hole <= at {
                break;
            }
            runs.push((hole - at, false));
            at = hole;
        }
        (!runs.is_empty()).then_some(runs)
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("kind", self.kind.to_string()),
            (
                "io",
                if self.sync_io { "sync" } else { "io_uring" }.to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_reports_holes_and_data_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let params = FileParams {
            path: dir.path().join("leaf.img"),
            size_bytes: Some(4 << 20),
            create: true,
            direct: false,
        };
        let leaf = open(&params, 4096).unwrap();
        assert_eq!(
            AsyncLayer::allocation(&leaf, 0, 4 << 20),
            Some(vec![(4 << 20, true)])
        );
        leaf.file.write_at(&[0xaa; 8192], 1 << 20).unwrap();
        let runs = AsyncLayer::allocation(&leaf, 0, 4 << 20).unwrap();
        // The filesystem may allocate more than was written, never less.
        let mut at = 0;
        let mut data = Vec::new();
        for &(len, hole) in &runs {
            if !hole {
                data.push((at, at + len));
            }
            at += len;
        }
        assert_eq!(at, 4 << 20, "{runs:?}");
        assert_eq!(data.len(), 1, "{runs:?}");
        assert!(
            data[0].0 <= 1 << 20 && data[0].1 >= (1 << 20) + 8192,
            "{runs:?}"
        );
        assert!(runs[0].1, "the file starts with a hole: {runs:?}");
        // A query inside the data, and one starting in the last hole.
        assert_eq!(
            AsyncLayer::allocation(&leaf, 1 << 20, 4096),
            Some(vec![(4096, false)])
        );
        assert_eq!(
            AsyncLayer::allocation(&leaf, 3 << 20, 1 << 20),
            Some(vec![(1 << 20, true)])
        );
    }
}

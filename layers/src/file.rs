//! `file` leaf: a regular file, read and written through the queue's io_uring.
//!
//! - FLUSH is `fdatasync` on the file.
//! - discard punches a hole (the file stays sparse); write_zeroes uses
//!   `FALLOC_FL_ZERO_RANGE`; when the filesystem supports neither, zeros are written.
//! - Reads and writes go straight into and out of the request's buffer (see
//!   `buf.rs`), with no copy. `direct = true` opens with O_DIRECT, which needs the
//!   buffer's memory aligned to the block size: request buffers are 4 KiB aligned
//!   and split on block boundaries, so they are; a misaligned one would go
//!   through an aligned copy, counted as `misaligned_copies` in the details.
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
//! - A kernel-registered request buffer (ublk zero copy, `buf.rs`) has no bytes
//!   of ours to `pread` into or copy: it always goes through the ring as a
//!   fixed read or write, whatever the file is on.
//!
//! The same I/O path serves `disk` leaves (see `disk.rs`): `fallocate` on a block
//! device discards or zeroes the range.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::exec::IoCtx;
use crate::file_map::FileMap;
use crate::plan::FileParams;
use crate::report::{LayerReport, LeafIo, LeafReport};
use crate::uring::Op;
use crate::{os, AsyncLayer, Error, IoBuf, IoBufMut, Result};

/// Largest single leaf I/O; bigger requests are issued in pieces.
pub(crate) const MAX_IO_BYTES: usize = 1 << 20;
/// Most runs one allocation query returns: bounds its lseeks on a file
/// fragmented into many small extents (the caller asks again for the rest).
const MAX_ALLOCATION_RUNS: usize = 512;

/// A leaf over an open file descriptor (regular file or block device).
pub struct FileLeaf {
    file: File,
    /// Raised by `grow` (`file` only; a `disk` is the size of its device).
    size: AtomicU64,
    /// Whether hole punching works here; cleared after the first EOPNOTSUPP.
    punch_ok: AtomicBool,
    zero_range_ok: AtomicBool,
    kind: &'static str,
    /// Serve I/O synchronously (tmpfs/ramfs; see the module comment).
    sync_io: bool,
    /// A tmpfs or ramfs file mapped for USER_COPY (`file_map`).
    map: Option<FileMap>,
    /// Memory alignment O_DIRECT needs (the block size), or 1 for buffered I/O.
    mem_align: usize,
    /// Requests whose buffer was not aligned for O_DIRECT and went through a copy.
    misaligned_copies: AtomicU64,
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
        // `create` with a larger size: the file grows, as it does live.
        (true, Some(size)) if params.create && size > meta.len() => {
            file.set_len(size)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("{}: cannot grow to {size} bytes: {e}", path.display()))?;
            size
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
    let map = match sync_io.then(|| FileMap::new(&file, size)) {
        Some(Ok(map)) => Some(map),
        Some(Err(e)) => {
            tracing::info!(
                "{}: not mapped, I/O goes by pread/pwrite: {e}",
                path.display()
            );
            None
        }
        None => None,
    };
    let mut leaf = FileLeaf::new(file, size, "file", params.direct.then_some(block_size));
    leaf.sync_io = sync_io;
    leaf.map = map;
    Ok(leaf)
}

impl FileLeaf {
    /// `direct_block_size`: the block size when the file was opened O_DIRECT.
    pub(crate) fn new(
        file: File,
        size: u64,
        kind: &'static str,
        direct_block_size: Option<u32>,
    ) -> FileLeaf {
        FileLeaf {
            file,
            size: AtomicU64::new(size),
            punch_ok: AtomicBool::new(true),
            zero_range_ok: AtomicBool::new(true),
            kind,
            sync_io: false,
            map: None,
            mem_align: direct_block_size.map_or(1, |b| b as usize),
            misaligned_copies: AtomicU64::new(0),
        }
    }

    /// `pread` until `buf` is full; end of file inside the device is EIO.
    pub(crate) fn read_sync(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                tracing::error!(kind = self.kind, offset, "read past the end of the leaf");
                return Error::Io(libc::EIO);
            }
            Error::from(e)
        })
    }

    /// `pwrite` until all of `buf` is written.
    pub(crate) fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.file.write_all_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WriteZero {
                tracing::error!(kind = self.kind, offset, "write made no progress");
                return Error::Io(libc::EIO);
            }
            Error::from(e)
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The leaf with `map` as its mapping (tests: `open` maps a tmpfs file
    /// itself).
    #[cfg(test)]
    pub(crate) fn with_map(mut self, map: FileMap) -> FileLeaf {
        self.map = Some(map);
        self
    }

    /// Where bytes `offset..offset + len` of the file are mapped for a write
    /// (`file_map`), if they are.
    pub(crate) fn mapped_for_write(&self, offset: u64, len: usize) -> Option<*mut u8> {
        self.map.as_ref()?.at(offset, len)
    }

    /// Whether the file still reaches to `end` bytes (it may have been
    /// truncated behind the leaf).
    pub(crate) fn reaches(&self, end: u64) -> bool {
        self.file.metadata().is_ok_and(|meta| meta.len() >= end)
    }

    /// Where bytes `offset..offset + len` of the file are mapped for a read
    /// that allocates nothing (`file_map`), if they are.
    pub(crate) fn mapped_for_read(&self, offset: u64, len: usize) -> Option<*const u8> {
        self.map.as_ref()?.held_at(offset, len)
    }

    /// A write of `offset..offset + len` succeeded (keeps the mapping's
    /// "holds data" bits).
    pub(crate) fn wrote(&self, offset: u64, len: u64) {
        if let Some(map) = &self.map {
            map.wrote(offset, len);
        }
    }

    /// A read through the mapping failed (EFAULT: its pages were not all
    /// there after all): later ones go by `pread` until they are written.
    pub(crate) fn not_held(&self, offset: u64, len: u64) {
        if let Some(map) = &self.map {
            map.forget(offset, len);
        }
    }

    /// Whether reads and writes are `pread` / `pwrite` on the calling thread
    /// (tmpfs, ramfs), unless the buffer is a fixed one.
    pub(crate) fn is_sync(&self) -> bool {
        self.sync_io
    }

    /// What a ring read of the piece at `at` returned: the bytes read, or the
    /// error it means.
    pub(crate) fn read_result(&self, at: u64, res: i32) -> Result<usize> {
        if res < 0 {
            return Err(Error::from_res(res));
        }
        if res == 0 {
            // End of file inside the device: the file was truncated, or the
            // block device below went away. Never pass that off as zeros.
            tracing::error!(
                kind = self.kind,
                offset = at,
                "read past the end of the leaf"
            );
            return Err(Error::Io(libc::EIO));
        }
        Ok(res as usize)
    }

    /// What a ring write of the piece at `at` returned: the bytes written, or
    /// the error it means.
    pub(crate) fn write_result(&self, at: u64, res: i32) -> Result<usize> {
        if res == -libc::ENOSPC && self.kind == "disk" {
            // A block device has no free space to run out of: ENOSPC means
            // the write fell past its end, i.e. the device shrank or vanished.
            tracing::error!(offset = at, "write past the end of the disk leaf");
            return Err(Error::Io(libc::EIO));
        }
        if res < 0 {
            return Err(Error::from_res(res));
        }
        if res == 0 {
            tracing::error!(kind = self.kind, offset = at, "write made no progress");
            return Err(Error::Io(libc::EIO));
        }
        Ok(res as usize)
    }

    /// Whether a direct leaf can do I/O straight from or into `bytes`: O_DIRECT
    /// wants the memory aligned to the block size. Request buffers are (the pool,
    /// ublk tag buffers and NBD buffers are 4 KiB aligned, and layers split them
    /// on block boundaries); anything else goes through an aligned copy.
    pub(crate) fn needs_copy(&self, bytes: &[u8]) -> bool {
        self.mem_align > 1 && (bytes.as_ptr() as usize) % self.mem_align != 0
    }

    /// A direct leaf's read into memory O_DIRECT cannot take: through an
    /// aligned buffer of the pool, then copied.
    async fn read_bounced(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.misaligned_copies.fetch_add(1, Ordering::Relaxed);
        let mut aligned = ctx.buf(buf.len());
        // Aligned: this read takes the direct path.
        crate::Layer::read(self, ctx, offset, &mut aligned).await?;
        buf.copy_from_slice(&aligned);
        Ok(())
    }

    /// A direct leaf's write from memory O_DIRECT cannot take: copied into an
    /// aligned buffer of the pool first.
    async fn write_bounced(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.misaligned_copies.fetch_add(1, Ordering::Relaxed);
        let mut aligned = ctx.buf(buf.len());
        aligned.copy_from_slice(buf);
        crate::Layer::write(self, ctx, offset, &aligned.freeze()).await
    }

    async fn fallocate(&self, ctx: &IoCtx, mode: i32, offset: u64, len: u64) -> i32 {
        if self.sync_io {
            return os::fallocate(&self.file, mode, offset, len);
        }
        ctx.uring()
            .submit(Op::Fallocate {
                fd: self.fd(),
                mode,
                offset,
                len,
            })
            .await
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
                0 => {
                    if let (Some(map), true) = (&self.map, mode == punch) {
                        map.punched(offset, len);
                    }
                    return Ok(());
                }
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
        let zeros = IoBuf::zeroed(MAX_IO_BYTES.min(len as usize));
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            AsyncLayer::write(self, ctx, offset, &zeros.slice(0..n)).await?;
            offset += n as u64;
        }
        Ok(())
    }
}

impl AsyncLayer for FileLeaf {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Extends the file, sparse, as `create` makes it, and makes the new
    /// length durable before the layers above record their new size. A file
    /// already that long (grown by hand) is taken as it is.
    async fn grow(&self, _: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        if self.kind != "file" {
            return Err(format!(
                "a {} leaf is the size of its device and cannot grow; take the device down \
                 and up once the device itself has grown",
                self.kind
            ));
        }
        let size = self.size();
        if new_size < size {
            return Err(format!(
                "shrinking a file leaf ({size} to {new_size} bytes) is not supported"
            ));
        }
        let len = self
            .file
            .metadata()
            .map_err(|e| format!("cannot stat the file: {e}"))?
            .len();
        if len < new_size {
            self.file
                .set_len(new_size)
                .map_err(|e| format!("cannot extend the file to {new_size} bytes: {e}"))?;
        }
        self.file
            .sync_all()
            .map_err(|e| format!("cannot make the new length durable: {e}"))?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    /// Straight into the request's memory through the ring. One async body
    /// with the loop in it, not a chain of helpers: every nested future is
    /// entered and left again on each poll of a request.
    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        if buf.fixed().is_none() {
            if self.sync_io {
                return self.read_sync(offset, buf);
            }
            if self.needs_copy(buf) {
                return self.read_bounced(ctx, offset, buf).await;
            }
        }
        let mut done = 0;
        while done < buf.len() {
            let len = (buf.len() - done).min(MAX_IO_BYTES);
            let at = offset + done as u64;
            let res = ctx
                .uring()
                .submit(Op::Read {
                    fd: self.fd(),
                    offset: at,
                    buf: &mut *buf,
                    range: done..done + len,
                })
                .await;
            done += self.read_result(at, res)?;
        }
        Ok(())
    }

    /// Straight from the request's memory through the ring (see `read`).
    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        if buf.fixed().is_none() {
            if self.sync_io {
                self.write_sync(offset, buf)?;
                self.wrote(offset, buf.len() as u64);
                return Ok(());
            }
            if self.needs_copy(buf) {
                return self.write_bounced(ctx, offset, buf).await;
            }
        }
        let mut done = 0;
        while done < buf.len() {
            let len = (buf.len() - done).min(MAX_IO_BYTES);
            let at = offset + done as u64;
            let res = ctx
                .uring()
                .submit(Op::Write {
                    fd: self.fd(),
                    offset: at,
                    buf,
                    range: done..done + len,
                })
                .await;
            done += self.write_result(at, res)?;
        }
        self.wrote(offset, buf.len() as u64);
        Ok(())
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        if self.sync_io {
            return self.file.sync_data().map_err(Error::from);
        }
        let res = ctx
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
        let end = offset.checked_add(len)?.min(self.size());
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

    fn report(&self) -> LayerReport {
        let io = if self.sync_io {
            LeafIo::Sync
        } else {
            LeafIo::IoUring
        };
        let misaligned_copies =
            (self.mem_align > 1).then(|| self.misaligned_copies.load(Ordering::Relaxed));
        let leaf = LeafReport {
            io,
            misaligned_copies,
        };
        if self.kind == "disk" {
            LayerReport::Disk(leaf)
        } else {
            LayerReport::File(leaf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Executor;
    use std::future::{poll_fn, Future};
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::task::Poll;

    /// The read's data comes from a socket, so the kernel holds the operation
    /// until the test sends it: meanwhile the request's future is dropped and a
    /// new request takes a buffer from the same pool.
    #[test]
    fn a_dropped_read_never_writes_into_a_later_requests_buffer() {
        let (theirs, mut ours) = UnixStream::pair().unwrap();
        let leaf = FileLeaf::new(File::from(OwnedFd::from(theirs)), 1 << 20, "file", None);
        let ctx = IoCtx::new(0, 8).unwrap();
        let exec = Executor::new().unwrap();
        let mut old = ctx.buf(4096);
        let old_memory = old.as_ptr();
        let mut read = Box::pin(AsyncLayer::read(&leaf, &ctx, 0, &mut old));
        exec.block_on(
            &ctx,
            poll_fn(|cx| {
                assert!(
                    read.as_mut().poll(cx).is_pending(),
                    "the read waits for data"
                );
                Poll::Ready(())
            }),
        );
        ctx.uring().submit_and_wait(0).unwrap();
        assert_eq!(ctx.uring().in_flight(), 1);
        // The request goes away, its read still in the kernel.
        drop(read);
        drop(old);
        let mut new = ctx.buf(4096);
        new.fill(0xbb);
        // Now the old read completes.
        ours.write_all(&[0xaa; 4096]).unwrap();
        while ctx.uring().in_flight() > 0 {
            ctx.uring().submit_and_wait(1).unwrap();
            ctx.uring().reap(&mut |_, _| {});
        }
        assert!(
            new.iter().all(|&b| b == 0xbb),
            "the dropped read wrote into a later request's buffer"
        );
        // Its memory went back to the pool only now.
        drop(new);
        let again = [ctx.buf(4096), ctx.buf(4096)];
        assert!(again.iter().any(|b| b.as_ptr() == old_memory));
    }

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

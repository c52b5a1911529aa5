//! Requests to a stack whose top is a `file`, `disk` or `null` leaf, run
//! without a task.
//!
//! A front end that serves such a stack starts the leaf's ring operation
//! itself ([`DirectTop::start`]) and finishes the request from the operation's
//! completion ([`DirectTop::complete`]), which the ring hands back like one of
//! the front end's own commands ([`Uring::submit_notify`]). No future, waker or
//! task poll stands between the two: on a page-cache read those were most of
//! what the daemon added to the kernel's own work, about 400 of 800 user-space
//! instructions a request.
//!
//! Everything else is as on the future path: the request is range-checked,
//! counted and sampled for latency as a `Counted` layer is; the leaf reads into
//! or writes from the request's own buffer (a fixed buffer under ublk zero copy);
//! a short transfer goes on from where it stopped; tmpfs and ramfs files are
//! read and written with `pread`/`pwrite` on the spot; the operation's slot
//! holds the buffer's memory until its CQE. A front end keeps a request's
//! [`DirectRequest`], and with it the buffer, until `complete` says it is done.
//! A `null` leaf answers on the spot (zeros for a read, stored only where the
//! buffer does not already hold them), so nothing goes to the ring.
//!
//! [`Uring::submit_notify`]: crate::uring::Uring::submit_notify

use std::time::Instant;

use crate::counted::Counted;
use crate::exec::IoCtx;
use crate::file::{FileLeaf, MAX_IO_BYTES};
use crate::null::NullLeaf;
use crate::stats::Op as StatOp;
use crate::uring::Op;
use crate::{AsyncLayer, Error, IoBuf, IoBufMut, Result};

/// A request's buffer: where a read lands, or what a write sends.
pub enum DirectBuf {
    Read(IoBufMut),
    Write(IoBuf),
}

impl DirectBuf {
    fn len(&self) -> usize {
        match self {
            DirectBuf::Read(buf) => buf.len(),
            DirectBuf::Write(buf) => buf.len(),
        }
    }
}

/// One read or write in flight on a [`DirectTop`].
pub struct DirectRequest {
    buf: DirectBuf,
    offset: u64,
    /// Bytes transferred so far.
    done: usize,
    /// When the request began, if its latency is sampled.
    start: Option<Instant>,
}

impl DirectRequest {
    pub fn read(offset: u64, buf: IoBufMut) -> DirectRequest {
        DirectRequest::new(offset, DirectBuf::Read(buf))
    }

    pub fn write(offset: u64, buf: IoBuf) -> DirectRequest {
        DirectRequest::new(offset, DirectBuf::Write(buf))
    }

    fn new(offset: u64, buf: DirectBuf) -> DirectRequest {
        DirectRequest {
            buf,
            offset,
            done: 0,
            start: None,
        }
    }

    /// The same buffer again, for the next request, at `offset` (a front end
    /// that keeps one request per slot reuses it without moving the buffer).
    pub fn again(&mut self, offset: u64) {
        self.offset = offset;
        self.done = 0;
        self.start = None;
    }

    /// Bytes the request reads or writes.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// A read's buffer, holding what was read once the request is done;
    /// `None` for a write.
    pub fn read_bytes(&self) -> Option<&[u8]> {
        match &self.buf {
            DirectBuf::Read(buf) => Some(buf),
            DirectBuf::Write(_) => None,
        }
    }

    /// The buffer back, once the request is done.
    pub fn into_buf(self) -> DirectBuf {
        self.buf
    }

    fn op(&self) -> StatOp {
        match self.buf {
            DirectBuf::Read(_) => StatOp::Read,
            DirectBuf::Write(_) => StatOp::Write,
        }
    }
}

/// A stack's top leaf, for front ends that run requests without a task (see
/// [`crate::Stack::direct`]).
#[derive(Clone, Copy)]
pub struct DirectTop<'a> {
    leaf: Leaf<'a>,
}

#[derive(Clone, Copy)]
enum Leaf<'a> {
    File(&'a Counted<FileLeaf>),
    Null(&'a Counted<NullLeaf>),
}

impl<'a> DirectTop<'a> {
    pub(crate) fn new(file: &'a Counted<FileLeaf>) -> DirectTop<'a> {
        DirectTop {
            leaf: Leaf::File(file),
        }
    }

    pub(crate) fn null(null: &'a Counted<NullLeaf>) -> DirectTop<'a> {
        DirectTop {
            leaf: Leaf::Null(null),
        }
    }

    /// Whether a request in a buffer of the daemon's own is served on the
    /// spot, never through the ring: a `null` leaf, or a file on tmpfs or
    /// ramfs, which `pread`/`pwrite` serve on the calling thread.
    pub fn serves_on_the_spot(&self) -> bool {
        match self.leaf {
            Leaf::File(file) => file.inner.is_sync(),
            Leaf::Null(_) => true,
        }
    }

    /// A write of `len` bytes at `offset` whose data `fill` stores straight
    /// into the file's pages, given where they are mapped (a tmpfs or ramfs
    /// file, `file_map`): checked and counted as `start` would. `None`: the
    /// write goes by `start`, because no mapping covers the range, or because
    /// `fill` failed with EFAULT inside the file (a page could not be
    /// allocated: `pwrite` then says why, ENOSPC on a full tmpfs); this
    /// attempt stays counted as a write. Past the file's end (it was
    /// truncated behind the leaf) the write fails.
    pub fn write_mapped(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: usize,
        fill: impl FnOnce(*mut u8) -> std::io::Result<()>,
    ) -> Option<Result<()>> {
        let Leaf::File(file) = self.leaf else {
            return None;
        };
        let dst = file.inner.mapped_for_write(offset, len)?;
        let start = match file.begin(ctx, StatOp::Write, offset, len as u64) {
            Ok(start) => start,
            Err(e) => return Some(Err(e)),
        };
        let res = match fill(dst) {
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                if file.inner.reaches(offset + len as u64) {
                    tracing::debug!(offset, len, "mapped write faulted; writing by pwrite");
                    return None;
                }
                // The file is shorter than the device now.
                Err(Error::Io(libc::EIO))
            }
            res => res.map_err(Error::from),
        };
        if res.is_ok() {
            file.inner.wrote(offset, len as u64);
        }
        file.finish(ctx, StatOp::Write, start, &res);
        Some(res)
    }

    /// A read of `len` bytes at `offset` whose data `copy` takes straight
    /// from the file's pages, given where they are mapped (a tmpfs or ramfs
    /// file whose pages there all hold data, `file_map`): checked and
    /// counted as `start` would. `None`: the read goes by `start`, because
    /// no mapping covers the range, or because `copy` failed with EFAULT (a
    /// page was not there after all, and faulting it in failed): then the
    /// range goes by `pread` until it is written, and this attempt stays
    /// counted as a read.
    pub fn read_mapped(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: usize,
        copy: impl FnOnce(*const u8) -> std::io::Result<()>,
    ) -> Option<Result<()>> {
        let Leaf::File(file) = self.leaf else {
            return None;
        };
        let src = file.inner.mapped_for_read(offset, len)?;
        let start = match file.begin(ctx, StatOp::Read, offset, len as u64) {
            Ok(start) => start,
            Err(e) => return Some(Err(e)),
        };
        let res = match copy(src) {
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                tracing::debug!(offset, len, "mapped read faulted; reading by pread");
                file.inner.not_held(offset, len as u64);
                return None;
            }
            res => res.map_err(Error::from),
        };
        file.finish(ctx, StatOp::Read, start, &res);
        Some(res)
    }

    /// The leaf's size now.
    pub fn size(&self) -> u64 {
        match self.leaf {
            Leaf::File(file) => AsyncLayer::size(&*file.inner),
            Leaf::Null(null) => AsyncLayer::size(&*null.inner),
        }
    }

    /// Whether `req` can run here. A buffer O_DIRECT cannot take as it is goes
    /// through the future path, which copies it through an aligned one; request
    /// buffers of the front ends are page-aligned, so this is the exception.
    /// A null read needs the buffer's memory to store zeros in.
    pub fn takes(&self, req: &DirectRequest) -> bool {
        match (self.leaf, &req.buf) {
            (Leaf::File(file), DirectBuf::Read(buf)) => {
                buf.fixed().is_some() || !file.inner.needs_copy(buf)
            }
            (Leaf::File(file), DirectBuf::Write(buf)) => {
                buf.fixed().is_some() || !file.inner.needs_copy(buf)
            }
            (Leaf::Null(_), DirectBuf::Read(buf)) => buf.fixed().is_none(),
            (Leaf::Null(_), DirectBuf::Write(_)) => true,
        }
    }

    /// Begin `req`. `None`: its operation is in the ring, and its CQE comes back
    /// through [`crate::uring::Uring::reap`] as `token`, to be handed to
    /// [`DirectTop::complete`]. `Some`: it is already done (refused, or served
    /// by `pread`/`pwrite`).
    pub fn start(&self, ctx: &IoCtx, req: &mut DirectRequest, token: u64) -> Option<Result<()>> {
        debug_assert!(self.takes(req), "a buffer the leaf cannot take as it is");
        let op = req.op();
        let len = req.buf.len() as u64;
        let begun = match self.leaf {
            Leaf::File(file) => file.begin(ctx, op, req.offset, len),
            Leaf::Null(null) => null.begin(ctx, op, req.offset, len),
        };
        req.start = match begun {
            Ok(start) => start,
            Err(e) => return Some(Err(e)),
        };
        let leaf = match self.leaf {
            Leaf::File(file) => &*file.inner,
            Leaf::Null(_) => {
                if let DirectBuf::Read(buf) = &mut req.buf {
                    buf.fill_zero();
                }
                return Some(self.finish(ctx, req, Ok(())));
            }
        };
        let sync = leaf.is_sync();
        let res = match &mut req.buf {
            DirectBuf::Read(buf) if sync && buf.fixed().is_none() => {
                leaf.read_sync(req.offset, buf)
            }
            DirectBuf::Write(buf) if sync && buf.fixed().is_none() => {
                leaf.write_sync(req.offset, buf)
            }
            _ => {
                self.submit(ctx, req, token);
                return None;
            }
        };
        Some(self.finish(ctx, req, res))
    }

    /// `req`'s operation completed with `res`. `None`: it transferred less
    /// than asked and the rest is in the ring under the same token; `Some`: the
    /// request is done.
    pub fn complete(
        &self,
        ctx: &IoCtx,
        req: &mut DirectRequest,
        token: u64,
        res: i32,
    ) -> Option<Result<()>> {
        let Leaf::File(file) = self.leaf else {
            // A null leaf puts nothing in the ring: this is not its CQE.
            debug_assert!(false, "a completion for a null leaf's request");
            return Some(self.finish(ctx, req, Err(Error::Io(libc::EIO))));
        };
        let leaf = &*file.inner;
        let at = req.offset + req.done as u64;
        let done = match req.buf {
            DirectBuf::Read(_) => leaf.read_result(at, res),
            DirectBuf::Write(_) => leaf.write_result(at, res),
        };
        match done {
            Ok(n) => {
                req.done += n;
                if req.done < req.buf.len() {
                    self.submit(ctx, req, token);
                    return None;
                }
                Some(self.finish(ctx, req, Ok(())))
            }
            Err(e) => Some(self.finish(ctx, req, Err(e))),
        }
    }

    /// Push the ring operation for what is left of `req`, at most
    /// `MAX_IO_BYTES` of it.
    fn submit(&self, ctx: &IoCtx, req: &mut DirectRequest, token: u64) {
        let Leaf::File(file) = self.leaf else {
            unreachable!("a null leaf's request never goes to the ring");
        };
        let fd = file.inner.fd();
        let offset = req.offset + req.done as u64;
        let range = req.done..req.buf.len().min(req.done + MAX_IO_BYTES);
        let op = match &mut req.buf {
            DirectBuf::Read(buf) => Op::Read {
                fd,
                offset,
                buf,
                range,
            },
            DirectBuf::Write(buf) => Op::Write {
                fd,
                offset,
                buf,
                range,
            },
        };
        ctx.uring().submit_notify(op, token);
    }

    fn finish(&self, ctx: &IoCtx, req: &DirectRequest, res: Result<()>) -> Result<()> {
        match self.leaf {
            Leaf::File(file) => {
                if let (Ok(()), DirectBuf::Write(buf)) = (&res, &req.buf) {
                    file.inner.wrote(req.offset, buf.len() as u64);
                }
                file.finish(ctx, req.op(), req.start, &res)
            }
            Leaf::Null(null) => null.finish(ctx, req.op(), req.start, &res),
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counted::Node;
    use crate::stats::LayerStats;
    use crate::Error;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    /// Run `req` to the end on `ctx`'s ring, answering every completion of
    /// `token` with `res_of(res)` (to stand in for a short transfer).
    fn run(
        top: DirectTop<'_>,
        ctx: &IoCtx,
        req: &mut DirectRequest,
        mut between: impl FnMut(usize),
    ) -> Result<()> {
        if let Some(res) = top.start(ctx, req, 7) {
            return res;
        }
        let mut completions = 0;
        loop {
            between(completions);
            ctx.uring().submit_and_wait(1).unwrap();
            let mut seen = Vec::new();
            ctx.uring().reap(&mut |token, res| seen.push((token, res)));
            for (token, res) in seen {
                assert_eq!(token, 7, "the completion comes back under its token");
                completions += 1;
                if let Some(done) = top.complete(ctx, req, token, res) {
                    assert_eq!(ctx.uring().in_flight(), 0);
                    return done;
                }
            }
        }
    }

    #[test]
    fn a_request_runs_without_a_task_with_its_checks_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let file = tempfile::tempfile_in(dir.path()).unwrap();
        file.set_len(1 << 20).unwrap();
        let leaf = counted(FileLeaf::new(file, 1 << 20, "file", None));
        let top = DirectTop::new(&leaf);
        let ctx = IoCtx::new(0, 8).unwrap();
        let mut data = ctx.buf(8192);
        data.fill(0x5A);
        let mut write = DirectRequest::write(8192, data.freeze());
        run(top, &ctx, &mut write, |_| {}).unwrap();
        let mut read = DirectRequest::read(8192, ctx.buf(8192));
        run(top, &ctx, &mut read, |_| {}).unwrap();
        let DirectBuf::Read(back) = read.into_buf() else {
            unreachable!()
        };
        assert!(back.iter().all(|&b| b == 0x5A));
        // Past the end: refused before the ring, and counted as an error.
        let mut past_end = DirectRequest::read(1 << 20, ctx.buf(4096));
        let res = top.start(&ctx, &mut past_end, 7);
        assert!(matches!(res, Some(Err(Error::OutOfRange))), "{res:?}");
        assert_eq!(ctx.uring().in_flight(), 0);
        let counts = leaf.node.stats.snapshot();
        assert_eq!((counts.reads, counts.writes, counts.errors), (1, 1, 1));
        assert_eq!((counts.read_bytes, counts.written_bytes), (8192, 8192));
    }

    #[test]
    fn a_mapped_write_lands_in_the_file_counted_and_a_range_past_the_map_is_not_taken() {
        use std::os::unix::fs::FileExt;
        let file = tempfile::tempfile().unwrap();
        file.set_len(64 << 10).unwrap();
        // Mapped as if the file had since grown: only its first 32 KiB.
        let map = crate::file_map::FileMap::new(&file, 32 << 10).unwrap();
        let leaf = FileLeaf::new(file.try_clone().unwrap(), 64 << 10, "file", None);
        let leaf = counted(leaf.with_map(map));
        let top = DirectTop::new(&leaf);
        let ctx = IoCtx::new(0, 8).unwrap();
        let res = top.write_mapped(&ctx, 4096, 8192, |dst| {
            // SAFETY: `dst` points at 8192 mapped bytes of the file.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write_bytes(dst, 0xa5, 8192)
            };
            Ok(())
        });
        assert!(matches!(res, Some(Ok(()))), "{res:?}");
        let mut back = vec![0u8; 8192];
        file.read_exact_at(&mut back, 4096).unwrap();
        assert!(back.iter().all(|&b| b == 0xa5));
        // Past the mapping: left to `start`, nothing counted.
        assert!(top
            .write_mapped(&ctx, 32 << 10, 4096, |_| unreachable!())
            .is_none());
        let fails = |errno| move |_| Err(std::io::Error::from_raw_os_error(errno));
        // A failed copy is the write's error, counted.
        let res = top.write_mapped(&ctx, 0, 4096, fails(libc::EIO));
        assert!(matches!(res, Some(Err(_))), "{res:?}");
        // A page that could not be faulted in inside the file (a full tmpfs):
        // left to `start`, whose `pwrite` says why; counted, not an error.
        assert!(top
            .write_mapped(&ctx, 0, 4096, fails(libc::EFAULT))
            .is_none());
        // The same past the file's end (truncated behind the leaf): an error.
        file.set_len(8192).unwrap();
        let res = top.write_mapped(&ctx, 8192, 4096, fails(libc::EFAULT));
        assert!(matches!(res, Some(Err(_))), "{res:?}");
        let counts = leaf.node.stats.snapshot();
        assert_eq!(
            (counts.writes, counts.written_bytes, counts.errors),
            (4, 20480, 2)
        );
    }

    /// What `read_mapped` copies from the file at `offset`: `None` when it
    /// leaves the read to `start`.
    fn read_mapped_bytes(
        top: DirectTop<'_>,
        ctx: &IoCtx,
        offset: u64,
        len: usize,
    ) -> Option<Result<Vec<u8>>> {
        let mut out = vec![0u8; len];
        let res = top.read_mapped(ctx, offset, len, |src| {
            // SAFETY: `src` points at `len` mapped bytes of the file.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len)
            };
            Ok(())
        })?;
        Some(res.map(|()| out))
    }

    #[test]
    fn a_mapped_read_takes_only_pages_known_to_hold_data() {
        use std::os::unix::fs::FileExt;
        let file = tempfile::tempfile().unwrap();
        file.set_len(64 << 10).unwrap();
        file.write_all_at(&[0x11; 4096], 8192).unwrap();
        let map = crate::file_map::FileMap::new(&file, 64 << 10).unwrap();
        let leaf = FileLeaf::new(file.try_clone().unwrap(), 64 << 10, "file", None);
        let leaf = counted(leaf.with_map(map));
        let top = DirectTop::new(&leaf);
        let ctx = IoCtx::new(0, 8).unwrap();
        // Data found at open is read through the map; a hole, or a range
        // that is half hole, is left to `pread`.
        let got = read_mapped_bytes(top, &ctx, 8192, 4096).unwrap().unwrap();
        assert!(got.iter().all(|&b| b == 0x11));
        assert!(read_mapped_bytes(top, &ctx, 0, 4096).is_none());
        assert!(read_mapped_bytes(top, &ctx, 8192, 8192).is_none());
        // A write through `start`, through the map, or through the task
        // path makes its pages readable through the map.
        let mut data = ctx.buf(4096);
        data.fill(0x22);
        let mut write = DirectRequest::write(12288, data.freeze());
        run(top, &ctx, &mut write, |_| {}).unwrap();
        let res = top.write_mapped(&ctx, 16384, 4096, |dst| {
            // SAFETY: `dst` points at 4096 mapped bytes of the file.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write_bytes(dst, 0x33, 4096)
            };
            Ok(())
        });
        assert!(matches!(res, Some(Ok(()))), "{res:?}");
        let got = read_mapped_bytes(top, &ctx, 8192, 12288).unwrap().unwrap();
        assert!(got[..4096].iter().all(|&b| b == 0x11));
        assert!(got[4096..8192].iter().all(|&b| b == 0x22));
        assert!(got[8192..].iter().all(|&b| b == 0x33));
        // A discard that covers a page in part leaves it readable there;
        // the page it covers whole is a hole again.
        let exec = crate::exec::Executor::new().unwrap();
        let res = exec.block_on(&ctx, AsyncLayer::discard(&*leaf.inner, &ctx, 12288, 6144));
        res.unwrap();
        assert!(read_mapped_bytes(top, &ctx, 12288, 4096).is_none());
        assert!(read_mapped_bytes(top, &ctx, 16384, 4096).is_some());
        // A copy that faults: left to `pread`, and so is the range after it.
        let res = top.read_mapped(&ctx, 8192, 4096, |_| {
            Err(std::io::Error::from_raw_os_error(libc::EFAULT))
        });
        assert!(res.is_none());
        assert!(read_mapped_bytes(top, &ctx, 8192, 4096).is_none());
        // Any other failed copy is the read's error.
        let res = top.read_mapped(&ctx, 16384, 4096, |_| {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        });
        assert!(matches!(res, Some(Err(Error::Io(libc::EIO)))), "{res:?}");
    }

    #[test]
    fn a_null_top_answers_on_the_spot_with_zeros_and_counts() {
        let leaf = counted(NullLeaf::new(1 << 20));
        let top = DirectTop::null(&leaf);
        let ctx = IoCtx::new(0, 8).unwrap();
        let mut data = ctx.buf(8192);
        data.fill(0x5A);
        let mut write = DirectRequest::write(0, data.freeze());
        assert!(top.takes(&write));
        assert!(matches!(top.start(&ctx, &mut write, 7), Some(Ok(()))));
        // A buffer holding old bytes reads back zeros.
        let mut junk = ctx.buf(8192);
        junk.fill(0xee);
        let mut read = DirectRequest::read(8192, junk);
        assert!(matches!(top.start(&ctx, &mut read, 7), Some(Ok(()))));
        let DirectBuf::Read(back) = read.into_buf() else {
            unreachable!()
        };
        assert!(back.iter().all(|&b| b == 0), "a null read left old bytes");
        let mut past_end = DirectRequest::read(1 << 20, ctx.buf(4096));
        let res = top.start(&ctx, &mut past_end, 7);
        assert!(matches!(res, Some(Err(Error::OutOfRange))), "{res:?}");
        assert_eq!(ctx.uring().in_flight(), 0, "nothing went to the ring");
        let counts = leaf.node.stats.snapshot();
        assert_eq!((counts.reads, counts.writes, counts.errors), (1, 1, 1));
    }

    /// A leaf over a socket: reads complete with what has arrived.
    fn socket_leaf() -> (Counted<FileLeaf>, UnixStream) {
        let (theirs, ours) = UnixStream::pair().unwrap();
        let leaf = FileLeaf::new(File::from(OwnedFd::from(theirs)), 1 << 20, "file", None);
        (counted(leaf), ours)
    }

    /// `leaf` with its counters, as the stack holds it.
    fn counted<L: AsyncLayer>(leaf: L) -> Counted<L> {
        let node = Node {
            name: "leaf".into(),
            type_name: "file",
            children: Vec::new(),
            layer: Arc::new(crate::null::NullLeaf::new(1 << 20)),
            stats: LayerStats::default(),
        };
        Counted::new(node, 512, Arc::new(leaf))
    }

    #[test]
    fn a_short_read_goes_on_from_where_it_stopped() {
        // The file holds half of what is read at first: the read completes
        // short, and the rest, asked for after it, finds the other half
        // appended meanwhile.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leaf.img");
        std::fs::write(&path, [0xaa; 4096]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let leaf = counted(FileLeaf::new(file, 1 << 20, "file", None));
        let top = DirectTop::new(&leaf);
        let ctx = IoCtx::new(0, 8).unwrap();
        let mut req = DirectRequest::read(0, ctx.buf(8192));
        let res = run(top, &ctx, &mut req, |completions| {
            if completions == 1 {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(&[0xbb; 4096]).unwrap();
            }
        });
        res.unwrap();
        let DirectBuf::Read(back) = req.into_buf() else {
            unreachable!()
        };
        assert!(back[..4096].iter().all(|&b| b == 0xaa));
        assert!(
            back[4096..].iter().all(|&b| b == 0xbb),
            "the rest landed after the first part"
        );
        // With nothing appended, the rest is past the end of the file: an
        // error, never zeros.
        let mut req = DirectRequest::read(8192, ctx.buf(8192));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0xcc; 4096])
            .unwrap();
        let res = run(top, &ctx, &mut req, |_| {});
        assert!(matches!(res, Err(Error::Io(libc::EIO))), "{res:?}");
    }

    /// The request is dropped while its read is in the kernel: the memory stays
    /// with the ring's slot until the CQE, so a later request never gets it.
    #[test]
    fn a_dropped_request_never_lets_its_read_into_a_later_requests_buffer() {
        let (leaf, mut ours) = socket_leaf();
        let top = DirectTop::new(&leaf);
        let ctx = IoCtx::new(0, 8).unwrap();
        let old = ctx.buf(4096);
        let old_memory = old.as_ptr();
        let mut req = DirectRequest::read(0, old);
        assert!(top.start(&ctx, &mut req, 7).is_none());
        ctx.uring().submit_and_wait(0).unwrap();
        drop(req);
        let mut new = ctx.buf(4096);
        new.fill(0xbb);
        ours.write_all(&[0xaa; 4096]).unwrap();
        let mut tokens = Vec::new();
        while ctx.uring().in_flight() > 0 {
            ctx.uring().submit_and_wait(1).unwrap();
            ctx.uring().reap(&mut |token, _| tokens.push(token));
        }
        assert_eq!(tokens, [7], "the completion still comes back");
        assert!(
            new.iter().all(|&b| b == 0xbb),
            "the dropped request's read wrote into a later request's buffer"
        );
        drop(new);
        let again = [ctx.buf(4096), ctx.buf(4096)];
        assert!(again.iter().any(|b| b.as_ptr() == old_memory));
    }
}

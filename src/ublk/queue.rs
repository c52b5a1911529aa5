//! One ublk queue: a pinned thread that turns kernel requests into stack calls.
//!
//! The thread owns the queue's io_uring (shared with the leaves' I/O through
//! [`IoCtx`]), its executor, a read-only mapping of the queue's request
//! descriptors, and one buffer per tag. At start it arms every tag with FETCH_REQ.
//! Each completion of a tag's command either carries a request (result 0: the
//! descriptor at `tag` says what) or says the device is going away
//! (UBLK_IO_RES_ABORT). For a request, one executor task runs it on the stack and
//! finishes by pushing COMMIT_AND_FETCH_REQ with the result, which both completes
//! the request and re-arms the tag. When every tag has been aborted and no task
//! or request is left, the thread returns.
//!
//! A read or write to a stack whose top is a `file` or `disk` leaf runs without
//! a task (`serve_direct`, `layers::direct`): the leaf's ring operation is pushed
//! as the request arrives and its completion commits the tag, as a plain
//! io_uring loop would, with the same range check, counters and buffer rules.
//! A `null` top answers at once, the same way.
//! Flushes, discards, FUA writes and requests whose buffer the queue registers
//! itself still take a task.
//!
//! Copy mode, not UBLK_F_USER_COPY: the kernel copies write data into the tag's
//! buffer before the FETCH completes and copies read data out of it while handling
//! the COMMIT, so one request costs one command round trip. USER_COPY would save the
//! per-tag buffers (depth × max_io_buf_bytes of address space per queue, mostly never
//! touched) at the price of an extra pread/pwrite on /dev/ublkcN per request; for the
//! small random I/O this daemon is judged on, copy mode does less work per request.
//! Measured on the 6.12 test VM (TCG, 2 vCPUs; medians of three 5 s fio runs at
//! 4 KiB QD32, file leaf on tmpfs) with a throwaway USER_COPY variant: randread
//! 6.5k IOPS copy vs 5.5k user copy, randwrite 6.2k vs 8.1k, with a run-to-run
//! spread of ±50 % on that shared host. No clear winner, so the simpler mode stays;
//! USER_COPY becomes worth it when depth × max_io_buf_bytes of buffers per queue
//! is too much memory, or for zoned devices (which require it). It is used
//! beside zero copy for the small requests of a tmpfs file (`user_copy.rs`),
//! and alone for every request of such a file where the kernel has no zero
//! copy (`DataPath::UserCopy`): a request then goes straight between its pages
//! and the file's mapped ones, one copy where copy mode makes two. In that
//! mode a request the mapping cannot serve goes through the tag's buffer, the
//! queue copying a WRITE's data in before the stack runs and a READ's out
//! after it.
//!
//! Zero copy (`zero_copy.rs`), on kernels and stacks that allow it: the ring
//! gets a sparse fixed-buffer table of one entry per tag, each request's buffer
//! is registered at its tag's index (by the kernel with AUTO_BUF_REG, or here
//! with REGISTER_IO_BUF), and the request is lent to the stack as that fixed
//! buffer; COMMIT waits for the lease exactly as in copy mode, so the index is
//! never unregistered, nor given to the tag's next request, while a leaf
//! operation still names it. The tag buffers are still mapped, as the stand-in
//! bytes of fixed buffers (`buf.rs`), but the kernel does not copy into them.
//!
//! Sectors (512 bytes) are converted to byte offsets here and nowhere else.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, types};
use layers::buf::Lease;
use layers::direct::{DirectRequest, DirectTop};
use layers::uring::{Op, FOREIGN_BIT};
use layers::{Error, Executor, IoBufMut, IoCtx, Stack};
use nix::sys::eventfd::EventFd;

use super::queue_threads::TagShare;
use super::shared_memory::{pin_current_thread, Descriptors, TagBuffers};
use super::sys::{self, IoCmd, IoDesc};
use super::user_copy;
use super::zero_copy::{self, AutoBufReg, AutoRegMiss, DataPath};

const SECTOR_BYTES: u64 = 512;
/// In `user_data` (with [`FOREIGN_BIT`]): the completion of a request's leaf
/// operation run without a task (`serve_direct`), not of a ublk command.
const DIRECT_BIT: u64 = 1 << 62;
/// How often a request whose buffer is still held by a leftover operation looks
/// again (only after a layer dropped an operation in flight, which none does).
const LEASE_POLL_NANOS: u64 = 1_000_000;

/// What a queue serves: a compiled stack, held by the daemon.
pub trait TopLayer: Send + Sync + 'static {
    fn stack(&self) -> &Stack;
}

/// Everything a queue thread needs to know, decided before the thread starts.
#[derive(Clone, Debug)]
pub struct QueueSetup {
    pub queue: u16,
    pub depth: u16,
    /// The queue's tags this thread arms and serves (`queue_threads`).
    pub share: TagShare,
    /// Size of each tag's buffer (the device's max_io_buf_bytes).
    pub buf_bytes: usize,
    pub block_size: u32,
    /// Use ioctl-encoded I/O opcodes.
    pub ioctl_encode: bool,
    /// CPUs to pin the thread to (empty: leave it unpinned).
    pub cpus: Vec<usize>,
    /// The device's data path (from the flags it was created with).
    pub data_path: DataPath,
    /// Zero copy with USER_COPY too: reads and writes up to this size to a
    /// top served on the queue thread are copied by the queue (`user_copy`);
    /// `Max::default()` (0) for none.
    pub user_copy_max: user_copy::Max,
    /// Serve the queue with the batch protocol (`batch::run`), not per tag.
    pub batch: bool,
    /// Batch protocol: an eventfd that, once written, makes the queue drain
    /// and end for a handover (`batch::run`).
    pub drain: Option<Arc<EventFd>>,
    /// Test only: tags whose automatic registration is made to fail.
    pub auto_reg_miss: AutoRegMiss,
    /// Test only: how long a draining batch queue waits, its FETCHes armed,
    /// before it ends (`batch::drain_hold`).
    pub drain_hold: Duration,
}

/// How a queue ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueReport {
    pub requests: u64,
    pub errors: u64,
    /// Zero copy: requests whose buffer the kernel did not register itself,
    /// registered by the queue instead.
    pub registered_here: u64,
    /// Zero copy with user copy: requests copied by the queue.
    pub user_copied: u64,
    /// Of those, requests copied straight from or into the file's mapped
    /// pages rather than through the tag's buffer.
    pub mapped: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TagState {
    /// FETCH or COMMIT_AND_FETCH in the kernel, waiting for a request.
    Armed,
    /// A task is serving the request.
    Serving,
    /// Aborted or failed: the tag gets no more requests.
    Done,
}

/// State shared by the queue loop and its tasks (all on the queue thread).
/// The batch protocol (`batch`) uses it too, all but the per-tag states.
pub(super) struct Queue {
    pub(super) setup: QueueSetup,
    pub(super) char_fd: RawFd,
    pub(super) ctx: IoCtx,
    pub(super) descs: Descriptors,
    pub(super) buffers: TagBuffers,
    tags: RefCell<Vec<TagState>>,
    done_tags: Cell<usize>,
    pub(super) report: Cell<QueueReport>,
    /// Requests run without a task (`serve_direct`) whose leaf operation is in
    /// the ring, by tag, with the lease on the tag's buffer.
    direct: RefCell<Vec<Option<(DirectRequest, Lease)>>>,
    direct_in_flight: Cell<usize>,
}

impl Queue {
    fn push_command(&self, tag: u16, cmd_op: u32, result: i32) {
        // Zero copy: no buffer of ours in the command.
        let addr = match self.setup.data_path {
            DataPath::Copy => self.buffers.addr(tag) as u64,
            // User copy: the kernel refuses a buffer address.
            DataPath::AutoRegister | DataPath::ExplicitRegister | DataPath::UserCopy => 0,
        };
        let cmd = IoCmd {
            q_id: self.setup.queue,
            tag,
            result,
            addr,
        };
        let mut entry =
            opcode::UringCmd16::new(types::Fd(self.char_fd), cmd_op).cmd(cmd.to_sqe_cmd());
        if self.setup.data_path == DataPath::AutoRegister {
            // Where the kernel registers the request's buffer travels in the
            // SQE's own addr: each tag's buffer goes to the table entry of the
            // same number.
            entry = entry.addr(Some(
                AutoBufReg {
                    index: self.setup.auto_reg_miss.index(tag),
                    flags: zero_copy::UBLK_AUTO_BUF_REG_FALLBACK,
                    ..AutoBufReg::default()
                }
                .to_addr(),
            ));
        }
        let entry = entry.build().user_data(FOREIGN_BIT | u64::from(tag));
        // SAFETY: the command payload is copied into the SQE. It names the tag's
        // buffer (copy mode; otherwise no memory of ours), which stays mapped until every tag is aborted (or forever, see
        // TagBuffers::leak), and the char device fd, which the queue holds until
        // its loop ends after the last tag's final CQE.
        unsafe { self.ctx.uring().push(&entry) };
    }

    fn fetch(&self, tag: u16) {
        let op = if self.setup.ioctl_encode {
            sys::UBLK_U_IO_FETCH_REQ
        } else {
            sys::UBLK_IO_FETCH_REQ
        };
        self.push_command(tag, op, 0);
    }

    fn commit(&self, tag: u16, result: i32) {
        let op = if self.setup.ioctl_encode {
            sys::UBLK_U_IO_COMMIT_AND_FETCH_REQ
        } else {
            sys::UBLK_IO_COMMIT_AND_FETCH_REQ
        };
        if let Some(state) = self.tags.borrow_mut().get_mut(usize::from(tag)) {
            *state = TagState::Armed;
        }
        self.push_command(tag, op, result);
    }

    /// Count a served request and COMMIT its result (bytes, or a negative errno).
    fn answer(&self, tag: u16, result: i32) {
        let mut report = self.report.get();
        report.requests += 1;
        if result < 0 {
            report.errors += 1;
        }
        self.report.set(report);
        self.commit(tag, result);
    }

    fn finish_tag(&self, tag: u16) {
        let mut tags = self.tags.borrow_mut();
        if let Some(state) = tags.get_mut(usize::from(tag)) {
            if *state != TagState::Done {
                *state = TagState::Done;
                self.done_tags.set(self.done_tags.get() + 1);
            }
        }
    }

    /// The first `len` bytes of the tag's buffer, lent to the request as its
    /// own buffer: the stack reads into it and writes from it with no copy. Only
    /// for the one task serving the tag's current request, which must not COMMIT
    /// before the lease says the memory is back.
    ///
    /// The buffer's known zeros (a null leaf's last read) go with it, except
    /// for a WRITE: the kernel has just copied the request's data in.
    fn lend_buffer(&self, tag: u16, len: usize, op: u8) -> (IoBufMut, Lease) {
        assert!(len <= self.buffers.per_tag() && tag < self.setup.depth);
        let ptr = NonNull::new(self.buffers.addr(tag)).expect("tag buffers are mapped");
        let zeros = self.buffers.zeros(tag);
        if op != sys::UBLK_IO_OP_READ {
            zeros.forget();
        }
        // SAFETY: the tag's `per_tag` bytes stay mapped for the queue's life, or
        // forever (TagBuffers::leak). Nothing but the lent handle touches them
        // until the lease is returned: the kernel copies in before completing the
        // FETCH and copies out only while handling the COMMIT, which the serving
        // task pushes only after the lease is returned (`serve_range`); the tag
        // has no other request until then (the kernel re-arms a tag only through
        // that COMMIT, and `on_command_done` refuses a request on a tag that is
        // not armed).
        unsafe { IoBufMut::lend(ptr, len, Some(zeros.clone())) }
    }

    /// Zero copy: the request's buffer, registered at the tag's index of the
    /// ring's table, lent to the request as a fixed buffer, on the same terms
    /// as [`Queue::lend_buffer`]. The tag's own buffer stands in for its bytes.
    fn lend_fixed(&self, tag: u16, len: usize) -> (IoBufMut, Lease) {
        assert!(len <= self.buffers.per_tag() && tag < self.setup.depth);
        let ptr = NonNull::new(self.buffers.addr(tag)).expect("tag buffers are mapped");
        // SAFETY: as in lend_buffer for the stand-in bytes (in zero-copy mode
        // the kernel does not touch them at all). The registration at index
        // `tag` stays until the request is committed (AUTO_BUF_REG) or
        // unregistered by `serve_range`, both only after the lease is returned.
        unsafe { IoBufMut::lend_fixed(ptr, len, tag) }
    }

    /// Send UBLK_U_IO_(UN)REGISTER_IO_BUF for the tag's request at index `tag`
    /// and wait for the answer (0 or a negative errno).
    async fn buffer_command(&self, tag: u16, cmd_op: u32) -> i32 {
        let cmd = IoCmd {
            q_id: self.setup.queue,
            tag,
            result: 0,
            addr: u64::from(tag),
        };
        self.ctx
            .uring()
            .submit(Op::UringCmd16 {
                fd: self.char_fd,
                cmd_op,
                cmd: cmd.to_sqe_cmd(),
            })
            .await
    }
}

/// Run one queue until the device is stopped. `char_fd` is the device's
/// /dev/ublkcN (one open file shared by all queues: the driver allows one opener).
/// `armed` is called once every tag has been handed to the kernel (or with the
/// error that prevented it); START_DEV must not be issued before.
pub fn run<T: TopLayer>(
    setup: QueueSetup,
    char_fd: Arc<OwnedFd>,
    stack: Arc<T>,
    armed: impl FnOnce(io::Result<()>),
) -> io::Result<QueueReport> {
    let (queue, exec) = match prepare(setup, &char_fd) {
        Ok(parts) => parts,
        Err(e) => {
            armed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    let share = queue.setup.share;
    for tag in (0..queue.setup.depth).filter(|&tag| share.owns(tag)) {
        queue.fetch(tag);
    }
    // Hand the FETCHes to the kernel now: START_DEV waits for them.
    if let Err(e) = queue.ctx.uring().submit_and_wait(0) {
        armed(Err(io::Error::new(e.kind(), e.to_string())));
        abandon(queue, exec);
        return Err(e);
    }
    // A FETCH the kernel refuses answers at once; START_DEV would then wait
    // forever for that tag, so the device is given up here instead.
    if let Some(res) = refused_fetch(&queue) {
        let e = io::Error::from_raw_os_error(-res);
        armed(Err(io::Error::new(
            e.kind(),
            format!("the kernel refused to arm a tag: {e}"),
        )));
        abandon(queue, exec);
        return Err(e);
    }
    armed(Ok(()));

    let depth = share.count(queue.setup.depth);
    // After a QUIESCE_DEV the kernel aborts only the tags armed at that moment:
    // a tag re-armed by a later COMMIT is never aborted (the kernel holds new
    // requests instead of handing them out). So once any tag is aborted, the
    // queue ends when no request is left in flight.
    let waiting = || queue.done_tags.get() < depth && queue.done_tags.get() == 0;
    while waiting() || exec.live_tasks() > 0 || queue.direct_in_flight.get() > 0 {
        // A tag not done has its command in the kernel or a task serving it.
        let turned = exec.turn(&queue.ctx, &waiting, &mut |user_data, res| {
            on_command_done(&queue, &exec, &stack, user_data, res)
        });
        if let Err(e) = turned {
            tracing::error!(queue = queue.setup.queue, "queue loop failed: {e}");
            abandon(queue, exec);
            return Err(e);
        }
    }
    let report = queue.report.get();
    // The last COMMITs must reach the kernel: an uncommitted request would be
    // served again by the next daemon.
    queue.ctx.uring().submit_and_wait(0)?;
    if queue.done_tags.get() < depth {
        // Commands still armed (after a quiesce) are cancelled when the ring
        // closes; their buffers are left alone rather than freed under them.
        abandon(queue, exec);
        return Ok(report);
    }
    // Orderly end: no task is left and the kernel holds no command of ours.
    drop(exec);
    drop(queue);
    drop(char_fd);
    Ok(report)
}

/// The error of a FETCH already answered, if any. Before START_DEV (or
/// END_USER_RECOVERY) no request can arrive, so any answer is a refusal.
fn refused_fetch(queue: &Queue) -> Option<i32> {
    let mut refused = None;
    queue.ctx.uring().reap(&mut |_, res| {
        if refused.is_none() {
            refused = Some(res.min(-libc::EIO));
        }
    });
    refused
}

/// Tear down after a failure that may leave commands in the kernel: the tag
/// buffers are leaked rather than freed under a possible kernel copy.
pub(super) fn abandon(queue: Rc<Queue>, exec: Executor) {
    drop(exec);
    match Rc::try_unwrap(queue) {
        Ok(queue) => {
            let Queue {
                buffers,
                ctx,
                descs,
                ..
            } = queue;
            drop(ctx);
            drop(descs);
            buffers.leak();
        }
        // A task still holds the queue; the Rc cycle keeps everything alive.
        Err(queue) => std::mem::forget(queue),
    }
}

pub(super) fn prepare(setup: QueueSetup, char_fd: &OwnedFd) -> io::Result<(Rc<Queue>, Executor)> {
    if !setup.cpus.is_empty() {
        if let Err(e) = pin_current_thread(&setup.cpus) {
            tracing::warn!(
                queue = setup.queue,
                "could not pin to CPUs {:?}: {e}",
                setup.cpus
            );
        }
    }
    // Room for every tag's command plus leaf I/O; overflow waits in the
    // engine's backlog, so this is a performance choice, not a limit.
    let entries = (u32::from(setup.depth) * 2)
        .next_power_of_two()
        .clamp(64, 4096);
    let ctx = IoCtx::new(setup.queue, entries)?;
    if setup.data_path.is_zero_copy() {
        // One entry per tag, each left empty until a request's buffer is
        // registered there.
        ctx.uring()
            .ring()
            .borrow()
            .submitter()
            .register_buffers_sparse(u32::from(setup.depth))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("zero copy: registering a fixed-buffer table: {e}"),
                )
            })?;
    }
    let exec = Executor::new()?;
    let descs = Descriptors::map(char_fd.as_raw_fd(), setup.queue, setup.depth)?;
    let buffers = TagBuffers::new(setup.depth, setup.buf_bytes)?;
    let depth = usize::from(setup.depth);
    let queue = Queue {
        // Another thread's tags are never armed here: a request on one is
        // refused as a request on a tag not armed.
        tags: RefCell::new(
            (0..setup.depth)
                .map(|tag| {
                    if setup.share.owns(tag) {
                        TagState::Armed
                    } else {
                        TagState::Done
                    }
                })
                .collect(),
        ),
        char_fd: char_fd.as_raw_fd(),
        setup,
        ctx,
        descs,
        buffers,
        done_tags: Cell::new(0),
        report: Cell::new(QueueReport::default()),
        direct: RefCell::new((0..depth).map(|_| None).collect()),
        direct_in_flight: Cell::new(0),
    };
    Ok((Rc::new(queue), exec))
}

fn on_command_done<T: TopLayer>(
    queue: &Rc<Queue>,
    exec: &Executor,
    stack: &Arc<T>,
    user_data: u64,
    res: i32,
) {
    if user_data & DIRECT_BIT != 0 {
        direct_done(queue, exec, stack.stack(), user_data, res);
        return;
    }
    let raw_tag = user_data & !FOREIGN_BIT;
    let Ok(tag) = u16::try_from(raw_tag) else {
        tracing::error!(
            queue = queue.setup.queue,
            "completion for unknown user_data {user_data:#x}"
        );
        return;
    };
    if tag >= queue.setup.depth {
        tracing::error!(
            queue = queue.setup.queue,
            "completion for tag {tag} beyond depth"
        );
        return;
    }
    match res {
        sys::UBLK_IO_RES_OK => {
            {
                let mut tags = queue.tags.borrow_mut();
                let Some(state) = tags.get_mut(usize::from(tag)) else {
                    return;
                };
                if *state != TagState::Armed {
                    // A second request on a tag we are still serving would alias
                    // its buffer (see Queue::buffer): refuse to start it.
                    tracing::error!(
                        queue = queue.setup.queue,
                        tag,
                        "request on a tag that is not armed; ignored"
                    );
                    return;
                }
                *state = TagState::Serving;
            }
            let desc = queue.descs.get(tag);
            if serve_direct(queue, exec, stack.stack(), tag, &desc) {
                return;
            }
            let queue = queue.clone();
            let stack = stack.clone();
            exec.spawn(async move {
                let result = serve(&queue, stack.stack(), tag, desc).await;
                queue.answer(tag, result);
            });
        }
        sys::UBLK_IO_RES_ABORT => queue.finish_tag(tag),
        other => {
            // NEED_GET_DATA (never requested) or a refused command: the tag is
            // unusable. Say so loudly; stopping the device still completes.
            tracing::error!(
                queue = queue.setup.queue,
                tag,
                "ublk command failed: result {other}"
            );
            queue.finish_tag(tag);
        }
    }
}

/// Serve a read or write to a stack whose top is a `file`, `disk` or `null`
/// leaf without a task (`layers::direct`): the leaf's operation goes into the ring
/// now and its completion, tagged [`DIRECT_BIT`], finishes the request in
/// `direct_done`. Returns false, having done nothing, for every request the
/// task path must serve: other operations, FUA writes (a flush follows),
/// buffers the queue registers itself, ranges that are not valid (the task
/// path fails them with their reason), or a buffer the leaf cannot take.
fn serve_direct(
    queue: &Rc<Queue>,
    exec: &Executor,
    stack: &Stack,
    tag: u16,
    desc: &IoDesc,
) -> bool {
    let Some(top) = stack.direct() else {
        return false;
    };
    let op = desc.op();
    let eligible = match op {
        sys::UBLK_IO_OP_READ => true,
        sys::UBLK_IO_OP_WRITE => !desc.has_flag(sys::UBLK_IO_F_FUA),
        _ => false,
    };
    if !eligible {
        return false;
    }
    let Ok((offset, len)) = byte_range(desc, queue.setup.block_size, top.size()) else {
        return false;
    };
    if len > queue.buffers.per_tag() as u64 {
        return false;
    }
    // Zero copy, but this request copied by the queue itself (`user_copy`),
    // straight to or from the file's mapped pages or through the tag's
    // buffer: small, to a top served on this thread. It needs no registered
    // buffer.
    let copied_here = queue.setup.user_copy_max.takes(len) && top.serves_on_the_spot();
    let buffer_ready = match queue.setup.data_path {
        DataPath::Copy => true,
        DataPath::AutoRegister => !desc.has_flag(zero_copy::UBLK_IO_F_NEED_REG_BUF),
        // User copy alone: a top that goes through the ring is served by the
        // task path, which copies around the stack's I/O.
        DataPath::ExplicitRegister | DataPath::UserCopy => false,
    };
    if !(copied_here || buffer_ready) {
        return false;
    }
    if copied_here && serve_mapped(queue, &top, tag, op, offset, len) {
        return true;
    }
    let (mut buf, lease) = if queue.setup.data_path.is_zero_copy() && !copied_here {
        queue.lend_fixed(tag, len as usize)
    } else {
        queue.lend_buffer(tag, len as usize, op)
    };
    if copied_here && op == sys::UBLK_IO_OP_WRITE {
        if let Err(e) = user_copy::copy_in(queue.char_fd, queue.setup.queue, tag, &mut buf) {
            let e = copy_failed(queue, tag, "write", e);
            drop(buf);
            direct_answer(queue, exec, tag, None, lease, len, Err(e));
            return true;
        }
    }
    let mut req = if op == sys::UBLK_IO_OP_READ {
        DirectRequest::read(offset, buf)
    } else {
        DirectRequest::write(offset, buf.freeze())
    };
    if !top.takes(&req) {
        return false;
    }
    if copied_here {
        count_user_copy(queue, false);
    }
    match top.start(
        &queue.ctx,
        &mut req,
        FOREIGN_BIT | DIRECT_BIT | u64::from(tag),
    ) {
        None => {
            // A top that serves on the spot never answers later, so a read
            // copied here never misses its copy out.
            debug_assert!(!copied_here, "a user-copied request went to the ring");
            queue.direct.borrow_mut()[usize::from(tag)] = Some((req, lease));
            queue.direct_in_flight.set(queue.direct_in_flight.get() + 1);
        }
        Some(res) => {
            let res = match (res, req.read_bytes()) {
                (Ok(()), Some(bytes)) if copied_here => {
                    user_copy::copy_out(queue.char_fd, queue.setup.queue, tag, bytes)
                        .map_err(|e| copy_failed(queue, tag, "read", e))
                }
                (res, _) => res,
            };
            direct_answer(queue, exec, tag, Some(req), lease, len, res)
        }
    }
    true
}

/// Serve a request copied by the queue (`user_copy`) straight from or into
/// the file's pages, where the top is a file mapped for it (`file_map`); false
/// when it is not, having done nothing.
fn serve_mapped(
    queue: &Queue,
    top: &DirectTop<'_>,
    tag: u16,
    op: u8,
    offset: u64,
    len: u64,
) -> bool {
    let (q_id, fd, bytes) = (queue.setup.queue, queue.char_fd, len as usize);
    let mapped = if op == sys::UBLK_IO_OP_WRITE {
        top.write_mapped(&queue.ctx, offset, bytes, |dst| {
            // SAFETY: `dst` is where the file's `len` bytes at `offset` are
            // mapped, writable, for as long as the leaf lives.
            unsafe { user_copy::copy_in_at(fd, q_id, tag, dst, bytes) }
        })
    } else {
        top.read_mapped(&queue.ctx, offset, bytes, |src| {
            // SAFETY: `src` is where the file's `len` bytes at `offset` are
            // mapped, for as long as the leaf lives.
            unsafe { user_copy::copy_out_from(fd, q_id, tag, src, bytes) }
        })
    };
    let Some(res) = mapped else {
        return false;
    };
    count_user_copy(queue, true);
    if let Err(e) = &res {
        tracing::error!(
            queue = q_id,
            tag,
            "user copy between the request and the file's mapped pages: {e}"
        );
    }
    queue.answer(tag, direct_result(queue, tag, len, res));
    true
}

/// One more request copied by the queue; `mapped`: straight from or into the
/// file's pages.
fn count_user_copy(queue: &Queue, mapped: bool) {
    let mut report = queue.report.get();
    report.user_copied += 1;
    report.mapped += u64::from(mapped);
    queue.report.set(report);
}

/// The completion of a `serve_direct` request's leaf operation.
fn direct_done(queue: &Rc<Queue>, exec: &Executor, stack: &Stack, user_data: u64, res: i32) {
    let tag = (user_data & !(FOREIGN_BIT | DIRECT_BIT)) as usize;
    let (Some(top), Some(Some((mut req, lease)))) = (
        stack.direct(),
        queue.direct.borrow_mut().get_mut(tag).map(Option::take),
    ) else {
        tracing::error!(
            queue = queue.setup.queue,
            "completion for unknown user_data {user_data:#x}"
        );
        return;
    };
    let tag = tag as u16;
    match top.complete(&queue.ctx, &mut req, user_data, res) {
        // A short transfer: the rest is in the ring.
        None => queue.direct.borrow_mut()[usize::from(tag)] = Some((req, lease)),
        Some(result) => {
            queue.direct_in_flight.set(queue.direct_in_flight.get() - 1);
            let len = req.bytes() as u64;
            direct_answer(queue, exec, tag, Some(req), lease, len, result);
        }
    }
}

/// Finish a `serve_direct` request: its buffer goes back to the tag, then its
/// result is committed.
fn direct_answer(
    queue: &Rc<Queue>,
    exec: &Executor,
    tag: u16,
    req: Option<DirectRequest>,
    lease: Lease,
    len: u64,
    result: Result<(), Error>,
) {
    drop(req);
    let result = direct_result(queue, tag, len, result);
    if lease.is_returned() {
        queue.answer(tag, result);
        return;
    }
    // The ring frees an operation's hold on the buffer before it reports the
    // completion, so this is not expected; if it happens, the tag waits for
    // its memory as `serve_range` does, and the request fails.
    tracing::error!(
        queue = queue.setup.queue,
        tag,
        "a leaf operation outlived its request; waiting for it"
    );
    let queue = queue.clone();
    exec.spawn(async move {
        while !lease.is_returned() {
            queue
                .ctx
                .uring()
                .submit(Op::Sleep {
                    nanos: LEASE_POLL_NANOS,
                })
                .await;
        }
        queue.answer(tag, -libc::EIO);
    });
}

/// What COMMIT reports for a `serve_direct` request of `len` bytes.
fn direct_result(queue: &Queue, tag: u16, len: u64, result: Result<(), Error>) -> i32 {
    match result {
        Ok(()) => len as i32,
        Err(e) => {
            tracing::debug!(queue = queue.setup.queue, tag, "request failed: {e}");
            e.errno()
        }
    }
}

/// Run one request on the stack; returns what COMMIT reports: bytes transferred
/// for reads and writes, 0 for other successes, a negative errno on failure.
pub(super) async fn serve(queue: &Queue, stack: &Stack, tag: u16, desc: IoDesc) -> i32 {
    let top = stack.top();
    let op = desc.op();
    let result = if op == sys::UBLK_IO_OP_FLUSH {
        // A flush carries no range: its start sector is the block layer's
        // "none" (all ones), which must not be converted.
        top.flush(&queue.ctx).await.map(|()| 0)
    } else {
        match byte_range(&desc, queue.setup.block_size, top.size()) {
            Ok((offset, len)) => serve_range(queue, stack, tag, &desc, offset, len).await,
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(done) => done,
        Err(e) => {
            tracing::debug!(
                queue = queue.setup.queue,
                tag,
                op,
                start_sector = desc.start_sector,
                nr_sectors = desc.nr_sectors,
                "request failed: {e}"
            );
            e.errno()
        }
    }
}

/// The request's sectors as a byte range, checked against the device: inside it
/// and aligned to its block size (the kernel promises both; a bad descriptor
/// must fail the request, not the daemon).
fn byte_range(desc: &IoDesc, block_size: u32, device_bytes: u64) -> Result<(u64, u64), Error> {
    let offset = desc
        .start_sector
        .checked_mul(SECTOR_BYTES)
        .ok_or(Error::OutOfRange)?;
    let len = u64::from(desc.nr_sectors) * SECTOR_BYTES;
    let end = offset.checked_add(len).ok_or(Error::OutOfRange)?;
    let block_size = u64::from(block_size);
    if end > device_bytes || offset % block_size != 0 || len % block_size != 0 {
        return Err(Error::OutOfRange);
    }
    Ok((offset, len))
}

async fn serve_range(
    queue: &Queue,
    stack: &Stack,
    tag: u16,
    desc: &IoDesc,
    offset: u64,
    len: u64,
) -> Result<i32, Error> {
    let ctx = &queue.ctx;
    let op = desc.op();
    if matches!(op, sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE) {
        // Bounded by max_io_buf_bytes (at most 32 MiB by the UAPI), so both
        // conversions are exact.
        if len > queue.buffers.per_tag() as u64 {
            return Err(Error::OutOfRange);
        }
        let register_here = match queue.setup.data_path {
            DataPath::Copy | DataPath::UserCopy => false,
            DataPath::AutoRegister => desc.has_flag(zero_copy::UBLK_IO_F_NEED_REG_BUF),
            DataPath::ExplicitRegister => true,
        };
        // USER_COPY alone: the kernel moves no data, the queue does.
        let user_copy = queue.setup.data_path == DataPath::UserCopy;
        if register_here {
            let res = queue
                .buffer_command(tag, zero_copy::UBLK_U_IO_REGISTER_IO_BUF)
                .await;
            if res < 0 {
                // The kernel would not register it: this request fails, the
                // device and the tag go on.
                tracing::warn!(
                    queue = queue.setup.queue,
                    tag,
                    "zero copy: registering the request's buffer failed: {}",
                    io::Error::from_raw_os_error(-res)
                );
                return Err(Error::Io(libc::EIO));
            }
            let mut report = queue.report.get();
            if report.registered_here == 0 {
                tracing::info!(
                    queue = queue.setup.queue,
                    tag,
                    "zero copy: the kernel delivered a request with its buffer unregistered (UBLK_IO_F_NEED_REG_BUF); registered by the queue"
                );
            }
            report.registered_here += 1;
            queue.report.set(report);
        }
        let (mut buf, lease) = if queue.setup.data_path.is_zero_copy() {
            queue.lend_fixed(tag, len as usize)
        } else {
            queue.lend_buffer(tag, len as usize, op)
        };
        let result = if op == sys::UBLK_IO_OP_READ {
            let mut result = stack.read(ctx, offset, &mut buf).await;
            if user_copy && result.is_ok() {
                result = user_copy::copy_out(queue.char_fd, queue.setup.queue, tag, &buf)
                    .map_err(|e| copy_failed(queue, tag, "read", e));
            }
            drop(buf);
            result
        } else {
            if user_copy {
                if let Err(e) = user_copy::copy_in(queue.char_fd, queue.setup.queue, tag, &mut buf)
                {
                    return Err(copy_failed(queue, tag, "write", e));
                }
            }
            let buf = buf.freeze();
            let result = stack.write(ctx, offset, &buf).await;
            drop(buf);
            result
        };
        if !lease.is_returned() {
            // An operation of this request outlived it (its future was dropped
            // while the kernel still had it): the buffer is not ours to commit
            // or to hand to the next request until that operation completes.
            tracing::error!(
                queue = queue.setup.queue,
                tag,
                "a leaf operation outlived its request; waiting for it"
            );
            while !lease.is_returned() {
                ctx.uring()
                    .submit(Op::Sleep {
                        nanos: LEASE_POLL_NANOS,
                    })
                    .await;
            }
            unregister(queue, tag, register_here).await;
            return Err(Error::Io(libc::EIO));
        }
        unregister(queue, tag, register_here).await;
        if user_copy && result.is_ok() {
            count_user_copy(queue, false);
        }
        result?;
        // We do not advertise FUA, but honour it if it comes anyway.
        if op == sys::UBLK_IO_OP_WRITE && desc.has_flag(sys::UBLK_IO_F_FUA) {
            stack.flush(ctx).await?;
        }
        return Ok(len as i32);
    }
    match op {
        sys::UBLK_IO_OP_DISCARD => stack.top().discard(ctx, offset, len).await?,
        sys::UBLK_IO_OP_WRITE_ZEROES => stack.top().write_zeroes(ctx, offset, len).await?,
        _ => return Err(Error::Unsupported),
    }
    Ok(0)
}

/// Log a failed user copy of a request's data (`what`: read or write).
fn copy_failed(queue: &Queue, tag: u16, what: &str, e: io::Error) -> Error {
    tracing::error!(
        queue = queue.setup.queue,
        tag,
        "user copy of a {what}'s data: {e}"
    );
    Error::from(e)
}

/// Undo a registration made by `serve_range` (`registered`), once no leaf
/// operation names the buffer any more.
async fn unregister(queue: &Queue, tag: u16, registered: bool) {
    if !registered {
        return;
    }
    let res = queue
        .buffer_command(tag, zero_copy::UBLK_U_IO_UNREGISTER_IO_BUF)
        .await;
    if res < 0 {
        // The request then completes when the ring goes away, which
        // unregisters everything; nothing here can do better.
        tracing::error!(
            queue = queue.setup.queue,
            tag,
            "zero copy: unregistering the request's buffer failed: {}",
            io::Error::from_raw_os_error(-res)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(start_sector: u64, nr_sectors: u32) -> IoDesc {
        IoDesc {
            op_flags: u32::from(sys::UBLK_IO_OP_WRITE),
            nr_sectors,
            start_sector,
            addr: 0,
        }
    }

    #[test]
    fn sectors_become_bytes() {
        assert_eq!(byte_range(&desc(8, 16), 4096, 1 << 20), Ok((4096, 8192)));
    }

    #[test]
    fn bad_ranges_fail_the_request() {
        // Past the end, misaligned for 4 KiB blocks, and the all-ones sector the
        // block layer uses for "no sector" (must not overflow).
        assert_eq!(
            byte_range(&desc(2048, 8), 4096, 1 << 20),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            byte_range(&desc(1, 8), 4096, 1 << 20),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            byte_range(&desc(u64::MAX, 0), 4096, 1 << 20),
            Err(Error::OutOfRange)
        );
        assert_eq!(byte_range(&desc(1, 1), 512, 1 << 20), Ok((512, 512)));
    }
}

//! The batch protocol of ublk (UBLK_F_BATCH_IO, Linux 7.0+): an alternative
//! to the per-tag FETCH_REQ / COMMIT_AND_FETCH_REQ commands of `queue.rs`,
//! chosen per device (`choose`).
//!
//! At start the queue hands the kernel every tag in one PREP_IO_CMDS (with
//! its buffer address in copy mode, or its fixed-buffer index with
//! AUTO_BUF_REG), then keeps two multishot FETCH_IO_CMDS armed, each with a
//! buffer of its own (`tag_ring`): every CQE of a FETCH brings the tags of
//! one or more new requests, read from the queue's descriptor array as in
//! the per-tag protocol. Requests are served by the same code (`queue::serve`,
//! zero copy included). Results are not committed one by one: a finished
//! request adds its (tag, result) to a pending list, and the first one to do
//! so waits until every request woken in the same round of the executor has
//! run, then sends the whole list as one COMMIT_IO_CMDS. So a burst of
//! requests costs one FETCH completion and one COMMIT instead of one command
//! each.
//!
//! Every request is committed exactly once: a tag is taken only while it is
//! not being served, and given back only when its result goes into a COMMIT.
//! The kernel answers a COMMIT with how many bytes of elements it handled;
//! an element it refuses is reported and left out, and the rest are sent
//! again, so one bad element never holds back the others.
//!
//! Ending: STOP_DEV makes the kernel end the FETCH commands with
//! UBLK_IO_RES_ABORT once the requests in flight are done; the queue then
//! ends when no request is being served and no COMMIT is in flight. A FETCH
//! that ends because its buffer is used up (-ENOBUFS) or on its own is issued
//! again with the buffer refilled.
//!
//! Draining for a handover (`QueueSetup::drain` signalled): the queue starts
//! no request from then on, finishes and commits those it serves, and ends
//! with its FETCHes still armed; closing the ring then cancels them as when a
//! daemon dies, and the kernel requeues what it had handed out since (see
//! `device::handover`). For tests, `QueueSetup::drain_hold` keeps the queue
//! waiting that long before it ends (`drain_hold`).

pub mod choose;
pub mod drain_hold;
mod tag_ring;
pub mod uapi;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use io_uring::{opcode, squeue, types};
use layers::uring::FOREIGN_BIT;
use layers::Executor;

use super::queue::{self, Queue, QueueReport, QueueSetup, TopLayer};
use super::sys;
use super::zero_copy::DataPath;
use tag_ring::TagRing;
use uapi::ElemFormat;

/// What a foreign CQE answers, in bits 32-39 of its user_data; the low 32
/// bits say which FETCH slot or which COMMIT.
const KIND_MASK: u64 = 0xff << 32;
const KIND_PREP: u64 = 1 << 32;
const KIND_FETCH: u64 = 2 << 32;
const KIND_COMMIT: u64 = 3 << 32;
const KIND_DRAIN: u64 = 4 << 32;
const KIND_HOLD: u64 = 5 << 32;
/// FETCH commands kept armed: while the kernel fills one, the other is ready.
const FETCHES: usize = 2;
/// `IORING_URING_CMD_MULTISHOT`, in the SQE's uring_cmd_flags.
const IORING_URING_CMD_MULTISHOT: u32 = 1 << 1;
/// `IORING_CQE_F_MORE`: the multishot command goes on.
const IORING_CQE_F_MORE: u32 = 1 << 1;

/// The batch state of one queue (on the queue thread).
struct Batch {
    format: ElemFormat,
    /// Per tag: a request is being served (taken from a FETCH, not yet in a COMMIT).
    serving: RefCell<Vec<bool>>,
    /// Results waiting for the next COMMIT.
    pending: RefCell<Vec<(u16, i32)>>,
    /// A request has taken it on itself to send the pending results.
    flush_due: Cell<bool>,
    /// Element arrays of the COMMITs in flight (the kernel reads them).
    commits: RefCell<HashMap<u32, Vec<u8>>>,
    next_commit: Cell<u32>,
    rings: Vec<TagRing>,
    fetch_live: Vec<Cell<bool>>,
    /// The kernel aborted a FETCH: the device is stopping or quiescing.
    aborted: Cell<bool>,
    /// Draining for a handover: no request is started any more.
    draining: Cell<bool>,
    /// Requests the kernel handed out while draining, left to it.
    left: Cell<u64>,
    /// Test only (`drain_hold`): how long to go on after the drain signal.
    hold: Option<types::Timespec>,
    /// That wait is under way.
    holding: Cell<bool>,
}

impl Batch {
    fn new(queue: &Queue) -> io::Result<Batch> {
        let setup = &queue.setup;
        let format = ElemFormat::new(
            setup.data_path == DataPath::Copy,
            setup.data_path == DataPath::AutoRegister,
        )
        .with_miss(setup.auto_reg_miss);
        let mut rings = Vec::with_capacity(FETCHES);
        for group in 0..FETCHES as u16 {
            let ring = TagRing::new(setup.depth, group)?;
            ring.register(queue.ctx.uring()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("batch I/O: registering a tag buffer ring: {e}"),
                )
            })?;
            rings.push(ring);
        }
        Ok(Batch {
            format,
            serving: RefCell::new(vec![false; usize::from(setup.depth)]),
            pending: RefCell::new(Vec::new()),
            flush_due: Cell::new(false),
            commits: RefCell::new(HashMap::new()),
            next_commit: Cell::new(0),
            rings,
            fetch_live: (0..FETCHES).map(|_| Cell::new(false)).collect(),
            aborted: Cell::new(false),
            draining: Cell::new(false),
            left: Cell::new(0),
            hold: (!setup.drain_hold.is_zero()).then(|| {
                types::Timespec::new()
                    .sec(setup.drain_hold.as_secs())
                    .nsec(setup.drain_hold.subsec_nanos())
            }),
            holding: Cell::new(false),
        })
    }

    fn any_fetch_live(&self) -> bool {
        self.fetch_live.iter().any(Cell::get)
    }

    /// Whether a CQE of ours may still come, or results wait to be sent.
    fn busy(&self) -> bool {
        (!self.aborted.get() && !self.draining.get() && self.any_fetch_live())
            || self.holding.get()
            || !self.commits.borrow().is_empty()
            || !self.pending.borrow().is_empty()
    }

    fn elements(&self, queue: &Queue, tags: impl Iterator<Item = (u16, i32)>) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::from(queue.setup.depth) * self.format.elem_bytes());
        for (tag, result) in tags {
            self.format
                .push(&mut out, tag, result, queue.buffers.addr(tag) as u64);
        }
        out
    }

    fn push_fetch(&self, queue: &Queue, slot: usize) {
        let cmd = uapi::fetch_header(queue.setup.queue, queue.setup.depth).to_sqe_cmd();
        let group = self.rings[slot].group;
        let entry =
            opcode::UringCmd16::new(types::Fd(queue.char_fd), uapi::UBLK_U_IO_FETCH_IO_CMDS)
                .cmd(cmd)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(FOREIGN_BIT | KIND_FETCH | slot as u64);
        let entry = patch_sqe(entry, |sqe| {
            sqe[28..32].copy_from_slice(&IORING_URING_CMD_MULTISHOT.to_ne_bytes());
            sqe[40..42].copy_from_slice(&group.to_ne_bytes());
        });
        self.fetch_live[slot].set(true);
        // SAFETY: the command names the slot's buffer group, whose memory stays
        // allocated until the ring is closed (or forever, see `abandon`), and
        // the char device fd, held by the queue until its loop ends.
        unsafe { queue.ctx.uring().push(&entry) };
    }

    /// Send `elems` (whole elements of `self.format`) as one COMMIT_IO_CMDS.
    fn push_commit(&self, queue: &Queue, elems: Vec<u8>) {
        let nr_elem = elems.len() / self.format.elem_bytes();
        // At most one element per tag, so at most `depth` (a u16).
        let header = uapi::header(queue.setup.queue, self.format, nr_elem as u16);
        let id = self.next_commit.get();
        self.next_commit.set(id.wrapping_add(1));
        let entry =
            opcode::UringCmd16::new(types::Fd(queue.char_fd), uapi::UBLK_U_IO_COMMIT_IO_CMDS)
                .cmd(header.to_sqe_cmd())
                .addr(Some(elems.as_ptr() as u64))
                .build()
                .user_data(FOREIGN_BIT | KIND_COMMIT | u64::from(id));
        let len = elems.len() as u32;
        let entry = patch_sqe(entry, |sqe| sqe[24..28].copy_from_slice(&len.to_ne_bytes()));
        // The Vec's heap memory does not move when the Vec does.
        self.commits.borrow_mut().insert(id, elems);
        // SAFETY: the element array stays in `commits` until this command's
        // CQE (or forever, see `abandon`); in copy mode it names tag buffers,
        // which outlive the ring as in the per-tag protocol.
        unsafe { queue.ctx.uring().push(&entry) };
    }

    /// Send every pending result in one COMMIT, giving their tags back.
    fn flush(&self, queue: &Queue) {
        self.flush_due.set(false);
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if pending.is_empty() {
            return;
        }
        {
            let mut serving = self.serving.borrow_mut();
            for &(tag, _) in &pending {
                serving[usize::from(tag)] = false;
            }
        }
        let elems = self.elements(queue, pending.into_iter());
        self.push_commit(queue, elems);
    }
}

/// Edit the raw bytes of an SQE for fields the `io-uring` builders do not
/// set on a passthrough command (`len`, `uring_cmd_flags`, `buf_group`).
fn patch_sqe(entry: squeue::Entry, edit: impl FnOnce(&mut [u8; 64])) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is a #[repr(C)] wrapper of `io_uring_sqe`, 64
    // bytes of plain integers and unions of them (transmute checks the size):
    // every byte pattern is a valid value, and the fields edited sit at their
    // UAPI offsets (len 24, uring_cmd_flags 28, buf_group 40).
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    edit(&mut raw);
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// Pending once, so that everything already woken in this round runs first.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Run one queue with the batch protocol until the device is stopped; the
/// contract is `queue::run`'s.
pub fn run<T: TopLayer>(
    setup: QueueSetup,
    char_fd: Arc<OwnedFd>,
    stack: Arc<T>,
    armed: impl FnOnce(io::Result<()>),
) -> io::Result<QueueReport> {
    let fail = |armed: Box<dyn FnOnce(io::Result<()>)>, e: &io::Error| {
        armed(Err(io::Error::new(e.kind(), e.to_string())));
    };
    let armed: Box<dyn FnOnce(io::Result<()>)> = Box::new(armed);
    let (queue, exec) = match queue::prepare(setup, &char_fd) {
        Ok(parts) => parts,
        Err(e) => {
            fail(armed, &e);
            return Err(e);
        }
    };
    let batch = match Batch::new(&queue) {
        Ok(batch) => Rc::new(batch),
        Err(e) => {
            fail(armed, &e);
            queue::abandon(queue, exec);
            return Err(e);
        }
    };
    if let Err(e) = prep(&queue, &batch) {
        fail(armed, &e);
        abandon(queue, exec, batch);
        return Err(e);
    }
    for slot in 0..FETCHES {
        batch.push_fetch(&queue, slot);
    }
    if let Some(drain) = &queue.setup.drain {
        let entry = opcode::PollAdd::new(types::Fd(drain.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(FOREIGN_BIT | KIND_DRAIN);
        // SAFETY: a poll refers to no memory; the eventfd is held by
        // `queue.setup` for as long as the ring is open.
        unsafe { queue.ctx.uring().push(&entry) };
    }
    if let Err(e) = queue.ctx.uring().submit_and_wait(0) {
        fail(armed, &e);
        abandon(queue, exec, batch);
        return Err(e);
    }
    // Before START_DEV (or END_USER_RECOVERY) no request is handed out, so
    // a FETCH answered already was refused.
    let mut refused = None;
    queue.ctx.uring().reap(&mut |_, res| {
        refused.get_or_insert(res.min(-libc::EIO));
    });
    if let Some(res) = refused {
        let e = io::Error::from_raw_os_error(-res);
        armed(Err(io::Error::new(
            e.kind(),
            format!("the kernel refused a batch FETCH: {e}"),
        )));
        abandon(queue, exec, batch);
        return Err(e);
    }
    armed(Ok(()));

    let busy = || batch.busy();
    while busy() || exec.live_tasks() > 0 {
        let turned = exec.turn_with_flags(&queue.ctx, &busy, &mut |user_data, res, flags| {
            on_cqe(&queue, &batch, &exec, &stack, user_data, res, flags)
        });
        if let Err(e) = turned {
            tracing::error!(queue = queue.setup.queue, "queue loop failed: {e}");
            abandon(queue, exec, batch);
            return Err(e);
        }
    }
    let report = queue.report.get();
    queue.ctx.uring().submit_and_wait(0)?;
    if batch.draining.get() {
        tracing::info!(
            queue = queue.setup.queue,
            requeued = batch.left.get(),
            "queue drained for a handover"
        );
        // The FETCHes stay armed: closing the ring cancels them as a crash
        // does, which leaves the kernel requeueing, not failing.
        abandon(queue, exec, batch);
        return Ok(report);
    }
    if batch.any_fetch_live() || !batch.commits.borrow().is_empty() {
        // A FETCH still armed (after a quiesce) is cancelled when the ring
        // closes; its buffer is left alone rather than freed under it.
        abandon(queue, exec, batch);
        return Ok(report);
    }
    if !batch.aborted.get() {
        // Every FETCH failed: no request can reach this queue any more.
        return Err(io::Error::other(
            "the kernel ended every batch FETCH of the queue",
        ));
    }
    // Orderly end: the ring closes before the buffers it knew are freed.
    drop(exec);
    drop(queue);
    drop(batch);
    drop(char_fd);
    Ok(report)
}

/// PREP_IO_CMDS for every tag, and wait for the answer.
fn prep(queue: &Queue, batch: &Batch) -> io::Result<()> {
    let elems = batch.elements(queue, (0..queue.setup.depth).map(|tag| (tag, 0)));
    let header = uapi::header(queue.setup.queue, batch.format, queue.setup.depth);
    let entry = opcode::UringCmd16::new(types::Fd(queue.char_fd), uapi::UBLK_U_IO_PREP_IO_CMDS)
        .cmd(header.to_sqe_cmd())
        .addr(Some(elems.as_ptr() as u64))
        .build()
        .user_data(FOREIGN_BIT | KIND_PREP);
    let len = elems.len() as u32;
    let entry = patch_sqe(entry, |sqe| sqe[24..28].copy_from_slice(&len.to_ne_bytes()));
    // SAFETY: `elems` lives until the command's CQE, awaited below (or
    // forever if the wait fails: it is leaked then).
    unsafe { queue.ctx.uring().push(&entry) };
    let mut answer = None;
    while answer.is_none() {
        if let Err(e) = queue.ctx.uring().submit_and_wait(1) {
            std::mem::forget(elems);
            return Err(e);
        }
        queue.ctx.uring().reap(&mut |user_data, res| {
            if user_data & KIND_MASK == KIND_PREP {
                answer = Some(res);
            }
        });
    }
    drop(elems);
    match answer {
        Some(res) if res < 0 => {
            let e = io::Error::from_raw_os_error(-res);
            Err(io::Error::new(
                e.kind(),
                format!("the kernel refused the batch PREP of the queue's tags: {e}"),
            ))
        }
        _ => Ok(()),
    }
}

/// Tear down after a failure that may leave commands in the kernel: the tag
/// rings and commit arrays are leaked with the tag buffers.
fn abandon(queue: Rc<Queue>, exec: Executor, batch: Rc<Batch>) {
    match Rc::try_unwrap(batch) {
        Ok(batch) => {
            for ring in batch.rings {
                ring.leak();
            }
            std::mem::forget(batch.commits);
        }
        Err(batch) => std::mem::forget(batch),
    }
    queue::abandon(queue, exec);
}

fn on_cqe<T: TopLayer>(
    queue: &Rc<Queue>,
    batch: &Rc<Batch>,
    exec: &Executor,
    stack: &Arc<T>,
    user_data: u64,
    res: i32,
    flags: u32,
) {
    let index = (user_data & 0xffff_ffff) as u32;
    match user_data & KIND_MASK {
        KIND_FETCH if (index as usize) < FETCHES => {
            on_fetch(queue, batch, exec, stack, index as usize, res, flags)
        }
        KIND_COMMIT => on_commit(queue, batch, index, res),
        KIND_DRAIN => {
            if res < 0 {
                // Drain anyway: the handover waits for this queue to end.
                tracing::warn!(
                    queue = queue.setup.queue,
                    "waiting for the drain signal failed ({}); draining",
                    io::Error::from_raw_os_error(-res)
                );
            }
            batch.draining.set(true);
            hold(queue, batch);
        }
        KIND_HOLD => batch.holding.set(false),
        _ => tracing::error!(
            queue = queue.setup.queue,
            "completion for unknown user_data {user_data:#x}"
        ),
    }
}

/// Test only: wait `QueueSetup::drain_hold` before ending the drain, the
/// FETCHes armed.
fn hold(queue: &Queue, batch: &Batch) {
    let Some(spec) = &batch.hold else {
        return;
    };
    if batch.holding.replace(true) {
        return;
    }
    let entry = opcode::Timeout::new(spec)
        .build()
        .user_data(FOREIGN_BIT | KIND_HOLD);
    // SAFETY: the timespec lives in `batch`, which outlives the next submit,
    // where the kernel copies it.
    unsafe { queue.ctx.uring().push(&entry) };
}

fn on_fetch<T: TopLayer>(
    queue: &Rc<Queue>,
    batch: &Rc<Batch>,
    exec: &Executor,
    stack: &Arc<T>,
    slot: usize,
    res: i32,
    flags: u32,
) {
    let ring = &batch.rings[slot];
    if res > 0 {
        match ring.take(res as usize) {
            Some(tags) if batch.draining.get() => {
                // Not started: the kernel requeues them when the ring closes.
                batch.left.set(batch.left.get() + tags.len() as u64);
            }
            Some(tags) => {
                for tag in tags {
                    start(queue, batch, exec, stack, tag);
                }
            }
            None => tracing::error!(
                queue = queue.setup.queue,
                "batch FETCH reported {res} bytes past its buffer; ignored"
            ),
        }
    }
    if res >= 0 && flags & IORING_CQE_F_MORE != 0 {
        return;
    }
    // The command ended.
    batch.fetch_live[slot].set(false);
    match res {
        sys::UBLK_IO_RES_ABORT => batch.aborted.set(true),
        _ if batch.aborted.get() || batch.draining.get() => {}
        res if res >= 0 || res == -libc::ENOBUFS => {
            if res == -libc::ENOBUFS || ring.used_up() {
                ring.refill();
            }
            batch.push_fetch(queue, slot);
        }
        other => tracing::error!(
            queue = queue.setup.queue,
            "batch FETCH failed: {}",
            io::Error::from_raw_os_error(-other)
        ),
    }
}

/// Serve the request at `tag`, if the tag is free.
fn start<T: TopLayer>(
    queue: &Rc<Queue>,
    batch: &Rc<Batch>,
    exec: &Executor,
    stack: &Arc<T>,
    tag: u16,
) {
    {
        let mut serving = batch.serving.borrow_mut();
        match serving.get_mut(usize::from(tag)) {
            Some(busy) if !*busy => *busy = true,
            Some(_) => {
                // A second request on a tag still served would alias its buffer.
                tracing::error!(
                    queue = queue.setup.queue,
                    tag,
                    "request on a tag still being served; ignored"
                );
                return;
            }
            None => {
                tracing::error!(queue = queue.setup.queue, tag, "tag beyond depth; ignored");
                return;
            }
        }
    }
    let desc = queue.descs.get(tag);
    let (queue, batch, stack) = (queue.clone(), batch.clone(), stack.clone());
    exec.spawn(async move {
        let result = queue::serve(&queue, stack.stack(), tag, desc).await;
        let mut report = queue.report.get();
        report.requests += 1;
        if result < 0 {
            report.errors += 1;
        }
        queue.report.set(report);
        batch.pending.borrow_mut().push((tag, result));
        if batch.flush_due.replace(true) {
            return;
        }
        // Let the other requests finishing now join this COMMIT.
        YieldOnce(false).await;
        batch.flush(&queue);
    });
}

fn on_commit(queue: &Queue, batch: &Batch, id: u32, res: i32) {
    let Some(elems) = batch.commits.borrow_mut().remove(&id) else {
        tracing::error!(
            queue = queue.setup.queue,
            id,
            "completion for an unknown COMMIT"
        );
        return;
    };
    let elem_bytes = batch.format.elem_bytes();
    if usize::try_from(res).is_ok_and(|done| done == elems.len()) {
        return;
    }
    // The kernel stopped at one element: report it, send the rest again.
    let refused = usize::try_from(res).map_or(0, |done| done / elem_bytes);
    let tag = batch.format.tag_at(&elems, refused);
    tracing::error!(
        queue = queue.setup.queue,
        tag,
        "the kernel refused to commit a request: {}",
        if res < 0 {
            io::Error::from_raw_os_error(-res).to_string()
        } else {
            format!("handled {res} of {} bytes", elems.len())
        }
    );
    let mut report = queue.report.get();
    report.errors += 1;
    queue.report.set(report);
    let rest = elems.get((refused + 1) * elem_bytes..).unwrap_or_default();
    if !rest.is_empty() {
        batch.push_commit(queue, rest.to_vec());
    }
}

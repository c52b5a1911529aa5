//! Large READs and WRITEs run on another queue thread.
//!
//! One connection lives on one queue thread, and a 1 MiB READ keeps that thread
//! busy with the leaf's read and the send to the socket, so a single client
//! streaming large requests would keep one core busy while the others idle. A request of at least [`OFFLOAD_MIN_BYTES`]
//! therefore runs its stack part on the next queue thread (round-robin over
//! the others): its buffer travels there in a [`Job`], that thread's executor
//! runs the read or write with its own ring, and the [`JobDone`] wakes the
//! connection's task back on its own thread, which sends the reply. Small
//! requests stay where they are: for them the hand-off would cost more than it
//! spreads.

use std::sync::Arc;

use layers::buf::AlignedBuf;
use layers::join::try_join_all;
use layers::{IoBufMut, LocalBoxFuture};

use super::queue::{Job, JobDone, Queue};
use super::request::Action;

/// Requests at least this large run on another queue thread.
pub const OFFLOAD_MIN_BYTES: usize = 256 << 10;
/// Largest piece one READ or WRITE is cut into on its way down the stack (the
/// ublk front end's maximum request); the pieces of one request run concurrently.
const PIECE_BYTES: usize = 512 << 10;

/// Run a READ (into `buf`) or WRITE (from `buf`) on the stack, on another
/// queue thread when it is large and there is one; returns the buffer.
pub async fn transfer(
    queue: &Queue,
    action: Action,
    buf: AlignedBuf,
) -> (layers::Result<()>, AlignedBuf) {
    if buf.len() < OFFLOAD_MIN_BYTES {
        return transfer_here(queue, action, buf).await;
    }
    let done = Arc::new(JobDone::default());
    let job = Job {
        action,
        buf,
        done: done.clone(),
    };
    match queue.offload(job) {
        Ok(()) => done.wait().await,
        // No other queue, or it is stopping: do it here.
        Err(job) => transfer_here(queue, job.action, job.buf).await,
    }
}

/// Run a job handed over by another queue thread; spawned on this one.
pub async fn run_job(queue: std::rc::Rc<Queue>, job: Job) {
    let (result, buf) = transfer_here(&queue, job.action, job.buf).await;
    job.done.complete(result, buf);
}

/// The stack reads into and writes from the request's own buffer (pieces of
/// it, for a large one), with no copy.
async fn transfer_here(
    queue: &Queue,
    action: Action,
    buf: AlignedBuf,
) -> (layers::Result<()>, AlignedBuf) {
    let (top, ctx) = (queue.stack.top(), &queue.ctx);
    let len = buf.len();
    let lens = |len: usize| {
        (0..len)
            .step_by(PIECE_BYTES)
            .map(move |at| PIECE_BYTES.min(len - at))
    };
    let mut buf = IoBufMut::from_aligned(buf);
    let (result, back) = match action {
        Action::Read { offset, .. } => {
            let mut pieces = buf.split_parts(lens(len));
            let parts: Vec<LocalBoxFuture<'_, layers::Result<()>>> = pieces
                .iter_mut()
                .enumerate()
                .map(|(i, piece)| top.read(ctx, offset + (i * PIECE_BYTES) as u64, piece))
                .collect();
            let result = try_join_all(parts).await;
            buf.join(pieces);
            (result, buf.into_aligned().map_err(drop))
        }
        Action::Write { offset, .. } => {
            let buf = buf.freeze();
            let pieces: Vec<_> = lens(len)
                .enumerate()
                .map(|(i, n)| buf.slice(i * PIECE_BYTES..i * PIECE_BYTES + n))
                .collect();
            let parts: Vec<LocalBoxFuture<'_, layers::Result<()>>> = pieces
                .iter()
                .enumerate()
                .map(|(i, piece)| top.write(ctx, offset + (i * PIECE_BYTES) as u64, piece))
                .collect();
            let result = try_join_all(parts).await;
            drop(pieces);
            (result, buf.into_aligned().map_err(drop))
        }
        other => {
            debug_assert!(false, "transfer of {other:?}");
            (
                Err(layers::Error::Unsupported),
                buf.into_aligned().map_err(drop),
            )
        }
    };
    match back {
        Ok(buf) => (result, buf),
        // Every operation of the stack has finished by now, so nothing holds
        // the buffer; if something did, its memory stays with that operation
        // and the request fails rather than send bytes that may still change.
        Err(()) => {
            tracing::error!(
                queue = ctx.queue(),
                "NBD buffer still held after its request"
            );
            (Err(layers::Error::Io(libc::EIO)), AlignedBuf::new(len))
        }
    }
}

//! Large READs and WRITEs run on another queue thread.
//!
//! One connection lives on one queue thread, and a 1 MiB READ costs that thread
//! two or three copies (leaf to the reply, through a bounce buffer unless the
//! leaf is a tmpfs file, then reply to the socket), so a single client streaming large requests would keep one core
//! busy while the others idle. A request of at least [`OFFLOAD_MIN_BYTES`]
//! therefore runs its stack part on the next queue thread (round-robin over
//! the others): its buffer travels there in a [`Job`], that thread's executor
//! runs the read or write with its own ring, and the [`JobDone`] wakes the
//! connection's task back on its own thread, which sends the reply. Small
//! requests stay where they are: for them the hand-off would cost more than it
//! spreads.

use std::sync::Arc;

use layers::join::try_join_all;
use layers::uring::AlignedBuf;
use layers::LocalBoxFuture;

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

async fn transfer_here(
    queue: &Queue,
    action: Action,
    mut buf: AlignedBuf,
) -> (layers::Result<()>, AlignedBuf) {
    let (top, ctx) = (queue.stack.top(), &queue.ctx);
    let result = match action {
        Action::Read { offset, .. } => {
            let parts: Vec<LocalBoxFuture<'_, layers::Result<()>>> = buf
                .as_mut_slice()
                .chunks_mut(PIECE_BYTES)
                .enumerate()
                .map(|(i, piece)| top.read(ctx, offset + (i * PIECE_BYTES) as u64, piece))
                .collect();
            try_join_all(parts).await
        }
        Action::Write { offset, .. } => {
            let parts: Vec<LocalBoxFuture<'_, layers::Result<()>>> = buf
                .as_slice()
                .chunks(PIECE_BYTES)
                .enumerate()
                .map(|(i, piece)| top.write(ctx, offset + (i * PIECE_BYTES) as u64, piece))
                .collect();
            try_join_all(parts).await
        }
        other => {
            debug_assert!(false, "transfer of {other:?}");
            Err(layers::Error::Unsupported)
        }
    };
    (result, buf)
}

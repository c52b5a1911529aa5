//! The bench queue for a stack whose top is a `file`, `disk` or `null` leaf: its
//! requests run without a task, as the ublk queues run them
//! (`layers::direct`), so the bench measures the path the device takes.

use std::time::{Duration, Instant};

use layers::direct::{DirectRequest, DirectTop};
use layers::{IoBufMut, IoCtx, Stack};

use super::{thread_cpu, Offsets, Options};

/// One task's request stream: its offsets and its one request, whose buffer
/// every request of the task reuses (a write sends the same data each time).
struct Task {
    offsets: Offsets,
    req: DirectRequest,
}

/// Run one queue's `qd` request streams until the deadline; returns
/// (requests, bytes, CPU time) as the task loop does.
pub(super) fn run_queue(
    stack: &Stack,
    top: DirectTop<'_>,
    queue: u16,
    opts: &Options,
) -> Result<(u64, u64, Duration), String> {
    let cpu_start = thread_cpu();
    let ctx = IoCtx::new(queue, (opts.qd * 2).max(64)).map_err(|e| e.to_string())?;
    let span = opts.hot.unwrap_or(stack.size()).min(stack.size());
    let mut tasks: Vec<Task> = (0..opts.qd)
        .map(|t| {
            let seed = u64::from(queue) << 32 | u64::from(t);
            let mut buf = IoBufMut::zeroed(opts.bs as usize);
            opts.data.fill(seed, &mut buf);
            let req = if opts.pattern.is_write() {
                DirectRequest::write(0, buf.freeze())
            } else {
                DirectRequest::read(0, buf)
            };
            Task {
                offsets: Offsets::for_task(queue, t, span, opts),
                req,
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let mut ops = 0u64;
    let mut failed = None;
    let mut in_flight = 0usize;
    // Tasks whose next request is to be started.
    let mut ready: Vec<usize> = (0..tasks.len()).rev().collect();
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(tasks.len());
    let mut running = true;
    loop {
        // Start what is ready; a request served on the spot (tmpfs) makes its
        // task ready again at once, with a look at the clock now and then.
        let mut started = 0u32;
        while let Some(t) = ready.pop() {
            if !running {
                continue;
            }
            started += 1;
            if started % super::CHECK_EVERY == 0 && Instant::now() >= deadline {
                running = false;
                continue;
            }
            let task = &mut tasks[t];
            task.req.again(task.offsets.next());
            match top.start(&ctx, &mut task.req, t as u64) {
                None => in_flight += 1,
                Some(res) => {
                    finished(res, &mut ops, &mut failed, &mut running);
                    ready.push(t);
                }
            }
        }
        if in_flight == 0 {
            break;
        }
        ctx.uring().submit_and_wait(1).map_err(|e| e.to_string())?;
        ctx.uring().reap(&mut |token, res| done.push((token, res)));
        if Instant::now() >= deadline {
            running = false;
        }
        for (token, res) in done.drain(..) {
            let t = token as usize;
            if let Some(res) = top.complete(&ctx, &mut tasks[t].req, token, res) {
                in_flight -= 1;
                finished(res, &mut ops, &mut failed, &mut running);
                ready.push(t);
            }
        }
    }
    if let Some(e) = failed {
        return Err(format!("queue {queue}: I/O failed: {e}"));
    }
    Ok((ops, ops * opts.bs, thread_cpu() - cpu_start))
}

/// Count a finished request; the first failure stops the run.
fn finished(
    res: layers::Result<()>,
    ops: &mut u64,
    failed: &mut Option<layers::Error>,
    running: &mut bool,
) {
    match res {
        Ok(()) => *ops += 1,
        Err(e) => {
            failed.get_or_insert(e);
            *running = false;
        }
    }
}

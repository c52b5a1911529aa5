//! The reference for `bench`: a plain io_uring loop over the same file with the
//! same pattern, block size, queue depth and thread count, and nothing else.

#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::{Figures, Offsets, Options};

pub fn run(path: &Path, size: u64, opts: &Options) -> Result<Figures, String> {
    let start = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.queues)
            .map(|q| s.spawn(move || run_queue(path, size, q, opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("baseline thread panicked".into()))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut ops = 0;
    for r in results {
        ops += r?;
    }
    Ok(Figures {
        ops,
        bytes: ops * opts.bs,
        elapsed,
    })
}

fn run_queue(path: &Path, size: u64, queue: u16, opts: &Options) -> Result<u64, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(opts.pattern.is_write())
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let fd = types::Fd(file.as_raw_fd());
    // The same ring setup as the queues' (layers/src/uring.rs), so only the stack differs.
    let mut ring = IoUring::builder()
        .setup_coop_taskrun()
        .build((opts.qd * 2).max(64))
        .or_else(|_| IoUring::new((opts.qd * 2).max(64)))
        .map_err(|e| e.to_string())?;
    let mut bufs: Vec<Vec<u8>> = (0..opts.qd)
        .map(|_| vec![0x5Au8; opts.bs as usize])
        .collect();
    let mut offsets: Vec<Offsets> = (0..opts.qd)
        .map(|t| {
            let seed = u64::from(queue) << 32 | u64::from(t);
            Offsets::new(seed, size, opts.bs, opts.pattern.is_random())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let is_write = opts.pattern.is_write();
    let mut push = |ring: &mut IoUring, index: usize| {
        let offset = offsets[index].next();
        let buf = &mut bufs[index];
        let entry = if is_write {
            opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                .offset(offset)
                .build()
        } else {
            opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                .offset(offset)
                .build()
        };
        let entry = entry.user_data(index as u64);
        // SAFETY: each buffer is used by at most one SQE at a time (it is
        // resubmitted only after its CQE) and outlives the ring's use of it,
        // since the loop below drains every CQE before returning; the fd stays
        // open until then too.
        unsafe { ring.submission().push(&entry) }.expect("ring sized for qd entries");
    };
    for index in 0..opts.qd as usize {
        push(&mut ring, index);
    }
    let mut in_flight = opts.qd as usize;
    let mut ops = 0u64;
    let mut failure = None;
    // Stop resubmitting at the deadline or the first error, but always drain, so
    // no buffer is freed while the kernel may still use it.
    while in_flight > 0 {
        ring.submit_and_wait(1).map_err(|e| e.to_string())?;
        let done: Vec<(usize, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data() as usize, cqe.result()))
            .collect();
        in_flight -= done.len();
        let now = Instant::now();
        for (index, res) in done {
            if res < 0 {
                failure.get_or_insert(res);
                continue;
            }
            ops += 1;
            if now < deadline && failure.is_none() {
                push(&mut ring, index);
                in_flight += 1;
            }
        }
    }
    match failure {
        Some(res) => Err(format!(
            "plain io_uring: {}",
            std::io::Error::from_raw_os_error(-res)
        )),
        None => Ok(ops),
    }
}

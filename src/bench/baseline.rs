//! The reference for `bench`: a plain loop over the same file with the same
//! pattern, block size, queue depth and thread count, and nothing else, taking
//! the path the `file` leaf takes: io_uring (with O_DIRECT when the leaf is
//! `direct`), or `pread`/`pwrite` on the thread for a file on tmpfs or ramfs.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use layers::buf::AlignedBuf;
use layers::params::FileParams;

use super::{Figures, Offsets, Options};

/// How the leaf (and so the baseline) does its I/O on this file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Uring,
    UringDirect,
    /// `pread`/`pwrite` on the queue thread (a buffered file on tmpfs or ramfs).
    Sync,
}

impl Path {
    /// The path the `file` leaf takes for `params` (see layers/src/file.rs).
    pub fn of(params: &FileParams) -> Result<Path, String> {
        if params.direct {
            return Ok(Path::UringDirect);
        }
        let file =
            File::open(&params.path).map_err(|e| format!("{}: {e}", params.path.display()))?;
        Ok(if layers::os::is_memory_backed(&file) {
            Path::Sync
        } else {
            Path::Uring
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Uring => "plain io_uring",
            Path::UringDirect => "plain O_DIRECT",
            Path::Sync => "plain pread/pwrite",
        }
    }
}

pub fn run(params: &FileParams, size: u64, opts: &Options) -> Result<Figures, String> {
    let path = Path::of(params)?;
    let start = Instant::now();
    let results: Vec<Result<(u64, Duration), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.queues)
            .map(|q| s.spawn(move || run_queue(params, path, size, q, opts)))
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
    let (mut ops, mut cpu) = (0, Duration::ZERO);
    for r in results {
        let (o, c) = r?;
        ops += o;
        cpu += c;
    }
    Ok(Figures {
        ops,
        bytes: ops * opts.bs,
        elapsed,
        cpu,
    })
}

fn run_queue(
    params: &FileParams,
    path: Path,
    size: u64,
    queue: u16,
    opts: &Options,
) -> Result<(u64, Duration), String> {
    let cpu_start = super::thread_cpu();
    run_queue_ops(params, path, size, queue, opts).map(|ops| (ops, super::thread_cpu() - cpu_start))
}

fn run_queue_ops(
    params: &FileParams,
    path: Path,
    size: u64,
    queue: u16,
    opts: &Options,
) -> Result<u64, String> {
    let mut options = OpenOptions::new();
    options.read(true).write(opts.pattern.is_write());
    if path == Path::UringDirect {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = options
        .open(&params.path)
        .map_err(|e| format!("{}: {e}", params.path.display()))?;
    let mut offsets: Vec<Offsets> = (0..opts.qd)
        .map(|t| Offsets::for_task(queue, t, size, opts))
        .collect();
    if path == Path::Sync {
        return run_sync(&file, &mut offsets, opts);
    }
    let fd = types::Fd(file.as_raw_fd());
    // The same ring setup as the queues' (layers/src/uring.rs), so only the stack differs.
    let mut ring = IoUring::builder()
        .setup_coop_taskrun()
        .build((opts.qd * 2).max(64))
        .or_else(|_| IoUring::new((opts.qd * 2).max(64)))
        .map_err(|e| e.to_string())?;
    // Aligned, so that O_DIRECT takes them as they are.
    let mut bufs: Vec<AlignedBuf> = (0..opts.qd)
        .map(|_| {
            let mut buf = AlignedBuf::new(opts.bs as usize);
            buf.as_mut_slice().fill(0x5A);
            buf
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let is_write = opts.pattern.is_write();
    let mut push = |ring: &mut IoUring, index: usize| {
        let offset = offsets[index].next();
        let buf = bufs[index].as_mut_slice();
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

/// The tmpfs path: one request at a time per thread, as the leaf serves them
/// (`qd` tasks' offsets taken in turn, so the access pattern is the same).
fn run_sync(file: &File, offsets: &mut [Offsets], opts: &Options) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let mut buf = vec![0x5Au8; opts.bs as usize];
    let mut ops = 0u64;
    while Instant::now() < deadline {
        for offsets in offsets.iter_mut() {
            let offset = offsets.next();
            let done = if opts.pattern.is_write() {
                file.write_all_at(&buf, offset)
            } else {
                file.read_exact_at(&mut buf, offset)
            };
            done.map_err(|e| format!("plain pread/pwrite: {e}"))?;
            ops += 1;
        }
    }
    Ok(ops)
}

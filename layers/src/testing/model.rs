//! Model-based checking: random reads, writes, discards, write_zeroes and flushes,
//! many in flight at once on every queue, compared with a plain byte image.
//!
//! Each queue thread owns a disjoint region of the device, so the reference is
//! exact: within a batch of concurrent operations ranges never overlap (as a block
//! device's user may not rely on the order of overlapping in-flight requests), reads
//! are checked against the image before the batch, then the batch's writes are
//! applied to the image.

use crate::exec::{Executor, IoCtx};
use crate::join::join_all;
use crate::testing::Rng;
use crate::{Layer, LocalBoxFuture, Result, Stack};

#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Operations per queue.
    pub ops: usize,
    /// Most operations in flight at once per queue.
    pub max_in_flight: usize,
    /// Largest request, in blocks.
    pub max_blocks: u64,
    /// Queue threads, each with its own ring and region.
    pub queues: usize,
    /// Share of writes filled with text-like bytes ([`fill_text`]) instead of
    /// random ones, for layers whose space use depends on the data.
    pub compressible_percent: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            ops: 2000,
            max_in_flight: 32,
            max_blocks: 64,
            queues: 2,
            compressible_percent: 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Read,
    Write,
    Discard,
    WriteZeroes,
    Flush,
}

#[derive(Debug)]
struct Op {
    kind: Kind,
    offset: u64,
    len: u64,
}

/// Run the model on every queue. Returns the expected image of the whole device
/// (regions concatenated), for a reopen check, or the first mismatch with its seed.
pub fn check_stack(
    stack: &Stack,
    seed: u64,
    cfg: &ModelConfig,
) -> std::result::Result<Vec<u8>, String> {
    let block = u64::from(stack.block_size());
    let size = stack.size();
    let region = (size / cfg.queues as u64) / block * block;
    assert!(
        region >= block * cfg.max_blocks,
        "device too small for the model"
    );
    let images: Vec<std::result::Result<Vec<u8>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.queues)
            .map(|q| {
                let cfg = cfg.clone();
                s.spawn(move || {
                    let start = q as u64 * region;
                    run_queue(
                        stack,
                        seed ^ (q as u64) << 48,
                        q as u16,
                        start,
                        region,
                        block,
                        &cfg,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("queue thread panicked".into()))
            })
            .collect()
    });
    let mut whole = Vec::with_capacity(size as usize);
    for image in images {
        whole.extend(
            image.map_err(|e| format!("seed {seed}: {e} (replay: UBLK_STACK_SEED={seed})"))?,
        );
    }
    Ok(whole)
}

/// Read the first `image.len()` bytes of `stack` and compare.
pub fn verify_image(stack: &Stack, image: &[u8]) -> std::result::Result<(), String> {
    let ctx = IoCtx::new(0, 64).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    let mut got = vec![0u8; image.len()];
    exec.block_on(&ctx, async {
        for (i, chunk) in got.chunks_mut(1 << 20).enumerate() {
            stack
                .top()
                .read_bytes(&ctx, (i << 20) as u64, chunk)
                .await?;
        }
        Ok::<(), crate::Error>(())
    })
    .map_err(|e| format!("read-back failed: {e}"))?;
    compare(&got, image, 0)
}

fn compare(got: &[u8], want: &[u8], offset: u64) -> std::result::Result<(), String> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "byte {} reads {:#04x}, expected {:#04x}",
            offset + i as u64,
            got[i],
            want[i]
        )),
    }
}

fn gen_batch(rng: &mut Rng, start: u64, region: u64, block: u64, cfg: &ModelConfig) -> Vec<Op> {
    let want = 1 + rng.below(cfg.max_in_flight as u64) as usize;
    let mut ops: Vec<Op> = Vec::with_capacity(want);
    let blocks = region / block;
    for _ in 0..want * 2 {
        if ops.len() == want {
            break;
        }
        let kind = match rng.below(100) {
            0..=39 => Kind::Read,
            40..=79 => Kind::Write,
            80..=86 => Kind::Discard,
            87..=93 => Kind::WriteZeroes,
            _ => Kind::Flush,
        };
        // Mostly small, sometimes large requests, at any block of the region.
        let max = if rng.chance(10) {
            cfg.max_blocks
        } else {
            8.min(cfg.max_blocks)
        };
        let nblocks = 1 + rng.below(max);
        let first = rng.below(blocks - nblocks + 1);
        let (offset, len) = (start + first * block, nblocks * block);
        let overlaps = |o: &Op| {
            !matches!(o.kind, Kind::Flush) && o.offset < offset + len && offset < o.offset + o.len
        };
        if matches!(kind, Kind::Flush) || !ops.iter().any(overlaps) {
            ops.push(Op { kind, offset, len });
        }
    }
    ops
}

fn run_queue(
    stack: &Stack,
    seed: u64,
    queue: u16,
    start: u64,
    region: u64,
    block: u64,
    cfg: &ModelConfig,
) -> std::result::Result<Vec<u8>, String> {
    let ctx = IoCtx::new(queue, 256).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed);
    let mut image = vec![0u8; region as usize];
    // Start from a known state: the region reads as zeros.
    exec.block_on(&ctx, stack.top().write_zeroes(&ctx, start, region))
        .map_err(|e| format!("initial write_zeroes failed: {e}"))?;
    let mut done = 0;
    while done < cfg.ops {
        let batch = gen_batch(&mut rng, start, region, block, cfg);
        done += batch.len();
        let mut bufs: Vec<Vec<u8>> = batch
            .iter()
            .map(|op| {
                let mut buf = vec![0u8; op.len as usize];
                if let Kind::Write = op.kind {
                    // Only draw when asked, so existing seeds keep their ops.
                    if cfg.compressible_percent > 0 && rng.chance(cfg.compressible_percent) {
                        fill_text(&mut rng, &mut buf);
                    } else {
                        rng.fill(&mut buf);
                    }
                } else if let Kind::Read = op.kind {
                    buf.fill(0xA5); // a read must overwrite every byte
                }
                buf
            })
            .collect();
        let results = {
            let top = stack.top();
            let futs: Vec<LocalBoxFuture<'_, Result<()>>> = batch
                .iter()
                .zip(bufs.iter_mut())
                .map(|(op, buf)| issue(top, &ctx, op, buf))
                .collect();
            exec.block_on(&ctx, join_all(futs))
        };
        for ((op, buf), res) in batch.iter().zip(&bufs).zip(results) {
            res.map_err(|e| format!("{op:?} failed: {e}"))?;
            let at = (op.offset - start) as usize..(op.offset - start + op.len) as usize;
            match op.kind {
                Kind::Read => compare(buf, &image[at], op.offset)
                    .map_err(|e| format!("after {done} ops, {op:?}: {e}"))?,
                Kind::Write => image[at].copy_from_slice(buf),
                Kind::Discard | Kind::WriteZeroes => image[at].fill(0),
                Kind::Flush => {}
            }
        }
    }
    // Everything reads back, after a final flush.
    exec.block_on(&ctx, stack.flush(&ctx))
        .map_err(|e| format!("final flush: {e}"))?;
    let mut got = vec![0u8; region as usize];
    exec.block_on(&ctx, stack.top().read_bytes(&ctx, start, &mut got))
        .map_err(|e| format!("final read: {e}"))?;
    compare(&got, &image, start).map_err(|e| format!("final read-back: {e}"))?;
    Ok(image)
}

/// Text-like bytes: log lines from a few templates with varying numbers, which
/// lz4 shrinks to about a third, as it does real logs.
pub fn fill_text(rng: &mut Rng, buf: &mut [u8]) {
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
    const EVENTS: [&str; 8] = [
        "queue {} wrote block {} ok",
        "queue {} read block {} ok",
        "mirror leg {} resynced {} blocks",
        "cache hit for block {} on queue {}",
        "flush completed in {} us after {} writes",
        "stripe {} chunk {} remapped",
        "device ready with {} queues of depth {}",
        "checksum verified {} blocks in {} ms",
    ];
    let mut line = String::with_capacity(128);
    let mut second = rng.below(86400);
    let mut at = 0;
    while at < buf.len() {
        let r = rng.next_u64();
        line.clear();
        let event = EVENTS[(r % 8) as usize];
        let mut numbers = [r >> 8 & 15, r >> 16 & 4095].into_iter();
        let mut parts = event.split("{}");
        // Time moves forward a little each line, as in a real log.
        second += r >> 32 & 1;
        line.push_str(&format!(
            "2026-11-25 {:02}:{:02}:{:02} {} ",
            second / 3600 % 24,
            second / 60 % 60,
            second % 60,
            LEVELS[(r >> 48 & 3) as usize]
        ));
        line.push_str(parts.next().unwrap_or(""));
        for part in parts {
            line.push_str(&numbers.next().unwrap_or(0).to_string());
            line.push_str(part);
        }
        line.push('\n');
        let n = line.len().min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&line.as_bytes()[..n]);
        at += n;
    }
}

fn issue<'a>(
    top: &'a dyn Layer,
    ctx: &'a IoCtx,
    op: &Op,
    buf: &'a mut [u8],
) -> LocalBoxFuture<'a, Result<()>> {
    match op.kind {
        Kind::Read => top.read_bytes(ctx, op.offset, buf),
        Kind::Write => top.write_bytes(ctx, op.offset, buf),
        Kind::Discard => top.discard(ctx, op.offset, op.len),
        Kind::WriteZeroes => top.write_zeroes(ctx, op.offset, op.len),
        Kind::Flush => top.flush(ctx),
    }
}

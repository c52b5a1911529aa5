//! `ublk-stack bench`: drive the compiled stack in-process (no kernel) with one
//! thread per queue, each keeping `qd` requests in flight through the same
//! executor and io_uring the ublk front end uses, and print IOPS and MB/s.
//!
//! When the top layer is a `file` leaf, a plain io_uring loop reads or writes the
//! same file the same way in the same run, and the ratio of the two is printed:
//! that is the cost of the stack over the raw primitive.

mod baseline;
mod direct;
mod primitives;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use layers::params::FileParams;
use layers::plan::LayerSpec;
use layers::rng::Rng;
use layers::{Executor, IoBufMut, IoCtx, LayerReport, Plan, Stack};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl Pattern {
    pub const NAMES: [&'static str; 4] = ["randread", "randwrite", "seqread", "seqwrite"];

    pub fn parse(s: &str) -> Option<Pattern> {
        Some(match s {
            "randread" => Pattern::RandRead,
            "randwrite" => Pattern::RandWrite,
            "seqread" => Pattern::SeqRead,
            "seqwrite" => Pattern::SeqWrite,
            _ => return None,
        })
    }

    fn is_write(self) -> bool {
        matches!(self, Pattern::RandWrite | Pattern::SeqWrite)
    }

    fn is_random(self) -> bool {
        matches!(self, Pattern::RandRead | Pattern::RandWrite)
    }
}

/// What the workload writes (and what `--prefill` stores before reading).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Pseudo-random bytes: incompressible.
    Random,
    /// Words and numbers in lines, roughly as compressible as logs or source.
    Text,
}

impl DataKind {
    pub const NAMES: [&'static str; 2] = ["random", "text"];

    pub fn parse(s: &str) -> Option<DataKind> {
        match s {
            "random" => Some(DataKind::Random),
            "text" => Some(DataKind::Text),
            _ => None,
        }
    }

    /// Fill `buf` deterministically from `seed`.
    pub fn fill(self, seed: u64, buf: &mut [u8]) {
        let mut rng = Rng::new(seed);
        match self {
            DataKind::Random => rng.fill(buf),
            DataKind::Text => {
                const WORDS: [&str; 24] = [
                    "block", "device", "mirror", "stripe", "cache", "queue", "write", "read",
                    "flush", "error", "layer", "config", "the", "a", "of", "to", "and", "is", "in",
                    "request", "kernel", "sector", "offset", "status",
                ];
                let mut at = 0;
                while at < buf.len() {
                    let word: std::borrow::Cow<'_, str> = if rng.chance(15) {
                        rng.below(100_000).to_string().into()
                    } else {
                        WORDS[rng.below(WORDS.len() as u64) as usize].into()
                    };
                    let sep: &[u8] = if rng.chance(8) { b"\n" } else { b" " };
                    for &b in word.as_bytes().iter().chain(sep) {
                        if at < buf.len() {
                            buf[at] = b;
                            at += 1;
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub seconds: f64,
    pub pattern: Pattern,
    pub bs: u64,
    pub qd: u32,
    pub queues: u16,
    pub data: DataKind,
    /// Write the whole device before a read workload.
    pub prefill: bool,
    /// Confine the workload to the first `hot` bytes (a hot set).
    pub hot: Option<u64>,
    /// Warm the hot set, read the whole device once in order (a scan), then
    /// measure: shows whether a cache keeps its hot set through a scan.
    pub scan: bool,
}

/// Operations completed and time taken by one run.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// CPU time (user and system) of the threads that made the requests.
    pub cpu: Duration,
}

impl Figures {
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Requests per second of CPU time: what a request costs, whoever else
    /// shares the machine.
    pub fn per_cpu_second(&self) -> f64 {
        self.ops as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// CPU time this thread has used so far.
pub(crate) fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Offsets of one worker: random, or sequential through a stream of its own,
/// `bs` aligned.
pub(crate) struct Offsets {
    rng: Rng,
    /// Sequential: the first slot of this worker's stream, its length, and where
    /// it is in it.
    start: u64,
    len: u64,
    at: u64,
    bs: u64,
    random: bool,
}

impl Offsets {
    /// The offsets of task `task` of queue `queue` over the first `span` bytes.
    /// Sequential patterns cut the span into one stream per task of every
    /// queue, so no two workers read or write the same blocks in step (which
    /// would measure one stream served many times over).
    pub(crate) fn for_task(queue: u16, task: u32, span: u64, opts: &Options) -> Offsets {
        let slots = (span / opts.bs).max(1);
        let streams = u64::from(opts.queues) * u64::from(opts.qd);
        let stream = u64::from(queue) * u64::from(opts.qd) + u64::from(task);
        let (start, len) = if opts.pattern.is_random() {
            (0, slots)
        } else {
            let len = (slots / streams.max(1)).max(1);
            (stream * len % slots, len)
        };
        Offsets {
            rng: Rng::new(u64::from(queue) << 32 | u64::from(task)),
            start,
            len,
            at: 0,
            bs: opts.bs,
            random: opts.pattern.is_random(),
        }
    }

    pub(crate) fn next(&mut self) -> u64 {
        let slot = if self.random {
            self.rng.below(self.len)
        } else {
            let slot = self.start + self.at;
            self.at = (self.at + 1) % self.len;
            slot
        };
        slot * self.bs
    }
}

/// Run the workload on the stack.
pub fn run_stack(stack: &Arc<Stack>, opts: &Options) -> Result<Figures, String> {
    if opts.bs == 0 || opts.bs % u64::from(stack.block_size()) != 0 || opts.bs > stack.size() {
        return Err(format!(
            "--bs {} must be a multiple of the block size {} and at most the device size",
            opts.bs,
            stack.block_size()
        ));
    }
    let start = Instant::now();
    let per_queue: Vec<Result<(u64, u64, Duration), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.queues)
            .map(|q| {
                let stack = stack.clone();
                let opts = opts.clone();
                s.spawn(move || run_queue(stack, q, &opts))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("bench thread panicked".into()))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let (mut ops, mut bytes, mut cpu) = (0, 0, Duration::ZERO);
    for r in per_queue {
        let (o, b, c) = r?;
        ops += o;
        bytes += b;
        cpu += c;
    }
    Ok(Figures {
        ops,
        bytes,
        elapsed,
        cpu,
    })
}

/// How many requests a bench task makes between two looks at the clock.
const CHECK_EVERY: u32 = 16;

fn run_queue(
    stack: Arc<Stack>,
    queue: u16,
    opts: &Options,
) -> Result<(u64, u64, Duration), String> {
    if let Some(top) = stack.direct() {
        return direct::run_queue(&stack, top, queue, opts);
    }
    let cpu_start = thread_cpu();
    let ctx = Rc::new(IoCtx::new(queue, (opts.qd * 2).max(64)).map_err(|e| e.to_string())?);
    let exec = Executor::new().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let ops = Rc::new(Cell::new(0u64));
    let failed: Rc<Cell<Option<layers::Error>>> = Rc::new(Cell::new(None));
    for task in 0..opts.qd {
        let (stack, ctx, ops, failed) = (stack.clone(), ctx.clone(), ops.clone(), failed.clone());
        let seed = u64::from(queue) << 32 | u64::from(task);
        let span = opts.hot.unwrap_or(stack.size()).min(stack.size());
        let mut offsets = Offsets::for_task(queue, task, span, opts);
        let pattern = opts.pattern;
        // One aligned buffer per task, as a ublk tag has: the stack reads into
        // and writes from it directly.
        let mut buf = IoBufMut::zeroed(opts.bs as usize);
        opts.data.fill(seed, &mut buf);
        let data = buf.freeze();
        let mut buf = IoBufMut::zeroed(opts.bs as usize);
        exec.spawn(async move {
            // The clock is read once per CHECK_EVERY requests, as the plain
            // loop reads it once per batch of completions: a clock read per
            // request would be charged to the stack.
            let mut n = 0u32;
            while failed.get().is_none() && (n % CHECK_EVERY != 0 || Instant::now() < deadline) {
                n = n.wrapping_add(1);
                let offset = offsets.next();
                let res = if pattern.is_write() {
                    stack.write(&ctx, offset, &data).await
                } else {
                    stack.read(&ctx, offset, &mut buf).await
                };
                match res {
                    Ok(()) => ops.set(ops.get() + 1),
                    Err(e) => failed.set(Some(e)),
                }
            }
        });
    }
    exec.run_until_idle(&ctx).map_err(|e| e.to_string())?;
    if let Some(e) = failed.get() {
        return Err(format!("queue {queue}: I/O failed: {e}"));
    }
    Ok((ops.get(), ops.get() * opts.bs, thread_cpu() - cpu_start))
}

/// The file behind the top layer, when the top layer is a `file` leaf.
pub fn top_file(plan: &Plan) -> Option<FileParams> {
    match &plan.layers[plan.top].spec {
        LayerSpec::File(p) => Some(p.clone()),
        _ => None,
    }
}

/// Reads of blocks never written skip the work a read does: checksum, crypt
/// and compress answer zeros without verifying or decompressing, a cache or a
/// sparse file has nothing to fetch. Read figures are only honest over data.
fn check_prefill(opts: &Options) -> Result<(), String> {
    if opts.pattern.is_write() || opts.prefill {
        return Ok(());
    }
    Err(format!(
        "--pattern {} needs --prefill: reads of blocks never written skip the work \
         (checksum, crypt and compress answer zeros without verifying or \
         decompressing), so the figures would flatter the stack. --prefill writes \
         the whole device once first (it overwrites the device, as write patterns do).",
        Pattern::NAMES[opts.pattern as usize]
    ))
}

/// Run the bench and print the report.
///
/// With a plain-file reference, the two alternate in three rounds of a third of
/// the time each and the median of the per-round ratios is printed, so that noise
/// from other work on the machine hits both sides alike.
pub fn report(plan: &Plan, stack: Arc<Stack>, opts: &Options) -> Result<(), String> {
    check_prefill(opts)?;
    println!(
        "bench \"{}\": {} bs={} qd={} queues={} for {:.1}s over {} bytes",
        plan.device.name,
        Pattern::NAMES[opts.pattern as usize],
        opts.bs,
        opts.qd,
        opts.queues,
        opts.seconds,
        stack.size()
    );
    if opts.prefill {
        prefill(&stack, opts.data)?;
    }
    if opts.scan {
        let warm = Options {
            seconds: opts.seconds.min(2.0),
            ..opts.clone()
        };
        run_stack(&stack, &warm)?;
        scan(&stack)?;
        println!("  (hot set warmed, then the whole device read once in order)");
    }
    let Some(file) = top_file(plan) else {
        let before = cache_counters(&stack);
        let ours = run_stack(&stack, opts)?;
        print_line("stack", &ours, "");
        print_hit_rates(&before, &cache_counters(&stack));
        compare_primitives(plan, stack.size(), &ours, opts);
        return Ok(());
    };
    let round = Options {
        seconds: opts.seconds / 3.0,
        ..opts.clone()
    };
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    let (mut ours_all, mut plain_all) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let ours = run_stack(&stack, &round)?;
        let plain = baseline::run(&file, stack.size(), &round)?;
        ratios.push(ours.iops() / plain.iops());
        cpu_ratios.push(ours.per_cpu_second() / plain.per_cpu_second());
        ours_all.push(ours);
        plain_all.push(plain);
    }
    print_line("stack", &sum(&ours_all), "");
    print_line(
        baseline::Path::of(&file)?.name(),
        &sum(&plain_all),
        &format!("  ({})", file.path.display()),
    );
    println!("  ratio stack/plain: {}", median_of_rounds(&mut ratios));
    // On a busy machine the two sides get different shares of a core; CPU
    // time per request is what each costs regardless.
    println!(
        "  ratio stack/plain in requests per CPU second: {}",
        median_of_rounds(&mut cpu_ratios)
    );
    Ok(())
}

/// Read the whole device once, in order, 128 KiB at a time.
fn scan(stack: &Stack) -> Result<(), String> {
    let ctx = IoCtx::new(0, 64).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    let chunk = (128u64 << 10).min(stack.size());
    let mut buf = vec![0u8; chunk as usize];
    let mut offset = 0;
    while offset < stack.size() {
        let n = chunk.min(stack.size() - offset) as usize;
        exec.block_on(&ctx, stack.top().read_bytes(&ctx, offset, &mut buf[..n]))
            .map_err(|e| format!("scan at byte {offset}: {e}"))?;
        offset += n as u64;
    }
    Ok(())
}

/// Write the whole device once, in 1 MiB requests, with `data`.
fn prefill(stack: &Stack, data: DataKind) -> Result<(), String> {
    let ctx = IoCtx::new(0, 64).map_err(|e| e.to_string())?;
    let exec = Executor::new().map_err(|e| e.to_string())?;
    let chunk = (1u64 << 20).min(stack.size());
    let mut buf = vec![0u8; chunk as usize];
    let mut offset = 0;
    while offset < stack.size() {
        let n = chunk.min(stack.size() - offset) as usize;
        data.fill(offset, &mut buf[..n]);
        exec.block_on(&ctx, stack.top().write_bytes(&ctx, offset, &buf[..n]))
            .map_err(|e| format!("prefill at byte {offset}: {e}"))?;
        offset += n as u64;
    }
    exec.block_on(&ctx, stack.flush(&ctx))
        .map_err(|e| format!("prefill flush: {e}"))
}

/// Time the raw primitive of every transformation layer in the stack on the same
/// kind of buffers; with exactly one, print the layer's ratio to it.
fn compare_primitives(plan: &Plan, size: u64, ours: &Figures, opts: &Options) {
    let found: Vec<primitives::Primitive> = plan
        .walk()
        .into_iter()
        .filter_map(|id| primitives::Primitive::for_layer(plan.layers[id].spec.type_name()))
        .collect();
    if found.is_empty() {
        return;
    }
    let block = plan.device.block_size as usize;
    let span = size.min(256 << 20) / opts.bs * opts.bs;
    let mut data = vec![0u8; span.max(opts.bs) as usize];
    opts.data.fill(1, &mut data);
    for &p in &found {
        let f = primitives::run(
            p,
            &data,
            opts.bs as usize,
            block,
            opts.pattern.is_write(),
            opts.seconds.min(3.0),
        );
        let tail = if found.len() == 1 {
            format!("  (ratio stack/primitive: {:.2})", ours.iops() / f.iops())
        } else {
            String::new()
        };
        print_line(p.name(), &f, &tail);
        if p == primitives::Primitive::Lz4 {
            println!(
                "  raw lz4 saves {:.1}% on this data in {block}-byte pieces",
                100.0 * primitives::lz4_saving(&data[..data.len().min(16 << 20)], block)
            );
        }
    }
    if opts.queues > 1 && !found.is_empty() {
        println!("  (primitives run on one thread; use --queues 1 to compare per core)");
    }
}

/// (layer name, hits, misses) of every cache layer in the stack.
fn cache_counters(stack: &Stack) -> Vec<(String, u64, u64)> {
    stack
        .status()
        .into_iter()
        .filter_map(|n| match n.report {
            LayerReport::Cache(cache) => Some((n.name, cache.hits, cache.misses)),
            _ => None,
        })
        .collect()
}

fn print_hit_rates(before: &[(String, u64, u64)], after: &[(String, u64, u64)]) {
    for ((name, h0, m0), (_, h1, m1)) in before.iter().zip(after) {
        let (hits, misses) = (h1 - h0, m1 - m0);
        let rate = 100.0 * hits as f64 / (hits + misses).max(1) as f64;
        println!(
            "  cache \"{name}\": hit rate {rate:.1}% ({hits} hits, {misses} misses, in blocks)"
        );
    }
}

fn sum(figures: &[Figures]) -> Figures {
    Figures {
        ops: figures.iter().map(|f| f.ops).sum(),
        bytes: figures.iter().map(|f| f.bytes).sum(),
        elapsed: figures.iter().map(|f| f.elapsed).sum(),
        cpu: figures.iter().map(|f| f.cpu).sum(),
    }
}

/// "M (median of rounds a, b, c)" for the ratios of three rounds.
fn median_of_rounds(ratios: &mut [f64]) -> String {
    ratios.sort_by(f64::total_cmp);
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    format!(
        "{:.2} (median of rounds {})",
        ratios[ratios.len() / 2],
        shown.join(", ")
    )
}

fn print_line(what: &str, f: &Figures, tail: &str) {
    println!(
        "  {what:<15} {:>10.0} IOPS {:>9.1} MB/s{tail}",
        f.iops(),
        f.mb_per_s()
    );
}

#[cfg(test)]
mod tests;

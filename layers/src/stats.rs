//! Per-layer counters and latency histograms, shared by all queues (relaxed
//! atomics: they are statistics, not synchronisation). The counters are kept
//! in one shard per queue, each written by its queue's thread alone
//! (`counter_shard.rs`) and summed when read. Everything is kept per kind of
//! request ([`Op`]): `status` shows the sums, the metrics endpoint each one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::counter_shard::{CounterShard, SHARDS};

/// The kinds of request a layer counts apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write_zeroes",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
pub struct LayerStats {
    /// Indexed by [`CounterShard::index`]; summed by [`LayerStats::snapshot`].
    shards: Box<[Counters]>,
    latency: [LatencyHistogram; 5],
}

impl Default for LayerStats {
    fn default() -> Self {
        LayerStats {
            shards: (0..SHARDS).map(|_| Counters::default()).collect(),
            latency: Default::default(),
        }
    }
}

/// One shard's counts, indexed by [`Op::index`]. A cache line of its own
/// (two, for the adjacent-line prefetcher), so that queues do not share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counters {
    ops: [AtomicU64; 5],
    /// Bytes covered: read, written, discarded, zeroed (0 for flushes).
    bytes: [AtomicU64; 5],
    errors: [AtomicU64; 5],
}

/// Add `n` to a counter of `shard`'s; returns the new value.
#[inline]
fn add(counter: &AtomicU64, shard: &CounterShard, n: u64) -> u64 {
    if shard.is_exclusive() {
        // Only this thread writes the shard (see counter_shard.rs).
        let value = counter.load(Relaxed).wrapping_add(n);
        counter.store(value, Relaxed);
        value
    } else {
        counter.fetch_add(n, Relaxed).wrapping_add(n)
    }
}

/// One kind of request's counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// A copy of [`LayerStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Errors of every kind of request.
    pub errors: u64,
    /// The same per kind of request, indexed as [`Op::ALL`].
    pub by_op: [OpCounts; 5],
}

impl StatsSnapshot {
    pub fn of(&self, op: Op) -> OpCounts {
        self.by_op[op.index()]
    }
}

impl LayerStats {
    /// Count a request of `bytes` in `shard`; returns how many requests of
    /// its kind the shard has seen, this one included (for sampling).
    #[inline]
    pub fn count(&self, shard: &CounterShard, op: Op, bytes: u64) -> u64 {
        let counters = &self.shards[shard.index()];
        if bytes > 0 {
            add(&counters.bytes[op.index()], shard, bytes);
        }
        add(&counters.ops[op.index()], shard, 1)
    }

    pub fn flush(&self, shard: &CounterShard) -> u64 {
        self.count(shard, Op::Flush, 0)
    }

    /// A request of kind `op` was answered with an error.
    pub fn error(&self, shard: &CounterShard, op: Op) {
        add(&self.shards[shard.index()].errors[op.index()], shard, 1);
    }

    /// How long a request took, from the call to its completion (layers below
    /// included).
    pub fn took(&self, op: Op, elapsed: Duration) {
        self.latency[op.index()].record(elapsed);
    }

    /// Median and 99th percentile of reads and writes since the stack was compiled.
    pub fn latency(&self) -> LatencySnapshot {
        LatencySnapshot {
            read: self.latency[Op::Read.index()].percentiles(),
            write: self.latency[Op::Write.index()].percentiles(),
        }
    }

    /// The latency histogram of `op`, in the buckets of [`EXPORT_BOUNDS_NS`].
    pub fn histogram(&self, op: Op) -> HistogramSnapshot {
        self.latency[op.index()].export()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let sum = |of: fn(&Counters) -> &[AtomicU64; 5], op: Op| {
            self.shards
                .iter()
                .map(|c| of(c)[op.index()].load(Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        let by_op = Op::ALL.map(|op| OpCounts {
            ops: sum(|c| &c.ops, op),
            bytes: sum(|c| &c.bytes, op),
            errors: sum(|c| &c.errors, op),
        });
        let of = |op: Op| by_op[op.index()];
        StatsSnapshot {
            reads: of(Op::Read).ops,
            writes: of(Op::Write).ops,
            flushes: of(Op::Flush).ops,
            discards: of(Op::Discard).ops,
            write_zeroes: of(Op::WriteZeroes).ops,
            read_bytes: of(Op::Read).bytes,
            written_bytes: of(Op::Write).bytes,
            errors: by_op.iter().map(|c| c.errors).sum(),
            by_op,
        }
    }
}

/// Sub-buckets per power of two: 4 keeps every bucket within 25 % of its
/// neighbours (a reported percentile is at most 12.5 % off) for 2 KiB a histogram.
const SUB_BUCKET_BITS: u32 = 2;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Values below `SUB_BUCKETS` get a bucket each; above, 4 per power of two up to 2^64.
const BUCKETS: usize = SUB_BUCKETS * (64 - SUB_BUCKET_BITS as usize + 1);

/// The upper bounds, in nanoseconds, of the buckets a histogram is exported
/// in (Prometheus' `le`): every power of two from 2^10 ns (about 1 µs) to
/// 2^33 ns (about 8.6 s). Powers of two are bucket boundaries of the
/// log-linear histogram, so the export is exact: bucket `b` counts the
/// values below `b` (a value of exactly `b` ns, a nanosecond away, counts in
/// the next).
pub const EXPORT_BOUNDS_NS: [u64; 24] = {
    let mut bounds = [0u64; 24];
    let mut i = 0;
    while i < 24 {
        bounds[i] = 1 << (10 + i);
        i += 1;
    }
    bounds
};

/// Latencies in nanoseconds as a log-linear histogram of atomic counters:
/// recording is two relaxed additions, with no lock and no allocation, so it
/// can sit on every request of every layer.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    /// The sum of the recorded values, in nanoseconds (wrapping after 584
    /// years of latency).
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// A histogram as exported: cumulative counts at [`EXPORT_BOUNDS_NS`], the
/// count of every value (the `+Inf` bucket) and their sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `cumulative[i]`: values below `EXPORT_BOUNDS_NS[i]`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_ns: u64,
}

/// Median and 99th percentile in nanoseconds; `None` before the first request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub read: Percentiles,
    pub write: Percentiles,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(nanos)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(nanos, Relaxed);
    }

    pub fn percentiles(&self) -> Percentiles {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        Percentiles {
            p50_ns: percentile(&counts, 50),
            p99_ns: percentile(&counts, 99),
        }
    }

    /// The histogram in the buckets of [`EXPORT_BOUNDS_NS`]. The count is the
    /// sum of the buckets read, so the buckets never exceed it even while
    /// values are recorded.
    pub fn export(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let mut cumulative = Vec::with_capacity(EXPORT_BOUNDS_NS.len());
        let mut seen = 0u64;
        let mut index = 0;
        for bound in EXPORT_BOUNDS_NS {
            let end = bucket_of(bound);
            while index < end {
                seen += counts[index];
                index += 1;
            }
            cumulative.push(seen);
        }
        HistogramSnapshot {
            cumulative,
            count: counts.iter().sum(),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }
}

/// The bucket of `value`: exact below `SUB_BUCKETS`, else the power of two and
/// the next `SUB_BUCKET_BITS` bits below the leading one.
fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS as u64 {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let sub = (value >> (exponent - SUB_BUCKET_BITS)) as usize & (SUB_BUCKETS - 1);
    SUB_BUCKETS * (exponent - SUB_BUCKET_BITS + 1) as usize + sub
}

/// The middle of bucket `index`, the value it stands for.
fn bucket_middle(index: usize) -> u64 {
    if index < SUB_BUCKETS {
        return index as u64;
    }
    let shift = (index / SUB_BUCKETS - 1) as u32;
    let low = ((SUB_BUCKETS + index % SUB_BUCKETS) as u64) << shift;
    low.saturating_add((1u64 << shift) / 2)
}

/// The value below which `percent` % of the recorded values fall.
fn percentile(counts: &[u64], percent: u64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the sample that is the percentile, counting from 1.
    let rank = (total.saturating_mul(percent)).div_ceil(100).max(1);
    let mut seen = 0u64;
    for (index, &count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_middle(index));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_that_contains_it() {
        for value in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let index = bucket_of(value);
            assert!(index < BUCKETS, "{value}");
            let middle = bucket_middle(index);
            // The middle is within half a bucket (1/8 of the value) of it.
            assert!(
                middle.abs_diff(value) <= value / 8 + 1,
                "{value} -> {middle}"
            );
        }
    }

    #[test]
    fn buckets_grow_with_their_values() {
        let mut last = 0;
        for value in [
            0u64,
            1,
            3,
            4,
            7,
            8,
            15,
            16,
            1000,
            1 << 20,
            1 << 40,
            u64::MAX,
        ] {
            let index = bucket_of(value);
            assert!(index >= last, "{value}");
            last = index;
        }
    }

    #[test]
    fn percentiles_of_a_skewed_workload() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.percentiles(), Percentiles::default());
        for _ in 0..980 {
            histogram.record(Duration::from_micros(100));
        }
        for _ in 0..20 {
            histogram.record(Duration::from_millis(10));
        }
        let p = histogram.percentiles();
        let p50 = p.p50_ns.unwrap();
        let p99 = p.p99_ns.unwrap();
        assert!((90_000..=110_000).contains(&p50), "{p50}");
        assert!((9_000_000..=11_000_000).contains(&p99), "{p99}");
    }
    #[test]
    fn export_bounds_are_bucket_boundaries() {
        for bound in EXPORT_BOUNDS_NS {
            assert_ne!(bucket_of(bound - 1), bucket_of(bound), "{bound}");
        }
    }

    #[test]
    fn export_counts_each_value_below_its_bound_cumulatively() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.export().count, 0);
        for nanos in [0, 1023, 1024, 3000, 3000, 1 << 33, 10_000_000_000] {
            histogram.record(Duration::from_nanos(nanos));
        }
        let exported = histogram.export();
        assert_eq!(exported.count, 7);
        assert_eq!(
            exported.sum_ns,
            1023 + 1024 + 6000 + (1 << 33) + 10_000_000_000
        );
        assert_eq!(exported.cumulative.len(), EXPORT_BOUNDS_NS.len());
        // Below 1024 ns: 0 and 1023; below 2048: 1024 too; below 4096: 3000 twice.
        assert_eq!(exported.cumulative[..3], [2, 3, 5]);
        // 2^33 ns is not below the last bound; it and 10 s count only in `count`.
        assert_eq!(*exported.cumulative.last().unwrap(), 5);
        assert!(exported.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn counts_are_kept_per_kind_of_request() {
        let stats = LayerStats::default();
        let shard = CounterShard::claim();
        assert_eq!(stats.count(&shard, Op::Read, 4096), 1);
        assert_eq!(stats.count(&shard, Op::Read, 8192), 2);
        stats.count(&shard, Op::Write, 512);
        // Another context's counts add up with this one's.
        stats.count(&CounterShard::shared(), Op::Discard, 1 << 20);
        stats.flush(&shard);
        stats.error(&shard, Op::Read);
        stats.error(&CounterShard::shared(), Op::Flush);
        let s = stats.snapshot();
        assert_eq!(
            (s.reads, s.read_bytes, s.writes, s.written_bytes),
            (2, 12288, 1, 512)
        );
        assert_eq!(s.errors, 2);
        assert_eq!(
            s.of(Op::Read),
            OpCounts {
                ops: 2,
                bytes: 12288,
                errors: 1
            }
        );
        assert_eq!(
            s.of(Op::Discard),
            OpCounts {
                ops: 1,
                bytes: 1 << 20,
                errors: 0
            }
        );
        assert_eq!(
            s.of(Op::Flush),
            OpCounts {
                ops: 1,
                bytes: 0,
                errors: 1
            }
        );
        assert_eq!(s.of(Op::WriteZeroes), OpCounts::default());
    }

    /// More threads than shards, all holding their claims at once, so that
    /// several count in the shared shard together; then a second round in
    /// shards that others let go. No count is lost.
    #[test]
    fn counts_from_many_threads_all_add_up() {
        const THREADS: usize = SHARDS + 9;
        const COUNTS: u64 = 20_000;
        let stats = std::sync::Arc::new(LayerStats::default());
        let all_claimed = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (stats, all_claimed) = (stats.clone(), all_claimed.clone());
                std::thread::spawn(move || {
                    for _round in 0..2 {
                        let shard = CounterShard::claim();
                        all_claimed.wait();
                        for _ in 0..COUNTS {
                            stats.count(&shard, Op::Read, 512);
                        }
                        all_claimed.wait();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = stats.snapshot();
        let expected = THREADS as u64 * 2 * COUNTS;
        assert_eq!((s.reads, s.read_bytes), (expected, expected * 512));
    }
}

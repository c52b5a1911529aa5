//! Per-layer counters and latency histograms, shared by all queues (relaxed
//! atomics: they are statistics, not synchronisation).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default, Debug)]
pub struct LayerStats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    errors: AtomicU64,
    read_latency: LatencyHistogram,
    write_latency: LatencyHistogram,
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
    pub errors: u64,
}

impl LayerStats {
    /// Count a read; returns how many reads this layer has seen, this one included.
    pub fn read(&self, bytes: usize) -> u64 {
        self.read_bytes.fetch_add(bytes as u64, Relaxed);
        self.reads.fetch_add(1, Relaxed) + 1
    }

    /// Count a write; returns how many writes this layer has seen, this one included.
    pub fn write(&self, bytes: usize) -> u64 {
        self.written_bytes.fetch_add(bytes as u64, Relaxed);
        self.writes.fetch_add(1, Relaxed) + 1
    }

    pub fn flush(&self) {
        self.flushes.fetch_add(1, Relaxed);
    }

    pub fn discard(&self) {
        self.discards.fetch_add(1, Relaxed);
    }

    pub fn write_zeroes(&self) {
        self.write_zeroes.fetch_add(1, Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// How long a read took, from the call to its completion (layers below included).
    pub fn read_took(&self, elapsed: Duration) {
        self.read_latency.record(elapsed);
    }

    pub fn write_took(&self, elapsed: Duration) {
        self.write_latency.record(elapsed);
    }

    /// Median and 99th percentile of reads and writes since the stack was compiled.
    pub fn latency(&self) -> LatencySnapshot {
        LatencySnapshot {
            read: self.read_latency.percentiles(),
            write: self.write_latency.percentiles(),
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            discards: self.discards.load(Relaxed),
            write_zeroes: self.write_zeroes.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            written_bytes: self.written_bytes.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// Sub-buckets per power of two: 4 keeps every bucket within 25 % of its
/// neighbours (a reported percentile is at most 12.5 % off) for 2 KiB a histogram.
const SUB_BUCKET_BITS: u32 = 2;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Values below `SUB_BUCKETS` get a bucket each; above, 4 per power of two up to 2^64.
const BUCKETS: usize = SUB_BUCKETS * (64 - SUB_BUCKET_BITS as usize + 1);

/// Latencies in nanoseconds as a log-linear histogram of atomic counters:
/// recording is one relaxed increment, with no lock and no allocation, so it can
/// sit on every request of every layer.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
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
    }

    pub fn percentiles(&self) -> Percentiles {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        Percentiles {
            p50_ns: percentile(&counts, 50),
            p99_ns: percentile(&counts, 99),
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
}

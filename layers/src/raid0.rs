//! `raid0`: striping in `chunk` bytes across `stripes`.
//!
//! Chunk `k` of the device lives on stripe `k % n` at stripe offset
//! `(k / n) * chunk`. A request spanning chunks is split at chunk boundaries and
//! its parts run concurrently. Discard and write_zeroes cover one contiguous range
//! per stripe, so a large discard costs one call per stripe, not one per chunk.
//! FLUSH flushes every stripe. No on-disk metadata: the layout is the config.
//! Exposed size: `floor(stripe_size / chunk) * chunk * n` (stripes are equal).
//! Growing keeps every byte where it was: where chunk `k` lives does not
//! depend on the size, so grown stripes only add chunks past the old end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::exec::IoCtx;
use crate::join::try_join_all;
use crate::report::{LayerReport, Raid0Report};
use crate::{AsyncLayer, IoBuf, IoBufMut, Layer, Result};

pub struct Raid0 {
    stripes: Vec<Arc<dyn Layer>>,
    chunk: u64,
    size: AtomicU64,
}

impl Raid0 {
    /// `chunk` is a power of two; every stripe must be at least one chunk.
    pub fn new(stripes: Vec<Arc<dyn Layer>>, chunk: u64) -> std::result::Result<Raid0, String> {
        assert!(chunk.is_power_of_two(), "chunk validated as a power of two");
        let size = Self::measure(&stripes, chunk)?;
        Ok(Raid0 {
            size: AtomicU64::new(size),
            stripes,
            chunk,
        })
    }

    /// The size `stripes` give with `chunk`, or why they give none.
    fn measure(stripes: &[Arc<dyn Layer>], chunk: u64) -> std::result::Result<u64, String> {
        let smallest = stripes.iter().map(|s| s.size()).min().unwrap_or(0);
        if stripes.iter().any(|s| s.size() != smallest) {
            let sizes: Vec<String> = stripes.iter().map(|s| s.size().to_string()).collect();
            return Err(format!(
                "stripes differ in size ({} bytes)",
                sizes.join(", ")
            ));
        }
        let per_stripe = smallest - smallest % chunk;
        if per_stripe == 0 {
            return Err(format!(
                "stripes of {smallest} bytes hold no whole {chunk}-byte chunk"
            ));
        }
        Ok(per_stripe * stripes.len() as u64)
    }

    /// (stripe, offset in stripe) of device byte `offset`.
    fn locate(&self, offset: u64) -> (usize, u64) {
        let n = self.stripes.len() as u64;
        let chunk_index = offset / self.chunk;
        let stripe = (chunk_index % n) as usize;
        (stripe, (chunk_index / n) * self.chunk + offset % self.chunk)
    }

    /// Split `[offset, offset+len)` at chunk boundaries: (stripe, stripe offset, len).
    fn parts(&self, offset: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let end = offset + len;
        let mut parts = Vec::with_capacity((len / self.chunk + 2) as usize);
        let mut at = offset;
        while at < end {
            let n = (self.chunk - at % self.chunk).min(end - at);
            let (stripe, inner) = self.locate(at);
            parts.push((stripe, inner, n));
            at += n;
        }
        parts
    }

    /// The contiguous range each stripe holds of `[offset, offset+len)`.
    fn stripe_ranges(&self, offset: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let mut ranges: Vec<Option<(u64, u64)>> = vec![None; self.stripes.len()];
        // The first and last chunk of each stripe bound its range; the chunks in
        // between are contiguous on that stripe, so the first n+1 and last n+1
        // parts are enough to find both ends.
        for (stripe, inner, n) in self.edge_parts(offset, len) {
            let r = ranges[stripe].get_or_insert((inner, inner + n));
            r.0 = r.0.min(inner);
            r.1 = r.1.max(inner + n);
        }
        ranges
            .into_iter()
            .enumerate()
            .filter_map(|(s, r)| r.map(|(a, b)| (s, a, b - a)))
            .collect()
    }

    fn edge_parts(&self, offset: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let n = self.stripes.len() as u64;
        let span = (n + 1) * self.chunk;
        if len <= 2 * span {
            return self.parts(offset, len);
        }
        let mut edges = self.parts(offset, span - offset % self.chunk);
        let tail_start = offset + len - span;
        let tail_start = tail_start - tail_start % self.chunk;
        edges.extend(self.parts(tail_start, offset + len - tail_start));
        edges
    }
}

impl AsyncLayer for Raid0 {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Every stripe has grown (equally) already.
    async fn grow(&self, _: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        let size = Self::measure(&self.stripes, self.chunk)?;
        if size != new_size || size < self.size.load(Ordering::Acquire) {
            return Err(format!(
                "the stripes give {size} bytes, not the {new_size} to grow to"
            ));
        }
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    /// Each chunk's part of the request buffer goes to its stripe as its own
    /// buffer; the parts are joined back once every stripe has finished.
    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        let parts = self.parts(offset, buf.len() as u64);
        let mut pieces = buf.split_parts(parts.iter().map(|&(_, _, n)| n as usize));
        let futs = parts
            .iter()
            .zip(pieces.iter_mut())
            .map(|(&(stripe, inner, _), piece)| self.stripes[stripe].read(ctx, inner, piece))
            .collect();
        let res = try_join_all(futs).await;
        buf.join(pieces);
        res
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        let parts = self.parts(offset, buf.len() as u64);
        let mut at = 0;
        let pieces: Vec<IoBuf> = parts
            .iter()
            .map(|&(_, _, n)| {
                let piece = buf.slice(at..at + n as usize);
                at += n as usize;
                piece
            })
            .collect();
        let futs = parts
            .iter()
            .zip(&pieces)
            .map(|(&(stripe, inner, _), piece)| self.stripes[stripe].write(ctx, inner, piece))
            .collect();
        try_join_all(futs).await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        (try_join_all(self.stripes.iter().map(|s| s.flush(ctx)).collect())).await
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        let futs = self
            .stripe_ranges(offset, len)
            .into_iter()
            .map(|(s, inner, n)| self.stripes[s].discard(ctx, inner, n))
            .collect();
        try_join_all(futs).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        let futs = self
            .stripe_ranges(offset, len)
            .into_iter()
            .map(|(s, inner, n)| self.stripes[s].write_zeroes(ctx, inner, n))
            .collect();
        try_join_all(futs).await
    }

    fn discard_frees_space(&self) -> bool {
        self.stripes.iter().all(|s| s.discard_frees_space())
    }

    fn report(&self) -> LayerReport {
        LayerReport::Raid0(Raid0Report { chunk: self.chunk })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::null::NullLeaf;

    fn raid(n: usize, chunk: u64, stripe: u64) -> Raid0 {
        let stripes = (0..n)
            .map(|_| Arc::new(NullLeaf::new(stripe)) as Arc<dyn Layer>)
            .collect();
        Raid0::new(stripes, chunk).unwrap()
    }

    #[test]
    fn chunks_rotate_over_stripes() {
        let r = raid(3, 4096, 1 << 20);
        assert_eq!(r.locate(0), (0, 0));
        assert_eq!(r.locate(4096), (1, 0));
        assert_eq!(r.locate(8192 + 512), (2, 512));
        assert_eq!(r.locate(12288), (0, 4096));
    }

    #[test]
    fn stripe_ranges_match_the_per_chunk_split() {
        for n in 1..=4 {
            let r = raid(n, 4096, 1 << 20);
            for (offset, len) in [
                (0, 4096),
                (512, 100_000),
                (4096 * 7 + 512, 4096 * 40),
                (0, Layer::size(&r)),
            ] {
                let len = len.min(Layer::size(&r) - offset);
                let mut expected: Vec<Option<(u64, u64)>> = vec![None; n];
                for (s, inner, l) in r.parts(offset, len) {
                    let e = expected[s].get_or_insert((inner, inner + l));
                    assert!(
                        e.1 == inner || e.0 == inner,
                        "parts of a stripe are contiguous"
                    );
                    e.1 = e.1.max(inner + l);
                }
                let want: Vec<_> = expected
                    .into_iter()
                    .enumerate()
                    .filter_map(|(s, r)| r.map(|(a, b)| (s, a, b - a)))
                    .collect();
                assert_eq!(
                    r.stripe_ranges(offset, len),
                    want,
                    "n={n} offset={offset} len={len}"
                );
            }
        }
    }

    #[test]
    fn size_rounds_down_to_whole_chunks() {
        let r = raid(2, 65536, 65536 * 3 + 4096);
        assert_eq!(Layer::size(&r), 65536 * 3 * 2);
    }
}

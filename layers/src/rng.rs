//! A small deterministic generator (SplitMix64): model tests are a function of one
//! `u64` seed, printed on failure; `bench` and `fault` draw offsets and faults from
//! it without a global generator.

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Seeds for a test: `UBLK_STACK_SEED` (one seed, to replay a failure) or
/// `count` fixed seeds derived from `base`.
pub fn seeds(base: u64, count: usize) -> Vec<u64> {
    if let Ok(seed) = std::env::var("UBLK_STACK_SEED") {
        if let Ok(seed) = seed.trim().parse() {
            return vec![seed];
        }
    }
    (0..count as u64)
        .map(|i| base.wrapping_mul(1_000_003).wrapping_add(i))
        .collect()
}

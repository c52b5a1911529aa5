//! Turning a unit's bytes into what is stored below, and back.

use super::entry::{stored_crc, Extent, Kind};

/// Scratch bytes [`encode`] needs for a unit of `unit_bytes`.
pub fn scratch_bytes(unit_bytes: usize) -> usize {
    lz4_flex::block::get_maximum_output_size(unit_bytes)
}

/// The extent (location still 0) that stores `plain` as unit `unit`, with its
/// stored bytes in `scratch[..stored_bytes]` (for `raw`, `plain` itself is stored).
/// All zeros store nothing; lz4 is kept only when it saves a granule.
pub fn encode(unit: u64, plain: &[u8], scratch: &mut [u8], granule_bytes: u32) -> Extent {
    if plain.iter().all(|&b| b == 0) {
        return Extent::ZERO;
    }
    let granules = |bytes: usize| bytes.div_ceil(granule_bytes as usize);
    if let Ok(n) = lz4_flex::block::compress_into(plain, scratch) {
        if granules(n) < granules(plain.len()) {
            return Extent {
                kind: Kind::Lz4,
                granule: 0,
                stored_bytes: n as u32,
                crc: stored_crc(unit, &scratch[..n]),
            };
        }
    }
    Extent {
        kind: Kind::Raw,
        granule: 0,
        stored_bytes: plain.len() as u32,
        crc: stored_crc(unit, plain),
    }
}

/// Fill `out` (the whole unit) from the bytes read for `extent`; false when they
/// do not verify (crc, or lz4 data that does not decode to exactly one unit).
pub fn decode(unit: u64, extent: &Extent, stored: &[u8], out: &mut [u8]) -> bool {
    match extent.kind {
        Kind::Empty | Kind::Zero => {
            out.fill(0);
            true
        }
        Kind::Raw | Kind::Lz4 => {
            let Some(bytes) = stored.get(..extent.stored_bytes as usize) else {
                return false;
            };
            if stored_crc(unit, bytes) != extent.crc {
                return false;
            }
            if extent.kind == Kind::Raw {
                if bytes.len() != out.len() {
                    return false;
                }
                out.copy_from_slice(bytes);
                return true;
            }
            matches!(lz4_flex::block::decompress_into(bytes, out), Ok(n) if n == out.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn units_round_trip_in_every_kind() {
        let mut rng = Rng::new(1);
        let mut random = vec![0u8; 32768];
        rng.fill(&mut random);
        let text: Vec<u8> = b"block layers stack; "
            .iter()
            .cycle()
            .take(32768)
            .copied()
            .collect();
        let mut scratch = vec![0u8; scratch_bytes(32768)];
        let mut out = vec![1u8; 32768];
        for (plain, kind) in [
            (vec![0u8; 32768], Kind::Zero),
            (random, Kind::Raw),
            (text, Kind::Lz4),
        ] {
            let e = encode(9, &plain, &mut scratch, 4096);
            assert_eq!(e.kind, kind);
            let stored = if kind == Kind::Raw {
                &plain[..]
            } else {
                &scratch[..]
            };
            assert!(decode(9, &e, stored, &mut out));
            assert_eq!(out, plain);
            if e.holds_data() {
                assert!(!decode(10, &e, stored, &mut out), "wrong unit");
            }
        }
    }

    #[test]
    fn damaged_stored_bytes_fail_without_panicking() {
        let text: Vec<u8> = (0..32768u32).map(|i| (i / 7 % 13) as u8 + b'a').collect();
        let mut scratch = vec![0u8; scratch_bytes(32768)];
        let e = encode(0, &text, &mut scratch, 4096);
        assert_eq!(e.kind, Kind::Lz4);
        let mut out = vec![0u8; 32768];
        let mut rng = Rng::new(4);
        for _ in 0..2000 {
            let mut stored = scratch[..e.stored_bytes as usize].to_vec();
            let at = rng.below(stored.len() as u64) as usize;
            stored[at] ^= 1 + rng.below(255) as u8;
            // Skip the crc, as a collision would: decoding bad lz4 must not panic.
            let _ = lz4_flex::block::decompress_into(&stored, &mut out);
            assert!(!decode(0, &e, &stored, &mut out));
        }
        assert!(!decode(0, &e, &scratch[..3], &mut out), "short read");
    }
}

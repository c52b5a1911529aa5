//! Turning a unit's bytes into what is stored below, and back.
//!
//! A unit is cut into 4 KiB pieces (the last may be shorter), each compressed on
//! its own, and stored packed: a header of one u16 LE code per piece, then the
//! pieces' bytes in order. Code 0: the piece is zeros (no bytes); code = piece
//! length: stored raw; any other code: that many bytes of one lz4 block that
//! decodes to exactly the piece. Packing keeps allocation per unit (no 4 KiB
//! rounding per piece) while a 4 KiB write recompresses one piece and copies the
//! others' bytes as they are.

use super::entry::{stored_crc, Extent, Kind};

pub const PIECE_BYTES: usize = 4096;
/// lz4's worst case for one piece.
const PIECE_SCRATCH: usize = 16 + 4 + PIECE_BYTES * 110 / 100;

/// How the unit was stored before, so unchanged pieces keep their bytes.
#[derive(Clone, Copy)]
pub enum Old<'a> {
    /// Zeros, or nothing known: every piece is encoded from the plain bytes.
    Plain,
    /// Stored raw: unchanged pieces stay raw without another try at lz4.
    Raw,
    /// Packed: the verified stored bytes.
    Packed(&'a [u8]),
}

fn piece_count(unit_bytes: usize) -> usize {
    unit_bytes.div_ceil(PIECE_BYTES)
}

/// Scratch bytes [`encode`] needs for a unit of `unit_bytes`.
pub fn scratch_bytes(unit_bytes: usize) -> usize {
    2 * piece_count(unit_bytes) + unit_bytes
}

/// `(code, bytes)` of every piece of a packed unit; `None` if malformed.
fn split(stored: &[u8], unit_bytes: usize) -> Option<Vec<(u16, &[u8])>> {
    let count = piece_count(unit_bytes);
    let header = stored.get(..2 * count)?;
    let mut at = 2 * count;
    let mut out = Vec::with_capacity(count);
    for (i, code) in header.chunks(2).enumerate() {
        let code = u16::from_le_bytes([code[0], code[1]]);
        let piece_len = PIECE_BYTES.min(unit_bytes - i * PIECE_BYTES);
        if usize::from(code) > piece_len {
            return None;
        }
        let bytes = stored.get(at..at + usize::from(code))?;
        at += usize::from(code);
        out.push((code, bytes));
    }
    (at == stored.len()).then_some(out)
}

/// Encode `plain` (the whole unit) as unit `unit` into `out`: `zero` when all
/// zeros, `lz4` (packed, in `out[..stored_bytes]`) when that saves a granule,
/// else `raw` (`plain` itself is stored). `dirty(i)`: piece `i` changed since `old`.
pub fn encode(
    unit: u64,
    plain: &[u8],
    old: Old<'_>,
    dirty: &dyn Fn(usize) -> bool,
    out: &mut [u8],
    granule_bytes: u32,
) -> Extent {
    let count = piece_count(plain.len());
    let old_pieces = match old {
        Old::Packed(stored) => split(stored, plain.len()),
        _ => None,
    };
    let mut tmp = [0u8; PIECE_SCRATCH];
    let mut at = 2 * count;
    let mut all_zero = true;
    for (i, piece) in plain.chunks(PIECE_BYTES).enumerate() {
        let reuse = old_pieces.as_ref().filter(|_| !dirty(i)).map(|p| p[i]);
        let (code, bytes): (usize, &[u8]) = match reuse {
            Some((code, bytes)) => (usize::from(code), bytes),
            None if piece.iter().all(|&b| b == 0) => (0, &[]),
            None if matches!(old, Old::Raw) && !dirty(i) => (piece.len(), piece),
            None => match lz4_flex::block::compress_into(piece, &mut tmp) {
                Ok(n) if n < piece.len() => (n, &tmp[..n]),
                _ => (piece.len(), piece),
            },
        };
        all_zero &= code == 0;
        out[2 * i..2 * i + 2].copy_from_slice(&(code as u16).to_le_bytes());
        out[at..at + code].copy_from_slice(bytes);
        at += code;
    }
    if all_zero {
        return Extent::ZERO;
    }
    let granules = |bytes: usize| bytes.div_ceil(granule_bytes as usize);
    if granules(at) < granules(plain.len()) {
        return Extent {
            kind: Kind::Lz4,
            granule: 0,
            stored_bytes: at as u32,
            crc: stored_crc(unit, &out[..at]),
        };
    }
    Extent {
        kind: Kind::Raw,
        granule: 0,
        stored_bytes: plain.len() as u32,
        crc: stored_crc(unit, plain),
    }
}

/// Fill `out` (the whole unit) from the bytes read for `extent`; false when they
/// do not verify (crc, header, or a piece that does not decode to its length).
#[cfg(test)]
pub fn decode(unit: u64, extent: &Extent, stored: &[u8], out: &mut [u8]) -> bool {
    let all = 0..out.len();
    decode_range(unit, extent, stored, out, all)
}

/// As [`decode`], but only the pieces overlapping `want` are filled in `out`
/// (a 4 KiB read decompresses one piece); the crc still covers every byte.
pub fn decode_range(
    unit: u64,
    extent: &Extent,
    stored: &[u8],
    out: &mut [u8],
    want: std::ops::Range<usize>,
) -> bool {
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
                // A short unit stored whole (by a raise) has zeros past its end.
                let Some((unit_bytes, past)) = bytes.split_at_checked(out.len()) else {
                    return false;
                };
                if past.iter().any(|&b| b != 0) {
                    return false;
                }
                out.copy_from_slice(unit_bytes);
                return true;
            }
            unpack(bytes, out, want)
        }
    }
}

fn unpack(stored: &[u8], out: &mut [u8], want: std::ops::Range<usize>) -> bool {
    let Some(pieces) = split(stored, out.len()) else {
        return false;
    };
    for (i, ((code, bytes), piece)) in pieces
        .into_iter()
        .zip(out.chunks_mut(PIECE_BYTES))
        .enumerate()
    {
        let start = i * PIECE_BYTES;
        if start >= want.end || start + piece.len() <= want.start {
            continue;
        }
        let ok = match usize::from(code) {
            0 => {
                piece.fill(0);
                true
            }
            n if n == piece.len() => {
                piece.copy_from_slice(bytes);
                true
            }
            _ => {
                matches!(lz4_flex::block::decompress_into(bytes, piece), Ok(n) if n == piece.len())
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn text(len: usize) -> Vec<u8> {
        b"block layers stack; "
            .iter()
            .cycle()
            .take(len)
            .copied()
            .collect()
    }

    fn stored<'a>(e: &Extent, plain: &'a [u8], out: &'a [u8]) -> &'a [u8] {
        if e.kind == Kind::Raw {
            plain
        } else {
            out
        }
    }

    #[test]
    fn units_round_trip_in_every_kind() {
        let mut rng = Rng::new(1);
        let mut random = vec![0u8; 32768];
        rng.fill(&mut random);
        let mut mixed = random.clone();
        mixed[4096..20480].copy_from_slice(&text(16384));
        mixed[20480..24576].fill(0);
        let mut out = vec![0u8; scratch_bytes(32768)];
        let mut back = vec![1u8; 32768];
        for (plain, kind) in [
            (vec![0u8; 32768], Kind::Zero),
            (random, Kind::Raw),
            (text(32768), Kind::Lz4),
            (mixed, Kind::Lz4),
            (text(512), Kind::Raw),
            (text(12288 + 512), Kind::Lz4),
        ] {
            let e = encode(9, &plain, Old::Plain, &|_| true, &mut out, 4096);
            assert_eq!(e.kind, kind, "{} bytes", plain.len());
            let back = &mut back[..plain.len()];
            assert!(decode(9, &e, stored(&e, &plain, &out), back));
            assert!(*back == plain[..]);
            if e.holds_data() {
                assert!(
                    !decode(10, &e, stored(&e, &plain, &out), back),
                    "wrong unit"
                );
            }
        }
    }

    #[test]
    fn unchanged_pieces_keep_their_bytes() {
        let mut plain = text(32768);
        let mut first = vec![0u8; scratch_bytes(32768)];
        let e = encode(3, &plain, Old::Plain, &|_| true, &mut first, 4096);
        let old = first[..e.stored_bytes as usize].to_vec();
        plain[8192..12288].copy_from_slice(&[b'x'; 4096]);
        let mut second = vec![0u8; scratch_bytes(32768)];
        let e2 = encode(3, &plain, Old::Packed(&old), &|i| i == 2, &mut second, 4096);
        let mut back = vec![0u8; 32768];
        assert!(decode(3, &e2, &second, &mut back));
        assert!(back == plain);
        // Raw units stay raw cheaply; the changed piece is still tried.
        let mut rng = Rng::new(2);
        rng.fill(&mut plain);
        let e3 = encode(3, &plain, Old::Raw, &|i| i == 0, &mut second, 4096);
        assert_eq!(e3.kind, Kind::Raw);
    }

    #[test]
    fn damaged_stored_bytes_fail_without_panicking() {
        let plain = text(32768);
        let mut out = vec![0u8; scratch_bytes(32768)];
        let e = encode(0, &plain, Old::Plain, &|_| true, &mut out, 4096);
        let good = out[..e.stored_bytes as usize].to_vec();
        let mut back = vec![0u8; 32768];
        let mut rng = Rng::new(4);
        for _ in 0..3000 {
            let mut bad = good.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(bad.len() as u64) as usize;
                bad[at] ^= 1 + rng.below(255) as u8;
            }
            // Skip the crc, as a collision would: unpacking must not panic.
            let _ = unpack(&bad, &mut back, 0..32768);
            assert!(!decode(0, &e, &bad, &mut back));
            let _ = encode(
                0,
                &plain,
                Old::Packed(&bad),
                &|i| i % 2 == 0,
                &mut out,
                4096,
            );
        }
        assert!(!decode(0, &e, &good[..3], &mut back), "short read");
        back.fill(7);
        assert!(decode_range(0, &e, &good, &mut back, 5000..6000));
        assert!(back[4096..8192] == plain[4096..8192] && back[0] == 7);
    }
}

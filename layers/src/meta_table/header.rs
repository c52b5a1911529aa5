//! The table header: the durable flushed epoch (and, for a grouped table, how
//! many entries the table covers), in two slots so that a torn header write
//! never loses the last one.
//!
//! | bytes of a slot | contents                                           |
//! |-----------------|----------------------------------------------------|
//! | 0..8            | magic `UBLKEPCH` (flat) or `UBLKCOVR` (grouped, or |
//! |                 | flat with a value its layer records)               |
//! | 8..16           | flushed epoch, u64 LE                              |
//! | 16..24          | sequence number, u64 LE, +1 per header write       |
//! | flat: 24..28    | crc32 of bytes 0..24, u32 LE                       |
//! | grouped: 24..32 | entries covered (or the value), u64 LE             |
//! | grouped: 32..36 | crc32 of bytes 0..32, u32 LE                       |
//! | the rest        | zero                                               |
//!
//! An all-zero slot is valid: sequence 0, flushed epoch 0 (a fresh table),
//! no coverage recorded.

use super::PAGE_BYTES;

const MAGIC: &[u8; 8] = b"UBLKEPCH";
const MAGIC_COVERED: &[u8; 8] = b"UBLKCOVR";
const CRC_AT: usize = 24;
const COVERED_AT: usize = 24;
const COVERED_CRC_AT: usize = 32;

/// A decoded header slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub seq: u64,
    pub flushed: u64,
    /// Entries covered (grouped tables only; `None` in a flat table's header
    /// and in an all-zero slot).
    pub covered: Option<u64>,
}

/// Decode one header slot; `None` when it is not a valid slot (any input).
pub fn decode_header(slot: &[u8]) -> Option<Header> {
    if slot.len() != PAGE_BYTES {
        return None;
    }
    if slot.iter().all(|&b| b == 0) {
        return Some(Header::default());
    }
    let u64_at = |at: usize| u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|i| slot[at + i]));
    let (crc_at, covered) = match &slot[..8] {
        m if m == MAGIC => (CRC_AT, None),
        m if m == MAGIC_COVERED => (COVERED_CRC_AT, Some(u64_at(COVERED_AT))),
        _ => return None,
    };
    let crc = u32::from_le_bytes([0, 1, 2, 3].map(|i| slot[crc_at + i]));
    let valid =
        crc32fast::hash(&slot[..crc_at]) == crc && slot[crc_at + 4..].iter().all(|&b| b == 0);
    valid.then(|| Header {
        flushed: u64_at(8),
        seq: u64_at(16),
        covered,
    })
}

pub fn encode_header(h: &Header) -> Vec<u8> {
    let mut slot = vec![0u8; PAGE_BYTES];
    slot[8..16].copy_from_slice(&h.flushed.to_le_bytes());
    slot[16..24].copy_from_slice(&h.seq.to_le_bytes());
    let crc_at = match h.covered {
        None => {
            slot[..8].copy_from_slice(MAGIC);
            CRC_AT
        }
        Some(covered) => {
            slot[..8].copy_from_slice(MAGIC_COVERED);
            slot[COVERED_AT..COVERED_AT + 8].copy_from_slice(&covered.to_le_bytes());
            COVERED_CRC_AT
        }
    };
    let crc = crc32fast::hash(&slot[..crc_at]);
    slot[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// The newer of two slots (by sequence) among those that decode, and its index.
pub fn newest(slots: [Option<Header>; 2]) -> Option<(Header, u8)> {
    match slots {
        [Some(a), Some(b)] if b.seq > a.seq => Some((b, 1)),
        [Some(a), _] => Some((a, 0)),
        [None, Some(b)] => Some((b, 1)),
        [None, None] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn round_trips_and_damage_is_detected() {
        let h = Header {
            seq: 9,
            flushed: 1234,
            covered: None,
        };
        let mut slot = encode_header(&h);
        assert_eq!(decode_header(&slot), Some(h));
        let g = Header {
            covered: Some(77),
            ..h
        };
        let mut grouped = encode_header(&g);
        assert_eq!(decode_header(&grouped), Some(g));
        grouped[COVERED_AT] ^= 1;
        assert_eq!(decode_header(&grouped), None);
        assert_eq!(decode_header(&[0u8; PAGE_BYTES]), Some(Header::default()));
        slot[9] ^= 1;
        assert_eq!(decode_header(&slot), None);
        assert_eq!(decode_header(&slot[..100]), None);
    }

    #[test]
    fn the_newer_valid_slot_wins() {
        let h = |seq| {
            Some(Header {
                seq,
                flushed: seq,
                covered: Some(seq),
            })
        };
        assert_eq!(newest([h(1), h(2)]), Some((h(2).unwrap(), 1)));
        assert_eq!(newest([h(3), h(2)]), Some((h(3).unwrap(), 0)));
        assert_eq!(newest([None, h(2)]), Some((h(2).unwrap(), 1)));
        assert_eq!(newest([None, None]), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(5);
        let mut slot = encode_header(&Header {
            seq: 1,
            flushed: 1,
            covered: Some(1),
        });
        for _ in 0..2000 {
            let at = rng.below(PAGE_BYTES as u64) as usize;
            slot[at] = rng.next_u64() as u8;
            let _ = decode_header(&slot);
        }
    }
}

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
//! A placed table (flat pages, then runs of pages placed in its layer's data
//! area when it grew) has its own magic, `UBLKPLCD`:
//!
//! | bytes of a slot | contents                                           |
//! |-----------------|----------------------------------------------------|
//! | 0..24           | magic, flushed epoch, sequence number, as above    |
//! | 24..32          | the value its layer records, u64 LE (0: none)      |
//! | 32..40          | entries covered, u64 LE                            |
//! | 40..48          | a second value its layer records, u64 LE           |
//! | 48..52          | number of placed runs `n`, u32 LE (at most 31)     |
//! | 52..56          | zero                                               |
//! | 56..56+24n      | runs: first page, byte offset below, pages (u64 LE |
//! |                 | each); pages number on from the flat ones, in order |
//! | then 4 bytes    | crc32 of every byte before it, u32 LE              |
//! | the rest        | zero                                               |
//!
//! An all-zero slot is valid: sequence 0, flushed epoch 0 (a fresh table),
//! no coverage recorded.

use super::PAGE_BYTES;

const MAGIC: &[u8; 8] = b"UBLKEPCH";
const MAGIC_COVERED: &[u8; 8] = b"UBLKCOVR";
const MAGIC_PLACED: &[u8; 8] = b"UBLKPLCD";
const CRC_AT: usize = 24;
const COVERED_AT: usize = 24;
const COVERED_CRC_AT: usize = 32;
const PLACED_ENTRIES_AT: usize = 32;
const PLACED_VALUE_AT: usize = 40;
const PLACED_COUNT_AT: usize = 48;
const PLACED_RUNS_AT: usize = 56;
const RUN_BYTES: usize = 24;
/// Placed runs one header can list.
pub const MAX_PLACED_RUNS: usize = 31;

/// A run of a placed table's pages: `pages` page pairs from byte `at` below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacedRun {
    pub first: u64,
    pub at: u64,
    pub pages: u64,
}

/// What a placed table's header adds.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Placed {
    pub entries: u64,
    /// A second value the layer records (`compress`: the exposed size).
    pub value: u64,
    pub runs: Vec<PlacedRun>,
}

/// A decoded header slot.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub seq: u64,
    pub flushed: u64,
    /// Entries covered (grouped tables), or the value a flat or placed
    /// table's layer records; `None` when none is recorded.
    pub covered: Option<u64>,
    /// A placed table's coverage and runs.
    pub placed: Option<Placed>,
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
    let (crc_at, covered, placed) = match &slot[..8] {
        m if m == MAGIC => (CRC_AT, None, None),
        m if m == MAGIC_COVERED => (COVERED_CRC_AT, Some(u64_at(COVERED_AT)), None),
        m if m == MAGIC_PLACED => {
            let count = u32::from_le_bytes([0, 1, 2, 3].map(|i| slot[PLACED_COUNT_AT + i]));
            if count as usize > MAX_PLACED_RUNS {
                return None;
            }
            let runs = (0..count as usize)
                .map(|r| {
                    let at = PLACED_RUNS_AT + r * RUN_BYTES;
                    PlacedRun {
                        first: u64_at(at),
                        at: u64_at(at + 8),
                        pages: u64_at(at + 16),
                    }
                })
                .collect();
            let placed = Placed {
                entries: u64_at(PLACED_ENTRIES_AT),
                value: u64_at(PLACED_VALUE_AT),
                runs,
            };
            let value = u64_at(COVERED_AT);
            let crc_at = PLACED_RUNS_AT + count as usize * RUN_BYTES;
            (crc_at, (value != 0).then_some(value), Some(placed))
        }
        _ => return None,
    };
    let crc = u32::from_le_bytes([0, 1, 2, 3].map(|i| slot[crc_at + i]));
    let valid =
        crc32fast::hash(&slot[..crc_at]) == crc && slot[crc_at + 4..].iter().all(|&b| b == 0);
    valid.then(|| Header {
        flushed: u64_at(8),
        seq: u64_at(16),
        covered,
        placed,
    })
}

/// Encode a header slot. A placed header lists at most
/// [`MAX_PLACED_RUNS`] runs (the table refuses a grow past that).
pub fn encode_header(h: &Header) -> Vec<u8> {
    let mut slot = vec![0u8; PAGE_BYTES];
    slot[8..16].copy_from_slice(&h.flushed.to_le_bytes());
    slot[16..24].copy_from_slice(&h.seq.to_le_bytes());
    let crc_at = match (&h.placed, h.covered) {
        (Some(placed), value) => {
            assert!(placed.runs.len() <= MAX_PLACED_RUNS);
            slot[..8].copy_from_slice(MAGIC_PLACED);
            let value = value.unwrap_or(0);
            slot[COVERED_AT..COVERED_AT + 8].copy_from_slice(&value.to_le_bytes());
            slot[PLACED_ENTRIES_AT..PLACED_ENTRIES_AT + 8]
                .copy_from_slice(&placed.entries.to_le_bytes());
            slot[PLACED_VALUE_AT..PLACED_VALUE_AT + 8].copy_from_slice(&placed.value.to_le_bytes());
            slot[PLACED_COUNT_AT..PLACED_COUNT_AT + 4]
                .copy_from_slice(&(placed.runs.len() as u32).to_le_bytes());
            for (r, run) in placed.runs.iter().enumerate() {
                let at = PLACED_RUNS_AT + r * RUN_BYTES;
                slot[at..at + 8].copy_from_slice(&run.first.to_le_bytes());
                slot[at + 8..at + 16].copy_from_slice(&run.at.to_le_bytes());
                slot[at + 16..at + 24].copy_from_slice(&run.pages.to_le_bytes());
            }
            PLACED_RUNS_AT + placed.runs.len() * RUN_BYTES
        }
        (None, None) => {
            slot[..8].copy_from_slice(MAGIC);
            CRC_AT
        }
        (None, Some(covered)) => {
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
            placed: None,
        };
        let mut slot = encode_header(&h);
        assert_eq!(decode_header(&slot), Some(h.clone()));
        let g = Header {
            covered: Some(77),
            ..h.clone()
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
                placed: None,
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
        let mut slot = encode_header(&placed_header(3));
        for _ in 0..2000 {
            let at = rng.below(PAGE_BYTES as u64) as usize;
            slot[at] = rng.next_u64() as u8;
            let _ = decode_header(&slot);
        }
        let mut slot = encode_header(&Header {
            seq: 1,
            flushed: 1,
            covered: Some(1),
            placed: None,
        });
        for _ in 0..2000 {
            let at = rng.below(PAGE_BYTES as u64) as usize;
            slot[at] = rng.next_u64() as u8;
            let _ = decode_header(&slot);
        }
    }

    fn placed_header(runs: u64) -> Header {
        Header {
            seq: 4,
            flushed: 3,
            covered: Some(1 << 30),
            placed: Some(Placed {
                entries: 5000,
                value: 160 << 20,
                runs: (0..runs)
                    .map(|r| PlacedRun {
                        first: 10 + r * 7,
                        at: (100 + r * 14) * 4096,
                        pages: 7,
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn placed_headers_round_trip_and_damage_is_detected() {
        for runs in [0, 1, MAX_PLACED_RUNS as u64] {
            let h = placed_header(runs);
            let slot = encode_header(&h);
            assert_eq!(decode_header(&slot), Some(h.clone()));
            let end = PLACED_RUNS_AT + runs as usize * RUN_BYTES + 4;
            // Every byte the crc covers, and the zeros after it, are checked.
            for at in (0..end + 8).step_by(3) {
                let mut bad = slot.clone();
                bad[at] ^= 0x10;
                assert_eq!(decode_header(&bad), None, "runs {runs}, byte {at}");
            }
        }
        // No value recorded yet reads back as none.
        let h = Header {
            covered: None,
            ..placed_header(1)
        };
        assert_eq!(decode_header(&encode_header(&h)), Some(h));
        // A run count past what a slot may hold is refused, crc or not.
        let mut slot = encode_header(&placed_header(1));
        slot[PLACED_COUNT_AT..PLACED_COUNT_AT + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(decode_header(&slot), None);
        slot[PLACED_COUNT_AT..PLACED_COUNT_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_header(&slot), None);
    }
}

//! Map entries: where the stored bytes of one unit live on the layer below.
//!
//! An entry is 32 bytes, `cur` ‖ `prev`, each an [`Extent`] of 16 bytes
//! (little endian):
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..6   | first granule of the extent in the data area (u48)           |
//! | 6      | kind: 0 empty, 1 zero, 2 raw, 3 lz4                          |
//! | 7      | reserved, 0                                                  |
//! | 8..12  | stored length in bytes (u32)                                 |
//! | 12..16 | crc32(unit index as u64 LE ‖ stored bytes) (u32)             |
//!
//! A `raw` extent stores the unit as is: its length is the unit's, or, for a
//! short last unit, also a whole unit padded with zeros (what a raise of the
//! exposed size writes before the unit becomes whole).
//!
//! `empty` and `zero` extents own no granules and have every other field 0. A `cur`
//! of either kind reads as zeros; as `prev`, `zero` means "the previous contents
//! were zeros" (a valid fallback) and `empty` means "no fallback". An all-zero
//! entry is a never-written unit. Decoding checks every field against the
//! geometry, so a damaged entry is an error value, never a panic or an extent
//! pointing outside the data area.

/// Compression unit: see the module doc of `compress` for why 32 KiB. Here
/// because an entry's length rule needs it (a short last unit may be stored
/// whole); the rest of the format takes it from `format.rs`.
pub const UNIT_BYTES: u32 = 32 * 1024;

/// What an extent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Empty,
    Zero,
    Raw,
    Lz4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub kind: Kind,
    pub granule: u64,
    pub stored_bytes: u32,
    pub crc: u32,
}

pub const EXTENT_BYTES: usize = 16;
pub const ENTRY_BYTES: usize = 2 * EXTENT_BYTES;
/// An entry as the map table stores it: with the table's epoch after it.
pub const TABLE_ENTRY_BYTES: usize = ENTRY_BYTES + crate::meta_table::EPOCH_BYTES;
const MAX_GRANULE: u64 = (1 << 48) - 1;

/// What a decoded extent must fit in.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of the unit this entry maps (the last unit may be short).
    pub unit_bytes: u32,
    pub granule_bytes: u32,
    /// Granules in the data area.
    pub granules: u64,
}

/// The crc stored for `bytes` as the contents of unit `unit`: binding the index
/// catches bytes that belong to another unit (a reused or misdirected extent).
pub fn stored_crc(unit: u64, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&unit.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

impl Extent {
    pub const EMPTY: Extent = Extent::bare(Kind::Empty);
    pub const ZERO: Extent = Extent::bare(Kind::Zero);

    const fn bare(kind: Kind) -> Extent {
        Extent {
            kind,
            granule: 0,
            stored_bytes: 0,
            crc: 0,
        }
    }

    /// Whether the extent owns granules below.
    pub fn holds_data(&self) -> bool {
        matches!(self.kind, Kind::Raw | Kind::Lz4)
    }

    /// Granules owned (0 for `empty` and `zero`).
    pub fn granules(&self, granule_bytes: u32) -> u64 {
        if self.holds_data() {
            u64::from(self.stored_bytes).div_ceil(u64::from(granule_bytes))
        } else {
            0
        }
    }

    pub fn encode(&self, out: &mut [u8]) {
        debug_assert!(self.granule <= MAX_GRANULE);
        out[..EXTENT_BYTES].fill(0);
        out[0..6].copy_from_slice(&self.granule.to_le_bytes()[..6]);
        out[6] = match self.kind {
            Kind::Empty => 0,
            Kind::Zero => 1,
            Kind::Raw => 2,
            Kind::Lz4 => 3,
        };
        out[8..12].copy_from_slice(&self.stored_bytes.to_le_bytes());
        out[12..16].copy_from_slice(&self.crc.to_le_bytes());
    }

    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Extent, &'static str> {
        if bytes.len() < EXTENT_BYTES {
            return Err("short extent");
        }
        let mut granule = [0u8; 8];
        granule[..6].copy_from_slice(&bytes[0..6]);
        let u32_at = |at: usize| u32::from_le_bytes([0, 1, 2, 3].map(|i| bytes[at + i]));
        let extent = Extent {
            kind: match bytes[6] {
                0 => Kind::Empty,
                1 => Kind::Zero,
                2 => Kind::Raw,
                3 => Kind::Lz4,
                _ => return Err("unknown extent kind"),
            },
            granule: u64::from_le_bytes(granule),
            stored_bytes: u32_at(8),
            crc: u32_at(12),
        };
        if bytes[7] != 0 {
            return Err("reserved byte set");
        }
        if !extent.holds_data() {
            if extent.granule != 0 || extent.stored_bytes != 0 || extent.crc != 0 {
                return Err("empty or zero extent with a location");
            }
            return Ok(extent);
        }
        let valid_len = match extent.kind {
            // A short last unit may also be stored whole, padded with zeros:
            // a raise writes it so before the unit becomes whole.
            Kind::Raw => {
                extent.stored_bytes == limits.unit_bytes
                    || (limits.unit_bytes < UNIT_BYTES && extent.stored_bytes == UNIT_BYTES)
            }
            _ => extent.stored_bytes > 0 && extent.stored_bytes < limits.unit_bytes,
        };
        if !valid_len {
            return Err("stored length does not fit the unit");
        }
        let end = extent
            .granule
            .checked_add(extent.granules(limits.granule_bytes));
        if end.map_or(true, |end| end > limits.granules) {
            return Err("extent outside the data area");
        }
        Ok(extent)
    }
}

pub fn encode_entry(cur: &Extent, prev: &Extent, out: &mut [u8]) {
    cur.encode(&mut out[..EXTENT_BYTES]);
    prev.encode(&mut out[EXTENT_BYTES..ENTRY_BYTES]);
}

/// `(cur, prev)` of an entry.
pub fn decode_entry(bytes: &[u8], limits: &Limits) -> Result<(Extent, Extent), &'static str> {
    if bytes.len() < ENTRY_BYTES {
        return Err("short entry");
    }
    Ok((
        Extent::decode(&bytes[..EXTENT_BYTES], limits)?,
        Extent::decode(&bytes[EXTENT_BYTES..ENTRY_BYTES], limits)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const LIMITS: Limits = Limits {
        unit_bytes: 32768,
        granule_bytes: 4096,
        granules: 1000,
    };

    fn lz4(granule: u64, stored_bytes: u32) -> Extent {
        Extent {
            kind: Kind::Lz4,
            granule,
            stored_bytes,
            crc: 0xdead_beef,
        }
    }

    #[test]
    fn entries_round_trip_and_zero_bytes_are_a_fresh_unit() {
        let raw = Extent {
            kind: Kind::Raw,
            granule: 992,
            stored_bytes: 32768,
            crc: 7,
        };
        for (cur, prev) in [
            (lz4(3, 5000), raw),
            (Extent::ZERO, lz4(0, 1)),
            (raw, Extent::EMPTY),
        ] {
            let mut bytes = [0u8; ENTRY_BYTES];
            encode_entry(&cur, &prev, &mut bytes);
            assert_eq!(decode_entry(&bytes, &LIMITS), Ok((cur, prev)));
        }
        assert_eq!(
            decode_entry(&[0u8; ENTRY_BYTES], &LIMITS),
            Ok((Extent::EMPTY, Extent::EMPTY))
        );
        assert_eq!(lz4(0, 4097).granules(4096), 2);
        assert_eq!(Extent::ZERO.granules(4096), 0);
    }

    #[test]
    fn extents_that_do_not_fit_are_refused() {
        let mut bytes = [0u8; EXTENT_BYTES];
        for bad in [
            lz4(999, 4097),
            lz4(1 << 40, 10),
            lz4(0, 0),
            lz4(0, 32768),
            Extent {
                kind: Kind::Raw,
                granule: 0,
                stored_bytes: 100,
                crc: 0,
            },
        ] {
            bad.encode(&mut bytes);
            assert!(Extent::decode(&bytes, &LIMITS).is_err(), "{bad:?}");
        }
        bytes = [0u8; EXTENT_BYTES];
        bytes[6] = 9;
        assert_eq!(Extent::decode(&bytes, &LIMITS), Err("unknown extent kind"));
        bytes[6] = 1;
        bytes[0] = 1;
        assert!(Extent::decode(&bytes, &LIMITS).is_err());
    }

    #[test]
    fn crc_binds_the_unit() {
        assert_ne!(stored_crc(1, b"abc"), stored_crc(2, b"abc"));
    }

    #[test]
    fn decode_never_panics_on_random_bytes() {
        let mut rng = Rng::new(11);
        let mut bytes = [0u8; ENTRY_BYTES];
        let mut valid = 0;
        for round in 0..20_000 {
            if round % 2 == 0 {
                rng.fill(&mut bytes);
            } else {
                // Mostly-valid entries with one byte changed reach the deeper checks.
                encode_entry(
                    &lz4(rng.below(1100), rng.below(40000) as u32),
                    &Extent::ZERO,
                    &mut bytes,
                );
                bytes[rng.below(ENTRY_BYTES as u64) as usize] = rng.next_u64() as u8;
            }
            let limits = Limits {
                unit_bytes: 1 + rng.below(65536) as u32,
                granule_bytes: 512 << rng.below(4),
                granules: rng.below(2000),
            };
            if let Ok((cur, prev)) = decode_entry(&bytes, &limits) {
                valid += 1;
                for e in [cur, prev] {
                    assert!(e.granule + e.granules(limits.granule_bytes) <= limits.granules);
                }
            }
        }
        assert!(valid > 0);
    }
}

//! The mirror's on-disk format, pure parts: the leg layout, the superblock
//! parameters, and the state record (per-leg health plus the write-intent
//! bitmap) kept in two slots on every leg. See `docs/formats/mirror.md`.
//!
//! Record slot (4096 bytes, little endian):
//!
//! | bytes      | contents                                                 |
//! |------------|----------------------------------------------------------|
//! | 0..8       | generation, u64, +1 on every record write                |
//! | 8..9       | leg count N (1..=32)                                     |
//! | 16..16+N   | health per leg: 0 ok, 1 failed, 2 rebuilding             |
//! | 48..52     | region count R, u32                                      |
//! | 56..64     | exposed size, u64; 0 in records older than growth: the   |
//! |            | superblock's                                             |
//! | 64..64+R/8 | write-intent bitmap, bit r of byte r/8 = region r dirty  |
//! | 4088..4092 | crc32 of bytes 0..4088                                   |
//!
//! Generation g goes to slot g % 2, and every record write is flushed before the
//! next one starts, so the other slot always holds the previous, durable record.
//! An all-zero slot was never written.

/// Byte offsets on every leg.
pub const SUPERBLOCK_AT: u64 = 0;
pub const RECORD_AT: u64 = 4096;
pub const RECORD_BYTES: usize = 4096;
/// Where the mirrored data starts on each leg: after the superblock and the two
/// record slots.
pub const DATA_START: u64 = RECORD_AT + 2 * RECORD_BYTES as u64;
pub const FORMAT_VERSION: u32 = 1;
pub const MAX_LEGS: usize = 32;

const GENERATION_AT: usize = 0;
const LEG_COUNT_AT: usize = 8;
const HEALTH_AT: usize = 16;
const REGION_COUNT_AT: usize = 48;
const SIZE_AT: usize = 56;
const BITMAP_AT: usize = 64;
const CRC_AT: usize = 4088;
/// Most regions a record can hold.
pub const MAX_REGIONS: u64 = ((CRC_AT - BITMAP_AT) * 8) as u64;

/// Smallest and usual largest write-intent region.
const MIN_REGION_BYTES: u64 = 64 << 10;
const MAX_REGION_BYTES: u64 = 64 << 20;

/// The size a mirror exposes over legs of `leg_size` bytes.
pub fn exposed_size(leg_size: u64, block_size: u32) -> u64 {
    let block = u64::from(block_size).max(1);
    leg_size.saturating_sub(DATA_START) / block * block
}

/// Region size chosen at format time: about 64 regions on small devices (so
/// tests see several), 64 MiB on large ones, doubled until the bitmap fits.
pub fn region_bytes_for(size: u64) -> u64 {
    let mut region = size
        .div_ceil(64)
        .next_power_of_two()
        .clamp(MIN_REGION_BYTES, MAX_REGION_BYTES);
    while size.div_ceil(region) > MAX_REGIONS {
        region *= 2;
    }
    region
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    Failed,
    Rebuilding,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Failed => "failed",
            Health::Rebuilding => "rebuilding",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Health::Ok => 0,
            Health::Failed => 1,
            Health::Rebuilding => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Health> {
        Some(match code {
            0 => Health::Ok,
            1 => Health::Failed,
            2 => Health::Rebuilding,
            _ => return None,
        })
    }
}

/// The superblock parameters of one leg (the uuid in the superblock is the
/// mirror's, shared by its legs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegParams {
    pub index: u16,
    pub legs: u16,
    pub region_bytes: u64,
}

pub const LEG_PARAMS_BYTES: usize = 12;

impl LegParams {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEG_PARAMS_BYTES);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.legs.to_le_bytes());
        out.extend_from_slice(&self.region_bytes.to_le_bytes());
        out
    }

    pub fn decode(params: &[u8]) -> Result<LegParams, String> {
        if params.len() != LEG_PARAMS_BYTES {
            return Err(format!(
                "the mirror parameters are damaged ({} bytes, expected {LEG_PARAMS_BYTES})",
                params.len()
            ));
        }
        let index = u16::from_le_bytes([params[0], params[1]]);
        let legs = u16::from_le_bytes([params[2], params[3]]);
        let mut region = [0u8; 8];
        region.copy_from_slice(&params[4..12]);
        let region_bytes = u64::from_le_bytes(region);
        if legs == 0 || index >= legs || !region_bytes.is_power_of_two() {
            return Err("the mirror parameters are damaged".into());
        }
        Ok(LegParams {
            index,
            legs,
            region_bytes,
        })
    }
}

/// One state record: what every healthy leg holds in its newer slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub generation: u64,
    pub health: Vec<Health>,
    /// Write-intent bitmap, one entry per region.
    pub dirty: Vec<bool>,
    /// The mirror's exposed size when the record was written; 0 in records
    /// written before sizes were recorded (the superblock's size then holds).
    pub size: u64,
}

impl Record {
    /// The slot this record is written to.
    pub fn slot(&self) -> u64 {
        self.generation % 2
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(!self.health.is_empty() && self.health.len() <= MAX_LEGS);
        assert!(self.dirty.len() as u64 <= MAX_REGIONS);
        let mut out = vec![0u8; RECORD_BYTES];
        out[GENERATION_AT..GENERATION_AT + 8].copy_from_slice(&self.generation.to_le_bytes());
        out[LEG_COUNT_AT] = self.health.len() as u8;
        for (i, h) in self.health.iter().enumerate() {
            out[HEALTH_AT + i] = h.code();
        }
        out[REGION_COUNT_AT..REGION_COUNT_AT + 4]
            .copy_from_slice(&(self.dirty.len() as u32).to_le_bytes());
        out[SIZE_AT..SIZE_AT + 8].copy_from_slice(&self.size.to_le_bytes());
        for (r, &d) in self.dirty.iter().enumerate() {
            if d {
                out[BITMAP_AT + r / 8] |= 1 << (r % 8);
            }
        }
        let crc = crc32fast::hash(&out[..CRC_AT]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(Record::decode(&out).as_ref(), Some(self));
        out
    }

    /// `None` for a slot that was never written, is torn or is damaged.
    pub fn decode(slot: &[u8]) -> Option<Record> {
        if slot.len() < RECORD_BYTES || slot.iter().all(|&b| b == 0) {
            return None;
        }
        let word = |at: usize| -> Option<[u8; 4]> { slot.get(at..at + 4)?.try_into().ok() };
        let crc = u32::from_le_bytes(word(CRC_AT)?);
        if crc32fast::hash(&slot[..CRC_AT]) != crc {
            return None;
        }
        let generation = u64::from_le_bytes(slot.get(0..8)?.try_into().ok()?);
        let legs = usize::from(slot[LEG_COUNT_AT]);
        if legs == 0 || legs > MAX_LEGS {
            return None;
        }
        let health = slot[HEALTH_AT..HEALTH_AT + legs]
            .iter()
            .map(|&c| Health::from_code(c))
            .collect::<Option<Vec<Health>>>()?;
        let regions = u64::from(u32::from_le_bytes(word(REGION_COUNT_AT)?));
        if regions > MAX_REGIONS {
            return None;
        }
        let dirty = (0..regions as usize)
            .map(|r| slot[BITMAP_AT + r / 8] & (1 << (r % 8)) != 0)
            .collect();
        let size = u64::from_le_bytes(slot.get(SIZE_AT..SIZE_AT + 8)?.try_into().ok()?);
        Some(Record {
            generation,
            health,
            dirty,
            size,
        })
    }

    /// The size this record says the mirror has: its own, or the
    /// superblock's (`formatted`) in a record that carries none.
    pub fn size_or(&self, formatted: u64) -> u64 {
        if self.size == 0 {
            formatted
        } else {
            self.size
        }
    }
}

/// Lowercase hex of a uuid, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn sample() -> Record {
        Record {
            generation: 41,
            health: vec![Health::Ok, Health::Failed, Health::Rebuilding],
            dirty: (0..100).map(|r| r % 7 == 3).collect(),
            size: 100 << 20,
        }
    }

    #[test]
    fn records_round_trip_and_alternate_slots() {
        let r = sample();
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        assert_eq!(r.slot(), 1);
        let full = Record {
            generation: 2,
            health: vec![Health::Ok; MAX_LEGS],
            dirty: vec![true; MAX_REGIONS as usize],
            size: 0,
        };
        assert_eq!(Record::decode(&full.encode()), Some(full));
    }

    #[test]
    fn zero_torn_and_damaged_slots_are_not_records() {
        assert_eq!(Record::decode(&[0u8; RECORD_BYTES]), None);
        let mut slot = sample().encode();
        slot[70] ^= 4;
        assert_eq!(Record::decode(&slot), None);
        let good = sample().encode();
        let mut torn = vec![0u8; RECORD_BYTES];
        torn[..512].copy_from_slice(&good[..512]);
        assert_eq!(Record::decode(&torn), None);
        assert_eq!(Record::decode(&good[..100]), None);
    }

    #[test]
    fn record_decode_never_panics() {
        let mut rng = Rng::new(77);
        let mut slot = sample().encode();
        for round in 0..5000 {
            let at = rng.below(RECORD_BYTES as u64) as usize;
            slot[at] = rng.next_u64() as u8;
            if round % 3 == 0 {
                // Keep the crc right so the field checks themselves are fuzzed.
                let crc = crc32fast::hash(&slot[..CRC_AT]);
                slot[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
            }
            if let Some(r) = Record::decode(&slot) {
                assert!(!r.health.is_empty() && r.health.len() <= MAX_LEGS);
                assert!(r.dirty.len() as u64 <= MAX_REGIONS);
            }
        }
    }

    #[test]
    fn leg_params_round_trip_and_reject_damage() {
        let p = LegParams {
            index: 1,
            legs: 3,
            region_bytes: 1 << 20,
        };
        assert_eq!(LegParams::decode(&p.encode()), Ok(p));
        assert!(LegParams::decode(&[0u8; 3]).is_err());
        let mut bad = p.encode();
        bad[0] = 5; // index past the leg count
        assert!(LegParams::decode(&bad).is_err());
        let mut rng = Rng::new(78);
        for _ in 0..2000 {
            let mut bytes = vec![0u8; rng.below(20) as usize];
            rng.fill(&mut bytes);
            let _ = LegParams::decode(&bytes);
        }
    }

    #[test]
    fn regions_fit_the_record() {
        for size in [64 << 10, 8 << 20, 4 << 30, 1 << 40, 1 << 50] {
            let region = region_bytes_for(size);
            assert!(region.is_power_of_two() && region >= MIN_REGION_BYTES);
            assert!(size.div_ceil(region) <= MAX_REGIONS, "size {size}");
        }
        assert_eq!(region_bytes_for(4 << 30), 64 << 20);
        assert_eq!(region_bytes_for(8 << 20), 128 << 10);
        assert_eq!(exposed_size(DATA_START + 4096 * 3 + 100, 4096), 4096 * 3);
        assert_eq!(exposed_size(100, 512), 0);
    }
}

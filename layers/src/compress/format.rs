//! Where things are on the layer below, and the superblock parameters.
//!
//! Superblock params (48 bytes, little endian):
//!
//! | bytes  | field                                         |
//! |--------|-----------------------------------------------|
//! | 0..16  | algorithm, ASCII, zero padded (`lz4`)         |
//! | 16..20 | unit size in bytes (u32, 32768)               |
//! | 20..24 | granule size in bytes (u32, 4096)             |
//! | 24..32 | size of the layer below when formatted (u64)  |
//! | 32..48 | reserved, 0                                   |

use crate::meta_table::{MetaTable, HEADER_BYTES, MAX_PLACED_RUNS};
use crate::superblock::SUPERBLOCK_BYTES;

pub use super::entry::UNIT_BYTES;
use super::entry::{Limits, TABLE_ENTRY_BYTES};

/// New layers are version 3 (the map can grow); version 2 ones open as
/// before and become version 3 when their exposed size is raised.
pub const FORMAT_VERSION: u32 = 3;
/// The version whose map lies in place: version 3 without placed pages.
pub const FIXED_MAP_VERSION: u32 = 2;
pub const ALGORITHM: &str = "lz4";
/// Allocation granule: the file system block of a sparse file, and a multiple of
/// either block size, so every extent is an aligned request below.
pub const GRANULE_BYTES: u32 = 4096;
const PARAMS_BYTES: usize = 48;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub algorithm: String,
    pub unit_bytes: u32,
    pub granule_bytes: u32,
    pub lower_bytes: u64,
}

impl Params {
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.algorithm.len() <= 16);
        let mut out = vec![0u8; PARAMS_BYTES];
        out[..self.algorithm.len()].copy_from_slice(self.algorithm.as_bytes());
        out[16..20].copy_from_slice(&self.unit_bytes.to_le_bytes());
        out[20..24].copy_from_slice(&self.granule_bytes.to_le_bytes());
        out[24..32].copy_from_slice(&self.lower_bytes.to_le_bytes());
        debug_assert_eq!(Params::decode(&out).as_ref(), Ok(self));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Params, String> {
        if bytes.len() != PARAMS_BYTES {
            return Err(format!(
                "the superblock's parameters are {} bytes, expected {PARAMS_BYTES}",
                bytes.len()
            ));
        }
        let name_len = bytes[..16].iter().position(|&b| b == 0).unwrap_or(16);
        let u32_at = |at: usize| u32::from_le_bytes([0, 1, 2, 3].map(|i| bytes[at + i]));
        Ok(Params {
            algorithm: String::from_utf8_lossy(&bytes[..name_len]).into_owned(),
            unit_bytes: u32_at(16),
            granule_bytes: u32_at(20),
            lower_bytes: u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|i| bytes[24 + i])),
        })
    }
}

/// The layout of one compress layer over a lower device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Exposed size in bytes.
    pub size: u64,
    pub units: u64,
    pub unit_bytes: u32,
    pub granule_bytes: u32,
    pub data_start: u64,
    /// Granules of the data area at open (it grows with the device below:
    /// the allocator holds the current count).
    pub data_granules: u64,
}

impl Geometry {
    /// The layout for `size` exposed bytes (`None`: the default) over `lower_bytes`.
    pub fn new(lower_bytes: u64, block_size: u32, size: Option<u64>) -> Result<Geometry, String> {
        let size = match size {
            Some(size) => size,
            None => match default_size(lower_bytes, block_size) {
                0 => {
                    return Err(format!(
                        "the device below ({lower_bytes} bytes) is too small"
                    ))
                }
                size => size,
            },
        };
        if size == 0 || size % u64::from(block_size) != 0 {
            return Err(format!(
                "size {size} is not a positive multiple of the block size"
            ));
        }
        let units = size.div_ceil(u64::from(UNIT_BYTES));
        let data_start =
            SUPERBLOCK_BYTES + HEADER_BYTES + MetaTable::bytes_for(units, TABLE_ENTRY_BYTES);
        let data_granules = lower_bytes.saturating_sub(data_start) / u64::from(GRANULE_BYTES);
        if data_granules < u64::from(UNIT_BYTES / GRANULE_BYTES) {
            return Err(format!(
                "the device below ({lower_bytes} bytes) is too small for a map of {size} \
                 bytes plus one {UNIT_BYTES}-byte unit of data"
            ));
        }
        Ok(Geometry {
            size,
            units,
            unit_bytes: UNIT_BYTES,
            granule_bytes: GRANULE_BYTES,
            data_start,
            data_granules,
        })
    }

    /// Bytes of unit `unit` of a layer exposing `size` bytes (the last one
    /// may be short).
    pub fn unit_len(&self, size: u64, unit: u64) -> usize {
        let start = unit * u64::from(self.unit_bytes);
        (size - start).min(u64::from(self.unit_bytes)) as usize
    }

    /// What an entry of a unit of `unit_len` bytes must fit in, with a data
    /// area of `granules` granules (the allocator's: the area grows with the
    /// device below).
    pub fn limits(&self, unit_len: usize, granules: u64) -> Limits {
        Limits {
            unit_bytes: unit_len as u32,
            granule_bytes: self.granule_bytes,
            granules,
        }
    }

    /// Granules of the data area over a device below of `lower_bytes`.
    pub fn granules_over(&self, lower_bytes: u64) -> u64 {
        lower_bytes.saturating_sub(self.data_start) / u64::from(self.granule_bytes)
    }

    /// Byte offset below of granule `granule`.
    pub fn granule_offset(&self, granule: u64) -> u64 {
        self.data_start + granule * u64::from(self.granule_bytes)
    }
}

/// Why raising the exposed size of a layer to `new_size` bytes is refused
/// (`runs`: the map's placed runs so far); `None` when it may go ahead. A
/// version 2 layer becomes version 3 as it is raised.
pub fn raise_refusal(new_size: u64, block_size: u32, runs: usize) -> Option<String> {
    if new_size % u64::from(block_size) != 0 {
        return Some(format!(
            "size {new_size} is not a multiple of the block size {block_size}"
        ));
    }
    if runs >= MAX_PLACED_RUNS {
        return Some(format!(
            "the map has grown into {MAX_PLACED_RUNS} runs of pages, all it can record; \
             copy the data to a new layer to grow it again"
        ));
    }
    None
}

/// Map entries in one page of the table (found from the table's own sizing, as
/// pages also hold a header).
pub fn entries_per_page() -> u64 {
    let one = MetaTable::bytes_for(1, TABLE_ENTRY_BYTES);
    let mut n = 1;
    while MetaTable::bytes_for(n + 1, TABLE_ENTRY_BYTES) == one {
        n += 1;
    }
    n
}

/// The default exposed size: what fits below with every unit stored raw, less a
/// reserve (1/16, at least 8 units) for copy-on-write (a unit's new version is written before its
/// old one is freed, and freed space returns only after a flush).
pub fn default_size(lower_bytes: u64, block_size: u32) -> u64 {
    let units = lower_bytes.div_ceil(u64::from(UNIT_BYTES));
    let data = lower_bytes.saturating_sub(
        SUPERBLOCK_BYTES + HEADER_BYTES + MetaTable::bytes_for(units, TABLE_ENTRY_BYTES),
    ) / u64::from(GRANULE_BYTES)
        * u64::from(GRANULE_BYTES);
    // Room for in-flight copy-on-write: 1/16, and at least 8 units on small devices.
    let reserve = (data / 16).max(8 * u64::from(UNIT_BYTES)).min(data / 2);
    let size = data - reserve;
    size / u64::from(block_size) * u64::from(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const MIB: u64 = 1 << 20;

    #[test]
    fn default_size_leaves_room_for_raw_data_and_the_reserve() {
        for lower in [MIB, 8 * MIB, 1 << 30, 8 * MIB + 512 * 3] {
            for block in [512, 4096] {
                let geo = Geometry::new(lower, block, None).unwrap();
                assert_eq!(geo.size % u64::from(block), 0);
                let raw_granules = geo.size.div_ceil(u64::from(GRANULE_BYTES));
                assert!(raw_granules + raw_granules / 16 <= geo.data_granules);
                assert!(geo.granule_offset(geo.data_granules) <= lower);
            }
        }
    }

    #[test]
    fn thin_sizes_are_allowed_while_the_map_fits() {
        let geo = Geometry::new(MIB, 4096, Some(64 * MIB)).unwrap();
        assert_eq!(geo.units, 2048);
        let pages = 2048u64.div_ceil(entries_per_page());
        assert_eq!(
            geo.data_start,
            4096 + HEADER_BYTES + MetaTable::bytes_for(2048, TABLE_ENTRY_BYTES)
        );
        assert!(geo.data_start >= 4096 + pages * 4096);
        assert!((100..=128).contains(&entries_per_page()));
        assert!(Geometry::new(MIB, 4096, Some(1 << 40)).is_err());
        assert!(Geometry::new(MIB, 4096, Some(1000)).is_err());
        assert!(Geometry::new(8192, 4096, None)
            .unwrap_err()
            .contains("too small"));
        let short = Geometry::new(MIB, 512, Some(32768 + 512)).unwrap();
        let size = short.size;
        assert_eq!(
            (short.unit_len(size, 0), short.unit_len(size, 1)),
            (32768, 512)
        );
    }

    #[test]
    fn params_round_trip_and_random_bytes_never_panic() {
        let p = Params {
            algorithm: ALGORITHM.into(),
            unit_bytes: UNIT_BYTES,
            granule_bytes: GRANULE_BYTES,
            lower_bytes: 12345 * 4096,
        };
        assert_eq!(Params::decode(&p.encode()), Ok(p));
        assert!(Params::decode(&[0u8; 5]).is_err());
        let mut rng = Rng::new(3);
        let mut bytes = [0u8; PARAMS_BYTES];
        for _ in 0..1000 {
            rng.fill(&mut bytes);
            let _ = Params::decode(&bytes);
        }
    }
}

//! Entry points for the fuzz targets in `fuzz/`: decoders of bytes read from a
//! leaf that are private to their layer, called the way the layer calls them.
//! Not an API: the signatures follow the layers.

use std::ops::Range;

use crate::compress::{codec, entry, format};

/// A compress superblock's parameters.
pub fn compress_params(bytes: &[u8]) -> Result<(), String> {
    format::Params::decode(bytes).map(drop)
}

/// A compress map entry, checked against a unit of `unit_bytes` in a data area
/// of `granules` granules of `granule_bytes`.
pub fn compress_entry(
    bytes: &[u8],
    unit_bytes: u32,
    granule_bytes: u32,
    granules: u64,
) -> Result<(), &'static str> {
    let limits = entry::Limits {
        unit_bytes,
        granule_bytes,
        granules,
    };
    entry::decode_entry(bytes, &limits).map(drop)
}

/// Decode `stored` as the packed (`lz4`) or raw bytes of unit `unit` of
/// `out.len()` bytes, filling the pieces that overlap `want`, as a read does
/// once the map entry decoded: the extent is `stored.len()` bytes long with a
/// crc that matches, so the decoding gets past the crc, and it is read as its
/// whole granules (zeros after `stored`). Returns whether the bytes decode;
/// `false` also when no map entry that decodes could describe such an extent.
pub fn compress_pieces(
    unit: u64,
    lz4: bool,
    stored: &[u8],
    out: &mut [u8],
    want: Range<usize>,
) -> bool {
    let granule_bytes = format::GRANULE_BYTES;
    let Ok(stored_bytes) = u32::try_from(stored.len()) else {
        return false;
    };
    let extent = entry::Extent {
        kind: if lz4 {
            entry::Kind::Lz4
        } else {
            entry::Kind::Raw
        },
        granule: 0,
        stored_bytes,
        crc: entry::stored_crc(unit, stored),
    };
    let granules = extent.granules(granule_bytes);
    let limits = entry::Limits {
        unit_bytes: out.len() as u32,
        granule_bytes,
        granules,
    };
    let mut bytes = [0u8; entry::EXTENT_BYTES];
    extent.encode(&mut bytes);
    if entry::Extent::decode(&bytes, &limits).is_err() || want.start > want.end {
        return false;
    }
    let want = want.start.min(out.len())..want.end.min(out.len());
    let mut read = stored.to_vec();
    read.resize((granules * u64::from(granule_bytes)) as usize, 0);
    codec::decode_range(unit, &extent, &read, out, want)
}

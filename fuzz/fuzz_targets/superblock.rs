//! The superblock every layer with state keeps in its first 4 KiB, and the
//! layer parameters inside it (mirror legs, compress).
#![no_main]

use layers::mirror::state::LegParams;
use layers::superblock::Superblock;
use libfuzzer_sys::fuzz_target;

/// Where the crc of the 4096-byte superblock sits (docs/formats/superblock.md).
const CRC_AT: usize = 4092;

fuzz_target!(|data: &[u8]| {
    let _ = Superblock::decode(data);
    // Most random blocks fail the crc: half the runs make it match, so the
    // fields behind it are reached too.
    let mut block = vec![0u8; 4096];
    let n = data.len().min(block.len());
    block[..n].copy_from_slice(&data[..n]);
    if data.first().is_some_and(|b| b & 1 == 1) {
        let crc = crc32fast::hash(&block[..CRC_AT]);
        block[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    }
    if let Ok(Some(sb)) = Superblock::decode(&block) {
        let _ = LegParams::decode(&sb.params);
        let _ = layers::fuzzing::compress_params(&sb.params);
        let _ = sb.expect(&sb.layer_type.clone(), sb.version, sb.block_size);
        // What decodes encodes back to the same superblock.
        assert_eq!(Superblock::decode(&sb.encode()), Ok(Some(sb)));
    }
});

//! A compress map entry (cur and prev extents) against the geometry of a unit,
//! and the compress superblock parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = layers::fuzzing::compress_params(data);
    // The first 16 bytes choose the geometry; the rest is the entry.
    let Some((geometry, entry)) = data.split_at_checked(16) else {
        return;
    };
    let u32_at = |at: usize| u32::from_le_bytes([0, 1, 2, 3].map(|i| geometry[at + i]));
    let unit_bytes = u32_at(0) % (64 << 10) + 1;
    let granule_bytes = 1 << (u32_at(4) % 16);
    let granules = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|i| geometry[8 + i]));
    let _ = layers::fuzzing::compress_entry(entry, unit_bytes, granule_bytes, granules);
});

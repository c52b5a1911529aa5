//! NBD transmission-phase requests as a connection parses and checks them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks what was negotiated and the export's geometry.
    let Some((&knobs, requests)) = data.split_first() else {
        return;
    };
    let block_size = if knobs & 4 == 0 { 512 } else { 4096 };
    // Sizes on and off the block grid, and one near u64::MAX.
    let size = match (knobs >> 3) & 3 {
        0 => 64 << 20,
        1 => (64 << 20) + 512,
        2 => 1,
        _ => u64::MAX - 511,
    };
    let _ = ublk_stack::nbd::fuzzing::requests(
        requests,
        size,
        block_size,
        knobs & 1 != 0,
        knobs & 2 != 0,
    );
});

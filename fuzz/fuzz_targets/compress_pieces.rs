//! The stored bytes of a compressed unit (the piece lengths, then lz4 pieces),
//! decoded as a read does once the map entry and the crc are good.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The largest unit (compress's unit size).
const UNIT_BYTES: usize = 32 << 10;

fuzz_target!(|data: &[u8]| {
    // Header: unit length (short last units too), the range a read wants, and
    // lz4 or raw; the rest is what the extent stores.
    let Some((head, stored)) = data.split_at_checked(8) else {
        return;
    };
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([head[at], head[at + 1]]));
    let unit_len = u16_at(0) % UNIT_BYTES + 1;
    let want = u16_at(2) % (unit_len + 1)..u16_at(4) % (unit_len + 1);
    let lz4 = head[6] & 1 == 0;
    let unit = u64::from(head[7]);
    let mut out = vec![0u8; unit_len];
    let _ = layers::fuzzing::compress_pieces(unit, lz4, stored, &mut out, want);
});

//! A key-slot file (docs/formats/key-slots.md): header, slots and their
//! argon2id costs. Only decoding is fuzzed; opening a slot runs argon2id.
#![no_main]

use layers::key_slots::{KeySlots, FILE_BYTES};
use libfuzzer_sys::fuzz_target;

const CRC_AT: usize = FILE_BYTES - 4;

fuzz_target!(|data: &[u8]| {
    let _ = KeySlots::decode(data);
    // Half the runs make the crc match, so the slots behind it are reached.
    let mut file = vec![0u8; FILE_BYTES];
    let n = data.len().min(FILE_BYTES);
    file[..n].copy_from_slice(&data[..n]);
    if data.first().is_some_and(|b| b & 1 == 1) {
        file[..8].copy_from_slice(b"UBLKKEYS");
        let crc = crc32fast::hash(&file[..CRC_AT]);
        file[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    }
    if let Ok(slots) = KeySlots::decode(&file) {
        for slot in slots.slots.iter().flatten() {
            if let layers::key_slots::Protector::Passphrase(cost) = slot.protector {
                assert!(cost.check().is_ok(), "a decoded cost is within bounds");
            }
        }
        // What decodes encodes back to the same file.
        assert_eq!(KeySlots::decode(&slots.encode()), Ok(slots));
    }
});

//! A mirror state record slot (generation, per-leg health, write-intent
//! bitmap) and a mirror leg's superblock parameters.
#![no_main]

use layers::mirror::state::{LegParams, Record, RECORD_BYTES};
use libfuzzer_sys::fuzz_target;

/// Where the crc of a record slot sits (docs/formats/mirror.md).
const CRC_AT: usize = 4088;

fuzz_target!(|data: &[u8]| {
    let _ = Record::decode(data);
    let _ = LegParams::decode(data);
    // Half the runs make the crc match, so the fields behind it are reached.
    let mut slot = vec![0u8; RECORD_BYTES];
    let n = data.len().min(RECORD_BYTES);
    slot[..n].copy_from_slice(&data[..n]);
    if data.first().is_some_and(|b| b & 1 == 1) {
        let crc = crc32fast::hash(&slot[..CRC_AT]);
        slot[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
    if let Some(record) = Record::decode(&slot) {
        // What decodes encodes back to the same record.
        assert_eq!(Record::decode(&record.encode()), Some(record));
    }
});

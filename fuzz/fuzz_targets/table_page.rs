//! A metadata table's page slots and header slots, flat and placed with their
//! page runs (the compress map) and grouped with their coverage (checksum,
//! crypt), and the entries in a page as the checksum layer reads them.
#![no_main]

use layers::meta_table::{decode_header, decode_slot, PAGE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_slot(data);
    let _ = decode_header(data);
    let mut page = vec![0u8; PAGE_BYTES];
    let n = data.len().min(PAGE_BYTES);
    page[..n].copy_from_slice(&data[..n]);
    if let Some((_seq, entries)) = decode_slot(&page) {
        assert!(entries.len() <= PAGE_BYTES);
    }
    let _ = decode_header(&page);
});

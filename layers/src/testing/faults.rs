//! Damage to metadata that no disk fault produces by itself but a buggy
//! writer, a tool or an attacker can: a block's entry erased from a table page
//! of `meta_table.rs`, with the page's crc made to match, so that the page
//! still loads as valid. The slot format is the one `meta_table.rs` documents.

use super::sim::SimWorld;
use crate::meta_table::{MetaTable, PAGE_BYTES};

/// Bytes of a slot that hold entries; the crc covers the bytes before it.
const ENTRIES_BYTES: usize = 4080;
const CRC_AT: usize = 4088;

/// Zero entry `index` (of `entry_bytes` bytes) in every valid slot of its page
/// of the grouped table at byte `table_start` of disk `leaf` (over `block`-byte
/// blocks), and fix each slot's crc.
/// Returns how many slots were changed.
pub fn erase_table_entry(
    world: &SimWorld,
    leaf: usize,
    table_start: u64,
    entry_bytes: usize,
    block: u64,
    index: u64,
) -> usize {
    let per = (ENTRIES_BYTES / entry_bytes) as u64;
    let page = index / per;
    let at_entry = (index % per) as usize * entry_bytes;
    let image = world.image(leaf);
    let mut changed = 0;
    for slot in 0..2u64 {
        let pair = MetaTable::grouped_page_at(table_start, entry_bytes, block, page);
        let at = (pair + slot * PAGE_BYTES as u64) as usize;
        let mut bytes = image[at..at + PAGE_BYTES].to_vec();
        let crc = u32::from_le_bytes(bytes[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
        let valid = crc32fast::hash(&bytes[..CRC_AT]) == crc;
        let entry = &mut bytes[at_entry..at_entry + entry_bytes];
        if !valid || entry.iter().all(|&b| b == 0) {
            continue;
        }
        entry.fill(0);
        let crc = crc32fast::hash(&bytes[..CRC_AT]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        world.poke(leaf, at as u64, &bytes);
        changed += 1;
    }
    changed
}

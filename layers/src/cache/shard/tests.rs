//! The shard's state machine, without I/O.

use super::*;

const B: usize = 8;

fn data(byte: u8) -> Vec<u8> {
    vec![byte; B]
}

fn hit(shard: &mut Shard, block: u64) -> Option<Vec<u8>> {
    let mut out = vec![0u8; B];
    matches!(shard.read(block, &mut out), Lookup::Hit).then_some(out)
}

#[test]
fn a_load_finishing_after_a_newer_write_leaves_the_newer_data() {
    let mut shard = Shard::default();
    let Lookup::Claimed(version) = shard.read(5, &mut data(0)) else {
        panic!("a miss claims the block");
    };
    assert!(matches!(shard.read(5, &mut data(0)), Lookup::Wait));
    assert!(matches!(
        shard.store_dirty(5, &data(2), 4, 4),
        Store::Stored
    ));
    assert!(!shard.finish(5, version, Some(&data(1)), 4));
    assert_eq!(hit(&mut shard, 5), Some(data(2)));
    assert_eq!(shard.usage(), (1, 1));
}

#[test]
fn writes_past_the_dirty_limit_are_refused_but_rewrites_are_not() {
    let mut shard = Shard::default();
    assert!(matches!(
        shard.store_dirty(1, &data(1), 2, 4),
        Store::Stored
    ));
    assert!(matches!(
        shard.store_dirty(2, &data(1), 2, 4),
        Store::Stored
    ));
    assert!(matches!(shard.store_dirty(3, &data(1), 2, 4), Store::Full));
    assert!(matches!(
        shard.store_dirty(1, &data(9), 2, 4),
        Store::Stored
    ));
    assert_eq!(shard.dirty_blocks(), vec![1, 2]);
}

#[test]
fn eviction_drops_clean_blocks_and_sets_dirty_ones_aside_until_written() {
    let mut shard = Shard::default();
    for b in 0..4 {
        shard.store_dirty(b, &data(1), 4, 4);
    }
    for b in 10..14 {
        let Claim::Claimed(v) = shard.claim(b, true) else {
            panic!("claim {b}");
        };
        shard.finish(b, v, Some(&data(2)), 4);
    }
    // A full shard replaces a clean block in place; dirty ones are left for
    // take_victims, which must write them back first.
    assert_eq!(shard.usage(), (5, 4));
    assert_eq!(shard.evictions(), 3);
    let (evicted, dirty) = shard.take_victims(2, 16);
    assert_eq!(evicted as usize + dirty.len(), 3);
    assert!(!dirty.is_empty());
    assert!(!shard.over(2));
    for &b in &dirty {
        let DirtyClaim::Claimed { version, .. } = shard.claim_dirty(b) else {
            panic!("dirty victim {b} can be written back");
        };
        shard.finish_write_back(b, version, true);
        assert!(shard.finish_eviction(b, 2));
    }
    assert_eq!(shard.usage().0, 2);
    assert_eq!(shard.evictions(), 6);
}

#[test]
fn an_abandoned_claim_keeps_dirty_data_and_drops_clean_data() {
    let mut shard = Shard::default();
    shard.store_dirty(1, &data(1), 4, 4);
    let Claim::Claimed(v) = shard.claim(2, true) else {
        panic!("claim");
    };
    shard.finish(2, v, Some(&data(2)), 4);
    for b in [1, 2] {
        assert!(matches!(shard.claim(b, true), Claim::Claimed(_)));
        assert!(matches!(shard.claim(b, true), Claim::Busy));
        shard.abandon(b);
    }
    assert_eq!(hit(&mut shard, 1), Some(data(1)));
    assert_eq!(hit(&mut shard, 2), None);
}

#[test]
fn a_zeroing_range_stops_new_claims_and_stores_until_removed() {
    let mut shard = Shard::default();
    shard.store_dirty(3, &data(3), 4, 4);
    shard.add_zeroing(2, 6, 7);
    assert!(matches!(shard.read(4, &mut data(0)), Lookup::Wait));
    assert!(matches!(shard.claim(4, true), Claim::Zeroing));
    assert!(matches!(
        shard.store_dirty(5, &data(5), 4, 4),
        Store::Zeroing
    ));
    assert!(matches!(shard.claim_dirty(3), DirtyClaim::Blocked));
    assert_eq!(hit(&mut shard, 3), Some(data(3)));
    shard.remove_zeroing(7);
    assert!(matches!(shard.claim(4, true), Claim::Claimed(_)));
}

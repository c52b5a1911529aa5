//! Key slots: the data key of a `crypt` layer, wrapped by passphrases or
//! key-encryption keys, in a small file of its own (a detached header, as
//! LUKS calls it). Adding or removing a slot rewrites this file only; the
//! data key, and so the device, stays as it is.
//!
//! File format version 1 (little endian; `docs/formats/key-slots.md`):
//!
//! | bytes      | contents                                             |
//! |------------|------------------------------------------------------|
//! | 0..8       | magic `UBLKKEYS`                                     |
//! | 8..12      | format version (u32, 1)                              |
//! | 12..16     | number of slots (u32, 8)                             |
//! | 16..32     | uuid: 16 random bytes chosen when the file is made   |
//! | 32..64     | zero                                                 |
//! | 64..1088   | 8 slots of 128 bytes                                 |
//! | 1088..1092 | crc32 of bytes 0..1088                               |
//!
//! A slot:
//!
//! | bytes   | contents                                                   |
//! |---------|------------------------------------------------------------|
//! | 0       | kind: 0 empty (all 128 bytes zero), 1 passphrase, 2 key    |
//! | 1..4    | zero                                                       |
//! | 4..16   | argon2id memory (KiB), iterations, lanes (u32 each; zero for a key slot) |
//! | 16..48  | argon2id salt (zero for a key slot)                        |
//! | 48..60  | nonce                                                      |
//! | 60..92  | the data key, encrypted                                    |
//! | 92..108 | tag                                                        |
//! | 108..128| zero                                                       |
//!
//! A slot's wrapping key is argon2id(passphrase, salt) for a passphrase slot,
//! the 32-byte key-encryption key itself for a key slot. The data key is
//! sealed with AES-256-GCM under it, with a fresh random nonce at every wrap,
//! and with the file's bytes 0..32 and the slot's bytes 0..48 (its kind, its
//! argon2 cost and salt) as associated data, so a slot whose cost was lowered
//! or that was moved into another file does not open. A wrong passphrase or
//! key fails the tag: it never yields a key.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

use crate::superblock::random_bytes;

pub const FORMAT_VERSION: u32 = 1;
pub const SLOTS: usize = 8;
pub const FILE_BYTES: usize = HEADER_BYTES + SLOTS * SLOT_BYTES + 4;
const MAGIC: &[u8; 8] = b"UBLKKEYS";
const HEADER_BYTES: usize = 64;
const SLOT_BYTES: usize = 128;
const CRC_AT: usize = FILE_BYTES - 4;
/// The bytes of the header and of a slot bound to each wrap.
const HEADER_BOUND: usize = 32;
const SLOT_BOUND: usize = 48;
/// The data key (and a key-encryption key): an aes-256-gcm key.
pub const KEY_BYTES: usize = 32;

const KIND_PASSPHRASE: u8 = 1;
const KIND_KEY: u8 = 2;

/// Bounds on a slot's argon2id cost, so a slot file cannot make an unlock take
/// unbounded memory or time: up to 4 GiB, 64 passes, 16 lanes.
pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
pub const MAX_ITERATIONS: u32 = 64;
pub const MAX_LANES: u32 = 16;

/// The argon2id cost of a passphrase slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl Default for Argon2Cost {
    /// RFC 9106's second recommended setting: 64 MiB, 3 passes, 4 lanes.
    fn default() -> Self {
        Argon2Cost {
            memory_kib: 64 * 1024,
            iterations: 3,
            lanes: 4,
        }
    }
}

impl Argon2Cost {
    /// The reason a cost is out of bounds.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_LANES).contains(&self.lanes) {
            return Err(format!(
                "argon2 lanes {} not in 1..={MAX_LANES}",
                self.lanes
            ));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!(
                "argon2 iterations {} not in 1..={MAX_ITERATIONS}",
                self.iterations
            ));
        }
        let least = 8 * self.lanes;
        if !(least..=MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return Err(format!(
                "argon2 memory {} KiB not in {least}..={MAX_MEMORY_KIB} KiB",
                self.memory_kib
            ));
        }
        Ok(())
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, String> {
        self.check()?;
        let params = argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.lanes,
            Some(KEY_BYTES),
        )
        .map_err(|e| format!("argon2: {e}"))?;
        let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; KEY_BYTES]);
        kdf.hash_password_into(passphrase, salt, &mut out[..])
            .map_err(|e| format!("argon2: {e}"))?;
        Ok(out)
    }
}

/// What a slot is opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protector {
    Passphrase(Argon2Cost),
    Key,
}

impl Protector {
    pub fn name(&self) -> &'static str {
        match self {
            Protector::Passphrase(_) => "passphrase",
            Protector::Key => "key",
        }
    }
}

/// A secret offered to open a slot, or to protect a new one.
#[derive(Clone, Copy)]
pub enum Secret<'a> {
    Passphrase(&'a [u8]),
    Key(&'a [u8; KEY_BYTES]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub protector: Protector,
    salt: [u8; 32],
    nonce: [u8; 12],
    wrapped: [u8; KEY_BYTES],
    tag: [u8; 16],
}

/// A key-slot file, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlots {
    pub uuid: [u8; 16],
    pub slots: [Option<Slot>; SLOTS],
}

impl KeySlots {
    /// A new file, no slot used yet.
    pub fn new() -> KeySlots {
        KeySlots {
            uuid: random_bytes(),
            slots: Default::default(),
        }
    }

    pub fn used(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; FILE_BYTES];
        out[..HEADER_BOUND].copy_from_slice(&self.header());
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(slot) = slot {
                let at = HEADER_BYTES + index * SLOT_BYTES;
                out[at..at + SLOT_BYTES].copy_from_slice(&slot.encode());
            }
        }
        let crc = crc32fast::hash(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(KeySlots::decode(&out).as_ref(), Ok(self));
        out
    }

    /// The file's contents, checked: a foreign file, a newer format version,
    /// a damaged file or a slot out of bounds is an error that says which.
    pub fn decode(bytes: &[u8]) -> Result<KeySlots, String> {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err("not a ublk-stack key-slot file (no UBLKKEYS magic)".into());
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "key-slot format version {version}; this build reads version {FORMAT_VERSION}"
            ));
        }
        if bytes.len() != FILE_BYTES {
            return Err(format!(
                "{} bytes; a key-slot file of version {FORMAT_VERSION} has {FILE_BYTES}",
                bytes.len()
            ));
        }
        if crc32fast::hash(&bytes[..CRC_AT]) != u32_at(bytes, CRC_AT) {
            return Err("the key-slot file is damaged (crc mismatch)".into());
        }
        let count = u32_at(bytes, 12);
        if count as usize != SLOTS || bytes[HEADER_BOUND..HEADER_BYTES].iter().any(|&b| b != 0) {
            return Err(format!(
                "the key-slot header is not valid ({count} slots; version 1 has {SLOTS})"
            ));
        }
        let mut slots: [Option<Slot>; SLOTS] = Default::default();
        for (index, slot) in slots.iter_mut().enumerate() {
            let at = HEADER_BYTES + index * SLOT_BYTES;
            *slot = Slot::decode(&bytes[at..at + SLOT_BYTES])
                .map_err(|e| format!("slot {index}: {e}"))?;
        }
        let uuid = bytes[16..32].try_into().expect("16 bytes");
        Ok(KeySlots { uuid, slots })
    }

    /// Wrap `data_key` in the first free slot, protected by `secret` (with
    /// `cost` for a passphrase). Returns the slot's index.
    pub fn add(
        &mut self,
        data_key: &[u8; KEY_BYTES],
        secret: Secret<'_>,
        cost: Argon2Cost,
    ) -> Result<usize, String> {
        let index = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| format!("all {SLOTS} slots are in use; remove one first"))?;
        let protector = match secret {
            Secret::Passphrase(_) => Protector::Passphrase(cost),
            Secret::Key(_) => Protector::Key,
        };
        let salt = match secret {
            Secret::Passphrase(_) => random_bytes(),
            Secret::Key(_) => [0; 32],
        };
        let mut slot = Slot {
            protector,
            salt,
            nonce: random_bytes(),
            wrapped: *data_key,
            tag: [0; 16],
        };
        let cipher = slot.wrapping_cipher(secret)?;
        let tag = cipher
            .encrypt_in_place_detached(
                Nonce::from_slice(&slot.nonce),
                &self.associated(&slot),
                &mut slot.wrapped,
            )
            .map_err(|_| "wrapping the key failed".to_string())?;
        slot.tag.copy_from_slice(&tag);
        self.slots[index] = Some(slot);
        Ok(index)
    }

    /// The data key, from the first slot `secret` opens, and that slot's index.
    pub fn open(&self, secret: Secret<'_>) -> Result<(usize, Zeroizing<[u8; KEY_BYTES]>), String> {
        let mut tried = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let fits = matches!(
                (secret, slot.protector),
                (Secret::Passphrase(_), Protector::Passphrase(_))
                    | (Secret::Key(_), Protector::Key)
            );
            if !fits {
                continue;
            }
            tried += 1;
            let cipher = slot.wrapping_cipher(secret)?;
            let mut key = Zeroizing::new(slot.wrapped);
            let opened = cipher.decrypt_in_place_detached(
                Nonce::from_slice(&slot.nonce),
                &self.associated(slot),
                &mut key[..],
                Tag::from_slice(&slot.tag),
            );
            if opened.is_ok() {
                return Ok((index, key));
            }
        }
        let what = match secret {
            Secret::Passphrase(_) => "passphrase",
            Secret::Key(_) => "key",
        };
        Err(if tried == 0 {
            format!("no {what} slot in this file")
        } else {
            format!("wrong {what}: it opens none of the {tried} {what} slots")
        })
    }

    /// Empty slot `index`, refusing to leave the file without any slot.
    pub fn remove(&mut self, index: usize) -> Result<(), String> {
        match self.slots.get(index) {
            None => Err(format!("no slot {index}: slots are 0..={}", SLOTS - 1)),
            Some(None) => Err(format!("slot {index} is empty")),
            Some(Some(_)) if self.used() == 1 => Err(format!(
                "slot {index} is the last one: removing it would lose the key for good"
            )),
            Some(Some(_)) => {
                self.slots[index] = None;
                Ok(())
            }
        }
    }

    fn header(&self) -> [u8; HEADER_BOUND] {
        let mut out = [0u8; HEADER_BOUND];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(SLOTS as u32).to_le_bytes());
        out[16..32].copy_from_slice(&self.uuid);
        out
    }

    fn associated(&self, slot: &Slot) -> Vec<u8> {
        let mut out = self.header().to_vec();
        out.extend_from_slice(&slot.encode()[..SLOT_BOUND]);
        out
    }
}

impl Default for KeySlots {
    fn default() -> Self {
        KeySlots::new()
    }
}

impl Slot {
    fn wrapping_cipher(&self, secret: Secret<'_>) -> Result<Aes256Gcm, String> {
        let key = match (secret, self.protector) {
            (Secret::Passphrase(passphrase), Protector::Passphrase(cost)) => {
                cost.derive(passphrase, &self.salt)?
            }
            (Secret::Key(key), Protector::Key) => Zeroizing::new(*key),
            _ => return Err("a passphrase opens passphrase slots, a key key slots".into()),
        };
        Ok(Aes256Gcm::new_from_slice(&key[..]).expect("32-byte key"))
    }

    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut out = [0u8; SLOT_BYTES];
        match self.protector {
            Protector::Passphrase(cost) => {
                out[0] = KIND_PASSPHRASE;
                out[4..8].copy_from_slice(&cost.memory_kib.to_le_bytes());
                out[8..12].copy_from_slice(&cost.iterations.to_le_bytes());
                out[12..16].copy_from_slice(&cost.lanes.to_le_bytes());
            }
            Protector::Key => out[0] = KIND_KEY,
        }
        out[16..48].copy_from_slice(&self.salt);
        out[48..60].copy_from_slice(&self.nonce);
        out[60..92].copy_from_slice(&self.wrapped);
        out[92..108].copy_from_slice(&self.tag);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Option<Slot>, String> {
        let zero = |range: std::ops::Range<usize>| bytes[range].iter().all(|&b| b == 0);
        if zero(0..SLOT_BYTES) {
            return Ok(None);
        }
        if !zero(1..4) || !zero(108..SLOT_BYTES) {
            return Err("reserved bytes are not zero".into());
        }
        let protector = match bytes[0] {
            KIND_PASSPHRASE => {
                let cost = Argon2Cost {
                    memory_kib: u32_at(bytes, 4),
                    iterations: u32_at(bytes, 8),
                    lanes: u32_at(bytes, 12),
                };
                cost.check()?;
                Protector::Passphrase(cost)
            }
            KIND_KEY if zero(4..48) => Protector::Key,
            KIND_KEY => return Err("a key slot with argon2 parameters".into()),
            other => return Err(format!("unknown slot kind {other}")),
        };
        Ok(Some(Slot {
            protector,
            salt: bytes[16..48].try_into().expect("32 bytes"),
            nonce: bytes[48..60].try_into().expect("12 bytes"),
            wrapped: bytes[60..92].try_into().expect("32 bytes"),
            tag: bytes[92..108].try_into().expect("16 bytes"),
        }))
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap enough for tests; the bounds still hold.
    const CHEAP: Argon2Cost = Argon2Cost {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    fn file_with_two_slots() -> (KeySlots, [u8; 32]) {
        let mut slots = KeySlots::new();
        let data_key = [0x5a; 32];
        assert_eq!(
            slots.add(&data_key, Secret::Passphrase(b"correct horse"), CHEAP),
            Ok(0)
        );
        assert_eq!(slots.add(&data_key, Secret::Key(&[7; 32]), CHEAP), Ok(1));
        (slots, data_key)
    }

    #[test]
    fn each_slot_opens_with_its_secret_and_no_other() {
        let (slots, data_key) = file_with_two_slots();
        let (index, key) = slots.open(Secret::Passphrase(b"correct horse")).unwrap();
        assert_eq!((index, *key), (0, data_key));
        let (index, key) = slots.open(Secret::Key(&[7; 32])).unwrap();
        assert_eq!((index, *key), (1, data_key));
        assert_eq!(
            slots
                .open(Secret::Passphrase(b"correct horse "))
                .unwrap_err(),
            "wrong passphrase: it opens none of the 1 passphrase slots"
        );
        assert_eq!(
            slots.open(Secret::Key(&[8; 32])).unwrap_err(),
            "wrong key: it opens none of the 1 key slots"
        );
    }

    #[test]
    fn a_file_reads_back_as_written_and_still_opens() {
        let (slots, data_key) = file_with_two_slots();
        let bytes = slots.encode();
        assert_eq!(bytes.len(), FILE_BYTES);
        let read = KeySlots::decode(&bytes).unwrap();
        assert_eq!(read, slots);
        assert_eq!(
            *read.open(Secret::Passphrase(b"correct horse")).unwrap().1,
            data_key
        );
    }

    #[test]
    fn every_wrap_draws_its_own_nonce_and_salt() {
        let mut slots = KeySlots::new();
        for _ in 0..3 {
            slots
                .add(&[1; 32], Secret::Passphrase(b"same"), CHEAP)
                .unwrap();
            slots.add(&[1; 32], Secret::Key(&[2; 32]), CHEAP).unwrap();
        }
        let used: Vec<&Slot> = slots.slots.iter().flatten().collect();
        for (i, a) in used.iter().enumerate() {
            for b in &used[i + 1..] {
                assert_ne!(a.nonce, b.nonce, "two wraps share a nonce");
                assert_ne!(a.wrapped, b.wrapped, "two wraps of one key look alike");
                if a.protector != Protector::Key && b.protector != Protector::Key {
                    assert_ne!(a.salt, b.salt, "two passphrase slots share a salt");
                }
            }
        }
    }

    #[test]
    fn a_slot_changed_on_disk_does_not_open() {
        let (slots, _) = file_with_two_slots();
        let bytes = slots.encode();
        // Lower the argon2 cost, flip a wrapped byte, or swap the uuid: each
        // fails the tag once the crc is made to match.
        for (at, value) in [(HEADER_BYTES + 8, 2u8), (HEADER_BYTES + 70, 0xff), (20, 1)] {
            let mut changed = bytes.clone();
            changed[at] ^= value;
            let crc = crc32fast::hash(&changed[..CRC_AT]);
            changed[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
            let read = KeySlots::decode(&changed).unwrap();
            assert!(
                read.open(Secret::Passphrase(b"correct horse")).is_err(),
                "byte {at}"
            );
        }
    }

    #[test]
    fn foreign_newer_and_damaged_files_are_refused_by_name() {
        let bytes = file_with_two_slots().0.encode();
        assert!(KeySlots::decode(b"hello")
            .unwrap_err()
            .contains("no UBLKKEYS magic"));
        let mut newer = bytes.clone();
        newer[8] = 2;
        assert_eq!(
            KeySlots::decode(&newer).unwrap_err(),
            "key-slot format version 2; this build reads version 1"
        );
        let mut damaged = bytes.clone();
        damaged[100] ^= 1;
        assert!(KeySlots::decode(&damaged)
            .unwrap_err()
            .contains("crc mismatch"));
        assert!(KeySlots::decode(&bytes[..FILE_BYTES - 1])
            .unwrap_err()
            .contains("1091 bytes"));
    }

    #[test]
    fn costs_out_of_bounds_are_refused() {
        let mut slots = KeySlots::new();
        let huge = Argon2Cost {
            memory_kib: MAX_MEMORY_KIB + 1,
            ..CHEAP
        };
        assert!(slots
            .add(&[0; 32], Secret::Passphrase(b"p"), huge)
            .unwrap_err()
            .contains("argon2 memory"));
        // The same cost written into a file is refused when read.
        slots
            .add(&[0; 32], Secret::Passphrase(b"p"), CHEAP)
            .unwrap();
        let mut bytes = slots.encode();
        bytes[HEADER_BYTES + 4..HEADER_BYTES + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..CRC_AT]);
        bytes[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        assert!(KeySlots::decode(&bytes)
            .unwrap_err()
            .starts_with("slot 0: argon2 memory"));
    }

    #[test]
    fn the_last_slot_is_never_removed() {
        let (mut slots, _) = file_with_two_slots();
        assert_eq!(slots.remove(5).unwrap_err(), "slot 5 is empty");
        assert_eq!(slots.remove(8).unwrap_err(), "no slot 8: slots are 0..=7");
        slots.remove(0).unwrap();
        assert!(slots.remove(1).unwrap_err().contains("is the last one"));
        assert_eq!(slots.used(), 1);
        // A freed slot is used again.
        assert_eq!(
            slots.add(&[0x5a; 32], Secret::Passphrase(b"new"), CHEAP),
            Ok(0)
        );
    }
}

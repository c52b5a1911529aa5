//! The versioned superblock every metadata-keeping layer writes at byte 0 of the
//! layer below it.
//!
//! | bytes      | field                                              |
//! |------------|----------------------------------------------------|
//! | 0..8       | magic `UBLKSTK1`                                   |
//! | 8..24      | layer type, ASCII, zero padded (`checksum`, ...)   |
//! | 24..28     | format version, u32 LE                             |
//! | 28..32     | block size, u32 LE                                 |
//! | 32..48     | uuid, 16 random bytes chosen at format time        |
//! | 48..56     | exposed size in bytes, u64 LE                      |
//! | 56..60     | length N of the layer's parameters, u32 LE         |
//! | 60..60+N   | the layer's parameters (layer-defined)             |
//! | 4092..4096 | crc32 of bytes 0..4092, u32 LE                     |
//!
//! The superblock occupies [`SUPERBLOCK_BYTES`]. Opening a layer reads it and
//! refuses, without writing anything, a lower device whose superblock belongs to
//! another layer type, format version or block size, or which holds data but no
//! superblock. Only an all-zero first block is formatted.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::exec::IoCtx;
use crate::{Error, Layer};

pub const SUPERBLOCK_BYTES: u64 = 4096;
const MAGIC: &[u8; 8] = b"UBLKSTK1";
const PARAMS_AT: usize = 60;
const CRC_AT: usize = 4092;
pub const MAX_PARAMS: usize = CRC_AT - PARAMS_AT;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub layer_type: String,
    pub version: u32,
    pub block_size: u32,
    pub uuid: [u8; 16],
    pub size: u64,
    pub params: Vec<u8>,
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.layer_type.len() <= 16 && self.params.len() <= MAX_PARAMS);
        let mut out = vec![0u8; SUPERBLOCK_BYTES as usize];
        out[0..8].copy_from_slice(MAGIC);
        out[8..8 + self.layer_type.len()].copy_from_slice(self.layer_type.as_bytes());
        out[24..28].copy_from_slice(&self.version.to_le_bytes());
        out[28..32].copy_from_slice(&self.block_size.to_le_bytes());
        out[32..48].copy_from_slice(&self.uuid);
        out[48..56].copy_from_slice(&self.size.to_le_bytes());
        out[56..60].copy_from_slice(&(self.params.len() as u32).to_le_bytes());
        out[PARAMS_AT..PARAMS_AT + self.params.len()].copy_from_slice(&self.params);
        let crc = crc32fast::hash(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(Superblock::decode(&out), Ok(Some(self.clone())));
        out
    }

    /// `Ok(None)` for an all-zero block (a fresh device); an error message for
    /// anything else that is not a valid superblock.
    pub fn decode(block: &[u8]) -> Result<Option<Superblock>, String> {
        if block.len() < SUPERBLOCK_BYTES as usize {
            return Err("device too small for a superblock".into());
        }
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if &block[0..8] != MAGIC {
            return Err(
                "the device holds data but no ublk-stack superblock; refusing to format it \
                 (wipe its first 4 KiB if it is really unused)"
                    .into(),
            );
        }
        let stored = u32::from_le_bytes(block[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&block[..CRC_AT]) != stored {
            return Err("the superblock is damaged (crc mismatch)".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
        let type_bytes = &block[8..24];
        let type_len = type_bytes.iter().position(|&b| b == 0).unwrap_or(16);
        // ASCII only, as written: anything else is damage (and would not fit
        // the 16 bytes again once decoded).
        if !type_bytes[..type_len].is_ascii() {
            return Err("the superblock is damaged (layer type)".into());
        }
        let params_len = u32_at(56) as usize;
        if params_len > MAX_PARAMS {
            return Err("the superblock is damaged (parameter length)".into());
        }
        Ok(Some(Superblock {
            layer_type: String::from_utf8_lossy(&type_bytes[..type_len]).into_owned(),
            version: u32_at(24),
            block_size: u32_at(28),
            uuid: block[32..48].try_into().expect("16 bytes"),
            size: u64::from_le_bytes(block[48..56].try_into().expect("8 bytes")),
            params: block[PARAMS_AT..PARAMS_AT + params_len].to_vec(),
        }))
    }

    /// Check a decoded superblock against what the config asks for.
    pub fn expect(&self, layer_type: &str, version: u32, block_size: u32) -> Result<(), String> {
        if self.layer_type != layer_type {
            return Err(format!(
                "the device below holds a \"{}\" superblock, not \"{layer_type}\": \
                 is the config's layer order right?",
                self.layer_type
            ));
        }
        if self.version != version {
            let what = if self.version < version {
                format!(
                    "copy the data off with a build that reads version {}, then format \
                     the device again",
                    self.version
                )
            } else {
                "use the newer build that wrote it".to_string()
            };
            return Err(format!(
                "formatted with {layer_type} format version {}; this build reads version \
                 {version}: {what} (nothing was written)",
                self.version
            ));
        }
        if self.block_size != block_size {
            return Err(format!(
                "formatted with block_size {} but the config says {block_size}",
                self.block_size
            ));
        }
        Ok(())
    }
}

/// Whether `block` starts as a superblock does (valid or damaged), as
/// opposed to data that never was one.
pub fn has_magic(block: &[u8]) -> bool {
    block.starts_with(MAGIC)
}

/// The first `len` bytes of the file or disk at `path`, where a layer right
/// above it keeps its superblock (and, for some layers, a header after it),
/// read without opening any layer (`validate`, `plan`). A file shorter than
/// that reads as zeros past its end.
pub fn read_head(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut head = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < head.len() {
        match file.read_at(&mut head[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(head)
}

/// Random bytes for uuids and nonce salts.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("the kernel's random source is available");
    out
}

/// Read the superblock of `lower`.
pub async fn read(ctx: &IoCtx, lower: &dyn Layer) -> Result<Option<Superblock>, String> {
    if lower.size() < SUPERBLOCK_BYTES {
        return Err(format!(
            "the device below is too small ({} bytes)",
            lower.size()
        ));
    }
    let mut block = vec![0u8; SUPERBLOCK_BYTES as usize];
    lower
        .read_bytes(ctx, 0, &mut block)
        .await
        .map_err(|e| format!("cannot read the superblock: {e}"))?;
    Superblock::decode(&block)
}

/// Write `sb` at byte 0 of `lower` and flush.
pub async fn write(ctx: &IoCtx, lower: &dyn Layer, sb: &Superblock) -> Result<(), Error> {
    lower.write_bytes(ctx, 0, &sb.encode()).await?;
    lower.flush(ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            layer_type: "checksum".into(),
            version: 1,
            block_size: 4096,
            uuid: [7; 16],
            size: 1 << 30,
            params: b"crc32".to_vec(),
        }
    }

    #[test]
    fn round_trips() {
        let sb = sample();
        assert_eq!(Superblock::decode(&sb.encode()), Ok(Some(sb)));
    }

    #[test]
    fn zero_block_is_fresh_and_data_is_refused() {
        assert_eq!(Superblock::decode(&[0u8; 4096]), Ok(None));
        let mut data = vec![0u8; 4096];
        data[100] = 1;
        assert!(Superblock::decode(&data)
            .unwrap_err()
            .contains("no ublk-stack superblock"));
    }

    #[test]
    fn damage_and_mismatches_are_named() {
        let mut block = sample().encode();
        block[40] ^= 1;
        assert!(Superblock::decode(&block).unwrap_err().contains("crc"));
        let sb = sample();
        assert!(sb
            .expect("crypt", 1, 4096)
            .unwrap_err()
            .contains("\"checksum\" superblock"));
        assert!(sb
            .expect("checksum", 2, 4096)
            .unwrap_err()
            .contains("version"));
        assert!(sb
            .expect("checksum", 1, 512)
            .unwrap_err()
            .contains("block_size"));
    }

    /// Found by the `superblock` fuzz target: a non-ASCII type decoded to a
    /// longer (lossy) string that no longer fit the 16 bytes.
    #[test]
    fn non_ascii_layer_type_is_damage() {
        let mut block = sample().encode();
        block[8..24].fill(0xff);
        let crc = crc32fast::hash(&block[..CRC_AT]);
        block[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        assert!(Superblock::decode(&block)
            .unwrap_err()
            .contains("layer type"));
    }

    #[test]
    fn decode_never_panics_on_random_blocks() {
        let mut rng = crate::rng::Rng::new(9);
        let mut block = sample().encode();
        for _ in 0..2000 {
            let at = rng.below(4096) as usize;
            block[at] = rng.next_u64() as u8;
            let _ = Superblock::decode(&block);
        }
    }
}

//! `crypt`: AES-256-GCM per block; the layer below sees only ciphertext.
//!
//! On-disk layout of the layer below (format version 3, little endian; the full
//! description is `docs/formats/crypt.md`):
//!
//! | bytes          | contents                                                 |
//! |----------------|----------------------------------------------------------|
//! | 0..4096        | superblock; params below                                 |
//! | 4096..12288    | table header: the flushed epoch and the blocks covered   |
//! |                | (`meta_table.rs`)                                        |
//! | 12288..        | groups: table pages (64 bytes per block: `cur` =         |
//! |                | nonce(12) ‖ tag(16), `prev` the same, epoch of `cur`     |
//! |                | u64), then the ciphertext blocks they describe, same     |
//! |                | size as the plaintext (`meta_table/groups.rs`)           |
//!
//! It grows as `checksum` does, without moving anything.
//!
//! Superblock params: cipher name (16 bytes, zero padded, `aes-256-gcm`), then a
//! key check: nonce(12) ‖ ciphertext(32) ‖ tag(16) of 32 zero bytes, with the
//! superblock's uuid as associated data. Opening with another key fails that
//! check and the layer refuses to start, before anything is written.
//!
//! Each write draws a fresh 96-bit nonce (a random 32-bit prefix per open and a
//! 64-bit counter starting at a random value). The associated data of a block is
//! `uuid ‖ block index (u64 LE)`, so ciphertext moved to another block or device
//! fails authentication. An all-zero seal means the block is zeros (never
//! written, discarded or zeroed): it verifies only an all-zero ciphertext, so an
//! erased entry over written data is an error, not zeros. Write ordering, flushes,
//! crash behaviour and the settling of unflushed blocks at open are those of
//! `checksum`: table page first, then data; `prev` opens a block only while no
//! FLUSH covered its `cur`. The key is zeroed in memory when the layer is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use crate::exec::IoCtx;
use crate::meta_table::{Entries, Layout, MetaTable, Stamp};
use crate::report::{CryptReport, LayerReport};
use crate::superblock::{self, Superblock, SUPERBLOCK_BYTES};
use crate::{AsyncLayer, Error, IoBuf, IoBufMut, Layer, Result};

const FORMAT_VERSION: u32 = 3;
/// `cur` and `prev` seals and the table's epoch (u64).
const ENTRY_BYTES: usize = 64;
const SEAL_BYTES: usize = 28;
const CIPHER: &str = "aes-256-gcm";
pub use crate::key_slots::KEY_BYTES;

pub mod key;
pub use key::load_key;

pub struct Crypt {
    lower: Arc<dyn Layer>,
    cipher: Aes256Gcm,
    uuid: [u8; 16],
    table: MetaTable,
    block: u64,
    size: AtomicU64,
    nonce_prefix: [u8; 4],
    nonce_counter: AtomicU64,
    auth_failures: AtomicU64,
}

/// The size this layer exposes over a lower device of `lower_size` bytes.
pub fn exposed_size(lower_size: u64, block_size: u32) -> u64 {
    fit_blocks(lower_size, u64::from(block_size)) * u64::from(block_size)
}

fn fit_blocks(lower_size: u64, block: u64) -> u64 {
    MetaTable::grouped_fit(SUPERBLOCK_BYTES, ENTRY_BYTES, block, lower_size)
}

fn key_check(cipher: &Aes256Gcm, uuid: &[u8; 16], nonce: [u8; 12]) -> Vec<u8> {
    let mut plain = [0u8; 32];
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), uuid, &mut plain)
        .expect("32 bytes are within GCM limits");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&plain);
    out.extend_from_slice(&tag);
    out
}

fn check_key(cipher: &Aes256Gcm, uuid: &[u8; 16], stored: &[u8]) -> bool {
    if stored.len() != 12 + 32 + 16 {
        return false;
    }
    let mut body = stored[12..44].to_vec();
    let ok = cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&stored[..12]),
            uuid,
            &mut body,
            Tag::from_slice(&stored[44..60]),
        )
        .is_ok();
    ok && body.iter().all(|&b| b == 0)
}

impl Crypt {
    pub async fn open(
        ctx: &IoCtx,
        lower: Arc<dyn Layer>,
        block_size: u32,
        key: &[u8; 32],
    ) -> std::result::Result<Crypt, String> {
        let block = u64::from(block_size);
        let blocks = fit_blocks(lower.size(), block);
        if blocks == 0 {
            return Err(format!(
                "the device below ({} bytes) is too small",
                lower.size()
            ));
        }
        let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
        let existing = superblock::read(ctx, &*lower).await?;
        let layout = Layout::grouped(ENTRY_BYTES, block);
        let uuid = match &existing {
            Some(sb) => {
                sb.expect("crypt", FORMAT_VERSION, block_size)?;
                let name = &sb.params[..16.min(sb.params.len())];
                let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                if &name[..name_len] != CIPHER.as_bytes() {
                    return Err(format!(
                        "formatted with cipher {:?}, the config says {CIPHER}",
                        String::from_utf8_lossy(&name[..name_len])
                    ));
                }
                if !check_key(&cipher, &sb.uuid, sb.params.get(16..).unwrap_or(&[])) {
                    return Err("wrong key: it does not open this device's key check \
                         (nothing was written)"
                        .into());
                }
                sb.uuid
            }
            None => superblock::random_bytes(),
        };
        let entries = match &existing {
            // The size at format, until a header records the coverage.
            Some(sb) => {
                let recorded = MetaTable::recorded(ctx, &*lower, SUPERBLOCK_BYTES)
                    .await
                    .map_err(|e| format!("cannot read the crypt table header: {e}"))?;
                MetaTable::check_room(recorded.unwrap_or(sb.size / block), blocks, block)?;
                Entries::RecordedOr(sb.size / block)
            }
            None => Entries::Exactly(blocks),
        };
        let table = MetaTable::load(ctx, &*lower, SUPERBLOCK_BYTES, layout, entries, ENTRY_BYTES)
            .await
            .map_err(|e| format!("cannot read the crypt table: {e}"))?;
        if existing.is_none() {
            let mut params = [0u8; 16].to_vec();
            params[..CIPHER.len()].copy_from_slice(CIPHER.as_bytes());
            params.extend(key_check(&cipher, &uuid, superblock::random_bytes()));
            let sb = Superblock {
                layer_type: "crypt".into(),
                version: FORMAT_VERSION,
                block_size,
                uuid,
                size: blocks * block,
                params,
            };
            superblock::write(ctx, &*lower, &sb)
                .await
                .map_err(|e| format!("cannot write the superblock: {e}"))?;
            table
                .record_coverage(ctx, &*lower)
                .await
                .map_err(|e| format!("cannot write the crypt table header: {e}"))?;
        }
        let layer = Crypt {
            size: AtomicU64::new(table.entries() * block),
            lower,
            cipher,
            uuid,
            table,
            block,
            nonce_prefix: superblock::random_bytes(),
            nonce_counter: AtomicU64::new(u64::from_le_bytes(superblock::random_bytes())),
            auth_failures: AtomicU64::new(0),
        };
        if existing.is_some() {
            layer
                .settle(ctx)
                .await
                .map_err(|e| format!("cannot settle the blocks a crash left unflushed: {e}"))?;
            // A larger device below (or a grow a crash cut short): grow now.
            layer
                .table
                .grow(ctx, &*layer.lower, blocks)
                .await
                .map_err(|e| format!("cannot grow into the larger device below: {e}"))?;
            layer
                .size
                .store(layer.table.entries() * block, Ordering::Release);
        }
        Ok(layer)
    }

    /// At open: as `checksum` does, give every block whose last write no flush
    /// covered the seal of the version it holds, then flush.
    async fn settle(&self, ctx: &IoCtx) -> Result<()> {
        let mut data = vec![0u8; self.block as usize];
        let mut entry = [0u8; ENTRY_BYTES - 8];
        for index in self.table.unflushed() {
            let offset = self
                .table
                .data_run(self.block, index * self.block, self.block)
                .0;
            match self.lower.read_bytes(ctx, offset, &mut data).await {
                Ok(()) => {}
                Err(Error::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            }
            self.table.get(index, &mut entry);
            let (cur, prev) = entry.split_at(SEAL_BYTES);
            if self.open_seal(index, cur, &mut data) || !self.open_seal(index, prev, &mut data) {
                continue;
            }
            self.table
                .update(ctx, &*self.lower, index, 1, Stamp::Keep, &mut |_, e, _| {
                    e.copy_within(SEAL_BYTES..2 * SEAL_BYTES, 0)
                })
                .await?;
        }
        self.table.flush(ctx, &*self.lower).await
    }

    fn aad(&self, index: u64) -> [u8; 24] {
        let mut aad = [0u8; 24];
        aad[..16].copy_from_slice(&self.uuid);
        aad[16..].copy_from_slice(&index.to_le_bytes());
        aad
    }

    fn next_nonce(&self) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.nonce_prefix);
        let counter = self.nonce_counter.fetch_add(1, Ordering::Relaxed);
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        nonce
    }

    /// Decrypt one block in place with the seal `nonce ‖ tag`; false if it does
    /// not authenticate (the buffer is then unchanged).
    fn open_block(&self, index: u64, seal: &[u8], data: &mut [u8]) -> bool {
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&seal[..12]),
                &self.aad(index),
                data,
                Tag::from_slice(&seal[12..SEAL_BYTES]),
            )
            .is_ok()
    }

    /// Open a block with `seal`; an all-zero seal opens only an all-zero block.
    fn open_seal(&self, index: u64, seal: &[u8], data: &mut [u8]) -> bool {
        if seal.iter().all(|&b| b == 0) {
            return data.iter().all(|&b| b == 0);
        }
        self.open_block(index, seal, data)
    }

    /// Decrypt block `index` in place with `cur`, or with `prev` while no flush
    /// covered `cur`'s write.
    fn open_verified(&self, index: u64, data: &mut [u8]) -> bool {
        let mut entry = [0u8; ENTRY_BYTES - 8];
        let epoch = self.table.get(index, &mut entry);
        let (cur, prev) = entry.split_at(SEAL_BYTES);
        self.open_seal(index, cur, data)
            || (self.table.prev_allowed(epoch) && self.open_seal(index, prev, data))
    }

    async fn read_decrypt(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        let failed = self
            .table
            .read_checked(
                ctx,
                &*self.lower,
                self.block,
                offset,
                buf,
                &|index, data| self.open_verified(index, data),
            )
            .await?;
        if let Some(index) = failed {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                block = index,
                offset = index * self.block,
                "crypt: authentication failed"
            );
            return Err(Error::Corrupt {
                offset: index * self.block,
            });
        }
        Ok(())
    }

    async fn write_encrypt(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        let mut out = ctx.buf(buf.len());
        let first = offset / self.block;
        let block = self.block as usize;
        let mut seals = Vec::with_capacity(buf.len() / block);
        for (i, (plain, cipher)) in buf.chunks(block).zip(out.chunks_mut(block)).enumerate() {
            let index = first + i as u64;
            cipher.copy_from_slice(plain);
            let nonce = self.next_nonce();
            let tag = self
                .cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), &self.aad(index), cipher)
                .map_err(|_| Error::Io(libc::EIO))?;
            let mut seal = [0u8; SEAL_BYTES];
            seal[..12].copy_from_slice(&nonce);
            seal[12..].copy_from_slice(&tag);
            seals.push(seal);
        }
        let out = out.freeze();
        // Inside the epoch until the data is written: a flush waits for it.
        let writer = self.table.begin_write();
        self.set_seals(ctx, writer.epoch, first, seals.len() as u64, Some(&seals))
            .await?;
        self.table
            .write_data(&*self.lower, ctx, self.block, offset, &out)
            .await
    }

    async fn set_seals(
        &self,
        ctx: &IoCtx,
        epoch: u64,
        first: u64,
        count: u64,
        seals: Option<&[[u8; SEAL_BYTES]]>,
    ) -> Result<()> {
        self.table
            .update(
                ctx,
                &*self.lower,
                first,
                count,
                Stamp::Write(epoch),
                &mut |index, entry, old| {
                    let (cur, rest) = entry.split_at_mut(SEAL_BYTES);
                    if old != epoch {
                        rest[..SEAL_BYTES].copy_from_slice(cur);
                    }
                    match seals {
                        Some(s) => cur.copy_from_slice(&s[(index - first) as usize]),
                        None => cur.fill(0),
                    }
                },
            )
            .await
    }

    async fn zero(&self, ctx: &IoCtx, offset: u64, len: u64, discard: bool) -> Result<()> {
        let writer = self.table.begin_write();
        self.set_seals(
            ctx,
            writer.epoch,
            offset / self.block,
            len / self.block,
            None,
        )
        .await?;
        self.table
            .zero_data(&*self.lower, ctx, self.block, offset, len, discard)
            .await
    }
}

impl AsyncLayer for Crypt {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn grow(&self, ctx: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        let fit = fit_blocks(self.lower.size(), self.block);
        self.table
            .grow_to(&*self.lower, ctx, self.block, &self.size, new_size, fit)
            .await
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.read_decrypt(ctx, offset, buf).await
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.write_encrypt(ctx, offset, buf).await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        self.table.flush(ctx, &*self.lower).await
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(ctx, offset, len, true).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(ctx, offset, len, false).await
    }

    fn discard_frees_space(&self) -> bool {
        self.lower.discard_frees_space()
    }

    fn report(&self) -> LayerReport {
        LayerReport::Crypt(CryptReport {
            cipher: CIPHER.into(),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_check_detects_a_wrong_key() {
        let a = Aes256Gcm::new_from_slice(&[1u8; 32]).unwrap();
        let b = Aes256Gcm::new_from_slice(&[2u8; 32]).unwrap();
        let uuid = [9u8; 16];
        let stored = key_check(&a, &uuid, [3u8; 12]);
        assert!(check_key(&a, &uuid, &stored));
        assert!(!check_key(&b, &uuid, &stored));
        assert!(!check_key(&a, &[8u8; 16], &stored));
    }
}

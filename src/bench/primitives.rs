//! The raw primitives under the transformation layers, timed on the same
//! buffers the stack moves: crc32fast for `checksum`, AES-256-GCM for `crypt`,
//! lz4_flex for `compress`. One thread, `bs`-sized operations made of
//! block-sized pieces, as the layers process them.

use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};

use super::Figures;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Primitive {
    Crc32,
    AesGcm,
    Lz4,
}

impl Primitive {
    pub fn for_layer(type_name: &str) -> Option<Primitive> {
        match type_name {
            "checksum" => Some(Primitive::Crc32),
            "crypt" => Some(Primitive::AesGcm),
            "compress" => Some(Primitive::Lz4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Primitive::Crc32 => "crc32fast",
            Primitive::AesGcm => "aes-256-gcm",
            Primitive::Lz4 => "lz4_flex",
        }
    }
}

/// Run `primitive` over `data` (one `bs`-sized operation per pass, in pieces of
/// `block` bytes) for `seconds`; `write` = the direction a write takes (crc,
/// encrypt, compress), otherwise the read direction (crc, decrypt, decompress).
pub fn run(primitive: Primitive, data: &[u8], block: usize, write: bool, seconds: f64) -> Figures {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut ops = 0u64;
    let cipher = Aes256Gcm::new_from_slice(&[0x11; 32]).expect("32-byte key");
    let nonce = [7u8; 12];
    let mut work = data.to_vec();
    // Prepared inputs for the read direction.
    let sealed: Vec<(Vec<u8>, aes_gcm::Tag)> = if primitive == Primitive::AesGcm && !write {
        data.chunks(block)
            .map(|piece| {
                let mut c = piece.to_vec();
                let tag = cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"aad", &mut c)
                    .expect("within GCM limits");
                (c, tag)
            })
            .collect()
    } else {
        Vec::new()
    };
    let packed: Vec<Vec<u8>> = if primitive == Primitive::Lz4 && !write {
        data.chunks(block).map(lz4_flex::block::compress).collect()
    } else {
        Vec::new()
    };
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(block)];
    let mut sink = 0u64;
    while Instant::now() < deadline {
        for _ in 0..16 {
            match (primitive, write) {
                (Primitive::Crc32, _) => {
                    for (i, piece) in data.chunks(block).enumerate() {
                        let mut h = crc32fast::Hasher::new();
                        h.update(&(i as u64).to_le_bytes());
                        h.update(piece);
                        sink = sink.wrapping_add(u64::from(h.finalize()));
                    }
                }
                (Primitive::AesGcm, true) => {
                    for piece in work.chunks_mut(block) {
                        let tag = cipher
                            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"aad", piece)
                            .expect("within GCM limits");
                        sink = sink.wrapping_add(u64::from(tag[0]));
                    }
                }
                (Primitive::AesGcm, false) => {
                    for (piece, (sealed, tag)) in work.chunks_mut(block).zip(&sealed) {
                        piece.copy_from_slice(sealed);
                        let ok = cipher
                            .decrypt_in_place_detached(
                                Nonce::from_slice(&nonce),
                                b"aad",
                                piece,
                                tag,
                            )
                            .is_ok();
                        sink = sink.wrapping_add(u64::from(ok));
                    }
                }
                (Primitive::Lz4, true) => {
                    for piece in data.chunks(block) {
                        let n = lz4_flex::block::compress_into(piece, &mut out).unwrap_or(0);
                        sink = sink.wrapping_add(n as u64);
                    }
                }
                (Primitive::Lz4, false) => {
                    for (piece, packed) in work.chunks_mut(block).zip(&packed) {
                        let n = lz4_flex::block::decompress_into(packed, piece).unwrap_or(0);
                        sink = sink.wrapping_add(n as u64);
                    }
                }
            }
            ops += 1;
        }
    }
    std::hint::black_box(sink);
    Figures {
        ops,
        bytes: ops * data.len() as u64,
        elapsed: start.elapsed(),
    }
}

/// Fraction of space raw lz4 saves on `data` compressed in `block`-sized pieces.
pub fn lz4_saving(data: &[u8], block: usize) -> f64 {
    let packed: usize = data
        .chunks(block)
        .map(|piece| lz4_flex::block::compress(piece).len().min(piece.len()))
        .sum();
    1.0 - packed as f64 / data.len() as f64
}

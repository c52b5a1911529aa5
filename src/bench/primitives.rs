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

/// Run `primitive` for `seconds` over `data` (as large as the device, or
/// 256 MiB), one `bs`-sized operation at a time at random `bs`-aligned places,
/// each processed in `block`-sized pieces as the layer does: the same buffers the
/// stack moves, cold in cache as theirs are. `write` = the direction a write takes
/// (crc, encrypt, compress), otherwise the read direction (crc, decrypt,
/// decompress, from prepared sealed or packed copies of `data`).
pub fn run(
    primitive: Primitive,
    data: &[u8],
    bs: usize,
    block: usize,
    write: bool,
    seconds: f64,
) -> Figures {
    let cipher = Aes256Gcm::new_from_slice(&[0x11; 32]).expect("32-byte key");
    let nonce = [7u8; 12];
    // Prepared inputs for the read direction, one per block of `data`.
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
    let slots = (data.len() / bs).max(1);
    let per_op = bs / block;
    let mut rng = layers::rng::Rng::new(3);
    let mut work = vec![0u8; bs];
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(block)];
    let mut sink = 0u64;
    let mut ops = 0u64;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let cpu_start = super::thread_cpu();
    while Instant::now() < deadline {
        for _ in 0..16 {
            let slot = rng.below(slots as u64) as usize;
            let at = slot * bs;
            let first_block = at / block;
            let src = &data[at..at + bs];
            match (primitive, write) {
                (Primitive::Crc32, _) => {
                    for (i, piece) in src.chunks(block).enumerate() {
                        let mut h = crc32fast::Hasher::new();
                        h.update(&((first_block + i) as u64).to_le_bytes());
                        h.update(piece);
                        sink = sink.wrapping_add(u64::from(h.finalize()));
                    }
                }
                (Primitive::AesGcm, true) => {
                    work.copy_from_slice(src);
                    for piece in work.chunks_mut(block) {
                        let tag = cipher
                            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"aad", piece)
                            .expect("within GCM limits");
                        sink = sink.wrapping_add(u64::from(tag[0]));
                    }
                }
                (Primitive::AesGcm, false) => {
                    for (i, piece) in work.chunks_mut(block).enumerate() {
                        let (sealed, tag) = &sealed[first_block + i];
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
                    for piece in src.chunks(block) {
                        let n = lz4_flex::block::compress_into(piece, &mut out).unwrap_or(0);
                        sink = sink.wrapping_add(n as u64);
                    }
                }
                (Primitive::Lz4, false) => {
                    for (i, piece) in work.chunks_mut(block).enumerate().take(per_op) {
                        let n = lz4_flex::block::decompress_into(&packed[first_block + i], piece)
                            .unwrap_or(0);
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
        bytes: ops * bs as u64,
        elapsed: start.elapsed(),
        cpu: super::thread_cpu() - cpu_start,
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

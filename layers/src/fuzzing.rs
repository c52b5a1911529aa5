//! Entry points for the fuzz targets in `fuzz/`: decoders of bytes read from a
//! leaf that are private to their layer, called the way the layer calls them.
//! Not an API: the signatures follow the layers.

use std::ops::Range;

use crate::compress::{codec, entry, format};

/// A compress superblock's parameters.
pub fn compress_params(bytes: &[u8]) -> Result<(), String> {
    format::Params::decode(bytes).map(drop)
}

/// A compress map entry, checked against a unit of `unit_bytes` in a data area
/// of `granules` granules of `granule_bytes`.
pub fn compress_entry(
    bytes: &[u8],
    unit_bytes: u32,
    granule_bytes: u32,
    granules: u64,
) -> Result<(), &'static str> {
    let limits = entry::Limits {
        unit_bytes,
        granule_bytes,
        granules,
    };
    entry::decode_entry(bytes, &limits).map(drop)
}

/// Decode `stored` as the packed (`lz4`) or raw bytes of unit `unit` of
/// `out.len()` bytes, filling the pieces that overlap `want`, as a read does
/// once the map entry decoded: the extent is `stored.len()` bytes long with a
/// crc that matches, so the decoding gets past the crc, and it is read as its
/// whole granules (zeros after `stored`). Returns whether the bytes decode;
/// `false` also when no map entry that decodes could describe such an extent.
pub fn compress_pieces(
    unit: u64,
    lz4: bool,
    stored: &[u8],
    out: &mut [u8],
    want: Range<usize>,
) -> bool {
    let granule_bytes = format::GRANULE_BYTES;
    let Ok(stored_bytes) = u32::try_from(stored.len()) else {
        return false;
    };
    let extent = entry::Extent {
        kind: if lz4 {
            entry::Kind::Lz4
        } else {
            entry::Kind::Raw
        },
        granule: 0,
        stored_bytes,
        crc: entry::stored_crc(unit, stored),
    };
    let granules = extent.granules(granule_bytes);
    let limits = entry::Limits {
        unit_bytes: out.len() as u32,
        granule_bytes,
        granules,
    };
    let mut bytes = [0u8; entry::EXTENT_BYTES];
    extent.encode(&mut bytes);
    if entry::Extent::decode(&bytes, &limits).is_err() || want.start > want.end {
        return false;
    }
    let want = want.start.min(out.len())..want.end.min(out.len());
    let mut read = stored.to_vec();
    read.resize((granules * u64::from(granule_bytes)) as usize, 0);
    codec::decode_range(unit, &extent, &read, out, want)
}

/// What an NBD server sends to the `nbd` leaf: the first byte picks how the
/// rest is taken (bits 0-5: bytes per socket read, 0 for as many as fit; bit
/// 6: the owner of one read is gone; bit 7: no handshake, structured replies
/// assumed); then the server's side of the handshake for the export `e`,
/// then its replies to reads of 1, 512, 4096 and 65536 bytes, a write and a
/// flush in flight. The handshake's or the replies' error, if any; panics if
/// the client broke its own bounds.
pub fn nbd_client(data: &[u8]) -> Result<(), String> {
    let Some((&control, rest)) = data.split_first() else {
        return Err("no input".into());
    };
    let step = usize::from(control & 0x3f);
    let abandon = control & 0x40 != 0;
    let (structured, replies) = if control & 0x80 != 0 {
        (true, rest)
    } else {
        let mut server = ServerSide {
            input: std::io::Cursor::new(rest),
        };
        let (export, _) =
            crate::nbd::handshake::negotiate(&mut server, "e", None).map_err(|e| e.to_string())?;
        assert!(export.min_block >= 1 && export.max_payload >= export.min_block);
        assert!(export.max_payload <= crate::nbd::wire::MAX_PAYLOAD_BYTES);
        let used = server.input.position() as usize;
        (export.structured, &rest[used..])
    };
    crate::nbd::conn::fuzzing::replies(replies, structured, step, abandon)
}

/// The server's bytes to read; what the client writes is dropped.
struct ServerSide<'a> {
    input: std::io::Cursor<&'a [u8]>,
}

impl std::io::Read for ServerSide<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl std::io::Write for ServerSide<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::nbd_client;

    /// Each seed of the `nbd_reply` target is a whole valid conversation:
    /// every request in flight gets its reply.
    #[test]
    fn nbd_reply_seeds_answer_every_request() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/nbd_reply");
        let mut seen = 0;
        for seed in std::fs::read_dir(&dir).unwrap() {
            let path = seed.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(nbd_client(&bytes), Ok(()), "{}", path.display());
            // Cut short anywhere, the conversation ends in an error, not a panic.
            for cut in (0..bytes.len()).step_by(97) {
                assert!(
                    nbd_client(&bytes[..cut]).is_err(),
                    "{} cut at {cut}",
                    path.display()
                );
            }
            seen += 1;
        }
        assert!(seen >= 4, "{} seeds in {}", seen, dir.display());
    }

    /// A data chunk that starts before its read or runs past it breaks the
    /// connection.
    #[test]
    fn nbd_data_chunks_outside_their_read_are_refused() {
        for (at, len) in [(4095u64, 8u32), (4096 + 510, 4), (u64::MAX - 1, 4)] {
            let mut input = vec![0x80];
            input.extend_from_slice(&0x668e_33efu32.to_be_bytes());
            input.extend_from_slice(&1u16.to_be_bytes());
            input.extend_from_slice(&1u16.to_be_bytes());
            input.extend_from_slice(&2u64.to_be_bytes());
            input.extend_from_slice(&(8 + len).to_be_bytes());
            input.extend_from_slice(&at.to_be_bytes());
            input.extend(std::iter::repeat(7).take(len as usize));
            let error = nbd_client(&input).unwrap_err();
            assert!(error.contains("outside its read"), "{at}+{len}: {error}");
        }
    }
}

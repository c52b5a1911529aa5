//! NBD wire format as the server writes it: the request header it decodes and
//! the replies it encodes (all fields big-endian). The constants both sides
//! share are in `layers::nbd::wire`.

pub use layers::nbd::wire::*;

/// One transmission-phase request header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// Why a request header cannot be decoded: the stream is out of step, so the
/// connection must close.
#[derive(Debug, PartialEq, Eq)]
pub struct BadMagic(pub u32);

impl Request {
    pub fn decode(bytes: &[u8; REQUEST_BYTES]) -> Result<Request, BadMagic> {
        let magic = u32::from_be_bytes(take(bytes, 0));
        if magic != REQUEST_MAGIC {
            return Err(BadMagic(magic));
        }
        Ok(Request {
            flags: u16::from_be_bytes(take(bytes, 4)),
            kind: u16::from_be_bytes(take(bytes, 6)),
            cookie: u64::from_be_bytes(take(bytes, 8)),
            offset: u64::from_be_bytes(take(bytes, 16)),
            length: u32::from_be_bytes(take(bytes, 24)),
        })
    }

    #[cfg(test)]
    pub fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut out = [0u8; REQUEST_BYTES];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// A simple reply header; READ data follows it when `error` is 0.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut out = [0u8; SIMPLE_REPLY_BYTES];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk header; `length` bytes of payload follow.
pub fn chunk_header(cookie: u64, flags: u16, kind: u16, length: u32) -> [u8; CHUNK_HEADER_BYTES] {
    let mut out = [0u8; CHUNK_HEADER_BYTES];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// The single, final chunk of a successful structured READ reply, up to its
/// data: the `len` bytes read at `offset` follow it as they are.
pub fn read_chunk(cookie: u64, offset: u64, len: u32) -> [u8; CHUNK_HEADER_BYTES + 8] {
    let mut out = [0u8; CHUNK_HEADER_BYTES + 8];
    out[..CHUNK_HEADER_BYTES].copy_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        8 + len,
    ));
    out[CHUNK_HEADER_BYTES..].copy_from_slice(&offset.to_be_bytes());
    out
}

/// A final NBD_REPLY_TYPE_ERROR chunk without a message.
pub fn error_chunk(cookie: u64, error: u32) -> [u8; CHUNK_HEADER_BYTES + 6] {
    let mut out = [0u8; CHUNK_HEADER_BYTES + 6];
    out[..CHUNK_HEADER_BYTES].copy_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6,
    ));
    out[CHUNK_HEADER_BYTES..CHUNK_HEADER_BYTES + 4].copy_from_slice(&error.to_be_bytes());
    out
}

/// The header of a final BLOCK_STATUS chunk carrying `descriptors` (each 8
/// bytes, sent after it): chunk header and context id.
pub fn block_status_chunk(
    cookie: u64,
    context: u32,
    descriptors: usize,
) -> [u8; CHUNK_HEADER_BYTES + 4] {
    let mut out = [0u8; CHUNK_HEADER_BYTES + 4];
    let length = 4 + 8 * descriptors as u32;
    out[..CHUNK_HEADER_BYTES].copy_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        length,
    ));
    out[CHUNK_HEADER_BYTES..].copy_from_slice(&context.to_be_bytes());
    out
}

/// An option reply header; `length` bytes of data follow.
pub fn option_reply(option: u32, kind: u32, length: u32) -> [u8; OPTION_REPLY_BYTES] {
    let mut out = [0u8; OPTION_REPLY_BYTES];
    out[0..8].copy_from_slice(&REP_MAGIC.to_be_bytes());
    out[8..12].copy_from_slice(&option.to_be_bytes());
    out[12..16].copy_from_slice(&kind.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// The protocol's error value for a stack error (a negative errno from
/// `layers::Error::errno`). Anything the protocol has no name for is EIO.
pub fn error_value(errno: i32) -> u32 {
    match -errno {
        libc::EPERM => EPERM,
        libc::ENOMEM => ENOMEM,
        libc::EINVAL => EINVAL,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => ENOSPC,
        libc::EOVERFLOW => EOVERFLOW,
        libc::EOPNOTSUPP => ENOTSUP,
        _ => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_bad_magic_is_refused() {
        let req = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        let bytes = req.encode();
        assert_eq!(&bytes[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&bytes), Ok(req));
        let mut bad = bytes;
        bad[0] ^= 1;
        assert!(Request::decode(&bad).is_err());
    }

    #[test]
    fn replies_are_big_endian() {
        let reply = simple_reply(7, EINVAL);
        assert_eq!(&reply[0..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&reply[4..8], &[0, 0, 0, 22]);
        assert_eq!(reply[15], 7);
        let rep = option_reply(OPT_GO, REP_ERR_UNSUP, 3);
        assert_eq!(&rep[0..8], &REP_MAGIC.to_be_bytes());
        assert_eq!(&rep[12..16], &[0x80, 0, 0, 1]);
    }

    #[test]
    fn structured_chunks_are_laid_out_as_the_protocol_says() {
        let read = read_chunk(0x1122, 1 << 33, 4096);
        assert_eq!(&read[0..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(u16::from_be_bytes(take(&read, 4)), REPLY_FLAG_DONE);
        assert_eq!(u16::from_be_bytes(take(&read, 6)), REPLY_TYPE_OFFSET_DATA);
        assert_eq!(u64::from_be_bytes(take(&read, 8)), 0x1122);
        assert_eq!(u32::from_be_bytes(take(&read, 16)), 8 + 4096);
        assert_eq!(u64::from_be_bytes(take(&read, 20)), 1 << 33);
        let error = error_chunk(9, EIO);
        assert_eq!(&error[6..8], &[0x80, 0x01]);
        assert_eq!(u32::from_be_bytes(take(&error, 16)), 6);
        assert_eq!(u32::from_be_bytes(take(&error, 20)), EIO);
        assert_eq!(&error[24..26], &[0, 0]);
        let status = block_status_chunk(3, ALLOCATION_CONTEXT_ID, 2);
        assert_eq!(
            u16::from_be_bytes(take(&status, 6)),
            REPLY_TYPE_BLOCK_STATUS
        );
        assert_eq!(u32::from_be_bytes(take(&status, 16)), 4 + 16);
        assert_eq!(u32::from_be_bytes(take(&status, 20)), ALLOCATION_CONTEXT_ID);
    }

    #[test]
    fn stack_errors_map_to_protocol_values() {
        assert_eq!(error_value(-libc::ENOSPC), ENOSPC);
        assert_eq!(error_value(-libc::EOPNOTSUPP), ENOTSUP);
        assert_eq!(error_value(-libc::EBADMSG), EIO);
    }
}

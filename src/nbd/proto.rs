//! NBD wire format: magics, option and command codes, and the fixed-size
//! messages, encoded and decoded by hand (all fields big-endian). Sizes are
//! pinned with `const` asserts so a changed field cannot silently shift the
//! stream.

/// `NBDMAGIC`, the first eight bytes the server sends.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the prefix of every client option.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const TX_HAS_FLAGS: u16 = 1 << 0;
pub const TX_SEND_FLUSH: u16 = 1 << 2;
pub const TX_SEND_FUA: u16 = 1 << 3;
pub const TX_SEND_TRIM: u16 = 1 << 5;
pub const TX_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TX_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERROR | 1;
pub const REP_ERR_INVALID: u32 = REP_ERROR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERROR | 6;

// Information types of NBD_OPT_INFO / NBD_OPT_GO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands and their flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// Structured reply chunks: flags, types, and base:allocation's status bits.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context served, and the id it has in BLOCK_STATUS replies.
pub const ALLOCATION_CONTEXT: &str = "base:allocation";
pub const ALLOCATION_CONTEXT_ID: u32 = 1;

// Error values of replies (the protocol's own numbering).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Largest option payload accepted during the handshake: the longest legal one
/// (GO with a 4096-byte name and a few info requests) with room to spare.
pub const MAX_OPTION_BYTES: u32 = 8192;
/// Largest READ or WRITE payload (the protocol's recommended maximum).
pub const MAX_PAYLOAD_BYTES: u32 = 32 << 20;

/// A request header: magic, flags, type, cookie, offset, length.
pub const REQUEST_BYTES: usize = 28;
/// A simple reply: magic, error, cookie.
pub const SIMPLE_REPLY_BYTES: usize = 16;
/// A structured reply chunk header: magic, flags, type, cookie, length.
pub const CHUNK_HEADER_BYTES: usize = 20;
/// Room for the longest fixed part of any reply the server sends: a chunk
/// header and the fixed fields of its payload (OFFSET_DATA's offset, ERROR's
/// error and message length, BLOCK_STATUS's context id).
pub const MAX_REPLY_HEADER_BYTES: usize = 32;
/// An option header after the client's IHAVEOPT: magic, option, length.
pub const OPTION_HEADER_BYTES: usize = 16;
/// An option reply header: magic, option, type, length.
pub const OPTION_REPLY_BYTES: usize = 20;

const _: () = assert!(REQUEST_BYTES == 4 + 2 + 2 + 8 + 8 + 4);
const _: () = assert!(SIMPLE_REPLY_BYTES == 4 + 4 + 8);
const _: () = assert!(CHUNK_HEADER_BYTES == 4 + 2 + 2 + 8 + 4);
const _: () = assert!(CHUNK_HEADER_BYTES + 8 <= MAX_REPLY_HEADER_BYTES);
const _: () = assert!(CHUNK_HEADER_BYTES + 4 + 2 <= MAX_REPLY_HEADER_BYTES);
const _: () = assert!(OPTION_HEADER_BYTES == 8 + 4 + 4);
const _: () = assert!(OPTION_REPLY_BYTES == 8 + 4 + 4 + 4);

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

/// `N` bytes of `bytes` at `at`; callers pass constant in-bounds ranges of
/// fixed-size arrays.
pub fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
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

//! NBD wire constants shared by the server (`ublk-stack up --nbd`) and the
//! `nbd` leaf's client: magics, flags, option, command and reply codes, the
//! protocol's error values, and the fixed message sizes (all fields
//! big-endian). Sizes are pinned with `const` asserts so a changed field
//! cannot silently shift the stream.

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
pub const OPT_STARTTLS: u32 = 5;
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
pub const REP_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERROR | 3;
pub const REP_ERR_TLS_REQD: u32 = REP_ERROR | 5;
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
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;
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

/// `N` bytes of `bytes` at `at`; callers pass constant in-bounds ranges of
/// fixed-size arrays.
pub fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

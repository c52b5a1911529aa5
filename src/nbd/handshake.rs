//! The fixed-newstyle handshake, spoken over a blocking stream on a short-lived
//! thread of its own (it is a handful of small messages, and a client that
//! stalls here must not hold up a queue thread).
//!
//! Options served: EXPORT_NAME, GO, INFO, LIST, ABORT, STRUCTURED_REPLY, and
//! LIST_META_CONTEXT / SET_META_CONTEXT for the one context `base:allocation`
//! (which enables NBD_CMD_BLOCK_STATUS). Everything else (STARTTLS, extended
//! headers) gets NBD_REP_ERR_UNSUP. What was negotiated travels with the
//! connection to the transmission phase. The one export is the device: it
//! answers to the empty (default) name and to the device's name.

use std::io::{self, Read, Write};

use super::proto::*;

/// What the handshake advertises.
#[derive(Clone, Debug)]
pub struct Export {
    /// The device name from the config.
    pub name: String,
    pub size_bytes: u64,
    /// The stack's logical block size: the minimum (and alignment) of every request.
    pub block_size: u32,
}

impl Export {
    fn knows(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    /// Transmission flags: every command the server implements. Multi-conn is
    /// safe because every connection drives the same stack and FLUSH flushes
    /// all of it, whichever connection wrote the data.
    pub fn transmission_flags(&self) -> u16 {
        TX_HAS_FLAGS
            | TX_SEND_FLUSH
            | TX_SEND_FUA
            | TX_SEND_TRIM
            | TX_SEND_WRITE_ZEROES
            | TX_CAN_MULTI_CONN
    }

    fn preferred_block_bytes(&self) -> u32 {
        self.block_size.max(4096)
    }
}

/// What the client negotiated for the transmission phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// NBD_OPT_STRUCTURED_REPLY: READs are answered with structured replies.
    pub structured: bool,
    /// `base:allocation` was selected: BLOCK_STATUS is allowed.
    pub allocation: bool,
}

/// How a handshake ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client chose the export: the transmission phase starts.
    Transmission(Negotiated),
    /// The client aborted or named an unknown export with EXPORT_NAME.
    Closed,
}

/// Options a client may send before it must choose; a client that keeps
/// asking is dropped.
const MAX_OPTIONS: usize = 256;

/// Run the server side of the handshake on `stream`. An `Err` means the client
/// broke the protocol or went away; the caller closes the connection.
pub fn negotiate<S: Read + Write>(stream: &mut S, export: &Export) -> io::Result<Outcome> {
    let mut hello = [0u8; 18];
    hello[0..8].copy_from_slice(&INIT_MAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&OPTS_MAGIC.to_be_bytes());
    hello[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&hello)?;
    let client_flags = u32::from_be_bytes(read_array(stream)?);
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(protocol("unknown client flags"));
    }
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let mut negotiated = Negotiated::default();
    for _ in 0..MAX_OPTIONS {
        let header: [u8; OPTION_HEADER_BYTES] = read_array(stream)?;
        if u64::from_be_bytes(take(&header, 0)) != OPTS_MAGIC {
            return Err(protocol("bad option magic"));
        }
        let option = u32::from_be_bytes(take(&header, 8));
        let length = u32::from_be_bytes(take(&header, 12));
        if length > MAX_OPTION_BYTES {
            return Err(protocol("option too long"));
        }
        let mut data = vec![0u8; length as usize];
        stream.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                if !export.knows(&data) {
                    return Ok(Outcome::Closed);
                }
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&export.size_bytes.to_be_bytes());
                reply.extend_from_slice(&export.transmission_flags().to_be_bytes());
                if !no_zeroes {
                    reply.resize(10 + 124, 0);
                }
                stream.write_all(&reply)?;
                return Ok(Outcome::Transmission(negotiated));
            }
            OPT_ABORT => {
                // The client may already be gone; that is fine.
                drop(send_reply(stream, option, REP_ACK, &[]));
                return Ok(Outcome::Closed);
            }
            OPT_LIST if !data.is_empty() => send_reply(stream, option, REP_ERR_INVALID, &[])?,
            OPT_LIST => {
                let mut server = Vec::with_capacity(4 + export.name.len());
                server.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                server.extend_from_slice(export.name.as_bytes());
                send_reply(stream, option, REP_SERVER, &server)?;
                send_reply(stream, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                if info(stream, export, option, &data)? && option == OPT_GO {
                    return Ok(Outcome::Transmission(negotiated));
                }
            }
            OPT_STRUCTURED_REPLY if !data.is_empty() => {
                send_reply(stream, option, REP_ERR_INVALID, &[])?
            }
            OPT_STRUCTURED_REPLY => {
                negotiated.structured = true;
                send_reply(stream, option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_context(stream, export, option, &data, &mut negotiated)?
            }
            _ => send_reply(stream, option, REP_ERR_UNSUP, &[])?,
        }
    }
    Err(protocol("too many options"))
}

/// Answer INFO or GO; returns whether the export was accepted.
fn info<S: Write>(stream: &mut S, export: &Export, option: u32, data: &[u8]) -> io::Result<bool> {
    let Some((name, requests)) = parse_info(data) else {
        send_reply(stream, option, REP_ERR_INVALID, &[])?;
        return Ok(false);
    };
    if !export.knows(name) {
        send_reply(stream, option, REP_ERR_UNKNOWN, &[])?;
        return Ok(false);
    }
    let mut item = Vec::with_capacity(16);
    item.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    item.extend_from_slice(&export.size_bytes.to_be_bytes());
    item.extend_from_slice(&export.transmission_flags().to_be_bytes());
    send_reply(stream, option, REP_INFO, &item)?;
    // Sent whether asked or not (the protocol allows it): a client that cannot
    // honour it still gets EINVAL for misaligned requests, never a corruption.
    item.clear();
    item.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    item.extend_from_slice(&export.block_size.to_be_bytes());
    item.extend_from_slice(&export.preferred_block_bytes().to_be_bytes());
    item.extend_from_slice(&MAX_PAYLOAD_BYTES.to_be_bytes());
    send_reply(stream, option, REP_INFO, &item)?;
    if requests.contains(&INFO_NAME) {
        item.clear();
        item.extend_from_slice(&INFO_NAME.to_be_bytes());
        item.extend_from_slice(export.name.as_bytes());
        send_reply(stream, option, REP_INFO, &item)?;
    }
    send_reply(stream, option, REP_ACK, &[])?;
    Ok(true)
}

/// Answer LIST_META_CONTEXT or SET_META_CONTEXT: a META_CONTEXT reply for
/// `base:allocation` when a query selects it, then ACK. A SET replaces what an
/// earlier SET selected, even when it fails.
fn meta_context<S: Write>(
    stream: &mut S,
    export: &Export,
    option: u32,
    data: &[u8],
    negotiated: &mut Negotiated,
) -> io::Result<()> {
    let set = option == OPT_SET_META_CONTEXT;
    if set {
        negotiated.allocation = false;
        if !negotiated.structured {
            return send_reply(stream, option, REP_ERR_INVALID, &[]);
        }
    }
    let Some((name, queries)) = parse_meta(data) else {
        return send_reply(stream, option, REP_ERR_INVALID, &[]);
    };
    if !export.knows(name) {
        return send_reply(stream, option, REP_ERR_UNKNOWN, &[]);
    }
    let context = ALLOCATION_CONTEXT.as_bytes();
    let selected = if set {
        queries.contains(&context)
    } else {
        // LIST: no query lists every context; so does a bare namespace.
        queries.is_empty() || queries.iter().any(|q| *q == context || *q == b"base:")
    };
    if selected {
        // Ids mean nothing in a LIST reply; 0 there, as is customary.
        let id = if set { ALLOCATION_CONTEXT_ID } else { 0 };
        let mut reply = id.to_be_bytes().to_vec();
        reply.extend_from_slice(context);
        send_reply(stream, option, REP_META_CONTEXT, &reply)?;
        negotiated.allocation = set;
    }
    send_reply(stream, option, REP_ACK, &[])
}

/// LIST / SET_META_CONTEXT data: u32 name length, name, u32 query count, then
/// count × (u32 length, query). `None` when the lengths disagree.
fn parse_meta(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let (name, mut rest) = split_string(data)?;
    let count = u32::from_be_bytes(rest.get(0..4)?.try_into().ok()?);
    rest = &rest[4..];
    let mut queries = Vec::new();
    for _ in 0..count {
        let (query, after) = split_string(rest)?;
        queries.push(query);
        rest = after;
    }
    rest.is_empty().then_some((name, queries))
}

/// A u32-length-prefixed string at the start of `data`, and what follows it.
fn split_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    Some((data.get(4..end)?, data.get(end..)?))
}

/// INFO / GO data: u32 name length, name, u16 count, count × u16 requests.
/// `None` when the lengths disagree.
fn parse_info(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let (name, rest) = split_string(data)?;
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let rest = &rest[2..];
    if rest.len() != count * 2 {
        return None;
    }
    let requests = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name, requests))
}

fn send_reply<S: Write>(stream: &mut S, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(OPTION_REPLY_BYTES + data.len());
    message.extend_from_slice(&option_reply(option, kind, data.len() as u32));
    message.extend_from_slice(data);
    stream.write_all(&message)
}

fn read_array<const N: usize, S: Read>(stream: &mut S) -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    stream.read_exact(&mut out)?;
    Ok(out)
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A scripted client: reads come from `input`, writes land in `output`.
    struct Script {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn export() -> Export {
        Export {
            name: "dev0".into(),
            size_bytes: 1 << 20,
            block_size: 4096,
        }
    }

    fn option(code: u32, data: &[u8]) -> Vec<u8> {
        let mut out = OPTS_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn go_data(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut out = (name.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            out.extend_from_slice(&r.to_be_bytes());
        }
        out
    }

    fn run(client: Vec<u8>) -> (io::Result<Outcome>, Vec<u8>) {
        let mut script = Script {
            input: Cursor::new(client),
            output: Vec::new(),
        };
        let result = negotiate(&mut script, &export());
        (result, script.output)
    }

    /// The option replies after the 18-byte greeting: (option, type, data).
    fn replies(mut out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        out = &out[18..];
        let mut found = Vec::new();
        while out.len() >= OPTION_REPLY_BYTES {
            assert_eq!(u64::from_be_bytes(take(out, 0)), REP_MAGIC);
            let len = u32::from_be_bytes(take(out, 16)) as usize;
            found.push((
                u32::from_be_bytes(take(out, 8)),
                u32::from_be_bytes(take(out, 12)),
                out[20..20 + len].to_vec(),
            ));
            out = &out[20 + len..];
        }
        found
    }

    #[test]
    fn go_reports_size_flags_and_block_sizes() {
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(option(5, &[])); // STARTTLS: unsupported
        client.extend(option(OPT_GO, &go_data("", &[INFO_BLOCK_SIZE, INFO_NAME])));
        let (result, out) = run(client);
        assert_eq!(
            result.unwrap(),
            Outcome::Transmission(Negotiated::default())
        );
        let replies = replies(&out);
        assert_eq!(replies[0].1, REP_ERR_UNSUP);
        let (_, kind, data) = &replies[1];
        assert_eq!(*kind, REP_INFO);
        assert_eq!(u16::from_be_bytes(take(data, 0)), INFO_EXPORT);
        assert_eq!(u64::from_be_bytes(take(data, 2)), 1 << 20);
        let flags = u16::from_be_bytes(take(data, 10));
        assert_ne!(flags & TX_CAN_MULTI_CONN, 0);
        let (_, _, sizes) = &replies[2];
        assert_eq!(u32::from_be_bytes(take(sizes, 2)), 4096);
        assert_eq!(u32::from_be_bytes(take(sizes, 10)), MAX_PAYLOAD_BYTES);
        assert_eq!(&replies[3].2[2..], b"dev0");
        assert_eq!(replies[4].1, REP_ACK);
    }

    #[test]
    fn unknown_export_and_malformed_go_get_errors_then_list_and_abort() {
        let mut client = 1u32.to_be_bytes().to_vec();
        client.extend(option(OPT_GO, &go_data("other", &[])));
        client.extend(option(OPT_INFO, &[0, 0, 0, 9, 1]));
        client.extend(option(OPT_LIST, &[]));
        client.extend(option(OPT_ABORT, &[]));
        let (result, out) = run(client);
        assert_eq!(result.unwrap(), Outcome::Closed);
        let kinds: Vec<u32> = replies(&out).iter().map(|r| r.1).collect();
        assert_eq!(
            kinds,
            [
                REP_ERR_UNKNOWN,
                REP_ERR_INVALID,
                REP_SERVER,
                REP_ACK,
                REP_ACK
            ]
        );
    }

    #[test]
    fn export_name_sends_size_and_zero_padding() {
        let mut client = 1u32.to_be_bytes().to_vec(); // no NO_ZEROES
        client.extend(option(OPT_EXPORT_NAME, b"dev0"));
        let (result, out) = run(client);
        assert_eq!(
            result.unwrap(),
            Outcome::Transmission(Negotiated::default())
        );
        assert_eq!(out.len(), 18 + 8 + 2 + 124);
        assert_eq!(u64::from_be_bytes(take(&out, 18)), 1 << 20);
    }

    fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut out = (name.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            out.extend_from_slice(&(q.len() as u32).to_be_bytes());
            out.extend_from_slice(q.as_bytes());
        }
        out
    }

    #[test]
    fn structured_replies_and_base_allocation_are_negotiated() {
        let mut client = 3u32.to_be_bytes().to_vec();
        // SET before STRUCTURED_REPLY is refused; a STRUCTURED_REPLY with
        // payload too.
        client.extend(option(
            OPT_SET_META_CONTEXT,
            &meta_data("", &["base:allocation"]),
        ));
        client.extend(option(OPT_STRUCTURED_REPLY, &[1]));
        client.extend(option(OPT_STRUCTURED_REPLY, &[]));
        // LIST with no query, with the namespace, and with an unknown context.
        client.extend(option(OPT_LIST_META_CONTEXT, &meta_data("dev0", &[])));
        client.extend(option(OPT_LIST_META_CONTEXT, &meta_data("", &["base:"])));
        client.extend(option(
            OPT_LIST_META_CONTEXT,
            &meta_data("", &["qemu:dirty-bitmap:x"]),
        ));
        // SET of an unknown context selects nothing; a wrong export or a
        // malformed payload is an error; then the real one.
        client.extend(option(OPT_SET_META_CONTEXT, &meta_data("", &["base:"])));
        client.extend(option(
            OPT_SET_META_CONTEXT,
            &meta_data("other", &["base:allocation"]),
        ));
        client.extend(option(OPT_SET_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 9]));
        client.extend(option(
            OPT_SET_META_CONTEXT,
            &meta_data("dev0", &["x:y", "base:allocation"]),
        ));
        client.extend(option(OPT_GO, &go_data("", &[])));
        let (result, out) = run(client);
        assert_eq!(
            result.unwrap(),
            Outcome::Transmission(Negotiated {
                structured: true,
                allocation: true
            })
        );
        let replies = replies(&out);
        let kinds: Vec<u32> = replies.iter().map(|r| r.1).collect();
        assert_eq!(
            kinds,
            [
                REP_ERR_INVALID,
                REP_ERR_INVALID,
                REP_ACK,
                REP_META_CONTEXT,
                REP_ACK,
                REP_META_CONTEXT,
                REP_ACK,
                REP_ACK, // unknown context: nothing listed
                REP_ACK, // unknown context: nothing selected
                REP_ERR_UNKNOWN,
                REP_ERR_INVALID,
                REP_META_CONTEXT,
                REP_ACK,
                REP_INFO,
                REP_INFO,
                REP_ACK,
            ]
        );
        let (_, _, context) = &replies[11];
        assert_eq!(u32::from_be_bytes(take(context, 0)), ALLOCATION_CONTEXT_ID);
        assert_eq!(&context[4..], b"base:allocation");
        assert_eq!(&replies[3].2[4..], b"base:allocation");
    }

    #[test]
    fn a_failed_set_clears_the_context() {
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(option(OPT_STRUCTURED_REPLY, &[]));
        let set = meta_data("", &["base:allocation"]);
        client.extend(option(OPT_SET_META_CONTEXT, &set));
        client.extend(option(OPT_SET_META_CONTEXT, &meta_data("", &["x:y"])));
        client.extend(option(OPT_EXPORT_NAME, b""));
        let (result, _) = run(client);
        assert_eq!(
            result.unwrap(),
            Outcome::Transmission(Negotiated {
                structured: true,
                allocation: false
            })
        );
    }

    #[test]
    fn truncated_or_hostile_input_is_an_error_not_a_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            let mut client = 1u32.to_be_bytes().to_vec();
            client.extend(option(OPT_GO, &go_data("", &[3])));
            // Mangle a prefix of a valid exchange: truncate and flip bytes.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let cut = (seed as usize) % (client.len() + 1);
            client.truncate(cut);
            if let Some(b) = client.get_mut((seed >> 32) as usize % (cut + 1)) {
                *b ^= (seed >> 8) as u8 | 1;
            }
            if round % 3 == 0 {
                client.extend(option(OPT_INFO, &[0xff; 12]));
            }
            if round % 3 == 1 {
                client.extend(option(OPT_STRUCTURED_REPLY, &[]));
                let mut meta = meta_data("", &["base:allocation", "base:"]);
                let at = (seed >> 40) as usize % meta.len();
                meta[at] ^= (seed >> 16) as u8 | 1;
                client.extend(option(OPT_SET_META_CONTEXT, &meta));
                client.extend(option(OPT_LIST_META_CONTEXT, &meta));
            }
            let (_result, _out) = run(client);
        }
        let mut huge = 1u32.to_be_bytes().to_vec();
        huge.extend(OPTS_MAGIC.to_be_bytes());
        huge.extend(OPT_GO.to_be_bytes());
        huge.extend(u32::MAX.to_be_bytes());
        assert!(run(huge).0.is_err());
    }
}

//! What a request asks of the stack, once checked against the export: its
//! [`Action`], or the protocol error that answers it; and the descriptors of
//! a BLOCK_STATUS reply.

use super::handshake::Negotiated;
use super::proto::{self, Request};

/// Most descriptors in one BLOCK_STATUS reply; the protocol lets the server
/// describe less than asked, and clients ask again from where it stopped.
const MAX_DESCRIPTORS: usize = 1024;

/// What a checked request asks of the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Disconnect,
}

/// Check a request against the export: the protocol error for a bad one.
/// WRITE payloads are received before this is acted on either way.
pub fn check(
    req: &Request,
    size: u64,
    block_size: u32,
    negotiated: Negotiated,
) -> Result<Action, u32> {
    let allowed = match req.kind {
        proto::CMD_WRITE | proto::CMD_TRIM => proto::CMD_FLAG_FUA,
        proto::CMD_WRITE_ZEROES => proto::CMD_FLAG_FUA | proto::CMD_FLAG_NO_HOLE,
        proto::CMD_BLOCK_STATUS => proto::CMD_FLAG_REQ_ONE,
        _ => 0,
    };
    if req.flags & !allowed != 0 {
        return Err(proto::EINVAL);
    }
    let fua = req.flags & proto::CMD_FLAG_FUA != 0;
    let (offset, len) = (req.offset, req.length);
    // `whole_blocks`: the length must be on the block grid too.
    let ranged = |too_far: u32, whole_blocks: bool| -> Result<(), u32> {
        let block = u64::from(block_size);
        if len == 0 || offset % block != 0 || (whole_blocks && u64::from(len) % block != 0) {
            return Err(proto::EINVAL);
        }
        match offset.checked_add(u64::from(len)) {
            Some(end) if end <= size => Ok(()),
            _ => Err(too_far),
        }
    };
    match req.kind {
        proto::CMD_READ | proto::CMD_WRITE if len > proto::MAX_PAYLOAD_BYTES => {
            Err(proto::EOVERFLOW)
        }
        proto::CMD_READ => ranged(proto::EINVAL, true).map(|()| Action::Read { offset, len }),
        proto::CMD_WRITE => {
            ranged(proto::ENOSPC, true).map(|()| Action::Write { offset, len, fua })
        }
        proto::CMD_FLUSH => Ok(Action::Flush),
        proto::CMD_TRIM => ranged(proto::EINVAL, true).map(|()| Action::Trim { offset, len, fua }),
        proto::CMD_WRITE_ZEROES => ranged(proto::ENOSPC, true).map(|()| Action::WriteZeroes {
            offset,
            len,
            fua,
            no_hole: req.flags & proto::CMD_FLAG_NO_HOLE != 0,
        }),
        proto::CMD_BLOCK_STATUS if negotiated.allocation => {
            // The length need not be on the block grid (libnbd asks for
            // whatever is left, capped at 2^31 - 1): the reply rounds instead.
            ranged(proto::EINVAL, false).map(|()| Action::BlockStatus {
                offset,
                len,
                req_one: req.flags & proto::CMD_FLAG_REQ_ONE != 0,
            })
        }
        proto::CMD_DISC => Ok(Action::Disconnect),
        _ => Err(proto::EINVAL),
    }
}

/// The end of what a BLOCK_STATUS for `offset..+len` describes: the request
/// rounded up to the block grid, inside the export.
pub fn status_end(offset: u64, len: u32, size: u64, block: u64) -> u64 {
    (offset + u64::from(len))
        .div_ceil(block)
        .saturating_mul(block)
        .min(size)
}

/// base:allocation descriptors, (length, flags), for the range `offset..+len`
/// of an export of `size` bytes, from a layer's runs of (length, is_hole)
/// starting at `offset` and asked for up to [`status_end`] (`None`:
/// everything is data).
///
/// Holes shrink to the block grid and data grows to it, so a partly allocated
/// block is data, every length is a multiple of `block` (except at the export
/// end), and the last descriptor may reach past an unaligned `len` to the
/// next block boundary, as the protocol allows; with `req_one`, exactly one
/// descriptor no longer than `len`. Runs that stop short of the range end the
/// reply where they stop (the client asks again from there).
pub fn allocation_descriptors(
    runs: Option<Vec<(u64, bool)>>,
    offset: u64,
    len: u32,
    size: u64,
    block: u64,
    req_one: bool,
) -> Vec<(u32, u32)> {
    let round_up = |x: u64| x.div_ceil(block).saturating_mul(block);
    let mut end = status_end(offset, len, size, block);
    let runs = runs.unwrap_or_default();
    let covered = runs
        .iter()
        .fold(offset, |at, &(run, _)| at.saturating_add(run));
    if !runs.is_empty() && covered < end {
        // At least one block (the client must make progress); no clamp(),
        // which panics when the export ends inside that block.
        end = round_up(covered).max(offset + block).min(end);
    }
    // (length, hole) with neighbours of one kind merged.
    let mut extents: Vec<(u64, bool)> = Vec::new();
    let mut push = |length: u64, hole: bool| match extents.last_mut() {
        Some((last, kind)) if *kind == hole => *last += length,
        _ if length > 0 => extents.push((length, hole)),
        _ => {}
    };
    let (mut pos, mut at) = (offset, offset);
    for (run, hole) in runs {
        let (start, stop) = (pos, pos.saturating_add(run));
        pos = stop;
        if !hole {
            continue;
        }
        let hole_start = round_up(start).max(at);
        let hole_end = (stop / block * block).min(end);
        if hole_start < hole_end {
            push(hole_start - at, false);
            push(hole_end - hole_start, true);
            at = hole_end;
        }
        if at >= end {
            break;
        }
    }
    push(end.saturating_sub(at), false);
    let flags = |hole: bool| {
        if hole {
            proto::STATE_HOLE | proto::STATE_ZERO
        } else {
            0
        }
    };
    if req_one {
        let first = extents.first().copied().unwrap_or((end - offset, false));
        let aligned = u64::from(len) / block * block;
        let cap = if aligned > 0 { aligned } else { u64::from(len) };
        return vec![(first.0.min(cap) as u32, flags(first.1))];
    }
    // A descriptor length is a u32: split longer extents on the block grid.
    let max_piece = u64::from(u32::MAX) / block * block;
    let mut out = Vec::new();
    for (mut length, hole) in extents {
        while length > 0 && out.len() < MAX_DESCRIPTORS {
            let piece = length.min(max_piece);
            out.push((piece as u32, flags(hole)));
            length -= piece;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            kind,
            cookie: 1,
            offset,
            length,
        }
    }

    const SIZE: u64 = 1 << 20;
    const PLAIN: Negotiated = Negotiated {
        structured: false,
        allocation: false,
    };
    const ALLOCATION: Negotiated = Negotiated {
        structured: true,
        allocation: true,
    };

    #[test]
    fn block_status_needs_the_context_and_a_range_inside_the_device() {
        let bs = |flags, offset, len| req(proto::CMD_BLOCK_STATUS, flags, offset, len);
        assert_eq!(
            check(&bs(0, 0, 4096), SIZE, 4096, PLAIN),
            Err(proto::EINVAL)
        );
        let structured_only = Negotiated {
            structured: true,
            allocation: false,
        };
        assert_eq!(
            check(&bs(0, 0, 4096), SIZE, 4096, structured_only),
            Err(proto::EINVAL)
        );
        assert_eq!(
            check(
                &bs(proto::CMD_FLAG_REQ_ONE, 8192, 100),
                SIZE,
                4096,
                ALLOCATION
            ),
            Ok(Action::BlockStatus {
                offset: 8192,
                len: 100,
                req_one: true
            })
        );
        for bad in [
            bs(0, 512, 4096),
            bs(0, 0, 0),
            bs(0, SIZE - 4096, 8192),
            bs(0, u64::MAX - 4095, 4096),
            bs(proto::CMD_FLAG_FUA, 0, 4096),
        ] {
            assert_eq!(
                check(&bad, SIZE, 4096, ALLOCATION),
                Err(proto::EINVAL),
                "{bad:?}"
            );
        }
    }

    const HOLE: u32 = proto::STATE_HOLE | proto::STATE_ZERO;

    #[test]
    fn descriptors_round_to_blocks_conservatively() {
        // No information: all data, the unaligned tail rounded up.
        assert_eq!(
            allocation_descriptors(None, 0, 10_000, SIZE, 4096, false),
            [(12288, 0)]
        );
        // A hole that covers only part of a block leaves that block data; a
        // data run inside a block makes the whole block data.
        let runs = vec![(6000, true), (100, false), (20_000, true), (SIZE, false)];
        assert_eq!(
            allocation_descriptors(Some(runs.clone()), 0, 65536, SIZE, 4096, false),
            [(4096, HOLE), (4096, 0), (16384, HOLE), (40960, 0)]
        );
        // REQ_ONE: the first extent only, never past the request.
        assert_eq!(
            allocation_descriptors(Some(runs.clone()), 0, 65536, SIZE, 4096, true),
            [(4096, HOLE)]
        );
        assert_eq!(
            allocation_descriptors(Some(vec![(SIZE, true)]), 0, 10_000, SIZE, 4096, true),
            [(8192, HOLE)]
        );
        assert_eq!(
            allocation_descriptors(Some(vec![(SIZE, true)]), 0, 100, SIZE, 4096, true),
            [(100, HOLE)]
        );
        // An unaligned length is described to the end of its block.
        assert_eq!(
            allocation_descriptors(Some(vec![(4096, true)]), 0, 100, SIZE, 4096, false),
            [(4096, HOLE)]
        );
        // Neighbours of one kind merge; runs past the range are ignored.
        assert_eq!(
            allocation_descriptors(
                Some(vec![(4096, true), (4096, true), (SIZE, false)]),
                4096,
                8192,
                SIZE,
                4096,
                false
            ),
            [(8192, HOLE)]
        );
        // Runs that stop short end the reply where they stop.
        assert_eq!(
            allocation_descriptors(
                Some(vec![(4096, false), (5000, true)]),
                0,
                65536,
                SIZE,
                4096,
                false
            ),
            [(4096, 0), (4096, HOLE), (4096, 0)]
        );
        // An export that ends inside a block: its tail is described as is.
        assert_eq!(
            allocation_descriptors(Some(vec![(100, false)]), 8192, 1000, 9192, 4096, false),
            [(1000, 0)]
        );
        assert_eq!(
            allocation_descriptors(Some(vec![(1000, true)]), 8192, 1000, 9192, 4096, false),
            [(1000, 0)]
        );
        // Never past the export's end.
        assert_eq!(
            allocation_descriptors(
                Some(vec![(4096, true)]),
                SIZE - 4096,
                4096,
                SIZE,
                4096,
                false
            ),
            [(4096, HOLE)]
        );
    }

    #[test]
    fn long_extents_split_on_the_block_grid() {
        let size = 8u64 << 30;
        let out = allocation_descriptors(Some(vec![(size, true)]), 0, u32::MAX, size, 4096, false);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], ((u32::MAX / 4096 * 4096), HOLE));
        assert_eq!(u64::from(out[0].0) + u64::from(out[1].0), 1 << 32);
    }

    #[test]
    fn requests_inside_the_device_and_on_the_block_grid_pass() {
        assert_eq!(
            check(&req(proto::CMD_READ, 0, 4096, 8192), SIZE, 4096, PLAIN),
            Ok(Action::Read {
                offset: 4096,
                len: 8192
            })
        );
        assert_eq!(
            check(
                &req(proto::CMD_WRITE, proto::CMD_FLAG_FUA, SIZE - 4096, 4096),
                SIZE,
                4096,
                PLAIN
            ),
            Ok(Action::Write {
                offset: SIZE - 4096,
                len: 4096,
                fua: true
            })
        );
        assert_eq!(
            check(&req(proto::CMD_FLUSH, 0, 0, 0), SIZE, 4096, PLAIN),
            Ok(Action::Flush)
        );
    }

    #[test]
    fn bad_requests_get_protocol_errors() {
        let cases = [
            (req(proto::CMD_READ, 0, 512, 4096), proto::EINVAL),
            (req(proto::CMD_READ, 0, 0, 100), proto::EINVAL),
            (req(proto::CMD_READ, 0, 0, 0), proto::EINVAL),
            (req(proto::CMD_READ, 0, SIZE, 4096), proto::EINVAL),
            (req(proto::CMD_WRITE, 0, SIZE, 4096), proto::ENOSPC),
            (
                req(proto::CMD_READ, 0, u64::MAX - 4095, 4096),
                proto::EINVAL,
            ),
            (req(proto::CMD_READ, 0, 0, 64 << 20), proto::EOVERFLOW),
            (
                req(proto::CMD_READ, proto::CMD_FLAG_FUA, 0, 4096),
                proto::EINVAL,
            ),
            (req(proto::CMD_WRITE, 1 << 4, 0, 4096), proto::EINVAL),
            (req(proto::CMD_BLOCK_STATUS, 0, 0, 4096), proto::EINVAL),
            (req(99, 0, 0, 0), proto::EINVAL),
        ];
        for (request, error) in cases {
            assert_eq!(
                check(&request, SIZE, 4096, PLAIN),
                Err(error),
                "{request:?}"
            );
        }
    }
}

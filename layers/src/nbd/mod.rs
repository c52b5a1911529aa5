//! `nbd` leaf: the data lives on an NBD server (qemu-nbd, nbdkit, another
//! `ublk-stack up --nbd`), reached over TCP or a unix socket.
//!
//! - The handshake is done at open, blocking and bounded by `timeout`
//!   ([`handshake`]); the sockets then serve requests through the rings of
//!   the queues that use them ([`conn`]), many requests in flight on each.
//! - FLUSH is NBD_CMD_FLUSH when the server takes it; a server that does not
//!   advertise FLUSH has no write cache to flush. With several connections
//!   the server has promised (multi-conn) that a flush on one covers writes
//!   completed on all.
//! - discard and write_zeroes are NBD_CMD_WRITE_ZEROES without NO_HOLE, so
//!   the server may free the space; a server without WRITE_ZEROES is sent
//!   zeros. NBD's TRIM is not used: a trimmed range need not read as zeros,
//!   which `discard` promises.
//! - `nbds://`: NBD_OPT_STARTTLS first, then the rest of the handshake and
//!   every request and reply inside TLS ([`tls`]); each reconnect does it
//!   again.
//! - No metadata of its own: the export holds the device's bytes at their
//!   offsets.
//! - A lost connection (a closed or failed socket, or a TCP link silent
//!   for `timeout`) is dialled again with backoff for up to `timeout` since
//!   the server was last heard; its requests in flight are sent again, and
//!   fail with EIO only when the server stays away longer (a mirror then
//!   fails the leg). Dialling goes on after that, so the leaf serves again
//!   once the server is back (a mirror's `readd` takes the leg back). The
//!   first FLUSH after a reconnect fails with EIO when acknowledged writes
//!   were not yet flushed: the server may have lost them.

pub(crate) mod conn;
pub mod handshake;
pub mod tls;
pub mod uri;
pub mod wire;

use std::time::Duration;

use std::sync::Arc;

use conn::{Conn, Ledger, Redial};
use handshake::Export;
use tls::TlsClient;
use uri::NbdUri;
use wire::*;

use crate::exec::IoCtx;
use crate::report::{LayerReport, NbdReport};
use crate::{AsyncLayer, IoBuf, IoBufMut, Result};

/// Largest WRITE_ZEROES range sent in one request (the length is 32 bits);
/// a multiple of every block size.
const MAX_ZEROES_BYTES: u64 = 1 << 30;

/// Largest write of zeros sent to a server without WRITE_ZEROES: bounds
/// the buffer of zeros.
const MAX_ZERO_WRITE_BYTES: u64 = 1 << 20;

/// What the leaf is opened with.
#[derive(Clone, Debug)]
pub struct NbdOptions {
    pub uri: NbdUri,
    /// The size the config expects; `None`: whatever the server has.
    pub size_bytes: Option<u64>,
    /// Connections to open when the server allows several (multi-conn).
    pub connections: u32,
    /// Bound on connecting and on each step of the handshake.
    pub timeout: Duration,
    /// TLS, for `nbds://`.
    pub tls: Option<TlsClient>,
}

pub struct NbdLeaf {
    uri: NbdUri,
    export: Export,
    conns: Vec<Arc<Conn>>,
    max_payload: u64,
}

/// The export's size, asked of the server (for `validate` without `size`).
pub fn probe_size(
    uri: &NbdUri,
    tls: Option<&TlsClient>,
    timeout: Duration,
) -> std::result::Result<u64, String> {
    let (mut transport, export) = handshake::connect(uri, tls, timeout)?;
    // Leave the way the protocol asks: a disconnect request, then close.
    let mut disc = [0u8; REQUEST_BYTES];
    disc[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    disc[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
    drop(transport.send_last(&disc));
    Ok(export.size)
}

/// Connects to the server, checks its export against the config and the
/// device's block size, and opens the further connections multi-conn allows.
pub fn open(options: &NbdOptions, block_size: u32) -> std::result::Result<NbdLeaf, String> {
    let uri = &options.uri;
    let tls = options.tls.as_ref();
    if uri.tls != tls.is_some() {
        return Err(format!(
            "{uri}: TLS must be configured exactly for nbds:// URIs"
        ));
    }
    let (transport, export) = handshake::connect(uri, tls, options.timeout)?;
    let watch = |stream: &handshake::Stream| {
        stream
            .detect_silence(options.timeout)
            .map_err(|e| format!("{uri}: TCP keepalive and user timeout: {e}"))
    };
    watch(&transport.stream)?;
    if let Some(wanted) = options.size_bytes {
        if wanted != export.size {
            return Err(format!(
                "{uri}: the export is {} bytes but the config says size = {wanted}",
                export.size
            ));
        }
    }
    let block = u64::from(block_size);
    if export.size == 0 || export.size % block != 0 {
        return Err(format!(
            "{uri}: the export is {} bytes, not a non-zero multiple of the block size {block_size}",
            export.size
        ));
    }
    if u64::from(export.min_block) > block {
        return Err(format!(
            "{uri}: the server needs requests aligned to {} bytes, more than device.block_size ({block_size})",
            export.min_block
        ));
    }
    let multi_conn = export.flags & TX_CAN_MULTI_CONN != 0;
    let count = if multi_conn {
        options.connections.max(1)
    } else {
        1
    };
    if options.connections > 1 && !multi_conn {
        tracing::warn!(%uri, "the server does not offer multi-conn: using one connection");
    }
    let ledger = Arc::new(Ledger::default());
    let redial = || Redial {
        uri: uri.clone(),
        tls: options.tls.clone(),
        timeout: options.timeout,
        size: export.size,
    };
    let mut conns = vec![Conn::new(
        transport,
        export.structured,
        redial(),
        ledger.clone(),
    )];
    for _ in 1..count {
        let (transport, other) = handshake::connect(uri, tls, options.timeout)?;
        watch(&transport.stream)?;
        if other.size != export.size || other.structured != export.structured {
            return Err(format!(
                "{uri}: a second connection saw another export ({} bytes)",
                other.size
            ));
        }
        conns.push(Conn::new(
            transport,
            other.structured,
            redial(),
            ledger.clone(),
        ));
    }
    // Whole blocks per request, so no request is split off the block grid.
    let max_payload = (u64::from(export.max_payload) / block * block).max(block);
    Ok(NbdLeaf {
        uri: uri.clone(),
        export,
        conns,
        max_payload,
    })
}

impl NbdLeaf {
    /// The connection this queue's requests use.
    fn conn(&self, ctx: &IoCtx) -> &Conn {
        &self.conns[usize::from(ctx.queue()) % self.conns.len()]
    }

    fn offers(&self, flag: u16) -> bool {
        self.export.flags & flag != 0
    }

    /// `len` zero bytes at `offset`, with WRITE_ZEROES or by writing zeros.
    async fn zero(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        let conn = self.conn(ctx);
        let (step, zeroes) = if self.offers(TX_SEND_WRITE_ZEROES) {
            (MAX_ZEROES_BYTES, None)
        } else {
            let step = self.max_payload.min(MAX_ZERO_WRITE_BYTES);
            (step, Some(IoBuf::zeroed(step.min(len) as usize)))
        };
        let mut done = 0;
        while done < len {
            let n = (len - done).min(step);
            let at = offset + done;
            match &zeroes {
                None => {
                    conn.request(ctx, CMD_WRITE_ZEROES, 0, at, n as u32, None, None)
                        .await?
                }
                Some(zeros) => {
                    let payload = zeros.slice(0..n as usize);
                    conn.request(ctx, CMD_WRITE, 0, at, n as u32, Some(&payload), None)
                        .await?
                }
            }
            done += n;
        }
        Ok(())
    }
}

impl AsyncLayer for NbdLeaf {
    fn size(&self) -> u64 {
        self.export.size
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        let conn = self.conn(ctx);
        for (i, piece) in buf.chunks_mut(self.max_payload as usize).enumerate() {
            let at = offset + i as u64 * self.max_payload;
            conn.request(ctx, CMD_READ, 0, at, piece.len() as u32, None, Some(piece))
                .await?;
        }
        Ok(())
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        let conn = self.conn(ctx);
        let step = self.max_payload as usize;
        for start in (0..buf.len()).step_by(step) {
            let piece = buf.slice(start..buf.len().min(start + step));
            let at = offset + start as u64;
            conn.request(
                ctx,
                CMD_WRITE,
                0,
                at,
                piece.len() as u32,
                Some(&piece),
                None,
            )
            .await?;
        }
        Ok(())
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        if !self.offers(TX_SEND_FLUSH) {
            return Ok(());
        }
        self.conn(ctx)
            .request(ctx, CMD_FLUSH, 0, 0, 0, None, None)
            .await
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(ctx, offset, len).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.zero(ctx, offset, len).await
    }

    fn discard_frees_space(&self) -> bool {
        self.offers(TX_SEND_WRITE_ZEROES) && self.offers(TX_SEND_TRIM)
    }

    fn report(&self) -> LayerReport {
        let failure = self.conns.iter().find_map(|conn| conn.broken());
        LayerReport::Nbd(NbdReport {
            uri: self.uri.text.clone(),
            connections: self.conns.len() as u64,
            structured_replies: self.conns.iter().all(|conn| conn.structured()),
            connected: failure.is_none(),
            failure,
        })
    }
}

//! `compress`: lz4 per 32 KiB unit, copy-on-write into a thin data area.
//!
//! On-disk layout of the layer below (format version 3, little endian; the full
//! description is `docs/formats/compress.md`):
//!
//! | bytes        | contents                                                      |
//! |--------------|---------------------------------------------------------------|
//! | 0..4096      | superblock (`superblock.rs`), type `compress`, version 3;     |
//! |              | params: algorithm (16 bytes, `lz4`), unit bytes u32 (32768),  |
//! |              | granule bytes u32 (4096), lower size u64, 16 reserved         |
//! | 4096..12288  | map header: the flushed epoch (`meta_table.rs`), and once the |
//! |              | layer below grew, the size of it the layer took in; once the  |
//! |              | exposed size rose, it and the map's placed page runs          |
//! | 12288..+T    | map of the formatted size (`meta_table.rs`, placed layout:    |
//! |              | pages of 102 entries in two 4 KiB slots); entry = `cur` ‖     |
//! |              | `prev`, 16 bytes each: first granule                          |
//! |              | u48, kind u8 (0 empty, 1 zero, 2 raw, 3 lz4), 0, stored       |
//! |              | length u32, crc32(unit index u64 ‖ stored bytes) u32; then    |
//! |              | the table's epoch u64                                         |
//! | 12288+T..    | data area: 4 KiB granules; an extent is a run of them, and so |
//! |              | is each run of map pages placed when the exposed size rose    |
//!
//! **Unit.** The device is cut into 32 KiB units, each stored as one extent:
//! nothing when all zeros; `lz4` when that saves at least one granule; raw
//! otherwise (incompressible data costs only its 32 bytes of map). An `lz4` unit
//! is packed 4 KiB pieces (`compress/codec.rs`): a u16 code per piece (0 zeros,
//! the piece length raw, else that many bytes of lz4), then the pieces' bytes.
//! Per-block units alone cannot save space with 4 KiB blocks: every request below
//! is block aligned, so a compressed 4 KiB block would still take a 4 KiB
//! granule, and packing blocks of different units into one granule would rewrite
//! live neighbours in place. Packing the pieces of one unit keeps rounding to one
//! half granule per unit on average, while the cost per request stays that of
//! per-block compression: a 4 KiB write reads the unit's extent, recompresses the
//! one piece it changes and copies the others' bytes; a 4 KiB read decompresses
//! one piece. (Compressing whole 32 KiB units took ~150 µs of lz4 per 4 KiB write
//! on word-like text; per piece it is ~20 µs. `bench`, release, one queue, QD 32,
//! text, over a file: 3.4k IOPS random 4 KiB writes, 31k IOPS reads; the extra
//! cost of a write is the map page and the discards of old versions.)
//!
//! **Thin.** `size` may exceed the layer below. Granules are allocated on write
//! and never-written ones are never touched; freed extents are discarded below,
//! so a sparse file leaf shrinks. When no run of granules is free, the layer
//! flushes (which returns freed space) and retries, then fails with `NoSpace`
//! having changed nothing: the unit keeps its previous contents.
//!
//! **Write ordering.** The flush protocol is the map table's (`meta_table.rs`):
//! a write holds a writer of the current flush epoch from its data write to its
//! map update, and a FLUSH waits for the writers of the epoch it closes. A write
//! puts the unit's new version into newly allocated granules, then writes the
//! map entry: `cur = new`, `prev =` the last version a flush may have made
//! durable (the old `cur` when it was written in an earlier epoch, else the old
//! `prev`). Reads verify `cur`'s crc and fall back to `prev` only while no flush
//! covered `cur`'s write, which only a crash can make necessary; neither
//! verifying is `Corrupt` (EIO). So after a crash a unit reads as its last
//! flushed contents or newer, and once a flush covered a write, an older version
//! is an error. An extent leaving the map is reused only after a FLUSH made the
//! map update that dropped it durable. FLUSH: the table's flush; discard and
//! release the extents dropped in the epochs it covered; clear `prev` of every
//! unit whose `cur` it made durable and release those too (the cleared pages
//! are written, not flushed).
//!
//! **Growing.** The data area runs to the end of the layer below: a larger
//! layer below is taken in as free granules (`compress/grow.rs`), live or at
//! open, and recorded in the map header. The exposed size can be raised,
//! live or at open: the map's new pages are placed in runs of granules of
//! the data area, recorded in the map header. Version 2 (the map in place,
//! no runs) still opens; a raise makes it version 3 (`compress/version.rs`).
//!
//! Open formats an all-zero device, or checks the superblock (type, version,
//! block size, algorithm, unit, granule, exposed size, a layer below no
//! smaller than the one taken in) and refuses a mismatch before
//! writing anything; it then settles the units a crash left unflushed (`prev`
//! becomes `cur` when only it verifies), rebuilds the allocator from the map and
//! flushes, which clears every fallback left. No live keys.

mod alloc;
pub(crate) mod codec;
pub(crate) mod entry;
mod flush;
pub(crate) mod format;
mod grow;
mod io;
mod open;
mod version;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::async_lock::AsyncLock;
use crate::exec::IoCtx;
use crate::meta_table::MetaTable;
use crate::report::{CompressReport, LayerReport};
use crate::{AsyncLayer, IoBuf, IoBufMut, Layer, Result};

use alloc::Allocator;
use entry::Extent;
use format::Geometry;

pub use format::{GRANULE_BYTES, UNIT_BYTES};
pub use version::{recorded_size, HEAD_BYTES};

/// The size this layer exposes over a lower device of `lower_size` bytes: the
/// configured `size`, or by default what fits with every unit stored raw, less a
/// copy-on-write reserve (see `format::default_size`).
pub fn exposed_size(lower_size: u64, block_size: u32, size: Option<u64>) -> u64 {
    size.unwrap_or_else(|| format::default_size(lower_size, block_size))
}

/// The memory an open layer of this geometry keeps (its map and one
/// allocator bit per granule), or why the geometry does not fit the device
/// below. Lets `validate` refuse what `open` would.
pub fn open_footprint(
    lower_size: u64,
    block_size: u32,
    size: Option<u64>,
) -> std::result::Result<u64, String> {
    let geo = Geometry::new(lower_size, block_size, size)?;
    let map = geo.units.saturating_mul(entry::ENTRY_BYTES as u64);
    Ok(map.saturating_add(geo.data_granules / 8))
}

/// Unit locks are striped: unit `u` uses lock `u % UNIT_LOCKS`.
const UNIT_LOCKS: usize = 1024;

pub struct Compress {
    lower: Arc<dyn Layer>,
    /// Where things are below; its `size` and `units` are those of the
    /// flat map (the formatted size): `size` holds the exposed one.
    geo: Geometry,
    /// The exposed size: it rises when the map grows (version 3).
    size: AtomicU64,
    /// The superblock's format version (2 or 3: a raise makes it 3).
    version: AtomicU32,
    block_size: u32,
    table: MetaTable,
    alloc: Allocator,
    /// Serialise reads and writes of one unit (a partial write is read-modify-write).
    unit_locks: Vec<AsyncLock>,
    /// One flush (and its release of space) at a time.
    flush_lock: AsyncLock,
    /// Map entries per page of the table (pages are written whole).
    entries_per_page: u64,
    /// Extents no longer in the map, with the flush epoch of the map update that
    /// dropped them: released once that epoch is flushed.
    freed: Mutex<Vec<(u64, Extent)>>,
    /// Units whose `prev` the next flush may clear.
    to_clean: Mutex<Vec<u64>>,
    /// The size of the device below that the layer has taken in (the map
    /// header's record, else the superblock's): it must never shrink.
    lower_bytes: AtomicU64,
    /// One grow at a time.
    grow_lock: AsyncLock,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    stored_bytes: AtomicU64,
    logical_bytes: AtomicU64,
    corrupt_reads: AtomicU64,
    no_space: AtomicU64,
    damaged_entries: AtomicU64,
}

impl Compress {
    /// Open (formatting a fresh, all-zero device) the compress layer over `lower`.
    pub async fn open(
        ctx: &IoCtx,
        lower: Arc<dyn Layer>,
        block_size: u32,
        algorithm: &str,
        size: Option<u64>,
    ) -> std::result::Result<Compress, String> {
        open::open(ctx, lower, block_size, algorithm, size).await
    }

    fn unit_bytes(&self) -> u64 {
        u64::from(self.geo.unit_bytes)
    }

    fn limits(&self, unit: u64) -> entry::Limits {
        self.geo.limits(self.unit_len(unit), self.alloc.granules())
    }

    /// The exposed size now.
    fn exposed(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Units of the exposed size (entries of the map).
    fn units(&self) -> u64 {
        self.exposed().div_ceil(self.unit_bytes())
    }

    /// Bytes of unit `unit` (the last one may be short).
    fn unit_len(&self, unit: u64) -> usize {
        self.geo.unit_len(self.exposed(), unit)
    }

    fn lock(&self, unit: u64) -> &AsyncLock {
        &self.unit_locks[(unit % UNIT_LOCKS as u64) as usize]
    }

    /// Split `[offset, offset+len)` into (unit, offset in unit, length).
    fn pieces(&self, offset: u64, len: u64) -> Vec<(u64, usize, usize)> {
        let unit_bytes = self.unit_bytes();
        let mut out = Vec::with_capacity((len / unit_bytes + 2) as usize);
        let mut at = offset;
        while at < offset + len {
            let unit = at / unit_bytes;
            let inner = at % unit_bytes;
            let n = (unit_bytes - inner).min(offset + len - at);
            out.push((unit, inner as usize, n as usize));
            at += n;
        }
        out
    }
}

impl AsyncLayer for Compress {
    fn size(&self) -> u64 {
        self.exposed()
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.read_range(ctx, offset, buf).await
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.write_range(ctx, offset, buf.len() as u64, Some(&buf[..]))
            .await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        self.flush_all(ctx).await
    }

    async fn grow(&self, ctx: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        self.grow_to(ctx, new_size).await
    }

    /// Discard and write_zeroes both map whole units to `zero` (freeing their
    /// extents at the next flush) and rewrite partial units.
    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.write_range(ctx, offset, len, None).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.write_range(ctx, offset, len, None).await
    }

    fn discard_frees_space(&self) -> bool {
        self.lower.discard_frees_space()
    }

    fn report(&self) -> LayerReport {
        let c = &self.counters;
        let stored = c.stored_bytes.load(Ordering::Relaxed);
        let logical = c.logical_bytes.load(Ordering::Relaxed);
        let granule_bytes = u64::from(self.geo.granule_bytes);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LayerReport::Compress(CompressReport {
            algorithm: format::ALGORITHM.into(),
            unit_bytes: u64::from(self.geo.unit_bytes),
            logical_bytes: logical,
            stored_bytes: stored,
            ratio: (stored > 0).then(|| logical as f64 / stored as f64),
            free_bytes: self.alloc.free_granules() * granule_bytes,
            data_area_bytes: self.alloc.granules() * granule_bytes,
            corrupt_reads: load(&c.corrupt_reads),
            no_space: load(&c.no_space),
            damaged_entries: load(&c.damaged_entries),
        })
    }
}

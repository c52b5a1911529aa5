//! Every metric the endpoint exports, in the order of docs/metrics.md: its
//! name, type, labels and help. docs/metrics.md lists the same; a test keeps
//! the two equal.

use super::render::Kind;

/// One metric: its family name (a counter's samples add `_total`, an info
/// metric's `_info`), type, label names in order (a histogram's buckets add
/// `le`) and help text.
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const D: &[&str] = &["device"];
const L: &[&str] = &["device", "layer"];
const LT: &[&str] = &["device", "layer", "type"];
const LTO: &[&str] = &["device", "layer", "type", "op"];
const LEG: &[&str] = &["device", "layer", "leg", "leg_layer"];

const fn def(
    kind: Kind,
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Def {
    Def {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram, Info};

pub const BUILD: Def = def(
    Info,
    "ublk_stack_build",
    &["device", "version", "commit"],
    "The daemon's version and the commit it was built from.",
);
pub const DEVICE: Def = def(
    Info,
    "ublk_stack_device",
    &["device", "path"],
    "The device served: /dev/ublkbN, or the NBD URI.",
);
pub const DEVICE_SIZE: Def = def(
    Gauge,
    "ublk_stack_device_size_bytes",
    D,
    "The device's size in bytes.",
);
pub const BLOCK_SIZE: Def = def(
    Gauge,
    "ublk_stack_device_block_size_bytes",
    D,
    "The device's logical block size in bytes.",
);
pub const QUEUES: Def = def(
    Gauge,
    "ublk_stack_device_queues",
    D,
    "Queues (ublk) or queue threads (NBD).",
);
pub const GENERATION: Def = def(
    Gauge,
    "ublk_stack_config_generation",
    D,
    "The config generation: 1 at up, one more per applied reload.",
);
pub const RELOAD_RESULT: Def = def(Gauge, "ublk_stack_reload_last_result", &["device", "result"], "1 for the result of the last reload (applied, unchanged, refused, failed), 0 for the others; all 0 before the first reload.");
pub const RELOAD_TIME: Def = def(
    Gauge,
    "ublk_stack_reload_last_timestamp_seconds",
    D,
    "When the last reload ended, in seconds since the Unix epoch; 0 before the first.",
);
pub const RELOAD_TOOK: Def = def(
    Gauge,
    "ublk_stack_reload_last_duration_seconds",
    D,
    "How long the last reload took, in seconds; 0 before the first.",
);

pub const LAYER: Def = def(
    Info,
    "ublk_stack_layer",
    &["device", "layer", "type", "parent"],
    "One per layer: its type and the layer above it (empty for the top).",
);
pub const LAYER_SIZE: Def = def(
    Gauge,
    "ublk_stack_layer_size_bytes",
    LT,
    "The size the layer exposes, in bytes.",
);
pub const LAYER_OPS: Def = def(
    Counter,
    "ublk_stack_layer_ops",
    LTO,
    "Requests that reached the layer, by op (read, write, flush, discard, write_zeroes).",
);
pub const LAYER_BYTES: Def = def(
    Counter,
    "ublk_stack_layer_bytes",
    LTO,
    "Bytes the layer's requests covered, by op (read, write, discard, write_zeroes).",
);
pub const LAYER_ERRORS: Def = def(
    Counter,
    "ublk_stack_layer_errors",
    LTO,
    "Requests the layer answered with an error, by op.",
);
pub const LAYER_LATENCY: Def = def(Histogram, "ublk_stack_layer_latency_seconds", LTO, "Time from a request reaching the layer to its completion (layers below included), by op; one read, write, discard or write_zeroes in 32 per queue is measured, every flush.");

pub const LEAF_MISALIGNED: Def = def(
    Counter,
    "ublk_stack_leaf_misaligned_copies",
    L,
    "Requests of a direct file or disk leaf whose buffer went through an aligned copy.",
);

pub const CACHE_HITS: Def = def(
    Counter,
    "ublk_stack_cache_hits",
    L,
    "Block lookups served from the cache.",
);
pub const CACHE_MISSES: Def = def(
    Counter,
    "ublk_stack_cache_misses",
    L,
    "Block lookups that went to the layer below.",
);
pub const CACHE_EVICTIONS: Def = def(
    Counter,
    "ublk_stack_cache_evictions",
    L,
    "Blocks evicted from the cache.",
);
pub const CACHE_WRITE_BACK_ERRORS: Def = def(
    Counter,
    "ublk_stack_cache_write_back_errors",
    L,
    "Failed write-backs of dirty blocks (the block stays dirty).",
);
pub const CACHE_DIRTY: Def = def(
    Gauge,
    "ublk_stack_cache_dirty_bytes",
    L,
    "Bytes in the cache not yet written below (write-back mode).",
);
pub const CACHE_CACHED: Def = def(
    Gauge,
    "ublk_stack_cache_cached_bytes",
    L,
    "Bytes of data in the cache.",
);
pub const CACHE_CAPACITY: Def = def(
    Gauge,
    "ublk_stack_cache_capacity_bytes",
    L,
    "The cache's capacity in bytes.",
);
pub const CACHE_MODE: Def = def(
    Gauge,
    "ublk_stack_cache_mode",
    &["device", "layer", "mode"],
    "1 for the cache's mode (write-through, write-back), 0 for the other.",
);

pub const MIRROR_LEG_STATE: Def = def(
    Gauge,
    "ublk_stack_mirror_leg_state",
    &["device", "layer", "leg", "leg_layer", "state"],
    "1 for the leg's health (ok, failed, rebuilding), 0 for the others.",
);
pub const MIRROR_LEG_READ_ERRORS: Def = def(
    Counter,
    "ublk_stack_mirror_leg_read_errors",
    LEG,
    "Reads the leg failed.",
);
pub const MIRROR_LEG_WRITE_ERRORS: Def = def(
    Counter,
    "ublk_stack_mirror_leg_write_errors",
    LEG,
    "Writes and flushes the leg failed.",
);
pub const MIRROR_LEG_REPAIRED: Def = def(
    Counter,
    "ublk_stack_mirror_leg_repaired",
    LEG,
    "Bad copies of blocks on the leg rewritten from another leg.",
);
pub const MIRROR_DIRTY_REGIONS: Def = def(Gauge, "ublk_stack_mirror_dirty_regions", L, "Regions of the write-intent bitmap written since the last quiet flush (or since a leg failed).");
pub const MIRROR_REGIONS: Def = def(
    Gauge,
    "ublk_stack_mirror_regions",
    L,
    "Regions of the write-intent bitmap.",
);
pub const MIRROR_RESYNC_DONE: Def = def(
    Gauge,
    "ublk_stack_mirror_resync_done_bytes",
    L,
    "How far a rebuild has come, in bytes of the mirror; 0 when no leg is rebuilding.",
);
pub const MIRROR_RESYNC_TOTAL: Def = def(
    Gauge,
    "ublk_stack_mirror_resync_total_bytes",
    L,
    "Where a rebuild ends (the mirror's size) while a leg is rebuilding; 0 otherwise.",
);
pub const MIRROR_RESYNC_COPIED: Def = def(
    Counter,
    "ublk_stack_mirror_resync_copied_bytes",
    L,
    "Bytes copied to rebuilding legs.",
);
pub const MIRROR_RESYNC_UNREADABLE: Def = def(
    Counter,
    "ublk_stack_mirror_resync_unreadable_blocks",
    L,
    "Blocks a rebuild could read from no healthy leg.",
);

pub const CHECKSUM_MISMATCHES: Def = def(
    Counter,
    "ublk_stack_checksum_mismatches",
    L,
    "Reads whose checksum did not match (answered with EIO, or served from another mirror leg).",
);
pub const CRYPT_AUTH_FAILURES: Def = def(Counter, "ublk_stack_crypt_auth_failures", L, "Reads whose authentication tag did not verify (answered with EIO, or served from another mirror leg).");

pub const COMPRESS_LOGICAL: Def = def(
    Gauge,
    "ublk_stack_compress_logical_bytes",
    L,
    "Bytes of data stored, before compression.",
);
pub const COMPRESS_STORED: Def = def(
    Gauge,
    "ublk_stack_compress_stored_bytes",
    L,
    "Bytes they take on the device below.",
);
pub const COMPRESS_FREE: Def = def(
    Gauge,
    "ublk_stack_compress_free_bytes",
    L,
    "Free bytes in the data area below.",
);
pub const COMPRESS_DATA_AREA: Def = def(
    Gauge,
    "ublk_stack_compress_data_area_bytes",
    L,
    "The data area below, in bytes.",
);
pub const COMPRESS_CORRUPT_READS: Def = def(
    Counter,
    "ublk_stack_compress_corrupt_reads",
    L,
    "Reads of units that did not decompress.",
);
pub const COMPRESS_NO_SPACE: Def = def(
    Counter,
    "ublk_stack_compress_no_space",
    L,
    "Writes answered with ENOSPC.",
);
pub const COMPRESS_DAMAGED: Def = def(
    Gauge,
    "ublk_stack_compress_damaged_entries",
    L,
    "Damaged entries found in the compression map.",
);

pub const FAULT_INJECTED: Def = def(
    Counter,
    "ublk_stack_fault_injected_errors",
    L,
    "Errors a fault layer injected.",
);
pub const FAULT_READ_RATE: Def = def(
    Gauge,
    "ublk_stack_fault_read_error_ratio",
    L,
    "The fault layer's read_error_rate, 0 to 1.",
);
pub const FAULT_WRITE_RATE: Def = def(
    Gauge,
    "ublk_stack_fault_write_error_ratio",
    L,
    "The fault layer's write_error_rate, 0 to 1.",
);
pub const FAULT_DELAY: Def = def(
    Gauge,
    "ublk_stack_fault_delay_seconds",
    L,
    "The delay the fault layer adds, in seconds.",
);

pub const NBD_LEAF_CONNECTIONS: Def = def(
    Gauge,
    "ublk_stack_nbd_leaf_connections",
    L,
    "Connections an nbd leaf has open to its server.",
);
pub const NBD_LEAF_CONNECTED: Def = def(
    Gauge,
    "ublk_stack_nbd_leaf_connected",
    L,
    "1 while the nbd leaf reaches its server, 0 once a connection is lost.",
);

pub const NBD_CONNECTIONS: Def = def(
    Gauge,
    "ublk_stack_nbd_connections",
    D,
    "NBD front end: client connections open, handshaking or not.",
);
pub const NBD_ACCEPTED: Def = def(
    Counter,
    "ublk_stack_nbd_connections_accepted",
    D,
    "NBD front end: client connections accepted.",
);
pub const NBD_REFUSED: Def = def(
    Counter,
    "ublk_stack_nbd_connections_refused",
    D,
    "NBD front end: client connections closed at once at --nbd-max-connections.",
);

/// Every metric, in the order of the page.
pub const CATALOG: &[&Def] = &[
    &BUILD,
    &DEVICE,
    &DEVICE_SIZE,
    &BLOCK_SIZE,
    &QUEUES,
    &GENERATION,
    &RELOAD_RESULT,
    &RELOAD_TIME,
    &RELOAD_TOOK,
    &LAYER,
    &LAYER_SIZE,
    &LAYER_OPS,
    &LAYER_BYTES,
    &LAYER_ERRORS,
    &LAYER_LATENCY,
    &LEAF_MISALIGNED,
    &CACHE_HITS,
    &CACHE_MISSES,
    &CACHE_EVICTIONS,
    &CACHE_WRITE_BACK_ERRORS,
    &CACHE_DIRTY,
    &CACHE_CACHED,
    &CACHE_CAPACITY,
    &CACHE_MODE,
    &MIRROR_LEG_STATE,
    &MIRROR_LEG_READ_ERRORS,
    &MIRROR_LEG_WRITE_ERRORS,
    &MIRROR_LEG_REPAIRED,
    &MIRROR_DIRTY_REGIONS,
    &MIRROR_REGIONS,
    &MIRROR_RESYNC_DONE,
    &MIRROR_RESYNC_TOTAL,
    &MIRROR_RESYNC_COPIED,
    &MIRROR_RESYNC_UNREADABLE,
    &CHECKSUM_MISMATCHES,
    &CRYPT_AUTH_FAILURES,
    &COMPRESS_LOGICAL,
    &COMPRESS_STORED,
    &COMPRESS_FREE,
    &COMPRESS_DATA_AREA,
    &COMPRESS_CORRUPT_READS,
    &COMPRESS_NO_SPACE,
    &COMPRESS_DAMAGED,
    &FAULT_INJECTED,
    &FAULT_READ_RATE,
    &FAULT_WRITE_RATE,
    &FAULT_DELAY,
    &NBD_LEAF_CONNECTIONS,
    &NBD_LEAF_CONNECTED,
    &NBD_CONNECTIONS,
    &NBD_ACCEPTED,
    &NBD_REFUSED,
];

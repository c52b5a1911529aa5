//! What a running layer reports to `status`: one typed struct per layer type
//! (counters, health, progress, mismatches), serialised as the `type` and
//! `details` of a layer in `status --json` (docs/status.md, schema 1), and
//! rendered as the `key=value` words of the `status` table.
//!
//! The types sit here, apart from both the layers that fill them and the
//! kinds that describe the layer types, for the reason `params.rs` does: the
//! kinds open the layers, so a type both use cannot live in either.
//!
//! Field names are the schema's: adding a field is compatible, renaming or
//! removing one is not (docs/status.md says how the schema is versioned).

use serde::{Deserialize, Serialize};

use crate::params::{CacheMode, ReadPolicy};

/// A layer's report, tagged with its type: `{"type": "mirror", "details":
/// {...}}` in JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "details", rename_all = "lowercase")]
pub enum LayerReport {
    File(LeafReport),
    Disk(LeafReport),
    Memory(NoDetails),
    Null(NoDetails),
    Raid0(Raid0Report),
    Mirror(MirrorReport),
    Cache(CacheReport),
    Compress(CompressReport),
    Crypt(CryptReport),
    Checksum(ChecksumReport),
    Fault(FaultReport),
    Nbd(NbdReport),
}

/// Layers with nothing to report beyond their counters: `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoDetails {}

/// A `file` or `disk` leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafReport {
    pub io: LeafIo,
    /// With `direct`, requests whose buffer was not aligned for O_DIRECT and
    /// went through an aligned copy; `None` when the leaf is not direct.
    pub misaligned_copies: Option<u64>,
}

/// How a leaf does its reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafIo {
    /// Through the queue's io_uring.
    IoUring,
    /// Plain `pread`/`pwrite` on the queue thread (a file on tmpfs or ramfs).
    Sync,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raid0Report {
    /// The stripe chunk, in bytes.
    pub chunk: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorReport {
    pub read_policy: ReadPolicy,
    /// One per leg, in `legs` order.
    pub legs: Vec<LegReport>,
    /// The generation of the mirror's state record on the legs.
    pub generation: u64,
    /// Regions of the write-intent bitmap written since the last quiet flush.
    pub dirty_regions: u64,
    pub regions: u64,
    pub region_bytes: u64,
    pub uuid: String,
    /// How far a rebuild has come, 0-100; `None` when no leg is rebuilding.
    pub resync_percent: Option<u64>,
    /// How far a rebuild has come in bytes of the mirror (it ends at the
    /// mirror's size); `None` when no leg is rebuilding.
    pub resync_position_bytes: Option<u64>,
    /// Blocks a rebuild could read from no healthy leg.
    pub resync_unreadable_blocks: u64,
    /// Bytes copied to rebuilding legs since the device started.
    pub resync_bytes: u64,
    /// Bytes the running rebuild has copied; `None` when no leg is rebuilding.
    pub resync_done_bytes: Option<u64>,
    /// Bytes the running rebuild copies in all (grows when writes dirty a
    /// region ahead of it); `None` when no leg is rebuilding.
    pub resync_total_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegReport {
    pub health: LegHealth,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Bad copies of blocks on this leg rewritten from another leg.
    pub repaired: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LegHealth {
    Ok,
    Failed,
    Rebuilding,
}

impl LegHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            LegHealth::Ok => "ok",
            LegHealth::Failed => "failed",
            LegHealth::Rebuilding => "rebuilding",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReport {
    pub mode: CacheMode,
    pub capacity_bytes: u64,
    pub cached_bytes: u64,
    pub dirty_bytes: u64,
    /// Block lookups served from the cache.
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub write_back_errors: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompressReport {
    pub algorithm: String,
    pub unit_bytes: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// `logical_bytes / stored_bytes`; `None` while nothing is stored.
    pub ratio: Option<f64>,
    pub free_bytes: u64,
    pub data_area_bytes: u64,
    pub corrupt_reads: u64,
    pub no_space: u64,
    pub damaged_entries: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CryptReport {
    pub cipher: String,
    /// Reads whose GCM tag did not verify (returned as EIO).
    pub auth_failures: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumReport {
    pub algorithm: String,
    /// Reads whose checksum did not match (returned as EIO).
    pub mismatches: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultReport {
    pub read_error_rate: f64,
    pub write_error_rate: f64,
    pub delay_us: u64,
    pub injected_errors: u64,
    /// The byte range faults apply to; `None`: the whole device.
    pub range: Option<ByteRange>,
}

/// An `nbd` leaf: its server and its connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdReport {
    /// The server, as the config's `uri` names it.
    pub uri: String,
    /// Connections open to the server.
    pub connections: u64,
    /// Whether the server sends structured replies.
    pub structured_replies: bool,
    /// False once a connection is lost: the leaf's requests fail with EIO.
    pub connected: bool,
    /// Why the connection was lost, if it was.
    pub failure: Option<String>,
}

/// `start..end`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl LayerReport {
    /// The `type = "…"` word of the layer that reported.
    pub fn type_name(&self) -> &'static str {
        match self {
            LayerReport::File(_) => "file",
            LayerReport::Disk(_) => "disk",
            LayerReport::Memory(_) => "memory",
            LayerReport::Null(_) => "null",
            LayerReport::Raid0(_) => "raid0",
            LayerReport::Mirror(_) => "mirror",
            LayerReport::Cache(_) => "cache",
            LayerReport::Compress(_) => "compress",
            LayerReport::Crypt(_) => "crypt",
            LayerReport::Checksum(_) => "checksum",
            LayerReport::Fault(_) => "fault",
            LayerReport::Nbd(_) => "nbd",
        }
    }

    /// The `key=value` words of the `status` table, in order.
    pub fn words(&self) -> Vec<(&'static str, String)> {
        match self {
            LayerReport::File(leaf) | LayerReport::Disk(leaf) => {
                let mut out = vec![
                    ("kind", self.type_name().to_string()),
                    ("io", leaf.io.as_str().to_string()),
                ];
                if let Some(copies) = leaf.misaligned_copies {
                    out.push(("misaligned_copies", copies.to_string()));
                }
                out
            }
            LayerReport::Memory(_) | LayerReport::Null(_) => Vec::new(),
            LayerReport::Raid0(r) => vec![("chunk", r.chunk.to_string())],
            LayerReport::Mirror(m) => m.words(),
            LayerReport::Cache(c) => vec![
                ("mode", c.mode.as_str().to_string()),
                ("capacity_bytes", c.capacity_bytes.to_string()),
                ("cached_bytes", c.cached_bytes.to_string()),
                ("dirty_bytes", c.dirty_bytes.to_string()),
                ("hits", c.hits.to_string()),
                ("misses", c.misses.to_string()),
                ("evictions", c.evictions.to_string()),
                ("write_back_errors", c.write_back_errors.to_string()),
            ],
            LayerReport::Compress(c) => vec![
                ("algorithm", c.algorithm.clone()),
                ("unit_bytes", c.unit_bytes.to_string()),
                ("logical_bytes", c.logical_bytes.to_string()),
                ("stored_bytes", c.stored_bytes.to_string()),
                ("ratio", c.ratio.map_or("-".into(), |r| format!("{r:.2}"))),
                ("free_bytes", c.free_bytes.to_string()),
                ("data_area_bytes", c.data_area_bytes.to_string()),
                ("corrupt_reads", c.corrupt_reads.to_string()),
                ("no_space", c.no_space.to_string()),
                ("damaged_entries", c.damaged_entries.to_string()),
            ],
            LayerReport::Crypt(c) => vec![
                ("cipher", c.cipher.clone()),
                ("auth_failures", c.auth_failures.to_string()),
            ],
            LayerReport::Checksum(c) => vec![
                ("algorithm", c.algorithm.clone()),
                ("mismatches", c.mismatches.to_string()),
            ],
            LayerReport::Fault(f) => {
                let mut out = vec![
                    ("read_error_rate", f.read_error_rate.to_string()),
                    ("write_error_rate", f.write_error_rate.to_string()),
                    ("delay_us", f.delay_us.to_string()),
                    ("injected_errors", f.injected_errors.to_string()),
                ];
                if let Some(range) = f.range {
                    out.push(("range", format!("{}..{}", range.start, range.end)));
                }
                out
            }
            LayerReport::Nbd(n) => {
                let mut out = vec![
                    ("uri", n.uri.clone()),
                    ("connections", n.connections.to_string()),
                    ("structured_replies", n.structured_replies.to_string()),
                    ("connected", n.connected.to_string()),
                ];
                if let Some(failure) = &n.failure {
                    out.push(("failure", failure.clone()));
                }
                out
            }
        }
    }
}

impl LeafIo {
    pub fn as_str(self) -> &'static str {
        match self {
            LeafIo::IoUring => "io_uring",
            LeafIo::Sync => "sync",
        }
    }
}

impl MirrorReport {
    fn words(&self) -> Vec<(&'static str, String)> {
        let legs: Vec<String> = self
            .legs
            .iter()
            .enumerate()
            .map(|(i, leg)| {
                format!(
                    "{i}:{}(read_errors={},write_errors={},repaired={})",
                    leg.health.as_str(),
                    leg.read_errors,
                    leg.write_errors,
                    leg.repaired
                )
            })
            .collect();
        let mut out = vec![
            ("read_policy", self.read_policy.as_str().to_string()),
            ("legs", legs.join(" ")),
            ("generation", self.generation.to_string()),
            (
                "dirty_regions",
                format!("{}/{}", self.dirty_regions, self.regions),
            ),
            ("region_bytes", self.region_bytes.to_string()),
            ("uuid", self.uuid.clone()),
        ];
        if let Some(percent) = self.resync_percent {
            out.push(("resync", format!("{percent}%")));
        }
        if self.resync_bytes > 0 {
            out.push(("resync_bytes", self.resync_bytes.to_string()));
        }
        if self.resync_unreadable_blocks > 0 {
            let blocks = self.resync_unreadable_blocks.to_string();
            out.push(("resync_unreadable_blocks", blocks));
        }
        out
    }
}

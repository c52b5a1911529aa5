//! The `status` reply, schema 1: what the daemon sends, `status --json`
//! prints and the `status` table is rendered from. docs/status.md documents
//! every field; tests/status_schema.rs checks a running daemon's reply
//! against that page.

use layers::compile::NodeStatus;
use layers::{LayerReport, Stack};
use serde::{Deserialize, Serialize};

use crate::daemon::reload::{Record, ReloadSummary};
use crate::daemon::repair::progress::ScrubStatus;
use crate::ublk::features;

/// The schema version: raised when a field is renamed, removed or changes
/// its type or unit; new fields may appear without it.
pub const SCHEMA: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub schema: u32,
    pub name: String,
    /// /dev/ublkbN, or the NBD URI.
    pub path: String,
    pub size: u64,
    pub block_size: u32,
    pub queues: u16,
    pub state: String,
    pub pid: u32,
    /// The metrics endpoint's URL (`up --metrics`), or `None`.
    pub metrics: Option<String>,
    /// 1 at `up`, one more per applied reload.
    pub generation: u64,
    pub last_reload: Option<ReloadSummary>,
    /// The running or last scrub; `None` before the first.
    pub scrub: Option<ScrubStatus>,
    /// How the kernel's ublk driver serves the device; `None` over NBD (and
    /// from daemons older than the field).
    #[serde(default)]
    pub ublk: Option<UblkStatus>,
    /// Every layer from the top down, children after their parent.
    pub layers: Vec<LayerStatus>,
}

/// The ublk side of a device: how data moves and which driver features the
/// daemon uses, out of those the kernel offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UblkStatus {
    /// `copy`: the kernel copies request data to and from the daemon's
    /// buffers; `zero-copy`: the leaves read and write the request's own pages.
    pub data_path: String,
    /// The `UBLK_F_*` features in use, without the prefix, lowest bit first.
    pub features: Vec<String>,
    /// GET_FEATURES as the kernel answered it (0 before Linux 6.5).
    pub kernel_features: u64,
    /// The memory alignment asked of request buffers, as a mask
    /// (UBLK_PARAM_TYPE_DMA_ALIGN); `None` when the device has none. A daemon
    /// older than this field (during an upgrade) sends none.
    #[serde(default)]
    pub dma_alignment: Option<u32>,
}

impl UblkStatus {
    /// For a device using the flags `in_use` on a kernel offering `offered`,
    /// with the DMA_ALIGN mask `dma_alignment` if it was sent one.
    pub fn new(offered: u64, in_use: u64, dma_alignment: Option<u32>) -> UblkStatus {
        UblkStatus {
            data_path: features::data_path(in_use).to_string(),
            features: features::names(in_use)
                .into_iter()
                .map(String::from)
                .collect(),
            kernel_features: offered,
            dma_alignment,
        }
    }
}

/// One layer: its place in the tree, its counters, and what its type reports
/// (`type` and `details`, from [`LayerReport`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerStatus {
    pub name: String,
    #[serde(flatten)]
    pub report: LayerReport,
    /// 0 for the top layer, one more per level down.
    pub depth: usize,
    pub size: u64,
    pub stats: Counters,
}

/// Requests that reached a layer since `up`, and their latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub errors: u64,
    /// Latency percentiles in seconds; `None` before the first request.
    pub read_p50_s: Option<f64>,
    pub read_p99_s: Option<f64>,
    pub write_p50_s: Option<f64>,
    pub write_p99_s: Option<f64>,
}

/// What the device is, as `up` set it up.
pub struct Device<'a> {
    pub name: &'a str,
    pub path: String,
    pub queues: u16,
    pub stack: &'a Stack,
    pub scrub: Option<ScrubStatus>,
    pub metrics: Option<String>,
    pub ublk: Option<UblkStatus>,
}

impl StatusReply {
    pub fn new(device: Device<'_>, record: &Record) -> StatusReply {
        StatusReply {
            schema: SCHEMA,
            name: device.name.to_string(),
            path: device.path,
            size: device.stack.size(),
            block_size: device.stack.block_size(),
            queues: device.queues,
            state: "running".to_string(),
            pid: std::process::id(),
            metrics: device.metrics,
            generation: record.generation,
            last_reload: record.last.as_ref().map(|outcome| outcome.summary()),
            scrub: device.scrub,
            ublk: device.ublk,
            layers: device
                .stack
                .status()
                .into_iter()
                .map(LayerStatus::from)
                .collect(),
        }
    }
}

impl From<NodeStatus> for LayerStatus {
    fn from(node: NodeStatus) -> LayerStatus {
        let s = node.stats;
        let (read, write) = (node.latency.read, node.latency.write);
        LayerStatus {
            name: node.name,
            report: node.report,
            depth: node.depth,
            size: node.size,
            stats: Counters {
                reads: s.reads,
                writes: s.writes,
                flushes: s.flushes,
                discards: s.discards,
                write_zeroes: s.write_zeroes,
                read_bytes: s.read_bytes,
                written_bytes: s.written_bytes,
                errors: s.errors,
                read_p50_s: seconds(read.p50_ns),
                read_p99_s: seconds(read.p99_ns),
                write_p50_s: seconds(write.p50_ns),
                write_p99_s: seconds(write.p99_ns),
            },
        }
    }
}

fn seconds(nanos: Option<u64>) -> Option<f64> {
    nanos.map(|ns| ns as f64 / 1e9)
}

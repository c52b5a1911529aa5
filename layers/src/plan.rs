//! The validated, typed description of a stack: what `config::validate` produces
//! from a TOML file and what [`crate::compile`] turns into a running [`crate::Stack`].
//!
//! A `Plan` holds no strings except display names and paths: references between
//! layers are indices into `Plan::layers`, sizes are bytes, enums are enums.
//! Building a `Plan` never touches the disk.

use std::path::PathBuf;

/// Index of a layer in [`Plan::layers`].
pub type LayerId = usize;

/// One device definition, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub device: DeviceParams,
    pub log_level: LogLevel,
    /// Every layer, in file order.
    pub layers: Vec<LayerPlan>,
    /// The layer the device exposes.
    pub top: LayerId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceParams {
    pub name: String,
    pub queues: u16,
    pub queue_depth: u16,
    pub block_size: u32,
    pub id: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const NAMES: [&'static str; 5] = ["error", "warn", "info", "debug", "trace"];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    /// The name after `[layers.` in the file.
    pub name: String,
    pub spec: LayerSpec,
}

/// Typed parameters of every layer type. `compile` is the only `match` on it
/// that builds layers.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSpec {
    File(FileParams),
    Disk(DiskParams),
    Memory { size_bytes: u64 },
    Null { size_bytes: u64 },
    Raid0(Raid0Params),
    Mirror(MirrorParams),
    Cache(CacheParams),
    Compress(CompressParams),
    Crypt(CryptParams),
    Checksum(ChecksumParams),
    Fault(FaultParams),
}

impl LayerSpec {
    /// The `type = "…"` word of this layer.
    pub fn type_name(&self) -> &'static str {
        match self {
            LayerSpec::File(_) => "file",
            LayerSpec::Disk(_) => "disk",
            LayerSpec::Memory { .. } => "memory",
            LayerSpec::Null { .. } => "null",
            LayerSpec::Raid0(_) => "raid0",
            LayerSpec::Mirror(_) => "mirror",
            LayerSpec::Cache(_) => "cache",
            LayerSpec::Compress(_) => "compress",
            LayerSpec::Crypt(_) => "crypt",
            LayerSpec::Checksum(_) => "checksum",
            LayerSpec::Fault(_) => "fault",
        }
    }

    /// The layers directly below this one, in order.
    pub fn children(&self) -> Vec<LayerId> {
        match self {
            LayerSpec::File(_) | LayerSpec::Disk(_) | LayerSpec::Memory { .. } => vec![],
            LayerSpec::Null { .. } => vec![],
            LayerSpec::Raid0(p) => p.stripes.clone(),
            LayerSpec::Mirror(p) => p.legs.clone(),
            LayerSpec::Cache(p) => vec![p.over],
            LayerSpec::Compress(p) => vec![p.over],
            LayerSpec::Crypt(p) => vec![p.over],
            LayerSpec::Checksum(p) => vec![p.over],
            LayerSpec::Fault(p) => vec![p.over],
        }
    }

    /// The keys of this layer type that a reload may change on a running device.
    pub fn live_keys(&self) -> &'static [&'static str] {
        match self {
            LayerSpec::Mirror(_) => &["read_policy"],
            LayerSpec::Cache(_) => &["capacity", "mode"],
            LayerSpec::Fault(_) => &["read_error_rate", "write_error_rate", "delay", "range"],
            _ => &[],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileParams {
    /// Absolute, or resolved against the config file's folder.
    pub path: PathBuf,
    /// Required when `create`; when given for an existing file it must match.
    pub size_bytes: Option<u64>,
    pub create: bool,
    pub direct: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskParams {
    pub path: PathBuf,
    pub direct: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raid0Params {
    pub stripes: Vec<LayerId>,
    pub chunk_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPolicy {
    RoundRobin,
    First,
    LeastPending,
}

impl ReadPolicy {
    pub const NAMES: [&'static str; 3] = ["round-robin", "first", "least-pending"];

    pub fn as_str(self) -> &'static str {
        match self {
            ReadPolicy::RoundRobin => "round-robin",
            ReadPolicy::First => "first",
            ReadPolicy::LeastPending => "least-pending",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "round-robin" => ReadPolicy::RoundRobin,
            "first" => ReadPolicy::First,
            "least-pending" => ReadPolicy::LeastPending,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorParams {
    pub legs: Vec<LayerId>,
    pub read_policy: ReadPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    WriteThrough,
    WriteBack,
}

impl CacheMode {
    pub const NAMES: [&'static str; 2] = ["write-through", "write-back"];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::WriteThrough => "write-through",
            CacheMode::WriteBack => "write-back",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "write-through" => CacheMode::WriteThrough,
            "write-back" => CacheMode::WriteBack,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheParams {
    pub over: LayerId,
    pub capacity_bytes: u64,
    pub mode: CacheMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressParams {
    pub over: LayerId,
    /// Only "lz4" in schema v1.
    pub algorithm: String,
    /// Exposed size; `None` means the size of the layer below.
    pub size_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptParams {
    pub over: LayerId,
    /// Only "aes-256-gcm" in schema v1.
    pub cipher: String,
    pub key: KeySource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChecksumParams {
    pub over: LayerId,
    /// Only "crc32" in schema v1.
    pub algorithm: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultParams {
    pub over: LayerId,
    pub knobs: FaultKnobs,
}

/// The live knobs of a `fault` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultKnobs {
    /// Probability in 0.0..=1.0 that a read fails with EIO.
    pub read_error_rate: f64,
    /// Probability in 0.0..=1.0 that a write fails with EIO.
    pub write_error_rate: f64,
    /// Added latency per request, in microseconds.
    pub delay_us: u64,
    /// Byte range `[start, end)` the faults apply to; `None` is the whole device.
    pub range: Option<(u64, u64)>,
}

impl Default for FaultKnobs {
    fn default() -> Self {
        FaultKnobs {
            read_error_rate: 0.0,
            write_error_rate: 0.0,
            delay_us: 0,
            range: None,
        }
    }
}

/// A change of a live key, applied to a running layer without pausing I/O.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveChange {
    ReadPolicy(ReadPolicy),
    CacheCapacity(u64),
    CacheMode(CacheMode),
    Fault(FaultKnobs),
}

impl Plan {
    /// Layer ids from `top` downwards, parents before children.
    pub fn walk(&self) -> Vec<LayerId> {
        let mut out = Vec::with_capacity(self.layers.len());
        let mut stack = vec![self.top];
        while let Some(id) = stack.pop() {
            out.push(id);
            let children = self.layers[id].spec.children();
            stack.extend(children.into_iter().rev());
        }
        out
    }
}

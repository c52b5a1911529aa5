//! The types a layer's description (its kind, in [`crate::kinds`]) shares
//! with its running layer: the parameters a layer's constructor takes and the
//! live changes it applies. They sit here, apart from both, so that neither
//! the kinds nor the layers import each other back. Re-exported by
//! [`crate::plan`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Index of a layer in `Plan::layers`.
pub type LayerId = usize;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
pub enum KeySource {
    /// A raw data key in a file.
    File(PathBuf),
    /// A raw data key, in hex, in an environment variable.
    Env(String),
    /// The data key wrapped in a key-slot file, opened with `unlock`.
    Slots { path: PathBuf, unlock: Unlock },
}

/// What opens a key slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unlock {
    KeyFile(PathBuf),
    KeyEnv(String),
    PassphraseFile(PathBuf),
    PassphraseEnv(String),
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
/// Made by the kinds' `live_changes`.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveChange {
    ReadPolicy(ReadPolicy),
    CacheCapacity(u64),
    CacheMode(CacheMode),
    Fault(FaultKnobs),
}

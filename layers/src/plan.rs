//! The validated, typed description of a stack: what `config::validate` produces
//! from a TOML file and what [`crate::compile`] turns into a running [`crate::Stack`].
//!
//! A `Plan` holds no strings except display names and paths: references between
//! layers are indices into `Plan::layers`, sizes are bytes, enums are enums.
//! Building a `Plan` never touches the disk.

pub use crate::kinds::cache::CacheParams;
pub use crate::kinds::checksum::ChecksumParams;
pub use crate::kinds::compress::CompressParams;
pub use crate::kinds::crypt::CryptParams;
pub use crate::kinds::fault::FaultParams;
pub use crate::kinds::memory::MemoryParams;
pub use crate::kinds::mirror::MirrorParams;
pub use crate::kinds::nbd::NbdParams;
pub use crate::kinds::null::NullParams;
pub use crate::kinds::raid0::Raid0Params;
pub use crate::kinds::LayerSpec;
pub use crate::params::{
    CacheMode, DiskParams, FaultKnobs, FileParams, KeySource, LayerId, LiveChange, ReadPolicy,
    Unlock,
};

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

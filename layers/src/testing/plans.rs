//! Building plans in Rust for layer tests (the binary's tests build them from TOML
//! through the real config validation instead). [`PlanBuilder::layer`] takes
//! any kind's parameters; the other methods are shorthands.

use std::path::{Path, PathBuf};

use crate::plan::*;

pub struct PlanBuilder {
    dir: PathBuf,
    block_size: u32,
    layers: Vec<LayerPlan>,
}

impl PlanBuilder {
    /// Leaves' files go into `dir`.
    pub fn new(dir: &Path, block_size: u32) -> PlanBuilder {
        PlanBuilder {
            dir: dir.to_path_buf(),
            block_size,
            layers: Vec::new(),
        }
    }

    /// A layer of any kind: `b.layer("n", NullParams { size_bytes })`.
    pub fn layer(&mut self, name: &str, params: impl Into<LayerSpec>) -> LayerId {
        self.layers.push(LayerPlan {
            name: name.to_string(),
            spec: params.into(),
        });
        self.layers.len() - 1
    }

    fn add(&mut self, name: &str, spec: LayerSpec) -> LayerId {
        self.layer(name, spec)
    }

    pub fn file(&mut self, name: &str, size_bytes: u64) -> LayerId {
        let path = self.dir.join(format!("{name}.img"));
        self.add(
            name,
            LayerSpec::File(FileParams {
                path,
                size_bytes: Some(size_bytes),
                create: true,
                direct: false,
            }),
        )
    }

    pub fn memory(&mut self, name: &str, size_bytes: u64) -> LayerId {
        self.layer(name, MemoryParams { size_bytes })
    }

    pub fn null(&mut self, name: &str, size_bytes: u64) -> LayerId {
        self.layer(name, NullParams { size_bytes })
    }

    pub fn raid0(&mut self, name: &str, stripes: &[LayerId], chunk_bytes: u64) -> LayerId {
        self.add(
            name,
            LayerSpec::Raid0(Raid0Params {
                stripes: stripes.to_vec(),
                chunk_bytes,
            }),
        )
    }

    pub fn mirror(&mut self, name: &str, legs: &[LayerId], read_policy: ReadPolicy) -> LayerId {
        self.add(
            name,
            LayerSpec::Mirror(MirrorParams {
                legs: legs.to_vec(),
                read_policy,
            }),
        )
    }

    pub fn checksum(&mut self, name: &str, over: LayerId) -> LayerId {
        self.add(
            name,
            LayerSpec::Checksum(ChecksumParams {
                over,
                algorithm: "crc32".into(),
            }),
        )
    }

    /// A crypt layer whose key is read from the environment variable `key_env`.
    pub fn crypt(&mut self, name: &str, over: LayerId, key_env: &str) -> LayerId {
        self.crypt_with(name, over, KeySource::Env(key_env.into()))
    }

    /// A crypt layer with its key from `key`.
    pub fn crypt_with(&mut self, name: &str, over: LayerId, key: KeySource) -> LayerId {
        self.add(
            name,
            LayerSpec::Crypt(CryptParams {
                over,
                cipher: "aes-256-gcm".into(),
                key,
            }),
        )
    }

    pub fn compress(&mut self, name: &str, over: LayerId, size_bytes: Option<u64>) -> LayerId {
        self.add(
            name,
            LayerSpec::Compress(CompressParams {
                over,
                algorithm: "lz4".into(),
                size_bytes,
            }),
        )
    }

    pub fn cache(
        &mut self,
        name: &str,
        over: LayerId,
        capacity_bytes: u64,
        mode: CacheMode,
    ) -> LayerId {
        self.add(
            name,
            LayerSpec::Cache(CacheParams {
                over,
                capacity_bytes,
                mode,
            }),
        )
    }

    pub fn fault(&mut self, name: &str, over: LayerId, knobs: FaultKnobs) -> LayerId {
        self.add(name, LayerSpec::Fault(FaultParams { over, knobs }))
    }

    pub fn build(self, top: LayerId) -> Plan {
        Plan {
            device: DeviceParams {
                name: "test".into(),
                queues: 2,
                queue_depth: 32,
                block_size: self.block_size,
                id: None,
            },
            log_level: LogLevel::Info,
            layers: self.layers,
            top,
        }
    }
}

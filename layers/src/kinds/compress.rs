//! `compress`: lz4 per block, thin: it may expose more than the layer below.

use std::sync::Arc;

use super::{Host, Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::compress::Compress;
use crate::params::LayerId;
use crate::units::size::{format_exact, format_human};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressParams {
    pub over: LayerId,
    /// Only "lz4" in schema v1.
    pub algorithm: String,
    /// Exposed size; `None` means the size of the layer below.
    pub size_bytes: Option<u64>,
}

impl Kind for CompressParams {
    const NAME: &'static str = "compress";
    const KEYS: &'static [Key] = &[
        Key::over(),
        Key::optional("algorithm", "\"lz4\"", "the compressor; only lz4"),
        Key::optional(
            "size",
            "the size below",
            "the size exposed; may be larger than the layer below",
        ),
    ];
    const SYNONYMS: &'static [&'static str] = &["compression", "compressed", "lz4"];
    const KEEPS_METADATA: bool = true;
    const SUPERBLOCK: bool = true;
    /// The data area takes in a grown layer below; the exposed size may
    /// rise (`Compress::grow_refusal` says when not).
    const GROWS: bool = true;
    const TAKES_IN_GROWTH_BELOW: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<CompressParams> {
        let over = keys.over();
        let algorithm = keys.fixed_word("algorithm", "lz4");
        let size_bytes = keys.optional("size", None, |keys, item| keys.size(item).map(Some));
        Some(CompressParams {
            over: over?,
            algorithm: algorithm?,
            size_bytes: size_bytes?,
        })
    }

    fn children(&self) -> Vec<LayerId> {
        vec![self.over]
    }

    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("over", Some(name(self.over))),
            ("algorithm", Some(self.algorithm.clone())),
            ("size", self.size_bytes.map(format_exact)),
        ]
    }

    fn summary(&self) -> String {
        format!("algorithm={}", self.algorithm)
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let lower = sizing.lower()?;
        let block_size = sizing.block_size as u32;
        if let Err(reason) = crate::compress::open_footprint(lower, block_size, self.size_bytes) {
            sizing.report(self.size_bytes.map(|_| "size"), reason);
            return None;
        }
        let exposed = crate::compress::exposed_size(lower, block_size, self.size_bytes);
        sizing.not_empty(Self::NAME, lower, exposed)
    }

    fn check_host(&self, host: &mut Host<'_>) {
        let (Some(memory), Some(Some(below))) = (host.memory, host.child_sizes.first().copied())
        else {
            return;
        };
        let footprint =
            crate::compress::open_footprint(below, host.block_size as u32, self.size_bytes);
        // An error here was reported by the size checks.
        if let Ok(bytes) = footprint {
            if bytes > memory {
                host.report(
                    Some("size"),
                    format!(
                        "its map of about {} is held in memory: {}",
                        format_human(bytes),
                        Host::machine(memory)
                    ),
                );
            }
        }
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        let open = Compress::open(
            opening.io(),
            opening.child()?,
            opening.block_size,
            &self.algorithm,
            self.size_bytes,
        );
        let compress = Arc::new(opening.block_on(open)?);
        // For the reload's check of a growth before anything grows.
        opening.keep(compress.clone());
        Ok(Opened::new(compress))
    }
}

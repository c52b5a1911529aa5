//! `checksum`: a crc32 per block, kept below the data; a mismatch is EIO.

use super::{Host, Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::checksum::Checksum;
use crate::params::LayerId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChecksumParams {
    pub over: LayerId,
    /// Only "crc32" in schema v1.
    pub algorithm: String,
}

impl Kind for ChecksumParams {
    const NAME: &'static str = "checksum";
    const KEYS: &'static [Key] = &[
        Key::over(),
        Key::optional("algorithm", "\"crc32\"", "the checksum; only crc32"),
    ];
    const SYNONYMS: &'static [&'static str] = &["crc", "crc32", "integrity", "checksums"];
    const KEEPS_METADATA: bool = true;
    const SUPERBLOCK: bool = true;
    const GROWS: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<ChecksumParams> {
        let over = keys.over();
        let algorithm = keys.fixed_word("algorithm", "crc32");
        Some(ChecksumParams {
            over: over?,
            algorithm: algorithm?,
        })
    }

    fn children(&self) -> Vec<LayerId> {
        vec![self.over]
    }

    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("over", Some(name(self.over))),
            ("algorithm", Some(self.algorithm.clone())),
        ]
    }

    fn summary(&self) -> String {
        format!("algorithm={}", self.algorithm)
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let lower = sizing.lower()?;
        let exposed = crate::checksum::exposed_size(lower, sizing.block_size as u32);
        sizing.not_empty(Self::NAME, lower, exposed)
    }

    fn check_host(&self, host: &mut Host<'_>) {
        host.table_memory();
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        let open = Checksum::open(opening.io(), opening.child()?, opening.block_size);
        Ok(Opened::of(opening.block_on(open)?))
    }
}

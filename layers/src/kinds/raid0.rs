//! `raid0`: stripes across layers of one size.

use super::{Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::params::LayerId;
use crate::units::size::{format_exact, format_human};

/// The default chunk (or the block size, if larger).
const DEFAULT_CHUNK_BYTES: u64 = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raid0Params {
    pub stripes: Vec<LayerId>,
    pub chunk_bytes: u64,
}

impl Kind for Raid0Params {
    const NAME: &'static str = "raid0";
    const KEYS: &'static [Key] = &[
        Key::layers("stripes", "the layers to stripe across"),
        Key::optional("chunk", "\"64KiB\"", "bytes on one stripe before the next"),
    ];
    const SYNONYMS: &'static [&'static str] = &["stripe", "striped", "striping"];
    const GROWS: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<Raid0Params> {
        let stripes = keys.children("stripes", "stripe across");
        let default_chunk = DEFAULT_CHUNK_BYTES.max(keys.block_size());
        let chunk_bytes = keys.optional("chunk", default_chunk, |keys, item| {
            let chunk = keys.size(item)?;
            if chunk.is_power_of_two() {
                return Some(chunk);
            }
            keys.report(
                item,
                format!(
                    "chunk must be a power of two, like \"64KiB\" or \"1MiB\", not {chunk} bytes"
                ),
            );
            None
        });
        Some(Raid0Params {
            stripes: stripes?,
            chunk_bytes: chunk_bytes?,
        })
    }

    fn children(&self) -> Vec<LayerId> {
        self.stripes.clone()
    }

    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        let stripes: Vec<String> = self.stripes.iter().map(|&id| name(id)).collect();
        vec![
            ("stripes", Some(format!("{stripes:?}"))),
            ("chunk", Some(format_exact(self.chunk_bytes))),
        ]
    }

    fn summary(&self) -> String {
        format!("chunk={}", format_exact(self.chunk_bytes))
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let stripe_bytes = sizing.equal_children("stripes", Self::NAME)?;
        let chunks = stripe_bytes / self.chunk_bytes;
        if chunks == 0 {
            sizing.report(
                Some("chunk"),
                format!(
                    "each stripe ({}) is smaller than one chunk ({}); use a smaller chunk or larger stripes",
                    format_human(stripe_bytes),
                    format_exact(self.chunk_bytes)
                ),
            );
            return None;
        }
        let total = u64::try_from(self.stripes.len())
            .ok()
            .and_then(|stripes| chunks.checked_mul(self.chunk_bytes)?.checked_mul(stripes));
        if total.is_none() {
            sizing.report(
                Some("stripes"),
                "the striped size is larger than 2^64 bytes",
            );
        }
        total
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        let stripes = std::mem::take(&mut opening.children);
        Ok(Opened::of(crate::raid0::Raid0::new(
            stripes,
            self.chunk_bytes,
        )?))
    }
}

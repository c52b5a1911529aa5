//! `null`: reads zeros, drops writes.

use super::{Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::units::size::format_exact;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NullParams {
    pub size_bytes: u64,
}

impl Kind for NullParams {
    const NAME: &'static str = "null";
    const KEYS: &'static [Key] = &[Key::required("size", "the device's size")];
    const SYNONYMS: &'static [&'static str] = &["zero", "zeros", "blackhole"];
    const GROWS: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<NullParams> {
        let size_bytes = keys.leaf_size(Self::NAME)?;
        Some(NullParams { size_bytes })
    }

    fn values(&self, _: &dyn Fn(usize) -> String) -> Vec<(&'static str, Option<String>)> {
        vec![("size", Some(format_exact(self.size_bytes)))]
    }

    fn summary(&self) -> String {
        "reads zeros, discards writes".into()
    }

    fn size(&self, _: &mut Sizing<'_>) -> Option<u64> {
        Some(self.size_bytes)
    }

    fn open(&self, _: &mut Opening<'_>) -> Result<Opened, String> {
        Ok(Opened::of(crate::null::NullLeaf::new(self.size_bytes)))
    }
}

//! `memory`: RAM holds the data, lost at exit.

use super::{Host, Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::units::size::{format_exact, format_human};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryParams {
    pub size_bytes: u64,
}

impl Kind for MemoryParams {
    const NAME: &'static str = "memory";
    const KEYS: &'static [Key] = &[Key::required("size", "the device's size")];
    const SYNONYMS: &'static [&'static str] = &["ram", "ramdisk", "mem", "tmpfs"];
    const GROWS: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<MemoryParams> {
        let size_bytes = keys.leaf_size(Self::NAME)?;
        Some(MemoryParams { size_bytes })
    }

    fn values(&self, _: &dyn Fn(usize) -> String) -> Vec<(&'static str, Option<String>)> {
        vec![("size", Some(format_exact(self.size_bytes)))]
    }

    fn summary(&self) -> String {
        "in RAM".into()
    }

    fn size(&self, _: &mut Sizing<'_>) -> Option<u64> {
        Some(self.size_bytes)
    }

    fn check_host(&self, host: &mut Host<'_>) {
        let Some(memory) = host.memory else { return };
        if self.size_bytes > memory {
            host.report(
                Some("size"),
                format!(
                    "a memory device of {} does not fit in memory: {}",
                    format_human(self.size_bytes),
                    Host::machine(memory)
                ),
            );
        }
    }

    fn open(&self, _: &mut Opening<'_>) -> Result<Opened, String> {
        Ok(Opened::of(crate::memory::MemoryLeaf::new(self.size_bytes)?))
    }
}
